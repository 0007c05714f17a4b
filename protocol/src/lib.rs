//! The Ferry wire protocol, shared by `ferry-host` and `ferry-agent`. It does no I/O: callers
//! read and write bytes, this crate turns them into typed frames and back.
//!
//! - [`frame`]: the 24-byte header, frame limits, splitting a buffer into header/meta/payload.
//! - [`messages`]: handshake, every request with its reply kind, server notices.
//! - [`errno`]: Linux errno values as they travel.
//! - [`replay`]: how a replay thread's requests are answered, for both answerers.
//! - [`sizes`]: FUSE ABI sizes both sides budget listings with, and the root's node id.
//!
//! A connection starts with `Hello` (guest) answered by `Welcome` or `Refused` (host). Then the
//! guest sends `Request` frames, each with an id it chooses, and the host answers each with a
//! `Reply` frame carrying the same id, in any order. The host may send `Notify` frames at any
//! time. Every message is a whole frame: nothing relies on half-closing a stream.

pub mod errno;
pub mod frame;
pub mod messages;
pub mod replay;
pub mod sizes;

#[cfg(test)]
mod tests;

pub use errno::Errno;
pub use frame::{Frame, FrameHeader, FrameKind, HEADER_LEN, MAX_DATA, MAX_FRAME, MAX_HELLO};
pub use messages::*;
pub use sizes::ROOT_ID;

/// Why bytes could not be decoded. Decoding never panics, whatever the input.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the frame needs.
    #[error("truncated frame: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The length field is below the header size.
    #[error("frame length {0} is shorter than the header")]
    FrameTooShort(u32),
    /// The length field is above [`MAX_FRAME`].
    #[error("frame length {0} exceeds the limit of {MAX_FRAME} bytes")]
    FrameTooLarge(u32),
    /// Unknown frame kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Reserved flag bits set.
    #[error("reserved frame flags set: {0:#x}")]
    BadFlags(u8),
    /// The meta length runs past the frame.
    #[error("meta length {meta_len} runs past the frame length {len}")]
    MetaOutOfBounds {
        /// The meta length field.
        meta_len: u32,
        /// The frame length field.
        len: u32,
    },
    /// A frame of a kind not allowed here.
    #[error("unexpected {0:?} frame")]
    UnexpectedKind(FrameKind),
    /// Unknown opcode.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A reply to a request kind that has none.
    #[error("{0:?} has no reply")]
    UnexpectedReply(Opcode),
    /// A payload on a message that carries none.
    #[error("unexpected payload of {0} bytes")]
    UnexpectedPayload(usize),
    /// An errno outside the valid range.
    #[error("invalid errno {0}")]
    BadErrno(u32),
    /// The meta part does not decode.
    #[error("malformed message body: {0}")]
    Meta(postcard::Error),
    /// The meta part decodes but leaves bytes over.
    #[error("{0} trailing bytes after the message body")]
    TrailingBytes(usize),
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The serializer failed.
    #[error("cannot encode message body: {0}")]
    Meta(postcard::Error),
    /// The frame would exceed [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A payload on a request that carries none.
    #[error("payload given for a request that carries none")]
    UnexpectedPayload,
    /// A reply body that does not match the request's opcode.
    #[error("reply body does not match {0:?}")]
    ReplyMismatch(Opcode),
    /// `Reply::OpenedData` with no data (send `Reply::Opened` instead).
    #[error("inline open data must not be empty")]
    EmptyInlineData,
    /// An errno of zero or below.
    #[error("invalid errno {0}")]
    BadErrno(i32),
}
