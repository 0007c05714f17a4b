//! Guest and host ids, and how one export translates between them.
//!
//! Ids travel in two worlds: the guest's (what programs in the VM see and the protocol's
//! [`ferry_protocol::Ctx`] carries) and the host's (what `stat` on the host directory reports
//! and `chown` takes). Each world has its own newtypes, [`GuestUid`]/[`GuestGid`] and
//! [`HostUid`]/[`HostGid`], and the only ways from one to the other are the methods of
//! [`IdMode`]: code that hands a guest id to a host call, or a host id to the guest, without
//! translating does not compile.
//!
//! The modes, as `--ids` spells them:
//! - `passthrough`: ids pass unchanged (the server must run as root to create files as the
//!   caller).
//! - `map:RANGES`: like an idmapped mount. `RANGES` is a comma-separated list of
//!   `[u:|g:|b:]GUEST:HOST:COUNT` (uids only, gids only, or both; both when unprefixed). Host
//!   ids outside every range show as [`OVERFLOW_ID`] and guest ids outside every range cannot
//!   be set or create anything.
//! - `squash:UID:GID` (or `squash`, for the server's own uid and gid): every host object shows
//!   as owned by `UID:GID`, and everything the guest creates is owned on the host by the
//!   server's user.

use std::fmt;
use std::str::FromStr;

pub use ferry_protocol::Permissions;

/// The id shown for a host id that no range maps (the kernel's default `overflowuid`, the
/// "nobody" user).
pub const OVERFLOW_ID: u32 = 65534;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u32);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A user id as the guest sees it.
    GuestUid
);
id_type!(
    /// A group id as the guest sees it.
    GuestGid
);
id_type!(
    /// A user id on the host.
    HostUid
);
id_type!(
    /// A group id on the host.
    HostGid
);

/// `count` consecutive ids from `guest` in the guest are `count` consecutive ids from `host` on
/// the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    /// First guest id.
    pub guest: u32,
    /// First host id.
    pub host: u32,
    /// Number of ids (at least 1).
    pub count: u32,
}

impl IdRange {
    /// Last guest id of the range.
    fn guest_last(&self) -> u32 {
        self.guest + (self.count - 1)
    }

    /// Last host id of the range.
    fn host_last(&self) -> u32 {
        self.host + (self.count - 1)
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.guest, self.host, self.count)
    }
}

/// The ranges for one kind of id, checked: no two overlap on the guest side or on the host
/// side (so translation is a bijection between the ranges' union on each side), and no range
/// reaches `u32::MAX`, which `chown` reads as "leave unchanged".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeMap {
    ranges: Vec<IdRange>,
}

impl RangeMap {
    /// Checks `ranges`; `what` ("uid" or "gid") names them in errors.
    pub fn new(what: &str, ranges: Vec<IdRange>) -> Result<RangeMap, String> {
        for r in &ranges {
            if r.count == 0 {
                return Err(format!("{what} range {r}: COUNT must be at least 1"));
            }
            for (side, start) in [("guest", r.guest), ("host", r.host)] {
                if u64::from(start) + u64::from(r.count) > u64::from(u32::MAX) {
                    return Err(format!(
                        "{what} range {r}: {side} ids run past {}, the largest id",
                        u32::MAX - 1
                    ));
                }
            }
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.guest <= b.guest_last() && b.guest <= a.guest_last() {
                    return Err(format!(
                        "{what} ranges {a} and {b} overlap on the guest side"
                    ));
                }
                if a.host <= b.host_last() && b.host <= a.host_last() {
                    return Err(format!(
                        "{what} ranges {a} and {b} overlap on the host side"
                    ));
                }
            }
        }
        Ok(RangeMap { ranges })
    }

    /// The ranges, as given.
    pub fn ranges(&self) -> &[IdRange] {
        &self.ranges
    }

    fn to_host(&self, id: u32) -> Option<u32> {
        self.ranges
            .iter()
            .find(|r| id >= r.guest && id <= r.guest_last())
            .map(|r| r.host + (id - r.guest))
    }

    fn to_guest(&self, id: u32) -> Option<u32> {
        self.ranges
            .iter()
            .find(|r| id >= r.host && id <= r.host_last())
            .map(|r| r.guest + (id - r.host))
    }
}

