//! The `ferry-host` command line (clap), in the library so that `ferry man` and
//! `ferry completions` generate from the same definitions the binary parses with.

use std::path::PathBuf;
use std::time::Duration;

use crate::ids::{IdMode, Permissions, parse_on_off, parse_permissions};
use crate::{ExportSpec, ListenAddr};
use clap::{Parser, Subcommand};

/// Export host directories to Ferry guest agents.
///
/// Each --export is offered to every client; each --listen accepts clients. Guests mount an
/// export by its NAME with `ferry-agent --mount NAME=MOUNTPOINT`.
///
/// Owners: run as root, the server passes uids and gids through unchanged and creates files as
/// the calling guest user, and the guest kernel checks permissions (like a local disk). Run as
/// a normal user, it squashes: every host file shows as owned by the server's own uid and gid,
/// everything the VM creates belongs to that user on the host, chown from the VM is kept in an
/// xattr, and every VM user may do what the server's user may do. See --ids, --persist-owners
/// and --permissions.
#[derive(Parser, Debug)]
#[command(
    version = ferry_common::version(),
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Directory to export, as NAME=PATH. Options may follow the path, each after a colon: :ro
    /// refuses every change with EROFS; :ids=MODE, :persist-owners=on|off and
    /// :permissions=guest|host set that export's owner handling (see the flags of the same
    /// names); :devices=on lets guests create device nodes there (off by default: a device
    /// node in the directory opens a host device); :acl=off turns POSIX ACLs off there (on by
    /// default except in squash mode, which has none); :setid=on lets guests set set-user-ID and
    /// set-group-ID bits and write security.capability (off by default: such a file gives its
    /// powers to whoever runs it on the host); :allow=cid:N,uid:N,token:NAME lets only those
    /// clients see and mount it (every authenticated client by default). E.g.
    /// src=/home/me/src:ids=squash:1000:1000. Repeat for several exports.
    #[arg(
        long = "export",
        value_name = "NAME=PATH[:OPTIONS]",
        required_unless_present = "config"
    )]
    pub exports: Vec<ExportSpec>,

    /// Where to accept guest agents: unix:PATH, tcp:PORT (loopback), tcp:HOST:PORT,
    /// vsock:PORT (AF_VSOCK, for vhost-vsock guests such as QEMU/KVM), or
    /// hybrid-vsock:PATH:PORT (Firecracker, cloud-hypervisor, vhost-device-vsock: guests
    /// connecting to vsock port PORT arrive on the Unix socket PATH_PORT, where PATH is the
    /// VMM's vsock socket), or vhost-user-fs:SOCKET:NAME (a virtio-fs device backend serving
    /// export NAME to a VMM such as QEMU; the guest mounts it with `mount -t virtiofs NAME`).
    /// TCP always requires a token. Repeat for several listeners.
    #[arg(
        long = "listen",
        value_name = "ADDR",
        required_unless_present = "config"
    )]
    pub listen: Vec<ListenAddr>,

    /// File holding the shared token clients must present (trailing newline ignored). Every
    /// listener requires a token unless --no-auth is given; give the agents the same file.
    /// Export allow-lists name it token:default.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Another accepted token, with a name that export allow-lists use (:allow=token:NAME), so
    /// that one VM's token opens only its exports. Repeatable; adds to the config file's
    /// client-tokens (replacing one of the same name).
    #[arg(long = "client-token", value_name = "NAME=PATH", value_parser = parse_client_token)]
    pub client_tokens: Vec<(String, PathBuf)>,

    /// Let clients connect without a token on Unix, vsock and hybrid-vsock listeners (TCP
    /// always requires one): anyone who can reach a listener, every VM on the host for vsock,
    /// can then use every export its allow-list does not deny. Logged as a warning.
    #[arg(long)]
    pub no_auth: bool,

    /// Mode of the socket files the server creates (unix:, hybrid-vsock:, vhost-user-fs:), in
    /// octal; they have it from the moment they appear. Default: 600.
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,

    /// The shared token itself; prefer --token-file, which keeps it out of `ps`.
    #[arg(
        long,
        env = "FERRY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Most O_PATH descriptors of looked-up files and directories each guest connection keeps
    /// open. Beyond it, the least recently used are closed and reopened when needed again: by
    /// kernel file handle (needs CAP_DAC_READ_SEARCH, which root has), else (an unprivileged
    /// server, filesystems without handles, FUSE) by name beneath their parent directory,
    /// checked to be the same object (ESTALE otherwise). Default: 4096.
    #[arg(long, env = "FERRY_MAX_NODE_FDS", value_name = "N")]
    pub max_node_fds: Option<usize>,

    /// Read the configuration from this TOML file (see packaging/ferry-host.toml): listeners,
    /// exports with their options, token file, owner settings. Flags given as well override
    /// the file's values (--export NAME=... replaces the file's export NAME) or add to them
    /// (--listen, other --export names).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Serve the control socket here (unix:PATH, mode 0600): `ferry status` reads the
    /// server's numbers from it and `ferry ctl reload` reloads the configuration; nothing on
    /// it changes files.
    #[arg(long, value_name = "unix:PATH", value_parser = parse_control)]
    pub control: Option<PathBuf>,

    /// Serve the numbers of `ferry status` as Prometheus text over HTTP here: unix:PATH
    /// (mode 0600) or tcp:PORT (loopback) or tcp:HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<ListenAddr>,

    /// Check the configuration (file and flags) and exit: every value parses, every export
    /// is a directory the server can open, TCP has a token. Nothing is listened on.
    #[arg(long)]
    pub check_config: bool,

    /// Confine the server once it knows its configuration: keep only the capabilities its id
    /// modes need, set no_new_privs, restrict its file access to the exports and its sockets
    /// with Landlock and its system calls to an allow-list with seccomp, each as far as the
    /// kernel supports it (logged at start). `none` turns all of it off. Default: on.
    #[arg(long, value_name = "on|none", value_parser = crate::sandbox::parse_sandbox)]
    pub sandbox: Option<crate::sandbox::SandboxMode>,

    /// What a system call off the sandbox's allow-list does: `kill` the server (default; the
    /// kernel's audit log names the call), `log` it and go on, `trap` (SIGSYS), or `none`
    /// (no seccomp filter).
    #[arg(
        long,
        env = "FERRY_SECCOMP",
        value_name = "kill|log|trap|none",
        value_parser = crate::sandbox::parse_seccomp
    )]
    pub seccomp: Option<crate::sandbox::SeccompMode>,

    #[command(flatten)]
    pub ids: IdArgs,

    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Bounds on what clients may make the server hold (README: Limits). Each replaces the
