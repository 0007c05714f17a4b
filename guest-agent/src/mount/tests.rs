//! Mounting against an in-process fake server. The tests that mount for real need root and
//! `/dev/fuse`, and say SKIPPED without them.

use super::*;
use crate::client::tests::{accept, read_one, send_reply, welcome};
use crate::client::{ClientConfig, OwnedReply};
use ferry_protocol::{
    Attr, DirEntry, DirEntryPlus, Entry, Errno, Frame, Opcode, Opened, Request, RequestFrame,
    Statfs,
};
use nix::mount::{MntFlags, umount2};
use std::io::Read as _;
use std::os::unix::net::UnixStream;

const CONTENT: &[u8] = b"hello from the host\n";

static SAW_READDIRPLUS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn attr(ino: u64) -> Attr {
    let (mode, size, nlink) = if ino == 1 {
        (libc::S_IFDIR | 0o755, 4096, 2)
    } else {
        (libc::S_IFREG | 0o644, CONTENT.len() as u64, 1)
    };
    Attr {
        ino,
        size,
        mode,
        nlink,
        blksize: 4096,
        ..Default::default()
    }
}

/// Answers like a host exporting a directory with one file, `hello.txt`.
fn answer(body: &Request<'_>) -> Option<Result<OwnedReply, Errno>> {
    Some(match body {
        Request::Forget(_) => return None,
        Request::Getattr(g) if g.ino <= 2 => Ok(OwnedReply::Attr(attr(g.ino))),
        Request::Lookup(l) if l.parent == 1 && l.name == b"hello.txt" => {
            Ok(OwnedReply::Entry(Entry {
                ino: 2,
                generation: 1,
                attr: attr(2),
            }))
        }
        Request::Lookup(_) => Err(Errno::ENOENT),
        Request::Opendir(_) | Request::Open(_) => Ok(OwnedReply::Opened(Opened {
            fh: 5,
            open_flags: 0,
        })),
        Request::Readdir(r) => {
            let all = [(1, 4, "."), (1, 4, ".."), (2, 8, "hello.txt")];
            Ok(OwnedReply::Dir(
                all.iter()
                    .enumerate()
                    .skip(r.offset as usize)
                    .map(|(i, &(ino, kind, name))| DirEntry {
                        ino,
                        offset: i as u64 + 1,
                        kind,
                        name: name.as_bytes().to_vec(),
                    })
                    .collect(),
            ))
        }
        Request::Readdirplus(r) => {
            SAW_READDIRPLUS.store(true, std::sync::atomic::Ordering::SeqCst);
            let dot = |name: &str| DirEntryPlus {
                entry: Entry::default(),
                offset: 0,
                kind: libc::DT_DIR,
                name: name.as_bytes().to_vec(),
            };
            let file = DirEntryPlus {
                entry: Entry {
                    ino: 2,
                    generation: 1,
                    attr: attr(2),
                },
                offset: 0,
                kind: libc::DT_REG,
                name: b"hello.txt".to_vec(),
            };
            let all = [dot("."), dot(".."), file];
            Ok(OwnedReply::DirPlus(
                all.into_iter()
                    .enumerate()
                    .skip(r.offset as usize)
                    .map(|(i, mut e)| {
                        e.offset = i as u64 + 1;
                        e
                    })
                    .collect(),
            ))
        }
        Request::Read(r) => {
            let start = (r.offset as usize).min(CONTENT.len());
            let end = (start + r.size as usize).min(CONTENT.len());
            Ok(OwnedReply::Data(CONTENT[start..end].to_vec()))
        }
        Request::Releasedir(_) | Request::Release(_) | Request::Flush(_) => Ok(OwnedReply::Empty),
        Request::Access(_) => Ok(OwnedReply::Empty),
        Request::StatfsReq(_) => Ok(OwnedReply::Statfs(Statfs {
            blocks: 100,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
            ..Default::default()
        })),
        _ => Err(Errno::ENOSYS),
    })
}

fn fake_server(s: UnixStream) {
    fake_server_with(s, 0)
}

fn fake_server_with(mut s: UnixStream, features: u64) {
    accept(&mut s, &welcome(features));
    while let Some(bytes) = read_one(&mut s) {
        let f = Frame::parse(&bytes).unwrap();
        let r = RequestFrame::decode(&f).unwrap();
        assert!(r.export == 7 || r.export == 9, "export {}", r.export);
        let op: Opcode = r.body.opcode();
        if let Some(result) = answer(&r.body) {
            let result = result.as_ref().map(|o| o.as_reply()).map_err(|e| *e);
            send_reply(&mut s, r.id, op, result);
        }
    }
}

