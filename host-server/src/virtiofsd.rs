//! The virtiofsd-compatible command line of `ferry-virtiofsd`.
//!
//! libvirt, Kata Containers, Lima, Podman and cloud-hypervisor's recipe start a virtio-fs
//! backend with the Rust virtiofsd's command line (or the C virtiofsd's `-o` forms older
//! launchers still build). [`parse`] reads those command lines into a [`Compat`]: the shared
//! directory, the vhost-user socket (a path to bind, or a listening socket inherited as
//! `--fd`), read-only, the log level, and Ferry's own extras (`--ferry-*`). Every option
//! virtiofsd knows is either mapped onto Ferry, accepted with a note that says what Ferry does
//! instead (logged at start, [`Compat::notes`]), or refused with an error that says why; an
//! option neither of them knows is an error. Nothing is silently dropped.
//!
//! [`run`] serves the directory through the same virtio-fs backend as
//! `ferry-host --listen vhost-user-fs:...`. [`CAPABILITIES`] is the `--print-capabilities`
//! answer libvirt reads (its `docs/schemas/vhost-user.json` schema, type `fs`).

use std::ffi::OsString;
use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};
use std::path::PathBuf;

use crate::ExportSpec;
use crate::config::{IdOptions, ListenAddr, ServerConfig};
use crate::export::DEFAULT_NODE_FDS;
use crate::ids::{IdMode, parse_on_off, parse_permissions};

/// The answer to `--print-capabilities`: a vhost-user backend of type `fs`. It offers no
/// `migrate-precopy` (Ferry cannot migrate a guest's open files), and `separate-options`
/// because it takes the Rust virtiofsd's separate options as well as `-o`.
pub const CAPABILITIES: &str =
    "{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}\n";

/// The export name used when `--ferry-name` is not given; what `ferry-agent --events-only`
/// names the export by.
pub const DEFAULT_NAME: &str = "virtiofs";

/// Where the vhost-user frontend connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socket {
    /// `--socket-path PATH` (or `-o vhost_user_socket=PATH`): bind and listen here.
    Path(PathBuf),
    /// `--fd N`: a Unix socket already bound and listening, inherited as descriptor N
    /// (libvirt and Kata open it themselves).
    Fd(RawFd),
}

/// What a command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// `--help`.
    Help,
    /// `--version`.
    Version,
    /// `--print-capabilities`: print [`CAPABILITIES`] and exit.
    PrintCapabilities,
    /// Serve a directory.
    Serve(Box<Compat>),
}

/// A virtiofsd command line, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compat {
    /// `--shared-dir` / `-o source=`.
    pub shared_dir: PathBuf,
    /// `--socket-path` or `--fd`.
    pub socket: Socket,
    /// `--readonly`.
    pub read_only: bool,
    /// `--log-level`, `-o log_level=`, `-d` (a tracing filter level).
    pub log_level: Option<String>,
    /// What was accepted without doing what virtiofsd does, one sentence each.
    pub notes: Vec<String>,
    /// `--ferry-name NAME`: the export's name (default [`DEFAULT_NAME`]).
    pub name: String,
    /// `--ferry-listen ADDR` (repeatable): more listeners of the same server, e.g.
    /// `vsock:1024` for `ferry-agent --events-only` in the guest.
    pub listen: Vec<ListenAddr>,
    /// `--ferry-ids`, `--ferry-persist-owners`, `--ferry-permissions`.
    pub ids: IdOptions,
    /// `--ferry-max-node-fds N`.
    pub max_node_fds: usize,
    /// `--sandbox` (`none` turns Ferry's sandbox off) and `--seccomp` (kill, log, trap,
    /// none: what a system call off the allow-list does).
    pub sandbox: crate::sandbox::Sandbox,
}

/// A command line this front cannot serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompatError {
    /// An option neither virtiofsd nor Ferry knows.
    #[error("unknown option {0:?} (see --help)")]
    Unknown(String),
    /// An option that needs a value came without one.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// A flag was given a value.
    #[error("{0} takes no value")]
    UnexpectedValue(String),
    /// A value that does not parse.
    #[error("{option}: {why}")]
    BadValue {
        /// The option.
        option: String,
        /// Why.
        why: String,
    },
    /// A virtiofsd option Ferry refuses rather than misread.
    #[error("{option} is not supported by ferry-virtiofsd: {why}")]
    Refused {
        /// The option.
        option: String,
        /// Why, and what to use instead.
        why: String,
    },
    /// No shared directory.
    #[error("no shared directory: give --shared-dir DIR (or -o source=DIR)")]
    NoSharedDir,
    /// No socket, or two.
    #[error("give exactly one of --socket-path PATH and --fd N")]
    Socket,
}

