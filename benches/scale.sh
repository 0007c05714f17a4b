#!/usr/bin/env bash
# Exports a tree of N_DIRS x PER_DIR files (1000 x 1000 by default, made once under
# $SCALE_DIR/src) through ferry-host and ferry-agent as separate release processes, then walks,
# stats and reads a sample of it through the mount, printing the host server's open descriptors
# and RSS after each step. Needs root and /dev/fuse. Usage:
#   cargo build --release && bash benches/scale.sh [N_DIRS] [PER_DIR]
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
report() {
  local fds rss
  fds=$(ls /proc/$HOST/fd | wc -l)
  rss=$(awk '/VmRSS/ {print $2}' /proc/$HOST/status)
  printf '%-34s %8s s   host fds %8d   host RSS %8d KiB\n' "$1" "$2" "$fds" "$rss"
}
report "mounted" 0
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
report "walk (find -type f | wc -l)" "$(t sh -c "find '$MNT' -type f | wc -l")"
report "stat every entry (find -printf %s)" "$(t sh -c "find '$MNT' -printf '%s\n' | wc -l")"
report "read 10,000 files" "$(t sh -c "find '$MNT' -type f | shuf -n 10000 --random-source=/dev/zero | xargs cat | wc -c")"
report "second walk" "$(t sh -c "find '$MNT' -printf '%s\n' | wc -l")"
echo "files: $(find "$MNT" -type f | wc -l) through the mount, $((N_DIRS * PER_DIR)) on the host"
