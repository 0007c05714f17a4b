//! Whole frames over a stream: the header is read and validated before the body is
//! allocated, so a hostile length never causes a large allocation; a frame is written whole
//! (every message is framed: nothing relies on a half-close).

use std::io::{self, IoSlice, Read, Write};

use ferry_protocol::{DecodeError, FrameHeader, HEADER_LEN};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The header does not decode (bad length, kind or flags).
    #[error("malformed frame header: {0}")]
    Header(#[from] DecodeError),
    /// The peer closed the stream inside a frame header.
    #[error("connection closed after {0} bytes of a frame header")]
    TruncatedHeader(usize),
    /// The peer closed the stream inside a frame body.
    #[error("connection closed in the middle of a {0}-byte frame")]
    TruncatedFrame(u32),
}

/// Reads one whole frame, header included, into the front of `buf` (grown as needed, never
/// shrunk) and returns its length; `Ok(None)` on a clean end of stream before the first
/// header byte.
pub fn read_frame<R: Read + ?Sized>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<usize>, ReadError> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match reader.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ReadError::TruncatedHeader(got)),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let header = FrameHeader::parse(&head)?;
    let len = header.len as usize;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    buf[..HEADER_LEN].copy_from_slice(&head);
    reader
        .read_exact(&mut buf[HEADER_LEN..len])
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ReadError::TruncatedFrame(header.len),
            _ => ReadError::Io(e),
        })?;
    Ok(Some(len))
}

/// Writes an encoded frame (`head`: header and meta part) and its raw payload whole, with as
/// few system calls as the stream allows.
pub fn write_frame<W: Write + ?Sized>(out: &mut W, head: &[u8], payload: &[u8]) -> io::Result<()> {
    let mut bufs = [IoSlice::new(head), IoSlice::new(payload)];
    let mut bufs = &mut bufs[..];
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the stream took no more bytes of a frame",
                ));
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::{Ctx, Getattr, Request, RequestFrame};

    fn frame() -> Vec<u8> {
        let mut out = Vec::new();
        RequestFrame {
            id: 7,
            export: 0,
            ctx: Ctx::default(),
            body: Request::Getattr(Getattr { ino: 1, fh: None }),
            payload: &[],
        }
        .encode(&mut out)
        .unwrap();
        out
    }

    /// A reader that hands out at most one byte per call.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn whole_frames_in_pieces_and_a_clean_end() {
        let one = frame();
        let mut two = one.clone();
        two.extend_from_slice(&one);
        let mut r = Trickle(&two);
        let mut buf = Vec::new();
        for _ in 0..2 {
            let n = read_frame(&mut r, &mut buf).unwrap().unwrap();
            assert_eq!(&buf[..n], &one[..]);
        }
        assert!(read_frame(&mut r, &mut buf).unwrap().is_none());
    }

    #[test]
    fn truncation_and_bad_headers_are_typed() {
        let one = frame();
        let mut buf = Vec::new();
        let err = read_frame(&mut &one[..5], &mut buf).unwrap_err();
        assert!(matches!(err, ReadError::TruncatedHeader(5)), "{err}");
        let err = read_frame(&mut &one[..one.len() - 1], &mut buf).unwrap_err();
        assert!(matches!(err, ReadError::TruncatedFrame(_)), "{err}");
        // A length field far beyond the limit is refused before anything is allocated.
        let mut huge = one.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut small = Vec::new();
        let err = read_frame(&mut &huge[..], &mut small).unwrap_err();
        assert!(matches!(err, ReadError::Header(_)), "{err}");
        assert!(small.capacity() < 4096);
    }

    #[test]
    fn writes_are_whole() {
        struct Slow(Vec<u8>);
        impl Write for Slow {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let n = b.len().min(3);
                self.0.extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = Slow(Vec::new());
        write_frame(&mut w, b"header", b"payload").unwrap();
        assert_eq!(w.0, b"headerpayload");
    }
}
