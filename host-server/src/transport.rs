//! Listeners: thin front doors that bind a [`ListenAddr`], accept byte streams and hand each to
//! [`crate::conn::serve_connection`]. Adding a transport means a [`ListenAddr`] variant (its
//! syntax lives in `config.rs`), a [`Listener`] arm here and a `Stream` impl (`common/src/stream.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tracing::{error, info};

use crate::config::ListenAddr;
use crate::conn::{Peer, Stream, serve_admitted};

/// A bound listener.
pub enum Listener {
    /// Unix socket.
    Unix(UnixListener, PathBuf),
    /// TCP socket.
    Tcp(TcpListener),
    /// AF_VSOCK socket, accepted through tokio like the others.
    Vsock(tokio_vsock::VsockListener, u32),
}

/// Binds a blocking Unix socket whose file has `mode` (e.g. 0o600) from the moment it appears
/// at `path`: it is bound in a new private directory beside `path`, given its mode there and
/// renamed into place, so there is no moment when the umask's mode lets others connect. A
/// stale socket file (nobody listening) is replaced; a live one is an error.
pub(crate) fn bind_unix_std(
    path: &std::path::Path,
    mode: u32,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another server", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    // A short name: socket paths are limited to 107 bytes.
    static BINDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BINDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let private = parent.join(format!(".ferry-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = (|| {
        let tmp = private.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Binds a Unix socket for tokio (see [`bind_unix_std`]).
fn bind_unix(path: &std::path::Path, mode: u32) -> std::io::Result<Listener> {
    let l = bind_unix_std(path, mode)?;
    l.set_nonblocking(true)?;
    Ok(Listener::Unix(
        UnixListener::from_std(l)?,
        path.to_path_buf(),
    ))
}

impl Listener {
    /// Binds the address; a socket file gets `socket_mode`.
    pub async fn bind(addr: &ListenAddr, socket_mode: u32) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Unix(path) => bind_unix(path, socket_mode),
            ListenAddr::HybridVsock { path, port } => {
                bind_unix(&ListenAddr::hybrid_socket(path, *port), socket_mode)
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
                    // Name the peer by its process where the kernel tells us; its uid is what
                    // allow-lists check.
                    let cred = s.peer_cred().ok();
                    let peer = Peer {
                        name: match cred.and_then(|c| c.pid()) {
                            Some(pid) => format!("{name} pid {pid}"),
                            None => format!("{name} client"),
                        },
                        uid: cred.map(|c| c.uid()),
                        cid: None,
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
                    spawn_connection(s, live.clone(), Peer::named(peer.to_string()))
                }),
                Listener::Vsock(l, _) => {
                    // An async accept (not a blocking thread parked in accept(2)) is what lets
                    // the runtime, and so the server, shut down while a vsock listener is idle.
                    std::future::poll_fn(|cx| l.poll_accept_std(cx))
                        .await
                        .and_then(|(s, addr)| {
                            s.set_nonblocking(false)?;
                            let peer = Peer {
                                name: format!("vsock cid {} port {}", addr.cid(), addr.port()),
                                cid: Some(addr.cid()),
                                uid: None,
                            };
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
/// A connection beyond the caps of [`crate::conn::Limits`] is closed at once (with a log
/// line) without a thread.
fn spawn_connection<S: Stream>(
    stream: S,
    live: Arc<crate::reload::Live>,
    peer: Peer,
) -> std::io::Result<()> {
    let state = live.current();
    let Some(admission) = state.admit(&peer) else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("ferry-conn".into())
        .spawn(move || {
            let _ = serve_admitted(stream, admission, &peer, Some(&live.stats));
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
