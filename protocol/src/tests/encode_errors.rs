//! What the encoders refuse: replies that do not match the opcode, payloads on requests other
//! than `Write`, errno values that are not errors, and frames over the size limit.

use super::golden::CTX;
use super::golden_requests::request_table;
use crate::*;

/// One reply of each variant.
fn one_of_each() -> Vec<Reply<'static>> {
    vec![
        Reply::Empty,
        Reply::Entry(Entry::default()),
        Reply::Attr(Attr::default()),
        Reply::Data(b"d"),
        Reply::Opened(Opened::default()),
        Reply::OpenedData(Opened::default(), b"x"),
        Reply::Created(Created::default()),
        Reply::Written(1),
        Reply::Dir(vec![]),
        Reply::DirPlus(vec![]),
        Reply::Statfs(Statfs::default()),
        Reply::XattrSize(1),
        Reply::Offset(1),
        Reply::Lock(Lock::default()),
    ]
}

fn variant(r: &Reply<'_>) -> &'static str {
    match r {
        Reply::Empty => "Empty",
        Reply::Entry(_) => "Entry",
        Reply::Attr(_) => "Attr",
        Reply::Data(_) => "Data",
        Reply::Opened(_) => "Opened",
        Reply::OpenedData(..) => "OpenedData",
        Reply::Created(_) => "Created",
        Reply::Written(_) => "Written",
        Reply::Dir(_) => "Dir",
        Reply::DirPlus(_) => "DirPlus",
        Reply::Statfs(_) => "Statfs",
        Reply::XattrSize(_) => "XattrSize",
        Reply::Offset(_) => "Offset",
        Reply::Lock(_) => "Lock",
    }
}

/// The reply variants each reply kind accepts, written out independently of the encoder.
fn accepted(kind: ReplyKind) -> &'static [&'static str] {
    match kind {
        ReplyKind::None => &[],
        ReplyKind::Empty => &["Empty"],
        ReplyKind::Entry => &["Entry"],
        ReplyKind::Attr => &["Attr"],
        ReplyKind::Data => &["Data"],
        ReplyKind::Opened => &["Opened", "OpenedData"],
        ReplyKind::Created => &["Created"],
        ReplyKind::Written => &["Written"],
        ReplyKind::Dir => &["Dir"],
        ReplyKind::DirPlus => &["DirPlus"],
        ReplyKind::Statfs => &["Statfs"],
        ReplyKind::Xattr => &["XattrSize", "Data"],
        ReplyKind::Offset => &["Offset"],
        ReplyKind::Lock => &["Lock"],
    }
}

/// Every opcode against every reply variant: the matching ones encode, the rest are
/// `ReplyMismatch(op)`.
#[test]
fn reply_mismatch() {
    let mut out = Vec::new();
    for &op in Opcode::ALL {
        for reply in one_of_each() {
            let name = variant(&reply);
            let frame = ReplyFrame {
                id: 1,
                op,
                result: Ok(reply),
            };
            let res = frame.encode(&mut out);
            if accepted(op.reply_kind()).contains(&name) {
                assert!(res.is_ok(), "{op:?} {name}: {res:?}");
            } else {
                assert!(
                    matches!(res, Err(EncodeError::ReplyMismatch(o)) if o == op),
                    "{op:?} {name}: {res:?}"
                );
            }
        }
    }
}

/// `Forget` has no reply, not even an error.
#[test]
fn error_reply_to_forget() {
    let frame = ReplyFrame {
        id: 1,
        op: Opcode::Forget,
        result: Err(Errno::ENOENT),
    };
    let res = frame.encode(&mut Vec::new());
    assert!(
        matches!(res, Err(EncodeError::ReplyMismatch(Opcode::Forget))),
        "{res:?}"
    );
}

#[test]
fn payload_on_request_other_than_write() {
    let mut out = Vec::new();
    for (_, mut req) in request_table() {
        req.payload = b"x";
        let res = req.encode(&mut out);
        if req.body.opcode() == Opcode::Write {
            assert!(res.is_ok());
        } else {
            assert!(
                matches!(res, Err(EncodeError::UnexpectedPayload)),
                "{:?}: {res:?}",
                req.body.opcode()
            );
        }
    }
}

#[test]
fn errno_that_is_not_an_error() {
    for e in [0, -1, -5, i32::MIN] {
        let frame = ReplyFrame {
            id: 1,
            op: Opcode::Read,
            result: Err(Errno(e)),
        };
        let res = frame.encode(&mut Vec::new());
        assert!(
            matches!(res, Err(EncodeError::BadErrno(x)) if x == e),
            "{e}: {res:?}"
        );
    }
}

/// A frame may be exactly `MAX_FRAME` bytes, payload included, and not one more.
#[test]
fn frame_size_limit() {
    let big = vec![0u8; MAX_FRAME as usize];
    let write = |payload| RequestFrame {
        id: 1,
        export: 0,
        ctx: CTX,
        body: Request::Write(Write {
            ino: 5,
            fh: 3,
            offset: 0,
            write_flags: 0,
            flags: 1,
        }),
        payload,
    };
    let mut out = Vec::new();
    write(&[]).encode(&mut out).unwrap();
    let room = MAX_FRAME as usize - out.len();
    write(&big[..room]).encode(&mut out).unwrap();
    assert_eq!(
        Frame::parse(&[&out[..], &big[..room]].concat())
            .unwrap()
            .header
            .len,
        MAX_FRAME
    );
    let res = write(&big[..room + 1]).encode(&mut out);
    assert!(
        matches!(res, Err(EncodeError::TooLarge(n)) if n == MAX_FRAME as usize + 1),
        "{res:?}"
    );

    let read = |d| ReplyFrame {
        id: 1,
        op: Opcode::Read,
        result: Ok(Reply::Data(d)),
    };
    read(&big[..MAX_FRAME as usize - HEADER_LEN])
        .encode(&mut out)
        .unwrap();
    let res = read(&big[..MAX_FRAME as usize - HEADER_LEN + 1]).encode(&mut out);
    assert!(matches!(res, Err(EncodeError::TooLarge(_))), "{res:?}");

    // Meta alone can be too large too.
    let welcome = Welcome {
        version: VERSION,
        features: 0,
        exports: vec![],
        server: "x".repeat(MAX_FRAME as usize),
    };
    let res = welcome.encode(&mut out);
    assert!(matches!(res, Err(EncodeError::TooLarge(_))), "{res:?}");
}
