//! The client against an in-process fake server over `UnixStream::pair()`; the helpers are
//! shared with the crate's other tests.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use ferry_common::read_frame;
use ferry_protocol::{
    Ctx, Errno, ExportInfo, Frame, Getattr, Hello, Notice, Opcode, Read as ReadReq, Readlink,
    Refused, Reply, ReplyFrame, Request, RequestFrame, VERSION, Welcome, features,
};

use super::{Client, ClientConfig, ClientError, OwnedReply};

pub(crate) fn welcome(features: u64) -> Welcome {
    Welcome {
        version: VERSION,
        features,
        exports: vec![
            ExportInfo {
                id: 7,
                name: "data".into(),
                read_only: false,
                permissions: ferry_protocol::Permissions::Guest,
                wants_groups: false,
                flush_to_host: false,
            },
            ExportInfo {
                id: 9,
                name: "ro".into(),
                read_only: true,
                permissions: ferry_protocol::Permissions::Guest,
                wants_groups: false,
                flush_to_host: false,
            },
        ],
        server: "fake".into(),
    }
}

/// Reads one whole frame from a test stream.
pub(crate) fn read_one(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let len = read_frame(s, &mut buf).ok()??;
    buf.truncate(len);
    Some(buf)
}

/// Server side of the handshake: reads Hello, answers Welcome.
pub(crate) fn accept(s: &mut UnixStream, w: &Welcome) {
    let hello = read_one(s).expect("hello");
    let f = Frame::parse(&hello).unwrap();
    let h = Hello::decode(&f).unwrap();
    assert_eq!(h.version, VERSION);
    assert_eq!(h.features, features::ALL);
    let mut out = Vec::new();
    w.encode(&mut out).unwrap();
    s.write_all(&out).unwrap();
}

pub(crate) fn send_reply(s: &mut UnixStream, id: u64, op: Opcode, r: Result<Reply<'_>, Errno>) {
    let rf = ReplyFrame { id, op, result: r };
    let mut out = Vec::new();
    rf.encode(&mut out).unwrap();
    s.write_all(&out).unwrap();
    s.write_all(rf.payload()).unwrap();
}

fn cfg() -> ClientConfig {
    ClientConfig {
        token: Some(b"secret".to_vec()),
        client_name: "test".into(),
    }
}

fn getattr(ino: u64) -> Request<'static> {
    Request::Getattr(Getattr { ino, fh: None })
}

#[test]
fn out_of_order_replies_reach_their_callbacks() {
    let (client_end, mut server) = UnixStream::pair().unwrap();
    let srv = std::thread::spawn(move || {
        accept(&mut server, &welcome(0));
        let mut reqs = Vec::new();
        for _ in 0..3 {
            let bytes = read_one(&mut server).unwrap();
            let f = Frame::parse(&bytes).unwrap();
            let r = RequestFrame::decode(&f).unwrap();
            assert_eq!(r.export, 7);
            assert_eq!(r.ctx.uid, 1000);
            let Request::Getattr(g) = r.body else {
                panic!("unexpected {:?}", r.body)
            };
            reqs.push((r.id, g.ino));
        }
        for (id, ino) in reqs.into_iter().rev() {
            let attr = ferry_protocol::Attr {
                ino,
                size: ino * 10,
                ..Default::default()
            };
            send_reply(&mut server, id, Opcode::Getattr, Ok(Reply::Attr(attr)));
        }
        server
    });
    let client = Client::connect_unix(client_end, &cfg()).unwrap();
    assert_eq!(client.welcome().exports.len(), 2);
    let (tx, rx) = mpsc::channel();
    let ctx = Ctx {
        uid: 1000,
        gid: 1000,
        pid: 42,
        groups: vec![],
    };
    for ino in [1u64, 2, 3] {
        let tx = tx.clone();
        client.call(
            7,
            ctx.clone(),
            &getattr(ino),
            &[],
            Box::new(move |r| {
                let Ok(Reply::Attr(a)) = r else {
                    panic!("unexpected {r:?}")
                };
                tx.send((ino, a.ino, a.size)).unwrap();
            }),
        );
    }
    let mut got: Vec<_> = (0..3)
        .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    // Replies came in reverse order.
    assert_eq!(got[0].0, 3);
    got.sort();
    assert_eq!(got, vec![(1, 1, 10), (2, 2, 20), (3, 3, 30)]);
    let _server = srv.join().unwrap();
    client.shutdown();
    client.wait_closed();
    assert_eq!(
        client.call_blocking(7, ctx, &getattr(1), &[]),
        Err(Errno::ENOTCONN)
    );
}

