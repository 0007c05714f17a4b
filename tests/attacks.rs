//! A hostile guest talking straight to ferry-host: path escapes, forged ids, garbage bytes.
//! Nothing outside the export may be read or written, the guest gets errors, and the server
//! keeps serving everyone else.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use ferry_protocol::*;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::harness::{host_command, terminate, wait_until};

/// A ferry-host process serving one export on a Unix socket, logging to a file.
pub struct HostProc {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl HostProc {
    /// Serves `<dir>/export` (created) as `ex`; extra exports are `NAME=PATH` strings.
    pub fn start(extra: &[String]) -> HostProc {
        Self::start_with(extra, &[])
    }

    /// As [`HostProc::start`], with more `ferry-host` arguments.
    pub fn start_with(extra: &[String], args: &[&str]) -> HostProc {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("export")).unwrap();
        let sock = dir.path().join("ferry.sock");
        let log = dir.path().join("host.log");
        let mut cmd = host_command(
            &dir.path().join("export"),
            &format!("unix:{}", sock.display()),
        );
        for e in extra {
            cmd.arg("--export").arg(e);
        }
        cmd.args(args);
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Ready once it says it listens (its socket is bound and listening by then). Not by
        // connecting: a probe connection would live on in the server for a while, and tests
        // that count the server's connections or descriptors would count it too.
        let said = format!("listening on unix:{}", sock.display());
        let listening = wait_until(Duration::from_secs(20), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&said))
                || child.try_wait().unwrap().is_some()
        });
        assert!(
            listening && child.try_wait().unwrap().is_none(),
            "ferry-host did not listen:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        HostProc {
            dir,
            sock,
            log,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn export(&self) -> PathBuf {
        self.dir.path().join("export")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a raw request got back, owned.
#[derive(Debug)]
pub enum Got {
    Entry(Entry),
    Data(Vec<u8>),
    Opened(u64),
    OpenedData(Vec<u8>),
    /// Shown in assertion messages through `Debug`.
    Other(#[allow(dead_code)] String),
}

/// A blocking, one-request-at-a-time protocol client.
pub struct Raw {
    pub s: UnixStream,
    next: u64,
}

impl Raw {
    pub fn connect(sock: &Path) -> Raw {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut out = Vec::new();
        Hello {
            version: VERSION,
            features: features::ALL,
            token: Some(crate::harness::TOKEN.as_bytes()),
            client: "attack test",
        }
        .encode(&mut out)
        .unwrap();
        s.write_all(&out).unwrap();
        let buf = read_frame(&mut s).expect("welcome");
        Welcome::decode(&Frame::parse(&buf).unwrap()).expect("a Welcome frame");
        Raw { s, next: 1 }
    }

    pub fn call(&mut self, body: Request<'_>, payload: &[u8]) -> Result<Got, Errno> {
        self.next += 1;
        let op = body.opcode();
        let mut out = Vec::new();
        RequestFrame {
            id: self.next,
            export: 0,
            ctx: Ctx::default(),
            body,
            payload,
        }
        .encode(&mut out)
        .unwrap();
        self.s.write_all(&out).unwrap();
        self.s.write_all(payload).unwrap();
        if op == Opcode::Forget {
            return Ok(Got::Other("no reply".into()));
        }
        let buf = read_frame(&mut self.s).expect("a reply");
        let r = ReplyFrame::decode(&Frame::parse(&buf).unwrap()).unwrap();
        assert_eq!(r.id, self.next);
        r.result.map(|reply| match reply {
            Reply::Entry(e) => Got::Entry(e),
            Reply::Data(d) => Got::Data(d.to_vec()),
            Reply::Opened(o) => Got::Opened(o.fh),
            Reply::OpenedData(_, d) => Got::OpenedData(d.to_vec()),
            other => Got::Other(format!("{other:?}")),
        })
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<Entry, Errno> {
        match self.call(Request::Lookup(Lookup { parent, name }), &[])? {
            Got::Entry(e) => Ok(e),
            other => panic!("lookup answered {other:?}"),
        }
    }
}

/// Reads one frame; `None` when the server closed the connection.
pub fn read_frame(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).ok()?;
    let h = FrameHeader::parse(&head).ok()?;
    let mut buf = vec![0u8; h.len as usize];
    buf[..HEADER_LEN].copy_from_slice(&head);
    s.read_exact(&mut buf[HEADER_LEN..]).ok()?;
    Some(buf)
}

/// Asserts that the server closes `s` (EOF) within a few seconds.
fn assert_closed(s: &mut UnixStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: expected the server to close the connection, got {other:?}"),
    }
}

#[test]
fn path_escapes_are_refused() {
    let host = HostProc::start(&[]);
    let ex = host.export();
    let outside = host.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"top secret").unwrap();
    std::fs::write(ex.join("inside"), b"fine").unwrap();
    std::os::unix::fs::symlink("/", ex.join("to_root")).unwrap();
    std::os::unix::fs::symlink("../..", ex.join("up")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", ex.join("to_secret")).unwrap();
    std::fs::create_dir(ex.join("sub")).unwrap();

    // Any open or read of the outside directory's contents shows up here.
    let ino = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    ino.add_watch(
        &outside,
        AddWatchFlags::IN_OPEN | AddWatchFlags::IN_ACCESS | AddWatchFlags::IN_MODIFY,
    )
    .unwrap();

    let mut c = Raw::connect(&host.sock);
    // Names that are not a single component never resolve.
    for name in [
        &b".."[..],
        b".",
        b"",
        b"sub/..",
        b"../outside",
        b"/etc",
        b"a\0b",
    ] {
        let r = c.lookup(1, name);
        assert_eq!(
            r.err(),
            Some(Errno::EINVAL),
            "lookup of {:?}",
            String::from_utf8_lossy(name)
        );
    }
    let sub = c.lookup(1, b"sub").unwrap();
    assert_eq!(c.lookup(sub.ino, b"..").err(), Some(Errno::EINVAL));
    for name in [&b"/etc/passwd"[..], b"../../etc/passwd"] {
        let r = c.call(
            Request::Create(Create {
                parent: 1,
                name,
                mode: 0o644,
                umask: 0,
                flags: libc::O_RDWR,
            }),
            &[],
        );
        assert_eq!(r.err(), Some(Errno::EINVAL));
        let r = c.call(
            Request::Mkdir(Mkdir {
                parent: 1,
                name,
                mode: 0o755,
                umask: 0,
            }),
            &[],
        );
        assert_eq!(r.err(), Some(Errno::EINVAL));
        let r = c.call(
            Request::Rename(Rename {
                parent: 1,
                name: b"inside",
                newparent: 1,
                newname: name,
                flags: 0,
            }),
            &[],
        );
        assert_eq!(r.err(), Some(Errno::EINVAL));
    }

    // Symlinks are nodes of their own; the server never follows them.
    for (link, target) in [
        (&b"to_root"[..], "/"),
        (b"up", "../.."),
        (b"to_secret", "../outside/secret"),
    ] {
        let e = c.lookup(1, link).unwrap();
        assert_eq!(
            e.attr.mode & libc::S_IFMT,
            libc::S_IFLNK,
            "{link:?} is a symlink node"
        );
        match c
            .call(Request::Readlink(Readlink { ino: e.ino }), &[])
            .unwrap()
        {
            Got::Data(d) => assert_eq!(d, target.as_bytes()),
            other => panic!("readlink answered {other:?}"),
        }
        for name in [&b"etc"[..], b"outside", b"secret", b"passwd"] {
            assert!(
                c.lookup(e.ino, name).is_err(),
                "lookup under the symlink {link:?}"
            );
        }
        for flags in [
            libc::O_RDONLY,
            libc::O_RDWR,
            libc::O_RDONLY | libc::O_DIRECTORY,
        ] {
            let r = c.call(
                Request::Open(Open {
                    ino: e.ino,
                    flags,
                    prefetch: 4096,
                }),
                &[],
            );
            assert!(
                r.is_err(),
                "open of symlink {link:?} with {flags:#x} gave {r:?}"
            );
        }
        let r = c.call(
            Request::Opendir(Opendir {
                ino: e.ino,
                flags: 0,
            }),
            &[],
        );
        assert!(r.is_err(), "opendir of symlink {link:?} gave {r:?}");
        let r = c.call(
            Request::Create(Create {
                parent: e.ino,
                name: b"x",
                mode: 0o644,
                umask: 0,
                flags: libc::O_RDWR,
            }),
            &[],
        );
        assert!(r.is_err(), "create under symlink {link:?} gave {r:?}");
    }

    // Forged node ids and handles.
    for ino in [0u64, 2, 999_999, u64::MAX] {
        if ino == 2 {
            continue; // may be a real node
        }
        assert!(
            c.call(Request::Getattr(Getattr { ino, fh: None }), &[])
                .is_err(),
            "getattr {ino}"
        );
        assert!(
            c.lookup(ino, b"inside").is_err(),
            "lookup under forged {ino}"
        );
        assert!(
            c.call(
                Request::Open(Open {
                    ino,
                    flags: 0,
                    prefetch: 4096
                }),
                &[]
            )
            .is_err(),
            "open {ino}"
        );
    }
    let inside = c.lookup(1, b"inside").unwrap();
    for fh in [0u64, 12345, u64::MAX] {
        let r = c.call(
            Request::Read(ferry_protocol::Read {
                ino: inside.ino,
                fh,
                offset: 0,
                size: 100,
            }),
            &[],
        );
        assert!(r.is_err(), "read through forged handle {fh} gave {r:?}");
        let r = c.call(
            Request::Write(ferry_protocol::Write {
                ino: inside.ino,
                fh,
                offset: 0,
                write_flags: 0,
                flags: 0,
            }),
            b"owned",
        );
        assert!(r.is_err(), "write through forged handle {fh} gave {r:?}");
        let r = c.call(
            Request::Readdir(Readdir {
                ino: 1,
                fh,
                offset: 0,
                size: 4096,
            }),
            &[],
        );
        assert!(r.is_err(), "readdir through forged handle {fh} gave {r:?}");
    }
    // Forgetting more than was looked up must not free the root or crash anything. (Forget is
    // one-way and may be served after later requests, so it names a node not used again.)
    c.call(
        Request::Forget(Forget {
            nodes: vec![(1, 1_000_000), (sub.ino, 99), (777, 1)],
        }),
        &[],
    )
    .unwrap();

    // The server still serves, and the content inside the export is reachable.
    let inside = c.lookup(1, b"inside").unwrap();
    let fh = match c
        .call(
            Request::Open(Open {
                prefetch: 0,
                ino: inside.ino,
                flags: libc::O_RDONLY,
            }),
            &[],
        )
        .unwrap()
    {
        Got::Opened(fh) => fh,
        other => panic!("open answered {other:?}"),
    };
    match c
        .call(
            Request::Read(ferry_protocol::Read {
                ino: inside.ino,
                fh,
                offset: 0,
                size: 100,
            }),
            &[],
        )
        .unwrap()
    {
        Got::Data(d) => assert_eq!(d, b"fine"),
        other => panic!("read answered {other:?}"),
    }

    // A read-only open carries the file's first bytes; a writing open never does.
    let r = c.call(
        Request::Open(Open {
            ino: inside.ino,
            flags: libc::O_RDONLY,
            prefetch: 3,
        }),
        &[],
    );
    assert!(
        matches!(r, Ok(Got::OpenedData(ref d)) if d == b"fin"),
        "{r:?}"
    );
    let r = c.call(
        Request::Open(Open {
            ino: inside.ino,
            flags: libc::O_RDWR,
            prefetch: 4096,
        }),
        &[],
    );
    assert!(matches!(r, Ok(Got::Opened(_))), "{r:?}");

    let mut buf = [0u8; 4096];
    let events: Vec<_> = match ino.read_events() {
        Ok(ev) => ev,
        Err(nix::errno::Errno::EAGAIN) => Vec::new(),
        Err(e) => panic!("inotify: {e}"),
    };
    let _ = &mut buf;
    assert!(
        events.is_empty(),
        "something outside the export was touched: {events:?}"
    );
    assert_eq!(
        std::fs::read(outside.join("secret")).unwrap(),
        b"top secret"
    );
    assert!(host.stop().success());
}

#[test]
fn malformed_input_closes_only_that_connection() {
    let host = HostProc::start(&[]);
    std::fs::write(host.export().join("f"), b"still here").unwrap();
    let mut good = Raw::connect(&host.sock);

    let valid_header = |len: u32, kind: u8, op: u16, meta_len: u32| {
        let mut h = Vec::new();
        h.extend_from_slice(&len.to_le_bytes());
        h.push(kind);
        h.push(0);
        h.extend_from_slice(&op.to_le_bytes());
        h.extend_from_slice(&7u64.to_le_bytes());
        h.extend_from_slice(&meta_len.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h
    };
    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        (
            "garbage before the handshake",
            false,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("garbage after the handshake", true, vec![0xff; 64]),
        ("absurd length", true, valid_header(u32::MAX, 4, 1, 0)),
        ("length below the header", true, valid_header(3, 4, 1, 0)),
        ("unknown opcode", true, valid_header(24, 4, 999, 0)),
        ("unknown frame kind", true, valid_header(24, 77, 1, 0)),
        ("meta past the end", true, valid_header(30, 4, 1, 100)),
        ("undecodable meta", true, {
            let mut v = valid_header(24 + 4, 4, 1, 4);
            v.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
            v
        }),
        ("a second hello", true, {
            let mut v = Vec::new();
            Hello {
                version: VERSION,
                features: 0,
                token: None,
                client: "again",
            }
            .encode(&mut v)
            .unwrap();
            v
        }),
    ];
    for (what, handshake, bytes) in cases {
        let mut s = if handshake {
            Raw::connect(&host.sock).s
        } else {
            UnixStream::connect(&host.sock).unwrap()
        };
        s.write_all(&bytes).unwrap();
        assert_closed(&mut s, what);
        // Everyone else is still served.
        let e = good.lookup(1, b"f").unwrap();
        assert_eq!(e.attr.size, 10, "after {what}");
    }

    // A frame cut short by the peer going away.
    let mut s = Raw::connect(&host.sock).s;
    let mut v = Vec::new();
    RequestFrame {
        id: 9,
        export: 0,
        ctx: Ctx::default(),
        body: Request::Lookup(Lookup {
            parent: 1,
            name: b"f",
        }),
        payload: &[],
    }
    .encode(&mut v)
    .unwrap();
    s.write_all(&v[..v.len() - 2]).unwrap();
    drop(s);

    // A request for an export id that does not exist is an error reply, not a crash.
    good.next += 1;
    let mut v = Vec::new();
    RequestFrame {
        id: good.next,
        export: 42,
        ctx: Ctx::default(),
        body: Request::Getattr(Getattr { ino: 1, fh: None }),
        payload: &[],
    }
    .encode(&mut v)
    .unwrap();
    good.s.write_all(&v).unwrap();
    let buf = read_frame(&mut good.s).unwrap();
    let r = ReplyFrame::decode(&Frame::parse(&buf).unwrap()).unwrap();
    assert!(r.result.is_err());

    assert!(good.lookup(1, b"f").is_ok());
    let log = host.log();
    assert!(
        log.contains("closing connection"),
        "server log names the reason:\n{log}"
    );
    assert!(
        log.contains("frame"),
        "server log names the frame problem:\n{log}"
    );
    assert!(host.stop().success());
}
