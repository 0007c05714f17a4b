//! The numbers `ferry status` and the Prometheus endpoint show: per connected guest and per
//! export, requests by operation (count, latency histogram), bytes, handles, nodes,
//! descriptors, lock waiters, change events sent and overflowed, and the event queue with its
//! lag as a time (from the watcher reading a host event to its notice being written).
//!
//! Counting is a few relaxed atomic additions per request: a counter, a latency sum and one
//! histogram bucket (powers of two of microseconds) for the operation, and the bytes moved.
//! Everything else (sums, percentiles, the export core's own counts) is computed when someone
//! asks, from a snapshot.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferry_common::latency::{self, BUCKETS, bucket_of, quantile};
use ferry_protocol::Opcode;
use serde::Serialize;

use crate::export::ExportSession;

/// One operation's counts on one session.
#[derive(Default)]
struct OpStat {
    count: AtomicU64,
    nanos: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// One guest session of one export: what its connection counts.
pub struct SessionStats {
    export: String,
    session: Weak<ExportSession>,
    ops: Box<[OpStat]>,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    events_sent: AtomicU64,
    events_overflowed: AtomicU64,
    lock_waiters: AtomicU64,
}

impl SessionStats {
    fn new(session: &Arc<ExportSession>) -> SessionStats {
        SessionStats {
            export: session.export().name().to_string(),
            session: Arc::downgrade(session),
            ops: Opcode::ALL.iter().map(|_| OpStat::default()).collect(),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            events_overflowed: AtomicU64::new(0),
            lock_waiters: AtomicU64::new(0),
        }
    }

    /// One request served: its operation, how long it took, and the file bytes it read
    /// (sent to the guest) and wrote (received from it).
    pub fn request(&self, op: Opcode, took: Duration, read: usize, written: usize) {
        let s = &self.ops[op.index()];
        s.count.fetch_add(1, Relaxed);
        let nanos = took.as_nanos().min(u64::MAX as u128) as u64;
        s.nanos.fetch_add(nanos, Relaxed);
        s.buckets[bucket_of(nanos / 1000)].fetch_add(1, Relaxed);
        if read > 0 {
            self.bytes_read.fetch_add(read as u64, Relaxed);
        }
        if written > 0 {
            self.bytes_written.fetch_add(written as u64, Relaxed);
        }
    }

    /// `n` change events handed to the guest's queue.
    pub fn events_sent(&self, n: usize) {
        self.events_sent.fetch_add(n as u64, Relaxed);
    }

    /// A batch of events dropped because the guest was not reading (it is told: overflow).
    pub fn events_overflowed(&self, n: usize) {
        self.events_overflowed.fetch_add(n as u64, Relaxed);
    }

    /// A blocking lock starts (`true`) or stops (`false`) waiting.
    pub fn lock_waiting(&self, on: bool) {
        if on {
            self.lock_waiters.fetch_add(1, Relaxed);
        } else {
            self.lock_waiters.fetch_sub(1, Relaxed);
        }
    }
}

/// How long change batches wait on the host, from the watcher reading the first event of
/// their burst to the notice being written to the guest.
#[derive(Default)]
struct EventLag {
    /// When the watcher saw each batch still queued (a few entries: one per batch waiting).
    queued: Mutex<std::collections::VecDeque<Instant>>,
    /// Age of the last batch written, in µs.
    last_us: AtomicU64,
    /// Largest age of a batch written, in µs.
    max_us: AtomicU64,
    /// Ages of the batches written, bucketed as request latencies are.
    buckets: [AtomicU64; BUCKETS],
}

/// One connection: its guest and its sessions, in export-id order.
pub struct ConnStats {
    peer: String,
    started: Instant,
    /// `None` for an export the guest's allow-lists do not grant it.
    sessions: Vec<Option<SessionStats>>,
    /// Bytes of change events queued for the guest and not yet written (the connection's
    /// counter).
    queued: Arc<AtomicUsize>,
    lag: EventLag,
}

impl ConnStats {
    /// The stats of session `export` (its id on this connection).
    pub fn session(&self, export: usize) -> Option<&SessionStats> {
        self.sessions.get(export).and_then(Option::as_ref)
    }

