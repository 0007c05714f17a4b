//! The server's sandbox: what `ferry-host` and `ferry-virtiofsd` give up once they know their
//! configuration, as defense in depth behind the export core's own confinement (every path
//! resolved beneath an export's descriptor, one component at a time, no symlink followed).
//!
//! [`enter`] runs on the main thread before any other thread exists (Landlock, capability sets
//! and the bounding set belong to each thread and are inherited by the threads it starts; only
//! seccomp could also reach threads already running). In order:
//! 1. the open-file limit is raised ([`crate::raise_fd_limit`]) while CAP_SYS_RESOURCE is
//!    still held;
//! 2. capabilities: a server running with capabilities keeps only those its exports' id modes
//!    need ([`needed_caps`]) in its permitted and effective sets, drops every other one from
//!    its bounding set (where it holds CAP_SETPCAP, as root does outside a unit that bounds
//!    it), and empties its inheritable and ambient sets;
//! 3. `no_new_privs`;
//! 4. Landlock (when the kernel has it, the ABI it has, up to [`LANDLOCK_ABI`]): the file
//!    system only beneath each export (read-write, or read-only for `:ro` exports; never
//!    execute), the directories of the sockets the server creates (make and remove sockets),
//!    the files a reload reads again (the configuration file and token files named at start,
//!    read only),
//!    and `/proc/self` (the watcher reaches its directories through `/proc/self/fd`); TCP
//!    bind only on the configured ports and no TCP connect; no abstract Unix socket or signal
//!    outside the server;
//! 5. seccomp: an allow-list of the system calls the server makes ([`ALLOWED`]); any other
//!    call kills the process (`--seccomp=kill`, the default: a call off the list is a bug or
//!    an exploit, and serving on would hide it; the kernel logs the call's number in its audit
//!    log, and the exit status is SIGSYS), or is allowed and logged by the kernel
//!    (`--seccomp=log`, for finding a missing call), or raises SIGSYS (`trap`).
//!
//! Each step the kernel does not support is skipped and said in the log line of [`Report`];
//! an ordinary user gets everything but step 2 (it has no capabilities to drop). A reload
//! cannot widen what step 4 allowed: [`admits`] refuses a new export outside the ruleset, or
//! one needing a capability that was dropped, with an error that says to restart.
//! `--sandbox=none` (or `sandbox = "none"`) skips all of it.
//!
//! Landlock checks paths, and a descriptor `open_by_handle_at` returns for a non-directory
//! whose dentry the host dropped has none (it is disconnected): opening it for I/O would be
//! refused. So under Landlock the export core keeps a connectable handle (Linux 6.13) for each
//! evicted non-directory node, which the kernel reconnects through the parent directory
//! (`export/inode`); a file a host process moved to another directory meanwhile, or a kernel
//! without connectable handles, falls back to the plain handle and may then answer EACCES.
//!
//! `ferry share` runs the agent's FUSE mount in the same process (mounting and unmounting need
//! privileges and paths the server never needs), so it does not sandbox itself.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context as _;
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};

use crate::config::{ExportSpec, ListenAddr, ServerConfig};
use crate::ids::IdMode;

/// `--sandbox`: whether the server confines itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SandboxMode {
    /// Everything the kernel supports (the default).
    #[default]
    On,
    /// Nothing (`--sandbox=none`).
    None,
}

/// `--seccomp`: what a system call off the allow-list does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// Kills the process (the default).
    #[default]
    Kill,
    /// Allowed, and logged by the kernel (audit, or the kernel log).
    Log,
    /// Raises SIGSYS, which ends the process with a core dump.
    Trap,
    /// No seccomp filter.
    None,
}

/// `--sandbox` and `--seccomp` together, as [`ServerConfig::sandbox`] holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    pub mode: SandboxMode,
    pub seccomp: SeccompMode,
}

/// The syntax of `--sandbox`.
pub const SANDBOX_SYNTAX: &str = "on or none";
/// The syntax of `--seccomp`.
pub const SECCOMP_SYNTAX: &str = "kill, log, trap or none";

