//! Path safety under races: while a client resolves and opens names, a host process keeps
//! swapping a directory of the export for a symlink to `/`. Nothing outside the export is ever
//! opened: every lookup is one component below a node's own descriptor, never following a
//! symlink, so a swapped name yields the symlink itself (ENOTDIR below it) or the real
//! directory, wherever it has moved.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_protocol::{Errno, Forget, Open, Request};

use crate::attacks::{Got, HostProc, Raw};
use crate::harness::skip_or_fail;

#[test]
fn swapping_a_directory_for_a_symlink_to_root_never_escapes() {
    // A canary outside every export, where a resolution that followed the swapped symlink
    // would land.
    let name = format!("ferry-race-canary-{}", std::process::id());
    let outside = std::path::Path::new("/").join(&name);
    if let Err(e) = fs::write(&outside, b"OUTSIDE") {
        skip_or_fail(&format!(
            "needs to plant a canary at {} (as root): {e}",
            outside.display()
        ));
        return;
    }
    let host = HostProc::start(&[]);
    let ex = host.export();
    fs::create_dir(ex.join("d")).unwrap();
    fs::write(ex.join("d").join(&name), b"inside").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, ex) = (Arc::clone(&stop), ex.clone());
        std::thread::spawn(move || {
            let (d, real) = (ex.join("d"), ex.join("d.real"));
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                fs::rename(&d, &real).unwrap();
                std::os::unix::fs::symlink("/", &d).unwrap();
                std::thread::yield_now();
                fs::remove_file(&d).unwrap();
                fs::rename(&real, &d).unwrap();
                swaps += 1;
            }
            swaps
        })
    };

    let mut c = Raw::connect(&host.sock);
    let (mut inside, mut refused) = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let Ok(d) = c.lookup(1, b"d") else {
            refused += 1;
            continue;
        };
        match c.lookup(d.ino, name.as_bytes()) {
            Ok(f) => {
                let got = c.call(
                    Request::Open(Open {
                        ino: f.ino,
                        flags: libc::O_RDONLY,
                        prefetch: 64,
                    }),
                    &[],
                );
                match got {
                    Ok(Got::OpenedData(data)) => {
                        assert_eq!(data, b"inside", "read a file outside the export");
                        inside += 1;
                    }
                    other => panic!("open of the canary gave {other:?}"),
                }
                let _ = c.call(
                    Request::Forget(Forget {
                        nodes: vec![(f.ino, 1)],
                    }),
                    &[],
                );
            }
            // The name was the symlink (not a directory), or was between renames.
            Err(Errno::ENOTDIR | Errno::ENOENT) => refused += 1,
            Err(e) => panic!("unexpected lookup error {e:?}"),
        }
        let _ = c.call(
            Request::Forget(Forget {
                nodes: vec![(d.ino, 1)],
            }),
            &[],
        );
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let _ = fs::remove_file(&outside);
    eprintln!("path race: {swaps} swaps, {inside} canaries read inside, {refused} refused");
    assert!(inside > 0, "the race never let a lookup through");
    assert!(swaps > 100, "the host barely swapped ({swaps})");
    assert!(host.stop().success());
}
