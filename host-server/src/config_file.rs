//! `ferry-host --config PATH`: the server configuration as a TOML file, merged with the
//! command line.
//!
//! Every field of [`ServerConfig`] is a top-level key and every field of [`ExportSpec`] a key
//! of an `[[export]]` table, spelled as on the command line (`--max-node-fds` is
//! `max-node-fds`, `:persist-owners=` is `persist-owners`); values that the command line
//! parses from text (listen addresses, id modes, permissions) are the same text here and go
//! through the same parsers. A new field is one line in [`FileConfig`] or [`FileExport`] and
//! one in [`FileConfig::into_parts`]. Unknown keys and bad values are errors naming the file,
//! the line and the key ([`ConfigError`]).
//!
//! The command line overrides or adds ([`Overrides::apply`]): `--listen` adds listeners,
//! `--export NAME=...` adds an export or replaces the file's export of that name, and
//! `--token-file`/`--token`, `--max-node-fds`, `--ids`, `--persist-owners` and
//! `--permissions` replace the file's values. Per-export owner options win over the global
//! ones wherever they come from, as on the command line.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{Client, ExportSpec, IdOptions, ListenAddr, ServerConfig, validate_name};
use crate::conn::Limits;
use crate::export::DEFAULT_NODE_FDS;
use crate::ids::{IDS_SYNTAX, IdMode, parse_permissions};
use crate::sandbox::{Sandbox, SandboxMode, SeccompMode};

/// The file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// `--listen`, each as the command line spells it.
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    /// `--token-file`.
    token_file: Option<Spanned<PathBuf>>,
    /// `--client-token NAME=PATH`, as a table `NAME = "PATH"`.
    #[serde(default)]
    client_tokens: BTreeMap<String, Spanned<PathBuf>>,
    /// `--no-auth`.
    no_auth: Option<bool>,
    /// `--socket-mode`, as an octal string (`"660"`).
    socket_mode: Option<Spanned<String>>,
    /// The limit flags (`--max-connections` is `max-connections` here).
    limits: Option<FileLimits>,
    /// `--max-node-fds`.
    max_node_fds: Option<Spanned<usize>>,
    /// `--ids`, the default for exports without their own.
    ids: Option<Spanned<String>>,
    /// `--persist-owners`.
    persist_owners: Option<bool>,
    /// `--permissions`.
    permissions: Option<Spanned<String>>,
    /// `--export`, one table each, in export-id order.
    #[serde(default)]
    export: Vec<FileExport>,
    /// `--control unix:PATH` (read at start only).
    control: Option<Spanned<String>>,
    /// `--metrics ADDR` (read at start only).
    metrics: Option<Spanned<String>>,
    /// `--sandbox on|none` (read at start only).
    sandbox: Option<Spanned<String>>,
    /// `--seccomp kill|log|trap|none` (read at start only).
    seccomp: Option<Spanned<String>>,
}

/// One `[[export]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileExport {
    name: Spanned<String>,
    path: Spanned<PathBuf>,
    #[serde(default)]
    read_only: bool,
    ids: Option<Spanned<String>>,
    persist_owners: Option<bool>,
    permissions: Option<Spanned<String>>,
    #[serde(default)]
    devices: bool,
    #[serde(default)]
    setid: bool,
    /// `:acl=`: POSIX ACLs (on unless the export squashes ids).
    #[serde(default = "default_acl")]
    acl: bool,
    /// `:allow=`, one client per string (`"cid:3"`, `"uid:1000"`, `"token:ci"`).
    allow: Option<Spanned<Vec<Spanned<String>>>>,
}

fn default_acl() -> bool {
    true
}

/// The `[limits]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileLimits {
    handshake_timeout: Option<Spanned<f64>>,
    max_connections: Option<usize>,
    max_unauthenticated: Option<usize>,
    max_handles: Option<usize>,
    max_lock_owners: Option<usize>,
    max_lock_waiters: Option<usize>,
    max_queued_change_bytes: Option<usize>,
}