impl std::str::FromStr for SandboxMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(SandboxMode::On),
            "none" | "off" => Ok(SandboxMode::None),
            _ => Err(format!("{s:?}: expected {SANDBOX_SYNTAX}")),
        }
    }
}

impl std::str::FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(SeccompMode::Kill),
            "log" => Ok(SeccompMode::Log),
            "trap" => Ok(SeccompMode::Trap),
            "none" | "off" => Ok(SeccompMode::None),
            _ => Err(format!("{s:?}: expected {SECCOMP_SYNTAX}")),
        }
    }
}

/// For clap's `value_parser`.
pub fn parse_sandbox(s: &str) -> Result<SandboxMode, String> {
    s.parse()
}

/// For clap's `value_parser`.
pub fn parse_seccomp(s: &str) -> Result<SeccompMode, String> {
    s.parse()
}

/// The newest Landlock ABI whose rights this file has been checked against. A newer kernel is
/// asked for these rights only (a right added later is not handled, so it is not restricted).
pub const LANDLOCK_ABI: ABI = ABI::V7;

/// Capability numbers (`linux/capability.h`).
mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const DAC_READ_SEARCH: u32 = 2;
    pub const FOWNER: u32 = 3;
    pub const FSETID: u32 = 4;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const SETPCAP: u32 = 8;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const MKNOD: u32 = 27;
    pub const SETFCAP: u32 = 31;
    /// Names for the log, by number.
    pub const NAMES: &[(u32, &str)] = &[
        (CHOWN, "chown"),
        (DAC_OVERRIDE, "dac_override"),
        (DAC_READ_SEARCH, "dac_read_search"),
        (FOWNER, "fowner"),
        (FSETID, "fsetid"),
        (SETGID, "setgid"),
        (SETUID, "setuid"),
        (NET_BIND_SERVICE, "net_bind_service"),
        (MKNOD, "mknod"),
        (SETFCAP, "setfcap"),
    ];
}

/// The capabilities a privileged server keeps for `config`, as a bit set:
/// - every export: CAP_DAC_READ_SEARCH, for `open_by_handle_at` (nodes reopened by handle);
/// - an export in `passthrough` or `map` mode: the filesystem capabilities its requests run
///   with (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID) and CAP_SETUID and
///   CAP_SETGID to switch each request's thread to the caller's ids (`export/creds.rs`);
///   CAP_MKNOD where `devices=on`, CAP_SETFCAP where `setid=on` (`security.capability`);
/// - `squash` mode runs every request without capabilities, so it needs nothing more;
/// - CAP_NET_BIND_SERVICE when a TCP or vsock listener has a port below 1024.
pub fn needed_caps(config: &ServerConfig) -> u64 {
    let mut caps = 0u64;
    let bit = |c: u32| 1u64 << c;
    for spec in &config.exports {
        caps |= spec_caps(spec);
    }
    let low = |p: u32| p != 0 && p < 1024;
    if config.listen.iter().any(|a| match a {
        ListenAddr::Tcp(s) => low(u32::from(s.port())),
        ListenAddr::Vsock(p) => low(*p),
        _ => false,
    }) {
        caps |= bit(cap::NET_BIND_SERVICE);
    }
    caps
}

fn spec_caps(spec: &ExportSpec) -> u64 {
    let bit = |c: u32| 1u64 << c;
    let mut caps = bit(cap::DAC_READ_SEARCH);
    if !matches!(spec.ids.resolve().mode, IdMode::Squash { .. }) {
        for c in [
            cap::CHOWN,
            cap::DAC_OVERRIDE,
            cap::FOWNER,
            cap::FSETID,
            cap::SETUID,
            cap::SETGID,
        ] {
            caps |= bit(c);
        }
        if spec.devices {
            caps |= bit(cap::MKNOD);
        }
        if spec.setid {
            caps |= bit(cap::SETFCAP);
        }
    }
    caps
}

