//! One throwaway QEMU guest: TCG, the kernel and an initramfs, the serial console in a file,
//! optionally a vsock device backed by vhost-device-vsock (hybrid vsock: a guest connection to
//! host port P arrives on the Unix socket `<uds>_P`) and QEMU 9p shares. Every wait has a
//! deadline; dropping the [`Vm`] stops QEMU and the backend it started, and, when the thread
//! is panicking, prints the console so a failure explains itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{Proc, wait_for_path};
use crate::tools::Tools;

/// The guest's vsock context id.
pub const GUEST_CID: u32 = 3;

/// A fresh directory for one run's sockets, logs and initramfs. It lives in /tmp because Unix
/// socket paths must stay short (108 bytes).
pub fn run_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("a temporary directory in /tmp")
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The initramfs (see [`crate::Initramfs`]).
    pub initrd: PathBuf,
    /// Guest RAM in MiB (also the size of the shared memfd vhost-user needs).
    pub mem_mib: u32,
    /// Give the guest a virtio vsock device through vhost-device-vsock.
    pub vsock: bool,
    /// QEMU 9p shares: (host directory, mount tag).
    pub ninep: Vec<(PathBuf, String)>,
    /// virtio-fs devices: (vhost-user-fs backend socket, mount tag). The backend must be
    /// listening before the VM boots (see [`serve_virtiofs`]).
    pub virtiofs: Vec<(PathBuf, String)>,
    /// Extra kernel command line words, e.g. `ferry.port=1024` (the guest sees FERRY_PORT).
    pub cmdline: Vec<String>,
    /// Bound on the whole run, boot to power-off.
    pub timeout: Duration,
}

impl VmConfig {
    /// 512 MiB, vsock on, no 9p, ten minutes.
    pub fn new(initrd: PathBuf) -> Self {
        Self {
            initrd,
            mem_mib: 512,
            vsock: true,
            ninep: Vec::new(),
            virtiofs: Vec::new(),
            cmdline: Vec::new(),
            timeout: Duration::from_secs(600),
        }
    }
}

/// A running guest.
pub struct Vm {
    dir: PathBuf,
    console: PathBuf,
    // Declared before the backend so QEMU stops first.
    qemu: Proc,
    vsock: Option<Proc>,
    deadline: Instant,
    started: Instant,
    /// Console bytes already matched by [`Vm::wait_for`].
    cursor: usize,
}

