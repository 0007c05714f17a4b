//! Hostile input: decoding returns `Ok` or a typed `DecodeError` and never panics, whatever the
//! bytes; each validation rule gives its own error; claimed lengths are not trusted.

use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;

use super::alloc::largest_allocation;
use super::golden::*;
use super::golden_requests::request_table;
use super::strategies;
use super::{check, encode_full};
use crate::*;

/// Runs every parser and decoder over `bytes`. Whatever they return must be consistent: a
/// parsed header re-serializes to the same bytes, a decoded message keeps the frame's id, op,
/// export and payload, and re-encodes to a frame that decodes to the same message.
fn decode_everything(bytes: &[u8]) {
    let header = FrameHeader::parse(bytes);
    let frame = Frame::parse(bytes);
    if let Ok(h) = &header {
        assert!(h.len as usize >= HEADER_LEN && h.len <= MAX_FRAME, "{h:?}");
        assert!(h.meta_len as usize <= h.len as usize - HEADER_LEN, "{h:?}");
        assert_eq!(h.to_bytes()[..], bytes[..HEADER_LEN]);
    }
    match (&header, &frame) {
        (Err(_), Ok(_)) => panic!("Frame::parse accepted a bad header"),
        (Ok(h), Err(e)) => assert!(
            matches!(e, DecodeError::Truncated { need, have }
                if *need == h.len as usize && *have == bytes.len() && *need != *have),
            "{e:?}"
        ),
        _ => {}
    }
    if let Ok(frame) = frame {
        assert_eq!(
            HEADER_LEN + frame.meta.len() + frame.payload.len(),
            bytes.len()
        );
        decode_frame(&frame);
    }
}

/// Every decoder on one parsed frame; see [`decode_everything`].
fn decode_frame(frame: &Frame<'_>) {
    let h = frame.header;
    if let Ok(req) = RequestFrame::decode(frame) {
        assert_eq!((req.id, req.export), (h.id, h.aux));
        assert_eq!(req.body.opcode() as u16, h.op);
        assert_eq!(req.payload, frame.payload, "request payload kept whole");
        check(&encode_full(&req), req.clone());
    }
    if let Ok(rep) = ReplyFrame::decode(frame) {
        assert_eq!((rep.id, rep.op as u16), (h.id, h.op));
        assert_eq!(rep.payload(), frame.payload, "reply payload kept whole");
        match rep.result {
            Err(e) => assert_eq!(e.0 as u32, h.aux),
            Ok(_) => assert_eq!(h.aux, 0),
        }
        check(&encode_full(&rep), rep.clone());
    }
    if let Ok(m) = Hello::decode(frame) {
        assert!(frame.payload.is_empty());
        check(&encode_full(&m), m.clone());
    }
    if let Ok(m) = Welcome::decode(frame) {
        assert!(frame.payload.is_empty());
        check(&encode_full(&m), m.clone());
    }
    if let Ok(m) = Refused::decode(frame) {
        assert!(frame.payload.is_empty());
        check(&encode_full(&m), m.clone());
    }
    if let Ok(Some(m)) = Notice::decode(frame) {
        assert!(frame.payload.is_empty(), "notice payload dropped");
        check(&encode_full(&m), m.clone());
    }
}

/// A frame with a correct `len` and `meta_len` around arbitrary content.
fn frame_bytes(kind: u8, op: u16, id: u64, aux: u32, meta: &[u8], payload: &[u8]) -> Vec<u8> {
    let len = (HEADER_LEN + meta.len() + payload.len()) as u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&[kind, 0]);
    b.extend_from_slice(&op.to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    b.extend_from_slice(&aux.to_le_bytes());
    b.extend_from_slice(meta);
    b.extend_from_slice(payload);
    b
}

/// `bytes` with its header fields rewritten to match a buffer of this length.
fn fix_len(bytes: &mut [u8]) {
    if bytes.len() >= 4 {
        let len = bytes.len() as u32;
        bytes[0..4].copy_from_slice(&len.to_le_bytes());
    }
}

fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
    if let Some(s) = bytes.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn set_u16(bytes: &mut [u8], at: usize, v: u16) {
    if let Some(s) = bytes.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// One change to a valid frame.
#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: usize,
        mask: u8,
    },
    Truncate(usize),
    Insert {
        at: usize,
        byte: u8,
    },
    Remove(usize),
    Append(Vec<u8>),
    Len(u32),
    FixLen,
    Kind(u8),
    Op(u16),
    MetaLen(u32),
    /// Moves the meta/payload boundary by this many bytes.
    MetaLenBy(i8),
    Aux(u32),
}

impl Mutation {
    fn apply(&self, b: &mut Vec<u8>) {
        let n = b.len();
        match self {
            Mutation::Flip { at, mask } if n > 0 => b[at % n] ^= mask.max(&1),
            Mutation::Truncate(at) => b.truncate(at % (n + 1)),
            Mutation::Insert { at, byte } => b.insert(at % (n + 1), *byte),
            Mutation::Remove(at) if n > 0 => {
                b.remove(at % n);
            }
            Mutation::Append(extra) => b.extend_from_slice(extra),
            Mutation::Len(v) => set_u32(b, 0, *v),
            Mutation::FixLen => fix_len(b),
            Mutation::Kind(k) if n > 4 => b[4] = *k,
            Mutation::Op(op) => set_u16(b, 6, *op),
            Mutation::MetaLen(v) => set_u32(b, 16, *v),
            Mutation::MetaLenBy(d) if n >= HEADER_LEN => {
                let m = u32::from_le_bytes(b[16..20].try_into().unwrap());
                set_u32(b, 16, m.wrapping_add_signed(i32::from(*d)));
            }
            Mutation::Aux(v) => set_u32(b, 20, *v),
            _ => {}
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let u32s = prop_oneof![
        any::<u32>(),
        0..64u32,
        Just(MAX_FRAME),
        Just(MAX_FRAME + 1),
        Just(u32::MAX),
        Just(i32::MAX as u32 + 1),
    ];
    prop_oneof![
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
        1 => u32s.clone().prop_map(Mutation::Len),
        3 => Just(Mutation::FixLen),
        1 => prop_oneof![0..=8u8, any::<u8>()].prop_map(Mutation::Kind),
        1 => prop_oneof![0..=40u16, any::<u16>()].prop_map(Mutation::Op),
        1 => u32s.clone().prop_map(Mutation::MetaLen),
        1 => any::<i8>().prop_map(Mutation::MetaLenBy),
        1 => u32s.prop_map(Mutation::Aux),
    ]
}

/// The encoding of an arbitrary valid message of any kind.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => strategies::request_frame().prop_map(|m| encode_full(&m)),
        4 => strategies::reply_frame().prop_map(|m| encode_full(&m)),
        1 => strategies::hello().prop_map(|m| encode_full(&m)),
        1 => strategies::welcome().prop_map(|m| encode_full(&m)),
        1 => strategies::refused().prop_map(|m| encode_full(&m)),
        1 => strategies::notice().prop_map(|m| encode_full(&m)),
        2 => prop::sample::select(all_frames()).prop_map(<[u8]>::to_vec),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes(bytes in vec(any::<u8>(), 0..96)) {
        decode_everything(&bytes);
    }

    /// A well-formed header around arbitrary meta and payload, so that the bytes reach the
    /// message decoders.
    #[test]
    fn arbitrary_content(
        kind in 1..=6u8,
        op in prop_oneof![0..=40u16, any::<u16>()],
        id in any::<u64>(),
        aux in prop_oneof![Just(0u32), 0..200u32, any::<u32>()],
        meta in vec(any::<u8>(), 0..80),
        payload in vec(any::<u8>(), 0..8),
    ) {
        decode_everything(&frame_bytes(kind, op, id, aux, &meta, &payload));
    }

    #[test]
    fn mutated_frames(mut bytes in valid_frame(), mutations in vec(mutation(), 1..4)) {
        for m in &mutations {
            m.apply(&mut bytes);
        }
        decode_everything(&bytes);
    }
}

/// Every golden frame, cut short at every length, is `Truncated` with the right counts.
#[test]
fn truncated_at_every_length() {
    for frame in all_frames() {
        decode_everything(frame);
        for n in 0..frame.len() {
            let cut = &frame[..n];
            let need = if n < HEADER_LEN {
                assert!(matches!(
                    FrameHeader::parse(cut),
                    Err(DecodeError::Truncated { need: HEADER_LEN, have }) if have == n
                ));
                HEADER_LEN
            } else {
                assert!(FrameHeader::parse(cut).is_ok());
                frame.len()
            };
            match Frame::parse(cut) {
                Err(DecodeError::Truncated { need: nd, have }) if nd == need && have == n => {}
                other => panic!("cut at {n} of {}: {other:?}", frame.len()),
            }
        }
    }
}

#[test]
fn length_field_limits() {
    let header_with_len = |len: u32| {
        let mut b = REPLY_EMPTY.to_vec();
        set_u32(&mut b, 0, len);
        b
    };
    // Rejected from the header alone: a stream reader need not wait for (or allocate) the body.
    for len in [MAX_FRAME + 1, 0x8000_0000, u32::MAX] {
        let b = header_with_len(len);
        assert!(matches!(FrameHeader::parse(&b), Err(DecodeError::FrameTooLarge(l)) if l == len));
        assert!(matches!(Frame::parse(&b), Err(DecodeError::FrameTooLarge(l)) if l == len));
    }
    // The limit itself is allowed; the 24 bytes present are then just too few.
    let b = header_with_len(MAX_FRAME);
    assert_eq!(FrameHeader::parse(&b).unwrap().len, MAX_FRAME);
    assert!(matches!(
        Frame::parse(&b),
        Err(DecodeError::Truncated { need, have: HEADER_LEN }) if need == MAX_FRAME as usize
    ));
    for len in 0..HEADER_LEN as u32 {
        let b = header_with_len(len);
        assert!(matches!(FrameHeader::parse(&b), Err(DecodeError::FrameTooShort(l)) if l == len));
    }
    // More bytes than the frame claims is not one frame either.
    let mut b = REPLY_EMPTY.to_vec();
    b.push(0);
    assert!(matches!(
        Frame::parse(&b),
        Err(DecodeError::Truncated { need: 24, have: 25 })
    ));
}

#[test]
fn kind_and_flags() {
    for k in [0u8, 7, 0x80, 0xFF] {
        let mut b = REPLY_EMPTY.to_vec();
        b[4] = k;
        assert!(matches!(Frame::parse(&b), Err(DecodeError::UnknownKind(x)) if x == k));
    }
    for f in [1u8, 0x80, 0xFF] {
        let mut b = REPLY_EMPTY.to_vec();
        b[5] = f;
        assert!(matches!(Frame::parse(&b), Err(DecodeError::BadFlags(x)) if x == f));
    }
}

#[test]
fn meta_len_past_the_end() {
    let frame = request_table()[0].0; // Lookup: len 35, meta_len 11
    for meta_len in [12, 100, u32::MAX] {
        let mut b = frame.to_vec();
        set_u32(&mut b, 16, meta_len);
        assert!(matches!(
            Frame::parse(&b),
            Err(DecodeError::MetaOutOfBounds { meta_len: m, len: 35 }) if m == meta_len
        ));
    }
    // Meta shorter than the body: the rest is a payload, which a Lookup may not have.
    let mut b = frame.to_vec();
    set_u32(&mut b, 16, 10);
    let f = Frame::parse(&b).unwrap();
    assert!(RequestFrame::decode(&f).is_err());
}

/// Each decoder refuses frames of every other kind.
#[test]
fn unexpected_kind() {
    use FrameKind as K;
    let frames = [
        (K::Hello, HELLO_WITH_TOKEN),
        (K::Welcome, WELCOME),
        (K::Refused, REFUSED),
        (K::Request, request_table()[0].0),
        (K::Reply, REPLY_ENTRY),
        (K::Notify, SHUTDOWN),
    ];
    for (kind, bytes) in frames {
        let f = Frame::parse(bytes).unwrap();
        let results = [
            (K::Hello, Hello::decode(&f).err()),
            (K::Welcome, Welcome::decode(&f).err()),
            (K::Refused, Refused::decode(&f).err()),
            (K::Request, RequestFrame::decode(&f).err()),
            (K::Reply, ReplyFrame::decode(&f).err()),
            (K::Notify, Notice::decode(&f).err()),
        ];
        for (decoder, err) in results {
            if decoder == kind {
                assert!(err.is_none(), "{kind:?}: {err:?}");
            } else {
                assert!(
                    matches!(err, Some(DecodeError::UnexpectedKind(k)) if k == kind),
                    "{decoder:?} decoder on {kind:?}: {err:?}"
                );
            }
        }
    }
}

#[test]
fn unknown_opcode() {
    for op in [0u16, Opcode::ALL.len() as u16 + 1, 0x100, u16::MAX] {
        let mut req = request_table()[0].0.to_vec();
        set_u16(&mut req, 6, op);
        let f = Frame::parse(&req).unwrap();
        assert!(matches!(RequestFrame::decode(&f), Err(DecodeError::UnknownOpcode(x)) if x == op));

        let mut rep = REPLY_ERROR.to_vec();
        set_u16(&mut rep, 6, op);
        let f = Frame::parse(&rep).unwrap();
        assert!(matches!(ReplyFrame::decode(&f), Err(DecodeError::UnknownOpcode(x)) if x == op));
    }
}

/// `bytes` with `extra` appended as payload.
fn with_payload(bytes: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut b = [bytes, extra].concat();
    fix_len(&mut b);
    b
}

/// `bytes` with `extra` appended to the meta (the frame must have no payload).
fn with_meta(bytes: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut b = with_payload(bytes, extra);
    let meta_len = u32::from_le_bytes(b[16..20].try_into().unwrap());
    set_u32(&mut b, 16, meta_len + extra.len() as u32);
    b
}

#[test]
fn payload_on_request_other_than_write() {
    for (bytes, expected) in request_table() {
        let b = with_payload(bytes, b"xyz");
        let f = Frame::parse(&b).unwrap();
        let got = RequestFrame::decode(&f);
        if expected.body.opcode() == Opcode::Write {
            assert_eq!(got.unwrap().payload, b"xyz");
        } else {
            assert!(
                matches!(got, Err(DecodeError::UnexpectedPayload(3))),
                "{:?}: {got:?}",
                expected.body.opcode()
            );
        }
    }
}

#[test]
fn payload_on_reply_without_data() {
    for (bytes, expected) in reply_table() {
        if !expected.payload().is_empty() {
            continue;
        }
        let b = with_payload(bytes, b"xyz");
        let f = Frame::parse(&b).unwrap();
        let got = ReplyFrame::decode(&f);
        if expected.result == Ok(Reply::Data(&[])) {
            assert!(got.is_ok());
        } else if let Ok(Reply::Opened(o)) = expected.result {
            // A successful open may carry the file's first bytes.
            assert_eq!(got.unwrap().result, Ok(Reply::OpenedData(o, b"xyz")));
        } else {
            assert!(
                matches!(got, Err(DecodeError::UnexpectedPayload(3))),
                "{:?} {:?}: {got:?}",
                expected.op,
                expected.result
            );
        }
    }
    // An error reply to an opcode whose success carries data.
    let mut b = with_payload(REPLY_ERROR_ON_READ, b"xyz");
    set_u32(&mut b, 20, Errno::EIO.0 as u32);
    let f = Frame::parse(&b).unwrap();
    assert!(matches!(
        ReplyFrame::decode(&f),
        Err(DecodeError::UnexpectedPayload(3))
    ));
}

#[test]
fn payload_on_handshake_and_notice() {
    let b = with_payload(HELLO_WITH_TOKEN, b"x");
    let f = Frame::parse(&b).unwrap();
    assert!(matches!(
        Hello::decode(&f),
        Err(DecodeError::UnexpectedPayload(1))
    ));
    let b = with_payload(WELCOME, b"x");
    let f = Frame::parse(&b).unwrap();
    assert!(matches!(
        Welcome::decode(&f),
        Err(DecodeError::UnexpectedPayload(1))
    ));
    let b = with_payload(REFUSED, b"x");
    let f = Frame::parse(&b).unwrap();
    assert!(matches!(
        Refused::decode(&f),
        Err(DecodeError::UnexpectedPayload(1))
    ));
    let b = with_payload(SHUTDOWN, b"x");
    let f = Frame::parse(&b).unwrap();
    assert!(matches!(
        Notice::decode(&f),
        Err(DecodeError::UnexpectedPayload(1))
    ));
}

#[test]
fn trailing_meta_bytes() {
    let mut frames: Vec<&[u8]> = request_table().into_iter().map(|(b, _)| b).collect();
    frames.extend([
        HELLO_WITH_TOKEN,
        HELLO_WITHOUT_TOKEN,
        WELCOME,
        REFUSED,
        SHUTDOWN,
    ]);
    frames.extend(
        reply_table()
            .into_iter()
            .filter(|(_, r)| r.payload().is_empty())
            .map(|(b, _)| b),
    );
    for bytes in frames {
        for extra in [&[0u8][..], &[1, 2, 3]] {
            let b = with_meta(bytes, extra);
            let f = Frame::parse(&b).unwrap();
            let err = match f.header.kind {
                FrameKind::Hello => Hello::decode(&f).err(),
                FrameKind::Welcome => Welcome::decode(&f).err(),
                FrameKind::Refused => Refused::decode(&f).err(),
                FrameKind::Request => RequestFrame::decode(&f).err(),
                FrameKind::Reply => ReplyFrame::decode(&f).err(),
                FrameKind::Notify => Notice::decode(&f).err(),
            };
            assert!(
                matches!(err, Some(DecodeError::TrailingBytes(n)) if n == extra.len()),
                "{:?} op {}: {err:?}",
                f.header.kind,
                f.header.op
            );
        }
    }
}

#[test]
fn bad_errno_in_aux() {
    for aux in [0x8000_0000u32, 0xFFFF_FFFF] {
        let mut b = REPLY_ERROR.to_vec();
        set_u32(&mut b, 20, aux);
        let f = Frame::parse(&b).unwrap();
        assert!(matches!(ReplyFrame::decode(&f), Err(DecodeError::BadErrno(x)) if x == aux));
    }
    // The largest errno that fits an i32 is accepted (it round-trips; the value is opaque).
    let mut b = REPLY_ERROR.to_vec();
    set_u32(&mut b, 20, i32::MAX as u32);
    check(
        &b,
        ReplyFrame {
            id: 22,
            op: Opcode::Lookup,
            result: Err(Errno(i32::MAX)),
        },
    );
}

/// `Forget` is one-way: no frame may claim to answer it, success or error.
#[test]
fn reply_to_forget() {
    for aux in [0, Errno::ENOENT.0 as u32] {
        let b = frame_bytes(5, Opcode::Forget as u16, 1, aux, &[], &[]);
        let f = Frame::parse(&b).unwrap();
        assert!(
            matches!(
                ReplyFrame::decode(&f),
                Err(DecodeError::UnexpectedReply(Opcode::Forget))
            ),
            "aux {aux}: {:?}",
            ReplyFrame::decode(&f)
        );
    }
}

/// An xattr reply is a size (in meta) or data (in the payload), never both.
#[test]
fn xattr_size_with_payload() {
    let b = with_payload(REPLY_XATTR_SIZE, b"xyz");
    let f = Frame::parse(&b).unwrap();
    assert!(
        matches!(
            ReplyFrame::decode(&f),
            Err(DecodeError::UnexpectedPayload(3))
        ),
        "{:?}",
        ReplyFrame::decode(&f)
    );
}

/// A notice code this version does not know is skipped, whatever it carries.
#[test]
fn unknown_notice() {
    for op in [0u16, 3, u16::MAX] {
        let b = frame_bytes(6, op, 0, 0, &[0xFF, 0xFF], b"future");
        let f = Frame::parse(&b).unwrap();
        assert_eq!(Notice::decode(&f).unwrap(), None);
    }
}

/// Malformed meta: each postcard rule violated once, as `DecodeError::Meta`.
#[test]
fn malformed_meta() {
    use postcard::Error as P;
    const CTX: [u8; 6] = [0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00];
    let req =
        |op: Opcode, body: &[u8]| frame_bytes(4, op as u16, 1, 1, &[&CTX[..], body].concat(), &[]);
    let cases: Vec<(Vec<u8>, Option<P>)> = vec![
        // A ctx but no body.
        (
            req(Opcode::Readlink, &[]),
            Some(P::DeserializeUnexpectedEnd),
        ),
        // fh: Option tag 2.
        (
            req(Opcode::Getattr, &[0x01, 0x02, 0x07]),
            Some(P::DeserializeBadOption),
        ),
        // datasync: bool 2.
        (
            req(Opcode::Fsync, &[0x01, 0x02, 0x02]),
            Some(P::DeserializeBadBool),
        ),
        // ino: an 11-byte varint (a u64 takes at most 10).
        (
            req(
                Opcode::Readlink,
                &[0xFF; 10].iter().copied().chain([0x01]).collect::<Vec<_>>(),
            ),
            Some(P::DeserializeBadVarint),
        ),
        // ino: a 10-byte varint whose last byte overflows 64 bits.
        (
            req(
                Opcode::Readlink,
                &[0xFF; 9].iter().copied().chain([0x02]).collect::<Vec<_>>(),
            ),
            Some(P::DeserializeBadVarint),
        ),
        // size: a u32 varint that overflows 32 bits (5th byte above 0x0F).
        (
            req(Opcode::Listxattr, &[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x10]),
            Some(P::DeserializeBadVarint),
        ),
        // mtime: SetTime variant 2 does not exist.
        (
            req(Opcode::Setattr, &[0x01, 0, 0, 0, 0, 0, 0, 0x01, 0x02]),
            None,
        ),
        // name: length 5 but 2 bytes left.
        (
            req(Opcode::Lookup, &[0x01, 0x05, b'a', b'b']),
            Some(P::DeserializeUnexpectedEnd),
        ),
        // The ctx cut short.
        (
            frame_bytes(4, Opcode::Readlink as u16, 1, 1, &[0xE8], &[]),
            None,
        ),
        // Hello with a client name that is not UTF-8.
        (
            frame_bytes(1, 0, 0, 0, &[0x01, 0x00, 0x00, 0x00, 0x02, 0xC3, 0x28], &[]),
            Some(P::DeserializeBadUtf8),
        ),
        // Welcome with an export name that is not UTF-8.
        (
            frame_bytes(
                2,
                0,
                0,
                0,
                &[0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0xFF, 0x00, 0x00],
                &[],
            ),
            Some(P::DeserializeBadUtf8),
        ),
    ];
    for (bytes, want) in cases {
        let f = Frame::parse(&bytes).unwrap();
        let err = match f.header.kind {
            FrameKind::Hello => Hello::decode(&f).err(),
            FrameKind::Welcome => Welcome::decode(&f).err(),
            _ => RequestFrame::decode(&f).err(),
        };
        match (&err, &want) {
            (Some(DecodeError::Meta(got)), Some(want)) if got == want => {}
            (Some(DecodeError::Meta(_)), None) => {}
            _ => panic!("{}: got {err:?}, want Meta({want:?})", super::hex(&bytes)),
        }
    }
}

/// The bytes of a varint.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Sequences and strings that claim far more elements than the frame holds fail quickly and
/// without allocating for the claimed count: decoding never allocates more than a frame's
/// worth at once, however large the claim.
#[test]
fn huge_claimed_lengths() {
    const CTX: [u8; 6] = [0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00];
    let huge = varint(1 << 40);
    assert_eq!(huge, [0x80, 0x80, 0x80, 0x80, 0x80, 0x20]); // 1 << 40 = 0x20 << 35
    let big_body = vec![0u8; 100_000];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "Forget with 2^40 pairs, 2 present",
            frame_bytes(4, 2, 1, 1, &[&CTX[..], &huge, &[1, 1, 2, 2]].concat(), &[]),
        ),
        (
            "Forget with u64::MAX pairs",
            frame_bytes(4, 2, 1, 1, &[&CTX[..], &varint(u64::MAX)].concat(), &[]),
        ),
        (
            // The claim equals the bytes left, but each pair needs two of them.
            "Forget with as many pairs as bytes",
            frame_bytes(
                4,
                2,
                1,
                1,
                &[&CTX[..], &varint(big_body.len() as u64), &big_body].concat(),
                &[],
            ),
        ),
        (
            "Ctx with 2^40 supplementary groups",
            frame_bytes(
                4,
                5,
                1,
                1,
                &[&[0xE8, 0x07, 0xE8, 0x07, 0x2A][..], &huge, &[1, 2, 3]].concat(),
                &[],
            ),
        ),
        (
            "Ctx with as many groups as bytes",
            frame_bytes(
                4,
                5,
                1,
                1,
                &[
                    &[0xE8, 0x07, 0xE8, 0x07, 0x2A][..],
                    &varint(big_body.len() as u64),
                    &big_body,
                ]
                .concat(),
                &[],
            ),
        ),
        (
            "Lookup with a 2^40-byte name",
            frame_bytes(
                4,
                1,
                1,
                1,
                &[&CTX[..], &[0x01], &huge, b"abc"].concat(),
                &[],
            ),
        ),
        (
            "Welcome with 2^40 exports",
            frame_bytes(2, 0, 0, 0, &[&[0x01, 0x00, 0x00][..], &huge].concat(), &[]),
        ),
        (
            "Welcome with a 2^40-byte server name",
            frame_bytes(
                2,
                0,
                0,
                0,
                &[&[0x01, 0x00, 0x00, 0x00][..], &huge].concat(),
                &[],
            ),
        ),
        (
            "Readdir reply with 2^40 entries",
            frame_bytes(5, 21, 1, 0, &[&huge[..], &[1, 1, 4, 0]].concat(), &[]),
        ),
        (
            "Readdirplus reply with 2^40 entries",
            frame_bytes(5, 22, 1, 0, &huge, &[]),
        ),
        (
            "Readdir reply with as many entries as bytes",
            frame_bytes(
                5,
                21,
                1,
                0,
                &[&varint(big_body.len() as u64)[..], &big_body].concat(),
                &[],
            ),
        ),
    ];
    for (what, bytes) in cases {
        let start = Instant::now();
        let (err, largest) = largest_allocation(|| {
            let f = Frame::parse(&bytes).unwrap();
            match f.header.kind {
                FrameKind::Request => RequestFrame::decode(&f).err(),
                FrameKind::Reply => ReplyFrame::decode(&f).err(),
                _ => Welcome::decode(&f).err(),
            }
        });
        let elapsed = start.elapsed();
        assert!(matches!(err, Some(DecodeError::Meta(_))), "{what}: {err:?}");
        assert!(
            largest <= MAX_FRAME as usize,
            "{what}: allocated {largest} bytes at once"
        );
        assert!(elapsed < Duration::from_secs(2), "{what}: took {elapsed:?}");
    }
}
