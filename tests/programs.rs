//! Real programs on the mount: git and tar.

use std::fs;
use std::path::Path;

use crate::harness::{Need, Share, require, sh};
use crate::posix::snapshot;

#[test]
fn git_workflow() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    let repo = share.mnt().join("repo");
    fs::create_dir(&repo).unwrap();
    let git = |script: &str| {
        let (ok, out) = sh(
            &repo,
            &format!(
                "export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@e GIT_COMMITTER_NAME=t \
                 GIT_COMMITTER_EMAIL=t@e GIT_CONFIG_NOSYSTEM=1 HOME=/nonexistent; {script}"
            ),
        );
        assert!(ok, "`{script}` failed:\n{out}");
        out
    };
    git("git init -q -b main .");
    for i in 0..50 {
        fs::create_dir_all(repo.join(format!("src/m{}", i % 5))).unwrap();
        fs::write(
            repo.join(format!("src/m{}/f{i}.txt", i % 5)),
            format!("file {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    git("git add -A && git commit -q -m first");
    assert_eq!(git("git status --porcelain"), "");
    git("git checkout -q -b feature");
    fs::write(repo.join("src/m1/f1.txt"), "changed on feature\n").unwrap();
    git("git mv src/m2/f2.txt src/m2/renamed.txt");
    git("git commit -q -am second");
    git("git checkout -q main");
    assert_eq!(
        fs::read_to_string(repo.join("src/m1/f1.txt")).unwrap(),
        "file 1\nfile 1\n"
    );
    assert!(repo.join("src/m2/f2.txt").exists());
    git("git checkout -q feature");
    assert_eq!(
        fs::read_to_string(repo.join("src/m1/f1.txt")).unwrap(),
        "changed on feature\n"
    );
    assert_eq!(git("git status --porcelain"), "");
    git("git gc -q && git fsck --full --strict");
    // The host sees a sound repository too.
    let (ok, out) = sh(
        &share.src().join("repo"),
        "git log --oneline | wc -l && git fsck --full",
    );
    assert!(ok, "{out}");
    assert!(out.starts_with('2'), "{out}");
    assert!(share.stop().success());
}

/// Builds a tarball of a 5,000-file tree: nested directories, varied sizes, symlinks, hard
/// links, odd names and modes.
fn make_tarball(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    for i in 0..5000usize {
        let d = tree.join(format!("d{:02}/e{:02}", i % 37, i % 11));
        fs::create_dir_all(&d).unwrap();
        let body: Vec<u8> = (0..(i * 7919) % 20_000)
            .map(|j| (j * 31 + i) as u8)
            .collect();
        fs::write(d.join(format!("file {i}.dat")), body).unwrap();
    }
    std::os::unix::fs::symlink("../e00/file 0.dat", tree.join("d00/e01/link")).unwrap();
    fs::hard_link(tree.join("d00/e00/file 0.dat"), tree.join("d00/hard")).unwrap();
    let tar = dir.join("tree.tar");
    let (ok, out) = sh(dir, "tar -cf tree.tar tree");
    assert!(ok, "{out}");
    tar
}

#[test]
fn tar_extracts_5000_files_identically() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let tar = make_tarball(work.path());
    let plain = tempfile::tempdir().unwrap();
    let share = Share::start();
    for dest in [plain.path(), share.mnt()] {
        let (ok, out) = sh(dest, &format!("tar -xpf {}", tar.display()));
        assert!(ok, "tar into {}: {out}", dest.display());
    }
    let want = snapshot(plain.path());
    assert!(want.len() > 5000, "{} entries", want.len());
    let got = snapshot(share.mnt());
    assert_eq!(want.len(), got.len());
    for (k, v) in &want {
        assert_eq!(Some(v), got.get(k), "{k} differs");
    }
    // And the host directory holds the same.
    assert_eq!(snapshot(share.src()), want);
    assert!(share.stop().success());
}
