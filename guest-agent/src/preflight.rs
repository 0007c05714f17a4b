//! Checks before mounting, so that what a newcomer can get wrong is said in one line with what
//! to do about it, instead of an errno from deep inside a mount call.
//!
//! - [`fuse_access`]: `/dev/fuse` is there and this user may open it; an ordinary user also
//!   needs `fusermount3` (the set-user-ID helper from the `fuse3` package).
//! - [`prepare_mountpoint`]: the mount point exists (it is created when only its last
//!   component is missing), is a directory, is empty, and is not mounted already; a stale
//!   FUSE mount left behind by a killed process ("Transport endpoint is not connected") is
//!   detached first.
//! - [`allow_other_permitted`]: whether an ordinary user may ask for `allow_other`
//!   (`user_allow_other` in `/etc/fuse.conf`).

use std::io;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// What stops a mount before it is tried.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// No FUSE device.
    #[error(
        "/dev/fuse does not exist: load the fuse module (`modprobe fuse`) or, in a container, \
         run it with --device /dev/fuse"
    )]
    NoFuseDevice,
    /// The device exists but this user may not open it.
    #[error(
        "no permission to open /dev/fuse (mode {mode:o}): on a stock system it is readable and \
         writable by everyone (`chmod 0666 /dev/fuse` as root), or run as root"
    )]
    FuseDenied {
        /// The device's permission bits.
        mode: u32,
    },
    /// An ordinary user needs fusermount3, which is not installed.
    #[error(
        "fusermount3 is not installed: an ordinary user mounts through it; install the fuse3 \
         package (Debian/Ubuntu: apt install fuse3; Fedora: dnf install fuse3; Arch: pacman -S \
         fuse3)"
    )]
    NoFusermount,
    /// The mount point's parent is missing too.
    #[error("{}: no such directory (nor its parent): create it first", .0.display())]
    NoMountpoint(PathBuf),
    /// The mount point is a file.
    #[error("{}: not a directory: the mount point must be an empty directory", .0.display())]
    NotADirectory(PathBuf),
    /// The mount point holds files, which the mount would hide.
    #[error(
        "{}: not empty: its files would be hidden while it is mounted; use an empty directory \
         (or --nonempty to mount over them)",
        .0.display()
    )]
    NotEmpty(PathBuf),
    /// Something is mounted there and working.
    #[error(
        "{p}: already mounted ({fstype}): unmount it first (`fusermount3 -u {p}`, or \
         `umount {p}` as root) or choose another directory",
        p = .path.display(), fstype = .fstype
    )]
    AlreadyMounted {
        /// The mount point.
        path: PathBuf,
        /// Its filesystem type.
        fstype: String,
    },
    /// A stale mount could not be removed.
    #[error(
        "{p}: a dead FUSE mount is left there (a killed process) and could not be removed \
         ({source}): run `fusermount3 -u -z {p}` (or `umount -l {p}` as root)",
        p = .path.display()
    )]
    Stale {
        /// The mount point.
        path: PathBuf,
        /// Why it could not be removed.
        source: io::Error,
    },
    /// Any other failure to look at the mount point.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The mount point.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Checks that this process can mount FUSE filesystems: `/dev/fuse` opens for reading and
/// writing, and an ordinary user has `fusermount3`.
pub fn fuse_access() -> Result<(), PreflightError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata("/dev/fuse") {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PreflightError::NoFuseDevice),
        Err(_) => return Err(PreflightError::NoFuseDevice),
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        if e.kind() == io::ErrorKind::PermissionDenied {
            return Err(PreflightError::FuseDenied {
                mode: meta.permissions().mode() & 0o7777,
            });
        }
    }
    if !is_root() && fusermount().is_none() {
        return Err(PreflightError::NoFusermount);
    }
    Ok(())
}

/// The `fusermount3` (or, failing that, `fusermount`) program on `PATH`, or where fuser
/// would look for it (`FUSERMOUNT_PATH`).
pub fn fusermount() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FUSERMOUNT_PATH") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    for name in ["fusermount3", "fusermount"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Whether `/etc/fuse.conf` lets ordinary users ask for `allow_other`.
pub fn allow_other_permitted() -> bool {
    is_root()
        || std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|conf| fuse_conf_allows_other(&conf))
}

