# Guest side of tests/vm_virtiofsd.rs: each virtio-fs device is served by ferry-virtiofsd
# started with one launcher's exact command line; the guest mounts every tag and runs the file
# workload inside it, which the host checks afterwards.
# FERRY_TAGS  the mount tags, comma-separated
. /lib/ferry.sh
for tag in $(echo "$FERRY_TAGS" | tr , ' '); do
    M=/mnt/$tag
    mkdir -p "$M"
    check "mount-$tag" mount -t virtiofs "$tag" "$M"
    check "is-virtiofs-$tag" grep -q "^$tag $M virtiofs" /proc/mounts
    cd "$M" || fail "cd $M"
    . /files.sh
    cd / || fail "cd /"
    check "umount-$tag" umount "$M"
    say "OK workload-$tag"
done
say ALL-DONE
