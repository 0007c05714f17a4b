//! Thin wrappers over the Linux system calls the export needs.
//!
//! Every wrapper turns a failed call into its [`Errno`] and keeps the system calls' `unsafe` in
//! one place (the export's other modules keep only a zeroed C struct or two). Nothing here resolves a path with more
//! than one component: callers pass a directory fd and a single validated name, or an fd that
//! is reached through `/proc/self/fd`.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_protocol::Errno;

/// The errno of the last failed call on this thread.
pub(crate) fn last_errno() -> Errno {
    Errno::from_io(&std::io::Error::last_os_error())
}

/// Turns a `-1`-on-error return value into a `Result`.
fn check(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret < 0 { Err(last_errno()) } else { Ok(ret) }
}

/// Same as [`check`] for calls returning `ssize_t`.
fn check_size(ret: libc::ssize_t) -> Result<usize, Errno> {
    if ret < 0 {
        Err(last_errno())
    } else {
        Ok(ret as usize)
    }
}

/// Takes ownership of a freshly returned fd.
fn own_fd(ret: libc::c_int) -> Result<OwnedFd, Errno> {
    let fd = check(ret)?;
    // SAFETY: `fd` was just returned by a successful open-like call, so it is a valid
    // descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A name or path as a C string; an interior NUL is EINVAL.
pub(crate) fn cstring(bytes: &[u8]) -> Result<CString, Errno> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// The empty path used with `AT_EMPTY_PATH` to address an fd itself.
const EMPTY: &CStr = c"";

/// `struct open_how` of openat2(2). libc's version is `non_exhaustive`, so it is declared here
/// with the kernel's layout.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// Cleared once openat2 answered ENOSYS, so the fallback is taken without asking again.
static OPENAT2_AVAILABLE: AtomicBool = AtomicBool::new(true);

/// Opens the single component `name` below `dir` without ever following a symlink and without
/// leaving `dir`. `O_NOFOLLOW | O_CLOEXEC` are always added; with `O_PATH` a trailing symlink is
/// returned as itself, otherwise opening one fails with ELOOP.
pub(crate) fn open_beneath(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if OPENAT2_AVAILABLE.load(Ordering::Relaxed) {
        let how = OpenHow {
            flags: flags as u32 as u64,
            mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
                u64::from(mode)
            } else {
                0
            },
            resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
        };
        // openat2 answers EAGAIN when a concurrent rename might have let RESOLVE_BENEATH be
        // bypassed; the kernel asks callers to retry, and a few tries are plenty.
        for _ in 0..16 {
            // SAFETY: `name` is a valid NUL-terminated string and `how` a properly sized
            // `open_how` that both outlive the call; the kernel only reads them.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                )
            };
            if ret >= 0 {
                return own_fd(ret as libc::c_int);
            }
            let e = last_errno();
            if e == Errno::ENOSYS {
                OPENAT2_AVAILABLE.store(false, Ordering::Relaxed);
                break;
            }
            if e != Errno::EAGAIN {
                return Err(e);
            }
        }
        if OPENAT2_AVAILABLE.load(Ordering::Relaxed) {
            return Err(Errno::EAGAIN);
        }
    }
    // The fallback is as safe for a single component that is neither "." nor "..":
    // O_NOFOLLOW keeps a trailing symlink from being followed.
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    own_fd(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint) })
}