/// Separate uid and gid ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    /// Uid ranges.
    pub uids: RangeMap,
    /// Gid ranges.
    pub gids: RangeMap,
}

impl IdMap {
    /// The host uid of a guest uid; `None` outside every range.
    pub fn uid_to_host(&self, uid: GuestUid) -> Option<HostUid> {
        self.uids.to_host(uid.0).map(HostUid)
    }

    /// The host gid of a guest gid; `None` outside every range.
    pub fn gid_to_host(&self, gid: GuestGid) -> Option<HostGid> {
        self.gids.to_host(gid.0).map(HostGid)
    }

    /// The guest uid of a host uid; `None` outside every range.
    pub fn uid_to_guest(&self, uid: HostUid) -> Option<GuestUid> {
        self.uids.to_guest(uid.0).map(GuestUid)
    }

    /// The guest gid of a host gid; `None` outside every range.
    pub fn gid_to_guest(&self, gid: HostGid) -> Option<GuestGid> {
        self.gids.to_guest(gid.0).map(GuestGid)
    }
}

/// How an export translates ids (`--ids MODE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdMode {
    /// Ids pass unchanged.
    Passthrough,
    /// Ranges, as in an idmapped mount.
    Map(IdMap),
    /// Every host object shows as owned by `uid:gid`; the guest creates as the server's user.
    Squash {
        /// The owner every host object shows.
        uid: GuestUid,
        /// The group every host object shows.
        gid: GuestGid,
    },
}

impl IdMode {
    /// What a server running as `euid:egid` uses when nothing is configured: passthrough for
    /// root (which can create files as any caller), otherwise squash to its own ids, so that
    /// files look owned by the same numbers inside and out.
    pub fn default_for(euid: u32, egid: u32) -> IdMode {
        if euid == 0 {
            IdMode::Passthrough
        } else {
            IdMode::Squash {
                uid: GuestUid(euid),
                gid: GuestGid(egid),
            }
        }
    }

    /// Whether this mode creates files as the calling guest user, which needs root.
    pub fn creates_as_caller(&self) -> bool {
        !matches!(self, IdMode::Squash { .. })
    }

    /// The guest uid a host uid shows as.
    pub fn uid_to_guest(&self, uid: HostUid) -> GuestUid {
        match self {
            IdMode::Passthrough => GuestUid(uid.0),
            IdMode::Map(m) => m.uid_to_guest(uid).unwrap_or(GuestUid(OVERFLOW_ID)),
            IdMode::Squash { uid, .. } => *uid,
        }
    }

    /// The guest gid a host gid shows as.
    pub fn gid_to_guest(&self, gid: HostGid) -> GuestGid {
        match self {
            IdMode::Passthrough => GuestGid(gid.0),
            IdMode::Map(m) => m.gid_to_guest(gid).unwrap_or(GuestGid(OVERFLOW_ID)),
            IdMode::Squash { gid, .. } => *gid,
        }
    }

    /// The host uid a guest uid becomes when it owns something; `None` when this mode cannot
    /// give a host file that owner (outside every range, or any uid in squash mode, where the
    /// host owner is always the server's user).
    pub fn uid_to_host(&self, uid: GuestUid) -> Option<HostUid> {
        match self {
            IdMode::Passthrough => Some(HostUid(uid.0)),
            IdMode::Map(m) => m.uid_to_host(uid),
            IdMode::Squash { .. } => None,
        }
    }

    /// As [`Self::uid_to_host`] for gids.
    pub fn gid_to_host(&self, gid: GuestGid) -> Option<HostGid> {
        match self {
            IdMode::Passthrough => Some(HostGid(gid.0)),
            IdMode::Map(m) => m.gid_to_host(gid),
            IdMode::Squash { .. } => None,
        }
    }
}

