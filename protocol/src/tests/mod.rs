//! Tests of the wire format.
//!
//! - [`golden`]: hand-written frames for every message kind, decoded and re-encoded.
//! - [`golden_requests`]: one hand-written request frame per opcode.
//! - [`roundtrip`]: proptest round trips of arbitrary messages.
//! - [`hostile`]: malformed and adversarial input.
//! - [`encode_errors`]: what the encoders refuse.
//!
//! Every golden test goes through [`check`], which parses the bytes, checks each header field
//! against the expected message, decodes and compares the message, then re-encodes it and
//! compares the bytes.

mod alloc;
mod encode_errors;
mod golden;
mod golden_requests;
mod hostile;
mod roundtrip;
mod strategies;

use std::fmt::Debug;

use crate::frame::{Frame, FrameKind, HEADER_LEN};
use crate::{
    DecodeError, EncodeError, Hello, Notice, Refused, ReplyFrame, RequestFrame, Welcome, notice,
};

/// A message that travels as one frame, seen generically by the test helpers.
pub(crate) trait Wire<'a>: Sized + PartialEq + Debug {
    /// The frame kind it travels in.
    const KIND: FrameKind;
    /// Decodes it from a parsed frame.
    fn wire_decode(frame: &Frame<'a>) -> Result<Self, DecodeError>;
    /// Encodes header and meta (not the payload) into `out`.
    fn wire_encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError>;
    /// The `(op, id, aux)` header fields it must travel with.
    fn header_fields(&self) -> (u16, u64, u32) {
        (0, 0, 0)
    }
    /// The raw payload sent after the meta.
    fn payload(&self) -> &[u8] {
        &[]
    }
}

impl<'a> Wire<'a> for Hello<'a> {
    const KIND: FrameKind = FrameKind::Hello;
    fn wire_decode(frame: &Frame<'a>) -> Result<Self, DecodeError> {
        Hello::decode(frame)
    }
    fn wire_encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode(out)
    }
}

impl<'a> Wire<'a> for Welcome {
    const KIND: FrameKind = FrameKind::Welcome;
    fn wire_decode(frame: &Frame<'a>) -> Result<Self, DecodeError> {
        Welcome::decode(frame)
    }
    fn wire_encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode(out)
    }
}

impl<'a> Wire<'a> for Refused {
    const KIND: FrameKind = FrameKind::Refused;
    fn wire_decode(frame: &Frame<'a>) -> Result<Self, DecodeError> {
        Refused::decode(frame)
    }
    fn wire_encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode(out)
    }
}

impl<'a> Wire<'a> for Notice {
    const KIND: FrameKind = FrameKind::Notify;
    fn wire_decode(frame: &Frame<'a>) -> Result<Self, DecodeError> {
        Notice::decode(frame).map(|n| n.expect("a notice code this version knows"))
    }
    fn wire_encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode(out)
    }
    fn header_fields(&self) -> (u16, u64, u32) {
        match self {
            Notice::Shutdown { .. } => (notice::SHUTDOWN, 0, 0),
            Notice::Changes { export, age_us, .. } => (notice::CHANGES, *age_us, *export),
        }
    }
}

impl<'a> Wire<'a> for RequestFrame<'a> {
    const KIND: FrameKind = FrameKind::Request;
    fn wire_decode(frame: &Frame<'a>) -> Result<Self, DecodeError> {
        RequestFrame::decode(frame)
    }
    fn wire_encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode(out)
    }
    fn header_fields(&self) -> (u16, u64, u32) {
        (self.body.opcode() as u16, self.id, self.export)
    }
    fn payload(&self) -> &[u8] {
        self.payload
    }
}

impl<'a> Wire<'a> for ReplyFrame<'a> {
    const KIND: FrameKind = FrameKind::Reply;
    fn wire_decode(frame: &Frame<'a>) -> Result<Self, DecodeError> {
        ReplyFrame::decode(frame)
    }
    fn wire_encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode(out)
    }
    fn header_fields(&self) -> (u16, u64, u32) {
        let aux = match self.result {
            Ok(_) => 0,
            Err(e) => e.0 as u32,
        };
        (self.op as u16, self.id, aux)
    }
    fn payload(&self) -> &[u8] {
        ReplyFrame::payload(self)
    }
}

/// The whole frame as it goes on the wire: header and meta, then the payload.
pub(crate) fn encode_full<'a, T: Wire<'a>>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    msg.wire_encode(&mut out)
        .unwrap_or_else(|e| panic!("encoding {msg:?}: {e}"));
    out.extend_from_slice(msg.payload());
    out
}

/// Parses `bytes` as one frame, checks every header field against `expected`, decodes it and
/// compares it with `expected`, then re-encodes `expected` and compares with `bytes`.
#[track_caller]
pub(crate) fn check<'a, T: Wire<'a>>(bytes: &'a [u8], expected: T) {
    let frame = Frame::parse(bytes).unwrap_or_else(|e| panic!("Frame::parse: {e}"));
    let h = frame.header;
    let (op, id, aux) = expected.header_fields();
    assert_eq!(h.len as usize, bytes.len(), "header.len");
    assert_eq!(h.kind, T::KIND, "header.kind");
    assert_eq!(h.op, op, "header.op");
    assert_eq!(h.id, id, "header.id");
    assert_eq!(h.aux, aux, "header.aux");
    let meta_len = bytes.len() - HEADER_LEN - expected.payload().len();
    assert_eq!(h.meta_len as usize, meta_len, "header.meta_len");
    assert_eq!(
        frame.meta,
        &bytes[HEADER_LEN..HEADER_LEN + meta_len],
        "meta"
    );
    assert_eq!(frame.payload, expected.payload(), "payload");

    let decoded = T::wire_decode(&frame).unwrap_or_else(|e| panic!("decode: {e}"));
    assert_eq!(decoded, expected, "decoded message");

    let encoded = encode_full(&expected);
    assert_eq!(hex(&encoded), hex(bytes), "re-encoded bytes");
}

/// Bytes as hex, eight to a line, so that a mismatch shows where it is.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(8)
        .enumerate()
        .map(|(i, c)| {
            let b: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:4}: {}\n", i * 8, b.join(" "))
        })
        .collect()
}
