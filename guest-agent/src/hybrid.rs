//! Host-initiated hybrid vsock: reaching a vsock port *inside* a VM from the host, the way
//! Firecracker, cloud-hypervisor and vhost-device-vsock offer it.
//!
//! These VMMs expose the guest's vsock device on the host as one Unix socket (Firecracker's
//! `uds_path`, cloud-hypervisor's `--vsock socket=`, vhost-device-vsock's `uds-path`). A guest
//! connection to host port P arrives on the Unix socket `PATH_P` with no preamble, so the
//! server side needs nothing special. The other direction is a small text handshake on `PATH`
//! itself:
//!
//! ```text
//! host → VMM   CONNECT <guest port>\n
//! VMM → host   OK <host-side port>\n     then the stream is the guest connection
//! ```
//!
//! If nothing listens on the guest port the VMM closes the socket instead of answering.
//! Only std Unix sockets are used, so this works wherever the VMM's socket is reachable,
//! including a macOS host.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest `OK …` line accepted; real ones are `OK ` and a 32-bit number.
const MAX_REPLY: usize = 64;

/// How long the VMM has to answer `CONNECT`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the VMM socket `path` and asks for guest port `port`. Returns the stream once
/// the VMM has answered `OK`; the stream is then the connection to the guest's listener.
pub fn connect(path: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    handshake(&mut stream, port)?;
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// Performs the `CONNECT`/`OK` exchange on an already-open stream to the VMM and returns the
/// host-side port the VMM assigned. Reads byte by byte up to the newline so that nothing the
/// guest sends right after the `OK` line is consumed here.
///
/// A VMM that closes the stream without answering has no guest listener on `port` (yet): that
/// is reported as [`io::ErrorKind::ConnectionRefused`], so a caller waiting for a guest service
/// to come up treats it like a refused TCP connection. Any other answer is
/// [`io::ErrorKind::InvalidData`], with the answer in the message.
pub fn handshake<S: Read + Write>(stream: &mut S, port: u32) -> io::Result<u32> {
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    stream.flush()?;
    let mut line = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        match stream.read(&mut b) {
            Ok(0) if line.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("the VMM closed the connection: nothing listens on guest port {port}"),
                ));
            }
            Ok(0) => return Err(bad_reply(&line, "the VMM closed the connection mid-line")),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_REPLY => return Err(bad_reply(&line, "line too long")),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&line);
    text.trim_end_matches('\r')
        .strip_prefix("OK ")
        .and_then(|n| n.trim().parse::<u32>().ok())
        .ok_or_else(|| bad_reply(&line, "expected \"OK <port>\""))
}

fn bad_reply(line: &[u8], why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "unexpected answer to CONNECT from the VMM: {:?} ({why})",
            String::from_utf8_lossy(line)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// A fake VMM on the other end of a socket pair: reads the CONNECT line, checks it, sends
    /// `answer` and then `after` (the first bytes of the guest connection), then closes.
    fn vmm(
        answer: &'static [u8],
        after: &'static [u8],
    ) -> (UnixStream, std::thread::JoinHandle<String>) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut r = io::BufReader::new(b.try_clone().unwrap());
            let mut req = String::new();
            r.read_line(&mut req).unwrap();
            let mut b = b;
            b.write_all(answer).unwrap();
            b.write_all(after).unwrap();
            req
        });
        (a, t)
    }

    #[test]
    fn connect_ok_leaves_the_guest_bytes_unread() {
        let (mut s, vmm) = vmm(b"OK 1073741824\n", b"guest!");
        assert_eq!(handshake(&mut s, 5000).unwrap(), 1_073_741_824);
        assert_eq!(vmm.join().unwrap(), "CONNECT 5000\n");
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "guest!", "the handshake must not read past its line");
    }

    #[test]
    fn a_crlf_answer_is_accepted() {
        let (mut s, _vmm) = vmm(b"OK 7\r\n", b"");
        assert_eq!(handshake(&mut s, 1).unwrap(), 7);
    }

    #[test]
    fn no_guest_listener_is_connection_refused() {
        let (mut s, vmm) = vmm(b"", b"");
        let e = handshake(&mut s, 5001).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        assert!(e.to_string().contains("guest port 5001"), "{e}");
        vmm.join().unwrap();
    }

    #[test]
    fn other_answers_are_invalid_data_with_the_answer() {
        for (answer, shown) in [
            (&b"NO such port\n"[..], "NO such port"),
            (b"OK\n", "OK"),
            (b"OK x\n", "OK x"),
            (b"OK 12", "OK 12"),
            (b"OK 4294967296\n", "OK 4294967296"),
        ] {
            let (mut s, _vmm) = vmm(answer, b"");
            let e = handshake(&mut s, 2).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(e.to_string().contains(shown), "{shown}: {e}");
        }
        let (mut s, _vmm) = vmm(&[b'O'; 200], b"");
        let e = handshake(&mut s, 2).unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
    }

    #[test]
    fn connect_through_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = io::BufReader::new(s.try_clone().unwrap());
            let mut req = String::new();
            r.read_line(&mut req).unwrap();
            s.write_all(b"OK 99\nhello").unwrap();
            req
        });
        let mut s = connect(&path, 1024).unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(server.join().unwrap(), "CONNECT 1024\n");
        // A missing socket is the plain connect error, which callers retry.
        let e = connect(&dir.path().join("missing"), 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
