//! Server configuration as the command line spells it: `--export` specifications with their
//! options, and `--listen` addresses.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::ids::{IdMode, IdPolicy, Permissions, parse_on_off, parse_permissions};

/// Owner settings as given on a command line; `None` falls back (to the global flags, then to
/// the defaults of [`IdPolicy::new`] for the mode, and for the mode to the server's user).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdOptions {
    /// `--ids MODE` or `:ids=MODE`.
    pub mode: Option<IdMode>,
    /// `--persist-owners on|off` or `:persist-owners=on|off`.
    pub persist_owners: Option<bool>,
    /// `--permissions guest|host` or `:permissions=guest|host`.
    pub permissions: Option<Permissions>,
}

impl IdOptions {
    /// These options, with `fallback`'s for the ones not given here.
    pub fn or(&self, fallback: &IdOptions) -> IdOptions {
        IdOptions {
            mode: self.mode.clone().or_else(|| fallback.mode.clone()),
            persist_owners: self.persist_owners.or(fallback.persist_owners),
            permissions: self.permissions.or(fallback.permissions),
        }
    }

    /// The policy these options give in this process: a missing mode is the default for the
    /// server's user ([`IdMode::default_for`]), missing settings the mode's defaults.
    pub fn resolve(&self) -> IdPolicy {
        let mut policy = match &self.mode {
            Some(m) => IdPolicy::new(m.clone()),
            None => IdPolicy::for_this_process(),
        };
        if let Some(p) = self.persist_owners {
            policy.persist_owners = p;
        }
        if let Some(p) = self.permissions {
            policy.permissions = p;
        }
        policy
    }
}

/// One `--export NAME=PATH[:ro][:ids=MODE][:persist-owners=on|off][:permissions=guest|host]
/// [:devices=on|off][:acl=on|off][:setid=on|off][:allow=CLIENTS]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSpec {
    /// Name the guest mounts it by.
    pub name: String,
    /// Host directory.
    pub path: PathBuf,
    /// Refuse every mutation with EROFS.
    pub read_only: bool,
    /// Owner settings of this export (before the global flags are applied).
    pub ids: IdOptions,
    /// Let guests create device nodes (`:devices=on`).
    pub devices: bool,
    /// Guests see and set POSIX ACLs (`:acl=off` turns them off).
    pub acl: bool,
    /// Let guests set set-id bits and file capabilities (`:setid=on`).
    pub setid: bool,
    /// The clients that may see and mount this export (`:allow=cid:3,uid:1000,token:ci`);
    /// `None`: every client that passed authentication.
    pub allow: Option<Vec<Client>>,
}

/// One entry of an export's allow-list: a way of recognising a client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    /// A guest on AF_VSOCK with this CID (`cid:N`).
    Cid(u32),
    /// A client on a Unix socket (hybrid vsock included: there, the VMM's process) whose
    /// peer credentials (`SO_PEERCRED`) carry this uid (`uid:N`).
    Uid(u32),
    /// A client that presented the named token (`token:NAME`, see `--client-token`).
    Token(String),
}

impl FromStr for Client {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, v) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected cid:N, uid:N or token:NAME"))?;
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{s:?}: {v:?} is not a number"))
        };
        match kind {
            "cid" => Ok(Client::Cid(num(v)?)),
            "uid" => Ok(Client::Uid(num(v)?)),
            "token" => {
                validate_name(v).map_err(|w| format!("{s:?}: {w}"))?;
                Ok(Client::Token(v.to_string()))
            }
            _ => Err(format!("{s:?}: expected cid:N, uid:N or token:NAME")),
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Cid(c) => write!(f, "cid:{c}"),
            Client::Uid(u) => write!(f, "uid:{u}"),
            Client::Token(n) => write!(f, "token:{n}"),
        }
    }
}

/// Parses an allow-list: entries separated by commas.
fn parse_allow(v: &str) -> Result<Vec<Client>, String> {
    if v.is_empty() {
        return Err("empty list".into());
    }
    v.split(',').map(str::parse).collect()
}

/// An export specification that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid --export {input:?}: {why} (expected NAME=PATH, then any of :ro, :ids=MODE, \
     :persist-owners=on|off, :permissions=guest|host, :devices=on|off, :acl=on|off, \
     :setid=on|off, :allow=cid:N,uid:N,token:NAME)"
)]
pub struct BadExportSpec {
    input: String,
    why: String,
}