fn bad(option: &str, why: impl Into<String>) -> CompatError {
    CompatError::BadValue {
        option: option.to_string(),
        why: why.into(),
    }
}

fn refused(option: &str, why: &str) -> CompatError {
    CompatError::Refused {
        option: option.to_string(),
        why: why.to_string(),
    }
}

fn one_of(option: &str, value: &str, allowed: &[&str]) -> Result<(), CompatError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(bad(
            option,
            format!("{value:?} is not one of {}", allowed.join(", ")),
        ))
    }
}

/// The values of virtiofsd's `--cache` (and the C virtiofsd's `-o cache=`, whose `none` is
/// the Rust one's `never`; libvirt writes `none`).
const CACHE_MODES: &[&str] = &["auto", "always", "never", "none", "metadata"];

/// Options being read, before the checks that need all of them.
#[derive(Default)]
struct Reading {
    shared_dir: Option<PathBuf>,
    sockets: Vec<Socket>,
    read_only: bool,
    log_level: Option<String>,
    notes: Vec<String>,
    name: Option<String>,
    listen: Vec<ListenAddr>,
    ids: IdOptions,
    max_node_fds: Option<usize>,
    sandbox: crate::sandbox::Sandbox,
}

impl Reading {
    fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    fn log_level(&mut self, option: &str, v: &str) -> Result<(), CompatError> {
        // virtiofsd's levels, and the C virtiofsd's `err`.
        let level = match v {
            "error" | "err" => "error",
            "warn" | "info" | "debug" | "trace" | "off" => v,
            _ => {
                return Err(bad(
                    option,
                    format!("{v:?} is not one of error, warn, info, debug, trace, off"),
                ));
            }
        };
        self.log_level = Some(level.to_string());
        Ok(())
    }

    fn cache(&mut self, option: &str, v: &str) -> Result<(), CompatError> {
        one_of(option, v, CACHE_MODES)?;
        self.note(format!(
            "{option}={v}: Ferry's virtio-fs cache policy is fixed (entries and attributes \
             valid 1 s, page cache kept and dropped when the host's mtime or size changes, \
             close to virtiofsd's cache=auto)"
        ));
        Ok(())
    }

    /// `--sandbox=namespace|chroot` is Ferry's own sandbox (Landlock, seccomp, capabilities;
    /// the default); `none` turns it off, as the launcher asked.
    fn sandbox(&mut self, option: &str, v: &str) -> Result<(), CompatError> {
        one_of(option, v, &["namespace", "chroot", "none"])?;
        if v == "none" {
            self.sandbox.mode = crate::sandbox::SandboxMode::None;
        } else {
            self.sandbox.mode = crate::sandbox::SandboxMode::On;
            self.note(format!(
                "{option}={v}: Ferry does not change namespaces or root; it confines itself \
                 with Landlock to the shared directory and its socket, a seccomp allow-list \
                 and the capabilities its id mode needs, and every guest request to the \
                 shared directory (openat2 RESOLVE_BENEATH, no symlink followed)"
            ));
        }
        Ok(())
    }

    /// One `-o` suboption (the C virtiofsd's and libvirt's form).
    fn suboption<'a>(&mut self, item: &'a str) -> Result<(), CompatError> {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let option = format!("-o {key}");
        let need = |v: Option<&'a str>| -> Result<&'a str, CompatError> {
            v.ok_or_else(|| CompatError::MissingValue(option.clone()))
        };
        let flag = |v: Option<&str>| match v {
            None => Ok(()),
            Some(_) => Err(CompatError::UnexpectedValue(option.clone())),
        };
        match key {
            "source" => self.shared_dir = Some(PathBuf::from(need(value)?)),
            "vhost_user_socket" => self.sockets.push(Socket::Path(need(value)?.into())),
            "cache" => self.cache(&option, need(value)?)?,
            "sandbox" => self.sandbox(&option, need(value)?)?,
            "log_level" => self.log_level(&option, need(value)?)?,
            "xattrmap" => return Err(xattrmap_refused(&option)),
            "announce_submounts" | "xattr" => flag(value)?,
            "no_xattr" => {
                flag(value)?;
                self.note(
                    "-o no_xattr: Ferry serves extended attributes anyway (its own \
                     user.ferry.* records stay hidden from the guest)",
                );
            }
            "posix_lock" | "no_posix_lock" | "flock" | "no_flock" => {
                flag(value)?;
                self.note(format!(
                    "-o {key}: on virtio-fs the guest kernel keeps its own locks (Ferry's \
                     locks across the boundary need the agent: ferry-agent --mount)"
                ));
            }
            "readdirplus" | "no_readdirplus" | "writeback" | "no_writeback" | "norace"
            | "killpriv_v2" | "no_killpriv_v2" | "allow_direct_io" | "no_allow_direct_io"
            | "posix_acl" | "no_posix_acl" => {
                flag(value)?;
                self.note(format!(
                    "-o {key}: ignored, Ferry's virtio-fs backend decides this itself"
                ));
            }
            "timeout" | "modcaps" | "thread_pool_size" => {
                need(value)?;
                self.note(format!("-o {key}: ignored by Ferry"));
            }
            _ => return Err(CompatError::Unknown(format!("-o {key}"))),
        }
        Ok(())
    }
}

