//! `ferry-virtiofsd` started with the exact command lines launchers build (libvirt, Kata,
//! cloud-hypervisor, Lima, Podman; each cited in `host-server/src/virtiofsd/tests.rs`, where
//! the same argv are parsed), next to a real QEMU TCG guest: one virtio-fs device per
//! launcher, and the guest runs the shared file workload on each. libvirt and Kata pass a
//! socket they bound themselves as a descriptor (`--fd=N`), which the test does the same way.
//!
//! The libvirt argv here is libvirt's own, taken from its source, with the socket passed the
//! way libvirt passes it; `tests/vm_libvirt.rs` has libvirt's daemon itself start
//! `ferry-virtiofsd` for a domain.

use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_vmtest::{Initramfs, Proc, Vm, VmConfig, run_dir, static_bins};

use crate::harness::vm_tools;
use crate::vm::{check_guest_writes_on_the_host, prepare_host_tree};

/// How the launcher hands over the vhost-user socket.
enum Sock {
    /// Binds and listens itself, passes the listening socket as this descriptor number.
    Fd(i32),
    /// Gives the path; ferry-virtiofsd binds it.
    Path,
}

/// One launcher: its tag, how it passes the socket, and its argv with `{sock}`, `{fd}` and
/// `{dir}` to fill in.
struct Launcher {
    tag: &'static str,
    sock: Sock,
    argv: &'static [&'static str],
    /// Podman runs virtiofsd in the shared directory and passes `.`.
    cwd_is_dir: bool,
}

const LAUNCHERS: &[Launcher] = &[
    // libvirt src/qemu/qemu_virtiofs.c, qemuVirtioFSBuildCommandLine, for
    // <driver type='virtiofs' queue='1024'/><binary xattr='on' cache mode='always'>
    // <lock posix='on' flock='on'/></binary>, thread_pool size 4 and virtiofsd_debug.
    Launcher {
        tag: "libvirt",
        sock: Sock::Fd(25),
        argv: &[
            "--fd={fd}",
            "-o",
            "source={dir},cache=always,xattr,flock,posix_lock",
            "--thread-pool-size=4",
            "-d",
        ],
        cwd_is_dir: false,
    },
    // Kata src/runtime/virtcontainers/virtiofsd.go, (*virtiofsd).args, with the default
    // virtio_fs_extra_args and cache (src/runtime/Makefile); the socket is ExtraFiles[0], fd 3.
    Launcher {
        tag: "kata",
        sock: Sock::Fd(3),
        argv: &[
            "--syslog",
            "--cache=auto",
            "--shared-dir={dir}",
            "--fd={fd}",
            "--thread-pool-size=1",
            "--announce-submounts",
        ],
        cwd_is_dir: false,
    },
    // cloud-hypervisor docs/fs.md, "Run virtiofsd".
    Launcher {
        tag: "clh",
        sock: Sock::Path,
        argv: &[
            "--log-level",
            "debug",
            "--socket-path={sock}",
            "--shared-dir={dir}",
            "--cache=never",
            "--thread-pool-size=2",
        ],
        cwd_is_dir: false,
    },
    // Lima pkg/qemu/qemu.go, VirtiofsdCmdline.
    Launcher {
        tag: "lima",
        sock: Sock::Path,
        argv: &["--socket-path", "{sock}", "--shared-dir", "{dir}"],
        cwd_is_dir: false,
    },
    // Podman pkg/machine/qemu/virtiofsd.go, createVirtiofsCmd.
    Launcher {
        tag: "podman",
        sock: Sock::Path,
        argv: &[
            "--sandbox",
            "none",
            "--socket-path",
            "{sock}",
            "--shared-dir",
            ".",
            "--seccomp=none",
        ],
        cwd_is_dir: true,
    },
];

