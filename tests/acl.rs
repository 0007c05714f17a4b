//! POSIX ACLs through real mounts, against a native directory: the same script (setfacl,
//! getfacl, creation under default ACLs with several modes and umasks, chmod and the mask,
//! `cp -a`, `tar --acls`, `rsync -A`, and access checks as users whom only an ACL lets in or
//! keeps out) runs in both and must print the same, in passthrough and map modes; squash mode
//! and `--acl off` refuse ACLs as a filesystem without them does.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::harness::{Mounted, Need, require};

const TOOLS: [Need<'static>; 6] = [
    Need::Fuse,
    Need::Program("setfacl"),
    Need::Program("getfacl"),
    Need::Program("setpriv"),
    Need::Program("rsync"),
    Need::Program("python3"),
];

/// Creates `$1` with `open(O_CREAT)` mode `$2` under umask `$3` (the shell has no such tool).
const CREATE: &str = "import os, sys; os.umask(int(sys.argv[3], 8)); \
                      os.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, int(sys.argv[2], 8)))";

/// The differential script, run as root in `$D` (world-searchable). Every line it prints is
/// compared between the native directory and the mount. Users: 1001 and 1002 are named in
/// ACLs, 1003 is in group 2002 (named in ACLs), 1004 is nobody in particular.
const SCRIPT: &str = r#"
set -u
cd "$D"
create() { python3 -c "$CREATE" "$@"; }
show() { for p in "$@"; do echo "-- $p $(stat -c %a "$p")"; getfacl -cnp "$p" 2>&1; done; }
as() { u=$1; shift; setpriv --reuid=$u --regid=$u --groups=$([ $u = 1003 ] && echo 2002 || echo $u) sh -c "$*" >/dev/null 2>&1 && echo "$u: ok: $*" || echo "$u: denied: $*"; }

echo "== access ACLs"
touch f; chmod 0640 f
setfacl -m u:1001:rw-,g:2002:r-- f
show f
chmod 0600 f
show f
chmod 0670 f
show f
setfacl -m m::r-- f
show f
setfacl -x u:1001 f
show f
setfacl -b f
show f

echo "== default ACLs and inheritance"
mkdir -m 0750 shared
setfacl -m u:1001:rwx,g:2002:r-x shared
setfacl -d -m u:1001:rwx,g:2002:r-x,m::rwx shared
show shared
for um in 022 077 002 000 027; do
  create shared/f$um 0666 $um
  create shared/x$um 0755 $um
  create shared/p$um 0600 $um
  (umask $um; mkdir shared/d$um; mkdir -m 0700 shared/e$um; mkfifo -m 0664 shared/q$um)
