//! Model-based testing: proptest generates operation sequences over a small set of names, and
//! each sequence runs on a plain directory (the model: the host kernel's own filesystem) and on
//! a Ferry mount. Every outcome, errno included, and the final trees must match, and the host
//! directory behind the mount must hold what the mount shows.
//!
//! One mount serves every case; each case works in a fresh subdirectory. Shrunk failures are
//! kept below as plain regression tests (`regression_*`), which run on every `cargo test`.
//! `FERRY_MODEL_CASES` sets the number of generated sequences (default 128).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::harness::{Need, Share, require};
use crate::posix::{Op, apply, check, snapshot};

/// The names every operation draws from: few enough that operations collide (rename onto an
/// existing file, rmdir of a non-empty directory, link onto itself), with one level of nesting.
const PATHS: &[&str] = &["a", "b", "c", "d", "d/a", "d/b", "d/e", "d/e/f"];

/// Symlink targets: relative, dangling, absolute, pointing up and at a directory. Nothing
/// points at a real host path or can be created by following (its parent is missing): ops
/// follow symlinks, and a chmod or an O_CREAT must not reach outside the test tree.
const TARGETS: &[&str] = &[
    "a",
    "missing",
    "/nonexistent-ferry-dir/target",
    "../b",
    "d",
    "d/e/f",
];

/// Data written, appended or written at an offset.
const DATA: &[&[u8]] = &[
    b"",
    b"x",
    b"hello world",
    &[0u8; 5000],
    b"\xff\x00binary\x01",
];

const XATTR_NAMES: &[&str] = &["user.a", "user.b"];
const XATTR_VALUES: &[&[u8]] = &[b"", b"v", b"a longer value"];
const MODES: &[u32] = &[0o644, 0o600, 0o755, 0o000, 0o4755, 0o1777];

fn path() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(PATHS)
}

fn data() -> impl Strategy<Value = &'static [u8]> {
    proptest::sample::select(DATA)
}

fn op() -> impl Strategy<Value = Op> {
    let offset = prop_oneof![Just(0u64), 1u64..64, Just(4095), Just(1 << 20)];
    prop_oneof![
        4 => (path(), data()).prop_map(|(p, d)| Op::Write(p, d.to_vec())),
        2 => (path(), data()).prop_map(|(p, d)| Op::Append(p, d)),
        2 => (path(), offset.clone(), data()).prop_map(|(p, o, d)| Op::WriteAt(p, o, d)),
        2 => path().prop_map(Op::Read),
        2 => (path(), offset).prop_map(|(p, o)| Op::Truncate(p, o)),
        3 => path().prop_map(Op::Mkdir),
        1 => path().prop_map(Op::Rmdir),
        2 => path().prop_map(Op::Unlink),
        2 => (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (path(), path()).prop_map(|(a, b)| Op::RenameNoreplace(a, b)),
        1 => (path(), path()).prop_map(|(a, b)| Op::RenameExchange(a, b)),
        2 => (path(), path()).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (proptest::sample::select(TARGETS), path()).prop_map(|(t, p)| Op::Symlink(t, p)),
        1 => path().prop_map(Op::Readlink),
        1 => (path(), proptest::sample::select(MODES)).prop_map(|(p, m)| Op::Chmod(p, m)),
        1 => (path(), 0i64..1_000_000, 0i64..1_000_000_000).prop_map(|(p, s, n)| Op::Utimes(p, s, n)),
        2 => path().prop_map(Op::Stat),
        1 => path().prop_map(Op::Lstat),
        1 => (path(), proptest::sample::select(XATTR_NAMES), proptest::sample::select(XATTR_VALUES))
            .prop_map(|(p, n, v)| Op::SetXattr(p, n, v)),
        1 => (path(), proptest::sample::select(XATTR_NAMES)).prop_map(|(p, n)| Op::GetXattr(p, n)),
        1 => path().prop_map(Op::ListXattr),
        1 => (path(), proptest::sample::select(XATTR_NAMES)).prop_map(|(p, n)| Op::RemoveXattr(p, n)),
        1 => path().prop_map(Op::CreateExcl),
        1 => path().prop_map(Op::Mkfifo),
        1 => prop_oneof![Just(""), Just("d"), Just("d/e")].prop_map(Op::ReadDir),
        1 => path().prop_map(Op::Locks),
        1 => path().prop_map(Op::SeekDataHole),
    ]
}

/// Runs one sequence in fresh directories under `plain` and `mnt`; the first difference is the
/// error.
fn run_case(plain: &Path, share: &Share, case: &str, ops: &[Op]) -> Result<(), String> {
    let (p, m) = (plain.join(case), share.mnt().join(case));
    std::fs::create_dir(&p).map_err(|e| e.to_string())?;
    std::fs::create_dir(&m).map_err(|e| e.to_string())?;
    for (i, op) in ops.iter().enumerate() {
        let want = apply(&p, op);
        let got = apply(&m, op);
        if want != got {
            return Err(format!("step {i} {op:?}:\n  plain: {want}\n  ferry: {got}"));
        }
    }
    let want = snapshot(&p);
    let got = snapshot(&m);
    if want != got {
        return Err(format!(
            "final trees differ:\n  plain: {want:#?}\n  ferry: {got:#?}"
        ));
    }
    let host = snapshot(&share.src().join(case));
    if host != got {
        return Err(format!(
            "mount and host differ:\n  host: {host:#?}\n  ferry: {got:#?}"
        ));
    }
    Ok(())
}

/// A generated sequence, printed one op a line with long data abbreviated, so that a shrunk
/// failure can be pasted into a regression test.
#[derive(Clone)]
struct Seq(Vec<Op>);

impl std::fmt::Debug for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "[")?;
        for op in &self.0 {
            match op {
                Op::Write(p, d) if d.len() > 16 => {
                    writeln!(f, "    Write({p:?}, vec![0; {}]),", d.len())?
                }
                Op::Append(p, d) if d.len() > 16 => {
                    writeln!(f, "    Append({p:?}, &[0; {}]),", d.len())?
                }
                Op::WriteAt(p, o, d) if d.len() > 16 => {
                    writeln!(f, "    WriteAt({p:?}, {o}, &[0; {}]),", d.len())?
                }
                op => writeln!(f, "    {op:?},")?,
            }
        }
        write!(f, "]")
    }
}

