//! ferry-host as a vhost-user-fs backend for a real Linux guest: QEMU under TCG with a shared
//! memfd as guest memory, `vhost-user-fs-pci` devices on ferry-host's sockets, and the guest
//! kernel mounting them with `mount -t virtiofs` (no agent on the data path). The guest script
//! (`vm/virtiofs.sh`) runs the vsock VM test's file workload, checks a read-only export and
//! symlinks that point out of the export, and reads host edits. The guest also gets vsock and
//! runs `ferry-agent --events-only` against the virtio-fs mount, so the host edits raise
//! inotify events in the guest and refresh its caches. Needs what `.ci/vm-tools` installs;
//! without it the test says SKIPPED (under CI it fails instead).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use ferry_vmtest::{
    Initramfs, Vm, VmConfig, inotify_helper, run_dir, serve_virtiofs, static_bins, uds_in,
};

use crate::harness::vm_tools;

use crate::vm::{check_guest_writes_on_the_host, edit_on_the_host, prepare_host_tree, signal};

/// The host vsock port of ferry-host for the events-only agent (`vsock:PORT`, CID 2).
const EVENTS_PORT: u32 = 1024;

/// Host changes after the first ones: a mode change and a new directory with a file in it.
/// (The directory is renamed once the guest has seen it: `rename_on_the_host`.)
fn change_on_the_host(export: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        export.join("events/mode.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let d = export.join("events/d");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("inner.txt"), b"inside a new directory\n").unwrap();
}

/// The new directory renamed, after the guest saw its creation.
fn rename_on_the_host(export: &std::path::Path) {
    fs::rename(export.join("events/d"), export.join("events/d2")).unwrap();
}

#[test]
fn vm_virtiofs() {
    let name = "vm_virtiofs";
    let Some(tools) = vm_tools() else {
        return;
    };
    let started = Instant::now();
    let bins = static_bins();
    let run = run_dir("ferry-vfs.");
    let export = run.path().join("export");
    prepare_host_tree(&export);
    let outside = run.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), b"TOP-SECRET\n").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), export.join("escape-abs")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", export.join("escape-rel")).unwrap();
    let ro = run.path().join("ro");
    fs::create_dir_all(&ro).unwrap();
    fs::write(ro.join("kept.txt"), b"read-only data\n").unwrap();
    fs::create_dir_all(export.join("events")).unwrap();
    // Another filesystem mounted inside the export: the guest must see it as a submount.
    let _submount = Tmpfs::mount(&export.join("submount"));
    fs::write(
        export.join("submount/in-submount.txt"),
        b"on another filesystem\n",
    )
    .unwrap();
    fs::write(export.join("events/mode.txt"), b"mode\n").unwrap();

    let initrd = run.path().join("initrd.cpio");
    Initramfs::new(&tools)
        .unwrap()
        .modules(ferry_vmtest::initramfs::VIRTIOFS_MODULES)
        .unwrap()
        .host_file("/bin/ferry-agent", &bins.agent, 0o755)
        .host_file("/bin/inotify-events", &inotify_helper(), 0o755)
        .bytes("/guest.sh", include_str!("vm/virtiofs.sh"), 0o755)
        .bytes("/files.sh", include_str!("vm/files.sh"), 0o644)
        // An unprivileged user for `su` (busybox reads these files itself).
        .bytes(
            "/etc/passwd",
            "root:x:0:0::/:/bin/sh\nuser:x:1000:1000::/:/bin/sh\n",
            0o644,
        )
        .bytes("/etc/group", "root:x:0:\nuser:x:1000:\n", 0o644)
        .write(&initrd)
        .unwrap();
    let (mut host, devices) = serve_virtiofs(
        &bins.host,
        run.path(),
        &[
            // setid=on: the workload checks that set-id bits are cleared on writes.
            format!("ex={}:setid=on", export.display()),
            format!("ro={}:ro", ro.display()),
        ],
        // The events-only agent in the guest reaches the same server over vsock.
        &[format!(
            "hybrid-vsock:{}:{EVENTS_PORT}",
            uds_in(run.path()).display()
        )],
    );
    let mut cfg = VmConfig::new(initrd);
    cfg.virtiofs = devices;
    cfg.cmdline = vec![format!("ferry.port={EVENTS_PORT}")];
    let built = started.elapsed();
    let mut vm = Vm::boot(&tools, &cfg, run.path());
    let mounted = vm.wait_for("FERRY-MOUNTED");
    eprintln!("guest: {mounted}");

    vm.wait_for("FERRY-WAIT list-cache");
    fs::write(export.join("listed/added-by-host"), b"").unwrap();
    signal(&export, "list-cache");

    vm.wait_for("FERRY-WAIT host-edits");
    edit_on_the_host(&export);
    signal(&export, "host-edits");

    vm.wait_for("FERRY-WAIT host-events");
    change_on_the_host(&export);
    signal(&export, "host-events");

    vm.wait_for("FERRY-WAIT host-rename");
    rename_on_the_host(&export);
    signal(&export, "host-rename");

    let (output, rc) = vm.finish();
    eprintln!("---- guest script output ----\n{output}");
    assert_eq!(rc, 0, "the guest script failed:\n{output}");
    for step in [
        "mount-virtiofs",
        "host-files-read",
        "guest-files-reread",
        "ro-create",
        "ro-append",
        "ro-mkdir",
        "ro-unlink",
        "ro-rename",
        "ro-chmod",
        "ro-unchanged",
        "setid-set",
        "setid-root-keeps",
        "setid-write-clears",
        "setid-truncate-clears",
        "escape-abs-not-followed-on-the-host",
        "escape-rel-not-followed-on-the-host",
        "submount-own-dev",
        "submount-same-dev-elsewhere",
        "submount-read",
        "submount-find",
        "submount-find-xdev",
        "listing-read",
        "listing-follows-the-host",
        "listing-keeps-the-rest",
        "events-agent-started",
        "host-edits-read",
        "events-host-edits",
        "events-read-at-once",
        "events-new-dir",
        "events-dir-rename",
        "events-attrib",
        "events-guest-change-once",
        "events-agent-stops",
        "umount",
    ] {
        assert!(
            output.contains(&format!("FERRY-OK {step}\n")),
            "step {step} did not pass:\n{output}"
        );
    }
    assert!(output.contains("FERRY-ALL-DONE"), "{output}");
    check_guest_writes_on_the_host(&export);
    let mode = |name: &str| {
        fs::metadata(export.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(
        mode("setid-root"),
        0o6777,
        "root's write kept the set-id bits"
    );
    assert_eq!(mode("setid-user"), 0o777, "a user's write cleared them");
    assert_eq!(mode("setid-trunc"), 0o777, "a user's truncate cleared them");
    assert_eq!(fs::metadata(export.join("setid-trunc")).unwrap().len(), 0);
    // The replays wrote nothing: the host's own changes are as the host left them.
    let d = export.join("from-host");
    assert_eq!(
        fs::read(d.join("small-3.txt")).unwrap(),
        b"rewritten by the host\n"
    );
    assert!(!d.join("small-4.txt").exists() && !d.join("small-5.txt").exists());
    assert_eq!(
        fs::read(export.join("events/d2/inner.txt")).unwrap(),
        b"inside a new directory\n"
    );
    assert!(!export.join("events/d").exists());
    assert!(!ro.join("new.txt").exists() && !ro.join("d").exists());
    assert_eq!(fs::read(ro.join("kept.txt")).unwrap(), b"read-only data\n");
    assert!(host.exited().is_none(), "ferry-host died:\n{}", host.log());
    let log = host.log();
    let init = log
        .lines()
        .find(|l| l.contains("guest kernel initialised the session"))
        .unwrap_or_else(|| panic!("no FUSE_INIT in the host log:\n{log}"));
    // The set-id steps above ran with the server clearing the bits (FUSE_HANDLE_KILLPRIV_V2,
    // bit 28), not the guest kernel.
    let flags = init
        .split("flags=0x")
        .nth(1)
        .and_then(|f| u32::from_str_radix(f.split_whitespace().next()?, 16).ok())
        .unwrap_or_else(|| panic!("no flags in {init}"));
    assert_ne!(
        flags & (1 << 28),
        0,
        "HANDLE_KILLPRIV_V2 not negotiated: {init}"
    );
    eprintln!(
        "{name}: {:.0} s in all ({:.0} s building, {:.0} s for the VM)",
        started.elapsed().as_secs_f64(),
        built.as_secs_f64(),
        vm.elapsed().as_secs_f64(),
    );
    drop(vm);
    host.stop(std::time::Duration::from_secs(5));
}

/// A tmpfs mounted at a directory (created if missing) for the life of the value; unmounted
/// lazily when dropped, so a failed test leaves no mount behind.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount a tmpfs inside the export (needs root, as the VM test does)");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
