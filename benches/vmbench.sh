# Guest side of benches/vmbench.rs: the same workload on every target sharing one host
# directory, in one boot: the Ferry agent over vsock, QEMU's 9p (cache=none and loose), and
# virtio-fs devices (Ferry's backend, virtiofsd) mounted by their tag. Prints
# "FERRY-RESULT TARGET METRIC SECONDS" lines for the host to tabulate.
#
# FERRY_TARGETS comma-separated: ferry, 9p, 9p-loose, and virtio-fs tags (mounted at /mnt/TAG)
# FERRY_PORT    host vsock port of ferry-host
# FERRY_FILES   small files in tree/ (for the entry count check) and files to create
# FERRY_MB      MiB for the sequential write and read
# FERRY_ROUNDS  rounds; each runs every target, in a rotated order
. /lib/ferry.sh
TARGETS=$(echo "$FERRY_TARGETS" | tr ',' ' ')

# timed TARGET METRIC CMD...: run CMD (output discarded) and report its wall time.
timed() {
    _t=$1 _m=$2; shift 2
    _t0=$(now)
    "$@" > /dev/null || fail "$_t $_m: $*"
    _t1=$(now)
    echo "FERRY-RESULT $_t $_m $(awk -v a="$_t0" -v b="$_t1" 'BEGIN { printf "%.3f", b - a }')"
}

ferry_mount() {
    ferry-agent --connect "vsock:$FERRY_PORT" --mount share=/mnt/ferry > /tmp/agent.log 2>&1 &
    wait_until 120 is_mounted /mnt/ferry || { show /tmp/agent.log agent; return 1; }
}
O=trans=virtio,version=9p2000.L,msize=512000
# mount_target TARGET: mounts it, timing the mount (the device is there from boot). Every
# round mounts again in its own order: the first mount of a boot also pays for the emulator
# translating the kernel's mount path, which would otherwise always fall on the first target.
mount_target() {
    mkdir -p "/mnt/$1"
    case $1 in
        # The agent mounts once and is not timed: it may still be waiting for the host's
        # ferry-host to start.
        ferry) is_mounted /mnt/ferry || ferry_mount || fail "ferry mount" ;;
        9p) timed "$1" "mount" mount -t 9p -o "$O" p9 /mnt/9p ;;
        9p-loose) timed "$1" "mount" mount -t 9p -o "$O,cache=loose" p9loose /mnt/9p-loose ;;
        *) timed "$1" "mount" mount -t virtiofs "$1" "/mnt/$1" ;;
    esac
}
unmount_target() {
    [ "$1" = ferry ] || umount "/mnt/$1" || fail "umount $1"
}
for t in $TARGETS; do mount_target "$t"; done
say "MOUNTED $(grep -E ' /mnt/' /proc/mounts | tr '\n' ';')"

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
n=$(echo $TARGETS | wc -w)
while [ "$r" -lt "$FERRY_ROUNDS" ]; do
    # Each round starts at another target, so no target always runs first (or last).
    i=0
    order=""
    while [ "$i" -lt "$n" ]; do
        order="$order $(echo $TARGETS | awk -v k=$(((i + r) % n + 1)) '{ print $k }')"
        i=$((i + 1))
    done
    if [ "$r" -gt 0 ]; then
        for t in $order; do unmount_target "$t"; done
        for t in $order; do mount_target "$t"; done
    fi
    for t in $order; do run_target "$t" "/mnt/$t"; done
    r=$((r + 1))
done
for t in $TARGETS; do umount "/mnt/$t" || fail "umount $t"; done
say BENCH-DONE