    /// A batch whose burst the watcher saw at `seen` was queued for the guest.
    pub fn batch_queued(&self, seen: Instant) {
        self.lag
            .queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(seen);
    }

    /// That batch was written to the guest (or dropped): its age is the host's event lag.
    pub fn batch_written(&self, seen: Instant) {
        let mut q = self.lag.queued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = q.iter().position(|t| *t == seen) {
            q.remove(i);
        }
        drop(q);
        let us = seen.elapsed().as_micros().min(u64::MAX as u128) as u64;
        self.lag.last_us.store(us, Relaxed);
        self.lag.max_us.fetch_max(us, Relaxed);
        self.lag.buckets[bucket_of(us)].fetch_add(1, Relaxed);
    }
}

/// Every connection of one server.
pub struct ServerStats {
    started: Instant,
    conns: Mutex<Vec<Weak<ConnStats>>>,
}

impl Default for ServerStats {
    fn default() -> Self {
        ServerStats {
            started: Instant::now(),
            conns: Mutex::new(Vec::new()),
        }
    }
}

impl ServerStats {
    /// Registers a new connection from `peer` with these sessions; counting stops when the
    /// returned value is dropped (the connection ends).
    pub fn connection(
        &self,
        peer: &str,
        sessions: &[Option<Arc<ExportSession>>],
        queued: Arc<AtomicUsize>,
    ) -> Arc<ConnStats> {
        let c = Arc::new(ConnStats {
            peer: peer.to_string(),
            started: Instant::now(),
            sessions: sessions
                .iter()
                .map(|s| s.as_ref().map(SessionStats::new))
                .collect(),
            queued,
            lag: EventLag::default(),
        });
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|w| w.strong_count() > 0);
        conns.push(Arc::downgrade(&c));
        c
    }

    /// What is true now, with the server's current `exports`.
    pub fn snapshot(&self, exports: &[Arc<crate::export::Export>]) -> Status {
        let conns: Vec<Arc<ConnStats>> = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        Status {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            guests: conns.iter().map(|c| c.snapshot()).collect(),
            exports: exports
                .iter()
                .map(|e| {
                    let n = e.event_counts();
                    ServerExport {
                        name: e.name().to_string(),
                        read_only: e.read_only(),
                        events_seen: n.seen,
                        events_coalesced: n.coalesced,
                        events_suppressed: n.suppressed,
                    }
                })
                .collect(),
        }
    }
}

/// `ferry status --json`: the server and each connected guest.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Status {
    /// Seconds since the server started.
    pub uptime_seconds: f64,
    /// Connected guests.
    pub guests: Vec<GuestStatus>,
    /// The exports served now, with their watchers' totals.
    #[serde(default)]
    pub exports: Vec<ServerExport>,
}

/// One export of the server, whatever guests use it.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ServerExport {
    /// The export.
    pub name: String,
    /// Refuses every change.
    pub read_only: bool,
    /// Host changes the watcher read.
    pub events_seen: u64,
    /// Changes folded into another to the same path within a burst.
    pub events_coalesced: u64,
    /// Changes not sent to a session that made them itself (echoes) or does not know the
    /// object, counted per session.
    pub events_suppressed: u64,
}

/// One connected guest.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct GuestStatus {
    /// Who (the listener and the peer's process or address).
    pub peer: String,
    /// Seconds since it connected.
    pub uptime_seconds: f64,
    /// Bytes of change events queued for it and not yet written.
    pub events_queued: u64,
    /// The event lag now, in seconds: how long ago the watcher saw the oldest change still
    /// queued for this guest (0 when nothing waits).
    #[serde(default)]
    pub event_lag_seconds: f64,
    /// The host's lag of the last batch written: from the watcher seeing it to the notice.
    #[serde(default)]
    pub last_event_lag_seconds: f64,
    /// The largest such lag so far.
    #[serde(default)]
    pub max_event_lag_seconds: f64,
    /// Histogram of those lags: `event_lag_buckets[i]` batches waited less than `2^i` µs.
    #[serde(default)]
    pub event_lag_buckets: Vec<u64>,
    /// Its view of each export.
    pub exports: Vec<ExportStatus>,
}

