//! Listeners: thin front doors that accept byte streams and hand each to
//! [`crate::conn::serve_connection`]. Adding a transport means adding a variant here and nothing
//! else.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tracing::{error, info};

use crate::conn::{ServerState, Stream, serve_connection};

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address. Always requires a token.
    Tcp(SocketAddr),
    /// AF_VSOCK on this host (vhost-vsock, e.g. QEMU/KVM guests), any CID.
    Vsock(u32),
    /// Hybrid vsock, as Firecracker, cloud-hypervisor and vhost-device-vsock expose it: a
    /// guest connection to host port `port` arrives as a Unix-socket connection on
    /// `{path}_{port}`, where `path` is the VMM's vsock socket.
    HybridVsock {
        /// The VMM's vsock Unix socket (`uds_path` / `socket=`).
        path: PathBuf,
        /// The vsock port guests connect to.
        port: u32,
    },
    /// A vhost-user-fs device backend socket serving one export: the VMM connects here and
    /// the guest kernel mounts the export with `mount -t virtiofs` (see `crate::virtiofs`).
    VhostUserFs {
        /// The vhost-user socket the VMM connects to.
        socket: PathBuf,
        /// The name of the export served on it.
        export: String,
    },
}

impl ListenAddr {
    /// Whether clients of this listener must present the token.
    pub fn requires_token(&self) -> bool {
        matches!(self, ListenAddr::Tcp(_))
    }

    /// The Unix socket a hybrid-vsock listener binds: `{path}_{port}`.
    pub fn hybrid_socket(path: &std::path::Path, port: u32) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
            ListenAddr::Vsock(port) => write!(f, "vsock:{port}"),
            ListenAddr::HybridVsock { path, port } => {
                write!(f, "hybrid-vsock:{}:{port}", path.display())
            }
            ListenAddr::VhostUserFs { socket, export } => {
                write!(f, "vhost-user-fs:{}:{export}", socket.display())
            }
        }
    }
}

/// A listen address that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid listen address {input:?}: {why} (expected unix:PATH, tcp:PORT, tcp:HOST:PORT, vsock:PORT, hybrid-vsock:PATH:PORT or vhost-user-fs:SOCKET:NAME)"
)]
pub struct BadListenAddr {
    input: String,
    why: String,
}

