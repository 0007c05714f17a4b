//! virtio-fs: the export core served as a vhost-user-fs device backend.
//!
//! With virtio-fs the guest kernel itself speaks FUSE over virtqueues, so no agent is needed
//! in the guest for the data path. A VMM such as QEMU connects to a Unix socket
//! (`--listen vhost-user-fs:SOCKET:NAME`), hands over the guest's memory and the queues, and
//! the backend answers the FUSE requests it finds there from the same [`ExportSession`]
//! methods the stream protocol uses.
//!
//! - `abi`: the FUSE wire format (our own small zerocopy codec; see ARCHITECTURE.md for why not
//!   fuse-backend-rs).
//! - `server`: one FUSE request → one `ExportSession` call → one reply. The only file here that
//!   calls the export core.
//! - `vhu_fs`: the vhost-user glue (descriptor chains in, used entries out).
//!
//! Each frontend connection gets a fresh session (node ids and handles), since a new
//! connection means a guest driver that starts over with `FUSE_INIT`. When the frontend
//! disconnects, the socket is bound again and the next connection is accepted.

pub mod abi;
pub mod server;
pub mod vhu_fs;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::export::{Export, ExportSession};
pub use server::FuseServer;
pub use vhu_fs::VhostUserFs;

/// Entry and attribute validity given to the guest kernel, as the FUSE agent's default.
pub const TTL: Duration = Duration::from_secs(1);

/// Why serving a vhost-user-fs socket stopped.
#[derive(Debug, thiserror::Error)]
pub enum VirtioFsError {
    /// The daemon could not be created.
    #[error("cannot create the vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    /// Serving one connection failed in a way that is not a plain disconnect.
    #[error("vhost-user connection on {}: {cause}", socket.display())]
    Serve {
        /// The socket.
        socket: PathBuf,
        /// The error.
        cause: vhost_user_backend::Error,
    },
}

/// Serves one frontend connection on `socket` with a fresh session of `export`; returns when
/// the frontend disconnects.
pub fn serve_once(export: &Arc<Export>, socket: &std::path::Path) -> Result<(), VirtioFsError> {
    let server = Arc::new(FuseServer::new(ExportSession::new(export.clone()), TTL));
    let backend = VhostUserFs::new(server);
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new(format!("vhost-user-fs-{}", export.name()), backend, mem)
        .map_err(VirtioFsError::Daemon)?;
    daemon.serve(socket).map_err(|cause| VirtioFsError::Serve {
        socket: socket.to_path_buf(),
        cause,
    })
}

/// Serves `export` on `socket` forever: one frontend at a time, accepting a new connection
/// each time the previous one ends.
pub fn serve(export: Arc<Export>, socket: PathBuf) {
    loop {
        tracing::info!(
            export = export.name(),
            "virtio-fs: waiting for a vhost-user frontend on {}",
            socket.display()
        );
        match serve_once(&export, &socket) {
            Ok(()) => tracing::info!("virtio-fs: frontend on {} disconnected", socket.display()),
            Err(e) => {
                tracing::warn!("virtio-fs: {e}");
                // A socket that cannot be bound at all would otherwise spin.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}
