//! Conversions between protocol values and fuser's: attributes, file types, times, open flags.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_protocol::{Attr, SetTime, Timespec};
use fuser::{FileAttr, FileType, FopenFlags, INodeNo, TimeOrNow};

/// Protocol time → `SystemTime` (saturating at the epoch on overflow).
pub fn system_time(t: Timespec) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
    let base = if t.sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.sec.unsigned_abs()))
    };
    base.and_then(|b| b.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

/// `SystemTime` → protocol time (before the epoch: negative seconds, positive nanoseconds).
pub fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            sec: d.as_secs().min(i64::MAX as u64) as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut sec = -(d.as_secs().min(i64::MAX as u64) as i64);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timespec { sec, nsec }
        }
    }
}

/// File type from `st_mode`; unknown types are reported as regular files.
pub fn kind_from_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// File type from a `DT_*` value; `DT_UNKNOWN` and others are reported as regular files
/// (fuser has no "unknown" type).
pub fn kind_from_dtype(dt: u8) -> FileType {
    match dt {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

pub(super) fn mode_from_dtype(dt: u8) -> u32 {
    match kind_from_dtype(dt) {
        FileType::Directory => libc::S_IFDIR,
        FileType::Symlink => libc::S_IFLNK,
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Socket => libc::S_IFSOCK,
        FileType::RegularFile => libc::S_IFREG,
    }
}

/// Protocol [`Attr`] → `fuser::FileAttr`.
pub fn file_attr(a: &Attr) -> FileAttr {
    let mtime = system_time(a.mtime);
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime,
        ctime: system_time(a.ctime),
        crtime: mtime,
        kind: kind_from_mode(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

pub(super) fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(timespec(t)),
    }
}

pub(super) fn fopen_flags(bits: u32) -> FopenFlags {
    let mut f = FopenFlags::from_bits_truncate(bits);
    // Passthrough needs a backing fd in this process; fuser asserts it is absent here.
    f.remove(FopenFlags::FOPEN_PASSTHROUGH);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_conversion() {
        let a = Attr {
            ino: 42,
            size: 12345,
            blocks: 24,
            atime: Timespec {
                sec: 1_700_000_000,
                nsec: 5,
            },
            mtime: Timespec {
                sec: 1_700_000_100,
                nsec: 999_999_999,
            },
            ctime: Timespec { sec: -2, nsec: 500 },
            mode: libc::S_IFREG | 0o4755,
            nlink: 2,
            uid: 1000,
            gid: 100,
            rdev: 0,
            blksize: 4096,
        };
        let f = file_attr(&a);
        assert_eq!(f.ino, INodeNo(42));
        assert_eq!(f.size, 12345);
        assert_eq!(f.blocks, 24);
        assert_eq!(f.kind, FileType::RegularFile);
        assert_eq!(f.perm, 0o4755);
        assert_eq!(f.nlink, 2);
        assert_eq!(
            (f.uid, f.gid, f.rdev, f.blksize, f.flags),
            (1000, 100, 0, 4096, 0)
        );
        assert_eq!(f.atime, UNIX_EPOCH + Duration::new(1_700_000_000, 5));
        assert_eq!(
            f.mtime,
            UNIX_EPOCH + Duration::new(1_700_000_100, 999_999_999)
        );
        assert_eq!(f.crtime, f.mtime);
        assert_eq!(
            f.ctime,
            UNIX_EPOCH - Duration::from_secs(2) + Duration::from_nanos(500)
        );
        // Round trip through timespec, including before the epoch.
        for t in [a.atime, a.mtime, a.ctime, Timespec { sec: -1, nsec: 0 }] {
            assert_eq!(timespec(system_time(t)), t);
        }
    }

    #[test]
    fn kinds() {
        let cases = [
            (libc::S_IFDIR | 0o755, FileType::Directory),
            (libc::S_IFLNK | 0o777, FileType::Symlink),
            (libc::S_IFIFO, FileType::NamedPipe),
            (libc::S_IFCHR, FileType::CharDevice),
            (libc::S_IFBLK, FileType::BlockDevice),
            (libc::S_IFSOCK, FileType::Socket),
            (libc::S_IFREG | 0o644, FileType::RegularFile),
        ];
        for (mode, kind) in cases {
            assert_eq!(kind_from_mode(mode), kind);
            let attr = file_attr(&Attr {
                mode,
                ..Default::default()
            });
            assert_eq!(attr.kind, kind);
            assert_eq!(u32::from(attr.perm), mode & 0o7777);
        }
        assert_eq!(kind_from_dtype(libc::DT_DIR), FileType::Directory);
        assert_eq!(kind_from_dtype(libc::DT_LNK), FileType::Symlink);
        assert_eq!(kind_from_dtype(libc::DT_UNKNOWN), FileType::RegularFile);
        assert_eq!(
            kind_from_mode(mode_from_dtype(libc::DT_SOCK)),
            FileType::Socket
        );
    }

    #[test]
    fn extreme_times_do_not_panic() {
        for t in [
            Timespec {
                sec: i64::MAX,
                nsec: u32::MAX,
            },
            Timespec {
                sec: i64::MIN,
                nsec: 0,
            },
        ] {
            let _ = system_time(t);
        }
        let _ = timespec(UNIX_EPOCH - Duration::from_secs(1 << 40));
    }
}
