# Helpers for Ferry's guest scripts: `. /lib/ferry.sh`. Lines starting with FERRY- are what the
# host reads off the serial console; everything else is there for a human reading a failure.

# say WORD...: a line for the host.
say() { echo "FERRY-$*"; }

# fail WHAT: report and end the script (the host fails the test on any FERRY-FAIL).
fail() { echo "FERRY-FAIL $*"; exit 1; }

# check WHAT CMD...: run CMD; FERRY-OK WHAT or FERRY-FAIL WHAT (and exit).
check() {
    _what=$1; shift
    if "$@"; then echo "FERRY-OK $_what"; else fail "$_what"; fi
}

# now: wall clock in seconds with microseconds (busybox adjtimex; `date` has no %N here).
now() {
    adjtimex | awk '$1 == "time.tv_sec:" { s = $2 } $1 == "time.tv_usec:" { u = $2 }
                    END { printf "%d.%06d\n", s, u }'
}

# wait_until SECS CMD...: retry CMD every 0.1 s until it succeeds; false after SECS.
wait_until() {
    _n=$(($1 * 10)); shift
    while ! "$@"; do
        _n=$((_n - 1)); [ "$_n" -gt 0 ] || return 1
        sleep 0.1
    done
}

is_mounted() { grep -q " $1 " /proc/mounts; }

# wait_host NAME SECS: tell the host we wait for it (FERRY-WAIT NAME), then wait for it to
# create sync/NAME on the Ferry mount $M.
wait_host() {
    say "WAIT $1"
    wait_until "$2" test -e "$M/sync/$1" || fail "the host never signalled $1"
}

# drop_caches: the next access goes to the file server again.
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# show FILE PREFIX: copy a log to the console, each line prefixed.
show() { [ -f "$1" ] && sed "s/^/$2: /" "$1"; }