/// One guest's session of one export.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ExportStatus {
    /// The export.
    pub name: String,
    /// Requests by operation (only operations seen).
    pub requests: Vec<OpStatus>,
    /// File bytes sent to the guest (reads, inline open data).
    pub bytes_read: u64,
    /// File bytes received (writes).
    pub bytes_written: u64,
    /// Open file and directory handles.
    pub open_handles: u64,
    /// Nodes the guest holds, the root included.
    pub nodes: u64,
    /// Node descriptors the session's cache holds.
    pub node_fds: u64,
    /// Lock owners with a host open file.
    pub lock_owners: u64,
    /// Blocking locks waiting now.
    pub lock_waiters: u64,
    /// Change events sent to the guest.
    pub events_sent: u64,
    /// Change events dropped for an overflow notice (the guest was not reading).
    pub events_overflowed: u64,
}

/// One operation's numbers.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct OpStatus {
    /// The operation (`Read`, `Lookup`, ...).
    pub op: String,
    /// Requests served.
    pub count: u64,
    /// Total time, in seconds.
    pub seconds: f64,
    /// Median latency (upper bound of its histogram bucket), in microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, likewise.
    pub p99_us: u64,
    /// Histogram: `buckets[i]` requests took less than `2^i` µs (the last: any longer).
    pub buckets: Vec<u64>,
}

impl ConnStats {
    fn snapshot(&self) -> GuestStatus {
        GuestStatus {
            peer: self.peer.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            events_queued: self.queued.load(Relaxed) as u64,
            event_lag_seconds: self
                .lag
                .queued
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .min()
                .map_or(0.0, |t| t.elapsed().as_secs_f64()),
            last_event_lag_seconds: self.lag.last_us.load(Relaxed) as f64 / 1e6,
            max_event_lag_seconds: self.lag.max_us.load(Relaxed) as f64 / 1e6,
            event_lag_buckets: self.lag.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            exports: self
                .sessions
                .iter()
                .flatten()
                .map(|s| {
                    let live = s.session.upgrade();
                    let count =
                        |f: fn(&ExportSession) -> usize| live.as_deref().map_or(0, |x| f(x) as u64);
                    ExportStatus {
                        name: s.export.clone(),
                        requests: Opcode::ALL
                            .iter()
                            .zip(s.ops.iter())
                            .filter(|(_, o)| o.count.load(Relaxed) > 0)
                            .map(|(op, o)| {
                                let buckets: Vec<u64> =
                                    o.buckets.iter().map(|b| b.load(Relaxed)).collect();
                                OpStatus {
                                    op: format!("{op:?}"),
                                    count: o.count.load(Relaxed),
                                    seconds: o.nanos.load(Relaxed) as f64 / 1e9,
                                    p50_us: quantile(&buckets, 0.5),
                                    p99_us: quantile(&buckets, 0.99),
                                    buckets,
                                }
                            })
                            .collect(),
                        bytes_read: s.bytes_read.load(Relaxed),
                        bytes_written: s.bytes_written.load(Relaxed),
                        open_handles: count(ExportSession::handle_count),
                        nodes: count(ExportSession::node_count),
                        node_fds: count(ExportSession::cached_node_fds),
                        lock_owners: count(ExportSession::lock_owner_count),
                        lock_waiters: s.lock_waiters.load(Relaxed),
                        events_sent: s.events_sent.load(Relaxed),
                        events_overflowed: s.events_overflowed.load(Relaxed),
                    }
                })
                .collect(),
        }
    }
}

