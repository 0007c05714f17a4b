//! The Ferry host server: exports host directories to guests.
//!
//! - [`export`]: the export core. A FUSE-shaped, transport-neutral API over one host directory
//!   (node ids with lookup counts, file handles), with the path-safety rules. Knows nothing of
//!   sockets, FUSE sessions, vsock or vhost-user.
//! - [`conn`]: one guest connection, generic over the byte stream: handshake, concurrent
//!   request dispatch onto the export core, reply framing.
//! - [`limits`]: `Limits`, the caps on what clients may make the server hold.
//! - [`transport`]: listeners (Unix socket, TCP, AF_VSOCK, hybrid vsock) that accept streams
//!   and hand them to `conn`.
//! - [`virtiofs`]: the export core as a vhost-user-fs backend (the guest kernel speaks FUSE
//!   over virtqueues): FUSE codec, request server, vhost-user glue.
//! - [`virtiofsd`]: virtiofsd's command line (libvirt, Kata, Lima, Podman, cloud-hypervisor)
//!   read onto a Ferry virtio-fs server; the `ferry-virtiofsd` binary is a thin CLI over it.
//! - [`config`]: the command-line configuration and its parsing.
//! - [`config_file`]: the same configuration as a TOML file (`--config`), merged with the
//!   command line.
//! - [`ids`]: guest and host id newtypes, id modes (`passthrough`, `map`, `squash`) and their
//!   parsing; the per-export [`IdPolicy`].
//! - [`control`], [`stats`]: the control socket (`ferry status`, `ferry ctl reload`), the
//!   Prometheus endpoint, and the counters behind them.
//! - [`reload`]: the live state a SIGHUP replaces: exports added, removed or changed
//!   without dropping the guests of the others.
//! - [`strip`]: `strip-owners`, removing persisted-owner xattrs from a host tree.
//! - [`sandbox`]: how the server confines itself at start (capabilities, no_new_privs,
//!   Landlock, seccomp).
//!
//! [`run`] ties them together; the `ferry-host` binary is a thin CLI over it.

pub mod cli;
pub mod config;
pub mod config_file;
pub mod conn;
pub mod control;
pub mod export;
pub mod ids;
pub mod limits;
pub mod reload;
pub mod sandbox;
pub mod stats;
pub mod strip;
pub mod transport;
pub mod virtiofs;
pub mod virtiofsd;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tracing::info;

pub use config::{Client, ExportSpec, IdOptions, ListenAddr, ServerConfig};
pub use conn::{Auth, Limits, Peer, ServerState, serve_connection};
pub use export::{
    DEFAULT_HANDLES, DEFAULT_LOCK_OWNERS, DEFAULT_NODE_FDS, Export, ExportConfig, ExportError,
    ExportSession, ROOT_ID, Response, SetAttrs, XattrReply,
};
pub use ids::{IdMode, IdPolicy, Permissions};
pub use transport::Listener;

/// Opens every export, checking that each is a directory the server can use.
pub fn open_exports(specs: &[ExportSpec]) -> anyhow::Result<Vec<Arc<Export>>> {
    let mut seen = std::collections::HashSet::new();
    specs
        .iter()
        .map(|s| {
            anyhow::ensure!(
                seen.insert(s.name.clone()),
                "export name {:?} is given twice",
                s.name
            );
            Export::open(ExportConfig {
                name: s.name.clone(),
                path: s.path.clone(),
                read_only: s.read_only,
                ids: s.ids.resolve(),
                devices: s.devices,
                acl: s.acl,
                setid: s.setid,
            })
            .with_context(|| format!("cannot export {}={}", s.name, s.path.display()))
        })
        .collect()
}

/// Raises this process's open-file limit as far as it may go: to the kernel's `nr_open` when
/// privileged, else to the hard limit. Node descriptors are capped per session where kernel
/// file handles work, but where they do not every node the guest holds keeps one `O_PATH`
/// descriptor (see `export/inode.rs`), and every open guest file is one; returns the new soft
/// limit.
pub fn raise_fd_limit() -> u64 {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if let Some(max) = nr_open.filter(|&m| m > lim.rlim_max) {
        let raised = libc::rlimit {
            rlim_cur: max,
            rlim_max: max,
        };
        // SAFETY: setrlimit reads the struct; raising the hard limit needs CAP_SYS_RESOURCE
        // and simply fails without it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return max;
        }
    }
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above; the soft limit may always go up to the hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        lim.rlim_max
    } else {
        lim.rlim_cur
    }
}

