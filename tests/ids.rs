//! Owners through real mounts: programs run as several non-root users (the uid is switched in
//! the child process) on `ferry share` mounts in squash, map and passthrough modes.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Mounted, Need, bins, require};

/// Runs `script` with `sh -c` as `uid:gid` with supplementary `groups`; returns (success,
/// stdout+stderr).
fn run_as(uid: u32, gid: u32, groups: &[u32], script: &str) -> (bool, String) {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).current_dir("/");
    // SAFETY: between fork and exec the closure only makes three system calls, which are
    // async-signal-safe, and touches memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("sh runs");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

/// Asserts that `script` succeeds as `uid:gid`.
fn ok_as(uid: u32, gid: u32, groups: &[u32], script: &str) -> String {
    let (ok, out) = run_as(uid, gid, groups, script);
    assert!(ok, "as {uid}:{gid} {groups:?}: {script}\n{out}");
    out
}

/// A source and a mount point that every test user may reach (temp dirs are 0700).
fn dirs() -> (tempfile::TempDir, tempfile::TempDir) {
    let src = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    for d in [src.path(), mnt.path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    (src, mnt)
}

/// `(uid, gid, mode & 0o7777)` of a path, not following a final symlink.
fn owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// Every path under `root` (itself excluded), without following symlinks.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Whether the host file carries a kept owner.
fn has_record(p: &Path) -> bool {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings; a null buffer of size 0 asks for the size only.
    unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"user.ferry.owner".as_ptr(),
            std::ptr::null_mut(),
            0,
        ) >= 0
    }
}

/// What `npm install` does to a tree: nested directories, staging then rename, lots of small
/// files, executables, a bin symlink, a lock file rewritten by rename.
const NPM_STYLE: &str = r#"
set -e
cd "$1"
mkdir -p app && cd app
printf '{"name":"app"}\n' > package.json
for p in left-pad react react-dom lodash; do
  s=node_modules/.staging/$p-1234
  mkdir -p $s/lib/deep/er $s/bin
  for i in 1 2 3 4 5; do printf 'module.exports = %s;\n' $i > $s/lib/deep/er/f$i.js; done
  printf '#!/bin/sh\necho %s\n' $p > $s/bin/cli.js
  chmod 755 $s/bin/cli.js
  mv $s node_modules/$p
  mkdir -p node_modules/.bin
  ln -s ../$p/bin/cli.js node_modules/.bin/$p
done
rmdir node_modules/.staging
printf '{}' > package-lock.json.tmp && mv package-lock.json.tmp package-lock.json
node_modules/.bin/react
cp -r node_modules/lodash node_modules/lodash-copy
touch -d '2020-01-01 00:00' package.json
"#;

#[test]
fn squash_npm_style_tree_as_uid_1000_belongs_to_the_server_user() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let (src, mnt) = dirs();
    let m = Mounted::start(src.path(), mnt.path(), &["--ids", "squash:1000:1000"]);
    let out = ok_as(
        1000,
        1000,
        &[],
        &format!(
            "sh -c '{}' npm {}",
            NPM_STYLE.replace('\'', "'\\''"),
            mnt.path().display()
        ),
    );
    assert_eq!(out.trim(), "react");
    // Inside, everything is uid 1000's.
    let app = mnt.path().join("app");
    let inside = walk(&app);
    assert!(inside.len() > 40, "{inside:?}");
    for p in &inside {
        let (u, g, _) = owner(p);
        assert_eq!((u, g), (1000, 1000), "{}", p.display());
    }
    assert_eq!(owner(&app.join("node_modules/react/bin/cli.js")).2, 0o755);
    // On the host, everything belongs to the server's user (this test's: the share runs as
    // it), and the target creating needs no kept owners.
    // SAFETY: plain getters.
    let (me_u, me_g) = unsafe { (libc::geteuid(), libc::getegid()) };
    let host = walk(&src.path().join("app"));
    assert_eq!(host.len(), inside.len());
    for p in &host {
        let (u, g, _) = owner(p);
        assert_eq!((u, g), (me_u, me_g), "{}", p.display());
        assert!(!has_record(p), "{}", p.display());
    }
    // Host permission checks (the squash default): another VM user may write there too.
    ok_as(
        1001,
        1001,
        &[],
        &format!("echo more >> {}/app/package.json", mnt.path().display()),
    );
    assert!(m.stop().success());
}