fn xattrmap_refused(option: &str) -> CompatError {
    refused(
        option,
        "Ferry does not rename extended attributes; serving them unmapped would show the \
         guest other names than the launcher asked for",
    )
}

/// Splits an `-o` argument at its commas; `,,` is a literal comma (libvirt escapes commas in
/// paths that way, `virQEMUBuildBufferEscapeComma`).
fn split_suboptions(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

/// Reads a virtiofsd command line (without the program name).
pub fn parse<I, S>(args: I) -> Result<Invocation, CompatError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let args: Vec<String> = args.into_iter().map(Into::into).collect();
    let mut r = Reading::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        // `-o a,b` and `-oa,b`.
        if let Some(rest) = arg.strip_prefix("-o") {
            let list = if rest.is_empty() {
                let v = args
                    .get(i)
                    .ok_or_else(|| CompatError::MissingValue("-o".into()))?;
                i += 1;
                v.clone()
            } else {
                rest.to_string()
            };
            for item in split_suboptions(&list) {
                r.suboption(&item)?;
            }
            continue;
        }
        match arg.as_str() {
            "-h" | "--help" => return Ok(Invocation::Help),
            "-V" | "--version" => return Ok(Invocation::Version),
            "--print-capabilities" => return Ok(Invocation::PrintCapabilities),
            "-d" | "--debug" => {
                r.log_level = Some("debug".into());
                continue;
            }
            "-f" | "--foreground" => continue,
            _ => {}
        }
        let Some(long) = arg.strip_prefix("--") else {
            return Err(CompatError::Unknown(arg.clone()));
        };
        let (name, inline) = match long.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (long, None),
        };
        let option = format!("--{name}");
        let mut value = || -> Result<String, CompatError> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            let v = args
                .get(i)
                .ok_or_else(|| CompatError::MissingValue(option.clone()))?;
            i += 1;
            Ok(v.clone())
        };
        let no_value = |r: &Reading| -> Result<(), CompatError> {
            let _ = r;
            match &inline {
                None => Ok(()),
                Some(_) => Err(CompatError::UnexpectedValue(option.clone())),
            }
        };
        match name {
            "shared-dir" => r.shared_dir = Some(PathBuf::from(value()?)),
            "socket-path" | "socket" => r.sockets.push(Socket::Path(value()?.into())),
            "fd" => {
                let v = value()?;
                let fd: RawFd = v
                    .parse()
                    .ok()
                    .filter(|&n| n >= 0)
                    .ok_or_else(|| bad(&option, format!("{v:?} is not a descriptor number")))?;
                r.sockets.push(Socket::Fd(fd));
            }
            "readonly" => {
                no_value(&r)?;
                r.read_only = true;
            }
            "cache" => {
                let v = value()?;
                r.cache(&option, &v)?;
            }
            "sandbox" => {
                let v = value()?;
                r.sandbox(&option, &v)?;
            }
            "seccomp" => {
                let v = value()?;
                one_of(&option, &v, &["none", "kill", "log", "trap"])?;
                r.sandbox.seccomp = v.parse().map_err(|w: String| bad(&option, w))?;
            }
            "log-level" => {
                let v = value()?;
                r.log_level(&option, &v)?;
            }
            "syslog" => {
                no_value(&r)?;
                r.note("--syslog: Ferry logs to stderr, which the launcher collects");
            }
            "announce-submounts" => {
                // Ferry always announces submounts (FUSE_ATTR_SUBMOUNT).
                no_value(&r)?;
            }
            "xattr" => no_value(&r)?,
            "xattrmap" => {
                value()?;
                return Err(xattrmap_refused(&option));
            }
            "posix-acl" => {
                no_value(&r)?;
                r.note(
                    "--posix-acl: ACLs are served as the system.posix_acl_* extended \
                     attributes they are; Ferry does not ask the guest kernel to enforce them",
                );
            }
            "thread-pool-size" => {
                let v = value()?;
                v.parse::<usize>()
                    .map_err(|_| bad(&option, format!("{v:?} is not a number")))?;
                r.note(format!(
                    "--thread-pool-size={v}: Ferry serves each virtio-fs device with one \
                     worker per queue"
                ));
            }
            "inode-file-handles" => {
                let v = value()?;
                one_of(&option, &v, &["never", "prefer", "mandatory", "fallback"])?;
                if v != "prefer" {
                    r.note(format!(
                        "--inode-file-handles={v}: Ferry keeps kernel file handles where the \
                         filesystem and its privileges allow, and reopens by name beneath \
                         the parent otherwise (like prefer)"
                    ));
                }
            }
            "translate-uid" | "translate-gid" | "uid-map" | "gid-map" => {
                value()?;
                return Err(refused(
                    &option,
                    "virtiofsd's id translation is not Ferry's; give Ferry's own id mode \
                     instead, e.g. --ferry-ids map:GUEST:HOST:COUNT or --ferry-ids squash",
                ));
            }
            "socket-group" => {
                value()?;
                return Err(refused(
                    &option,
                    "change the socket's group yourself, or let the launcher pass a \
                     listening socket with --fd",
                ));
            }
            "tag" => {
                value()?;
                return Err(refused(
                    &option,
                    "Ferry's backend has no configuration space; set the tag in the VMM \
                     (QEMU's vhost-user-fs-pci tag=, cloud-hypervisor's --fs tag=)",
                ));
            }
            "rlimit-nofile" => {
                value()?;
                r.note("--rlimit-nofile: Ferry raises its open-file limit as far as it may");
            }
            "modcaps" | "migration-mode" | "migration-on-error" | "security-label" => {
                value()?;
                r.note(format!("{option}: ignored by Ferry"));
            }
            "writeback"
            | "allow-direct-io"
            | "allow-mmap"
            | "no-readdirplus"
            | "killpriv-v2"
            | "no-killpriv-v2"
            | "preserve-noatime"
            | "migration-verify-handles"
            | "migration-confirm-paths" => {
                no_value(&r)?;
                r.note(format!(
                    "{option}: ignored, Ferry's virtio-fs backend decides this itself"
                ));
            }
            "ferry-name" => {
                let v = value()?;
                if v.is_empty() || v.contains(['/', ':', '=']) {
                    return Err(bad(&option, "a name without '/', ':' or '='"));
                }
                r.name = Some(v);
            }
            "ferry-listen" => {
                let v = value()?;
                let addr: ListenAddr = v.parse().map_err(|e| bad(&option, format!("{e}")))?;
                r.listen.push(addr);
            }
            "ferry-ids" => {
                let v = value()?;
                r.ids.mode = Some(v.parse::<IdMode>().map_err(|e| bad(&option, e))?);
            }
            "ferry-persist-owners" => {
                let v = value()?;
                r.ids.persist_owners = Some(parse_on_off(&v).map_err(|e| bad(&option, e))?);
            }
            "ferry-permissions" => {
                let v = value()?;
                r.ids.permissions = Some(parse_permissions(&v).map_err(|e| bad(&option, e))?);
            }
            "ferry-max-node-fds" => {
                let v = value()?;
                r.max_node_fds = Some(
                    v.parse()
                        .ok()
                        .filter(|&n: &usize| n > 0)
                        .ok_or_else(|| bad(&option, format!("{v:?} is not a positive number")))?,
                );
            }
            _ => return Err(CompatError::Unknown(arg.clone())),
        }
    }
    let shared_dir = r.shared_dir.ok_or(CompatError::NoSharedDir)?;
    if r.sockets.len() != 1 {
        return Err(CompatError::Socket);
    }
    Ok(Invocation::Serve(Box::new(Compat {
        shared_dir,
        socket: r.sockets.remove(0),
        read_only: r.read_only,
        log_level: r.log_level,
        notes: r.notes,
        name: r.name.unwrap_or_else(|| DEFAULT_NAME.to_string()),
        listen: r.listen,
        ids: r.ids,
        max_node_fds: r.max_node_fds.unwrap_or(DEFAULT_NODE_FDS),
        sandbox: r.sandbox,
    })))
}

