//! How a replay thread's requests are answered: the one rule that both answerers follow.
//!
//! A guest replays each host change as a real syscall on its mount (`mknod` for a creation,
//! `unlink` for a removal, `rename` for a rename, a touch for a data or attribute change), so
//! that its kernel raises the inotify events a local filesystem would. The FUSE requests those
//! syscalls cause must not change the host: the change already happened there. They are
//! answered by the guest agent on the mounts it serves, and by the virtio-fs backend on
//! virtio-fs mounts; both ask the functions here what to answer, given
//!
//! - the kind of change being replayed ([`ChangeKind`]),
//! - which of the change's names the request names ([`Side`]),
//! - and what the host holds under that name now ([`Host`]), which the answerer reads.
//!
//! The rule, in words:
//!
//! - A name the change does not name is answered from the host as usual (a read).
//! - A lookup answers how the name looked *before* the change while the change still holds:
//!   absent before a creation and before a rename's target; the removed or renamed object
//!   (or a synthetic stand-in when the host no longer has it) for a removal's or a rename's
//!   source. When something newer than the change holds the name, the host's object answers,
//!   so the kernel never caches a stale node under a name a program is using.
//! - A creation hands out the host's object, never a new one. When the host no longer has it
//!   under the name, or another object holds the name (a removal or rename follows in the
//!   stream), it hands out the change's own object if the answerer holds it (the change came
//!   with a node the answerer holds a lookup of, which stays valid however the host has moved
//!   on), and a synthetic node otherwise. Later changes to the name then meet the same node.
//! - A removal or a rename succeeds without touching the host, whatever the host holds now:
//!   the stream is replayed in order, so the guest's tree passes through the states a native
//!   watcher saw, and a change the host has since overtaken is followed by the change that
//!   overtook it. The answerer notes when the host's present differs from the change's
//!   outcome ([`overtaken`]) and makes the guest ask the host again for those names once the
//!   call has returned, so nothing stale stays cached.
//! - A request that would change the host in any other way is refused with EPERM; on a
//!   synthetic node, ESTALE.
//! - When the host cannot be asked, a lookup answers the view (the change still holds as far
//!   as anyone knows) and anything that would change the guest's tree fails with EIO.

use crate::{ChangeKind, Errno};

/// Node ids from here up are synthetic: stand-ins for objects that a replay removes or renames
/// but the host no longer has, answered by whoever answers the replay and unknown to the
/// export core.
pub const SYNTHETIC_BASE: u64 = 1 << 62;

/// Whether `ino` is a synthetic node id.
pub fn is_synthetic(ino: u64) -> bool {
    ino >= SYNTHETIC_BASE
}

/// Which of the change's names a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The change's `path`: created, removed, changed, or a rename's source.
    From,
    /// A rename's target.
    To,
    /// Neither: a name the change is not about.
    Neither,
}

/// What the host holds under a name now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// Nothing (ENOENT).
    Absent,
    /// The object the change is about (for a rename's target: the renamed object).
    Same,
    /// Another object: something newer than the change took the name.
    Other,
    /// The host could not be asked (an error other than ENOENT).
    Unknown,
}

impl Host {
    /// Whether the host holds something under the name.
    pub fn present(self) -> bool {
        matches!(self, Host::Same | Host::Other)
    }
}

/// What to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Answer from the host, as for any other request (a read).
    AsUsual,
    /// Answer how the name looked before the change: ENOENT for a creation and a rename's
    /// target; for a removal's or rename's source the change's object, or a synthetic node of
    /// its file type when the host no longer has it.
    Before,
    /// Hand out the host's object (a replayed creation).
    HostObject,
    /// A synthetic node of the change's file type.
    Synthetic,
    /// The change's own object, which the answerer holds (a replayed creation the host has
    /// moved on from).
    Change,
    /// Succeed without doing anything (the host already shows the outcome).
    Done,
    /// Fail with this errno.
    Fail(Errno),
}