/// config file's key of the same name in its `[limits]` table.
#[derive(clap::Args, Debug)]
pub struct LimitArgs {
    /// Seconds a new client has to send its whole Hello (the handshake); a slower one is
    /// disconnected. Default: 10.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub handshake_timeout: Option<Duration>,

    /// Connections served at once; a new one beyond it is closed with a log line. Default:
    /// 256.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Connections still in their handshake (not yet authenticated); a new one beyond it is
    /// closed with a log line. Default: 64.
    #[arg(long, value_name = "N")]
    pub max_unauthenticated: Option<usize>,

    /// Open files and directories one guest session may hold; one more open answers EMFILE.
    /// Default: 65536.
    #[arg(long, value_name = "N")]
    pub max_handles: Option<usize>,

    /// (File, guest process) pairs holding POSIX locks one guest session may have, each a host
    /// descriptor; one more lock answers ENOLCK. Default: 16384.
    #[arg(long, value_name = "N")]
    pub max_lock_owners: Option<usize>,

    /// Blocking lock requests (fcntl F_SETLKW, flock) one guest connection may have waiting;
    /// one more is answered ENOLCK. All of a connection's waiting locks share one thread.
    /// Default: 4096.
    #[arg(long, value_name = "N")]
    pub max_lock_waiters: Option<usize>,

