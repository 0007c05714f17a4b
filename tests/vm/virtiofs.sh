# Guest side of tests/vm_virtiofs.rs: the guest kernel mounts ferry-host's exports as virtio-fs
# devices (no agent). Same file workload as the vsock VM test, then read-only enforcement,
# symlinks that point out of the export, and host edits.
. /lib/ferry.sh
M=/mnt/ex
R=/mnt/ro
mkdir -p "$M" "$R"

check mount-virtiofs mount -t virtiofs ex "$M"
say "MOUNTED uptime=$(cut -d' ' -f1 /proc/uptime)"
check mount-is-virtiofs grep -q "^ex $M virtiofs" /proc/mounts
cd "$M" || fail "cd $M"

# 1-2. What the host wrote reads back; a file workload the host checks afterwards.
. /files.sh

# 3. A read-only export: reads work, every kind of change fails with EROFS.
check mount-ro mount -t virtiofs ro "$R"
check ro-read test "$(cat $R/kept.txt)" = "read-only data"
# erofs WHAT CMD...: CMD must fail, and with "Read-only file system".
erofs() {
    _what=$1; shift
    if "$@" 2>/tmp/erofs.err; then fail "$_what succeeded on a read-only export"; fi
    grep -q "Read-only file system" /tmp/erofs.err || { show /tmp/erofs.err "$_what"; fail "$_what: not EROFS"; }
    say "OK $_what"
}
erofs ro-create sh -c "echo x > $R/new.txt"
erofs ro-append sh -c "echo x >> $R/kept.txt"
erofs ro-mkdir mkdir "$R/d"
erofs ro-unlink rm "$R/kept.txt"
erofs ro-rename mv "$R/kept.txt" "$R/moved.txt"
erofs ro-chmod chmod 777 "$R/kept.txt"
check ro-unchanged test "$(cat $R/kept.txt)" = "read-only data"

# 4. Symlinks pointing out of the export are resolved by this kernel inside the guest, never
#    by the host: neither the absolute nor the relative one reaches the host's secret.
for l in escape-abs escape-rel; do
    check "$l-is-a-symlink" test -L "$M/$l"
    if cat "$M/$l" 2>/dev/null | grep -q TOP-SECRET; then fail "$l read outside the export"; fi
    say "OK $l-not-followed-on-the-host"
done

# 5. The host edits files while the guest has them cached; after the 1 s TTL the guest sees
#    the new contents and names.
wait_host host-edits 120
sleep 2
check host-edits-read sha256sum -c -s host-edits.sha256
check host-delete-seen test ! -e from-host/small-5.txt
check host-rename-seen test -e from-host/renamed-4.txt -a ! -e from-host/small-4.txt

cd /
check umount umount "$M"
check umount-ro umount "$R"
say ALL-DONE
