//! The Ferry guest agent: mounts host exports inside the VM with FUSE and forwards every FUSE
//! request to the host server over one byte stream.
//!
//! - [`client`]: the connection to the host server — handshake, request multiplexing, the
//!   reader thread that dispatches replies to callbacks. Usable without `/dev/fuse`.
//! - [`fs`]: [`FerryFs`], the `fuser::Filesystem` adapter turning FUSE calls into protocol
//!   requests and replies back into FUSE replies, plus attribute conversions.
//! - [`hybrid`]: the host-initiated side of hybrid vsock (`CONNECT <port>` on a VMM's Unix
//!   socket), for reaching a server that listens inside a VM.
//! - [`kernel`]: cache notifications written straight to `/dev/fuse`.
//! - [`mount`](mod@mount): mounting one export ([`mount()`], [`MountOptions`]) and unmounting
//!   it with `MNT_DETACH` ([`MountHandle`]).
//! - [`replay`]: the replay thread that turns host changes into guest inotify events (what it
//!   relies on about the kernel: `guest-agent/REPLAY.md`).
//! - [`stats`]: the agent's counters, its control socket and metrics endpoint
//!   (`ferry-agent status`).
//! - this module: [`AgentConfig`], [`ConnectAddr`], and the agent's main loop ([`run`],
//!   [`serve_stream`], [`serve`]), the events-only mode for virtio-fs mounts
//!   ([`run_events_only`]), and the signal helper for the command lines (token files and
//!   logging set-up are `ferry_common`'s).

pub mod cli;
pub mod client;
pub mod fs;
pub mod hybrid;
pub mod kernel;
pub mod mount;
pub mod preflight;
pub mod replay;
pub mod stats;

use std::fmt;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use anyhow::Context as _;
use tracing::{error, info, warn};

pub use client::{Client, ClientConfig, ClientError, OwnedReply};
pub use fs::FerryFs;
pub use mount::{CacheMode, MountError, MountHandle, MountOptions, mount};

/// Where the host server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectAddr {
    /// A Unix socket path (`unix:PATH`).
    Unix(PathBuf),
    /// A TCP address, `HOST:PORT` (`tcp:HOST:PORT`).
    Tcp(String),
    /// An AF_VSOCK address (`vsock:PORT` for the host, CID 2, or `vsock:CID:PORT`).
    Vsock {
        /// Context id; 2 is the host.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A vsock port inside a VM, reached from the host through the VMM's hybrid-vsock Unix
    /// socket (`hybrid-vsock:PATH:PORT`; see [`hybrid`]).
    HybridVsock {
        /// The VMM's vsock Unix socket (Firecracker `uds_path`, cloud-hypervisor `socket=`,
        /// vhost-device-vsock `uds-path`).
        path: PathBuf,
        /// The guest port.
        port: u32,
    },
}

/// The vsock context id of the host.
pub const VMADDR_CID_HOST: u32 = 2;

/// Error from parsing a [`ConnectAddr`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid server address {input:?}: {why}; expected unix:PATH, tcp:HOST:PORT, vsock:PORT, vsock:CID:PORT or hybrid-vsock:PATH:PORT"
)]
pub struct ParseConnectAddrError {
    input: String,
    why: &'static str,
}

