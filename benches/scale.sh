#!/usr/bin/env bash
# Exports a tree of N_DIRS x PER_DIR files (1000 x 1000 by default, made once under
# $SCALE_DIR/src) through ferry-host and ferry-agent as separate release processes, then walks,
# stats and reads a sample of it through the mount, printing the host server's open descriptors,
# RSS and peak RSS after each step, and the server's memory per node. The same walk and stat on
# the host directory, run first, give the native time. Needs root and /dev/fuse. Usage:
#   cargo build --release -p ferry-host -p ferry-agent && bash benches/scale.sh [N_DIRS] [PER_DIR]
# FERRY_MAX_NODE_FDS sets the server's node descriptor cap (default 4096).
set -euo pipefail
cd "$(dirname "$0")/.."
N_DIRS=${1:-1000}
PER_DIR=${2:-1000}
SCALE_DIR=${SCALE_DIR:-/tmp/ferry-scale}
SRC=$SCALE_DIR/src-$N_DIRS-$PER_DIR
MNT=$SCALE_DIR/mnt
SOCK=$SCALE_DIR/ferry.sock
BIN=target/release
mkdir -p "$SCALE_DIR" "$MNT"
if [ ! -d "$SRC" ]; then
  echo "creating $((N_DIRS * PER_DIR)) files in $SRC"
  python3 - "$SRC" "$N_DIRS" "$PER_DIR" <<'PY'
import os, sys
root, n_dirs, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(root + ".tmp", exist_ok=True)
for d in range(n_dirs):
    dp = os.path.join(root + ".tmp", "d%04d" % d)
    os.makedirs(dp, exist_ok=True)
    for f in range(per):
        fd = os.open(os.path.join(dp, "f%04d" % f), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"file %d/%d\n" % (d, f))
        os.close(fd)
os.rename(root + ".tmp", root)
PY
fi
rm -f "$SOCK"
# Both ends read the token from the environment.
export FERRY_TOKEN="scale-$$-$RANDOM"
"$BIN/ferry-host" --export "s=$SRC" --listen "unix:$SOCK" 2>"$SCALE_DIR/host.log" &
HOST=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
"$BIN/ferry-agent" --connect "unix:$SOCK" --mount "s=$MNT" 2>"$SCALE_DIR/agent.log" &
AGENT=$!
cleanup() {
  kill "$AGENT" 2>/dev/null || true
  wait "$AGENT" 2>/dev/null || true
  kill "$HOST" 2>/dev/null || true
  wait "$HOST" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do grep -q " $MNT fuse" /proc/mounts && break; sleep 0.1; done
rss() { awk -v k="$1:" '$1 == k {print $2}' /proc/$HOST/status; }
report() {
  printf '%-36s %9s s   host fds %7d   RSS %8d KiB   peak %8d KiB\n' \
    "$1" "$2" "$(ls /proc/$HOST/fd | wc -l)" "$(rss VmRSS)" "$(rss VmHWM)"
}
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
echo "native walk (find -type f | wc -l)   $(t sh -c "find '$SRC' -type f | wc -l") s"
echo "native stat every entry               $(t sh -c "find '$SRC' -printf '%s\n' | wc -l") s"
report "mounted" 0
RSS0=$(rss VmRSS)
report "walk (find -type f | wc -l)" "$(t sh -c "find '$MNT' -type f | wc -l")"
report "stat every entry (find -printf %s)" "$(t sh -c "find '$MNT' -printf '%s\n' | wc -l")"
# A fixed sample of 10,000 files, read through the mount and checked against the host.
(cd "$SRC" && find . -type f | shuf -n 10000 --random-source=/dev/zero) >"$SCALE_DIR/sample"
report "read 10,000 files" "$(t sh -c "cd '$MNT' && xargs cat <'$SCALE_DIR/sample' | md5sum >'$SCALE_DIR/sample.mnt'")"
(cd "$SRC" && xargs cat <"$SCALE_DIR/sample" | md5sum >"$SCALE_DIR/sample.src")
cmp -s "$SCALE_DIR/sample.mnt" "$SCALE_DIR/sample.src" || { echo "sample content differs"; exit 1; }
echo "sample content matches the host ($(cut -c1-12 "$SCALE_DIR/sample.src"))"
report "second walk" "$(t sh -c "find '$MNT' -printf '%s\n' | wc -l")"
# The guest kernel keeps every inode it looked up (no memory pressure here), so the server
# holds one node per entry: the files, the directories and the root.
NODES=$((N_DIRS * PER_DIR + N_DIRS + 1))
echo "server memory per node: ($(rss VmRSS) - $RSS0) KiB / $NODES nodes = $(( ($(rss VmRSS) - RSS0) * 1024 / NODES )) bytes"
echo "agent RSS $(awk '$1 == "VmRSS:" {print $2}' /proc/$AGENT/status) KiB"
echo "files: $(find "$MNT" -type f | wc -l) through the mount, $((N_DIRS * PER_DIR)) on the host"
