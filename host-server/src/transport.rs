//! Listeners: thin front doors that bind a [`ListenAddr`], accept byte streams and hand each to
//! [`crate::conn::serve_connection`]. Adding a transport means a [`ListenAddr`] variant (its
//! syntax lives in `config.rs`), a [`Listener`] arm here and a `Stream` impl (`common/src/stream.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tracing::{error, info};

use crate::config::ListenAddr;
use crate::conn::Stream;

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
    pub async fn serve(self, live: Arc<crate::reload::Live>) {
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
                    spawn_connection(s, live.clone(), peer)
                }),
                Listener::Tcp(l) => l.accept().await.and_then(|(s, peer)| {
                    // Small request/reply frames must not wait for Nagle's algorithm.
                    s.set_nodelay(true)?;
                    let s = s.into_std()?;
                    s.set_nonblocking(false)?;
                    spawn_connection(s, live.clone(), peer.to_string())
                }),
                Listener::Vsock(l, _) => {
                    // An async accept (not a blocking thread parked in accept(2)) is what lets
                    // the runtime, and so the server, shut down while a vsock listener is idle.
                    std::future::poll_fn(|cx| l.poll_accept_std(cx))
                        .await
                        .and_then(|(s, addr)| {
                            s.set_nonblocking(false)?;
                            let peer = format!("vsock cid {} port {}", addr.cid(), addr.port());
                            spawn_connection(s, live.clone(), peer)
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
    live: Arc<crate::reload::Live>,
    peer: String,
) -> std::io::Result<()> {
    let state = live.current();
    std::thread::Builder::new()
        .name("ferry-conn".into())
        .spawn(move || {
            let _ = crate::conn::serve_counted(stream, &state, &peer, Some(&live.stats));
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