impl FromStr for ConnectAddr {
    type Err = ParseConnectAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| ParseConnectAddrError {
            input: s.to_string(),
            why,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err("empty socket path"));
            }
            Ok(ConnectAddr::Unix(PathBuf::from(path)))
        } else if let Some(addr) = s.strip_prefix("tcp:") {
            let (host, port) = addr.rsplit_once(':').ok_or_else(|| err("missing port"))?;
            if host.is_empty() {
                return Err(err("empty host"));
            }
            port.parse::<u16>().map_err(|_| err("invalid port"))?;
            Ok(ConnectAddr::Tcp(addr.to_string()))
        } else if let Some(rest) = s.strip_prefix("vsock:") {
            let number = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| err("invalid vsock CID or port"))
            };
            let (cid, port) = match rest.split_once(':') {
                Some((cid, port)) => (number(cid)?, number(port)?),
                None => (VMADDR_CID_HOST, number(rest)?),
            };
            // u32::MAX is VMADDR_CID_ANY / VMADDR_PORT_ANY: wildcards, not a peer.
            if cid == u32::MAX {
                return Err(err("CID 4294967295 is the wildcard VMADDR_CID_ANY"));
            }
            if port == u32::MAX {
                return Err(err("port 4294967295 is the wildcard VMADDR_PORT_ANY"));
            }
            Ok(ConnectAddr::Vsock { cid, port })
        } else if let Some(rest) = s.strip_prefix("hybrid-vsock:") {
            let (path, port) = rest.rsplit_once(':').ok_or_else(|| err("missing port"))?;
            if path.is_empty() {
                return Err(err("empty socket path"));
            }
            let port = port.parse::<u32>().map_err(|_| err("invalid vsock port"))?;
            Ok(ConnectAddr::HybridVsock {
                path: PathBuf::from(path),
                port,
            })
        } else {
            Err(err("unknown scheme"))
        }
    }
}

impl fmt::Display for ConnectAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ConnectAddr::Tcp(a) => write!(f, "tcp:{a}"),
            ConnectAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            ConnectAddr::HybridVsock { path, port } => {
                write!(f, "hybrid-vsock:{}:{port}", path.display())
            }
        }
    }
}

impl ConnectAddr {
    /// Connects and performs the handshake.
    pub fn connect(&self, config: &ClientConfig) -> anyhow::Result<Arc<Client>> {
        self.connect_within(config, Duration::ZERO)
    }

    /// As [`Self::connect`], but while the server is not there yet (nothing listening, no
    /// such socket, the VM's vsock device not up) keeps trying for up to `patience`, waiting
    /// 100 ms at first and doubling up to 5 s between attempts. A VM may boot before the host
    /// server starts. A refused handshake is an answer, not an absence: it is never retried.
    pub fn connect_within(
        &self,
        config: &ClientConfig,
        patience: Duration,
    ) -> anyhow::Result<Arc<Client>> {
        let start = std::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0u32;
        let client = loop {
            attempts += 1;
            let attempt = self
                .dial_io(config)
                .map(|link| link.and_then(Client::from_link));
            match attempt {
                Ok(handshake) => {
                    if attempts > 1 {
                        info!(
                            "ferry-host at {self} answered after {attempts} attempts in {:.1} s",
                            start.elapsed().as_secs_f64()
                        );
                    }
                    break handshake;
                }
                Err(e) if is_absent(&e) && start.elapsed() + delay <= patience => {
                    if attempts == 1 {
                        info!(
                            "waiting for ferry-host at {self} ({e}); retrying for up to {} s, \
                             backing off from 0.1 s to {} s between attempts",
                            patience.as_secs(),
                            MAX_RETRY_DELAY.as_secs()
                        );
                    } else if delay == MAX_RETRY_DELAY {
                        info!(
                            "still waiting for ferry-host at {self} after {} s ({e})",
                            start.elapsed().as_secs()
                        );
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(if attempts > 1 {
                        format!(
                            "cannot connect to {self} (gave up after {attempts} attempts in {} s)",
                            start.elapsed().as_secs()
                        )
                    } else {
                        format!("cannot connect to {self}")
                    }));
                }
            }
        };
        client.with_context(|| format!("handshake with {self} failed"))
    }
}

