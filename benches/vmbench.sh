# Guest side of benches/vmbench.rs: the same workload on the Ferry mount (vsock) and on QEMU's
# 9p shares of the same host directory, in one boot. Prints
# "FERRY-RESULT TARGET METRIC SECONDS" lines for the host to tabulate.
#
# FERRY_PORT    host vsock port of ferry-host
# FERRY_FILES   small files in tree/ (for the entry count check) and files to create
# FERRY_MB      MiB for the sequential write and read
# FERRY_ROUNDS  rounds; each runs every target, in a rotated order
. /lib/ferry.sh
mkdir -p /mnt/ferry /mnt/9p /mnt/9p-loose
ferry-agent --connect "vsock:$FERRY_PORT" --mount share=/mnt/ferry > /tmp/agent.log 2>&1 &
wait_until 120 is_mounted /mnt/ferry || { show /tmp/agent.log agent; fail "ferry mount"; }
O=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$O" p9 /mnt/9p || fail "9p mount"
mount -t 9p -o "$O,cache=loose" p9loose /mnt/9p-loose || fail "9p cache=loose mount"
say "MOUNTED $(grep -E ' /mnt/(ferry|9p|9p-loose) ' /proc/mounts | tr '\n' ';')"

# timed TARGET METRIC CMD...: run CMD (output discarded) and report its wall time.
timed() {
    _t=$1 _m=$2; shift 2
    _t0=$(now)
    "$@" > /dev/null || fail "$_t $_m: $*"
    _t1=$(now)
    echo "FERRY-RESULT $_t $_m $(awk -v a="$_t0" -v b="$_t1" 'BEGIN { printf "%.3f", b - a }')"
}

create() {
    _i=0
    while [ "$_i" -lt "$FERRY_FILES" ]; do
        echo "small file $_i written by the guest" > "$1/f$_i" || return 1
        _i=$((_i + 1))
    done
}

run_target() {
    t=$1 d=$2
    drop_caches
    timed "$t" "find (cold)" sh -c "find '$d/tree' > /tmp/find.$t"
    say "RESULT $t entries $(wc -l < /tmp/find.$t)"
    timed "$t" "ls -lR (stat every file)" ls -lR "$d/tree"
    drop_caches
    timed "$t" "read every small file (cold)" sh -c "cat '$d'/tree/*/*"
    mkdir "$d/out-$t" || fail "mkdir $d/out-$t"
    timed "$t" "create small files" create "$d/out-$t"
    timed "$t" "sequential write + fsync" \
        dd if=/dev/zero of="$d/out-$t/big" bs=1M count="$FERRY_MB" conv=fsync
    drop_caches
    timed "$t" "sequential read (cold)" dd if="$d/out-$t/big" of=/dev/null bs=1M
    timed "$t" "delete the created files" rm -rf "$d/out-$t"
}

r=0
while [ "$r" -lt "$FERRY_ROUNDS" ]; do
    case $((r % 3)) in
        0) order="ferry 9p 9p-loose" ;;
        1) order="9p 9p-loose ferry" ;;
        2) order="9p-loose ferry 9p" ;;
    esac
    for t in $order; do run_target "$t" "/mnt/$t"; done
    r=$((r + 1))
done
umount /mnt/9p /mnt/9p-loose
umount /mnt/ferry || fail "umount ferry"
say BENCH-DONE
