//! The command lines launchers really build, each cited from its source, read by [`parse`].

use super::*;

fn serve(args: &[&str]) -> Compat {
    match parse(args.iter().copied()) {
        Ok(Invocation::Serve(c)) => *c,
        other => panic!("{args:?}: {other:?}"),
    }
}

fn has_note(c: &Compat, start: &str) -> bool {
    c.notes.iter().any(|n| n.starts_with(start))
}

/// libvirt, src/qemu/qemu_virtiofs.c, `qemuVirtioFSBuildCommandLine` (libvirt/libvirt at
/// 000477115ed4): `--fd=N`, then `-o source=PATH[,cache=..][,sandbox=..][,xattr|no_xattr]
/// [,flock|no_flock][,posix_lock|no_posix_lock]` with commas in PATH doubled, then
/// `--thread-pool-size=N` and `-d` when asked for.
#[test]
fn libvirt() {
    let c = serve(&[
        "--fd=25",
        "-o",
        "source=/srv/a,,b,cache=always,sandbox=chroot,xattr,flock,posix_lock",
        "--thread-pool-size=16",
        "-d",
    ]);
    assert_eq!(c.socket, Socket::Fd(25));
    assert_eq!(
        c.shared_dir,
        PathBuf::from("/srv/a,b"),
        "',,' is a literal comma"
    );
    assert_eq!(c.log_level.as_deref(), Some("debug"));
    assert!(has_note(&c, "-o cache=always"));
    assert!(has_note(&c, "-o sandbox=chroot"));
    assert!(has_note(&c, "-o flock"));
    assert!(has_note(&c, "-o posix_lock"));
    assert!(has_note(&c, "--thread-pool-size=16"));
    assert!(!c.read_only);
    assert_eq!(c.name, DEFAULT_NAME);
    // The plainest domain: no cache, sandbox or lock attributes in the XML.
    let c = serve(&["--fd=3", "-o", "source=/srv/share"]);
    assert_eq!(
        (c.socket, c.shared_dir, c.notes.len()),
        (Socket::Fd(3), PathBuf::from("/srv/share"), 0)
    );
    // xattr='off' and the other negative switches.
    let c = serve(&[
        "--fd=3",
        "-o",
        "source=/srv/share,cache=none,no_xattr,no_flock,no_posix_lock",
    ]);
    assert!(has_note(&c, "-o no_xattr"));
    assert!(has_note(&c, "-o cache=none"));
}

/// libvirt releases after Debian 12's 9.0 run `BINARY --print-capabilities` first
/// (`qemuVirtioFSPrepareDomain` → `qemuVhostUserFillFSCapabilities`) and, since Ferry answers
/// `separate-options`, build the Rust virtiofsd's form instead of `-o`
/// (`qemuVirtioFSBuildCommandLine`): `--fd=N --shared-dir PATH [--cache never|always]
/// [--sandbox MODE] [--xattr] [--thread-pool-size=N] [--rlimit-nofile=N]
/// [--log-level debug]`, the path as one argument (no comma escaping). `<lock>` in the
/// domain is refused by libvirt itself in this form; session (unprivileged) libvirt adds
/// `--uid-map`/`--gid-map`, which Ferry refuses with the reason.
#[test]
fn libvirt_separate_options() {
    let c = serve(&[
        "--fd=25",
        "--shared-dir",
        "/srv/a,b",
        "--cache",
        "always",
        "--sandbox",
        "chroot",
        "--xattr",
        "--thread-pool-size=16",
        "--rlimit-nofile=4096",
        "--log-level",
        "debug",
    ]);
    assert_eq!(c.socket, Socket::Fd(25));
    assert_eq!(c.shared_dir, PathBuf::from("/srv/a,b"));
    assert_eq!(c.log_level.as_deref(), Some("debug"));
    assert!(has_note(&c, "--cache"), "{:?}", c.notes);
    assert!(has_note(&c, "--sandbox"), "{:?}", c.notes);
    assert!(has_note(&c, "--thread-pool-size=16"), "{:?}", c.notes);
    assert!(has_note(&c, "--rlimit-nofile"), "{:?}", c.notes);
    // cache='none' in the XML becomes --cache never.
    let c = serve(&["--fd=3", "--shared-dir", "/srv/share", "--cache", "never"]);
    assert_eq!(c.shared_dir, PathBuf::from("/srv/share"));
    let e = parse(["--fd=3", "--shared-dir", "/srv/s", "--uid-map=:0:1000:1:"]).unwrap_err();
    assert!(e.to_string().contains("--ferry-ids"), "{e}");
}