impl ConnectAddr {
    /// One connection attempt: the socket (its error when it cannot be had), then the
    /// handshake.
    fn dial_io(&self, config: &ClientConfig) -> std::io::Result<Result<client::Link, ClientError>> {
        Ok(match self {
            ConnectAddr::Unix(path) => client::Link::over(UnixStream::connect(path)?, config),
            ConnectAddr::Tcp(addr) => {
                let s = TcpStream::connect(addr.as_str())?;
                s.set_nodelay(true)?;
                client::Link::over(s, config)
            }
            ConnectAddr::Vsock { cid, port } => client::Link::over(
                vsock::VsockStream::connect_with_cid_port(*cid, *port)?,
                config,
            ),
            ConnectAddr::HybridVsock { path, port } => {
                client::Link::over(hybrid::connect(path, *port)?, config)
            }
        })
    }

    /// A new connection to the same server, for reconnecting ([`Client::enable_reconnect`]).
    pub fn dialer(&self, config: ClientConfig) -> client::Dialer {
        let addr = self.clone();
        Box::new(move || {
            addr.dial_io(&config)
                .with_context(|| format!("cannot connect to {addr}"))?
                .with_context(|| format!("handshake with {addr} failed"))
        })
    }
}

/// Longest wait between two connection attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Errors that mean "the server is not there yet" rather than "the server said no".
fn is_absent(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        NotFound | ConnectionRefused | ConnectionReset | TimedOut | AddrNotAvailable
    ) || matches!(
        e.raw_os_error(),
        Some(libc::ENODEV | libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ECONNRESET)
    )
}

/// What the agent does: connect to one server and mount exports from it.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The server.
    pub connect: ConnectAddr,
    /// Shared secret (required by TCP listeners).
    pub token: Option<Vec<u8>>,
    /// `(export name, mountpoint)` pairs.
    pub mounts: Vec<(String, PathBuf)>,
    /// Entry/attribute cache timeout in `cached` mode.
    pub ttl: Duration,
    /// How the guest kernel caches.
    pub cache: CacheMode,
    /// How long to keep trying while the server is not there yet (see
    /// [`ConnectAddr::connect_within`]).
    pub connect_timeout: Duration,
    /// Who checks permissions on every mount; `None` follows the server's choice per export.
    pub permissions: Option<ferry_protocol::Permissions>,
    /// Let other users use the mounts (`allow_other`); `None`: where this user may ask for it
    /// (root, or `user_allow_other` in `/etc/fuse.conf`).
    pub allow_other: Option<bool>,
    /// Mount over directories that are not empty.
    pub nonempty: bool,
    /// When the connection to the server drops, how long to hold requests while reconnecting
    /// before they fail with EIO; zero: no reconnection (the agent unmounts and exits).
    pub reconnect_timeout: Duration,
}

