//! `ferry-host`: the command line over [`ferry_host::run`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferry_host::ids::{IdMode, Permissions, parse_on_off, parse_permissions};
use ferry_host::{ExportSpec, IdOptions, ListenAddr, ServerConfig};

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
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Directory to export, as NAME=PATH. Options may follow the path, each after a colon: :ro
    /// refuses every change with EROFS; :ids=MODE, :persist-owners=on|off and
    /// :permissions=guest|host set that export's owner handling (see the flags of the same
    /// names); :devices=on lets guests create device nodes there (off by default: a device
    /// node in the directory opens a host device); :acl=off turns POSIX ACLs off there (on by
    /// default except in squash mode, which has none); :setid=on lets guests set set-user-ID
    /// and set-group-ID bits and write security.capability (off by default: such a file gives
    /// its powers to whoever runs it on the host). E.g. src=/home/me/src:ids=squash:1000:1000.
    /// Repeat for several exports.
    #[arg(long = "export", value_name = "NAME=PATH[:OPTIONS]", required = true)]
    exports: Vec<ExportSpec>,

    /// Where to accept guest agents: unix:PATH, tcp:PORT (loopback), tcp:HOST:PORT,
    /// vsock:PORT (AF_VSOCK, for vhost-vsock guests such as QEMU/KVM), or
    /// hybrid-vsock:PATH:PORT (Firecracker, cloud-hypervisor, vhost-device-vsock: guests
    /// connecting to vsock port PORT arrive on the Unix socket PATH_PORT, where PATH is the
    /// VMM's vsock socket), or vhost-user-fs:SOCKET:NAME (a virtio-fs device backend serving
    /// export NAME to a VMM such as QEMU; the guest mounts it with `mount -t virtiofs NAME`).
    /// TCP always requires a token. Repeat for several listeners.
    #[arg(long = "listen", value_name = "ADDR", required = true)]
    listen: Vec<ListenAddr>,

    /// File holding the shared token clients must present (trailing newline ignored). Every
    /// listener requires a token unless --no-auth is given; give the agents the same file.
    /// Export allow-lists name it token:default.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// Another accepted token, with a name that export allow-lists use (:allow=token:NAME), so
    /// that one VM's token opens only its exports. Repeatable.
    #[arg(long = "client-token", value_name = "NAME=PATH", value_parser = parse_client_token)]
    client_tokens: Vec<(String, PathBuf)>,

    /// Let clients connect without a token on Unix, vsock and hybrid-vsock listeners (TCP
    /// always requires one): anyone who can reach a listener, every VM on the host for vsock,
    /// can then use every export its allow-list does not deny. Logged as a warning.
    #[arg(long)]
    no_auth: bool,

    /// Mode of the socket files the server creates (unix:, hybrid-vsock:, vhost-user-fs:), in
    /// octal; they have it from the moment they appear.
    #[arg(long, value_name = "OCTAL", default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,

    /// The shared token itself; prefer --token-file, which keeps it out of `ps`.
    #[arg(
        long,
        env = "FERRY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,

    /// Most O_PATH descriptors of looked-up files and directories each guest connection keeps
    /// open. Beyond it, the least recently used are closed and reopened when needed again: by
    /// kernel file handle (needs CAP_DAC_READ_SEARCH, which root has), else (an unprivileged
    /// server, filesystems without handles, FUSE) by name beneath their parent directory,
    /// checked to be the same object (ESTALE otherwise).
    #[arg(long, env = "FERRY_MAX_NODE_FDS", value_name = "N", default_value_t = ferry_host::DEFAULT_NODE_FDS)]
    max_node_fds: usize,

    #[command(flatten)]
    ids: IdArgs,

    #[command(flatten)]
    limits: LimitArgs,
}

/// Bounds on what clients may make the server hold (README: Limits).
#[derive(clap::Args, Debug)]
struct LimitArgs {
    /// Seconds a new client has to send its whole Hello (the handshake); a slower one is
    /// disconnected.
    #[arg(long, value_name = "SECS", default_value_t = ferry_host::Limits::HANDSHAKE_TIMEOUT.as_secs_f64())]
    handshake_timeout: f64,

    /// Connections served at once; a new one beyond it is closed with a log line.
    #[arg(long, value_name = "N", default_value_t = ferry_host::Limits::MAX_CONNECTIONS)]
    max_connections: usize,

    /// Connections still in their handshake (not yet authenticated); a new one beyond it is
    /// closed with a log line.
    #[arg(long, value_name = "N", default_value_t = ferry_host::Limits::MAX_UNAUTHENTICATED)]
    max_unauthenticated: usize,

    /// Open files and directories one guest session may hold; one more open answers EMFILE.
    #[arg(long, value_name = "N", default_value_t = ferry_host::DEFAULT_HANDLES)]
    max_handles: usize,

    /// (File, guest process) pairs holding POSIX locks one guest session may have, each a host
    /// descriptor; one more lock answers ENOLCK.
    #[arg(long, value_name = "N", default_value_t = ferry_host::DEFAULT_LOCK_OWNERS)]
    max_lock_owners: usize,

