# Guest side of tests/vm_virtiofs.rs: the guest kernel mounts ferry-host's exports as virtio-fs
# devices. Same file workload as the vsock VM test, then read-only enforcement, symlinks that
# point out of the export, and host edits, which `ferry-agent --events-only` (over vsock to
# the same ferry-host) turns into inotify events.
# FERRY_PORT  host vsock port of ferry-host (reached as vsock:PORT, CID 2)
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

# 3b. Set-id bits: this guest kernel leaves clearing them to the server (it negotiated
#     FUSE_HANDLE_KILLPRIV_V2). A write or truncate by an unprivileged user clears
#     set-user-ID, and set-group-ID on a group-executable file; root (CAP_FSETID) keeps them.
for f in setid-root setid-user setid-trunc; do
    echo '#!/bin/sh' > "$f" && chmod 6777 "$f" || fail "setid: $f"
done
check setid-set test "$(stat -c %a setid-user)" = 6777
echo "# root was here" >> setid-root || fail "setid: root write"
check setid-root-keeps test "$(stat -c %a setid-root)" = 6777
su -s /bin/sh user -c "echo '# user was here' >> $M/setid-user" || fail "setid: user write"
check setid-write-clears test "$(stat -c %a setid-user)" = 777
su -s /bin/sh user -c ": > $M/setid-trunc" || fail "setid: user truncate"
check setid-truncate-clears test "$(stat -c %a setid-trunc)" = 777

# 4. Symlinks pointing out of the export are resolved by this kernel inside the guest, never
#    by the host: neither the absolute nor the relative one reaches the host's secret.
for l in escape-abs escape-rel; do
    check "$l-is-a-symlink" test -L "$M/$l"
    if cat "$M/$l" 2>/dev/null | grep -q TOP-SECRET; then fail "$l read outside the export"; fi
    say "OK $l-not-followed-on-the-host"
done

# 4b. A host mount point inside the export (a tmpfs the host mounted) is announced as a
#     submount: the guest kernel mounts it when a path first goes through it (an automount,
#     which stat(2) of the mount point alone does not trigger), and from then on it has its
#     own st_dev, so find -xdev stops there.
check submount-read test "$(cat "$M/submount/in-submount.txt")" = "on another filesystem"
check submount-own-dev test "$(stat -c %d "$M")" != "$(stat -c %d "$M/submount")"
check submount-same-dev-elsewhere test "$(stat -c %d "$M")" = "$(stat -c %d "$M/from-host")"
check submount-find test -n "$(find "$M" -name in-submount.txt)"
check submount-find-xdev test -z "$(find "$M" -xdev -name in-submount.txt)"

# 4c. The guest kernel keeps directory listings (FOPEN_CACHE_DIR), yet a name the host adds
#     shows up once the directory's attributes expire (1 s), with no events agent running.
mkdir "$M/listed" && : > "$M/listed/by-guest" || fail "listed: mkdir"
check listing-read test "$(ls "$M/listed")" = by-guest
wait_host list-cache 120
check listing-follows-the-host wait_until 10 sh -c "ls '$M/listed' | grep -qx added-by-host"
check listing-keeps-the-rest test "$(ls "$M/listed" | wc -l)" = 2

# 5. Host change events: virtio-fs has no notification path, so an events-only agent takes
#    the export's changes over vsock and replays them on the mount, and the host answers the
#    replay's requests without touching anything.
RUST_LOG=info,ferry_agent::replay=debug ferry-agent --events-only --connect "vsock:$FERRY_PORT" --connect-timeout 60 "ex=$M" \
    2>/tmp/agent.log &
AGENT=$!
wait_until 60 grep -qs "replaying host changes" /tmp/agent.log ||
    { show /tmp/agent.log agent; fail "events-agent-started"; }
say "OK events-agent-started"
inotify-events "$M" "$M/from-host" "$M/events" > /tmp/events 2>/tmp/events.err &
WATCH=$!
wait_until 10 grep -qs watching /tmp/events.err ||
    { show /tmp/events.err inotify; fail "inotify-events did not start"; }
# Cached in the guest before the host rewrites it.
cat from-host/small-3.txt > /dev/null

# expect_events WHO PATTERN...: every PATTERN turns up in the event log within 30 s. Letters as
# busybox inotifyd prints them: n create, c modify, w close-write, d delete, m moved-from,
# y moved-to; then the watched directory and the name.
expect_events() {
    _who=$1; shift
    for ev in "$@"; do
        wait_until 30 grep -q "$ev" /tmp/events ||
            { show /tmp/events event; show /tmp/agent.log agent; fail "$_who: no inotify event $ev"; }
    done
    say "OK $_who"
}

# 6. The host edits files while the guest has them cached: the events arrive, and right after
#    them (well within the 1 s TTL) the guest reads the new contents and names.
wait_host host-edits 120
expect_events events-host-edits "n.*	$M/from-host	edited.txt\$" \
    "[cw].*	$M/from-host	small-3.txt\$" "d.*	$M/from-host	small-5.txt\$" \
    "m.*	$M/from-host	small-4.txt\$" "y.*	$M/from-host	renamed-4.txt\$" \
    "n.*	$M	host-edits.sha256\$"
check events-read-at-once sha256sum -c -s host-edits.sha256
check host-edits-read sha256sum -c -s host-edits.sha256
check host-delete-seen test ! -e from-host/small-5.txt
check host-rename-seen test -e from-host/renamed-4.txt -a ! -e from-host/small-4.txt

# 7. A mode change and a new directory with a file in it; once their events are here, the host
#    renames the directory.
stat -c %a events/mode.txt > /dev/null
wait_host host-events 120
expect_events events-attrib "e.*	$M/events	mode.txt\$"
check events-attrib-read-at-once test "$(stat -c %a events/mode.txt)" = 600
expect_events events-new-dir "n.*	$M/events	d\$"
wait_host host-rename 120
expect_events events-dir-rename "m.*	$M/events	d\$" "y.*	$M/events	d2\$"
check events-new-dir-read test "$(cat events/d2/inner.txt)" = "inside a new directory"

# 8. The guest's own changes through the mount are not replayed back to it: one close-write.
echo "made in the guest" > events/guest-made
expect_events events-guest-change "w.*	$M/events	guest-made\$"
# Part of the check, not a wait for readiness: no second event within 2 s.
sleep 2
check events-guest-change-once test "$(grep -c "w.*	$M/events	guest-made\$" /tmp/events)" = 1
kill "$WATCH"
wait "$WATCH"
kill -TERM "$AGENT"
# A hung agent is killed (and the step fails) rather than hanging the script; the killer
# leaves the mount so that it cannot keep it busy.
( cd / && sleep 30 && kill -KILL "$AGENT" 2>/dev/null ) &
KILLER=$!
wait "$AGENT"
_rc=$?
kill "$KILLER" 2>/dev/null
grep -q "host change events ended" /tmp/agent.log || show /tmp/agent.log agent
check events-agent-stops test "$_rc" = 0

cd /
# The automounted submount goes first (the kernel would expire it in time).
grep -q " $M/submount " /proc/mounts && umount "$M/submount"
check umount umount "$M"
check umount-ro umount "$R"
say ALL-DONE
