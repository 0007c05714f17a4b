//! What is mounted where in this guest, from `/proc/self/mountinfo`.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Whether something is mounted on `path` or below it (true when mountinfo cannot be read:
/// when in doubt, a caller must not tear anything down).
pub(crate) fn holds_mount(path: &Path) -> bool {
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return true;
    };
    holds_mount_in(&info, path.as_os_str().as_bytes())
}

fn holds_mount_in(info: &[u8], want: &[u8]) -> bool {
    info.split(|&b| b == b'\n').any(|line| {
        let Some(mp) = line.split(|&b| b == b' ').nth(4) else {
            return false;
        };
        let mp = unescape_mountinfo(mp);
        mp == want || (mp.starts_with(want) && mp.get(want.len()) == Some(&b'/'))
    })
}

/// The filesystem type of the mount on `path` (the topmost one), from `/proc/self/mountinfo`.
pub(crate) fn mount_type(path: &Path) -> Option<String> {
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    mount_type_in(&info, path.as_os_str().as_bytes())
}

fn mount_type_in(info: &[u8], path: &[u8]) -> Option<String> {
    // The last line for a path is the topmost mount on it.
    info.split(|&b| b == b'\n').rev().find_map(|line| {
        let mut fields = line.split(|&b| b == b' ');
        let mp = unescape_mountinfo(fields.nth(4)?);
        // Optional fields end with a lone "-"; the type comes next.
        let fstype = fields.skip_while(|f| *f != b"-").nth(1)?;
        (mp == path).then(|| String::from_utf8_lossy(fstype).into_owned())
    })
}

/// The device (`MAJOR:MINOR`, as the names under `/sys/class/bdi/`) of the topmost mount on
/// `path`, from `/proc/self/mountinfo`.
pub(crate) fn mount_device(path: &Path) -> Option<String> {
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    mount_device_in(&info, path.as_os_str().as_bytes())
}

fn mount_device_in(info: &[u8], path: &[u8]) -> Option<String> {
    info.split(|&b| b == b'\n').rev().find_map(|line| {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').take(5).collect();
        let (dev, mp) = (fields.get(2)?, fields.get(4)?);
        (unescape_mountinfo(mp) == path).then(|| String::from_utf8_lossy(dev).into_owned())
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_types() {
        let info = b"22 1 0:21 / / rw - rootfs rootfs rw\n\
            30 22 0:40 / /mnt/ex rw,relatime shared:5 - virtiofs ex rw\n\
            31 22 0:41 / /mnt/a\\040b rw - tmpfs tmpfs rw\n\
            32 30 0:42 / /mnt/ex rw - fuse.ferry ex rw\n";
        assert_eq!(mount_type_in(info, b"/").as_deref(), Some("rootfs"));
        assert_eq!(
            mount_type_in(info, b"/mnt/ex").as_deref(),
            Some("fuse.ferry"),
            "topmost"
        );
        assert_eq!(mount_type_in(info, b"/mnt/a b").as_deref(), Some("tmpfs"));
        assert_eq!(mount_type_in(info, b"/mnt"), None);
        assert_eq!(mount_device_in(info, b"/mnt/ex").as_deref(), Some("0:42"));
        assert_eq!(mount_device_in(info, b"/mnt/a b").as_deref(), Some("0:41"));
        assert_eq!(mount_device_in(info, b"/mnt"), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(br"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape_mountinfo(br"/x\134y"), b"/x\\y");
        assert_eq!(unescape_mountinfo(b"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(br"/end\04"), br"/end\04");
    }

    #[test]
    fn mounts_on_or_below_a_path() {
        let info = b"22 1 0:21 / / rw - rootfs rootfs rw\n\
            30 22 0:40 / /mnt/ex/a\\040b/c rw - tmpfs tmpfs rw\n";
        assert!(holds_mount_in(info, b"/mnt/ex"));
        assert!(holds_mount_in(info, b"/mnt/ex/a b"));
        assert!(holds_mount_in(info, b"/mnt/ex/a b/c"));
        assert!(!holds_mount_in(info, b"/mnt/ex/a"), "a sibling's prefix");
        assert!(!holds_mount_in(info, b"/mnt/ex/a b/c/d"));
    }
}