    /// Bytes of change events queued for a guest that is not reading them; beyond it the
    /// guest is told its events overflowed (its inotify watchers see IN_Q_OVERFLOW). Default:
    /// 16777216 (16 MiB).
    #[arg(long, value_name = "BYTES")]
    pub max_queued_change_bytes: Option<usize>,
}

impl LimitArgs {
    /// The limits given on the command line, as config-file overrides.
    pub fn overrides(&self) -> crate::config_file::LimitOverrides {
        crate::config_file::LimitOverrides {
            handshake_timeout: self.handshake_timeout,
            max_connections: self.max_connections,
            max_unauthenticated: self.max_unauthenticated,
            max_handles: self.max_handles,
            max_lock_owners: self.max_lock_owners,
            max_lock_waiters: self.max_lock_waiters,
            max_queued_change_bytes: self.max_queued_change_bytes,
        }
    }
}

/// A positive number of seconds (`--handshake-timeout`, the `handshake-timeout` key).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?}: expected a positive number of seconds"))
}

fn parse_client_token(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PATH"))?;
    crate::config::validate_name(name)?;
    Ok((name.to_string(), PathBuf::from(path)))
}

/// An octal file mode of at most 0777 (`--socket-mode`, the `socket-mode` key).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?}: expected an octal mode such as 600 or 660"))
}

/// The owner flags, shared by every export that does not set its own.
#[derive(clap::Args, Debug)]
pub struct IdArgs {
    /// How owners translate between guest and host, for every export without its own :ids=.
    /// `passthrough`: ids unchanged; files are created as the calling guest user (needs root).
    /// `squash:UID:GID`: every host file shows as owned by UID:GID, and everything the VM
    /// creates belongs on the host to this server's user (`squash` alone: the server's own
    /// uid and gid). `map:[u:|g:|b:]GUEST:HOST:COUNT[,...]`: id ranges as in an idmapped
    /// mount, for uids (u:), gids (g:) or both (b: or no prefix); ids outside every range show
    /// as 65534 and cannot be set (needs root). Default: passthrough as root, else squash to
    /// the server's own ids.
    #[arg(long = "ids", value_name = "MODE", value_parser = parse_ids)]
    pub mode: Option<IdMode>,

    /// Keep owners set from the VM (chown, chgrp, and a chmod the host refuses) in the
    /// user.ferry.owner xattr of the host file and show them from then on; a later chmod on
    /// the host wins over a kept mode. Default: on in squash mode, off otherwise.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub persist_owners: Option<bool>,

    /// Who checks permissions. `guest`: the VM's kernel, against the owners and modes shown, as
    /// on a local disk (use it when VM users must be kept from each other's files, or programs
    /// depend on permission bits). `host`: every VM user may do what this server's user may do,
    /// as with Docker Desktop's osxfs (use it when VM users with other uids must simply be able
    /// to write). Default: host in squash mode, guest otherwise.
    #[arg(long, value_name = "guest|host", value_parser = parse_permissions)]
    pub permissions: Option<Permissions>,
}

pub fn parse_ids(s: &str) -> Result<IdMode, String> {
    s.parse::<IdMode>()
        .map_err(|e| format!("{e} (expected {})", crate::ids::IDS_SYNTAX))
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Remove every kept owner (the user.ferry.owner xattr) from the files and directories
    /// under PATH, without following symlinks or leaving PATH's filesystem.
    StripOwners {
        /// The tree to clean, usually an export's directory.
        path: PathBuf,
    },
}

fn parse_control(s: &str) -> Result<PathBuf, String> {
    match s.strip_prefix("unix:") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(format!("{s:?}: expected unix:PATH")),
    }
}
