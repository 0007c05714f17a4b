//! Any bytes from a client, through the host's real connection loop: the Hello, then requests
//! on a temporary read-only export. No token is required (`Auth::none`), so an input that decodes as a Hello goes
//! on to the request loop (a token is compared as bytes after the Hello is decoded). The
//! connection must end with an error or cleanly, never panic or hang.
//!
//! Input: a first byte, then the bytes the client sends. An odd first byte sends a valid
//! Hello (every feature) before them, so the fuzzer spends its time on the request loop too.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};

use ferry_host::{Auth, Export, ExportConfig, IdPolicy, Limits, Peer, ServerState};
use ferry_protocol::{Hello, VERSION, features};
use libfuzzer_sys::fuzz_target;

/// One export for the whole run, in a directory that lives as long as the process.
fn export() -> &'static Arc<Export> {
    static EXPORT: OnceLock<(tempfile::TempDir, Arc<Export>)> = OnceLock::new();
    &EXPORT
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temporary export");
            let export = Export::open(ExportConfig {
                name: "fuzz".into(),
                path: dir.path().to_path_buf(),
                read_only: true,
                ids: IdPolicy::passthrough(),
                devices: false,
                setid: false,
                acl: true,
            })
            .expect("export opens");
            (dir, export)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let state = Arc::new(ServerState::new(
        vec![Arc::clone(export())],
        Auth::none(),
        Limits::default(),
    ));
    let (server, mut client) = UnixStream::pair().expect("socketpair");
    let mut reader = client.try_clone().expect("dup");
    // Whatever the server answers is read away, so it never blocks on a full socket.
    let drain = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        let hello = Hello {
            version: VERSION,
            features: features::ALL,
            token: None,
            client: "fuzz",
        };
        let mut frame = Vec::new();
        hello.encode(&mut frame).expect("a Hello encodes");
        let _ = client.write_all(&frame);
    }
    let _ = client.write_all(data);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = ferry_host::serve_connection(server, &state, &Peer::named("fuzz"));
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = drain.join();
});