/// Kata Containers, src/runtime/virtcontainers/virtiofsd.go, `(*virtiofsd).args`
/// (kata-containers at 7c6ba40c54ea): `--syslog --cache=MODE --shared-dir=PATH --fd=N` and
/// then `virtio_fs_extra_args`, whose default (src/runtime/Makefile, DEFVIRTIOFSEXTRAARGS) is
/// `--thread-pool-size=1 --announce-submounts`, with DEFVIRTIOFSCACHE `auto`. The socket is
/// the first of cmd.ExtraFiles, descriptor 3.
#[test]
fn kata() {
    let c = serve(&[
        "--syslog",
        "--cache=auto",
        "--shared-dir=/run/kata-containers/shared/sandboxes/abc/shared",
        "--fd=3",
        "--thread-pool-size=1",
        "--announce-submounts",
    ]);
    assert_eq!(c.socket, Socket::Fd(3));
    assert_eq!(
        c.shared_dir,
        PathBuf::from("/run/kata-containers/shared/sandboxes/abc/shared")
    );
    assert!(has_note(&c, "--syslog"));
    assert!(has_note(&c, "--cache=auto"));
    assert_eq!(c.log_level, None);
    // Kata's documented older extra arguments (`-o announce_submounts`).
    let c = serve(&[
        "--syslog",
        "--cache=never",
        "--shared-dir=/s",
        "--fd=3",
        "--thread-pool-size=1",
        "-o",
        "announce_submounts",
    ]);
    assert_eq!(c.shared_dir, PathBuf::from("/s"));
}

/// cloud-hypervisor, docs/fs.md ("Run virtiofsd"): `--log-level debug --socket-path=SOCK
/// --shared-dir=DIR --cache=never --thread-pool-size=$N`.
#[test]
fn cloud_hypervisor() {
    let c = serve(&[
        "--log-level",
        "debug",
        "--socket-path=/tmp/virtiofs",
        "--shared-dir=/tmp/shared_dir",
        "--cache=never",
        "--thread-pool-size=4",
    ]);
    assert_eq!(c.socket, Socket::Path("/tmp/virtiofs".into()));
    assert_eq!(c.shared_dir, PathBuf::from("/tmp/shared_dir"));
    assert_eq!(c.log_level.as_deref(), Some("debug"));
}

/// Lima, pkg/qemu/qemu.go, `VirtiofsdCmdline`: `--socket-path SOCK --shared-dir LOCATION`.
#[test]
fn lima() {
    let c = serve(&[
        "--socket-path",
        "/home/u/.lima/default/virtiofsd-0.sock",
        "--shared-dir",
        "/home/u",
    ]);
    assert_eq!(
        c.socket,
        Socket::Path("/home/u/.lima/default/virtiofsd-0.sock".into())
    );
    assert_eq!(c.shared_dir, PathBuf::from("/home/u"));
    assert!(c.notes.is_empty());
}

/// Podman, pkg/machine/qemu/virtiofsd.go, `createVirtiofsCmd`: `--sandbox none --socket-path
/// SOCK --shared-dir . --seccomp=none`, run in the shared directory.
#[test]
fn podman() {
    let c = serve(&[
        "--sandbox",
        "none",
        "--socket-path",
        "/run/user/1000/podman/virtiofschar0",
        "--shared-dir",
        ".",
        "--seccomp=none",
    ]);
    assert_eq!(c.shared_dir, PathBuf::from("."));
    assert!(
        c.notes.is_empty(),
        "sandbox none and seccomp none need no note"
    );
}

/// The C virtiofsd's form (`-o source=`, `-o vhost_user_socket=`, `-f`), as the RunCVM and
/// older launchers write it.
#[test]
fn c_virtiofsd_form() {
    let c = serve(&[
        "-o",
        "cache=always",
        "-o",
        "announce_submounts",
        "-o",
        "xattr",
        "--socket-path=/run/vfsd.sock",
        "-o",
        "source=/vm",
        "-o",
        "sandbox=chroot",
        "-f",
        "-olog_level=warn",
    ]);
    assert_eq!(c.shared_dir, PathBuf::from("/vm"));
    assert_eq!(c.socket, Socket::Path("/run/vfsd.sock".into()));
    assert_eq!(c.log_level.as_deref(), Some("warn"));
}

