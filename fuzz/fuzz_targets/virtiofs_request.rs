//! Any bytes as a sequence of FUSE requests from a virtio-fs guest, through the real
//! `FuseServer` on a fresh temporary export: `abi::parse_request`, the `Args` cursor and every
//! opcode's argument parsing and handling. A request must get a reply or be dropped, never a
//! panic.
//!
//! Input: repeated `[len: u16 LE][request bytes]`. The request's own length field is set to
//! the length taken unless the top bit of `len` is set (then the raw bytes go in as they are,
//! to reach the length check). FALLOCATE is skipped: an arbitrary length would really fill
//! the disk this runs on.
#![no_main]

use ferry_host::virtiofs::FuseServer;
use ferry_host::virtiofs::abi::opcode;
use ferry_host::{Export, ExportConfig, ExportSession, IdPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary export");
    let export = Export::open(ExportConfig {
        name: "fuzz".into(),
        path: dir.path().to_path_buf(),
        read_only: false,
        ids: IdPolicy::passthrough(),
        devices: false,
        setid: false,
        acl: true,
    })
    .expect("export opens");
    let server = FuseServer::new(
        ExportSession::new(export).expect("a session starts"),
        std::time::Duration::from_secs(1),
    );
    let mut rest = data;
    while rest.len() >= 2 {
        let raw = u16::from_le_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        let len = usize::from(raw & 0x7fff).min(rest.len());
        let mut req = rest[..len].to_vec();
        rest = &rest[len..];
        if raw & 0x8000 == 0 && req.len() >= 4 {
            req[..4].copy_from_slice(&(len as u32).to_le_bytes());
        }
        if req.len() >= 8
            && u32::from_le_bytes([req[4], req[5], req[6], req[7]]) == opcode::FALLOCATE
        {
            continue;
        }
        let _ = server.handle(&req);
    }
});