done
show shared/*
mkdir shared/d022/inner; create shared/d022/inner/f 0644 022
show shared/d022/inner shared/d022/inner/f
# A default ACL without a mask entry: the new group class comes from the group entry.
mkdir nomask; setfacl -d -m g::rwx,o::r-x nomask
create nomask/f 0664 022
show nomask nomask/f
setfacl -k shared
create shared/after 0666 022
show shared shared/after

echo "== programs"
mkdir -p tree/sub; echo data > tree/file; echo more > tree/sub/file
setfacl -m u:1002:rw- tree/file
setfacl -m u:1001:rwx tree/sub
setfacl -d -m g:2002:rwx tree/sub
cp -a tree cp_copy
mkdir tar_copy; tar --acls -cf - tree | tar --acls -xf - -C tar_copy
rsync -aA tree/ rsync_copy/
for t in tree cp_copy tar_copy/tree rsync_copy; do echo "-- $t"; (cd $t && getfacl -Rcnp . 2>&1); done

echo "== permission checks"
chmod 0755 .
echo secret > r; chmod 0600 r; setfacl -m u:1001:r--,g:2002:r-- r
echo data > w; chmod 0644 w; setfacl -m u:1002:rw- w
echo data > deny; chmod 0666 deny; setfacl -m u:1001:--- deny
printf '#!/bin/sh\necho ran\n' > x; chmod 0700 x; setfacl -m u:1001:r-x x
echo data > masked; chmod 0600 masked; setfacl -m u:1001:rw-,m::r-- masked
mkdir -m 0755 cdir; setfacl -m u:1002:rwx,g:2002:-wx cdir
mkdir -m 0700 sdir; setfacl -m u:1001:--x sdir; echo in > sdir/file; chmod 0644 sdir/file
for u in 1001 1002 1003 1004; do
  as $u "cat '$D/r'"
  as $u "echo more >> '$D/w'"
  as $u "cat '$D/deny'"
  as $u "echo more >> '$D/deny'"
  as $u "'$D/x'"
  as $u "cat '$D/masked'"
  as $u "echo more >> '$D/masked'"
  as $u "touch '$D/cdir/by$u'"
  as $u "ls '$D/cdir'"
  as $u "cat '$D/sdir/file'"
  as $u "ls '$D/sdir'"
done
show cdir/by1002 cdir/by1003
"#;

/// A world-searchable temporary directory (test users must reach into it).
fn open_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// Runs [`SCRIPT`] as root in `dir`; returns what it printed.
fn run_script(dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .env("D", dir)
        .env("CREATE", CREATE)
        .output()
        .expect("sh runs");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s.replace(&*dir.to_string_lossy(), "$D")
}

/// The first differing line of two outputs, with some context, for the failure message.
fn first_difference(native: &str, mounted: &str) -> Option<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (native.lines().collect(), mounted.lines().collect());
    let i = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))?;
    let from = i.saturating_sub(12);
    Some(format!(
        "line {}:\n--- native\n{}\n--- mount\n{}",
        i + 1,
        a[from..(i + 4).min(a.len())].join("\n"),
        b[from..(i + 4).min(b.len())].join("\n")
    ))
}

/// Runs the script natively and on a `ferry share` mount with `args`; returns the mount's
/// source directory (for host-side checks) after asserting both printed the same.
fn differential(args: &[&str]) -> (tempfile::TempDir, Mounted, tempfile::TempDir) {
    let native = open_dir();
    let want = run_script(native.path());
    // Sanity: the script did what it is about natively (ACLs granted and refused access).
    assert!(want.contains("1001: ok: cat"), "{want}");
    assert!(want.contains("1001: denied: cat"), "{want}");
    assert!(!want.contains("Operation not supported"), "{want}");
    let src = open_dir();
    let mnt = open_dir();
    let m = Mounted::start(src.path(), mnt.path(), args);
    let got = run_script(mnt.path());
    if let Some(diff) = first_difference(&want, &got) {
        panic!("ferry share {args:?} differs from a native directory at {diff}");
    }
    (src, m, mnt)
}

/// The `getfacl -n` entries of a host path.
fn host_acl(p: &Path) -> String {
    let out = Command::new("getfacl")
        .args(["-cnp"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn passthrough_acls_behave_as_on_a_native_directory() {
    if !require(&TOOLS) {
        return;
    }
    let (src, _m, _mnt) = differential(&["--ids", "passthrough"]);
    assert!(host_acl(&src.path().join("r")).contains("user:1001:r--"));
}

#[test]
fn mapped_acls_behave_as_on_a_native_directory_and_translate_ids() {
    if !require(&TOOLS) {
        return;
    }
    let map = "map:0:0:1000,1000:101000:2000";
    let (src, _m, mnt) = differential(&["--ids", map]);
    // On the host, every named entry carries the host id of the guest's.
    let r = host_acl(&src.path().join("r"));
    assert!(
        r.contains("user:101001:r--") && r.contains("group:102002:r--"),
        "{r}"
    );
    let shared = host_acl(&src.path().join("shared/d022/inner"));
    assert!(shared.contains("default:user:101001:rwx"), "{shared}");
    // A host entry whose id no range maps shows as the overflow id...
    let f = src.path().join("hostset");
    std::fs::write(&f, b"x").unwrap();
    let st = Command::new("setfacl")
        .args(["-m", "u:5000:r--,g:101500:rw-"])
        .arg(&f)
        .status()
        .unwrap();
    assert!(st.success());
    let seen = host_acl(&mnt.path().join("hostset"));
    assert!(
        seen.contains("user:65534:r--") && seen.contains("group:1500:rw-"),
        "{seen}"
    );
    // ...and a guest id outside every range cannot be written: EINVAL, nothing changed.
    let out = Command::new("setfacl")
        .args(["-m", "u:5000:rwx"])
        .arg(mnt.path().join("r"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Invalid argument"), "{err}");
    assert_eq!(host_acl(&src.path().join("r")), r);
}

/// What a mount without ACLs shows: setfacl refused with EOPNOTSUPP, no host ACL visible,
/// access by the mode bits alone, creation by the umask alone.
fn acls_refused(args: &[&str]) {
    let src = open_dir();
    let mnt = open_dir();
    let f = src.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    let d = src.path().join("d");
    std::fs::create_dir(&d).unwrap();
    for (p, spec) in [(&f, "u:1001:rw-"), (&d, "d:u:1001:rwx")] {
        let st = Command::new("setfacl")
            .args(["-m", spec])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let _m = Mounted::start(src.path(), mnt.path(), args);
    let seen = host_acl(&mnt.path().join("f"));
    assert!(!seen.contains("1001"), "{args:?}: {seen}");
    let out = Command::new("setfacl")
        .args(["-m", "u:1002:r--"])
        .arg(mnt.path().join("f"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Operation not supported"),
        "{args:?}: {err}"
    );
    let names = Command::new("getfattr")
        .args(["-d", "-m", "-", "--absolute-names"])
        .arg(mnt.path().join("f"))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(!names.contains("posix_acl"), "{args:?}: {names}");
    // The host's ACLs are untouched.
    assert!(host_acl(&f).contains("user:1001:rw-"));
}

#[test]
fn squash_mode_and_acl_off_refuse_acls() {
    if !require(&TOOLS) || !require(&[Need::Program("getfattr")]) {
        return;
    }
    acls_refused(&["--ids", "squash:0:0"]);
    acls_refused(&["--ids", "squash:0:0", "--permissions", "guest"]);
    acls_refused(&["--ids", "passthrough", "--acl", "off"]);
    acls_refused(&["--ids", "map:0:0:1000,1000:101000:2000", "--acl", "off"]);
}
