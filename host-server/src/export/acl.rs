//! POSIX ACLs: the `system.posix_acl_access` and `system.posix_acl_default` xattrs, with the
//! ids of their named entries translated like owners.
//!
//! The value is the kernel's `posix_acl_xattr` format: a little-endian `u32` version (2), then
//! one 8-byte entry per ACL entry (`u16` tag, `u16` permissions, `u32` id). Only `ACL_USER`
//! and `ACL_GROUP` entries carry an id; the others carry `ACL_UNDEFINED_ID`.
//!
//! How each id mode treats them:
//! - `passthrough`: values pass unchanged.
//! - `map`: each named entry's id is translated guest → host on write and host → guest on
//!   read. A host id outside every range reads as [`OVERFLOW_ID`](crate::ids::OVERFLOW_ID); a
//!   guest id outside every range cannot be written (EINVAL, as `chown` to such an id).
//! - `squash`: ACLs are not supported (the export behaves as a filesystem mounted `noacl`):
//!   the ids of host entries mean nothing in the guest, and no guest id names a host user.
//!   Reading answers ENODATA, writing or removing EOPNOTSUPP, and listings leave the names
//!   out. The same holds on any export with `:acl=off`.
//!
//! Creating under a directory with a default ACL: the guest kernel (with `FUSE_POSIX_ACL` and
//! `FUSE_DONT_MASK`) sends the mode without the umask applied, and the umask beside it. As a
//! local filesystem does, the umask applies only where the parent has no default ACL; where it
//! has one, the host kernel applies that ACL to the requested mode
//! ([`ExportSession::creation_perm`]).

use std::borrow::Cow;

use ferry_protocol::Errno;

use super::inode::Node;
use super::{ExportSession, sys};
use crate::ids::{GuestGid, GuestUid, HostGid, HostUid, IdMode};

/// The access ACL's xattr name.
pub(crate) const ACCESS: &[u8] = b"system.posix_acl_access";
/// The default ACL's xattr name (directories only).
pub(crate) const DEFAULT: &[u8] = b"system.posix_acl_default";

/// `POSIX_ACL_XATTR_VERSION`.
const VERSION: u32 = 2;
/// `ACL_USER`: a named user.
const TAG_USER: u16 = 0x02;
/// `ACL_GROUP`: a named group.
const TAG_GROUP: u16 = 0x08;
/// The tags the kernel accepts: USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER.
const TAGS: [u16; 6] = [0x01, TAG_USER, 0x04, TAG_GROUP, 0x10, 0x20];

/// Whether `name` is one of the two ACL xattrs.
pub(crate) fn is_acl_name(name: &[u8]) -> bool {
    name == ACCESS || name == DEFAULT
}

/// One ACL entry as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclEntry {
    /// `ACL_USER_OBJ`, `ACL_USER`, ... (see [`TAGS`]).
    pub tag: u16,
    /// `rwx` bits.
    pub perm: u16,
    /// The uid (`ACL_USER`) or gid (`ACL_GROUP`); `u32::MAX` for the other tags.
    pub id: u32,
}

/// Decodes an ACL xattr value. EINVAL for a wrong version, a length that is not a whole
/// number of entries, or an unknown tag (what the kernel answers to such a value).
pub fn parse(value: &[u8]) -> Result<Vec<AclEntry>, Errno> {
    let (head, body) = value.split_at_checked(4).ok_or(Errno::EINVAL)?;
    let version = u32::from_le_bytes(head.try_into().map_err(|_| Errno::EINVAL)?);
    if version != VERSION || body.len() % 8 != 0 {
        return Err(Errno::EINVAL);
    }
    body.chunks_exact(8)
        .map(|e| {
            let entry = AclEntry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            };
            if TAGS.contains(&entry.tag) {
                Ok(entry)
            } else {
                Err(Errno::EINVAL)
            }
        })
        .collect()
}