impl FromStr for ExportSpec {
    type Err = BadExportSpec;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| BadExportSpec {
            input: s.to_string(),
            why: why.to_string(),
        };
        let (name, mut rest) = s.split_once('=').ok_or_else(|| bad("missing '='"))?;
        validate_name(name).map_err(|w| bad(&w))?;
        // Options trail the path after colons; a path (and an id mode) may itself contain
        // colons, so only known option words are taken off the end, one at a time, and
        // `ids=` takes everything after it that is not another option.
        let mut read_only = false;
        let mut ids = IdOptions::default();
        let mut devices = false;
        let mut acl = true;
        let mut setid = false;
        let mut allow = None;
        loop {
            // `ids=` and `allow=` values hold colons and commas: whichever starts last runs to
            // the end.
            let ids_at = rest.rfind(":ids=");
            let allow_at = rest.rfind(":allow=");
            if let Some(p) = rest.strip_suffix(":ro") {
                read_only = true;
                rest = p;
            } else if let Some(p) = rest.strip_suffix(":rw") {
                rest = p;
            } else if let Some((p, v)) = take_option(rest, "persist-owners") {
                ids.persist_owners =
                    Some(parse_on_off(v).map_err(|e| bad(&format!("persist-owners={e}")))?);
                rest = p;
            } else if let Some((p, v)) = take_option(rest, "setid") {
                setid = parse_on_off(v).map_err(|e| bad(&format!("setid={e}")))?;
                rest = p;
            } else if let Some((p, v)) = take_option(rest, "devices") {
                devices = parse_on_off(v).map_err(|e| bad(&format!("devices={e}")))?;
                rest = p;
            } else if let Some((p, v)) = take_option(rest, "acl") {
                acl = parse_on_off(v).map_err(|e| bad(&format!("acl={e}")))?;
                rest = p;
            } else if let Some((p, v)) = take_option(rest, "permissions") {
                ids.permissions =
                    Some(parse_permissions(v).map_err(|e| bad(&format!("permissions={e}")))?);
                rest = p;
            } else if let Some(i) = allow_at.filter(|&a| ids_at.is_none_or(|i| a > i)) {
                let v = &rest[i + ":allow=".len()..];
                allow = Some(parse_allow(v).map_err(|e| bad(&format!("allow={e}")))?);
                rest = &rest[..i];
            } else if let Some(i) = ids_at {
                let v = &rest[i + ":ids=".len()..];
                let mode = v
                    .parse::<IdMode>()
                    .map_err(|e| bad(&format!("ids={v}: {e}")))?;
                ids.mode = Some(mode);
                rest = &rest[..i];
            } else {
                break;
            }
        }
        if rest.is_empty() {
            return Err(bad("empty path"));
        }
        Ok(ExportSpec {
            name: name.to_string(),
            path: PathBuf::from(rest),
            read_only,
            ids,
            devices,
            acl,
            setid,
            allow,
        })
    }
}

/// Splits `...:key=VALUE` into `(..., VALUE)` when `VALUE` holds no colon.
fn take_option<'a>(s: &'a str, key: &str) -> Option<(&'a str, &'a str)> {
    let i = s.rfind(':')?;
    let v = s[i + 1..].strip_prefix(key)?.strip_prefix('=')?;
    Some((&s[..i], v))
}

/// Export names appear in mount tables and log lines: keep them to a safe alphabet.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > 64 {
        return Err("name longer than 64 bytes".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "character {c:?} not allowed in a name (use A-Z a-z 0-9 - _ .)"
        ));
    }
    Ok(())
}

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address. Always requires a token.
    Tcp(SocketAddr),
    /// AF_VSOCK on this host (vhost-vsock, e.g. QEMU/KVM guests), any CID.
    Vsock(u32),
    /// Hybrid vsock, as Firecracker, cloud-hypervisor and vhost-device-vsock expose it: a
    /// guest connection to host port `port` arrives as a Unix-socket connection on
    /// `{path}_{port}`, where `path` is the VMM's vsock socket.
    HybridVsock {
        /// The VMM's vsock Unix socket (`uds_path` / `socket=`).
        path: PathBuf,
        /// The vsock port guests connect to.
        port: u32,
    },
    /// A vhost-user-fs device backend socket serving one export: the VMM connects here and
    /// the guest kernel mounts the export with `mount -t virtiofs` (see `crate::virtiofs`).
    VhostUserFs {
        /// The vhost-user socket the VMM connects to.
        socket: PathBuf,
        /// The name of the export served on it.
        export: String,
    },
}

impl ListenAddr {
    /// Whether clients of this listener must present a token even under `--no-auth`.
    pub fn requires_token(&self) -> bool {
        matches!(self, ListenAddr::Tcp(_))
    }