#[test]
fn random_operation_sequences_match_a_plain_directory() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let cases = std::env::var("FERRY_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let plain = tempfile::tempdir().unwrap();
    // The plain directory lets root set set-id bits; so does a share with --setid.
    let share = Share::start_with(&["--setid"]);
    let n = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 2000,
        // Shrunk failures are copied into the regression tests below by hand.
        failure_persistence: None,
        ..Config::default()
    });
    let seqs = proptest::collection::vec(op(), 1..40).prop_map(Seq);
    let result = runner.run(&seqs, |Seq(ops)| {
        let case = format!("case{}", n.fetch_add(1, Ordering::Relaxed));
        run_case(plain.path(), &share, &case, &ops).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(share.stop().success());
}

// Shrunk sequences the generator found. Each once showed a difference between the mount and a
// plain directory; the comment says what it was and where it was settled.

/// A read moves a file's atime on the host (relatime, atime older than mtime) and the guest
/// learns of it only after its attribute timeout: atime is compared where it was set (`Utimes`
/// reads both times back at once), not in the final trees.
#[test]
fn regression_atime_after_read() {
    use Op::*;
    check(
        "regression_atime_after_read",
        &[
            Write("b", Vec::new()),
            Utimes("b", 0, 0),
            Read("b"),
            Stat("b"),
        ],
    );
}

/// lseek(SEEK_DATA/SEEK_HOLE) on a directory is answered by the guest kernel from the
/// directory's size, and by ext4 with its own cookies: not a filesystem property the share can
/// carry, so the harness probes only files.
#[test]
fn regression_seek_data_on_a_directory() {
    use Op::*;
    check(
        "regression_seek_data_on_a_directory",
        &[Mkdir("a"), SeekDataHole("a")],
    );
}

/// Operations through symlinks that leave the tree (absolute and `..` targets), on both sides.
#[test]
fn regression_symlinks_out_of_the_tree() {
    use Op::*;
    check(
        "regression_symlinks_out_of_the_tree",
        &[
            Mkdir("d"),
            Symlink("/nonexistent-ferry-dir/target", "d/t"),
            Write("d/t", b"x".to_vec()),
            Chmod("d/t", 0o600),
            SetXattr("d/t", "user.a", b"v"),
            Utimes("d/t", 5, 5),
            Symlink("../b", "d/up"),
            Write("d/up", b"through the link".to_vec()),
            Read("b"),
            Lstat("d/up"),
        ],
    );
}