/// The limits a file or the command line sets; unset ones keep their defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimitOverrides {
    /// `--handshake-timeout`.
    pub handshake_timeout: Option<Duration>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--max-unauthenticated`.
    pub max_unauthenticated: Option<usize>,
    /// `--max-handles`.
    pub max_handles: Option<usize>,
    /// `--max-lock-owners`.
    pub max_lock_owners: Option<usize>,
    /// `--max-lock-waiters`.
    pub max_lock_waiters: Option<usize>,
    /// `--max-queued-change-bytes`.
    pub max_queued_change_bytes: Option<usize>,
}

impl LimitOverrides {
    /// These, with `under`'s where these are unset.
    pub fn or(&self, under: &LimitOverrides) -> LimitOverrides {
        LimitOverrides {
            handshake_timeout: self.handshake_timeout.or(under.handshake_timeout),
            max_connections: self.max_connections.or(under.max_connections),
            max_unauthenticated: self.max_unauthenticated.or(under.max_unauthenticated),
            max_handles: self.max_handles.or(under.max_handles),
            max_lock_owners: self.max_lock_owners.or(under.max_lock_owners),
            max_lock_waiters: self.max_lock_waiters.or(under.max_lock_waiters),
            max_queued_change_bytes: self
                .max_queued_change_bytes
                .or(under.max_queued_change_bytes),
        }
    }

    /// The limits, with the defaults where these are unset.
    pub fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            handshake_timeout: self.handshake_timeout.unwrap_or(d.handshake_timeout),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_unauthenticated: self.max_unauthenticated.unwrap_or(d.max_unauthenticated),
            max_handles: self.max_handles.unwrap_or(d.max_handles),
            max_lock_owners: self.max_lock_owners.unwrap_or(d.max_lock_owners),
            max_lock_waiters: self.max_lock_waiters.unwrap_or(d.max_lock_waiters),
            max_queued_change_bytes: self
                .max_queued_change_bytes
                .unwrap_or(d.max_queued_change_bytes),
        }
    }
}

/// A configuration file that cannot be used: `FILE:LINE: KEY: WHY`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A syntax error, an unknown key or a value of the wrong type or form.
    #[error("{}:{line}: {key}: {why}", file.display())]
    Bad {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The key, with the table it is in (`export.devices`), or `-` when there is none.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// The token file a `token-file` or `client-tokens` key names cannot be read.
    #[error("{}: {key}: {source}", file.display())]
    Token {
        /// The configuration file (or `command line`).
        file: PathBuf,
        /// The key (or flag) naming the token file.
        key: String,
        /// Why.
        source: ferry_common::token::TokenError,
    },
}

/// What the file leaves for the command line to decide: its settings as the command line's
/// types, before the global owner options are applied to the exports.
#[derive(Debug, Default)]
pub struct FileParts {
    /// The control socket's path (`control = "unix:PATH"`).
    pub control: Option<PathBuf>,
    /// The metrics endpoint (`metrics = "unix:PATH"` or `"tcp:..."`).
    pub metrics: Option<ListenAddr>,
    exports: Vec<ExportSpec>,
    listen: Vec<ListenAddr>,
    token_file: Option<PathBuf>,
    client_tokens: Vec<(String, PathBuf)>,
    no_auth: Option<bool>,
    socket_mode: Option<u32>,
    limits: LimitOverrides,
    max_node_fds: Option<usize>,
    ids: IdOptions,
    sandbox: Option<SandboxMode>,
    seccomp: Option<SeccompMode>,
}

impl FileParts {
    /// The token files the file names (`token-file`, `client-tokens`), which a reload reads
    /// again (the sandbox lets the server read them).
    pub fn token_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.token_file.iter().cloned().collect();
        v.extend(self.client_tokens.iter().map(|(_, p)| p.clone()));
        v
    }
}

impl FileConfig {
    /// Parses `text`, the contents of `file` (named in errors).
    pub fn parse(file: &Path, text: &str) -> Result<FileParts, ConfigError> {
        let located = |span: Option<Range<usize>>, key: Option<&str>, why: String| {
            let start = span.map_or(0, |s| s.start);
            let (line, found_key) = locate(text, start);
            ConfigError::Bad {
                file: file.to_path_buf(),
                line,
                key: key.map(str::to_string).unwrap_or(found_key),
                why,
            }
        };
        let raw: FileConfig = toml::from_str(text)
            .map_err(|e| located(e.span(), None, e.message().trim().to_string()))?;
        raw.into_parts(&|span, key, why| located(Some(span), Some(key), why))
    }

    /// Reads and parses `file`.
    pub fn load(file: &Path) -> Result<FileParts, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Self::parse(file, &text)
    }

    /// The command line's types, each value through the command line's parser.
    fn into_parts(
        self,
        bad: &dyn Fn(Range<usize>, &str, String) -> ConfigError,
    ) -> Result<FileParts, ConfigError> {
        let mut listen = Vec::new();
        for l in self.listen {
            let addr = l
                .get_ref()
                .parse::<ListenAddr>()
                .map_err(|e| bad(l.span(), "listen", e.to_string()))?;
            listen.push(addr);
        }
        let ids_of = |v: &Option<Spanned<String>>, key: &str| -> Result<_, ConfigError> {
            v.as_ref()
                .map(|m| {
                    m.get_ref()
                        .parse::<IdMode>()
                        .map_err(|e| bad(m.span(), key, format!("{e} (expected {IDS_SYNTAX})")))
                })
                .transpose()
        };
        let permissions_of = |v: &Option<Spanned<String>>, key: &str| {
            v.as_ref()
                .map(|p| parse_permissions(p.get_ref()).map_err(|e| bad(p.span(), key, e)))
                .transpose()
        };
        let ids = IdOptions {
            mode: ids_of(&self.ids, "ids")?,
            persist_owners: self.persist_owners,
            permissions: permissions_of(&self.permissions, "permissions")?,
        };
        if let Some(n) = &self.max_node_fds {
            if *n.get_ref() == 0 {
                return Err(bad(n.span(), "max-node-fds", "must be at least 1".into()));
            }
        }
        let mut names = HashSet::new();
        let mut exports = Vec::new();
        for e in self.export {
            let name = e.name.get_ref().clone();
            validate_name(&name).map_err(|w| bad(e.name.span(), "export.name", w))?;
            if !names.insert(name.clone()) {
                return Err(bad(
                    e.name.span(),
                    "export.name",
                    format!("export {name:?} is given twice"),
                ));
            }
            if e.path.get_ref().as_os_str().is_empty() {
                return Err(bad(e.path.span(), "export.path", "empty path".into()));
            }
            let allow = match &e.allow {
                Some(list) => {
                    if list.get_ref().is_empty() {
                        return Err(bad(list.span(), "export.allow", "empty list".into()));
                    }
                    let mut clients = Vec::new();
                    for c in list.get_ref() {
                        let client = c
                            .get_ref()
                            .parse::<Client>()
                            .map_err(|w| bad(c.span(), "export.allow", w))?;
                        clients.push(client);
                    }
                    Some(clients)
                }
                None => None,
            };
            exports.push(ExportSpec {
                name,
                path: e.path.into_inner(),
                read_only: e.read_only,
                ids: IdOptions {
                    mode: ids_of(&e.ids, "export.ids")?,
                    persist_owners: e.persist_owners,
                    permissions: permissions_of(&e.permissions, "export.permissions")?,
                },
                devices: e.devices,
                setid: e.setid,
                allow,
                acl: e.acl,
            });
        }
        let control = match &self.control {
            Some(c) => match c.get_ref().strip_prefix("unix:") {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ => return Err(bad(c.span(), "control", "expected unix:PATH".into())),
            },
            None => None,
        };
        let metrics = match &self.metrics {
            Some(m) => match m.get_ref().parse::<ListenAddr>() {
                Ok(a @ (ListenAddr::Unix(_) | ListenAddr::Tcp(_))) => Some(a),
                Ok(_) => {
                    return Err(bad(
                        m.span(),
                        "metrics",
                        "expected unix:PATH or tcp:HOST:PORT".into(),
                    ));
                }
                Err(e) => return Err(bad(m.span(), "metrics", e.to_string())),
            },
            None => None,
        };
        let mut client_tokens = Vec::new();
        for (name, path) in self.client_tokens {
            validate_name(&name)
                .map_err(|w| bad(path.span(), "client-tokens", format!("{name:?}: {w}")))?;
            client_tokens.push((name, path.into_inner()));
        }
        let socket_mode = self
            .socket_mode
            .map(|m| {
                crate::cli::parse_mode(m.get_ref()).map_err(|w| bad(m.span(), "socket-mode", w))
            })
            .transpose()?;
        let limits = match self.limits {
            Some(l) => LimitOverrides {
                handshake_timeout: l
                    .handshake_timeout
                    .map(|t| {
                        Duration::try_from_secs_f64(*t.get_ref())
                            .ok()
                            .filter(|d| !d.is_zero())
                            .ok_or_else(|| {
                                bad(
                                    t.span(),
                                    "limits.handshake-timeout",
                                    "expected a positive number of seconds".into(),
                                )
                            })
                    })
                    .transpose()?,
                max_connections: l.max_connections,
                max_unauthenticated: l.max_unauthenticated,
                max_handles: l.max_handles,
                max_lock_owners: l.max_lock_owners,
                max_lock_waiters: l.max_lock_waiters,
                max_queued_change_bytes: l.max_queued_change_bytes,
            },
            None => LimitOverrides::default(),
        };
        let sandbox = self
            .sandbox
            .map(|s| s.get_ref().parse().map_err(|w| bad(s.span(), "sandbox", w)))
            .transpose()?;
        let seccomp = self
            .seccomp
            .map(|s| s.get_ref().parse().map_err(|w| bad(s.span(), "seccomp", w)))
            .transpose()?;
        Ok(FileParts {
            sandbox,
            seccomp,
            client_tokens,
            no_auth: self.no_auth,
            socket_mode,
            limits,
            control,
            metrics,
            exports,
            listen,
            token_file: self.token_file.map(Spanned::into_inner),
            max_node_fds: self.max_node_fds.map(Spanned::into_inner),
            ids,
        })
    }
}

/// The 1-based line of byte `offset` in `text`, and the key written on that line (`KEY =
/// ...`), prefixed with the table it is in (`export.KEY`), or `-` when the line has none.
fn locate(text: &str, offset: usize) -> (usize, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let this_line = text.lines().nth(line - 1).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let through_line = &text[..(line_start + this_line.len()).min(text.len())];
    let table = through_line
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let key = this_line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let key = match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k,
        (Some(t), None) => t,
        (None, None) => "-".into(),
    };
    (line, key)
}