/// The replay thread's LOOKUP of a name.
pub fn lookup(kind: ChangeKind, side: Side, host: Host) -> Answer {
    let absent_before = matches!(
        (kind, side),
        (ChangeKind::Created, Side::From) | (ChangeKind::Renamed, Side::To)
    );
    match (side, host) {
        (Side::Neither, _) => Answer::AsUsual,
        // Something newer took the name: the host answers.
        (_, Host::Other) if absent_before => Answer::AsUsual,
        _ if absent_before => Answer::Before,
        // The object removed, renamed or changed: while the host has something there, it
        // answers (a removal or rename then fails as stale); when it has nothing, the view.
        (_, Host::Same | Host::Other) => Answer::AsUsual,
        (_, Host::Absent | Host::Unknown) => Answer::Before,
    }
}

/// The replay thread's MKNOD, MKDIR, SYMLINK or CREATE of a name; `held`: the answerer holds
/// the change's own object (a node the host looked up when it sent the change).
pub fn create(kind: ChangeKind, side: Side, host: Host, held: bool) -> Answer {
    if (kind, side) != (ChangeKind::Created, Side::From) {
        return Answer::Fail(Errno::EPERM);
    }
    match host {
        Host::Same => Answer::HostObject,
        Host::Absent | Host::Other if held => Answer::Change,
        Host::Absent | Host::Other => Answer::Synthetic,
        Host::Unknown => Answer::Fail(Errno::EIO),
    }
}

/// The replay thread's UNLINK or RMDIR of a name.
pub fn remove(kind: ChangeKind, side: Side, host: Host) -> Answer {
    if (kind, side) != (ChangeKind::Removed, Side::From) {
        return Answer::Fail(Errno::EPERM);
    }
    match host {
        Host::Absent | Host::Same | Host::Other => Answer::Done,
        Host::Unknown => Answer::Fail(Errno::EIO),
    }
}

/// The replay thread's RENAME or RENAME2 (`flags`: `RENAME_*`): `from` and `to` say which
/// names of the change the source and target are, `src` and `dst` what the host holds there.
pub fn rename(kind: ChangeKind, from: Side, to: Side, flags: u32, src: Host, dst: Host) -> Answer {
    if kind != ChangeKind::Renamed || from != Side::From || to != Side::To || flags != 0 {
        return Answer::Fail(Errno::EPERM);
    }
    match (src, dst) {
        (Host::Unknown, _) | (_, Host::Unknown) => Answer::Fail(Errno::EIO),
        _ => Answer::Done,
    }
}

/// Whether the host's present differs from the outcome of a replayed change that the rule
/// let through: `names` are what the host holds under the change's names (for a creation its
/// name, for a removal its name, for a rename the source then the target). The answerer then
/// has the guest ask the host again for those names after the call.
pub fn overtaken(kind: ChangeKind, names: &[Host]) -> bool {
    match (kind, names) {
        (ChangeKind::Created, [h]) => *h != Host::Same,
        (ChangeKind::Removed, [h]) => *h != Host::Absent,
        (ChangeKind::Renamed, [src, dst]) => *src != Host::Absent || !dst.present(),
        _ => false,
    }
}

