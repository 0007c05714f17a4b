//! A tree of thousands of files through a server whose node descriptor cache holds 64: walking,
//! stating and reading all of it keeps the server's descriptors within the cap plus a small
//! constant, and every file reads back right, also once its node has been evicted and is
//! reopened by kernel file handle (or, without CAP_DAC_READ_SEARCH, by name).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use std::os::unix::process::CommandExt;

use crate::harness::{Need, Share, require};

const DIRS: usize = 20;
const PER_DIR: usize = 200;
const CAP: usize = 64;
/// Descriptors the server may hold beyond the cap and its count when idle: requests in flight
/// (eight workers, each with a node or two), handles the kernel has not released yet, the
/// directory the walk has open, and one handle base per filesystem.
const SLACK: usize = 48;
/// The capability `open_by_handle_at` needs (linux/capability.h).
const CAP_DAC_READ_SEARCH: libc::c_ulong = 2;

/// The content of file `f` in directory `d`: unique, and longer than the 64 KiB the open
/// carries inline for some files, so that reads go through the handle too.
fn content(d: usize, f: usize) -> Vec<u8> {
    let line = format!("file {d}/{f}\n");
    let times = if f % 10 == 0 { 7000 } else { 3 };
    line.repeat(times).into_bytes()
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's fd directory")
        .count()
}

/// Makes the test tree in `src`.
fn make_tree(src: &Path) {
    for d in 0..DIRS {
        let dir = src.join(format!("d{d:04}"));
        fs::create_dir(&dir).expect("mkdir");
        for f in 0..PER_DIR {
            fs::write(dir.join(format!("f{f:04}")), content(d, f)).expect("write");
        }
    }
}

/// Stats and reads every file under `root` (two levels) and checks both; returns the most
/// descriptors the server held along the way (the `ferry share` process: both halves, so the
/// count includes the FUSE device and the socket pair).
fn walk_and_check(root: &Path, pid: u32) -> usize {
    let mut most = 0;
    let mut seen = BTreeMap::new();
    let mut dirs: Vec<_> = fs::read_dir(root)
        .expect("read the mount root")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    for dir in &dirs {
        let d: usize = dir.file_name().expect("name").to_string_lossy()[1..]
            .parse()
            .expect("dNNNN");
        for entry in fs::read_dir(dir).expect("read a directory") {
            let path = entry.expect("entry").path();
            let f: usize = path.file_name().expect("name").to_string_lossy()[1..]
                .parse()
                .expect("fNNNN");
            let want = content(d, f);
            let meta = fs::symlink_metadata(&path).expect("stat through the mount");
            assert_eq!(meta.len(), want.len() as u64, "size of {}", path.display());
            let got = fs::read(&path).expect("read through the mount");
            assert!(got == want, "content of {} differs", path.display());
            seen.insert((d, f), ());
            if seen.len() % 100 == 0 {
                most = most.max(open_fds(pid));
            }
        }
    }
    assert_eq!(seen.len(), DIRS * PER_DIR, "files seen through the mount");
    most.max(open_fds(pid))
}

#[test]
fn a_tree_larger_than_the_descriptor_cap_stays_within_it_and_reads_right() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start_with(&["--max-node-fds", &CAP.to_string()]);
    let pid = share.pid();
    // The mount root is looked up and stat'ed once before the idle count is taken.
    fs::metadata(share.mnt()).expect("stat the mount root");
    let idle = open_fds(pid);
    let bound = idle + CAP + SLACK;
    // Made while the share runs: the server looks each new name up for its change notices.
    make_tree(share.src());
    assert!(open_fds(pid) <= bound, "after the host made the tree");

    // First pass: every name is looked up, stat'ed and read; the guest kernel keeps all of
    // them, so the server holds a node for each of the 4,000 files.
    let most = walk_and_check(share.mnt(), pid);
    eprintln!("scale: server descriptors idle {idle}, most while walking {most}, cap {CAP}");
    assert!(
        most <= bound,
        "the server held {most} descriptors walking {} files (idle {idle}, cap {CAP})",
        DIRS * PER_DIR
    );
    // Second pass: the kernel answers names and attributes from its cache, but every open
    // reaches the server, for nodes whose descriptors were evicted long ago: they are reopened
    // by handle, and the data must still be right.
    let most = walk_and_check(share.mnt(), pid);
    assert!(
        most <= bound,
        "second pass: {most} descriptors (idle {idle})"
    );
    share.stop();
}

#[test]
fn without_cap_dac_read_search_nodes_are_reopened_by_name_within_the_cap() {
    if !require(&[Need::Fuse]) {
        return;
    }
    // The server is started without CAP_DAC_READ_SEARCH (dropped from the bounding set, so
    // root's exec does not get it back): open_by_handle_at answers EPERM, and the server
    // reopens evicted nodes by name beneath their parents instead, within the same cap.
    let share = Share::start_configured(&["--max-node-fds", &CAP.to_string()], |cmd| {
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_CAPBSET_DROP, CAP_DAC_READ_SEARCH, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let pid = share.pid();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("CapEff");
    assert_eq!(
        eff & (1 << CAP_DAC_READ_SEARCH),
        0,
        "capability still there"
    );
    fs::metadata(share.mnt()).expect("stat the mount root");
    let idle = open_fds(pid);
    let bound = idle + CAP + SLACK;
    make_tree(share.src());
    for pass in ["first", "second"] {
        let most = walk_and_check(share.mnt(), pid);
        assert!(
            most <= bound,
            "{pass} pass: {most} descriptors for {} files (idle {idle}, cap {CAP})",
            DIRS * PER_DIR
        );
    }
    share.stop();
}