/// Files and sockets beyond the exports that the server needs once sandboxed.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// Files read again on reload: the configuration file, token files.
    pub read: Vec<PathBuf>,
    /// Socket files the server creates besides its listeners (control, metrics).
    pub sockets: Vec<PathBuf>,
    /// TCP ports it listens on besides its listeners (metrics).
    pub ports: Vec<u16>,
}

/// What [`enter`] put in force, for the log and for [`admits`].
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// False under `--sandbox=none`.
    pub on: bool,
    /// The capabilities kept, when the server had any to drop.
    pub caps: Option<u64>,
    /// The bounding set was cut to `caps` too (CAP_SETPCAP was held).
    pub bounding: bool,
    /// `no_new_privs` is set.
    pub no_new_privs: bool,
    /// Landlock's status, `None` where the kernel has none.
    pub landlock: Option<String>,
    /// The seccomp action for calls off the list, and the list's length.
    pub seccomp: Option<(SeccompMode, usize)>,
    /// The export paths the ruleset allows (canonical), and whether read-only.
    allowed: Vec<(PathBuf, bool)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.on {
            return write!(f, "sandbox: none (--sandbox=none)");
        }
        write!(f, "sandbox: ")?;
        match self.caps {
            Some(c) => write!(
                f,
                "capabilities kept: {}{}",
                cap_names(c),
                if self.bounding {
                    ""
                } else {
                    " (bounding set left as given: no CAP_SETPCAP)"
                }
            )?,
            None => write!(f, "no capabilities held")?,
        }
        write!(
            f,
            "; no_new_privs: {}",
            if self.no_new_privs { "on" } else { "off" }
        )?;
        match &self.landlock {
            Some(s) => write!(f, "; landlock: {s}")?,
            None => write!(f, "; landlock: not supported by this kernel")?,
        }
        match self.seccomp {
            Some((mode, n)) => write!(f, "; seccomp: {n} system calls allowed, others {mode:?}"),
            None => write!(f, "; seccomp: none (--seccomp=none)"),
        }
    }
}

fn cap_names(c: u64) -> String {
    if c == 0 {
        return "none".into();
    }
    let mut names = Vec::new();
    for bit in 0..64 {
        if c & (1 << bit) != 0 {
            match cap::NAMES.iter().find(|(n, _)| *n == bit) {
                Some((_, name)) => names.push((*name).to_string()),
                None => names.push(format!("cap{bit}")),
            }
        }
    }
    names.join(",")
}

static ENTERED: OnceLock<Report> = OnceLock::new();

/// What [`enter`] put in force, if it ran.
pub fn current() -> Option<&'static Report> {
    ENTERED.get()
}

/// Whether a running server may take `spec` on in a reload: always without a sandbox; under
/// one, only if its path is beneath an export the ruleset allows (read-write, unless `spec`
/// is read-only) and its id mode needs no capability that was dropped.
pub fn admits(spec: &ExportSpec) -> anyhow::Result<()> {
    let Some(report) = current().filter(|r| r.on) else {
        return Ok(());
    };
    let restart = "the sandbox confines this server to what it started with; restart ferry-host \
                   to apply it (or run it with --sandbox=none)";
    if report.landlock.is_some() {
        let path = spec
            .path
            .canonicalize()
            .with_context(|| format!("export {}: {}", spec.name, spec.path.display()))?;
        let covered = report
            .allowed
            .iter()
            .any(|(p, ro)| path.starts_with(p) && (spec.read_only || !ro));
        anyhow::ensure!(
            covered,
            "export {}: {} is outside the directories this server may reach{}: {restart}",
            spec.name,
            spec.path.display(),
            if spec.read_only { "" } else { " read-write" }
        );
    }
    if let Some(kept) = report.caps {
        let missing = spec_caps(spec) & !kept;
        anyhow::ensure!(
            missing == 0,
            "export {}: needs capabilities this server dropped ({}): {restart}",
            spec.name,
            cap_names(missing)
        );
    }
    Ok(())
}