/// A postgres-style entrypoint: as root, `chown -R 999:999 data && chmod 700 data`; then the
/// server, as uid 999, writes there; the owners survive a remount; `strip-owners` removes them.
#[test]
fn postgres_style_chown_sticks_across_remounts() {
    if !require(&[Need::Fuse]) {
        return;
    }
    for permissions in ["host", "guest"] {
        let (src, mnt) = dirs();
        let args = ["--ids", "squash:1000:1000", "--permissions", permissions];
        let m = Mounted::start(src.path(), mnt.path(), &args);
        let data = mnt.path().join("data");
        let d = data.display();
        ok_as(
            0,
            0,
            &[],
            &format!(
                "set -e; mkdir -p {d}/global; touch {d}/global/pg_control; chown -R 999:999 {d} && chmod 700 {d}"
            ),
        );
        assert_eq!(owner(&data), (999, 999, 0o700), "{permissions}");
        // initdb and the server, as uid 999: new files, appends, renames, a directory.
        ok_as(
            999,
            999,
            &[],
            &format!(
                "set -e; cd {d}; echo 16 > PG_VERSION; mkdir -m 700 base; echo x > base/1; \
                 echo y >> global/pg_control; echo c > postgresql.auto.conf.tmp; \
                 mv postgresql.auto.conf.tmp postgresql.auto.conf; chmod 600 PG_VERSION; \
                 test \"$(stat -c %u:%g:%a .)\" = 999:999:700"
            ),
        );
        for f in [
            "PG_VERSION",
            "base",
            "base/1",
            "global/pg_control",
            "postgresql.auto.conf",
        ] {
            let (u, g, _) = owner(&data.join(f));
            assert_eq!((u, g), (999, 999), "{permissions}: {f}");
        }
        assert_eq!(owner(&data.join("PG_VERSION")).2, 0o600);
        if permissions == "guest" {
            // The VM's kernel checks against the owners shown: uid 1000 may not look inside.
            let (ok, out) = run_as(1000, 1000, &[], &format!("ls {d}"));
            assert!(!ok && out.contains("Permission denied"), "{out}");
        }
        // The record is invisible from the VM.
        let (_, out) = run_as(0, 0, &[], &format!("getfattr -d -m - {d} 2>&1; true"));
        assert!(!out.contains("ferry"), "{out}");
        // On the host: the server's user owns it all.
        assert_eq!(owner(&src.path().join("data")).0, 0);
        assert!(m.stop().success());

        // Mounted again: the ownership is still there.
        let m = Mounted::start(src.path(), mnt.path(), &args);
        assert_eq!(
            owner(&data),
            (999, 999, 0o700),
            "{permissions} after remount"
        );
        assert_eq!(owner(&data.join("base/1")).0, 999);
        ok_as(999, 999, &[], &format!("echo z >> {d}/base/1"));
        assert!(m.stop().success());

        // strip-owners takes every kept owner away.
        let out = Command::new(&bins().ferry)
            .arg("strip-owners")
            .arg(src.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("removed"),
            "{out:?}"
        );
        assert!(walk(src.path()).iter().all(|p| !has_record(p)));
        let m = Mounted::start(src.path(), mnt.path(), &args);
        assert_eq!(owner(&data).0, 1000);
        assert!(m.stop().success());
    }
}