/// Encodes entries as an ACL xattr value.
pub fn encode(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 8 * entries.len());
    out.extend_from_slice(&VERSION.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

/// A guest's ACL value as the host stores it: each named entry's id translated. EINVAL when
/// an id has no host id (outside every range in `map` mode), or the value is malformed.
/// Unchanged in passthrough mode.
pub fn to_host<'a>(mode: &IdMode, value: &'a [u8]) -> Result<Cow<'a, [u8]>, Errno> {
    if matches!(mode, IdMode::Passthrough) {
        return Ok(Cow::Borrowed(value));
    }
    let mut entries = parse(value)?;
    for e in &mut entries {
        e.id = match e.tag {
            TAG_USER => mode.uid_to_host(GuestUid(e.id)).ok_or(Errno::EINVAL)?.0,
            TAG_GROUP => mode.gid_to_host(GuestGid(e.id)).ok_or(Errno::EINVAL)?.0,
            _ => continue,
        };
    }
    Ok(Cow::Owned(encode(&entries)))
}

/// A host ACL value as the guest sees it: each named entry's id translated, an id outside
/// every range shown as the overflow id. Unchanged in passthrough mode; EIO for a value the
/// host should never hold.
pub fn to_guest(mode: &IdMode, value: Vec<u8>) -> Result<Vec<u8>, Errno> {
    if matches!(mode, IdMode::Passthrough) {
        return Ok(value);
    }
    let mut entries = parse(&value).map_err(|_| Errno::EIO)?;
    for e in &mut entries {
        e.id = match e.tag {
            TAG_USER => mode.uid_to_guest(HostUid(e.id)).0,
            TAG_GROUP => mode.gid_to_guest(HostGid(e.id)).0,
            _ => continue,
        };
    }
    Ok(encode(&entries))
}

/// Leaves the ACL names out of a NUL-separated xattr name list.
pub(crate) fn hide_names(list: &[u8]) -> Vec<u8> {
    list.split_inclusive(|&b| b == 0)
        .filter(|n| !is_acl_name(n.strip_suffix(&[0]).unwrap_or(n)))
        .flatten()
        .copied()
        .collect()
}

impl ExportSession {
    /// Whether guests see and set ACLs on this export: on unless `:acl=off`, never in squash
    /// mode (see the module's comment).
    pub fn acls(&self) -> bool {
        self.export.acl() && !matches!(self.export.ids().mode, IdMode::Squash { .. })
    }

    /// An ACL xattr the guest reads, translated (other names pass unchanged).
    pub(super) fn acl_value_to_guest(&self, name: &[u8], value: Vec<u8>) -> Result<Vec<u8>, Errno> {
        if is_acl_name(name) && !value.is_empty() {
            to_guest(&self.export.ids().mode, value)
        } else {
            Ok(value)
        }
    }

    /// An ACL xattr the guest writes, translated (other names pass unchanged); EOPNOTSUPP
    /// where ACLs are off.
    pub(super) fn acl_value_to_host<'a>(
        &self,
        name: &[u8],
        value: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, Errno> {
        if !is_acl_name(name) {
            return Ok(Cow::Borrowed(value));
        }
        if !self.acls() {
            return Err(Errno::EOPNOTSUPP);
        }
        to_host(&self.export.ids().mode, value)
    }