impl Vm {
    /// Starts the vsock backend (if asked for), waits for its socket, and starts QEMU.
    /// `dir` holds the sockets and logs; it must outlive the VM.
    pub fn boot(tools: &Tools, cfg: &VmConfig, dir: &Path) -> Vm {
        let started = Instant::now();
        let deadline = started + cfg.timeout;
        let console = dir.join("console.log");
        let mut qemu = Command::new(&tools.qemu);
        let mem = cfg.mem_mib;
        qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
            .args(["-m", &format!("{mem}M")])
            // vhost-user backends map guest memory: it must be a shared memfd.
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            ])
            .args(["-numa", "node,memdev=mem"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-no-reboot"])
            .arg("-kernel")
            .arg(&tools.kernel.image)
            .arg("-initrd")
            .arg(&cfg.initrd)
            .args(["-serial", &format!("file:{}", console.display())]);
        let mut append = String::from("console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init");
        // Every guest program that talks to a ferry-host (or is one) finds the token in
        // FERRY_TOKEN, as the servers `serve` and `serve_virtiofs` start do.
        append.push_str(&format!(" ferry.token={TOKEN}"));
        for w in &cfg.cmdline {
            append.push(' ');
            append.push_str(w);
        }
        qemu.args(["-append", &append]);

        let vsock = cfg.vsock.then(|| {
            let sock = dir.join("vhost-vsock.sock");
            let uds = dir.join("vsock.uds");
            let mut backend = Proc::spawn(
                "vhost-device-vsock",
                Command::new(&tools.vhost_device_vsock)
                    .arg("--vm")
                    .arg(format!(
                        "guest-cid={GUEST_CID},socket={},uds-path={}",
                        sock.display(),
                        uds.display()
                    )),
                dir,
            );
            wait_for_path(&sock, Some(&mut backend), Duration::from_secs(30));
            qemu.arg("-chardev")
                .arg(format!("socket,id=vsock,path={}", sock.display()))
                .args(["-device", "vhost-user-vsock-pci,chardev=vsock"]);
            backend
        });
        for (i, (path, tag)) in cfg.ninep.iter().enumerate() {
            qemu.arg("-fsdev")
                .arg(format!(
                    "local,id=fs9p{i},path={},security_model=passthrough",
                    path.display()
                ))
                .arg("-device")
                .arg(format!("virtio-9p-pci,fsdev=fs9p{i},mount_tag={tag}"));
        }
        for (i, (sock, tag)) in cfg.virtiofs.iter().enumerate() {
            qemu.arg("-chardev")
                .arg(format!("socket,id=vfs{i},path={}", sock.display()))
                .arg("-device")
                .arg(format!("vhost-user-fs-pci,chardev=vfs{i},tag={tag}"));
        }
        let qemu = Proc::spawn("qemu", &mut qemu, dir);
        Vm {
            dir: dir.to_path_buf(),
            console,
            qemu,
            vsock,
            deadline,
            started,
            cursor: 0,
        }
    }

    /// The hybrid-vsock base socket: guests reach host port P at `<uds>_P`, and the host
    /// reaches guest port P by `CONNECT P` on `<uds>` itself.
    pub fn uds(&self) -> PathBuf {
        uds_in(&self.dir)
    }

    /// Starts `ferry-host` (the binary `host`) exporting `path` as `name` on this VM's
    /// hybrid-vsock socket for host port `port` (`hybrid-vsock:<uds>:PORT`), and waits until
    /// it listens. Guests reach it as `vsock:PORT`.
    pub fn serve(&self, host: &Path, name: &str, path: &Path, port: u32) -> Proc {
        let mut server = Proc::spawn(
            "ferry-host",
            Command::new(host)
                .env("FERRY_TOKEN", TOKEN)
                .arg("--export")
                .arg(format!("{name}={}", path.display()))
                .arg("--listen")
                .arg(format!("hybrid-vsock:{}:{port}", self.uds().display())),
            &self.dir,
        );
        let mut sock = self.uds().into_os_string();
        sock.push(format!("_{port}"));
        wait_for_path(Path::new(&sock), Some(&mut server), Duration::from_secs(30));
        server
    }

    /// The directory with sockets and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Time since boot started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The serial console so far, carriage returns removed.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).replace('\r', "")
    }

    /// Waits for the next console line (after the previous match) that starts with `prefix`,
    /// and returns it. Panics when QEMU exits first or the run's deadline passes; a line
    /// starting `FERRY-FAIL` also ends the wait with a panic.
    pub fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            let text = self.console();
            let mut pos = self.cursor;
            for line in text[self.cursor.min(text.len())..].split_inclusive('\n') {
                if !line.ends_with('\n') {
                    break;
                }
                pos += line.len();
                let line = line.trim_end();
                if line.starts_with("FERRY-FAIL") {
                    panic!("the guest reported {line}");
                }
                if line.starts_with(prefix) {
                    self.cursor = pos;
                    return line.to_string();
                }
            }
            if let Some(status) = self.qemu.exited() {
                panic!("QEMU exited ({status}) before the console showed {prefix:?}");
            }
            assert!(
                Instant::now() < self.deadline,
                "timed out waiting for {prefix:?} on the guest console"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the guest script to end and QEMU to exit; returns the script's output (the
    /// console between the BEGIN and END markers) and its exit code.
    pub fn finish(&mut self) -> (String, i32) {
        let end = self.wait_for("=== FERRY-END");
        let rc = end
            .rsplit("rc=")
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(-1);
        // poweroff -f follows at once; give the emulated machine a moment to get there.
        let left = self.deadline.saturating_duration_since(Instant::now());
        if self
            .qemu
            .wait_exit(left.min(Duration::from_secs(60)))
            .is_none()
        {
            panic!("QEMU did not exit after the guest script ended");
        }
        let text = self.console();
        let script = text
            .split("=== FERRY-BEGIN")
            .nth(1)
            .and_then(|s| s.split("=== FERRY-END").next())
            .unwrap_or_default()
            .to_string();
        (script, rc)
    }

    /// The deadline of the whole run.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// The hybrid-vsock base socket of a VM booted with `dir` (see [`Vm::uds`]), for a server that
/// must listen before the VM boots.
/// The token the servers of [`Vm::serve`] and [`serve_virtiofs`] require, and that every
/// guest finds in `FERRY_TOKEN`; a host-side agent reaching a guest's server needs it too.
pub const TOKEN: &str = "ferry-vm-test-token";

pub fn uds_in(dir: &Path) -> PathBuf {
    dir.join("vsock.uds")
}

/// Starts `ferry-host` (the binary `host`) as the vhost-user-fs backend of every export in
/// `exports` (`--export` specs such as `ex=/path` or `ro=/path:ro`), one socket per export in
/// `dir`, and waits until all listen. `listen` are more `--listen` addresses for the same
/// server (e.g. `hybrid-vsock:UDS:PORT` with the socket [`uds_in`] names, for an agent in the
/// guest). Returns the server and the (socket, tag) pairs for [`VmConfig::virtiofs`].
pub fn serve_virtiofs(
    host: &Path,
    dir: &Path,
    exports: &[String],
    listen: &[String],
) -> (Proc, Vec<(PathBuf, String)>) {
    let mut cmd = Command::new(host);
    cmd.env("FERRY_TOKEN", TOKEN);
    for l in listen {
        cmd.arg("--listen").arg(l);
    }
    let mut devices = Vec::new();
    for spec in exports {
        let name = spec.split('=').next().unwrap_or(spec).to_string();
        let sock = dir.join(format!("vfs-{name}.sock"));
        cmd.arg("--export")
            .arg(spec)
            .arg("--listen")
            .arg(format!("vhost-user-fs:{}:{name}", sock.display()));
        devices.push((sock, name));
    }
    let mut server = Proc::spawn("ferry-host", &mut cmd, dir);
    for (sock, _) in &devices {
        wait_for_path(sock, Some(&mut server), Duration::from_secs(30));
    }
    (server, devices)
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.qemu.stop(Duration::from_secs(2));
        if let Some(v) = self.vsock.as_mut() {
            v.stop(Duration::from_secs(3));
        }
        if std::thread::panicking() {
            let console = self.console();
            let tail: Vec<&str> = console.lines().rev().take(150).collect();
            eprintln!("---- guest console (last {} lines) ----", tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