#[test]
fn print_capabilities_is_libvirts_fs_json() {
    assert_eq!(
        parse(["--print-capabilities"]),
        Ok(Invocation::PrintCapabilities)
    );
    // libvirt's schema (docs/schemas/vhost-user.json, src/qemu/qemu_vhost_user.c): an
    // object with "type" "fs" and a "features" list; no migration is offered.
    let compact: String = CAPABILITIES.split_whitespace().collect();
    assert_eq!(compact, r#"{"type":"fs","features":["separate-options"]}"#);
    // The description file packaging ships for QEMU/libvirt discovery names the binary and
    // the same type.
    let desc: String = include_str!("../../../packaging/50-ferry-virtiofsd.json")
        .split_whitespace()
        .collect();
    assert!(desc.contains(r#""type":"fs""#), "{desc}");
    assert!(
        desc.contains(r#""binary":"/usr/libexec/ferry-virtiofsd""#),
        "{desc}"
    );
}

#[test]
fn ferry_extras() {
    let c = serve(&[
        "--socket-path=/s.sock",
        "--shared-dir=/d",
        "--readonly",
        "--ferry-name",
        "src",
        "--ferry-listen",
        "vsock:1024",
        "--ferry-ids=squash:1000:1000",
        "--ferry-persist-owners=on",
        "--ferry-permissions=host",
        "--ferry-max-node-fds=64",
    ]);
    assert!(c.read_only);
    assert_eq!(c.name, "src");
    assert_eq!(c.listen, vec!["vsock:1024".parse::<ListenAddr>().unwrap()]);
    assert!(matches!(c.ids.mode, Some(IdMode::Squash { .. })));
    assert_eq!(c.ids.persist_owners, Some(true));
    assert_eq!(c.max_node_fds, 64);
}

/// Options that would be misread are refused, with the reason; unknown ones are errors.
#[test]
fn refusals_and_errors() {
    let base = ["--socket-path=/s", "--shared-dir=/d"];
    let with = |extra: &[&str]| parse(base.iter().chain(extra).copied());
    for extra in [
        &["--xattrmap=:prefix:all::user.virtiofs.::"][..],
        &["-o", "xattrmap=:ok:all:::"],
        &["--translate-uid=map:0:1000:1"],
        &["--translate-gid", "squash-guest:0:1000:1"],
        &["--socket-group=kvm"],
        &["--tag=myfs"],
    ] {
        assert!(
            matches!(with(extra), Err(CompatError::Refused { .. })),
            "{extra:?}: {:?}",
            with(extra)
        );
    }
    assert_eq!(
        with(&["--frobnicate"]),
        Err(CompatError::Unknown("--frobnicate".into()))
    );
    assert_eq!(
        with(&["-o", "frob"]),
        Err(CompatError::Unknown("-o frob".into()))
    );
    assert!(matches!(
        with(&["--cache=sometimes"]),
        Err(CompatError::BadValue { .. })
    ));
    assert!(matches!(
        with(&["--sandbox=jail"]),
        Err(CompatError::BadValue { .. })
    ));
    assert!(matches!(
        with(&["--log-level=loud"]),
        Err(CompatError::BadValue { .. })
    ));
    assert!(matches!(
        with(&["--thread-pool-size=many"]),
        Err(CompatError::BadValue { .. })
    ));
    assert_eq!(
        with(&["--readonly=yes"]),
        Err(CompatError::UnexpectedValue("--readonly".into()))
    );
    assert_eq!(
        parse(["--shared-dir=/d"]),
        Err(CompatError::Socket),
        "no socket"
    );
    assert_eq!(
        parse(["--shared-dir=/d", "--fd=3", "--socket-path=/s"]),
        Err(CompatError::Socket),
        "two sockets"
    );
    assert_eq!(parse(["--fd=3"]), Err(CompatError::NoSharedDir));
    assert!(matches!(
        parse(["--fd=-1", "--shared-dir=/d"]),
        Err(CompatError::BadValue { .. })
    ));
    assert_eq!(
        parse(["--shared-dir"]),
        Err(CompatError::MissingValue("--shared-dir".into()))
    );
}