#[test]
fn map_mode_creates_as_the_mapped_host_user() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let (src, mnt) = dirs();
    // Guest root is host root; guest 1000..1009 are host 201000..201009.
    let m = Mounted::start(
        src.path(),
        mnt.path(),
        &["--ids", "map:0:0:1,1000:201000:10"],
    );
    let mp = mnt.path().display();
    ok_as(
        1000,
        1000,
        &[],
        &format!("set -e; mkdir {mp}/d; echo hi > {mp}/d/f; ln -s f {mp}/d/l"),
    );
    for (p, want) in [("d", 0o755), ("d/f", 0o644)] {
        assert_eq!(owner(&src.path().join(p)), (201_000, 201_000, want), "{p}");
        assert_eq!(owner(&mnt.path().join(p)), (1000, 1000, want), "{p}");
    }
    assert_eq!(owner(&src.path().join("d/l")).0, 201_000);
    ok_as(1005, 1005, &[], &format!("touch {mp}/g"));
    assert_eq!(owner(&src.path().join("g")).0, 201_005);
    // A host file whose owner no range maps shows as the overflow id.
    std::fs::write(src.path().join("foreign"), b"").unwrap();
    std::os::unix::fs::chown(src.path().join("foreign"), Some(4242), Some(4242)).unwrap();
    let (u, g, _) = owner(&mnt.path().join("foreign"));
    assert_eq!((u, g), (65534, 65534));
    // A guest user outside every range cannot create (as with an idmapped mount)...
    let (ok, out) = run_as(1500, 1500, &[], &format!("touch {mp}/nope"));
    assert!(!ok && out.contains("Value too large"), "{out}");
    assert!(!src.path().join("nope").exists());
    // ... and an unmapped id cannot be given.
    let (ok, out) = run_as(0, 0, &[], &format!("chown 1500 {mp}/g"));
    assert!(!ok && out.contains("Invalid argument"), "{out}");
    ok_as(0, 0, &[], &format!("chown 1009:1009 {mp}/g"));
    assert_eq!(owner(&src.path().join("g")).0, 201_009);
    assert!(m.stop().success());
}