/// Opens `path` (an operator-supplied absolute path) with `flags | O_CLOEXEC`.
pub(crate) fn open_path(path: &CStr, flags: libc::c_int) -> Result<OwnedFd, Errno> {
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    own_fd(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// The decimal name of `fd` inside `/proc/self/fd`.
pub(crate) fn fd_name(fd: BorrowedFd<'_>) -> CString {
    CString::new(fd.as_raw_fd().to_string()).expect("decimal digits contain no NUL")
}

/// The absolute `/proc/self/fd/N` path of `fd`, for calls that have no `*at` form.
pub(crate) fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a proc path")
}

/// Re-opens the inode behind `fd` (usually an `O_PATH` fd) through its `/proc/self/fd` entry
/// with real access `flags`. Callers must not pass symlink fds (the kernel answers ELOOP).
pub(crate) fn reopen(
    proc_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    flags: libc::c_int,
) -> Result<OwnedFd, Errno> {
    let name = fd_name(fd);
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    own_fd(unsafe { libc::openat(proc_fd.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// `stat` of the object `fd` refers to; a symlink fd is not followed.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> Result<libc::stat, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` points to writable memory of the right size and `EMPTY` is a valid string.
    check(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: the kernel filled the structure on success (and it was zeroed before).
    Ok(unsafe { st.assume_init() })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: `name` must be a single component.
pub(crate) fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> Result<libc::stat, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` points to writable memory of the right size and `name` is a valid string.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: the kernel filled the structure on success (and it was zeroed before).
    Ok(unsafe { st.assume_init() })
}

/// `fchmodat` through the `/proc/self/fd` entry of `fd` (which must not be a symlink).
pub(crate) fn chmod(proc_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    let name = fd_name(fd);
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    check(unsafe { libc::fchmodat(proc_fd.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

/// `fchmod` of an open (non-`O_PATH`) fd.
pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    // SAFETY: plain syscall on a borrowed, valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// `fchownat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`; `u32::MAX` leaves an id unchanged.
pub(crate) fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Errno> {
    // SAFETY: `EMPTY` is a valid NUL-terminated string.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// `ftruncate` of an open fd.
pub(crate) fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> Result<(), Errno> {
    let size = libc::off_t::try_from(size).map_err(|_| Errno::EFBIG)?;
    // SAFETY: plain syscall on a borrowed, valid fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
}

/// `utimensat` through the `/proc/self/fd` entry of `fd`. Following that magic link lands on
/// the object itself, even when it is a symlink: the symlink's target is not followed.
pub(crate) fn utimens(
    proc_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    times: &[libc::timespec; 2],
) -> Result<(), Errno> {
    let name = fd_name(fd);
    // SAFETY: `name` and `times` are valid for the duration of the call; the kernel reads two
    // timespecs.
    check(unsafe { libc::utimensat(proc_fd.as_raw_fd(), name.as_ptr(), times.as_ptr(), 0) })
        .map(drop)
}

/// The target of the symlink `fd` refers to.
pub(crate) fn readlink(fd: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for `buf.len()` bytes and `EMPTY` is a valid string.
    let n = check_size(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `symlinkat(target, dir, name)`.
pub(crate) fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    // SAFETY: both strings are valid and NUL-terminated for the duration of the call.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `mknodat(dir, name, mode, rdev)`.
pub(crate) fn mknodat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: u32,
    rdev: libc::dev_t,
) -> Result<(), Errno> {
    // SAFETY: `name` is valid and NUL-terminated for the duration of the call.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

/// `mkdirat(dir, name, mode)`.
pub(crate) fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: `name` is valid and NUL-terminated for the duration of the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// `unlinkat(dir, name, flags)`.
pub(crate) fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> Result<(), Errno> {
    // SAFETY: `name` is valid and NUL-terminated for the duration of the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `renameat2(olddir, old, newdir, new, flags)`.
pub(crate) fn renameat2(
    olddir: BorrowedFd<'_>,
    old: &CStr,
    newdir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> Result<(), Errno> {
    // SAFETY: both names are valid NUL-terminated strings for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            olddir.as_raw_fd(),
            old.as_ptr(),
            newdir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    };
    if ret < 0 { Err(last_errno()) } else { Ok(()) }
}

/// Hard-links the inode behind `fd` as `name` in `dir`, through its `/proc/self/fd` entry
/// (`AT_SYMLINK_FOLLOW` follows the magic link to the object itself, never a symlink's target).
pub(crate) fn link_fd(
    proc_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> Result<(), Errno> {
    let src = fd_name(fd);
    // SAFETY: both names are valid NUL-terminated strings for the duration of the call.
    check(unsafe {
        libc::linkat(
            proc_fd.as_raw_fd(),
            src.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// Reads at `offset` until `buf` is full or end of file; returns the bytes read.
pub(crate) fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        let off = offset
            .checked_add(done as u64)
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or(Errno::EINVAL)?;
        let rest = &mut buf[done..];
        // SAFETY: `rest` is writable for `rest.len()` bytes.
        let n = unsafe { libc::pread(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), off) };
        match check_size(n) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(e) if done > 0 => {
                tracing::debug!(error = ?e, "short read");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes all of `data` at `offset`; returns the bytes written.
pub(crate) fn pwrite_all(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> Result<usize, Errno> {
    let mut done = 0;
    while done < data.len() {
        let off = offset
            .checked_add(done as u64)
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or(Errno::EFBIG)?;
        let rest = &data[done..];
        // SAFETY: `rest` is readable for `rest.len()` bytes.
        let n = unsafe { libc::pwrite(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len(), off) };
        match check_size(n) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            // Part of the data is on disk: report what was written, as write(2) does.
            Err(_) if done > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `fsync` or `fdatasync`.
pub(crate) fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> Result<(), Errno> {
    // SAFETY: plain syscalls on a borrowed, valid fd.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// `lseek`.
pub(crate) fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: libc::c_int) -> Result<i64, Errno> {
    // SAFETY: plain syscall on a borrowed, valid fd.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if ret < 0 { Err(last_errno()) } else { Ok(ret) }
}

/// `getdents64` into `buf`; returns the bytes filled (0 at end of directory).
pub(crate) fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is writable for `buf.len()` bytes; the kernel writes at most that many.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if ret < 0 {
        Err(last_errno())
    } else {
        Ok(ret as usize)
    }
}

/// One parsed `struct linux_dirent64`.
pub(crate) struct RawDirent<'a> {
    pub ino: u64,
    pub off: u64,
    pub kind: u8,
    pub name: &'a [u8],
}

/// Size of the fixed part of `struct linux_dirent64` (d_ino, d_off, d_reclen, d_type).
const DIRENT_HEADER: usize = 19;

/// Parses the records getdents64 left in `buf`, checking every length against the buffer.
/// A malformed record ends the iteration rather than reading out of bounds.
#[cfg(test)]
pub(crate) fn parse_dirents(buf: &[u8]) -> impl Iterator<Item = RawDirent<'_>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let (reclen, d) = parse_dirent(buf.get(pos..)?)?;
        pos += reclen;
        Some(d)
    })
}

/// The first record of `rest` and its length; None when it is truncated or malformed.
pub(crate) fn parse_dirent(rest: &[u8]) -> Option<(usize, RawDirent<'_>)> {
    if rest.len() < DIRENT_HEADER {
        return None;
    }
    let ino = u64::from_ne_bytes(rest[0..8].try_into().ok()?);
    let off = u64::from_ne_bytes(rest[8..16].try_into().ok()?);
    let reclen = usize::from(u16::from_ne_bytes(rest[16..18].try_into().ok()?));
    let kind = rest[18];
    if reclen < DIRENT_HEADER || reclen > rest.len() {
        return None;
    }
    let name_area = &rest[DIRENT_HEADER..reclen];
    let name_len = name_area.iter().position(|&b| b == 0)?;
    Some((
        reclen,
        RawDirent {
            ino,
            off,
            kind,
            name: &name_area[..name_len],
        },
    ))
}

/// `fstatvfs`.
pub(crate) fn fstatvfs(fd: BorrowedFd<'_>) -> Result<libc::statvfs, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `st` points to writable memory of the right size.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: the call filled the structure on success (and it was zeroed before).
    Ok(unsafe { st.assume_init() })
}

/// `faccessat` through the `/proc/self/fd` entry of `fd`, checked against the thread's
/// effective ids (`AT_EACCESS`), which a request switches to the caller's.
pub(crate) fn access(proc_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>, mask: i32) -> Result<(), Errno> {
    let name = fd_name(fd);
    // SAFETY: `name` is valid and NUL-terminated for the duration of the call.
    check(unsafe { libc::faccessat(proc_fd.as_raw_fd(), name.as_ptr(), mask, libc::AT_EACCESS) })
        .map(drop)
}

/// `getxattr(path, name)`; an empty `buf` asks for the size.
pub(crate) fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: strings are valid; `buf` is writable for `buf.len()` bytes (a null pointer with
    // length 0 is how the size is queried).
    check_size(unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            if buf.is_empty() {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            buf.len(),
        )
    })
}

/// `listxattr(path)`; an empty `buf` asks for the size.
pub(crate) fn listxattr(path: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `path` is valid; `buf` is writable for `buf.len()` bytes (null with length 0
    // queries the size).
    check_size(unsafe {
        libc::listxattr(
            path.as_ptr(),
            if buf.is_empty() {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            buf.len(),
        )
    })
}

/// `setxattr(path, name, value, flags)`.
pub(crate) fn setxattr(
    path: &CStr,
    name: &CStr,
    value: &[u8],
    flags: libc::c_int,
) -> Result<(), Errno> {
    // SAFETY: strings are valid; `value` is readable for `value.len()` bytes.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// `removexattr(path, name)`.
pub(crate) fn removexattr(path: &CStr, name: &CStr) -> Result<(), Errno> {
    // SAFETY: both strings are valid and NUL-terminated for the duration of the call.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// `lremovexattr(path, name)`: like [`removexattr`], but a symlink at the end of `path` is not
/// followed (for `/proc/self/fd/N/NAME` paths, where NAME may have been swapped for a symlink).
pub(crate) fn lremovexattr(path: &CStr, name: &CStr) -> Result<(), Errno> {
    // SAFETY: both strings are valid and NUL-terminated for the duration of the call.
    check(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// `fallocate`.
pub(crate) fn fallocate(
    fd: BorrowedFd<'_>,
    mode: libc::c_int,
    offset: u64,
    length: u64,
) -> Result<(), Errno> {
    let offset = libc::off_t::try_from(offset).map_err(|_| Errno::EFBIG)?;
    let length = libc::off_t::try_from(length).map_err(|_| Errno::EFBIG)?;
    // SAFETY: plain syscall on a borrowed, valid fd.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, length) }).map(drop)
}

/// `copy_file_range` with explicit offsets (the fds' own positions are untouched).
pub(crate) fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
    flags: u32,
) -> Result<usize, Errno> {
    let mut off_in = libc::off64_t::try_from(off_in).map_err(|_| Errno::EINVAL)?;
    let mut off_out = libc::off64_t::try_from(off_out).map_err(|_| Errno::EFBIG)?;
    // SAFETY: the offset pointers refer to live locals the kernel updates; fds are valid.
    check_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut off_in,
            fd_out.as_raw_fd(),
            &mut off_out,
            len,
            flags,
        )
    })
}

/// `fcntl(fd, cmd, &mut flock)` for the OFD lock commands.
pub(crate) fn fcntl_lock(
    fd: BorrowedFd<'_>,
    cmd: libc::c_int,
    lock: &mut libc::flock,
) -> Result<(), Errno> {
    // SAFETY: `lock` is a valid, writable `struct flock` for the duration of the call.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, lock as *mut libc::flock) }).map(drop)
}

/// The access mode (`O_RDONLY`, `O_WRONLY` or `O_RDWR`) an fd was opened with.
pub(crate) fn access_mode(fd: BorrowedFd<'_>) -> Result<libc::c_int, Errno> {
    // SAFETY: plain syscall on a borrowed, valid fd.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) }).map(|f| f & libc::O_ACCMODE)
}

/// `flock(fd, op)`.
pub(crate) fn flock(fd: BorrowedFd<'_>, op: libc::c_int) -> Result<(), Errno> {
    // SAFETY: plain syscall on a borrowed, valid fd.
    check(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(drop)
}

/// Largest kernel file handle (`MAX_HANDLE_SZ`).
pub(crate) const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle. libc declares the handle bytes as a
/// zero-length array, so the buffer is declared here with the kernel's layout.
#[repr(C)]
pub(crate) struct KernelHandle {
    /// Bytes used in `bytes` (on input to name_to_handle_at: the room there is).
    handle_bytes: u32,
    /// The filesystem's handle type.
    pub handle_type: libc::c_int,
    bytes: [u8; MAX_HANDLE_SZ],
}

impl KernelHandle {
    /// A handle of type `handle_type` with these bytes; None when they do not fit.
    pub(crate) fn new(handle_type: libc::c_int, data: &[u8]) -> Option<Self> {
        let mut h = KernelHandle {
            handle_bytes: u32::try_from(data.len()).ok()?,
            handle_type,
            bytes: [0; MAX_HANDLE_SZ],
        };
        h.bytes.get_mut(..data.len())?.copy_from_slice(data);
        Some(h)
    }

    /// The handle's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes[..(self.handle_bytes as usize).min(MAX_HANDLE_SZ)]
    }
}

/// The kernel file handle of the object `fd` refers to (`name_to_handle_at` with
/// `AT_EMPTY_PATH`; a symlink fd names the link itself). EOPNOTSUPP when its filesystem cannot
/// encode handles.
pub(crate) fn name_to_handle(fd: BorrowedFd<'_>) -> Result<KernelHandle, Errno> {
    let mut h = KernelHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        bytes: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` is a `struct file_handle` whose `handle_bytes` says how much room follows,
    // `mount_id` is writable, and `EMPTY` is a valid string; all outlive the call.
    check(unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            (&mut h as *mut KernelHandle).cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    })?;
    Ok(h)
}

/// Whether non-directory nodes also keep a connectable handle ([`name_to_connectable_handle`]):
/// set by the sandbox when Landlock is in force (`crate::sandbox`).
static CONNECTABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes nodes evicted from now on keep connectable handles too (see [`CONNECTABLE`]).
pub(crate) fn set_connectable_handles(on: bool) {
    CONNECTABLE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// See [`set_connectable_handles`].
pub(crate) fn connectable_handles() -> bool {
    CONNECTABLE.load(std::sync::atomic::Ordering::Relaxed)
}

/// `AT_HANDLE_CONNECTABLE` (Linux 6.13): the handle of a non-directory also names its parent.
const AT_HANDLE_CONNECTABLE: libc::c_int = 0x002;

/// A connectable kernel file handle of the non-directory `fd` refers to: one that also names
/// its parent directory, so that `open_by_handle_at` returns a descriptor whose path is known
/// (reconnected through the parent) rather than a disconnected one, which Landlock, checking
/// paths, refuses to open. The kernel encodes one only from a path, so `fd` is named through
/// its `/proc/self/fd` entry. EINVAL on kernels before 6.13.
pub(crate) fn name_to_connectable_handle(fd: BorrowedFd<'_>) -> Result<KernelHandle, Errno> {
    let mut h = KernelHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        bytes: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    let path = proc_path(fd);
    // SAFETY: as in `name_to_handle`; `path` is a valid string that outlives the call.
    check(unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            path.as_ptr(),
            (&mut h as *mut KernelHandle).cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_SYMLINK_FOLLOW | AT_HANDLE_CONNECTABLE,
        )
    })?;
    Ok(h)
}

/// Opens the object `handle` names on the filesystem of `mount_fd` with `flags | O_CLOEXEC`
/// (`open_by_handle_at`: needs CAP_DAC_READ_SEARCH; ESTALE when the object is gone).
pub(crate) fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle: &KernelHandle,
    flags: libc::c_int,
) -> Result<OwnedFd, Errno> {
    // SAFETY: `handle` is a valid `struct file_handle` that outlives the call; the kernel only
    // reads it (the pointer is mutable in the C prototype only).
    own_fd(unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (handle as *const KernelHandle)
                .cast_mut()
                .cast::<libc::file_handle>(),
            flags | libc::O_CLOEXEC,
        )
    })
}