#[test]
fn refused_handshake_is_typed() {
    let (client_end, mut server) = UnixStream::pair().unwrap();
    let srv = std::thread::spawn(move || {
        read_one(&mut server).unwrap();
        let mut out = Vec::new();
        Refused {
            errno: Errno::EACCES.0,
            reason: "bad token, go away".into(),
        }
        .encode(&mut out)
        .unwrap();
        server.write_all(&out).unwrap();
        server
    });
    let err = Client::connect_unix(client_end, &cfg()).unwrap_err();
    match &err {
        ClientError::Refused { errno, reason } => {
            assert_eq!(*errno, Errno::EACCES);
            assert_eq!(reason, "bad token, go away");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("bad token, go away"));
    srv.join().unwrap();
}

#[test]
fn version_mismatch_is_typed() {
    let (client_end, mut server) = UnixStream::pair().unwrap();
    let srv = std::thread::spawn(move || {
        let mut w = welcome(0);
        w.version.major += 1;
        accept(&mut server, &w);
        server
    });
    let err = Client::connect_unix(client_end, &cfg()).unwrap_err();
    assert!(matches!(err, ClientError::Version { .. }), "{err:?}");
    srv.join().unwrap();
}

#[test]
fn garbage_closes_and_fails_pending() {
    let (client_end, mut server) = UnixStream::pair().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let srv = std::thread::spawn(move || {
        accept(&mut server, &welcome(0));
        // Wait until both requests are in flight, then send garbage.
        read_one(&mut server).unwrap();
        read_one(&mut server).unwrap();
        go_rx.recv().unwrap();
        server.write_all(&[0xffu8; 24]).unwrap();
        server
    });
    let client = Client::connect_unix(client_end, &cfg()).unwrap();
    let (tx, rx) = mpsc::channel();
    for ino in [1u64, 2] {
        let tx = tx.clone();
        client.call(
            7,
            Ctx::default(),
            &getattr(ino),
            &[],
            Box::new(move |r| tx.send(r.map(OwnedReply::from)).unwrap()),
        );
    }
    go_tx.send(()).unwrap();
    for _ in 0..2 {
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            Err(Errno::ENOTCONN)
        );
    }
    assert!(client.wait_closed_timeout(Duration::from_secs(5)));
    assert!(client.is_closed());
    let _ = srv.join().unwrap();
}

#[test]
fn unknown_id_closes_connection() {
    let (client_end, mut server) = UnixStream::pair().unwrap();
    let srv = std::thread::spawn(move || {
        accept(&mut server, &welcome(0));
        send_reply(&mut server, 999, Opcode::Getattr, Err(Errno::ENOENT));
        server
    });
    let client = Client::connect_unix(client_end, &cfg()).unwrap();
    assert!(client.wait_closed_timeout(Duration::from_secs(5)));
    let _ = srv.join().unwrap();
}

#[test]
fn read_payload_arrives_intact_and_errors_pass_through() {
    let (client_end, mut server) = UnixStream::pair().unwrap();
    let data: Vec<u8> = (0..ferry_protocol::MAX_DATA)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let expect = data.clone();
    let srv = std::thread::spawn(move || {
        accept(&mut server, &welcome(0));
        // A notice first: it must be logged and ignored.
        let mut out = Vec::new();
        Notice::Shutdown {
            reason: "soon".into(),
        }
        .encode(&mut out)
        .unwrap();
        server.write_all(&out).unwrap();
        for _ in 0..3 {
            let bytes = read_one(&mut server).unwrap();
            let f = Frame::parse(&bytes).unwrap();
            let r = RequestFrame::decode(&f).unwrap();
            match r.body {
                Request::Read(rd) => {
                    assert_eq!(rd.size as usize, data.len());
                    send_reply(&mut server, r.id, Opcode::Read, Ok(Reply::Data(&data)));
                }
                Request::Write(_) => {
                    let n = r.payload.len() as u32;
                    assert!(r.payload.iter().all(|&b| b == 0xab));
                    send_reply(&mut server, r.id, Opcode::Write, Ok(Reply::Written(n)));
                }
                Request::Readlink(_) => {
                    send_reply(&mut server, r.id, Opcode::Readlink, Err(Errno::EINVAL));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        server
    });
    let client = Client::connect_unix(client_end, &cfg()).unwrap();
    let ctx = Ctx::default();
    let r = client.call_blocking(
        7,
        ctx.clone(),
        &Request::Read(ReadReq {
            ino: 2,
            fh: 1,
            offset: 0,
            size: expect.len() as u32,
        }),
        &[],
    );
    assert_eq!(r, Ok(OwnedReply::Data(expect)));
    let payload = vec![0xabu8; 300_000];
    let r = client.call_blocking(
        7,
        ctx.clone(),
        &Request::Write(ferry_protocol::Write {
            ino: 2,
            fh: 1,
            offset: 0,
            write_flags: 0,
            flags: 0,
        }),
        &payload,
    );
    assert_eq!(r, Ok(OwnedReply::Written(300_000)));
    let r = client.call_blocking(7, ctx, &Request::Readlink(Readlink { ino: 3 }), &[]);
    assert_eq!(r, Err(Errno::EINVAL));
    let _server = srv.join().unwrap();
    assert!(!client.is_closed());
    client.shutdown();
    client.wait_closed();
}

#[test]
fn server_eof_closes_client() {
    let (client_end, mut server) = UnixStream::pair().unwrap();
    let srv = std::thread::spawn(move || {
        accept(&mut server, &welcome(0));
        read_one(&mut server).unwrap();
        drop(server);
    });
    let client = Client::connect_unix(client_end, &cfg()).unwrap();
    let r = client.call_blocking(7, Ctx::default(), &getattr(1), &[]);
    assert_eq!(r, Err(Errno::ENOTCONN));
    client.wait_closed();
    srv.join().unwrap();
}