    /// The permission bits to create an object with in `dir`, from the guest's `mode` and
    /// `umask`, and whether the host kernel applies `dir`'s default ACL to them (then the
    /// umask is not applied and the resulting mode must not be corrected afterwards: the
    /// group bits are the new ACL's mask).
    pub(super) fn creation_perm(&self, dir: &Node, mode: u32, umask: u32) -> (u32, bool) {
        let inherits = self.acls()
            && sys::getxattr(
                &sys::proc_path(dir.fd()),
                c"system.posix_acl_default",
                &mut [],
            )
            .is_ok_and(|n| n > 0);
        if inherits {
            (mode & 0o7777, true)
        } else {
            (mode & !umask & 0o7777, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{IdMap, IdRange, OVERFLOW_ID, RangeMap};
    use proptest::prelude::*;

    fn e(tag: u16, perm: u16, id: u32) -> AclEntry {
        AclEntry { tag, perm, id }
    }

    const NONE: u32 = u32::MAX;

    fn map(ranges: Vec<IdRange>) -> IdMode {
        IdMode::Map(IdMap {
            uids: RangeMap::new("uid", ranges.clone()).unwrap(),
            gids: RangeMap::new("gid", ranges).unwrap(),
        })
    }

    #[test]
    fn golden_bytes() {
        // user::rw-, user:1000:rwx, group::r--, mask::rwx, other::---
        let bytes = [
            0x02, 0x00, 0x00, 0x00, // version 2
            0x01, 0x00, 0x06, 0x00, 0xff, 0xff, 0xff, 0xff, // USER_OBJ rw-
            0x02, 0x00, 0x07, 0x00, 0xe8, 0x03, 0x00, 0x00, // USER 1000 rwx
            0x04, 0x00, 0x04, 0x00, 0xff, 0xff, 0xff, 0xff, // GROUP_OBJ r--
            0x10, 0x00, 0x07, 0x00, 0xff, 0xff, 0xff, 0xff, // MASK rwx
            0x20, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, // OTHER ---
        ];
        let want = vec![
            e(0x01, 6, NONE),
            e(TAG_USER, 7, 1000),
            e(0x04, 4, NONE),
            e(0x10, 7, NONE),
            e(0x20, 0, NONE),
        ];
        assert_eq!(parse(&bytes).unwrap(), want);
        assert_eq!(encode(&want), bytes);
    }

    #[test]
    fn malformed_values_are_einval() {
        for bad in [
            &[][..],
            &[2, 0, 0][..],
            &[1, 0, 0, 0][..],
            &[2, 0, 0, 0, 1, 0, 6, 0][..],
            &[2, 0, 0, 0, 0x40, 0, 6, 0, 0, 0, 0, 0][..],
        ] {
            assert_eq!(parse(bad), Err(Errno::EINVAL), "{bad:?}");
            assert_eq!(
                to_host(
                    &map(vec![IdRange {
                        guest: 0,
                        host: 0,
                        count: 1
                    }]),
                    bad
                ),
                Err(Errno::EINVAL)
            );
        }
    }

    #[test]
    fn map_translates_named_entries_and_refuses_unmapped_ids() {
        let m = map(vec![IdRange {
            guest: 1000,
            host: 5000,
            count: 10,
        }]);
        let guest = encode(&[
            e(0x01, 7, NONE),
            e(TAG_USER, 7, 1001),
            e(0x04, 5, NONE),
            e(TAG_GROUP, 5, 1009),
            e(0x10, 7, NONE),
            e(0x20, 0, NONE),
        ]);
        let host = to_host(&m, &guest).unwrap().into_owned();
        assert_eq!(
            parse(&host).unwrap(),
            vec![
                e(0x01, 7, NONE),
                e(TAG_USER, 7, 5001),
                e(0x04, 5, NONE),
                e(TAG_GROUP, 5, 5009),
                e(0x10, 7, NONE),
                e(0x20, 0, NONE),
            ]
        );
        assert_eq!(to_guest(&m, host).unwrap(), guest);
        // A guest id outside the ranges cannot be written.
        let outside = encode(&[e(0x01, 7, NONE), e(TAG_USER, 7, 999)]);
        assert_eq!(to_host(&m, &outside), Err(Errno::EINVAL));
        // A host id outside the ranges reads as the overflow id.
        let host = encode(&[e(TAG_GROUP, 7, 0)]);
        assert_eq!(
            parse(&to_guest(&m, host).unwrap()).unwrap(),
            vec![e(TAG_GROUP, 7, OVERFLOW_ID)]
        );
        // Passthrough keeps values byte for byte, even malformed ones (the host decides).
        assert_eq!(
            to_host(&IdMode::Passthrough, &[9, 9]).unwrap().as_ref(),
            &[9, 9]
        );
    }

    #[test]
    fn hides_acl_names_in_lists() {
        let list = b"user.a\0system.posix_acl_access\0security.x\0system.posix_acl_default\0";
        assert_eq!(hide_names(list), b"user.a\0security.x\0");
        assert_eq!(hide_names(b""), b"");
    }

    /// Squash mode and `acl: false` hide the host's ACLs and refuse new ones; map mode shows
    /// them translated. (Needs setfacl, which .ci/run installs.)
    #[test]
    fn squash_and_acl_off_have_no_acls() {
        use super::super::{Export, ExportConfig, ROOT_ID, XattrReply};
        use crate::ids::{GuestGid, GuestUid, IdPolicy};
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let st = std::process::Command::new("setfacl")
            .args(["-m", "u:1001:rw-"])
            .arg(&f)
            .status()
            .expect("setfacl runs");
        assert!(st.success());
        let squash = IdMode::Squash {
            uid: GuestUid(0),
            gid: GuestGid(0),
        };
        let mapped = map(vec![IdRange {
            guest: 0,
            host: 0,
            count: 2000,
        }]);
        let ctx = ferry_protocol::Ctx {
            uid: 0,
            gid: 0,
            pid: 1,
            groups: Vec::new(),
        };
        for (mode, acl, shown) in [
            (squash.clone(), true, false),
            (IdMode::Passthrough, false, false),
            (mapped, false, false),
            (IdMode::Passthrough, true, true),
        ] {
            let export = Export::open(ExportConfig {
                name: "acl".into(),
                path: dir.path().to_path_buf(),
                read_only: false,
                ids: IdPolicy::new(mode.clone()),
                devices: false,
                acl,
                setid: false,
            })
            .unwrap();
            let s = ExportSession::new(export).unwrap();
            let ino = s.lookup(&ctx, ROOT_ID, b"f").unwrap().ino;
            let got = s.getxattr(&ctx, ino, ACCESS, 4096);
            let list = match s.listxattr(&ctx, ino, 4096).unwrap() {
                XattrReply::Data(d) => d,
                other => panic!("{other:?}"),
            };
            let value = encode(&[e(0x01, 6, NONE), e(0x04, 4, NONE), e(0x20, 0, NONE)]);
            let set = s.setxattr(&ctx, ino, ACCESS, &value, 0);
            let what = format!("{mode} acl={acl}");
            if shown {
                assert!(got.is_ok(), "{what}");
                assert!(hide_names(&list) != list, "{what}");
                assert_eq!(set, Ok(()), "{what}");
            } else {
                assert_eq!(got, Err(Errno::ENODATA), "{what}");
                assert_eq!(hide_names(&list), list, "{what}");
                assert_eq!(set, Err(Errno::EOPNOTSUPP), "{what}");
                assert_eq!(s.removexattr(&ctx, ino, ACCESS), Err(Errno::EOPNOTSUPP));
                assert_eq!(s.getxattr(&ctx, ino, DEFAULT, 0), Err(Errno::ENODATA));
            }
        }
    }

    fn entries() -> impl Strategy<Value = Vec<AclEntry>> {
        proptest::collection::vec(
            (prop::sample::select(TAGS.to_vec()), 0u16..8, 0u32..20_000).prop_map(
                |(tag, perm, id)| {
                    let named = tag == TAG_USER || tag == TAG_GROUP;
                    e(tag, perm, if named { id } else { NONE })
                },
            ),
            0..12,
        )
    }

    proptest! {
        /// In `map` mode, an entry list whose ids are all in range goes guest → host → guest
        /// unchanged, and each named id lands on its host id; a list with any id outside the
        /// ranges is refused whole.
        #[test]
        fn entry_lists_round_trip_through_the_map(
            list in entries(),
            guest in 0u32..10_000,
            host in 0u32..10_000,
            count in 1u32..10_000,
        ) {
            let ranges = vec![IdRange { guest, host, count }];
            let mode = map(ranges);
            let value = encode(&list);
            prop_assert_eq!(parse(&value).unwrap(), list.clone());
            let named = |e: &AclEntry| e.tag == TAG_USER || e.tag == TAG_GROUP;
            let in_range = list
                .iter()
                .filter(|e| named(e))
                .all(|e| e.id >= guest && e.id - guest < count);
            match to_host(&mode, &value) {
                Ok(h) => {
                    prop_assert!(in_range);
                    let h = h.into_owned();
                    for (g, hst) in list.iter().zip(parse(&h).unwrap()) {
                        let want = if named(g) { g.id - guest + host } else { g.id };
                        prop_assert_eq!((g.tag, g.perm, want), (hst.tag, hst.perm, hst.id));
                    }
                    prop_assert_eq!(to_guest(&mode, h).unwrap(), value.clone());
                }
                Err(err) => {
                    prop_assert!(!in_range);
                    prop_assert_eq!(err, Errno::EINVAL);
                }
            }
            // Passthrough: byte for byte, both ways.
            let through = to_host(&IdMode::Passthrough, &value).unwrap().into_owned();
            prop_assert_eq!(&through, &value);
            prop_assert_eq!(to_guest(&IdMode::Passthrough, value.clone()).unwrap(), value);
        }
    }
}
