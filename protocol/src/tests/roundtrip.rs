//! Round trips: arbitrary message → encode → `Frame::parse` → decode == original, and the
//! re-encoding is byte-identical (both through [`check`]).

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use super::strategies::*;
use super::{Wire, check, encode_full};
use crate::*;

const CASES_PER_OPCODE: u32 = 64;

/// Runs `test` on values from `strategy_for(op)` for each opcode in `ops`, so that every
/// opcode gets its own cases rather than a share of a random pick.
fn each_opcode<T: std::fmt::Debug>(
    ops: &[Opcode],
    strategy_for: impl Fn(Opcode) -> BoxedStrategy<T>,
    test: impl Fn(T),
) {
    for &op in ops {
        let mut runner = TestRunner::new(Config {
            cases: CASES_PER_OPCODE,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&strategy_for(op), |msg| {
                test(msg);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{op:?}: {e}"));
    }
}

#[test]
fn every_opcode_has_its_own_index() {
    for (i, op) in Opcode::ALL.iter().enumerate() {
        assert_eq!(op.index(), i, "{op:?}");
    }
}

#[test]
fn requests_of_every_opcode() {
    each_opcode(Opcode::ALL, request_frame_for, |req| {
        let bytes = encode_full(&req);
        check(&bytes, req);
    });
}

#[test]
fn replies_to_every_opcode() {
    each_opcode(&replied_ops(), reply_frame_for, |rep| {
        let bytes = encode_full(&rep);
        check(&bytes, rep);
    });
}

/// Every reply kind's strategy produces that kind (guards the strategies themselves).
#[test]
fn reply_strategies_match_reply_kinds() {
    let mut runner = TestRunner::deterministic();
    for op in replied_ops() {
        for _ in 0..16 {
            let reply = reply_ok(op)
                .unwrap()
                .new_tree(&mut runner)
                .unwrap()
                .current();
            let frame = ReplyFrame {
                id: 0,
                op,
                result: Ok(reply),
            };
            frame
                .encode(&mut Vec::new())
                .unwrap_or_else(|e| panic!("{op:?}: {e}"));
        }
    }
    assert!(reply_ok(Opcode::Forget).is_none());
}

/// A frame encoded into a buffer that already holds bytes comes out the same.
fn encodes_into_dirty_buffer<'a, T: Wire<'a>>(msg: &T, garbage: &[u8]) {
    let mut out = garbage.to_vec();
    msg.wire_encode(&mut out).unwrap();
    out.extend_from_slice(msg.payload());
    assert_eq!(out, encode_full(msg));
}

proptest! {
    #[test]
    fn request(req in request_frame(), garbage in bytes(64)) {
        encodes_into_dirty_buffer(&req, garbage);
        let bytes = encode_full(&req);
        check(&bytes, req);
    }

    #[test]
    fn reply(rep in reply_frame(), garbage in bytes(64)) {
        encodes_into_dirty_buffer(&rep, garbage);
        let bytes = encode_full(&rep);
        check(&bytes, rep);
    }

    #[test]
    fn hello(msg in super::strategies::hello()) {
        let bytes = encode_full(&msg);
        check(&bytes, msg);
    }

    #[test]
    fn welcome(msg in super::strategies::welcome()) {
        let bytes = encode_full(&msg);
        check(&bytes, msg);
    }

    #[test]
    fn refused(msg in super::strategies::refused()) {
        let bytes = encode_full(&msg);
        check(&bytes, msg);
    }

    #[test]
    fn notice(msg in super::strategies::notice()) {
        let bytes = encode_full(&msg);
        check(&bytes, msg);
    }

    /// The header alone: any valid header survives `to_bytes` → `parse`.
    #[test]
    fn header(
        kind in prop::sample::select(&[
            FrameKind::Hello, FrameKind::Welcome, FrameKind::Refused,
            FrameKind::Request, FrameKind::Reply, FrameKind::Notify,
        ][..]),
        len in HEADER_LEN as u32..=MAX_FRAME,
        meta_frac in 0.0..=1.0f64,
        op in any::<u16>(),
        id in any::<u64>(),
        aux in any::<u32>(),
    ) {
        let meta_len = ((len as usize - HEADER_LEN) as f64 * meta_frac) as u32;
        let h = FrameHeader { len, kind, op, id, meta_len, aux };
        prop_assert_eq!(FrameHeader::parse(&h.to_bytes()).unwrap(), h);
        prop_assert_eq!(h.payload_len(), len as usize - HEADER_LEN - meta_len as usize);
    }
}
