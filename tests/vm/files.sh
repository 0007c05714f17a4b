# The file workload both VM tests run on a mount of the export, from inside it (`. /files.sh`
# with the current directory on the mount): checks what the host wrote, then writes a tree
# that the host test checks on its side after the run (tests/vm.rs,
# check_guest_writes_on_the_host).

# 2. What the host wrote reads back byte for byte, names and links included.
check host-files-read sha256sum -c -s from-host.sha256
find from-host | sort > /tmp/from-host.list
check host-names-listed cmp -s /tmp/from-host.list from-host.list
check host-symlink-read test "$(readlink from-host/link)" = small-1.txt
check host-symlink-followed cmp -s from-host/link from-host/small-1.txt

# 3. A file workload; the host checks the result on its side after the run.
mkdir -p from-guest/d1/d2 || fail mkdir
dd if=/dev/urandom of=from-guest/rand-1m bs=1024 count=1027 2>/dev/null || fail dd-1m
dd if=/dev/urandom of=from-guest/d1/rand-3m bs=65536 count=49 2>/dev/null || fail dd-3m
head -c 4095 /dev/urandom > from-guest/d1/d2/odd || fail odd
printf XYZ | dd of=from-guest/d1/d2/odd bs=1 seek=100 conv=notrunc 2>/dev/null || fail overwrite
echo hello > from-guest/hello.txt && echo again >> from-guest/hello.txt || fail append
: > from-guest/empty && chmod 600 from-guest/empty || fail chmod
seq 1 5000 > from-guest/seq.txt || fail seq
cp from-host/big.bin from-guest/big-copy.bin || fail copy
cp from-host/big.bin from-guest/trunc.bin && truncate -s 1000 from-guest/trunc.bin || fail truncate
echo doomed > from-guest/unlinked && rm from-guest/unlinked || fail unlink
mkdir from-guest/rmdir-me && rmdir from-guest/rmdir-me || fail rmdir
mv from-guest/seq.txt from-guest/d1/seq-moved.txt || fail rename-across
mv from-guest/hello.txt from-guest/hello-renamed.txt || fail rename
ln -s ../hello-renamed.txt from-guest/d1/link || fail symlink
find from-guest -type f | sort | xargs sha256sum > /tmp/from-guest.sha256
cp /tmp/from-guest.sha256 from-guest.sha256 || fail manifest
find from-guest | sort > from-guest.list || fail list
# Read it all back from the host, not from this guest's page cache.
drop_caches
check guest-files-reread sha256sum -c -s from-guest.sha256
check copy-matches-source cmp -s from-host/big.bin from-guest/big-copy.bin
check truncated-size test "$(stat -c %s from-guest/trunc.bin)" = 1000
check unlinked-gone test ! -e from-guest/unlinked
check mode-kept test "$(stat -c %a from-guest/empty)" = 600
check symlink-resolves test "$(cat from-guest/d1/link)" = "hello
again"
say WORKLOAD-DONE