fn fuse_conf_allows_other(conf: &str) -> bool {
    conf.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .any(|l| l == "user_allow_other")
}

/// Makes `path` ready to be mounted on: creates it when only its last component is missing,
/// detaches a stale FUSE mount, and refuses a file, a live mount, or a non-empty directory
/// unless `nonempty`.
pub fn prepare_mountpoint(path: &Path, nonempty: bool) -> Result<(), PreflightError> {
    let io_err = |source| PreflightError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(PreflightError::NotADirectory(path.to_path_buf())),
        Ok(_) => {
            if let Some(fstype) = mounted_type(path) {
                // A killed server's FUSE mount whose root the kernel still has cached: stat
                // answers from the cache, statfs always asks the (gone) server.
                if fstype.starts_with("fuse") && dead_fuse(path) {
                    return remove_dead(path, nonempty);
                }
                return Err(PreflightError::AlreadyMounted {
                    path: path.to_path_buf(),
                    fstype,
                });
            }
            let mut entries = std::fs::read_dir(path).map_err(io_err)?;
            if !nonempty && entries.next().is_some() {
                return Err(PreflightError::NotEmpty(path.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => remove_dead(path, nonempty),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent_ok = path
                .parent()
                .map(|p| p.as_os_str().is_empty() || p.is_dir())
                .unwrap_or(false);
            if !parent_ok {
                return Err(PreflightError::NoMountpoint(path.to_path_buf()));
            }
            std::fs::create_dir(path).map_err(io_err)?;
            info!(mountpoint = %path.display(), "created the mount point");
            Ok(())
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Whether the FUSE mount on `path` has lost its server (the kernel answers ENOTCONN).
fn dead_fuse(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).err() == Some(nix::errno::Errno::ENOTCONN)
}

/// Detaches the dead FUSE mount on `path`, then prepares what is under it.
fn remove_dead(path: &Path, nonempty: bool) -> Result<(), PreflightError> {
    warn!(mountpoint = %path.display(),
          "a dead FUSE mount is left here by a process that was killed; removing it");
    detach(path).map_err(|source| PreflightError::Stale {
        path: path.to_path_buf(),
        source,
    })?;
    prepare_mountpoint(path, nonempty)
}

/// The filesystem type mounted on `path` itself, if anything is.
fn mounted_type(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    crate::mount::mountinfo::mount_type(&path)
}

/// Detaches the mount on `path`: `umount2(MNT_DETACH)` as root, `fusermount3 -u -z` otherwise
/// (an ordinary user may only unmount what it mounted, through the set-user-ID helper).
pub fn detach(path: &Path) -> io::Result<()> {
    if is_root() {
        return nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
            .map_err(io::Error::from);
    }
    let Some(fusermount) = fusermount() else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "fusermount3 is not installed",
        ));
    };
    let out = std::process::Command::new(&fusermount)
        .arg("-u")
        .arg("-z")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{}: {}",
            fusermount.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuse_conf() {
        assert!(fuse_conf_allows_other("user_allow_other\n"));
        assert!(fuse_conf_allows_other(
            "# comment\n  user_allow_other  # yes\n"
        ));
        assert!(!fuse_conf_allows_other("#user_allow_other\n"));
        assert!(!fuse_conf_allows_other("mount_max = 1000\n"));
    }

    #[test]
    fn mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new");
        prepare_mountpoint(&new, false).unwrap();
        assert!(new.is_dir(), "a missing last component is created");
        prepare_mountpoint(&new, false).unwrap();
        let deep = dir.path().join("a/b");
        assert!(matches!(
            prepare_mountpoint(&deep, false),
            Err(PreflightError::NoMountpoint(_))
        ));
        std::fs::write(new.join("f"), b"").unwrap();
        let e = prepare_mountpoint(&new, false).unwrap_err();
        assert!(matches!(e, PreflightError::NotEmpty(_)), "{e}");
        assert!(e.to_string().contains("not empty"));
        assert!(matches!(
            prepare_mountpoint(&new.join("f"), false),
            Err(PreflightError::NotADirectory(_))
        ));
        // /proc is a mount point.
        let e = prepare_mountpoint(Path::new("/proc"), false).unwrap_err();
        assert!(
            matches!(e, PreflightError::AlreadyMounted { ref fstype, .. } if fstype == "proc"),
            "{e}"
        );
    }
}