/// `--help`'s text.
pub const HELP: &str = "\
ferry-virtiofsd: Ferry's virtio-fs backend behind virtiofsd's command line

Usage: ferry-virtiofsd --shared-dir DIR (--socket-path PATH | --fd N) [OPTIONS]
       ferry-virtiofsd --fd N -o source=DIR[,cache=MODE][,sandbox=MODE][,xattr]...
       ferry-virtiofsd --print-capabilities

Mapped: --shared-dir / -o source, --socket-path / -o vhost_user_socket, --fd, --readonly,
  --log-level / -o log_level / -d, --announce-submounts and --xattr (always on).
Sandbox: --sandbox=namespace|chroot (default) is Ferry's own (Landlock, seccomp, capabilities),
  --sandbox=none turns it off; --seccomp=kill (default)|log|trap|none for calls off its list.
Accepted with a logged note: --cache, --syslog, --posix-acl,
  --thread-pool-size, --inode-file-handles, --rlimit-nofile, -o flock/posix_lock and the
  other tuning switches.
Refused: --xattrmap, --translate-uid/--translate-gid (use --ferry-ids), --socket-group, --tag.

Ferry's extras:
  --ferry-name NAME         the export's name (default virtiofs), for ferry-agent --events-only
  --ferry-listen ADDR       another listener of the same server (repeatable), e.g. vsock:1024
                            for `ferry-agent --events-only` in the guest (host changes as
                            inotify events), or unix:/hybrid-vsock: for ferry-agent mounts
  --ferry-ids MODE          passthrough, squash[:UID:GID] or map:GUEST:HOST:COUNT[,...]
  --ferry-persist-owners on|off, --ferry-permissions guest|host, --ferry-max-node-fds N