/// Closes a duplicate of `fd` and returns what that close reports: the error a filesystem
/// that writes back at close (NFS, SMB, FUSE) gives the last close of a description it could
/// not write. EINTR counts as success: the descriptor is gone either way.
pub(crate) fn close_dup(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: duplicating a valid descriptor; the duplicate is closed below and used by
    // nothing else.
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    check(dup)?;
    // SAFETY: `dup` is a descriptor this function owns; it is closed exactly once.
    match check(unsafe { libc::close(dup) }) {
        Err(Errno::EINTR) => Ok(()),
        r => r.map(drop),
    }
}

/// The filesystem type (`f_type` of fstatfs) of the object behind `fd`.
pub(crate) fn fs_type(fd: BorrowedFd<'_>) -> Result<i64, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `st` points to writable memory of the right size.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: the kernel filled the structure on success (and it was zeroed before).
    let f_type = unsafe { st.assume_init() }.f_type;
    // `__fsword_t` is i64 here but 32 bits wide on some targets.
    #[allow(clippy::unnecessary_cast)]
    Ok(f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ino: u64, off: u64, kind: u8, name: &[u8]) -> Vec<u8> {
        let reclen = (DIRENT_HEADER + name.len() + 1).div_ceil(8) * 8;
        let mut v = Vec::with_capacity(reclen);
        v.extend_from_slice(&ino.to_ne_bytes());
        v.extend_from_slice(&off.to_ne_bytes());
        v.extend_from_slice(&(reclen as u16).to_ne_bytes());
        v.push(kind);
        v.extend_from_slice(name);
        v.resize(reclen, 0);
        v
    }

    #[test]
    fn parses_records_and_stops_at_garbage() {
        let mut buf = record(5, 10, 4, b"abc");
        buf.extend(record(6, 20, 8, b"a-longer-name"));
        let got: Vec<_> = parse_dirents(&buf)
            .map(|d| (d.ino, d.off, d.kind, d.name.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![
                (5, 10, 4, b"abc".to_vec()),
                (6, 20, 8, b"a-longer-name".to_vec())
            ]
        );
        // A record length running past the buffer ends the walk instead of reading past it.
        let mut bad = record(7, 30, 8, b"x");
        bad[16..18].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(parse_dirents(&bad).count(), 0);
        // A record length below the header size ends the walk too.
        let mut tiny = record(7, 30, 8, b"x");
        tiny[16..18].copy_from_slice(&3u16.to_ne_bytes());
        assert_eq!(parse_dirents(&tiny).count(), 0);
        // A name without its terminating NUL is rejected.
        let mut nonul = record(7, 30, 8, b"1234");
        let len = nonul.len();
        for b in &mut nonul[DIRENT_HEADER..len] {
            *b = b'z';
        }
        assert_eq!(parse_dirents(&nonul).count(), 0);
        assert_eq!(parse_dirents(&buf[..5]).count(), 0);
    }
}