/// Any other request of the replay thread that would change the host (WRITE, LINK, SETXATTR,
/// REMOVEXATTR, ...): refused; on a synthetic node, stale.
pub fn other_change(synthetic: bool) -> Answer {
    Answer::Fail(if synthetic {
        Errno::ESTALE
    } else {
        Errno::EPERM
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Answer::{AsUsual, Before, Change, Done, Fail, HostObject, Synthetic};
    use ChangeKind::*;
    use Host::{Absent, Other, Same, Unknown};

    const HOSTS: [Host; 4] = [Absent, Same, Other, Unknown];

    #[test]
    fn lookups() {
        // (kind, side) -> answers for host Absent, Same, Other, Unknown.
        let table: &[(ChangeKind, Side, [Answer; 4])] = &[
            (Created, Side::From, [Before, Before, AsUsual, Before]),
            (Renamed, Side::To, [Before, Before, AsUsual, Before]),
            (Removed, Side::From, [Before, AsUsual, AsUsual, Before]),
            (Renamed, Side::From, [Before, AsUsual, AsUsual, Before]),
            (Data, Side::From, [Before, AsUsual, AsUsual, Before]),
            (Attrib, Side::From, [Before, AsUsual, AsUsual, Before]),
            (Created, Side::Neither, [AsUsual; 4]),
            (Removed, Side::Neither, [AsUsual; 4]),
        ];
        for (kind, side, want) in table {
            for (host, want) in HOSTS.iter().zip(want) {
                assert_eq!(
                    lookup(*kind, *side, *host),
                    *want,
                    "{kind:?} {side:?} {host:?}"
                );
            }
        }
    }

    #[test]
    fn creations() {
        let got: Vec<_> = HOSTS.map(|h| create(Created, Side::From, h, false)).into();
        assert_eq!(got, [Synthetic, HostObject, Synthetic, Fail(Errno::EIO)]);
        // The change's own node, when held, whatever the host has moved on to: later changes
        // to the name meet the node the creation handed out.
        let got: Vec<_> = HOSTS.map(|h| create(Created, Side::From, h, true)).into();
        assert_eq!(got, [Change, HostObject, Change, Fail(Errno::EIO)]);
        for (kind, side) in [
            (Created, Side::Neither),
            (Removed, Side::From),
            (Renamed, Side::To),
        ] {
            for h in HOSTS {
                assert_eq!(create(kind, side, h, true), Fail(Errno::EPERM));
            }
        }
    }

    #[test]
    fn removals() {
        let got: Vec<_> = HOSTS.map(|h| remove(Removed, Side::From, h)).into();
        assert_eq!(got, [Done, Done, Done, Fail(Errno::EIO)]);
        for (kind, side) in [
            (Removed, Side::Neither),
            (Created, Side::From),
            (Renamed, Side::From),
        ] {
            assert_eq!(remove(kind, side, Absent), Fail(Errno::EPERM));
        }
    }

    #[test]
    fn renames() {
        let r = |src, dst| rename(Renamed, Side::From, Side::To, 0, src, dst);
        assert_eq!(r(Absent, Same), Done);
        assert_eq!(r(Absent, Other), Done);
        // Overtaken on the host: replayed all the same, the later change follows.
        assert_eq!(r(Absent, Absent), Done, "target gone again");
        assert_eq!(r(Same, Same), Done, "source back");
        assert_eq!(r(Other, Absent), Done);
        assert!(overtaken(Renamed, &[Absent, Absent]));
        assert!(overtaken(Renamed, &[Same, Same]));
        assert!(!overtaken(Renamed, &[Absent, Same]));
        assert!(overtaken(Created, &[Other]));
        assert!(!overtaken(Created, &[Same]));
        assert!(overtaken(Removed, &[Other]));
        assert!(!overtaken(Removed, &[Absent]));
        assert_eq!(r(Unknown, Same), Fail(Errno::EIO));
        assert_eq!(r(Absent, Unknown), Fail(Errno::EIO));
        let exchange = 2;
        assert_eq!(
            rename(Renamed, Side::From, Side::To, exchange, Absent, Same),
            Fail(Errno::EPERM)
        );
        assert_eq!(
            rename(Renamed, Side::To, Side::From, 0, Absent, Same),
            Fail(Errno::EPERM)
        );
        assert_eq!(
            rename(Removed, Side::From, Side::To, 0, Absent, Same),
            Fail(Errno::EPERM)
        );
        assert_eq!(
            rename(Renamed, Side::From, Side::Neither, 0, Absent, Same),
            Fail(Errno::EPERM)
        );
    }

    #[test]
    fn other_changes_and_synthetic_ids() {
        assert_eq!(other_change(false), Fail(Errno::EPERM));
        assert_eq!(other_change(true), Fail(Errno::ESTALE));
        assert!(is_synthetic(SYNTHETIC_BASE));
        assert!(!is_synthetic(SYNTHETIC_BASE - 1));
        assert!(!is_synthetic(crate::ROOT_ID));
    }
}
