//! Connecting: the handshake over any stream, and the socket constructors.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use ferry_common::{Stream, read_frame};
use ferry_protocol::{
    DecodeError, Errno, Frame, FrameKind, Hello, Refused, VERSION, Welcome, features,
};
use tracing::info;

use super::resume::LinkState;
use super::{Client, ClientConfig, ClientError, Closer, WriterState};

/// How long the handshake may take on a socket before the connection attempt is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    /// Performs the handshake (send `Hello` with [`VERSION`] and [`features::ALL`], read
    /// `Welcome` or `Refused`) over any stream split into a reader and a writer, then starts
    /// the reader thread.
    ///
    /// With a generic stream, [`Client::shutdown`] fails pending calls at once but cannot
    /// unblock the reader thread: it ends when the stream does. Prefer
    /// [`Client::connect_unix`] / [`Client::connect_tcp`] for sockets.
    pub fn connect(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        config: &ClientConfig,
    ) -> Result<Arc<Client>, ClientError> {
        Self::connect_with(reader, writer, config, None, None)
    }

    /// Connects over a Unix socket: handshake with a [`HANDSHAKE_TIMEOUT`], and
    /// [`Client::shutdown`] shuts the socket down.
    pub fn connect_unix(
        stream: UnixStream,
        config: &ClientConfig,
    ) -> Result<Arc<Client>, ClientError> {
        Self::connect_socket(stream, config)
    }

    /// Connects over TCP (sets `TCP_NODELAY`), as [`Client::connect_unix`].
    pub fn connect_tcp(
        stream: TcpStream,
        config: &ClientConfig,
    ) -> Result<Arc<Client>, ClientError> {
        stream.set_nodelay(true)?;
        Self::connect_socket(stream, config)
    }

    /// Connects over AF_VSOCK, as [`Client::connect_unix`].
    pub fn connect_vsock(
        stream: vsock::VsockStream,
        config: &ClientConfig,
    ) -> Result<Arc<Client>, ClientError> {
        Self::connect_socket(stream, config)
    }

    fn connect_socket<S: Stream>(
        stream: S,
        config: &ClientConfig,
    ) -> Result<Arc<Client>, ClientError> {
        Self::from_link(Link::over(stream, config)?)
    }

    fn connect_with(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        config: &ClientConfig,
        closer: Option<Closer>,
        after_handshake: Option<Box<dyn FnOnce() -> io::Result<()>>>,
    ) -> Result<Arc<Client>, ClientError> {
        Self::from_link(Link::handshake(
            reader,
            writer,
            config,
            closer,
            after_handshake,
        )?)
    }

    /// A client over a connection whose handshake is done; starts the reader thread.
    pub fn from_link(link: Link) -> Result<Arc<Client>, ClientError> {
        let Link {
            welcome,
            reader,
            writer,
            closer,
            buf,
        } = link;
        let client = Arc::new(Client {
            welcome,
            writer: Mutex::new(WriterState {
                out: writer,
                scratch: Vec::with_capacity(256),
                generation: 1,
                state: LinkState::Up,
            }),
            pending: DashMap::new(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            closed_done: Mutex::new(false),
            closed_cv: Condvar::new(),
            closer: Mutex::new(closer),
            changes: DashMap::new(),
            gone: dashmap::DashSet::new(),
            resume: std::sync::OnceLock::new(),
        });
        client.start_reader(reader, buf, 1)?;
        Ok(client)
    }
}

/// One connection to a server, its handshake done, not yet serving a [`Client`].
pub struct Link {
    pub(super) welcome: Welcome,
    pub(super) reader: Box<dyn Read + Send>,
    pub(super) writer: Box<dyn Write + Send>,
    pub(super) closer: Option<Closer>,
    pub(super) buf: Vec<u8>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("server", &self.welcome.server)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// The handshake over a socket (with a [`HANDSHAKE_TIMEOUT`]); shutting the link down
    /// shuts the socket down.
    pub fn over<S: Stream>(stream: S, config: &ClientConfig) -> Result<Link, ClientError> {
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let reader = stream.try_clone()?;
        let writer = stream.try_clone()?;
        let reset = stream.try_clone()?;
        Self::handshake(
            Box::new(reader),
            Box::new(writer),
            config,
            Some(Box::new(move || stream.shutdown())),
            Some(Box::new(move || reset.set_read_timeout(None))),
        )
    }

    /// The server's handshake answer.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    fn handshake(
        mut reader: Box<dyn Read + Send>,
        mut writer: Box<dyn Write + Send>,
        config: &ClientConfig,
        closer: Option<Closer>,
        after_handshake: Option<Box<dyn FnOnce() -> io::Result<()>>>,
    ) -> Result<Link, ClientError> {
        let hello = Hello {
            version: VERSION,
            features: features::ALL,
            token: config.token.as_deref(),
            client: &config.client_name,
        };
        let mut out = Vec::new();
        hello.encode(&mut out)?;
        writer.write_all(&out)?;
        writer.flush()?;

        let mut buf = Vec::new();
        let len = match read_frame(&mut reader, &mut buf)? {
            Some(len) => len,
            None => {
                return Err(ClientError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection during the handshake",
                )));
            }
        };
        let frame = Frame::parse(&buf[..len])?;
        let welcome = match frame.header.kind {
            FrameKind::Welcome => Welcome::decode(&frame)?,
            FrameKind::Refused => {
                let r = Refused::decode(&frame)?;
                return Err(ClientError::Refused {
                    errno: Errno(r.errno),
                    reason: r.reason,
                });
            }
            other => return Err(DecodeError::UnexpectedKind(other).into()),
        };
        if welcome.version.major != VERSION.major {
            return Err(ClientError::Version {
                server: welcome.version,
                client: VERSION,
            });
        }
        if let Some(f) = after_handshake {
            f()?;
        }
        info!(
            server = %welcome.server,
            version = format_args!("{}.{}", welcome.version.major, welcome.version.minor),
            features = format_args!("{:#x}", welcome.features),
            exports = welcome.exports.len(),
            "connected to host server"
        );
        Ok(Link {
            welcome,
            reader,
            writer,
            closer,
            buf,
        })
    }
}