#[test]
fn unknown_export_lists_available() {
    let (client_end, server) = UnixStream::pair().unwrap();
    let srv = std::thread::spawn(move || fake_server(server));
    let client = Client::connect_unix(client_end, &ClientConfig::default()).unwrap();
    let err = mount(client.clone(), &MountOptions::new("nope", "/nonexistent")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"nope\"") && msg.contains("data, ro"),
        "{msg}"
    );
    client.shutdown();
    srv.join().unwrap();
}

/// Root and /dev/fuse are needed to mount; without them a test says SKIPPED loudly.
fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists() && nix::unistd::geteuid().is_root();
    if !ok {
        eprintln!("\n*** SKIPPED: needs root and /dev/fuse (CI has both) ***\n");
    }
    ok
}

#[test]
fn fuse_mount_lists_reads_and_unmounts() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client_end, server) = UnixStream::pair().unwrap();
    let srv = std::thread::spawn(move || fake_server(server));
    let client = Client::connect_unix(client_end, &ClientConfig::default()).unwrap();
    let opts = MountOptions::new("data", dir.path());
    // With root and /dev/fuse present, failing to mount is a failure, not a skip.
    let handle = mount(client.clone(), &opts).expect("mounts");
    assert_eq!(handle.mountpoint(), dir.path());
    assert!(!handle.is_finished());

    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["hello.txt".to_string()]);
    let path = dir.path().join("hello.txt");
    assert_eq!(std::fs::read(&path).unwrap(), CONTENT);
    let md = std::fs::metadata(&path).unwrap();
    assert_eq!(md.len(), CONTENT.len() as u64);
    assert!(md.is_file());
    let err = std::fs::metadata(dir.path().join("missing")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    // Unsupported operations come back as the server's errno.
    let err = std::fs::create_dir(dir.path().join("newdir")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSYS));

    // An open file keeps the session alive after the detach: unmount must not hang.
    let mut open = std::fs::File::open(&path).unwrap();
    let started = Instant::now();
    handle.unmount().unwrap();
    assert!(started.elapsed() < UNMOUNT_WAIT + Duration::from_secs(2));
    // The detached mount still serves the open file.
    let mut buf = Vec::new();
    open.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, CONTENT);
    drop(open);

    // The mountpoint is a plain directory again.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    client.shutdown();
    srv.join().unwrap();
}

#[test]
fn fuse_unmount_without_open_files_joins_session() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client_end, server) = UnixStream::pair().unwrap();
    let srv = std::thread::spawn(move || fake_server(server));
    let client = Client::connect_unix(client_end, &ClientConfig::default()).unwrap();
    let handle = mount(client.clone(), &MountOptions::new("ro", dir.path())).expect("mounts");
    assert_eq!(
        std::fs::read(dir.path().join("hello.txt")).unwrap(),
        CONTENT
    );
    // The export is read-only: the mount is too.
    let err = std::fs::write(dir.path().join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let started = Instant::now();
    let finished = {
        let h = &handle;
        umount2(h.mountpoint(), MntFlags::MNT_DETACH).unwrap();
        h.wait_timeout(Duration::from_secs(5))
    };
    assert!(finished, "session did not end after the detach");
    assert!(handle.is_finished());
    handle.unmount().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    client.shutdown();
    srv.join().unwrap();
}

#[test]
fn serve_with_readdirplus_until_shutdown() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client_end, server) = UnixStream::pair().unwrap();
    let srv =
        std::thread::spawn(move || fake_server_with(server, ferry_protocol::features::READDIRPLUS));
    let config = crate::AgentConfig {
        connect: crate::ConnectAddr::Unix("socketpair".into()),
        token: None,
        mounts: vec![("data".into(), dir.path().to_path_buf())],
        ttl: Duration::from_millis(200),
        cache: crate::CacheMode::Cached,
        connect_timeout: Duration::ZERO,
        permissions: None,
        allow_other: None,
        nonempty: false,
        reconnect_timeout: Duration::ZERO,
    };
    let (stop, shutdown) = std::sync::mpsc::channel();
    let agent = std::thread::spawn(move || crate::serve_stream(client_end, &config, shutdown));
    // Wait for the mount to appear.
    let deadline = Instant::now() + Duration::from_secs(10);
    let names = loop {
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        if !names.is_empty() || Instant::now() > deadline {
            break names;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(names, vec!["hello.txt".to_string()]);
    assert!(SAW_READDIRPLUS.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(
        std::fs::read(dir.path().join("hello.txt")).unwrap(),
        CONTENT
    );
    let vfs = nix::sys::statvfs::statvfs(dir.path()).unwrap();
    assert_eq!(vfs.blocks(), 100);
    stop.send(()).unwrap();
    agent.join().unwrap().unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // The agent closed the connection: the fake server saw EOF.
    srv.join().unwrap();
}