/// Checks `config`'s settings without opening anything: there are exports and listeners, TCP
/// has its token, every listener has one unless `no_auth`, every allow-list token is given,
/// every vhost-user-fs listener names an export. Returns how clients authenticate.
pub fn check_settings(config: &ServerConfig) -> anyhow::Result<conn::Auth> {
    anyhow::ensure!(!config.listen.is_empty(), "no --listen given");
    check_settings_but_listeners(config)
}

/// [`check_settings`] for a server that may also serve sockets a launcher passed in.
fn check_settings_but_listeners(config: &ServerConfig) -> anyhow::Result<conn::Auth> {
    anyhow::ensure!(!config.exports.is_empty(), "no --export given");
    let mut tokens: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(t) = &config.token {
        tokens.push(("default".into(), t.clone()));
    }
    for (name, t) in &config.client_tokens {
        anyhow::ensure!(
            tokens.iter().all(|(n, _)| n != name),
            "token name {name:?} is given twice (\"default\" is --token-file's)"
        );
        tokens.push((name.clone(), t.clone()));
    }
    let streams = config
        .listen
        .iter()
        .filter(|a| !matches!(a, ListenAddr::VhostUserFs { .. }));
    if tokens.is_empty() {
        if let Some(a) = config.listen.iter().find(|a| a.requires_token()) {
            anyhow::bail!(
                "{a}: TCP listeners require a shared token; give --token-file PATH or set FERRY_TOKEN"
            );
        }
        if let Some(a) = streams.clone().next().filter(|_| !config.no_auth) {
            anyhow::bail!(
                "{a}: every listener requires a token, so that only the guests you give it can \
                 reach the exports: give --token-file PATH (or set FERRY_TOKEN) here and to each \
                 agent, or pass --no-auth to let anyone who can connect use every export"
            );
        }
    }
    for spec in &config.exports {
        for c in spec.allow.iter().flatten() {
            if let config::Client::Token(name) = c {
                anyhow::ensure!(
                    tokens.iter().any(|(n, _)| n == name),
                    "export {}: allow=token:{name}, but no --client-token {name}=PATH is given",
                    spec.name
                );
            }
        }
    }
    let auth = conn::Auth {
        required: !tokens.is_empty() || !config.no_auth,
        tokens,
    };
    if !auth.required {
        tracing::warn!(
            "--no-auth: clients need no token; any process or VM that can connect to {} can use \
             every export its allow-list does not deny",
            streams
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for addr in &config.listen {
        if let ListenAddr::VhostUserFs { export, .. } = addr {
            anyhow::ensure!(
                config.exports.iter().any(|e| &e.name == export),
                "{addr}: no --export is named {export:?}"
            );
        }
    }
    Ok(auth)
}

/// Checks `config` as far as it can be without listening ([`check_settings`], and every
/// export opens). Returns the opened exports and how clients authenticate.
pub fn check_config(config: &ServerConfig) -> anyhow::Result<(Vec<Arc<Export>>, conn::Auth)> {
    let auth = check_settings(config)?;
    Ok((open_exports(&config.exports)?, auth))
}

/// Where a running server gets its next configuration on SIGHUP: the configuration file read
/// again, with the command line applied over it.
pub type Reloader = Box<dyn Fn() -> anyhow::Result<ServerConfig> + Send + Sync>;

/// Runs the server until `shutdown` completes.
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_reloading(config, None, Ops::default(), shutdown).await
}

/// Where a running server can be watched and steered from.
#[derive(Clone, Debug, Default)]
pub struct Ops {
    /// `--control unix:PATH`: the control socket (`ferry status`, `ferry ctl reload`).
    pub control: Option<std::path::PathBuf>,
    /// `--metrics unix:PATH|tcp:HOST:PORT`: the Prometheus endpoint.
    pub metrics: Option<ListenAddr>,
}

/// Runs the server until `shutdown` completes; on SIGHUP, asks `reloader` for the next
/// configuration and applies it ([`reload::Live::reload`]). A configuration that cannot be
/// read or used is refused and logged; the running one stays.
pub async fn run_reloading(
    config: ServerConfig,
    reloader: Option<Reloader>,
    ops: Ops,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve(config, reloader, ops, Vec::new(), shutdown).await
}

/// [`run`], with vhost-user-fs sockets a launcher already bound and passed in: (export name,
/// listening socket) pairs, as `ferry-virtiofsd --fd N` gets them from libvirt or Kata.
pub async fn run_with(
    config: ServerConfig,
    inherited: Vec<(String, std::os::unix::net::UnixListener)>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve(config, None, Ops::default(), inherited, shutdown).await
}

async fn serve(
    config: ServerConfig,
    reloader: Option<Reloader>,
    ops: Ops,
    inherited: Vec<(String, std::os::unix::net::UnixListener)>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.listen.is_empty() || !inherited.is_empty(),
        "no --listen given"
    );
    let auth = check_settings_but_listeners(&config)?;
    let exports = open_exports(&config.exports)?;
    for e in &exports {
        e.set_max_node_fds(config.max_node_fds);
        e.set_max_handles(config.limits.max_handles);
        e.set_max_lock_owners(config.limits.max_lock_owners);
    }
    info!(
        limit = raise_fd_limit(),
        node_fds = config.max_node_fds,
        "open file limit; node descriptors cached per session"
    );
    for (e, spec) in exports.iter().zip(&config.exports) {
        info!(
            name = e.name(),
            read_only = e.read_only(),
            ids = %e.ids(),
            "exporting {}",
            spec.path.display()
        );
    }
    info!(
        handshake_timeout = ?config.limits.handshake_timeout,
        max_connections = config.limits.max_connections,
        max_unauthenticated = config.limits.max_unauthenticated,
        max_handles = config.limits.max_handles,
        max_lock_owners = config.limits.max_lock_owners,
        max_lock_waiters = config.limits.max_lock_waiters,
        max_queued_change_bytes = config.limits.max_queued_change_bytes,
        "limits"
    );
    let live = Arc::new(reload::Live::new(config.clone(), exports.clone(), auth));
    let mut tasks = tokio::task::JoinSet::new();
    for (name, socket) in inherited {
        let export = exports
            .iter()
            .find(|e| e.name() == name)
            .with_context(|| format!("inherited vhost-user socket: no export is named {name:?}"))?;
        let listener = virtiofs::VirtioFsListener::from_listener(export.clone(), socket)
            .following(successor(&live));
        info!(
            "serving export {name} on the inherited vhost-user socket {}",
            listener.socket().display()
        );
        std::thread::Builder::new()
            .name(format!("virtiofs-{name}"))
            .spawn(move || listener.serve())
            .context("cannot start the vhost-user-fs thread")?;
    }
    for addr in &config.listen {
        if let ListenAddr::VhostUserFs { socket, export } = addr {
            let export = exports
                .iter()
                .find(|e| e.name() == export)
                .with_context(|| format!("{addr}: no --export is named {export:?}"))?;
            let listener = virtiofs::VirtioFsListener::bind(
                export.clone(),
                socket.clone(),
                config.socket_mode,
            )
            .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?
            .following(successor(&live));
            info!("listening on {addr}");
            // The vhost-user daemon blocks in accept(2) and on its socket, so it runs on
            // threads of its own; they end with the process.
            std::thread::Builder::new()
                .name(format!("virtiofs-{}", export.name()))
                .spawn(move || listener.serve())
                .context("cannot start the vhost-user-fs thread")?;
            continue;
        }
        let listener = Listener::bind(addr, config.socket_mode)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tasks.spawn(listener.serve(live.clone()));
    }
    let reloader: control::SharedReloader = Arc::new(reloader);
    if let Some(path) = ops.control {
        control::serve_control(path, live.clone(), reloader.clone()).await?;
    }
    if let Some(addr) = ops.metrics {
        control::serve_metrics(addr, live.clone()).await?;
    }
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot install a SIGHUP handler")?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => {
                info!("SIGHUP");
                let (live, reloader) = (live.clone(), reloader.clone());
                let _ = tokio::task::spawn_blocking(move || control::reload(&live, &reloader)).await;
            }
        }
    }
    info!("shutting down");
    tasks.shutdown().await;
    Ok(())
}

/// Where a vhost-user-fs listener finds its export after a reload: the export of that name
/// in the configuration in force.
fn successor(live: &Arc<reload::Live>) -> virtiofs::Successor {
    let live = Arc::clone(live);
    Box::new(move |name| {
        live.current()
            .exports
            .iter()
            .find(|e| e.name() == name)
            .cloned()
    })
}

/// The state connections are served with: `exports` (opened from `config.exports`, in the
/// same order), `auth`, `config`'s limits and each export's allow-list (logged).
pub(crate) fn server_state(
    config: &ServerConfig,
    exports: Vec<Arc<Export>>,
    auth: conn::Auth,
) -> ServerState {
    let mut state = ServerState::new(exports, auth, config.limits.clone());
    state.allow = config.exports.iter().map(|s| s.allow.clone()).collect();
    for (e, spec) in state.exports.iter().zip(&config.exports) {
        if let Some(list) = &spec.allow {
            let list: Vec<String> = list.iter().map(|c| c.to_string()).collect();
            info!(name = e.name(), allow = list.join(","), "export allow-list");
        }
    }
    state
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