/// The command line's part of the configuration, applied over a file's.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--export`: added, or replacing the file's export of the same name.
    pub exports: Vec<ExportSpec>,
    /// `--listen`: added to the file's.
    pub listen: Vec<ListenAddr>,
    /// `--token-file`: replaces the file's.
    pub token_file: Option<PathBuf>,
    /// `--token` or `FERRY_TOKEN`: wins over every token file.
    pub token: Option<String>,
    /// `--client-token NAME=PATH`: added, or replacing the file's token of the same name.
    pub client_tokens: Vec<(String, PathBuf)>,
    /// `--no-auth`: when given, wins over the file's `no-auth`.
    pub no_auth: bool,
    /// `--socket-mode`: replaces the file's.
    pub socket_mode: Option<u32>,
    /// The limit flags: each replaces the file's key of the same name.
    pub limits: LimitOverrides,
    /// `--max-node-fds` or `FERRY_MAX_NODE_FDS`.
    pub max_node_fds: Option<usize>,
    /// `--ids`, `--persist-owners`, `--permissions`: replace the file's global ones.
    pub ids: IdOptions,
    /// `--sandbox`: replaces the file's.
    pub sandbox: Option<SandboxMode>,
    /// `--seccomp`: replaces the file's.
    pub seccomp: Option<SeccompMode>,
}