impl fmt::Display for IdMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdMode::Passthrough => write!(f, "passthrough"),
            IdMode::Squash { uid, gid } => write!(f, "squash:{uid}:{gid}"),
            IdMode::Map(m) => {
                write!(f, "map:")?;
                let mut first = true;
                let mut item = |f: &mut fmt::Formatter<'_>, s: String| {
                    let sep = if first { "" } else { "," };
                    first = false;
                    write!(f, "{sep}{s}")
                };
                if m.uids == m.gids {
                    for r in m.uids.ranges() {
                        item(f, r.to_string())?;
                    }
                } else {
                    for r in m.uids.ranges() {
                        item(f, format!("u:{r}"))?;
                    }
                    for r in m.gids.ranges() {
                        item(f, format!("g:{r}"))?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// What `--ids` accepts, for error messages.
pub const IDS_SYNTAX: &str =
    "passthrough, squash, squash:UID:GID, or map:[u:|g:|b:]GUEST:HOST:COUNT[,...]";

fn parse_id(s: &str, what: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("{what} {s:?} is not a number from 0 to {}", u32::MAX - 1))?;
    if v == u32::MAX {
        return Err(format!(
            "{what} {v} is reserved (chown reads it as \"unchanged\"); the largest id is {}",
            u32::MAX - 1
        ));
    }
    Ok(v)
}

impl FromStr for IdMode {
    type Err = String;

    /// Parses a mode; `squash` alone squashes to this process's effective uid and gid.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = match s.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (s, None),
        };
        match (kind, rest) {
            ("passthrough", None) => Ok(IdMode::Passthrough),
            ("passthrough", Some(_)) => Err("passthrough takes no arguments".into()),
            ("squash", None) => {
                // SAFETY: geteuid and getegid cannot fail and touch no memory.
                let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
                Ok(IdMode::Squash {
                    uid: GuestUid(uid),
                    gid: GuestGid(gid),
                })
            }
            ("squash", Some(r)) => {
                let (u, g) = r
                    .split_once(':')
                    .ok_or_else(|| format!("squash:{r}: expected squash:UID:GID"))?;
                Ok(IdMode::Squash {
                    uid: GuestUid(parse_id(u, "squash uid")?),
                    gid: GuestGid(parse_id(g, "squash gid")?),
                })
            }
            ("map", None) => Err("map needs at least one GUEST:HOST:COUNT range".into()),
            ("map", Some(r)) => parse_map(r).map(IdMode::Map),
            _ => Err(format!("unknown mode {kind:?}")),
        }
    }
}

fn parse_map(s: &str) -> Result<IdMap, String> {
    let mut uids = Vec::new();
    let mut gids = Vec::new();
    for item in s.split(',') {
        let (for_uids, for_gids, spec) = if let Some(r) = item.strip_prefix("u:") {
            (true, false, r)
        } else if let Some(r) = item.strip_prefix("g:") {
            (false, true, r)
        } else if let Some(r) = item.strip_prefix("b:") {
            (true, true, r)
        } else {
            (true, true, item)
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let [guest, host, count] = parts[..] else {
            return Err(format!(
                "range {item:?}: expected [u:|g:|b:]GUEST:HOST:COUNT"
            ));
        };
        let guest = parse_id(guest, "GUEST")?;
        let host = parse_id(host, "HOST")?;
        let count: u32 = count
            .parse()
            .map_err(|_| format!("range {item:?}: COUNT {count:?} is not a number"))?;
        let range = IdRange { guest, host, count };
        if for_uids {
            uids.push(range);
        }
        if for_gids {
            gids.push(range);
        }
    }
    if uids.is_empty() {
        return Err("map has gid ranges but no uid range (add u:GUEST:HOST:COUNT)".into());
    }
    if gids.is_empty() {
        return Err("map has uid ranges but no gid range (add g:GUEST:HOST:COUNT)".into());
    }
    Ok(IdMap {
        uids: RangeMap::new("uid", uids)?,
        gids: RangeMap::new("gid", gids)?,
    })
}

/// `on` or `off`.
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

/// `guest` or `host`.
pub fn parse_permissions(s: &str) -> Result<Permissions, String> {
    match s {
        "guest" => Ok(Permissions::Guest),
        "host" => Ok(Permissions::Host),
        _ => Err(format!("{s:?}: expected guest or host")),
    }
}

/// Everything about owners for one export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdPolicy {
    /// How ids translate.
    pub mode: IdMode,
    /// A `chown`, or a `chmod` the host refuses, is kept in the `user.ferry.owner` xattr of the
    /// host file and shown from then on.
    pub persist_owners: bool,
    /// Who checks permissions.
    pub permissions: Permissions,
}

