//! The byte streams Ferry runs over.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A connected byte stream that can be split into a read half and a write half used from
/// different threads, and shut down from any thread. A new transport implements this in a
/// few lines.
pub trait Stream: Read + Write + Send + Sync + Sized + 'static {
    /// A second handle on the same stream (`dup`).
    fn try_clone(&self) -> io::Result<Self>;
    /// Shuts both directions down, waking a thread blocked in `read`.
    fn shutdown(&self);
    /// Sets a read timeout (used for handshakes).
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

macro_rules! stream {
    ($t:ty) => {
        impl Stream for $t {
            fn try_clone(&self) -> io::Result<Self> {
                <$t>::try_clone(self)
            }
            fn shutdown(&self) {
                let _ = <$t>::shutdown(self, std::net::Shutdown::Both);
            }
            fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
                <$t>::set_read_timeout(self, t)
            }
        }
    };
}
stream!(UnixStream);
stream!(std::net::TcpStream);
stream!(vsock::VsockStream);