impl FromStr for ListenAddr {
    type Err = BadListenAddr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| BadListenAddr {
            input: s.to_string(),
            why: why.to_string(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("tcp:") {
            // A bare port binds loopback: exposing the share beyond this machine must be asked
            // for by naming the address.
            if let Ok(port) = rest.parse::<u16>() {
                return Ok(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
            }
            let addr = rest
                .parse::<SocketAddr>()
                .or_else(|_| {
                    // Accept "localhost:PORT" and other names that resolve.
                    std::net::ToSocketAddrs::to_socket_addrs(rest)
                        .map_err(|e| e.to_string())
                        .and_then(|mut it| it.next().ok_or_else(|| "no address".to_string()))
                })
                .map_err(|e| bad(&e))?;
            return Ok(ListenAddr::Tcp(addr));
        }
        // u32::MAX is VMADDR_PORT_ANY, which would bind a port the guest cannot know.
        let vsock_port = |p: &str| match p.parse::<u32>() {
            Ok(u32::MAX) => Err(bad("port 4294967295 is the wildcard VMADDR_PORT_ANY")),
            Ok(port) => Ok(port),
            Err(_) if p.contains(':') => Err(bad(
                "a vsock listener takes a port only (it accepts guests of every CID)",
            )),
            Err(_) => Err(bad("invalid vsock port")),
        };
        if let Some(port) = s.strip_prefix("vsock:") {
            return Ok(ListenAddr::Vsock(vsock_port(port)?));
        }
        if let Some(rest) = s.strip_prefix("hybrid-vsock:") {
            let (path, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("missing vsock port"))?;
            let port = vsock_port(port)?;
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(ListenAddr::HybridVsock {
                path: PathBuf::from(path),
                port,
            });
        }
        if let Some(rest) = s.strip_prefix("vhost-user-fs:") {
            let (socket, export) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("missing export name"))?;
            if socket.is_empty() {
                return Err(bad("empty socket path"));
            }
            crate::config::validate_name(export).map_err(|w| bad(&w))?;
            return Ok(ListenAddr::VhostUserFs {
                socket: PathBuf::from(socket),
                export: export.to_string(),
            });
        }
        Err(bad("unknown scheme"))
    }
}

/// A bound listener.
pub enum Listener {
    /// Unix socket.
    Unix(UnixListener, PathBuf),
    /// TCP socket.
    Tcp(TcpListener),
    /// AF_VSOCK socket, accepted through tokio like the others.
    Vsock(tokio_vsock::VsockListener, u32),
}

/// Binds a blocking Unix socket. A stale socket file (nobody listening) is replaced; a live one
/// is an error.
pub(crate) fn bind_unix_std(
    path: &std::path::Path,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another server", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    std::os::unix::net::UnixListener::bind(path)
}

/// Binds a Unix socket for tokio (see [`bind_unix_std`]).
fn bind_unix(path: &std::path::Path) -> std::io::Result<Listener> {
    let l = bind_unix_std(path)?;
    l.set_nonblocking(true)?;
    Ok(Listener::Unix(
        UnixListener::from_std(l)?,
        path.to_path_buf(),
    ))
}

impl Listener {
    /// Binds the address.
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Unix(path) => bind_unix(path),
            ListenAddr::HybridVsock { path, port } => {
                bind_unix(&ListenAddr::hybrid_socket(path, *port))
            }
            ListenAddr::Vsock(port) => Ok(Listener::Vsock(
                tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
                    tokio_vsock::VMADDR_CID_ANY,
                    *port,
                ))?,
                *port,
            )),
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await?)),
            ListenAddr::VhostUserFs { .. } => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a vhost-user-fs socket is served by virtiofs::VirtioFsListener",
            )),
        }
    }

    /// The bound address (with the real port for `tcp:…:0`).
    pub fn local_addr(&self) -> ListenAddr {
        match self {
            Listener::Unix(_, p) => ListenAddr::Unix(p.clone()),
            Listener::Tcp(l) => {
                ListenAddr::Tcp(l.local_addr().expect("bound socket has an address"))
            }
            Listener::Vsock(_, port) => ListenAddr::Vsock(*port),
        }
    }

    /// Accepts connections forever, serving each on its own threads.
    pub async fn serve(self, state: Arc<ServerState>) {
        let name = self.local_addr().to_string();
        info!("listening on {name}");
        loop {
            let accepted = match &self {
                Listener::Unix(l, _) => l.accept().await.and_then(|(s, _)| {
                    // Name the peer by its process where the kernel tells us.
                    let peer = match s.peer_cred().ok().and_then(|c| c.pid()) {
                        Some(pid) => format!("{name} pid {pid}"),
                        None => format!("{name} client"),
                    };
                    // Tokio hands out non-blocking sockets; the connection workers block.
                    let s = s.into_std()?;
                    s.set_nonblocking(false)?;
                    spawn_connection(s, state.clone(), peer)
                }),
                Listener::Tcp(l) => l.accept().await.and_then(|(s, peer)| {
                    // Small request/reply frames must not wait for Nagle's algorithm.
                    s.set_nodelay(true)?;
                    let s = s.into_std()?;
                    s.set_nonblocking(false)?;
                    spawn_connection(s, state.clone(), peer.to_string())
                }),
                Listener::Vsock(l, _) => {
                    // An async accept (not a blocking thread parked in accept(2)) is what lets
                    // the runtime, and so the server, shut down while a vsock listener is idle.
                    std::future::poll_fn(|cx| l.poll_accept_std(cx))
                        .await
                        .and_then(|(s, addr)| {
                            s.set_nonblocking(false)?;
                            let peer = format!("vsock cid {} port {}", addr.cid(), addr.port());
                            spawn_connection(s, state.clone(), peer)
                        })
                }
            };
            if let Err(e) = accepted {
                // Running out of descriptors must not kill the listener: back off and retry.
                error!("accept on {name} failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves an accepted stream on threads of its own (see [`crate::conn`] for why not tasks).
fn spawn_connection<S: Stream>(
    stream: S,
    state: Arc<ServerState>,
    peer: String,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ferry-conn".into())
        .spawn(move || {
            let _ = serve_connection(stream, &state, &peer);
        })?;
    Ok(())
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_addresses() {
        assert_eq!(
            "unix:/run/ferry.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/ferry.sock".into())
        );
        assert_eq!(
            "tcp:7000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(
            "tcp:0.0.0.0:7000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("0.0.0.0:7000".parse().unwrap())
        );
        assert_eq!(
            "tcp:[::1]:7000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("[::1]:7000".parse().unwrap())
        );
        assert_eq!(
            "vsock:1024".parse::<ListenAddr>().unwrap(),
            ListenAddr::Vsock(1024)
        );
        let hybrid: ListenAddr = "hybrid-vsock:/run/fc/v.sock:1024".parse().unwrap();
        assert_eq!(
            hybrid,
            ListenAddr::HybridVsock {
                path: "/run/fc/v.sock".into(),
                port: 1024
            }
        );
        assert_eq!(hybrid.to_string().parse::<ListenAddr>().unwrap(), hybrid);
        assert_eq!(
            ListenAddr::hybrid_socket(std::path::Path::new("/run/fc/v.sock"), 1024),
            std::path::PathBuf::from("/run/fc/v.sock_1024")
        );
        let vfs: ListenAddr = "vhost-user-fs:/run/a:b.sock:src".parse().unwrap();
        assert_eq!(
            vfs,
            ListenAddr::VhostUserFs {
                socket: "/run/a:b.sock".into(),
                export: "src".into()
            }
        );
        assert_eq!(vfs.to_string().parse::<ListenAddr>().unwrap(), vfs);
        for bad in [
            "",
            "unix:",
            "tcp:",
            "tcp:nope:x",
            "vsock:",
            "vsock:x",
            "vsock:-1",
            "vsock:3:4",
            "hybrid-vsock:/x",
            "hybrid-vsock::5",
            "hybrid-vsock:/x:port",
            "vhost-user-fs:/x",
            "vhost-user-fs::n",
            "vhost-user-fs:/x:bad/name",
            "/tmp/sock",
        ] {
            let err = bad.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(err.contains("expected unix:PATH"), "{bad}: {err}");
        }
        // The reason says what is wrong with this one.
        for (bad, why) in [
            ("vsock:3:4", "port only"),
            ("vsock:4294967295", "VMADDR_PORT_ANY"),
            ("vsock:x", "invalid vsock port"),
            ("hybrid-vsock:/x:4294967295", "VMADDR_PORT_ANY"),
            ("hybrid-vsock:/x", "missing vsock port"),
            ("vhost:1", "unknown scheme"),
        ] {
            let err = bad.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
    }
}