/// Map mode confines guest root to the mapped range, as an idmapped mount or a user
/// namespace would: a host-root-owned file cannot be overwritten, chmodded or chowned, and a
/// host directory it may not search stays closed, whatever the guest kernel allowed.
#[test]
fn map_mode_confines_guest_root() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let (src, mnt) = dirs();
    let etc = src.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(etc.join("passwd"), b"root:x:0:0\n").unwrap();
    std::fs::set_permissions(etc.join("passwd"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret = src.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(secret.join("key"), b"k").unwrap();
    let m = Mounted::start(src.path(), mnt.path(), &["--ids", "map:0:100000:65536"]);
    let mp = mnt.path().display();

    for script in [
        format!("echo owned > {mp}/etc/passwd"),
        format!("chmod 4755 {mp}/etc/passwd"),
        format!("chown 0:0 {mp}/etc/passwd"),
        format!("truncate -s 0 {mp}/etc/passwd"),
        format!("touch {mp}/etc/new"),
        format!("rm -f {mp}/etc/passwd"),
        format!("cat {mp}/secret/key"),
        format!("ls {mp}/secret"),
    ] {
        let (ok, out) = run_as(0, 0, &[], &script);
        assert!(!ok, "guest root could: {script}\n{out}");
    }
    assert_eq!(std::fs::read(etc.join("passwd")).unwrap(), b"root:x:0:0\n");
    assert_eq!(owner(&etc.join("passwd")), (0, 0, 0o644));
    assert!(!etc.join("new").exists());

    // Within the range guest root keeps its powers: chown among mapped ids, then write a
    // file only its owner may write.
    ok_as(
        0,
        0,
        &[],
        &format!(
            "set -e; echo a > {mp}/f; chown 1000:1000 {mp}/f; chmod 600 {mp}/f; echo b >> {mp}/f"
        ),
    );
    assert_eq!(owner(&src.path().join("f")), (101_000, 101_000, 0o600));
    ok_as(1000, 1000, &[], &format!("cat {mp}/f"));
    let (ok, _) = run_as(1001, 1001, &[], &format!("cat {mp}/f"));
    assert!(!ok);
    assert!(m.stop().success());
}

/// Map mode runs every request as the caller, so the host checks its supplementary groups
/// too: a member of a file's group by a supplementary group only reads and writes it, and
/// searches a group-only directory, as on a local disk.
#[test]
fn map_mode_honours_supplementary_groups_on_every_request() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let (src, mnt) = dirs();
    let shared = src.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("f"), b"data\n").unwrap();
    // Guest 1000..1009 are host 201000..201009; guest group 1005 is host 201005.
    for (p, mode) in [(&shared, 0o770), (&shared.join("f"), 0o660)] {
        std::os::unix::fs::chown(p, Some(201_000), Some(201_005)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let m = Mounted::start(
        src.path(),
        mnt.path(),
        &["--ids", "map:0:0:1,1000:201000:10"],
    );
    let mp = mnt.path().display();
    ok_as(
        1001,
        1001,
        &[1001, 1005],
        &format!("set -e; ls {mp}/shared; cat {mp}/shared/f; echo more >> {mp}/shared/f"),
    );
    assert_eq!(
        std::fs::read(shared.join("f")).unwrap(),
        b"data\nmore\n".to_vec()
    );
    // Without the group: refused.
    let (ok, out) = run_as(1002, 1002, &[1002], &format!("cat {mp}/shared/f"));
    assert!(!ok, "{out}");
    assert!(m.stop().success());
}

/// Supplementary groups, set-group-id directories, the sticky bit and umask, as on a local
/// disk (passthrough: the share runs as root).
#[test]
fn passthrough_groups_setgid_sticky_and_umask() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let (src, mnt) = dirs();
    let team = src.path().join("team");
    std::fs::create_dir(&team).unwrap();
    std::os::unix::fs::chown(&team, Some(0), Some(2000)).unwrap();
    std::fs::set_permissions(&team, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let tmp = src.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let m = Mounted::start(src.path(), mnt.path(), &["--ids", "passthrough"]);
    let mp = mnt.path().display();

    // A member through a supplementary group creates; files take the directory's group and
    // subdirectories its set-group-id bit.
    ok_as(
        1000,
        1000,
        &[2000],
        &format!(
            "set -e; umask 002; echo a > {mp}/team/f; mkdir {mp}/team/sub; echo b > {mp}/team/sub/g"
        ),
    );
    assert_eq!(owner(&team.join("f")), (1000, 2000, 0o664));
    assert_eq!(owner(&team.join("sub")), (1000, 2000, 0o2775));
    assert_eq!(owner(&team.join("sub/g")), (1000, 2000, 0o664));
    // A user outside the group cannot get in.
    let (ok, out) = run_as(1001, 1001, &[], &format!("touch {mp}/team/x"));
    assert!(!ok && out.contains("Permission denied"), "{out}");

    // umask, as the process sets it.
    ok_as(
        1000,
        1000,
        &[],
        &format!("set -e; umask 027; touch {mp}/tmp/u; mkdir {mp}/tmp/v"),
    );
    assert_eq!(owner(&tmp.join("u")), (1000, 1000, 0o640));
    assert_eq!(owner(&tmp.join("v")), (1000, 1000, 0o750));

    // The sticky bit: another user may not remove or rename uid 1000's file.
    ok_as(
        1000,
        1000,
        &[],
        &format!("echo mine > {mp}/tmp/mine && chmod 666 {mp}/tmp/mine"),
    );
    let (ok, out) = run_as(1001, 1001, &[], &format!("rm -f {mp}/tmp/mine"));
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    let (ok, out) = run_as(
        1001,
        1001,
        &[],
        &format!("mv {mp}/tmp/mine {mp}/tmp/theirs"),
    );
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    // Writing it is allowed (mode 666); removing their own file too.
    ok_as(
        1001,
        1001,
        &[],
        &format!("set -e; echo x >> {mp}/tmp/mine; touch {mp}/tmp/t; rm {mp}/tmp/t"),
    );
    assert!(tmp.join("mine").exists());
    // Only the owner may chmod; only root may chown.
    let (ok, _) = run_as(1001, 1001, &[], &format!("chmod 600 {mp}/tmp/mine"));
    assert!(!ok);
    let (ok, _) = run_as(1000, 1000, &[], &format!("chown 1001 {mp}/tmp/mine"));
    assert!(!ok);
    ok_as(0, 0, &[], &format!("chown 1001:2000 {mp}/tmp/mine"));
    assert_eq!(owner(&tmp.join("mine")).0, 1001);
    assert!(m.stop().success());
}

/// A mapping that cannot work stops the program at start, naming the flag.
#[test]
fn bad_mappings_stop_at_start_naming_the_flag() {
    let src = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    for (ids, why) in [
        ("map:0:100:10,5:200:10", "overlap"),
        ("map:0:100:0", "at least 1"),
        ("map:0:4294967290:100", "run past"),
        ("squash:1000", "squash:UID:GID"),
        ("squash:me:1000", "squash uid"),
        ("everyone", "unknown mode"),
    ] {
        let out = Command::new(&bins().ferry)
            .arg("share")
            .arg(src.path())
            .arg(mnt.path())
            .args(["--ids", ids])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{ids}");
        assert!(err.contains("--ids") && err.contains(why), "{ids}: {err}");
    }
    for (export, why) in [
        ("a=/tmp:ids=map:0:0:5,u:3:9:1", "overlap"),
        ("a=/tmp:ids=squash:1:x", "squash gid"),
        ("a=/tmp:persist-owners=maybe", "persist-owners"),
    ] {
        let out = Command::new(&bins().host)
            .args(["--listen", "unix:/nonexistent/x.sock", "--export", export])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{export}");
        assert!(
            err.contains("--export") && err.contains(why),
            "{export}: {err}"
        );
    }
    let out = Command::new(&bins().host)
        .args([
            "--listen",
            "unix:/tmp/x",
            "--export",
            "a=/tmp",
            "--ids",
            "map:u:1:1:1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ids") && err.contains("no gid range"),
        "{err}"
    );
    assert!(!out.status.success());
    // Creating as the caller needs root: an unprivileged server refuses at start.
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } == 0 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let (ok, out) = run_as(
            1000,
            1000,
            &[],
            &format!(
                "{} --no-auth --listen unix:{}/s --export a={} --ids passthrough",
                bins().host.display(),
                dir.path().display(),
                dir.path().display()
            ),
        );
        assert!(
            !ok && out.contains("needs") && out.contains("root"),
            "{out}"
        );
    }
}