/// `result` of reading the configuration again, with a failure to read a file that the
/// sandbox keeps out of reach said as such.
pub fn explain<T>(result: anyhow::Result<T>) -> anyhow::Result<T> {
    let on = current().is_some_and(|r| r.on && r.landlock.is_some());
    result.map_err(|e| {
        let denied = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        }) || format!("{e:#}").contains("Permission denied");
        if on && denied {
            e.context(
                "the sandbox lets this server read only the configuration and token files it \
                 started with (a file replaced by rename is another file); restart ferry-host \
                 to read this one (or run it with --sandbox=none)",
            )
        } else {
            e
        }
    })
}

/// Confines this process as `config.sandbox` asks (see the module's documentation), logs what
/// is in force and returns it. Must run before the process starts a second thread.
pub fn enter(config: &ServerConfig, extra: &Extra) -> anyhow::Result<&'static Report> {
    let report = build(config, extra)?;
    tracing::info!("{report}");
    Ok(ENTERED.get_or_init(|| report))
}

fn build(config: &ServerConfig, extra: &Extra) -> anyhow::Result<Report> {
    if config.sandbox.mode == SandboxMode::None {
        return Ok(Report::default());
    }
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    anyhow::ensure!(
        threads <= 1,
        "the sandbox must be entered before the server starts threads ({threads} running)"
    );
    crate::raise_fd_limit();
    let (caps, bounding) = drop_caps(needed_caps(config))?;
    let mut report = Report {
        on: true,
        caps,
        bounding,
        ..Report::default()
    };
    // SAFETY: prctl with integer arguments.
    report.no_new_privs = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0;
    anyhow::ensure!(
        report.no_new_privs,
        "cannot set no_new_privs: {}",
        std::io::Error::last_os_error()
    );
    landlock(config, extra, &mut report)?;
    if config.sandbox.seccomp != SeccompMode::None {
        let n = seccomp(config.sandbox.seccomp)?;
        report.seccomp = Some((config.sandbox.seccomp, n));
    }
    Ok(report)
}

