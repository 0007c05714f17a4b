//! An fsx-style data-integrity exerciser (xfstests' fsx is not packaged for Debian 12 nor on
//! PyPI): random writes, reads, truncates, hole punches, copy_file_range and shared-mmap
//! reads and writes on one file through the mount, checked after every step against an
//! in-memory model of the file and, at the end, against the host file itself.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::harness::{Need, Share, require};

/// xorshift64*: reproducible without a dependency; the seed is printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const MAX_LEN: u64 = 256 * 1024;

#[test]
fn random_io_with_mmap_matches_a_model() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let seed = std::env::var("FERRY_FSX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d_u64);
    let steps: usize = std::env::var("FERRY_FSX_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let share = Share::start();
    let path = share.mnt().join("fsx");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let fd = f.as_raw_fd();
    let mut model: Vec<u8> = Vec::new();
    let mut rng = Rng(seed);
    let mut log: Vec<String> = Vec::new();
    for step in 0..steps {
        let op = rng.below(8);
        let off = rng.below(MAX_LEN);
        let len = 1 + rng.below(20_000).min(MAX_LEN - off - 1);
        let what = match op {
            0 | 1 => {
                let byte = (step % 251) as u8 + 1;
                let data = vec![byte; len as usize];
                f.write_all_at(&data, off).unwrap();
                let end = (off + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].fill(byte);
                format!("write {off}+{len} = {byte}")
            }
            2 => {
                let mut buf = vec![0u8; len as usize];
                let n = f.read_at(&mut buf, off).unwrap();
                let want = model
                    .get(off as usize..)
                    .map_or(&[][..], |m| &m[..m.len().min(len as usize)]);
                assert_eq!(
                    &buf[..n],
                    want,
                    "seed {seed:#x} step {step}: read {off}+{len}\n{}",
                    log.join("\n")
                );
                format!("read {off}+{len}")
            }
            3 => {
                let new = rng.below(MAX_LEN);
                f.set_len(new).unwrap();
                model.resize(new as usize, 0);
                format!("truncate {new}")
            }
            4 => {
                // Punch a hole inside the file (size unchanged).
                // SAFETY: fallocate on an open descriptor.
                let rc = unsafe {
                    libc::fallocate(
                        fd,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        off as i64,
                        len as i64,
                    )
                };
                assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
                let end = ((off + len) as usize).min(model.len());
                if (off as usize) < end {
                    model[off as usize..end].fill(0);
                }
                format!("punch {off}+{len}")
            }
            5 if !model.is_empty() => {
                // copy_file_range from one place of the file to another, not overlapping.
                let src = rng.below(model.len() as u64);
                let n = len.min(model.len() as u64 - src).min(8192);
                let dst = rng.below(MAX_LEN - n);
                if src.max(dst) < src.min(dst) + n {
                    continue;
                }
                let (mut si, mut di) = (src as i64, dst as i64);
                // SAFETY: copy_file_range between offsets of one open descriptor.
                let r = unsafe { libc::copy_file_range(fd, &mut si, fd, &mut di, n as usize, 0) };
                assert_eq!(r, n as isize, "{}", std::io::Error::last_os_error());
                let chunk = model[src as usize..(src + n) as usize].to_vec();
                let end = (dst + n) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[dst as usize..end].copy_from_slice(&chunk);
                format!("copy {src}+{n} -> {dst}")
            }
            6 | 7 if model.len() >= 4096 => {
                // Map the file shared: check it, change a range, msync.
                let size = model.len();
                // SAFETY: a fresh shared mapping of `size` bytes of an open file.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        size,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        fd,
                        0,
                    )
                };
                assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
                // SAFETY: `p` maps `size` bytes, unmapped below before `m` goes out of use.
                let m = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), size) };
                assert!(
                    m == &model[..],
                    "seed {seed:#x} step {step}: mapped view differs\n{}",
                    log.join("\n")
                );
                let a = rng.below(size as u64) as usize;
                let b = (a + 1 + rng.below(5000) as usize).min(size);
                let byte = (step % 13) as u8 + 200;
                m[a..b].fill(byte);
                model[a..b].fill(byte);
                // SAFETY: msync and munmap of the mapping made above.
                unsafe {
                    assert_eq!(libc::msync(p, size, libc::MS_SYNC), 0);
                    assert_eq!(libc::munmap(p, size), 0);
                }
                format!("mmap write {a}..{b} = {byte}")
            }
            _ => continue,
        };
        log.push(format!("{step}: {what}"));
        if log.len() > 20 {
            log.remove(0);
        }
    }
    assert_eq!(f.metadata().unwrap().len(), model.len() as u64);
    let mut whole = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::open(&path).unwrap(), &mut whole).unwrap();
    assert!(
        whole == model,
        "seed {seed:#x}: final contents through the mount differ"
    );
    drop(f);
    let host = fs::read(share.src().join("fsx")).unwrap();
    assert!(
        host == model,
        "seed {seed:#x}: the host file differs from the model"
    );
    assert!(share.stop().success());
}
