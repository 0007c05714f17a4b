//! A writer for the "newc" cpio format, the one the kernel unpacks as an initramfs.
//!
//! Each member is a 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the
//! NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes; `TRAILER!!!` ends
//! the archive. Owners are root, times are zero: the archive depends only on its contents.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A cpio archive being written to `W`.
pub struct Writer<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> Writer<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// A directory (parents are not created: add them first).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.member(path, S_IFDIR | perm, 2, (0, 0), b"")
    }

    /// A regular file with these contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.member(path, S_IFREG | perm, 1, (0, 0), data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.member(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.member(path, S_IFCHR | perm, 1, (major, minor), b"")
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.member("TRAILER!!!", 0, 1, (0, 0), b"")?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn member(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        let name = if name.is_empty() { "." } else { name };
        if name.as_bytes().contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "member over 4 GiB"))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1, // name size, with its NUL
            0,                     // check (unused in newc)
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_member() {
        let mut w = Writer::new(Vec::new());
        w.file("/bin/x", 0o755, b"hi").unwrap();
        let out = w.finish().unwrap();
        let first = &out[..110];
        assert_eq!(
            std::str::from_utf8(first).unwrap(),
            concat!(
                "070701", "00000001", // ino
                "000081ed", // mode: regular file, 0755
                "00000000", // uid
                "00000000", // gid
                "00000001", // nlink
                "00000000", // mtime
                "00000002", // size
                "00000000", // dev major
                "00000000", // dev minor
                "00000000", // rdev major
                "00000000", // rdev minor
                "00000006", // name size: "bin/x" and NUL
                "00000000", // check
            )
        );
        // 110 + 6 = 116 is aligned; the data follows at once, padded to 120.
        assert_eq!(&out[110..116], b"bin/x\0");
        assert_eq!(&out[116..120], b"hi\0\0");
        assert_eq!(&out[120..126], b"070701");
        assert_eq!(out.len() % 4, 0);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn cpio_tool_reads_it_back() {
        // Cross-check against an independent reader when one is installed.
        let Ok(probe) = std::process::Command::new("cpio").arg("--version").output() else {
            eprintln!("(cpio not installed; golden test only)");
            return;
        };
        assert!(probe.status.success());
        let mut w = Writer::new(Vec::new());
        w.dir("/bin", 0o755).unwrap();
        w.file("/bin/tool", 0o755, b"#!/bin/sh\n").unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.dir("/dev", 0o755).unwrap();
        w.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        let archive = w.finish().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        for want in ["bin/tool", "bin/sh -> busybox", "dev/console"] {
            assert!(listing.contains(want), "{want} in\n{listing}");
        }
        assert!(listing.contains("crw-------"), "{listing}");
    }
}