/// Keeps only `keep` of this process's capabilities (permitted, effective; none inheritable or
/// ambient; the rest dropped from the bounding set where it may). `None` when it holds none
/// to begin with; with whether the bounding set was cut.
fn drop_caps(keep: u64) -> anyhow::Result<(Option<u64>, bool)> {
    let (header, mut data) = caps_now()?;
    let permitted = u64::from(data[0].permitted) | u64::from(data[1].permitted) << 32;
    if permitted == 0 {
        return Ok((None, false));
    }
    let keep = keep & permitted;
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    // Without CAP_SETPCAP (a systemd unit's CapabilityBoundingSet may leave it out) the
    // bounding set stays as the parent left it: with no_new_privs and nothing permitted
    // beyond `keep`, it matters only to a program this process would execute, and it runs
    // none.
    let setpcap = permitted & (1 << cap::SETPCAP) != 0;
    for c in (0..=last).filter(|_| setpcap) {
        if keep & (1 << c) == 0 {
            // SAFETY: prctl with integer arguments. Fails (EINVAL) only for a number past
            // the kernel's last capability, and (EPERM) without CAP_SETPCAP, checked below.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) };
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    for (i, d) in data.iter_mut().enumerate() {
        let word = (keep >> (32 * i)) as u32;
        d.permitted = word;
        d.effective = word;
        d.inheritable = 0;
    }
    set_caps(header, &data)?;
    let (_, now) = caps_now()?;
    let held = u64::from(now[0].permitted) | u64::from(now[1].permitted) << 32;
    anyhow::ensure!(
        held == keep,
        "capabilities still held after dropping: {held:#x}"
    );
    for c in (0..=last).filter(|_| setpcap) {
        // SAFETY: prctl with integer arguments.
        let bounded = unsafe { libc::prctl(libc::PR_CAPBSET_READ, c as libc::c_ulong, 0, 0, 0) };
        anyhow::ensure!(
            bounded <= 0 || keep & (1 << c) != 0,
            "cannot drop capability {c} from the bounding set (CAP_SETPCAP is needed)"
        );
    }
    Ok((Some(keep), setpcap))
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn caps_now() -> anyhow::Result<(CapHeader, [CapData; 2])> {
    let mut h = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: both pointers are valid for the sizes the v3 ABI reads and writes.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut CapHeader, d.as_mut_ptr()) };
    anyhow::ensure!(rc == 0, "capget: {}", std::io::Error::last_os_error());
    Ok((h, d))
}

fn set_caps(mut h: CapHeader, d: &[CapData; 2]) -> anyhow::Result<()> {
    // SAFETY: both pointers are valid for the sizes the v3 ABI reads.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, d.as_ptr()) };
    anyhow::ensure!(rc == 0, "capset: {}", std::io::Error::last_os_error());
    Ok(())
}

/// The directory a socket file at `path` is created in.
fn socket_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn landlock(config: &ServerConfig, extra: &Extra, report: &mut Report) -> anyhow::Result<()> {
    let abi = LANDLOCK_ABI;
    let rw = AccessFs::from_all(abi) & !AccessFs::Execute;
    let ro: BitFlags<AccessFs> = AccessFs::from_read(abi) & !AccessFs::Execute;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?;
    let add = |ruleset: landlock::RulesetCreated,
               path: &Path,
               access: BitFlags<AccessFs>|
     -> anyhow::Result<landlock::RulesetCreated> {
        let fd = PathFd::new(path).with_context(|| format!("sandbox: {}", path.display()))?;
        Ok(ruleset.add_rule(PathBeneath::new(fd, access))?)
    };
    for spec in &config.exports {
        let access = if spec.read_only { ro } else { rw };
        ruleset = add(ruleset, &spec.path, access)?;
        if let Ok(p) = spec.path.canonicalize() {
            report.allowed.push((p, spec.read_only));
        }
    }
    // transport.rs makes each socket in a private directory beside it and renames it into
    // place (so it never exists with the umask's mode).
    let sock = AccessFs::MakeSock
        | AccessFs::MakeDir
        | AccessFs::RemoveDir
        | AccessFs::RemoveFile
        | AccessFs::Refer
        | AccessFs::ReadDir;
    let mut sockets: Vec<PathBuf> = extra.sockets.iter().map(|p| socket_dir(p)).collect();
    let mut ports = extra.ports.clone();
    for addr in &config.listen {
        match addr {
            ListenAddr::Unix(p) | ListenAddr::VhostUserFs { socket: p, .. } => {
                sockets.push(socket_dir(p))
            }
            ListenAddr::HybridVsock { path, .. } => sockets.push(socket_dir(path)),
            ListenAddr::Tcp(a) => ports.push(a.port()),
            ListenAddr::Vsock(_) => {}
        }
    }
    sockets.sort();
    sockets.dedup();
    for dir in &sockets {
        ruleset = add(ruleset, dir, sock)?;
    }
    // The files themselves, not their directories: a right on a directory reaches everything
    // beneath it, and a configuration file often sits beside (or above) the exports. A file
    // replaced by rename (as some editors save) is a new file, out of reach: see [`explain`].
    for file in extra.read.iter().filter(|f| f.exists()) {
        ruleset = add(ruleset, file, AccessFs::ReadFile.into())?;
    }
    ruleset = add(
        ruleset,
        Path::new("/proc/self"),
        AccessFs::ReadFile | AccessFs::ReadDir,
    )?;
    for port in ports {
        ruleset = ruleset.add_rule(NetPort::new(port, AccessNet::BindTcp))?;
    }
    let status = ruleset.restrict_self()?;
    report.landlock = match status.ruleset {
        RulesetStatus::FullyEnforced => Some(format!("enforced (ABI {})", abi as i32)),
        RulesetStatus::PartiallyEnforced => Some("partly enforced (an older kernel ABI)".into()),
        RulesetStatus::NotEnforced => None,
    };
    if report.landlock.is_none() {
        report.allowed.clear();
    } else {
        // A node reopened by a plain handle after the host dropped its dentry has no path
        // Landlock could allow: keep connectable handles (export/inode).
        crate::export::sys::set_connectable_handles(true);
    }
    Ok(())
}

/// Installs the allow-list filter on every thread (there is one); returns its length.
fn seccomp(mode: SeccompMode) -> anyhow::Result<usize> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let arch = if cfg!(target_arch = "x86_64") {
        TargetArch::x86_64
    } else if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else if cfg!(target_arch = "riscv64") {
        TargetArch::riscv64
    } else {
        anyhow::bail!("--seccomp: no allow-list for this architecture; use --seccomp=none")
    };
    let action = match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Trap => SeccompAction::Trap,
        SeccompMode::None => unreachable!("not installed"),
    };
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        ALLOWED.iter().map(|&n| (n, Vec::new())).collect();
    let filter = SeccompFilter::new(rules, action, SeccompAction::Allow, arch)?;
    let program: BpfProgram = filter.try_into()?;
    seccompiler::apply_filter_all_threads(&program)?;
    Ok(ALLOWED.len())
}