#[test]
fn help_explains_the_owner_flags() {
    let out = Command::new(&bins().ferry)
        .args(["share", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--ids",
        "squash:UID:GID",
        "map:",
        "--persist-owners",
        "--permissions",
        "Default",
    ] {
        assert!(
            help.contains(word),
            "ferry share --help lacks {word}:\n{help}"
        );
    }
    let out = Command::new(&bins().host).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        ":ids=MODE",
        "--ids",
        "strip-owners",
        "--permissions",
        "--persist-owners",
    ] {
        assert!(
            help.contains(word),
            "ferry-host --help lacks {word}:\n{help}"
        );
    }
}

/// A kept owner is honoured only on a file the server could have written it on: another host
/// user cannot present its own file to guests as set-user-ID root by writing the record.
#[test]
fn kept_owners_on_another_host_users_files_are_ignored() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let (src, mnt) = dirs();
    let record = |p: &Path, v: &str| {
        let st = Command::new("setfattr")
            .args(["-n", "user.ferry.owner", "-v", v])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    };
    let evil = src.path().join("evil");
    std::fs::write(&evil, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&evil, Some(4242), Some(4242)).unwrap();
    record(&evil, "0:0:104755:100644");
    // The same record on a file of the server's own user (root here) is honoured.
    let mine = src.path().join("mine");
    std::fs::write(&mine, b"").unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o644)).unwrap();
    record(&mine, "999:999:100600:100644");
    let m = Mounted::start(src.path(), mnt.path(), &["--ids", "squash:1000:1000"]);
    assert_eq!(owner(&mnt.path().join("evil")), (1000, 1000, 0o644));
    assert_eq!(owner(&mnt.path().join("mine")), (999, 999, 0o600));
    assert!(m.stop().success());
}