    /// Blocking lock requests (fcntl F_SETLKW, flock) one guest connection may have waiting;
    /// one more is answered ENOLCK. All of a connection's waiting locks share one thread.
    #[arg(long, value_name = "N", default_value_t = ferry_host::Limits::MAX_LOCK_WAITERS)]
    max_lock_waiters: usize,

    /// Bytes of change events queued for a guest that is not reading them; beyond it the
    /// guest is told its events overflowed (its inotify watchers see IN_Q_OVERFLOW).
    #[arg(long, value_name = "BYTES", default_value_t = ferry_host::Limits::MAX_QUEUED_CHANGE_BYTES)]
    max_queued_change_bytes: usize,
}

impl LimitArgs {
    fn limits(&self) -> anyhow::Result<ferry_host::Limits> {
        let handshake_timeout = std::time::Duration::try_from_secs_f64(self.handshake_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                anyhow::anyhow!("--handshake-timeout must be a positive number of seconds")
            })?;
        Ok(ferry_host::Limits {
            handshake_timeout,
            max_connections: self.max_connections,
            max_unauthenticated: self.max_unauthenticated,
            max_handles: self.max_handles,
            max_lock_owners: self.max_lock_owners,
            max_lock_waiters: self.max_lock_waiters,
            max_queued_change_bytes: self.max_queued_change_bytes,
        })
    }
}

/// The owner flags, shared by every export that does not set its own.
#[derive(clap::Args, Debug)]
struct IdArgs {
    /// How owners translate between guest and host, for every export without its own :ids=.
    /// `passthrough`: ids unchanged; files are created as the calling guest user (needs root).
    /// `squash:UID:GID`: every host file shows as owned by UID:GID, and everything the VM
    /// creates belongs on the host to this server's user (`squash` alone: the server's own
    /// uid and gid). `map:[u:|g:|b:]GUEST:HOST:COUNT[,...]`: id ranges as in an idmapped
    /// mount, for uids (u:), gids (g:) or both (b: or no prefix); ids outside every range show
    /// as 65534 and cannot be set (needs root). Default: passthrough as root, else squash to
    /// the server's own ids.
    #[arg(long = "ids", value_name = "MODE", value_parser = parse_ids)]
    mode: Option<IdMode>,

    /// Keep owners set from the VM (chown, chgrp, and a chmod the host refuses) in the
    /// user.ferry.owner xattr of the host file and show them from then on; a later chmod on
    /// the host wins over a kept mode. Default: on in squash mode, off otherwise.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    persist_owners: Option<bool>,

    /// Who checks permissions. `guest`: the VM's kernel, against the owners and modes shown, as
    /// on a local disk (use it when VM users must be kept from each other's files, or programs
    /// depend on permission bits). `host`: every VM user may do what this server's user may do,
    /// as with Docker Desktop's osxfs (use it when VM users with other uids must simply be able
    /// to write). Default: host in squash mode, guest otherwise.
    #[arg(long, value_name = "guest|host", value_parser = parse_permissions)]
    permissions: Option<Permissions>,
}

fn parse_client_token(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PATH"))?;
    ferry_host::config::validate_name(name)?;
    Ok((name.to_string(), PathBuf::from(path)))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?}: expected an octal mode such as 600 or 660"))
}

fn parse_ids(s: &str) -> Result<IdMode, String> {
    s.parse::<IdMode>()
        .map_err(|e| format!("{e} (expected {})", ferry_host::ids::IDS_SYNTAX))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Remove every kept owner (the user.ferry.owner xattr) from the files and directories
    /// under PATH, without following symlinks or leaving PATH's filesystem.
    StripOwners {
        /// The tree to clean, usually an export's directory.
        path: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    ferry_common::logging::init();
    let args = Args::parse();
    ferry_common::logging::exit_code("ferry-host", real_main(args))
}

fn real_main(args: Args) -> anyhow::Result<()> {
    if let Some(Command::StripOwners { path }) = args.command {
        return ferry_host::strip::run_strip_owners(&path);
    }
    let token = ferry_common::token::load(args.token_file.as_deref(), args.token.as_deref())?;
    let client_tokens = args
        .client_tokens
        .iter()
        .map(|(name, path)| {
            let t = ferry_common::token::load(Some(path), None)?.expect("a file was given");
            Ok((name.clone(), t))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut exports = args.exports;
    let global = IdOptions {
        mode: args.ids.mode,
        persist_owners: args.ids.persist_owners,
        permissions: args.ids.permissions,
    };
    ferry_host::config::apply_id_defaults(&mut exports, &global);
    let config = ServerConfig {
        exports,
        listen: args.listen,
        token,
        client_tokens,
        no_auth: args.no_auth,
        socket_mode: args.socket_mode,
        max_node_fds: args.max_node_fds,
        limits: args.limits.limits()?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry-host")
        .build()?;
    rt.block_on(ferry_host::run(config, ferry_host::shutdown_signal()))
}