impl IdPolicy {
    /// `mode` with its defaults: persisted owners in squash mode only; permission checks by
    /// the host in squash mode (every VM user can do what the server's user can, as with
    /// osxfs), by the guest kernel otherwise (as on a local filesystem).
    pub fn new(mode: IdMode) -> IdPolicy {
        let squash = matches!(mode, IdMode::Squash { .. });
        IdPolicy {
            mode,
            persist_owners: squash,
            permissions: if squash {
                Permissions::Host
            } else {
                Permissions::Guest
            },
        }
    }

    /// The defaults for this process: see [`IdMode::default_for`].
    pub fn for_this_process() -> IdPolicy {
        // SAFETY: geteuid and getegid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        IdPolicy::new(IdMode::default_for(uid, gid))
    }

    /// Ids unchanged, nothing persisted, the guest kernel checks (what the export core's own
    /// tests use).
    pub fn passthrough() -> IdPolicy {
        IdPolicy::new(IdMode::Passthrough)
    }
}

impl fmt::Display for IdPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ids={} persist-owners={} permissions={}",
            self.mode,
            if self.persist_owners { "on" } else { "off" },
            match self.permissions {
                Permissions::Guest => "guest",
                Permissions::Host => "host",
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(s: &str) -> IdMap {
        match s.parse::<IdMode>() {
            Ok(IdMode::Map(m)) => m,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn r(guest: u32, host: u32, count: u32) -> IdRange {
        IdRange { guest, host, count }
    }

    #[test]
    fn parses_modes() {
        let squash = |u, g| IdMode::Squash {
            uid: GuestUid(u),
            gid: GuestGid(g),
        };
        let both = |rs: Vec<IdRange>| {
            IdMode::Map(IdMap {
                uids: RangeMap { ranges: rs.clone() },
                gids: RangeMap { ranges: rs },
            })
        };
        let table: Vec<(&str, IdMode)> = vec![
            ("passthrough", IdMode::Passthrough),
            ("squash:1000:1000", squash(1000, 1000)),
            ("squash:0:0", squash(0, 0)),
            ("squash:1000:100", squash(1000, 100)),
            ("squash:4294967294:1", squash(u32::MAX - 1, 1)),
            ("map:0:100000:65536", both(vec![r(0, 100_000, 65536)])),
            (
                "map:0:100000:1000,1000:1000:1",
                both(vec![r(0, 100_000, 1000), r(1000, 1000, 1)]),
            ),
            ("map:b:5:6:7", both(vec![r(5, 6, 7)])),
            (
                "map:u:1000:1000:1,g:1000:100:1",
                IdMode::Map(IdMap {
                    uids: RangeMap {
                        ranges: vec![r(1000, 1000, 1)],
                    },
                    gids: RangeMap {
                        ranges: vec![r(1000, 100, 1)],
                    },
                }),
            ),
            (
                "map:0:0:1,u:1000:2000:10,g:50:60:1",
                IdMode::Map(IdMap {
                    uids: RangeMap {
                        ranges: vec![r(0, 0, 1), r(1000, 2000, 10)],
                    },
                    gids: RangeMap {
                        ranges: vec![r(0, 0, 1), r(50, 60, 1)],
                    },
                }),
            ),
            ("map:4294967293:0:2", both(vec![r(u32::MAX - 2, 0, 2)])),
        ];
        for (input, want) in table {
            let got: IdMode = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got, want, "{input}");
            // Display spells it back in a form that parses to the same mode.
            assert_eq!(got.to_string().parse::<IdMode>().unwrap(), want, "{input}");
        }
        // `squash` alone is this process's own ids.
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!("squash".parse::<IdMode>().unwrap(), squash(uid, gid));
    }

    #[test]
    fn refuses_bad_modes_with_a_reason() {
        let table = [
            ("", "unknown mode"),
            ("pass", "unknown mode"),
            ("Passthrough", "unknown mode"),
            ("passthrough:1", "no arguments"),
            ("squash:1000", "squash:UID:GID"),
            ("squash:1000:", "squash gid"),
            ("squash:x:1", "squash uid"),
            ("squash:-1:1", "squash uid"),
            ("squash:1:4294967296", "squash gid"),
            ("squash:4294967295:1", "reserved"),
            ("squash:1:2:3", "squash gid"),
            ("map", "at least one"),
            ("map:", "expected [u:|g:|b:]GUEST:HOST:COUNT"),
            ("map:0:1000", "expected [u:|g:|b:]GUEST:HOST:COUNT"),
            ("map:0:1000:1:2", "expected [u:|g:|b:]GUEST:HOST:COUNT"),
            ("map:0:1000:0", "at least 1"),
            ("map:0:1000:x", "COUNT"),
            ("map:a:1000:1", "GUEST"),
            ("map:1:b:1", "HOST"),
            ("map:0:100:10,5:200:10", "overlap on the guest side"),
            ("map:0:100:10,20:105:10", "overlap on the host side"),
            ("map:u:0:100:10,u:9:500:1", "uid ranges"),
            ("map:g:0:100:10,g:5:500:1,u:0:0:1", "gid ranges"),
            ("map:4294967290:0:10", "run past"),
            ("map:0:4294967290:10", "host ids run past"),
            ("map:u:0:0:1", "no gid range"),
            ("map:g:0:0:1", "no uid range"),
            ("map:x:0:0:1", "expected [u:|g:|b:]GUEST:HOST:COUNT"),
        ];
        for (input, why) in table {
            let e = input
                .parse::<IdMode>()
                .expect_err(&format!("{input:?} should not parse"));
            assert!(e.contains(why), "{input:?}: {e:?} should mention {why:?}");
        }
    }

    #[test]
    fn translates_through_ranges() {
        let m = IdMode::Map(map(
            "map:u:0:100000:1000,u:1000:1000:1,g:0:200000:100,g:100:100:1",
        ));
        // (guest, host) uid pairs in range, both ways.
        for (g, h) in [(0, 100_000), (999, 100_999), (1000, 1000)] {
            assert_eq!(m.uid_to_host(GuestUid(g)), Some(HostUid(h)));
            assert_eq!(m.uid_to_guest(HostUid(h)), GuestUid(g));
        }
        for (g, h) in [(0, 200_000), (99, 200_099), (100, 100)] {
            assert_eq!(m.gid_to_host(GuestGid(g)), Some(HostGid(h)));
            assert_eq!(m.gid_to_guest(HostGid(h)), GuestGid(g));
        }
        // Outside every range: cannot be set, shows as the overflow id.
        for g in [1001, 65534, u32::MAX - 1] {
            assert_eq!(m.uid_to_host(GuestUid(g)), None, "{g}");
        }
        for h in [0, 999, 1001, 101_000] {
            assert_eq!(m.uid_to_guest(HostUid(h)), GuestUid(OVERFLOW_ID), "{h}");
        }
        assert_eq!(m.gid_to_host(GuestGid(101)), None);
        assert_eq!(m.gid_to_guest(HostGid(0)), GuestGid(OVERFLOW_ID));

        let p = IdMode::Passthrough;
        assert_eq!(p.uid_to_host(GuestUid(7)), Some(HostUid(7)));
        assert_eq!(p.gid_to_guest(HostGid(7)), GuestGid(7));

        let s = IdMode::Squash {
            uid: GuestUid(1000),
            gid: GuestGid(1000),
        };
        for h in [0, 1000, 1001] {
            assert_eq!(s.uid_to_guest(HostUid(h)), GuestUid(1000));
            assert_eq!(s.gid_to_guest(HostGid(h)), GuestGid(1000));
        }
        assert_eq!(
            s.uid_to_host(GuestUid(1000)),
            None,
            "squash never sets host owners"
        );
        assert!(!s.creates_as_caller());
        assert!(p.creates_as_caller() && m.creates_as_caller());
    }

    #[test]
    fn defaults_follow_the_server_user() {
        assert_eq!(IdMode::default_for(0, 0), IdMode::Passthrough);
        assert_eq!(
            IdMode::default_for(1000, 1001),
            IdMode::Squash {
                uid: GuestUid(1000),
                gid: GuestGid(1001)
            }
        );
        let p = IdPolicy::new(IdMode::Passthrough);
        assert!(!p.persist_owners);
        assert_eq!(p.permissions, Permissions::Guest);
        let s = IdPolicy::new(IdMode::default_for(1000, 1000));
        assert!(s.persist_owners);
        assert_eq!(s.permissions, Permissions::Host);
        assert_eq!(
            s.to_string(),
            "ids=squash:1000:1000 persist-owners=on permissions=host"
        );
        assert_eq!(parse_on_off("on"), Ok(true));
        assert!(parse_on_off("yes").is_err());
        assert_eq!(parse_permissions("host"), Ok(Permissions::Host));
        assert!(parse_permissions("kernel").is_err());
    }

    /// Non-overlapping ranges: cut the id space into `n` slots and give each range a slot on
    /// each side (shuffled), so the generated maps are valid by construction.
    fn valid_ranges() -> impl Strategy<Value = Vec<IdRange>> {
        (1usize..6).prop_flat_map(|n| {
            let slot = (u32::MAX - 1) / n as u32;
            (
                Just(n),
                Just(slot),
                proptest::collection::vec((0..slot, 0..slot, 1..=slot), n),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            )
                .prop_map(|(n, slot, raw, host_slots)| {
                    (0..n)
                        .map(|i| {
                            let (g_off, h_off, count) = raw[i];
                            // Keep each range inside its slot on both sides.
                            let g_off = g_off.min(slot - 1);
                            let h_off = h_off.min(slot - 1);
                            let count = count.min(slot - g_off).min(slot - h_off).max(1);
                            IdRange {
                                guest: i as u32 * slot + g_off,
                                host: host_slots[i] as u32 * slot + h_off,
                                count,
                            }
                        })
                        .collect()
                })
        })
    }

    proptest! {
        /// Inside the ranges, guest → host → guest is the identity, for uids and gids; and
        /// host → guest → host too, so no two guest ids share a host id.
        #[test]
        fn guest_host_guest_is_the_identity(ranges in valid_ranges(), pick in any::<u32>(), which in any::<prop::sample::Index>()) {
            let map = IdMap {
                uids: RangeMap::new("uid", ranges.clone()).expect("valid by construction"),
                gids: RangeMap::new("gid", ranges.clone()).expect("valid by construction"),
            };
            let mode = IdMode::Map(map);
            let r = ranges[which.index(ranges.len())];
            let guest = r.guest + pick % r.count;
            let host = mode.uid_to_host(GuestUid(guest)).expect("in range");
            prop_assert_eq!(host, HostUid(r.host + pick % r.count));
            prop_assert_eq!(mode.uid_to_guest(host), GuestUid(guest));
            let hg = mode.gid_to_host(GuestGid(guest)).expect("in range");
            prop_assert_eq!(mode.gid_to_guest(hg), GuestGid(guest));
            // The textual form parses back to the same map.
            prop_assert_eq!(mode.to_string().parse::<IdMode>().unwrap(), mode);
        }

        /// Ids outside every range never translate to the host, and show as the overflow id.
        #[test]
        fn outside_the_ranges_is_overflow(ranges in valid_ranges(), id in 0..u32::MAX) {
            let map = IdMap {
                uids: RangeMap::new("uid", ranges.clone()).unwrap(),
                gids: RangeMap::new("gid", ranges.clone()).unwrap(),
            };
            let in_guest = ranges.iter().any(|r| id >= r.guest && id - r.guest < r.count);
            let in_host = ranges.iter().any(|r| id >= r.host && id - r.host < r.count);
            let mode = IdMode::Map(map);
            prop_assert_eq!(mode.uid_to_host(GuestUid(id)).is_some(), in_guest);
            if !in_host {
                prop_assert_eq!(mode.uid_to_guest(HostUid(id)), GuestUid(OVERFLOW_ID));
            }
        }
    }
}