impl Overrides {
    /// The configuration `file` (a parsed file, or none) and these flags give. `config_path`
    /// names the file in errors about its token file.
    pub fn apply(
        &self,
        file: FileParts,
        config_path: Option<&Path>,
    ) -> Result<ServerConfig, ConfigError> {
        let mut exports = file.exports;
        for e in &self.exports {
            match exports.iter_mut().find(|f| f.name == e.name) {
                Some(f) => *f = e.clone(),
                None => exports.push(e.clone()),
            }
        }
        let mut listen = file.listen;
        for l in &self.listen {
            if !listen.contains(l) {
                listen.push(l.clone());
            }
        }
        let token = match (&self.token, &self.token_file) {
            (Some(_), _) | (None, Some(_)) => {
                ferry_common::token::load(self.token_file.as_deref(), self.token.as_deref())
                    .map_err(|source| ConfigError::Token {
                        file: PathBuf::from("command line"),
                        key: "--token-file".into(),
                        source,
                    })?
            }
            (None, None) => match &file.token_file {
                Some(path) => ferry_common::token::load(Some(path), None).map_err(|source| {
                    ConfigError::Token {
                        file: config_path.unwrap_or(Path::new("config")).to_path_buf(),
                        key: "token-file".into(),
                        source,
                    }
                })?,
                None => None,
            },
        };
        let mut client_tokens = Vec::new();
        let from_flags = self.client_tokens.iter().map(|(n, p)| (n, p, true));
        let from_file = file
            .client_tokens
            .iter()
            .filter(|(n, _)| !self.client_tokens.iter().any(|(f, _)| f == n))
            .map(|(n, p)| (n, p, false));
        for (name, path, flag) in from_file.chain(from_flags) {
            let (file, key) = if flag {
                (
                    PathBuf::from("command line"),
                    format!("--client-token {name}"),
                )
            } else {
                (
                    config_path.unwrap_or(Path::new("config")).to_path_buf(),
                    format!("client-tokens.{name}"),
                )
            };
            let secret = ferry_common::token::load(Some(path), None)
                .map_err(|source| ConfigError::Token { file, key, source })?
                .unwrap_or_default();
            client_tokens.push((name.clone(), secret));
        }
        crate::config::apply_id_defaults(&mut exports, &self.ids.or(&file.ids));
        Ok(ServerConfig {
            exports,
            listen,
            token,
            client_tokens,
            no_auth: self.no_auth || file.no_auth.unwrap_or(false),
            socket_mode: self.socket_mode.or(file.socket_mode).unwrap_or(0o600),
            limits: self.limits.or(&file.limits).limits(),
            max_node_fds: self
                .max_node_fds
                .or(file.max_node_fds)
                .unwrap_or(DEFAULT_NODE_FDS),
            sandbox: Sandbox {
                mode: self.sandbox.or(file.sandbox).unwrap_or_default(),
                seccomp: self.seccomp.or(file.seccomp).unwrap_or_default(),
            },
        })
    }