    /// The Unix socket a hybrid-vsock listener binds: `{path}_{port}`.
    pub fn hybrid_socket(path: &std::path::Path, port: u32) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
            ListenAddr::Vsock(port) => write!(f, "vsock:{port}"),
            ListenAddr::HybridVsock { path, port } => {
                write!(f, "hybrid-vsock:{}:{port}", path.display())
            }
            ListenAddr::VhostUserFs { socket, export } => {
                write!(f, "vhost-user-fs:{}:{export}", socket.display())
            }
        }
    }
}

/// A listen address that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid listen address {input:?}: {why} (expected unix:PATH, tcp:PORT, tcp:HOST:PORT, vsock:PORT, hybrid-vsock:PATH:PORT or vhost-user-fs:SOCKET:NAME)"
)]
pub struct BadListenAddr {
    input: String,
    why: String,
}

impl FromStr for ListenAddr {
    type Err = BadListenAddr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| BadListenAddr {
            input: s.to_string(),
            why: why.to_string(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("tcp:") {
            // A bare port binds loopback: exposing the share beyond this machine must be asked
            // for by naming the address.
            if let Ok(port) = rest.parse::<u16>() {
                return Ok(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
            }
            let addr = rest
                .parse::<SocketAddr>()
                .or_else(|_| {
                    // Accept "localhost:PORT" and other names that resolve.
                    std::net::ToSocketAddrs::to_socket_addrs(rest)
                        .map_err(|e| e.to_string())
                        .and_then(|mut it| it.next().ok_or_else(|| "no address".to_string()))
                })
                .map_err(|e| bad(&e))?;
            return Ok(ListenAddr::Tcp(addr));
        }
        // u32::MAX is VMADDR_PORT_ANY, which would bind a port the guest cannot know.
        let vsock_port = |p: &str| match p.parse::<u32>() {
            Ok(u32::MAX) => Err(bad("port 4294967295 is the wildcard VMADDR_PORT_ANY")),
            Ok(port) => Ok(port),
            Err(_) if p.contains(':') => Err(bad(
                "a vsock listener takes a port only (it accepts guests of every CID)",
            )),
            Err(_) => Err(bad("invalid vsock port")),
        };
        if let Some(port) = s.strip_prefix("vsock:") {
            return Ok(ListenAddr::Vsock(vsock_port(port)?));
        }
        if let Some(rest) = s.strip_prefix("hybrid-vsock:") {
            let (path, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("missing vsock port"))?;
            let port = vsock_port(port)?;
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(ListenAddr::HybridVsock {
                path: PathBuf::from(path),
                port,
            });
        }
        if let Some(rest) = s.strip_prefix("vhost-user-fs:") {
            let (socket, export) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("missing export name"))?;
            if socket.is_empty() {
                return Err(bad("empty socket path"));
            }
            validate_name(export).map_err(|w| bad(&w))?;
            return Ok(ListenAddr::VhostUserFs {
                socket: PathBuf::from(socket),
                export: export.to_string(),
            });
        }
        Err(bad("unknown scheme"))
    }
}

/// Everything `ferry-host` needs to run.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Exports, in export-id order.
    pub exports: Vec<ExportSpec>,
    /// Listeners.
    pub listen: Vec<ListenAddr>,
    /// The token every client must present (`--token-file`, `--token`, `FERRY_TOKEN`).
    pub token: Option<Vec<u8>>,
    /// More tokens, each with a name export allow-lists can use (`--client-token NAME=PATH`).
    pub client_tokens: Vec<(String, Vec<u8>)>,
    /// Accept clients without a token on Unix, vsock and hybrid-vsock listeners (`--no-auth`);
    /// TCP always requires one.
    pub no_auth: bool,
    /// Mode of the socket files the server creates (`--socket-mode`, default 0600).
    pub socket_mode: u32,
    /// Most `O_PATH` descriptors of nodes each session keeps open (see
    /// [`crate::export::DEFAULT_NODE_FDS`]).
    pub max_node_fds: usize,
    /// Bounds on connections and sessions (`--handshake-timeout`, `--max-connections`, ...).
    pub limits: crate::conn::Limits,
    /// `--sandbox`, `--seccomp`: how the server confines itself at start (`crate::sandbox`).
    pub sandbox: crate::sandbox::Sandbox,
}