impl Status {
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ferry_uptime_seconds Seconds since ferry-host started.\n\
             # TYPE ferry_uptime_seconds gauge\nferry_uptime_seconds {}",
            self.uptime_seconds
        );
        let _ = writeln!(
            out,
            "# HELP ferry_guests Connected guests.\n# TYPE ferry_guests gauge\nferry_guests {}",
            self.guests.len()
        );
        let _ = writeln!(
            out,
            "# HELP ferry_request_duration_seconds Requests served, by guest, export and \
             operation.\n# TYPE ferry_request_duration_seconds histogram"
        );
        for g in &self.guests {
            for e in &g.exports {
                for r in &e.requests {
                    let labels = format!(
                        "guest=\"{}\",export=\"{}\",op=\"{}\"",
                        latency::label(&g.peer),
                        latency::label(&e.name),
                        r.op
                    );
                    latency::prometheus(
                        &mut out,
                        "ferry_request_duration_seconds",
                        &labels,
                        &r.buckets,
                        Some(r.seconds),
                    );
                }
            }
        }
        type Field = fn(&ExportStatus) -> u64;
        let per_export: [(&str, &str, &str, Field); 9] = [
            (
                "ferry_read_bytes_total",
                "counter",
                "File bytes sent to the guest.",
                |e| e.bytes_read,
            ),
            (
                "ferry_written_bytes_total",
                "counter",
                "File bytes received from the guest.",
                |e| e.bytes_written,
            ),
            (
                "ferry_open_handles",
                "gauge",
                "Open file and directory handles.",
                |e| e.open_handles,
            ),
            ("ferry_nodes", "gauge", "Nodes the guest holds.", |e| {
                e.nodes
            }),
            ("ferry_node_fds", "gauge", "Node descriptors cached.", |e| {
                e.node_fds
            }),
            (
                "ferry_lock_owners",
                "gauge",
                "Lock owners with a host open file.",
                |e| e.lock_owners,
            ),
            (
                "ferry_lock_waiters",
                "gauge",
                "Blocking locks waiting.",
                |e| e.lock_waiters,
            ),
            (
                "ferry_events_sent_total",
                "counter",
                "Change events sent to the guest.",
                |e| e.events_sent,
            ),
            (
                "ferry_events_overflowed_total",
                "counter",
                "Change events dropped for an overflow notice.",
                |e| e.events_overflowed,
            ),
        ];
        for (name, kind, help, field) in per_export {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for g in &self.guests {
                for e in &g.exports {
                    let _ = writeln!(
                        out,
                        "{name}{{guest=\"{}\",export=\"{}\"}} {}",
                        latency::label(&g.peer),
                        latency::label(&e.name),
                        field(e)
                    );
                }
            }
        }
        type Watch = fn(&ServerExport) -> u64;
        let per_server_export: [(&str, &str, Watch); 3] = [
            (
                "ferry_events_seen_total",
                "Host changes the watcher read.",
                |e| e.events_seen,
            ),
            (
                "ferry_events_coalesced_total",
                "Host changes folded into another to the same path.",
                |e| e.events_coalesced,
            ),
            (
                "ferry_events_suppressed_total",
                "Host changes not sent: a session's own echoes, or unknown to it.",
                |e| e.events_suppressed,
            ),
        ];
        for (name, help, field) in per_server_export {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for e in &self.exports {
                let _ = writeln!(
                    out,
                    "{name}{{export=\"{}\"}} {}",
                    latency::label(&e.name),
                    field(e)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP ferry_events_queued Bytes of change events queued for a guest, not yet written.\n\
             # TYPE ferry_events_queued gauge"
        );
        for g in &self.guests {
            let _ = writeln!(
                out,
                "ferry_events_queued{{guest=\"{}\"}} {}",
                latency::label(&g.peer),
                g.events_queued
            );
        }
        let _ = writeln!(
            out,
            "# HELP ferry_event_lag_seconds Age of the oldest change event queued for a guest.\n\
             # TYPE ferry_event_lag_seconds gauge"
        );
        for g in &self.guests {
            let _ = writeln!(
                out,
                "ferry_event_lag_seconds{{guest=\"{}\"}} {}",
                latency::label(&g.peer),
                g.event_lag_seconds
            );
        }
        let _ = writeln!(
            out,
            "# HELP ferry_event_delivery_seconds Time from the watcher reading a host change to \
             its notice being written to the guest.\n# TYPE ferry_event_delivery_seconds histogram"
        );
        for g in &self.guests {
            let labels = format!("guest=\"{}\"", latency::label(&g.peer));
            latency::prometheus(
                &mut out,
                "ferry_event_delivery_seconds",
                &labels,
                &g.event_lag_buckets,
                None,
            );
        }
        out
    }
}