    /// The configuration from `config` (when given) and these flags: what `ferry-host` runs,
    /// and what it reads again on SIGHUP.
    pub fn load(&self, config: Option<&Path>) -> Result<ServerConfig, ConfigError> {
        Ok(self.load_all(config)?.0)
    }

    /// As [`Overrides::load`], with the file's `control` and `metrics` settings (which the
    /// command line's `--control` and `--metrics` replace; the caller applies them).
    pub fn load_all(
        &self,
        config: Option<&Path>,
    ) -> Result<(ServerConfig, Option<PathBuf>, Option<ListenAddr>), ConfigError> {
        let file = match config {
            Some(path) => FileConfig::load(path)?,
            None => FileParts::default(),
        };
        let (control, metrics) = (file.control.clone(), file.metrics.clone());
        Ok((self.apply(file, config)?, control, metrics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Permissions;

    fn parse(text: &str) -> Result<FileParts, ConfigError> {
        FileConfig::parse(Path::new("/etc/ferry/host.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn every_command_line_setting_has_a_key() {
        let parts = parse(
            r#"
listen = ["unix:/run/ferry.sock", "vsock:1024"]
max-node-fds = 512
ids = "squash:1000:1000"
persist-owners = false
permissions = "guest"
no-auth = true
socket-mode = "660"

[limits]
handshake-timeout = 2.5
max-connections = 10
max-unauthenticated = 3
max-handles = 100
max-lock-owners = 20
max-lock-waiters = 30
max-queued-change-bytes = 4096

[[export]]
name = "src"
path = "/home/me/src"

[[export]]
name = "docs"
path = "/usr/share/doc"
read-only = true
ids = "passthrough"
persist-owners = true
permissions = "host"
devices = true
setid = true
allow = ["cid:3", "uid:1000", "token:default"]
"#,
        )
        .unwrap();
        let config = Overrides::default().apply(parts, None).unwrap();
        assert_eq!(
            config.listen,
            vec![
                ListenAddr::Unix("/run/ferry.sock".into()),
                ListenAddr::Vsock(1024)
            ]
        );
        assert_eq!(config.max_node_fds, 512);
        assert!(config.no_auth);
        assert_eq!(config.socket_mode, 0o660);
        assert_eq!(
            config.limits,
            Limits {
                handshake_timeout: Duration::from_millis(2500),
                max_connections: 10,
                max_unauthenticated: 3,
                max_handles: 100,
                max_lock_owners: 20,
                max_lock_waiters: 30,
                max_queued_change_bytes: 4096,
            }
        );
        let [src, docs] = &config.exports[..] else {
            panic!("two exports: {:?}", config.exports)
        };
        assert_eq!(
            (src.name.as_str(), src.read_only, src.setid, &src.allow),
            ("src", false, false, &None)
        );
        // The global owner settings, as --ids, --persist-owners and --permissions give them.
        assert_eq!(
            src.ids,
            IdOptions {
                mode: Some("squash:1000:1000".parse().unwrap()),
                persist_owners: Some(false),
                permissions: Some(Permissions::Guest),
            }
        );
        // Each export's own win, as :ids= and the other options do.
        assert_eq!(
            (docs, &docs.ids),
            (
                &ExportSpec {
                    name: "docs".into(),
                    path: "/usr/share/doc".into(),
                    read_only: true,
                    ids: docs.ids.clone(),
                    devices: true,
                    setid: true,
                    acl: true,
                    allow: Some(vec![
                        Client::Cid(3),
                        Client::Uid(1000),
                        Client::Token("default".into())
                    ]),
                },
                &IdOptions {
                    mode: Some(IdMode::Passthrough),
                    persist_owners: Some(true),
                    permissions: Some(Permissions::Host),
                }
            )
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        for (text, want) in [
            (
                "listen = [\"unix:/s\"]\nbogus = 1\n",
                "/etc/ferry/host.toml:2: bogus: unknown field `bogus`",
            ),
            (
                "[[export]]\nname = \"a\"\npath = \"/x\"\nread-only = \"yes\"\n",
                "/etc/ferry/host.toml:4: export.read-only: invalid type: string \"yes\", \
                 expected a boolean",
            ),
            (
                "[[export]]\nname = \"a\"\npath = \"/x\"\nreadonly = true\n",
                "/etc/ferry/host.toml:4: export.readonly: unknown field `readonly`",
            ),
            (
                "listen = [\n  \"unix:/s\",\n  \"tcp:nope:x\",\n]\n",
                "/etc/ferry/host.toml:3: listen: invalid listen address \"tcp:nope:x\"",
            ),
            (
                "\n\n[[export]]\nname = \"a\"\npath = \"/x\"\nids = \"squash:1\"\n",
                "/etc/ferry/host.toml:6: export.ids: ",
            ),
            (
                "permissions = \"kernel\"\n",
                "/etc/ferry/host.toml:1: permissions: ",
            ),
            (
                "[[export]]\nname = \"a b\"\npath = \"/x\"\n",
                "/etc/ferry/host.toml:2: export.name: character ' ' not allowed",
            ),
            (
                "[[export]]\nname = \"a\"\npath = \"/x\"\n[[export]]\nname = \"a\"\npath = \"/y\"\n",
                "/etc/ferry/host.toml:5: export.name: export \"a\" is given twice",
            ),
            (
                "[[export]]\nname = \"a\"\n",
                "/etc/ferry/host.toml:1: export: missing field `path`",
            ),
            (
                "max-node-fds = 0\n",
                "/etc/ferry/host.toml:1: max-node-fds: must be",
            ),
            (
                "max-node-fds = -4\n",
                "/etc/ferry/host.toml:1: max-node-fds: ",
            ),
            ("listen = [\"unix:/s\"\n", "/etc/ferry/host.toml:"),
            (
                "control = \"/run/c\"\n",
                "/etc/ferry/host.toml:1: control: expected unix:PATH",
            ),
            (
                "metrics = \"vsock:5\"\n",
                "/etc/ferry/host.toml:1: metrics: expected unix:PATH",
            ),
            (
                "socket-mode = \"999\"\n",
                "/etc/ferry/host.toml:1: socket-mode: \"999\": expected an octal mode",
            ),
            (
                "socket-mode = 600\n",
                "/etc/ferry/host.toml:1: socket-mode: invalid type: integer",
            ),
            (
                "[limits]\nmax-connections = 1\nmax-conections = 2\n",
                "/etc/ferry/host.toml:3: limits.max-conections: unknown field",
            ),
            (
                "[limits]\nhandshake-timeout = 0\n",
                "/etc/ferry/host.toml:2: limits.handshake-timeout: expected a positive",
            ),
            (
                "[client-tokens]\n\"a b\" = \"/t\"\n",
                "/etc/ferry/host.toml:2: client-tokens: \"a b\": character ' ' not allowed",
            ),
            (
                "[[export]]\nname = \"a\"\npath = \"/x\"\nallow = [\"cid:3\", \"gid:4\"]\n",
                "/etc/ferry/host.toml:4: export.allow: \"gid:4\": expected cid:N",
            ),
            (
                "[[export]]\nname = \"a\"\npath = \"/x\"\nallow = []\n",
                "/etc/ferry/host.toml:4: export.allow: empty list",
            ),
            (
                "[[export]]\nname = \"a\"\npath = \"/x\"\nsetid = \"on\"\n",
                "/etc/ferry/host.toml:4: export.setid: invalid type",
            ),
        ] {
            let got = err(text);
            assert!(
                got.starts_with(want),
                "{text:?}:\n got: {got}\nwant: {want}"
            );
        }
    }

    #[test]
    fn the_command_line_overrides_and_adds() {
        let parts = parse(
            "listen = [\"unix:/a\"]\nmax-node-fds = 100\nids = \"squash:5:5\"\n\
             socket-mode = \"640\"\n[limits]\nmax-connections = 9\nmax-handles = 8\n\
             [[export]]\nname = \"src\"\npath = \"/file/src\"\n\
             [[export]]\nname = \"keep\"\npath = \"/file/keep\"\n",
        )
        .unwrap();
        let flags = Overrides {
            exports: vec![
                "src=/cli/src:ro".parse().unwrap(),
                "new=/cli/new".parse().unwrap(),
            ],
            listen: vec!["unix:/b".parse().unwrap(), "unix:/a".parse().unwrap()],
            max_node_fds: Some(7),
            no_auth: true,
            socket_mode: Some(0o666),
            limits: LimitOverrides {
                max_connections: Some(2),
                ..Default::default()
            },
            ids: IdOptions {
                mode: Some(IdMode::Passthrough),
                ..Default::default()
            },
            ..Default::default()
        };
        let config = flags.apply(parts, None).unwrap();
        let shown: Vec<(String, String, bool)> = config
            .exports
            .iter()
            .map(|e| (e.name.clone(), e.path.display().to_string(), e.read_only))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("src".into(), "/cli/src".into(), true),
                ("keep".into(), "/file/keep".into(), false),
                ("new".into(), "/cli/new".into(), false),
            ]
        );
        assert_eq!(config.listen.len(), 2, "{:?}", config.listen);
        assert_eq!(config.max_node_fds, 7);
        assert!(config.no_auth);
        assert_eq!(config.socket_mode, 0o666);
        assert_eq!(
            (config.limits.max_connections, config.limits.max_handles),
            (2, 8),
            "--max-connections wins, the file's max-handles stays"
        );
        assert_eq!(
            config.limits.max_lock_waiters,
            Limits::MAX_LOCK_WAITERS,
            "unset limits keep their defaults"
        );
        assert!(
            config
                .exports
                .iter()
                .all(|e| e.ids.mode == Some(IdMode::Passthrough)),
            "--ids wins over the file's ids"
        );
    }

    #[test]
    fn token_file_is_read_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let text = format!("token-file = {:?}\n", token.display().to_string());
        let config = Overrides::default()
            .apply(parse(&text).unwrap(), None)
            .unwrap();
        assert_eq!(config.token.as_deref(), Some(&b"s3cret"[..]));
        // client-tokens: the file's, with --client-token replacing one of the same name.
        let (ci, vm, cli) = (
            dir.path().join("ci"),
            dir.path().join("vm"),
            dir.path().join("cli"),
        );
        std::fs::write(&ci, "ci-secret\n").unwrap();
        std::fs::write(&vm, "vm-secret").unwrap();
        std::fs::write(&cli, "cli-secret").unwrap();
        let text = format!(
            "[client-tokens]\nci = {:?}\nvm = {:?}\n",
            ci.display().to_string(),
            vm.display().to_string()
        );
        let flags = Overrides {
            client_tokens: vec![("vm".into(), cli.clone())],
            ..Default::default()
        };
        let config = flags.apply(parse(&text).unwrap(), None).unwrap();
        assert_eq!(
            config.client_tokens,
            vec![
                ("ci".to_string(), b"ci-secret".to_vec()),
                ("vm".to_string(), b"cli-secret".to_vec())
            ]
        );
        let e = Overrides::default()
            .apply(
                parse("[client-tokens]\nci = \"/nonexistent/ci\"\n").unwrap(),
                Some(Path::new("/etc/x.toml")),
            )
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/x.toml: client-tokens.ci: "), "{e}");
        let missing = "token-file = \"/nonexistent/token\"\n";
        let e = Overrides::default()
            .apply(parse(missing).unwrap(), Some(Path::new("/etc/x.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/x.toml: token-file: "), "{e}");
    }

    #[test]
    fn the_sample_config_parses() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ferry-host.toml");
        // Its token file, made here.
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t\n").unwrap();
        let text = std::fs::read_to_string(&sample)
            .unwrap()
            .replace("/etc/ferry/token", &token.display().to_string());
        let config = Overrides::default()
            .apply(FileConfig::parse(&sample, &text).unwrap(), Some(&sample))
            .unwrap();
        assert!(!config.exports.is_empty() && !config.listen.is_empty());
        assert_eq!(config.token.as_deref(), Some(&b"t"[..]));
        // The commented examples parse too, once uncommented.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with('[')
                        || rest
                            .split_once(" = ")
                            .is_some_and(|(k, _)| !k.contains(' ')) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parts = FileConfig::parse(&sample, &uncommented).unwrap();
        assert_eq!(parts.client_tokens.len(), 1, "{uncommented}");
        assert!(parts.exports.iter().any(|e| e.allow.is_some()));
        assert!(parts.limits.max_connections.is_some() && parts.socket_mode.is_some());
    }

    #[test]
    fn sandbox_keys_parse_and_flags_win() {
        let parts = parse("sandbox = \"none\"\nseccomp = \"log\"\n").unwrap();
        assert_eq!(parts.sandbox, Some(SandboxMode::None));
        assert_eq!(parts.seccomp, Some(SeccompMode::Log));
        let flags = Overrides {
            sandbox: Some(SandboxMode::On),
            ..Overrides::default()
        };
        let config = flags.apply(parts, None).unwrap();
        assert_eq!(
            config.sandbox,
            Sandbox {
                mode: SandboxMode::On,
                seccomp: SeccompMode::Log
            }
        );
        assert_eq!(
            Overrides::default()
                .apply(FileParts::default(), None)
                .unwrap()
                .sandbox,
            Sandbox::default()
        );
        assert!(err("sandbox = \"chroot\"\n").contains("sandbox: \"chroot\": expected on or none"));
        assert!(err("seccomp = \"errno\"\n").contains("seccomp:"));
    }
}