";

/// Takes the inherited listening socket `fd`, checking that it is one.
fn inherited_listener(fd: RawFd) -> anyhow::Result<std::os::unix::net::UnixListener> {
    let sockopt = |opt: libc::c_int| -> std::io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, which has that size.
        let rc =
            unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut v).cast(), &mut len) };
        if rc == 0 {
            Ok(v)
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let domain = sockopt(libc::SO_DOMAIN)
        .map_err(|e| anyhow::anyhow!("--fd={fd}: not an inherited socket: {e}"))?;
    anyhow::ensure!(domain == libc::AF_UNIX, "--fd={fd}: not a Unix socket");
    anyhow::ensure!(
        sockopt(libc::SO_ACCEPTCONN)? == 1,
        "--fd={fd}: the Unix socket is not listening"
    );
    // SAFETY: `fd` is an open socket (getsockopt answered for it) that the launcher passed to
    // this process for it to own; nothing else in the process uses it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD on a descriptor we own; keeps it out of any program we might start.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(owned.into())
}

/// Serves `compat` until SIGINT or SIGTERM.
pub fn run(compat: Compat) -> anyhow::Result<()> {
    for note in &compat.notes {
        tracing::info!("{note}");
    }
    // Podman passes `--shared-dir .` with its working directory set to the share.
    let path = std::path::absolute(&compat.shared_dir)?;
    let spec = ExportSpec {
        name: compat.name.clone(),
        path,
        read_only: compat.read_only,
        ids: compat.ids.clone(),
        devices: false,
        // As everywhere in Ferry: a guest sets set-id bits and file capabilities only where
        // the operator allowed it (SECURITY.md).
        setid: false,
        allow: None,
        // virtiofsd's default (no --posix-acl): the guest kernel checks mode bits only.
        acl: false,
    };
    let mut listen = compat.listen.clone();
    let mut inherited = Vec::new();
    match &compat.socket {
        Socket::Path(p) => listen.push(ListenAddr::VhostUserFs {
            socket: p.clone(),
            export: compat.name.clone(),
        }),
        Socket::Fd(fd) => inherited.push((compat.name.clone(), inherited_listener(*fd)?)),
    }
    let config = ServerConfig {
        exports: vec![spec],
        listen,
        // A `--ferry-listen` stream listener needs a token, as every Ferry listener does: it
        // comes from FERRY_TOKEN (the vhost-user socket itself is protected by its mode).
        token: std::env::var("FERRY_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .map(String::into_bytes),
        client_tokens: Vec::new(),
        no_auth: false,
        socket_mode: 0o600,
        max_node_fds: compat.max_node_fds,
        limits: crate::conn::Limits::default(),
        sandbox: compat.sandbox,
    };
    // Before the runtime starts its threads: they inherit the sandbox.
    crate::sandbox::enter(&config, &crate::sandbox::Extra::default())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry-virtiofsd")
        .build()?;
    rt.block_on(crate::run_with(config, inherited, crate::shutdown_signal()))
}

/// `argv[0]`'s file name, for messages.
pub fn program_name(arg0: Option<&OsString>) -> String {
    arg0.and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ferry-virtiofsd".into())
}

#[cfg(test)]
mod tests;
