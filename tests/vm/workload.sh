# Guest side of tests/vm.rs. Runs inside the QEMU guest as /guest.sh; the host test reads the
# FERRY- lines off the console, answers each FERRY-WAIT by creating sync/NAME on the share,
# and checks on the host side what this script wrote.
#
# FERRY_PORT        host vsock port of ferry-host (reached as vsock:PORT, CID 2)
# FERRY_GUEST_PORT  vsock port of the guest's own ferry-host (the host-initiated direction)
# FERRY_INOTIFY     1: also check that host edits raise inotify events in the guest
. /lib/ferry.sh
M=/mnt/ex
mkdir -p "$M"

# wait_pid PID SECS: wait for a child to exit; its status, or 124 after killing it at SECS.
wait_pid() {
    # The watchdog leaves the mount (its sleep outlives a killed subshell) so it cannot keep
    # the mount busy.
    ( cd / && sleep "$2" && kill -9 "$1" 2>/dev/null ) &
    _w=$!
    wait "$1"; _rc=$?
    kill "$_w" 2>/dev/null; wait "$_w" 2>/dev/null
    [ "$_rc" = 137 ] && _rc=124
    return "$_rc"
}

# 1. Boot order: the agent starts before ferry-host listens, and waits for it.
ferry-agent --connect "vsock:$FERRY_PORT" --mount "ex=$M" --connect-timeout 120 \
    > /tmp/agent.log 2>&1 &
AGENT=$!
check agent-waited-for-host \
    wait_until 60 grep -qs "waiting for ferry-host at vsock:2:$FERRY_PORT" /tmp/agent.log
# Only now does the host start ferry-host.
say "AGENT-WAITING uptime=$(cut -d' ' -f1 /proc/uptime)"
wait_until 150 is_mounted "$M" || { show /tmp/agent.log agent; fail mount; }
say "MOUNTED uptime=$(cut -d' ' -f1 /proc/uptime)"
check agent-connected-on-retry grep -q "ferry-host at vsock:2:$FERRY_PORT answered after" /tmp/agent.log
check mount-is-ferry grep -q "^ferry:ex $M fuse" /proc/mounts
cd "$M" || fail "cd $M"

# 2-3. What the host wrote reads back; a file workload the host checks afterwards.
. /files.sh

# expect_events LOG WHO: the events of the host edits in step 4 are all in LOG. Letters as
# busybox inotifyd prints them: n create, c modify, w close-write, d delete, m moved-from,
# y moved-to.
expect_events() {
    for ev in "n.*	edited.txt" "[cw].*	small-3.txt" "d.*	small-5.txt" \
              "m.*	small-4.txt" "y.*	renamed-4.txt"; do
        wait_until 10 grep -q "$ev" "$1" || { show "$1" event; fail "$2: no inotify event $ev"; }
    done
    say "OK $2"
}

# 4. The host edits files while the guest has them cached.
if [ "${FERRY_INOTIFY:-0}" = 1 ]; then
    # First the same edits on a guest tmpfs: proves the watcher and the patterns, so that a
    # failure below is Ferry's.
    mkdir -p /tmp/ino && echo 3 > /tmp/ino/small-3.txt && echo 4 > /tmp/ino/small-4.txt &&
        echo 5 > /tmp/ino/small-5.txt || fail "inotify self-check setup"
    inotify-events /tmp/ino > /tmp/ino.events 2>/tmp/ino.err &
    SELF=$!
    wait_until 10 grep -qs watching /tmp/ino.err || fail "inotify-events did not start"
    echo new > /tmp/ino/edited.txt; echo changed > /tmp/ino/small-3.txt
    mv /tmp/ino/small-4.txt /tmp/ino/renamed-4.txt; rm /tmp/ino/small-5.txt
    expect_events /tmp/ino.events inotify-self-check
    kill "$SELF"
    inotify-events "$M/from-host" > /tmp/events 2>/tmp/events.err &
    WATCH=$!
    wait_until 10 grep -qs watching /tmp/events.err || fail "inotify-events did not start"
fi
wait_host host-edits 120
if [ "${FERRY_INOTIFY:-0}" = 1 ]; then
    # The guest's caches are dropped before the events are raised: once they are here, the
    # edits read back at once.
    expect_events /tmp/events inotify-host-edits
    kill "$WATCH"
else
    # Without events, names and attributes stay cached until the attribute timeout (1 s
    # against a server that sends no events): part of what is checked, not a readiness wait.
    sleep 2
fi
check host-edits-read sha256sum -c -s host-edits.sha256
check host-delete-seen test ! -e from-host/small-5.txt
check host-rename-seen test -e from-host/renamed-4.txt -a ! -e from-host/small-4.txt

# 5. The other direction: a ferry-host inside the guest on AF_VSOCK, mounted on the host
#    through the VMM's socket (hybrid vsock, host-initiated CONNECT).
mkdir -p /tmp/gx && echo "made in the guest" > /tmp/gx/hello.txt
ferry-host --export gx=/tmp/gx --listen "vsock:$FERRY_GUEST_PORT" > /tmp/guest-host.log 2>&1 &
GHOST=$!
wait_until 30 grep -qs "listening on vsock:$FERRY_GUEST_PORT" /tmp/guest-host.log ||
    { show /tmp/guest-host.log guest-ferry-host; fail "the guest's ferry-host did not listen"; }
wait_host reverse 120
check reverse-write-arrived test "$(cat /tmp/gx/from-host.txt)" = "written by the host over vsock"
kill -TERM "$GHOST"
wait_pid "$GHOST" 20; rc=$?
show /tmp/guest-host.log guest-ferry-host
check guest-ferry-host-stops-on-sigterm test "$rc" = 0

# 6. Unmount from the guest as a user would; the agent notices and exits cleanly.
cd /
check umount umount "$M"
wait_pid "$AGENT" 20; rc=$?
show /tmp/agent.log agent
check agent-exits-0-after-umount test "$rc" = 0
check unmounted sh -c "! grep -q ' $M ' /proc/mounts"
say ALL-DONE