/// The default of [`AgentConfig::reconnect_timeout`]: long enough to upgrade ferry-host.
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The client name this agent announces.
pub fn client_name() -> String {
    format!(
        "ferry-agent {} (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    )
}

/// Connects to `config.connect`, mounts every requested export, then waits until `shutdown`
/// receives (or its sender is dropped) or the server connection closes; then unmounts
/// everything (`MNT_DETACH`) and returns.
pub fn run(config: AgentConfig, shutdown: Receiver<()>) -> anyhow::Result<()> {
    let client = config
        .connect
        .connect_within(&client_config(&config), config.connect_timeout)?;
    if !config.reconnect_timeout.is_zero() {
        client.enable_reconnect(
            config.connect.dialer(client_config(&config)),
            config.reconnect_timeout,
        );
    }
    serve(client, &mount_options(&config), shutdown)
}

/// As [`run`], over an already-connected Unix stream (e.g. one end of an in-process
/// `UnixStream::pair()`); `config.connect` is not used.
pub fn serve_stream(
    stream: UnixStream,
    config: &AgentConfig,
    shutdown: Receiver<()>,
) -> anyhow::Result<()> {
    let client =
        Client::connect_unix(stream, &client_config(config)).context("handshake failed")?;
    serve(client, &mount_options(config), shutdown)
}

/// As [`run`], over any stream split into a reader and a writer.
pub fn serve_io(
    reader: Box<dyn std::io::Read + Send>,
    writer: Box<dyn std::io::Write + Send>,
    config: &ClientConfig,
    mounts: &[MountOptions],
    shutdown: Receiver<()>,
) -> anyhow::Result<()> {
    let client = Client::connect(reader, writer, config).context("handshake failed")?;
    serve(client, mounts, shutdown)
}

fn client_config(config: &AgentConfig) -> ClientConfig {
    ClientConfig {
        token: config.token.clone(),
        client_name: client_name(),
    }
}

fn mount_options(config: &AgentConfig) -> Vec<MountOptions> {
    config
        .mounts
        .iter()
        .map(|(export, mountpoint)| MountOptions {
            ttl: config.ttl,
            cache: config.cache,
            permissions: config.permissions,
            allow_other: config
                .allow_other
                .unwrap_or_else(preflight::allow_other_permitted),
            nonempty: config.nonempty,
            ..MountOptions::new(export.clone(), mountpoint.clone())
        })
        .collect()
}

/// `--events-only`: this agent mounts nothing. For each `(export, mountpoint)` of
/// `config.mounts`, where `mountpoint` is a virtio-fs mount of that export served by the same
/// ferry-host, it subscribes to the export's host changes and replays them on the mount, so
/// that programs in the guest get inotify events and the guest kernel's caches are refreshed
/// (the host answers the replay's requests; see [`replay`]). Runs until `shutdown` receives
/// or the connection closes.
pub fn run_events_only(config: &AgentConfig, shutdown: Receiver<()>) -> anyhow::Result<()> {
    if config.mounts.is_empty() {
        anyhow::bail!("--events-only needs at least one NAME=MOUNTPOINT (a virtio-fs mount)");
    }
    for (name, mp) in &config.mounts {
        match mount::mountinfo::mount_type(mp).as_deref() {
            Some("virtiofs") => {}
            Some(other) => anyhow::bail!(
                "--events-only {name}={}: that is a {other} mount, not virtio-fs (ferry-agent \
                 mounts replay host changes by themselves)",
                mp.display()
            ),
            None => anyhow::bail!(
                "--events-only {name}={}: nothing is mounted there; mount the export first \
                 (mount -t virtiofs TAG {})",
                mp.display(),
                mp.display()
            ),
        }
    }
    let client = config
        .connect
        .connect_within(&client_config(config), config.connect_timeout)?;
    let features = client.welcome().features;
    let needed = ferry_protocol::features::CHANGE_EVENTS | ferry_protocol::features::REPLAY;
    if features & needed != needed {
        client.shutdown();
        anyhow::bail!(
            "the server ({}) cannot replay events on virtio-fs mounts (it needs protocol {}.{} \
             or later with change events)",
            client.welcome().server,
            ferry_protocol::VERSION.major,
            ferry_protocol::VERSION.minor,
        );
    }
    let mut threads = Vec::new();
    for (name, mp) in &config.mounts {
        let Some(info) = client.welcome().exports.iter().find(|e| &e.name == name) else {
            let known: Vec<&str> = client
                .welcome()
                .exports
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            client.shutdown();
            anyhow::bail!(
                "--events-only: the server has no export {name:?} (it has {})",
                known.join(", ")
            );
        };
        let rx = match client.watch(info.id) {
            Ok(rx) => rx,
            Err(e) => {
                client.shutdown();
                anyhow::bail!("the server refused to send changes of {name:?}: {e:?}");
            }
        };
        let replayer = replay::Replayer {
            raise_events: true,
            state: Arc::default(),
            kernel: None,
            bracket: true,
            mountpoint: mp.clone(),
            root_dev: 0,
            client: Arc::clone(&client),
            export: info.id,
            on_data_change: Box::new(|_| {}),
        };
        let t = std::thread::Builder::new()
            .name(format!("ferry-replay-{name}"))
            .spawn(move || replayer.run(rx))
            .context("cannot start a replay thread")?;
        info!(export = %name, mountpoint = %mp.display(), "replaying host changes (events only)");
        threads.push(t);
    }
    wait_for_stop(
        &shutdown,
        &client,
        "the connection to the server is closed",
        || false,
    );
    client.shutdown();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (call it before starting other
/// threads, which inherit the mask) and returns a receiver that gets `()` on the first of
/// them. A second signal exits the process at once (status 130).
pub fn shutdown_on_signals() -> anyhow::Result<Receiver<()>> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block()
        .context("cannot block termination signals")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ferry-signals".into())
        .spawn(move || {
            let mut first = true;
            loop {
                match set.wait() {
                    Ok(sig) if first => {
                        info!("received {sig}, shutting down");
                        first = false;
                        let _ = tx.send(());
                    }
                    Ok(sig) => {
                        warn!("received {sig} again, exiting now");
                        std::process::exit(130);
                    }
                    Err(e) => {
                        error!("sigwait failed: {e}");
                        let _ = tx.send(());
                        return;
                    }
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(rx)
}

/// The agent's main loop over a connected client: mounts `mounts` (all or none: on a failure
/// the ones already mounted are unmounted), waits until `shutdown` receives or is
/// disconnected, or the connection closes, or every mount has been unmounted from outside;
/// then unmounts everything and closes the connection.
pub fn serve(
    client: Arc<Client>,
    mounts: &[MountOptions],
    shutdown: Receiver<()>,
) -> anyhow::Result<()> {
    let mut handles: Vec<MountHandle> = Vec::with_capacity(mounts.len());
    for opts in mounts {
        match mount::mount(client.clone(), opts) {
            Ok(h) => handles.push(h),
            Err(e) => {
                unmount_all(handles);
                client.shutdown();
                return Err(e.into());
            }
        }
    }

    let mut reported = vec![false; handles.len()];
    wait_for_stop(
        &shutdown,
        &client,
        "the connection to the server is closed; unmounting",
        || {
            for (h, seen) in handles.iter().zip(reported.iter_mut()) {
                if !*seen && h.is_finished() {
                    warn!(export = h.export(), mountpoint = %h.mountpoint().display(),
                          "the mount was unmounted from outside");
                    *seen = true;
                }
            }
            let all_gone = !handles.is_empty() && reported.iter().all(|&r| r);
            if all_gone {
                info!("every mount is gone; stopping");
            }
            all_gone
        },
    );
    unmount_all(handles);
    client.shutdown();
    Ok(())
}

/// Waits in 100 ms steps until a shutdown is asked for, the connection to the server closes
/// (logged as `closed`), or `stop` (called each step) says so.
fn wait_for_stop(
    shutdown: &Receiver<()>,
    client: &Client,
    closed: &str,
    mut stop: impl FnMut() -> bool,
) {
    loop {
        match shutdown.recv_timeout(Duration::from_millis(100)) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                info!("shutdown requested");
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if client.is_closed() {
            warn!("{closed}");
            return;
        }
        if stop() {
            return;
        }
    }
}

fn unmount_all(handles: Vec<MountHandle>) {
    for h in handles {
        let mp = h.mountpoint().to_path_buf();
        if let Err(e) = h.unmount() {
            error!(mountpoint = %mp.display(), "unmount failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_connect_addr() {
        assert_eq!(
            "unix:/run/ferry.sock".parse::<ConnectAddr>().unwrap(),
            ConnectAddr::Unix("/run/ferry.sock".into())
        );
        assert_eq!(
            "tcp:10.0.2.2:7070".parse::<ConnectAddr>().unwrap(),
            ConnectAddr::Tcp("10.0.2.2:7070".into())
        );
        assert_eq!(
            "tcp:[::1]:7070".parse::<ConnectAddr>().unwrap(),
            ConnectAddr::Tcp("[::1]:7070".into())
        );
        for bad in [
            "",
            "unix:",
            "tcp:host",
            "tcp::80",
            "tcp:host:http",
            "/run/x.sock",
            "vsock:",
            "vsock:host",
            "vsock:3:",
            "vsock:-1:5",
            "vsock:3:5:7",
            "vsock:4294967296",
        ] {
            let e = bad.parse::<ConnectAddr>().unwrap_err().to_string();
            assert!(
                e.contains(
                    "unix:PATH, tcp:HOST:PORT, vsock:PORT, vsock:CID:PORT or hybrid-vsock:PATH:PORT"
                ),
                "{bad}: {e}"
            );
        }
        // The reason names what is wrong, not just the expected shapes.
        for (bad, why) in [
            ("vsock:4294967295:5", "VMADDR_CID_ANY"),
            ("vsock:4294967295", "VMADDR_PORT_ANY"),
            ("vsock:2:x", "invalid vsock CID or port"),
            ("hybrid-vsock:/run/v.sock", "missing port"),
            ("hybrid-vsock::5", "empty socket path"),
            ("hybrid-vsock:/run/v.sock:x", "invalid vsock port"),
            ("vsock2:5", "unknown scheme"),
        ] {
            let e = bad.parse::<ConnectAddr>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
        assert_eq!(
            "hybrid-vsock:/run/fc:v.sock:5000"
                .parse::<ConnectAddr>()
                .unwrap(),
            ConnectAddr::HybridVsock {
                path: "/run/fc:v.sock".into(),
                port: 5000
            },
            "the port is after the last colon; the path may contain colons"
        );
        assert_eq!(
            "vsock:1234".parse::<ConnectAddr>().unwrap(),
            ConnectAddr::Vsock {
                cid: VMADDR_CID_HOST,
                port: 1234
            }
        );
        assert_eq!(
            "vsock:3:5".parse::<ConnectAddr>().unwrap(),
            ConnectAddr::Vsock { cid: 3, port: 5 }
        );
        for a in [
            "tcp:localhost:1",
            "vsock:7:9",
            "unix:/x",
            "hybrid-vsock:/run/v.sock:1024",
        ] {
            let a: ConnectAddr = a.parse().unwrap();
            assert_eq!(a.to_string().parse::<ConnectAddr>().unwrap(), a);
        }
    }

    /// A server that answers the handshake once, on a listener that appears late.
    fn late_server(path: std::path::PathBuf, after: Duration) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
            let (mut s, _) = l.accept().unwrap();
            crate::client::tests::accept(
                &mut s,
                &ferry_protocol::Welcome {
                    version: ferry_protocol::VERSION,
                    features: 0,
                    exports: vec![],
                    server: "late".into(),
                },
            );
            // Hold the connection until the client is done with it.
            let _ = crate::client::tests::read_one(&mut s);
        })
    }

    #[test]
    fn connect_waits_for_a_server_that_starts_late() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.sock");
        let server = late_server(path.clone(), Duration::from_millis(400));
        let addr = ConnectAddr::Unix(path);
        let client = addr
            .connect_within(&ClientConfig::default(), Duration::from_secs(20))
            .expect("connects once the server is up");
        assert_eq!(client.welcome().server, "late");
        client.shutdown();
        server.join().unwrap();
    }

    #[test]
    fn connect_gives_up_after_its_patience() {
        let dir = tempfile::tempdir().unwrap();
        let addr = ConnectAddr::Unix(dir.path().join("never.sock"));
        let start = std::time::Instant::now();
        let e = addr
            .connect_within(&ClientConfig::default(), Duration::from_millis(700))
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(start.elapsed() >= Duration::from_millis(300), "it retried");
        assert!(start.elapsed() < Duration::from_secs(5), "it gave up");
        assert!(
            msg.contains("gave up after") && msg.contains("never.sock"),
            "{msg}"
        );
        // Without patience there is a single attempt and a plain message.
        let e = addr.connect(&ClientConfig::default()).unwrap_err();
        assert!(!format!("{e:#}").contains("gave up"));
    }
}