/// The system calls the server makes, found by running the integration tests and the
/// benchmark under `--seccomp=log` and reading the kernel's log, and by reading the code:
/// the export core's `*at` calls, file handles, xattrs, locks and credential switches; the
/// watcher's inotify; sockets of every listener (Unix, TCP, vsock) with descriptor passing
/// (vhost-user); guest memory mapped from the VMM; threads, futexes, epoll, signals, time.
/// Keep it sorted by purpose; a call missing here kills the server (see the module).
pub const ALLOWED: &[i64] = &[
    // Files: the export core (export/sys.rs, ops.rs, listing.rs, xattr.rs, locks.rs).
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    452, // fchmodat2 (Linux 6.6), the same number on every architecture
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_syncfs,
    libc::SYS_flock,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_splice,
    libc::SYS_fgetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    libc::SYS_getxattr,
    libc::SYS_setxattr,
    libc::SYS_listxattr,
    libc::SYS_removexattr,
    libc::SYS_lgetxattr,
    libc::SYS_lsetxattr,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    libc::SYS_getcwd,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_memfd_create,
    // Credentials, per thread (export/creds.rs).
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getgroups,
    // The watcher (export/watch/inotify.rs).
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    // Sockets: every listener, the control socket, vhost-user's descriptor passing.
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_shutdown,
    // Event loops (tokio, vhost-user-backend), eventfds, timers.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    // Memory: the allocator, thread stacks, guest memory from the VMM.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    // Threads, futexes, signals, time, process.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_prctl,
    libc::SYS_prlimit64,
    libc::SYS_uname,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_set_tid_address,
    // The older calls glibc makes on x86_64 where other architectures have only the *at ones
    // (std's create_dir, remove_file, rename, set_permissions; the socket setup in
    // transport.rs).
    #[cfg(target_arch = "x86_64")]
    libc::SYS_arch_prctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chmod,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lchown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_access,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lstat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_pipe,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_dup2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("on".parse(), Ok(SandboxMode::On));
        assert_eq!("none".parse(), Ok(SandboxMode::None));
        assert!("chroot".parse::<SandboxMode>().is_err());
        assert_eq!("kill".parse(), Ok(SeccompMode::Kill));
        assert_eq!("log".parse(), Ok(SeccompMode::Log));
        assert_eq!("none".parse(), Ok(SeccompMode::None));
        assert!("errno".parse::<SeccompMode>().is_err());
    }

    #[test]
    fn squash_keeps_only_handles() {
        let spec: ExportSpec = "a=/tmp:ids=squash:1000:1000".parse().unwrap();
        assert_eq!(spec_caps(&spec), 1 << cap::DAC_READ_SEARCH);
        let spec: ExportSpec = "a=/tmp:ids=passthrough:devices=on".parse().unwrap();
        let caps = spec_caps(&spec);
        assert!(caps & (1 << cap::MKNOD) != 0 && caps & (1 << cap::SETUID) != 0);
        assert!(caps & (1 << cap::SETFCAP) == 0);
        assert_eq!(
            cap_names(caps & !(1 << cap::MKNOD) & !(1 << cap::SETUID))
                .split(',')
                .count(),
            6
        );
    }

    #[test]
    fn allow_list_has_no_duplicates() {
        let mut v = ALLOWED.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), ALLOWED.len());
    }
}