/// Applies the global owner flags to every export that does not set its own.
pub fn apply_id_defaults(exports: &mut [ExportSpec], global: &IdOptions) {
    for e in exports {
        e.ids = e.ids.or(global);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_export_specs() {
        let e: ExportSpec = "src=/home/me/src".parse().unwrap();
        assert_eq!(e.name, "src");
        assert_eq!(e.path, PathBuf::from("/home/me/src"));
        assert!(!e.read_only);
        let e: ExportSpec = "dev=/x:devices=on:ro".parse().unwrap();
        assert!(e.devices && e.read_only);
        assert_eq!(e.path, PathBuf::from("/x"));
        assert!(!"x=/y".parse::<ExportSpec>().unwrap().devices);
        assert!("x=/y:devices=maybe".parse::<ExportSpec>().is_err());
        let e: ExportSpec = "w=/x:acl=off:ids=map:0:0:1".parse().unwrap();
        assert!(!e.acl);
        assert!("x=/y".parse::<ExportSpec>().unwrap().acl);
        assert!("x=/y:acl=on".parse::<ExportSpec>().unwrap().acl);
        assert!("x=/y:acl=no".parse::<ExportSpec>().is_err());
        let e: ExportSpec = "s=/x:setid=on:ro".parse().unwrap();
        assert!(e.setid && e.read_only && !e.devices);
        assert!(!"x=/y".parse::<ExportSpec>().unwrap().setid);
        assert!("x=/y:setid=yes".parse::<ExportSpec>().is_err());
        let e: ExportSpec = "docs=/a:b/c:ro".parse().unwrap();
        assert_eq!(e.path, PathBuf::from("/a:b/c"));
        assert!(e.read_only);
        for bad in ["", "noequals", "=/x", "a b=/x", "x=", "x=:ro", "a/b=/x"] {
            let err = bad.parse::<ExportSpec>().unwrap_err().to_string();
            assert!(err.contains("expected NAME=PATH"), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_allow_lists() {
        let e: ExportSpec = "a=/x:allow=cid:3,uid:1000,token:ci:ro".parse().unwrap();
        assert!(e.read_only);
        assert_eq!(
            e.allow,
            Some(vec![
                Client::Cid(3),
                Client::Uid(1000),
                Client::Token("ci".into())
            ])
        );
        let e: ExportSpec = "a=/x:ids=map:0:100000:65536:allow=uid:0".parse().unwrap();
        assert_eq!(e.allow, Some(vec![Client::Uid(0)]));
        assert_eq!(e.ids.mode.unwrap().to_string(), "map:0:100000:65536");
        let e: ExportSpec = "a=/x:allow=cid:4:ids=squash:1:1".parse().unwrap();
        assert_eq!(e.allow, Some(vec![Client::Cid(4)]));
        assert_eq!(e.ids.mode.unwrap().to_string(), "squash:1:1");
        assert_eq!("a=/x".parse::<ExportSpec>().unwrap().allow, None);
        for bad in [
            "a=/x:allow=",
            "a=/x:allow=cid:x",
            "a=/x:allow=gid:3",
            "a=/x:allow=token:a/b",
        ] {
            let err = bad.parse::<ExportSpec>().unwrap_err().to_string();
            assert!(err.contains("allow="), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_owner_options_in_any_order() {
        use crate::ids::{GuestGid, GuestUid};
        let squash = Some(IdMode::Squash {
            uid: GuestUid(1000),
            gid: GuestGid(1000),
        });
        let table: Vec<(&str, &str, bool, IdOptions)> = vec![
            ("a=/x", "/x", false, IdOptions::default()),
            (
                "a=/x:ids=squash:1000:1000",
                "/x",
                false,
                IdOptions {
                    mode: squash.clone(),
                    ..Default::default()
                },
            ),
            (
                "a=/x:ids=squash:1000:1000:ro",
                "/x",
                true,
                IdOptions {
                    mode: squash.clone(),
                    ..Default::default()
                },
            ),
            (
                "a=/x:ro:ids=squash:1000:1000:persist-owners=off:permissions=guest",
                "/x",
                true,
                IdOptions {
                    mode: squash.clone(),
                    persist_owners: Some(false),
                    permissions: Some(Permissions::Guest),
                },
            ),
            (
                "a=/a:b:permissions=host:ids=passthrough",
                "/a:b",
                false,
                IdOptions {
                    mode: Some(IdMode::Passthrough),
                    permissions: Some(Permissions::Host),
                    ..Default::default()
                },
            ),
            (
                "a=/x:ids=map:0:100000:65536,u:70000:1000:1",
                "/x",
                false,
                IdOptions {
                    mode: Some("map:0:100000:65536,u:70000:1000:1".parse().unwrap()),
                    ..Default::default()
                },
            ),
        ];
        for (input, path, ro, ids) in table {
            let e: ExportSpec = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (e.path.to_str().unwrap(), e.read_only, &e.ids),
                (path, ro, &ids),
                "{input}"
            );
        }
        for (bad, why) in [
            ("a=/x:ids=", "ids=: unknown mode"),
            ("a=/x:ids=squash:1000", "squash:UID:GID"),
            ("a=/x:ids=map:0:0:5,3:10:5", "overlap"),
            ("a=/x:persist-owners=yes", "persist-owners="),
            ("a=/x:permissions=kernel", "permissions="),
            ("a=:ids=passthrough", "empty path"),
        ] {
            let err = bad.parse::<ExportSpec>().unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("--export"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn export_options_override_global_ones() {
        let global = IdOptions {
            mode: Some(IdMode::Passthrough),
            persist_owners: Some(true),
            permissions: None,
        };
        let mut specs: Vec<ExportSpec> = vec![
            "a=/x".parse().unwrap(),
            "b=/y:ids=squash:5:6:permissions=guest".parse().unwrap(),
        ];
        apply_id_defaults(&mut specs, &global);
        let a = specs[0].ids.resolve();
        assert_eq!(a.mode, IdMode::Passthrough);
        assert!(a.persist_owners);
        assert_eq!(a.permissions, Permissions::Guest);
        let b = specs[1].ids.resolve();
        assert_eq!(b.mode.to_string(), "squash:5:6");
        assert!(b.persist_owners, "the global flag");
        assert_eq!(b.permissions, Permissions::Guest, "the export's own");
        // Nothing given: squash defaults are persisted owners and host checks.
        let c = IdOptions {
            mode: Some("squash:1:1".parse().unwrap()),
            ..Default::default()
        }
        .resolve();
        assert!(c.persist_owners);
        assert_eq!(c.permissions, Permissions::Host);
    }

    #[test]
    fn parses_listen_addresses() {
        assert_eq!(
            "unix:/run/ferry.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/ferry.sock".into())
        );
        assert_eq!(
            "tcp:7000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(
            "tcp:0.0.0.0:7000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("0.0.0.0:7000".parse().unwrap())
        );
        assert_eq!(
            "tcp:[::1]:7000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("[::1]:7000".parse().unwrap())
        );
        assert_eq!(
            "vsock:1024".parse::<ListenAddr>().unwrap(),
            ListenAddr::Vsock(1024)
        );
        let hybrid: ListenAddr = "hybrid-vsock:/run/fc/v.sock:1024".parse().unwrap();
        assert_eq!(
            hybrid,
            ListenAddr::HybridVsock {
                path: "/run/fc/v.sock".into(),
                port: 1024
            }
        );
        assert_eq!(hybrid.to_string().parse::<ListenAddr>().unwrap(), hybrid);
        assert_eq!(
            ListenAddr::hybrid_socket(std::path::Path::new("/run/fc/v.sock"), 1024),
            std::path::PathBuf::from("/run/fc/v.sock_1024")
        );
        let vfs: ListenAddr = "vhost-user-fs:/run/a:b.sock:src".parse().unwrap();
        assert_eq!(
            vfs,
            ListenAddr::VhostUserFs {
                socket: "/run/a:b.sock".into(),
                export: "src".into()
            }
        );
        assert_eq!(vfs.to_string().parse::<ListenAddr>().unwrap(), vfs);
        for bad in [
            "",
            "unix:",
            "tcp:",
            "tcp:nope:x",
            "vsock:",
            "vsock:x",
            "vsock:-1",
            "vsock:3:4",
            "hybrid-vsock:/x",
            "hybrid-vsock::5",
            "hybrid-vsock:/x:port",
            "vhost-user-fs:/x",
            "vhost-user-fs::n",
            "vhost-user-fs:/x:bad/name",
            "/tmp/sock",
        ] {
            let err = bad.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(err.contains("expected unix:PATH"), "{bad}: {err}");
        }
        // The reason says what is wrong with this one.
        for (bad, why) in [
            ("vsock:3:4", "port only"),
            ("vsock:4294967295", "VMADDR_PORT_ANY"),
            ("vsock:x", "invalid vsock port"),
            ("hybrid-vsock:/x:4294967295", "VMADDR_PORT_ANY"),
            ("hybrid-vsock:/x", "missing vsock port"),
            ("vhost:1", "unknown scheme"),
        ] {
            let err = bad.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
    }
}
