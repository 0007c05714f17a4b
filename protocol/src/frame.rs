//! The frame: a fixed 24-byte header followed by a postcard-encoded meta part and an optional
//! raw payload.
//!
//! ```text
//! offset size field
//!      0    4 len       total frame length in bytes, header included (little endian)
//!      4    1 kind      FrameKind
//!      5    1 flags     reserved, must be 0
//!      6    2 op        opcode (Request/Reply), notice code (Notify), 0 otherwise
//!      8    8 id        request id chosen by the guest; a reply carries its request's id
//!     16    4 meta_len  bytes of postcard meta that follow the header
//!     20    4 aux       Request: export id. Reply: errno (0 = success). 0 otherwise.
//!     24    …  meta, then payload (len - 24 - meta_len bytes, raw)
//! ```
//!
//! Bulk data (the bytes of a write request and of a read reply) travels as the raw payload so
//! that neither side has to copy it through the serializer: a sender writes header+meta and the
//! payload slice back to back, a receiver hands out a slice of the frame buffer.

use crate::DecodeError;

/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 24;

/// Largest payload carried by a single read or write. The guest agent caps FUSE's max_write
/// and max_read at this value.
pub const MAX_DATA: usize = 1 << 20;

/// Largest frame either side accepts. Anything above is a hostile or broken peer.
pub const MAX_FRAME: u32 = (MAX_DATA + (1 << 20)) as u32;

/// Largest `Hello` frame a server reads. The Hello arrives before the client has
/// authenticated, so the server checks this bound from the header before it allocates
/// anything; a token and a client description fit many times over.
pub const MAX_HELLO: u32 = 16 * 1024;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Guest → host, first frame on a connection.
    Hello = 1,
    /// Host → guest, accepts a `Hello`.
    Welcome = 2,
    /// Host → guest, refuses a `Hello`; the connection closes after it.
    Refused = 3,
    /// Guest → host, one filesystem operation.
    Request = 4,
    /// Host → guest, the answer to the request with the same id.
    Reply = 5,
    /// Host → guest, unsolicited (change events and server notices).
    Notify = 6,
}

impl FrameKind {
    /// Parses the kind byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Welcome,
            3 => Self::Refused,
            4 => Self::Request,
            5 => Self::Reply,
            6 => Self::Notify,
            _ => return None,
        })
    }
}

/// The fixed header of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Total length of the frame, header included.
    pub len: u32,
    /// What the frame carries.
    pub kind: FrameKind,
    /// Opcode or notice code.
    pub op: u16,
    /// Request id.
    pub id: u64,
    /// Length of the meta part.
    pub meta_len: u32,
    /// Export id (requests) or errno (replies).
    pub aux: u32,
}

impl FrameHeader {
    /// Serializes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4] = self.kind as u8;
        b[5] = 0;
        b[6..8].copy_from_slice(&self.op.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..20].copy_from_slice(&self.meta_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.aux.to_le_bytes());
        b
    }

    /// Parses and validates a header. `bytes` must hold at least [`HEADER_LEN`] bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let b: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Truncated {
                need: HEADER_LEN,
                have: bytes.len(),
            })?;
        let le32 =
            |r: std::ops::Range<usize>| u32::from_le_bytes(b[r].try_into().expect("4-byte range"));
        let len = le32(0..4);
        if (len as usize) < HEADER_LEN {
            return Err(DecodeError::FrameTooShort(len));
        }
        if len > MAX_FRAME {
            return Err(DecodeError::FrameTooLarge(len));
        }
        let kind = FrameKind::from_u8(b[4]).ok_or(DecodeError::UnknownKind(b[4]))?;
        if b[5] != 0 {
            return Err(DecodeError::BadFlags(b[5]));
        }
        let op = u16::from_le_bytes([b[6], b[7]]);
        let id = u64::from_le_bytes(b[8..16].try_into().expect("8-byte range"));
        let meta_len = le32(16..20);
        if meta_len as usize > len as usize - HEADER_LEN {
            return Err(DecodeError::MetaOutOfBounds { meta_len, len });
        }
        let aux = le32(20..24);
        Ok(Self {
            len,
            kind,
            op,
            id,
            meta_len,
            aux,
        })
    }

    /// Length of the raw payload after the meta part.
    pub fn payload_len(&self) -> usize {
        self.len as usize - HEADER_LEN - self.meta_len as usize
    }
}

/// A complete frame, borrowed from a receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// The parsed header.
    pub header: FrameHeader,
    /// The postcard meta part.
    pub meta: &'a [u8],
    /// The raw payload.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Splits a buffer holding exactly one frame (header included).
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let header = FrameHeader::parse(buf)?;
        if buf.len() != header.len as usize {
            return Err(DecodeError::Truncated {
                need: header.len as usize,
                have: buf.len(),
            });
        }
        let meta_end = HEADER_LEN + header.meta_len as usize;
        Ok(Frame {
            header,
            meta: &buf[HEADER_LEN..meta_end],
            payload: &buf[meta_end..],
        })
    }
}

/// Starts a frame in `out`: reserves the header, appends the postcard meta, and fills the
/// header in once the meta length is known. The caller then sends `out` followed by a payload
/// of exactly `payload_len` bytes.
pub fn encode_frame<T: serde::Serialize + ?Sized>(
    out: &mut Vec<u8>,
    kind: FrameKind,
    op: u16,
    id: u64,
    aux: u32,
    meta: &T,
    payload_len: usize,
) -> Result<(), crate::EncodeError> {
    out.clear();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let mut buf = std::mem::take(out);
    buf = postcard::to_extend(meta, buf).map_err(crate::EncodeError::Meta)?;
    let meta_len = buf.len() - HEADER_LEN;
    let total = buf.len() + payload_len;
    if total > MAX_FRAME as usize {
        *out = buf;
        return Err(crate::EncodeError::TooLarge(total));
    }
    let header = FrameHeader {
        len: total as u32,
        kind,
        op,
        id,
        meta_len: meta_len as u32,
        aux,
    };
    buf[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    *out = buf;
    Ok(())
}
