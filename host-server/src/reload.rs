//! Live changes: the server's state as a value that a reload replaces.
//!
//! Every connection serves the [`ServerState`] that was current when it was accepted (its
//! export ids are fixed by its handshake). A reload builds the next state from a new
//! configuration: an export whose specification did not change is the same [`Export`]
//! object, so its guests notice nothing; a removed or changed export is *retired*
//! ([`Export::retire`]): its existing sessions answer ESHUTDOWN from then on, and a changed one
//! is opened afresh for new connections. A configuration that fails any check is refused as a
//! whole, and the running state stays. Listeners and the descriptor cap are set at start; a
//! reload that changes listeners, limits or the socket mode says so and leaves them, except
//! that a vhost-user-fs listener stops with its export (removing its socket) and serves a
//! changed export's new version to its next frontend (`virtiofs::VirtioFsListener`); tokens,
//! `no-auth` and allow-lists apply to connections accepted after the reload.

use std::sync::{Arc, RwLock};

use tracing::{info, warn};

use crate::config::{ExportSpec, ListenAddr, ServerConfig};
use crate::conn::{Auth, ServerState};
use crate::export::Export;

/// The current state, shared by every listener.
pub struct Live {
    state: RwLock<Arc<ServerState>>,
    /// What every connection counts (`ferry status`, the metrics endpoint).
    pub stats: crate::stats::ServerStats,
    /// The configuration the current state was built from, with its exports.
    running: RwLock<Running>,
}

struct Running {
    config: ServerConfig,
    exports: Vec<(ExportSpec, Arc<Export>)>,
}

impl Live {
    /// The state of a server started from `config`, with its exports already opened (in the
    /// same order as `config.exports`).
    /// `auth` is what [`crate::check_settings`] made of `config`.
    pub fn new(config: ServerConfig, exports: Vec<Arc<Export>>, auth: Auth) -> Live {
        let state = Arc::new(crate::server_state(&config, exports.clone(), auth));
        Live {
            state: RwLock::new(state),
            stats: Default::default(),
            running: RwLock::new(Running {
                exports: config.exports.iter().cloned().zip(exports).collect(),
                config,
            }),
        }
    }

    /// The state a connection accepted now is served with.
    pub fn current(&self) -> Arc<ServerState> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the running configuration with `next`, or refuses it (the error says why, and
    /// nothing changed). Returns one line per change made.
    pub fn reload(&self, next: ServerConfig) -> anyhow::Result<Vec<String>> {
        let mut running = self.running.write().unwrap_or_else(|e| e.into_inner());
        let auth = crate::check_settings(&next)?;
        let mut changes = Vec::new();
        let mut exports = Vec::new();
        for spec in &next.exports {
            let same = running
                .exports
                .iter()
                .find(|(s, _)| s == spec)
                .map(|(_, e)| e.clone());
            let export = match same {
                Some(e) => e,
                None => {
                    crate::sandbox::admits(spec)?;
                    let e = crate::open_exports(std::slice::from_ref(spec))?.remove(0);
                    e.set_max_node_fds(running.config.max_node_fds);
                    e.set_max_handles(running.config.limits.max_handles);
                    e.set_max_lock_owners(running.config.limits.max_lock_owners);
                    let was = running.exports.iter().any(|(s, _)| s.name == spec.name);
                    changes.push(format!(
                        "export {} {} ({}{})",
                        spec.name,
                        if was { "changed" } else { "added" },
                        spec.path.display(),
                        if spec.read_only { ", read-only" } else { "" }
                    ));
                    e
                }
            };
            exports.push((spec.clone(), export));
        }
        // The vhost-user-fs sockets of the running configuration, by export.
        let vhost_socket = |name: &str| {
            running.config.listen.iter().find_map(|l| match l {
                ListenAddr::VhostUserFs { socket, export } if export == name => {
                    Some(socket.display().to_string())
                }
                _ => None,
            })
        };
        for (spec, old) in &running.exports {
            let gone = !exports.iter().any(|(_, e)| Arc::ptr_eq(e, old));
            let removed = gone && !next.exports.iter().any(|s| s.name == spec.name);
            match (removed, gone, vhost_socket(&spec.name)) {
                (true, _, None) => changes.push(format!("export {} removed", spec.name)),
                (true, _, Some(socket)) => changes.push(format!(
                    "export {} removed; its vhost-user-fs socket {socket} stops serving (its \
                     guest's requests answer ESHUTDOWN, the socket is removed)",
                    spec.name
                )),
                (false, true, Some(socket)) => changes.push(format!(
                    "export {}: its vhost-user-fs socket {socket} serves the changed export to \
                     the next frontend (the connected guest's requests answer ESHUTDOWN)",
                    spec.name
                )),
                _ => {}
            }
        }
        // A vhost-user-fs listener of a removed export stops with it: not a listener change.
        let kept = |listen: &[ListenAddr]| -> Vec<ListenAddr> {
            listen
                .iter()
                .filter(|l| match l {
                    ListenAddr::VhostUserFs { export, .. } => {
                        next.exports.iter().any(|s| &s.name == export)
                    }
                    _ => true,
                })
                .cloned()
                .collect()
        };
        if kept(&next.listen) != kept(&running.config.listen) {
            warn!(
                "the new configuration changes the listeners; a reload keeps the running ones \
                 (restart ferry-host to change them)"
            );
        }
        if next.max_node_fds != running.config.max_node_fds {
            warn!("max-node-fds is set at start; restart ferry-host to change it");
        }
        if next.sandbox != running.config.sandbox {
            warn!("sandbox and seccomp are set at start; restart ferry-host to change them");
        }
        if next.limits != running.config.limits || next.socket_mode != running.config.socket_mode {
            warn!("limits and socket-mode are set at start; restart ferry-host to change them");
        }
        if next.token != running.config.token || next.client_tokens != running.config.client_tokens
        {
            changes.push("tokens changed (for new connections)".into());
        }
        if next.no_auth != running.config.no_auth {
            changes.push(format!(
                "no-auth {} (for new connections)",
                if next.no_auth { "on" } else { "off" }
            ));
        }
        // Retire only once the whole new configuration is known to be good.
        for (_, old) in &running.exports {
            if !exports.iter().any(|(_, e)| Arc::ptr_eq(e, old)) {
                old.retire();
            }
        }
        // Listeners, limits and the socket mode stay as started.
        let next = ServerConfig {
            listen: running.config.listen.clone(),
            max_node_fds: running.config.max_node_fds,
            socket_mode: running.config.socket_mode,
            limits: running.config.limits.clone(),
            sandbox: running.config.sandbox,
            ..next
        };
        let mut current = self.state.write().unwrap_or_else(|e| e.into_inner());
        // The connections of the old state still count against the caps of the new one.
        let state = crate::server_state(
            &next,
            exports.iter().map(|(_, e)| e.clone()).collect(),
            auth,
        )
        .counting_with(&current);
        *current = Arc::new(state);
        drop(current);
        running.config = next;
        running.exports = exports;
        for c in &changes {
            info!("reload: {c}");
        }
        Ok(changes)
    }
}
