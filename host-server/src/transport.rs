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
}

impl ListenAddr {
    /// Whether clients of this listener must present the token.
    pub fn requires_token(&self) -> bool {
        matches!(self, ListenAddr::Tcp(_))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A listen address that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid listen address {input:?}: {why} (expected unix:PATH, tcp:PORT or tcp:HOST:PORT)")]
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
        Err(bad("unknown scheme"))
    }
}

/// A bound listener.
pub enum Listener {
    /// Unix socket.
    Unix(UnixListener, PathBuf),
    /// TCP socket.
    Tcp(TcpListener),
}

impl Listener {
    /// Binds the address. A stale Unix socket file (nobody listening) is replaced; a live one is
    /// an error.
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Unix(path) => {
                if path.exists() {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            format!("{} is in use by another server", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                Ok(Listener::Unix(UnixListener::bind(path)?, path.clone()))
            }
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await?)),
        }
    }

    /// The bound address (with the real port for `tcp:…:0`).
    pub fn local_addr(&self) -> ListenAddr {
        match self {
            Listener::Unix(_, p) => ListenAddr::Unix(p.clone()),
            Listener::Tcp(l) => {
                ListenAddr::Tcp(l.local_addr().expect("bound socket has an address"))
            }
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
        for bad in ["", "unix:", "tcp:", "tcp:nope:x", "vsock:3", "/tmp/sock"] {
            let err = bad.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(err.contains("expected unix:PATH"), "{bad}: {err}");
        }
    }
}