/// Starts ferry-virtiofsd for `l` serving `dir` on `sock`, as the launcher would.
fn start(bin: &Path, l: &Launcher, dir: &Path, sock: &Path, logs: &Path) -> Proc {
    let fd = match l.sock {
        Sock::Fd(n) => n,
        Sock::Path => -1,
    };
    let args: Vec<String> = l
        .argv
        .iter()
        .map(|a| {
            a.replace("{sock}", &sock.display().to_string())
                .replace("{dir}", &dir.display().to_string())
                .replace("{fd}", &fd.to_string())
        })
        .collect();
    eprintln!("{}: ferry-virtiofsd {}", l.tag, args.join(" "));
    let mut cmd = Command::new(bin);
    cmd.args(&args);
    if l.cwd_is_dir {
        cmd.current_dir(dir);
    }
    if let Sock::Fd(target) = l.sock {
        let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
        let src = listener.as_raw_fd();
        // SAFETY: between fork and exec the closure only calls dup2 and fcntl, which are
        // async-signal-safe, on descriptors this process owns; `listener` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if src == target {
                    let flags = libc::fcntl(src, libc::F_GETFD);
                    libc::fcntl(src, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                } else if libc::dup2(src, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let p = Proc::spawn(&format!("ferry-virtiofsd-{}", l.tag), &mut cmd, logs);
        // The child has its copy; the test's own closes here, as a launcher's does.
        drop(listener);
        p
    } else {
        let mut p = Proc::spawn(&format!("ferry-virtiofsd-{}", l.tag), &mut cmd, logs);
        ferry_vmtest::wait_for_path(sock, Some(&mut p), std::time::Duration::from_secs(30));
        p
    }
}

/// Writes to `initrd` the initramfs of the launcher tests: virtio-fs modules, `vm/compat.sh`
/// as the guest's script and the shared file workload `vm/files.sh`.
pub(crate) fn compat_initrd(tools: &ferry_vmtest::Tools, initrd: &Path) {
    Initramfs::new(tools)
        .unwrap()
        .modules(ferry_vmtest::initramfs::VIRTIOFS_MODULES)
        .unwrap()
        .bytes("/guest.sh", include_str!("vm/compat.sh"), 0o755)
        .bytes("/files.sh", include_str!("vm/files.sh"), 0o644)
        .write(initrd)
        .unwrap();
}

#[test]
fn vm_virtiofsd_launchers() {
    let Some(tools) = vm_tools() else {
        return;
    };
    let bins = static_bins();
    let bin = bins.host.with_file_name("ferry-virtiofsd");
    let run = run_dir("ferry-vfsd.");
    let initrd = run.path().join("initrd.cpio");
    compat_initrd(&tools, &initrd);
    let mut servers = Vec::new();
    let mut devices = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for l in LAUNCHERS {
        let dir = run.path().join(format!("share-{}", l.tag));
        prepare_host_tree(&dir);
        let sock = run.path().join(format!("{}.sock", l.tag));
        servers.push(start(&bin, l, &dir, &sock, run.path()));
        devices.push((sock, l.tag.to_string()));
        dirs.push(dir);
    }
    let mut cfg = VmConfig::new(initrd);
    cfg.vsock = false;
    cfg.virtiofs = devices;
    let tags: Vec<&str> = LAUNCHERS.iter().map(|l| l.tag).collect();
    cfg.cmdline = vec![format!("ferry.tags={}", tags.join(","))];
    let mut vm = Vm::boot(&tools, &cfg, run.path());
    let (output, rc) = vm.finish();
    eprintln!("---- guest script output ----\n{output}");
    assert_eq!(rc, 0, "the guest script failed:\n{output}");
    for tag in &tags {
        for step in [format!("mount-{tag}"), format!("workload-{tag}")] {
            assert!(
                output.contains(&format!("FERRY-OK {step}\n")),
                "step {step} did not pass:\n{output}"
            );
        }
    }
    assert!(output.contains("FERRY-ALL-DONE"), "{output}");
    for dir in &dirs {
        check_guest_writes_on_the_host(dir);
    }
    drop(servers);
}
