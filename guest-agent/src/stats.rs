//! The agent's own numbers: what `ferry-agent status` (and `ferry status --agent`) shows and
//! the Prometheus text of `ferry-agent --metrics`, read over the control socket
//! (`ferry-agent --control PATH`, mode 0600: `status` answers JSON, `metrics` the text).
//!
//! - requests sent to the host, per operation: count, errors, latency histogram (powers of two
//!   of microseconds, as ferry-host's), timed from the send to the reply's callback;
//! - requests the agent answered itself (`Hit`): a missing name from a complete listing, a
//!   read-only open, the first pages of a file sent with its open, a readdir page fetched
//!   ahead. What the guest kernel answers from its own caches (a second `stat`, a cached
//!   name) never reaches the agent: a kernel cache hit shows as a request *not* sent;
//! - change events received, cache notifications written to the kernel;
//! - per mount, the replay thread's outcomes (`ReplayStats`: done, skipped, failed with their
//!   reasons), the last [`RECENT`] changes not replayed, each with why, and the event lag as a
//!   time: from the host's watcher reading the change (the host tells its share,
//!   `Notice::Changes::age_us`) to the end of its replay here.
//!
//! Counting costs a few relaxed atomic additions. Request latencies are recorded on the one
//! thread that reads replies, so their counters are never contended; the local answers are
//! one addition each on the FUSE thread that made them.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead as _, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use ferry_common::latency::{self, BUCKETS, bucket_of, quantile};
use ferry_protocol::Opcode;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::replay::ReplayState;

/// How many changes not replayed each mount remembers (the oldest go first).
pub const RECENT: usize = 32;

/// A request the agent answered without the host.
#[derive(Clone, Copy, Debug)]
pub enum Hit {
    /// A lookup of a name a complete listing lacks (a negative entry).
    MissingName = 0,
    /// A read-only open.
    Open = 1,
    /// A read served from the bytes sent with the open.
    Page = 2,
    /// A readdir page served from the entries fetched ahead.
    Listing = 3,
}

/// The cache kinds shown: name, what the agent answers (if any), the operations a kernel miss
/// sends to the host.
const KINDS: [(&str, Option<Hit>, &[Opcode]); 6] = [
    ("attributes", None, &[Opcode::Getattr]),
    ("names", None, &[Opcode::Lookup]),
    ("missing_names", Some(Hit::MissingName), &[]),
    (
        "listings",
        Some(Hit::Listing),
        &[Opcode::Readdir, Opcode::Readdirplus],
    ),
    ("opens", Some(Hit::Open), &[Opcode::Open]),
    ("pages", Some(Hit::Page), &[Opcode::Read]),
];

#[derive(Default)]
struct OpStat {
    count: AtomicU64,
    errors: AtomicU64,
    nanos: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// A mount whose replay thread runs.
struct MountEntry {
    export: String,
    mountpoint: PathBuf,
    state: Weak<ReplayState>,
}

/// Everything this agent process counts (one per process: [`agent`]).
pub struct AgentStats {
    started: Instant,
    ops: Box<[OpStat]>,
    hits: [AtomicU64; 4],
    events_received: AtomicU64,
    invalidations: AtomicU64,
    /// Per export, the origin (the host's watcher reading it, in this machine's clock) of
    /// each change batch handed to the replay thread and not yet started.
    origins: Mutex<HashMap<u32, VecDeque<Instant>>>,
    mounts: Mutex<Vec<MountEntry>>,
}

/// This process's counters.
pub fn agent() -> &'static AgentStats {
    static AGENT: OnceLock<AgentStats> = OnceLock::new();
    AGENT.get_or_init(|| AgentStats {
        started: Instant::now(),
        ops: Opcode::ALL.iter().map(|_| OpStat::default()).collect(),
        hits: Default::default(),
        events_received: AtomicU64::new(0),
        invalidations: AtomicU64::new(0),
        origins: Mutex::new(HashMap::new()),
        mounts: Mutex::new(Vec::new()),
    })
}

impl AgentStats {
    /// A reply to `op` arrived `took` after the request was sent.
    pub fn request(&self, op: Opcode, took: Duration, ok: bool) {
        let s = &self.ops[op.index()];
        s.count.fetch_add(1, Relaxed);
        if !ok {
            s.errors.fetch_add(1, Relaxed);
        }
        let nanos = took.as_nanos().min(u64::MAX as u128) as u64;
        s.nanos.fetch_add(nanos, Relaxed);
        s.buckets[bucket_of(nanos / 1000)].fetch_add(1, Relaxed);
    }

    /// A request answered here.
    pub fn hit(&self, hit: Hit) {
        self.hits[hit as usize].fetch_add(1, Relaxed);
    }

    /// A cache notification written to the kernel.
    pub fn invalidation(&self) {
        self.invalidations.fetch_add(1, Relaxed);
    }

    /// A batch of `n` changes of `export` arrived; the host's watcher read its oldest
    /// `age_us` µs ago. Call before handing it to the replay thread.
    pub fn batch_arrived(&self, export: u32, n: usize, age_us: u64) {
        self.events_received.fetch_add(n as u64, Relaxed);
        let now = Instant::now();
        let origin = now
            .checked_sub(Duration::from_micros(age_us))
            .unwrap_or(now);
        let mut o = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        let q = o.entry(export).or_default();
        // Bounded: a replay thread that stopped taking batches leaves them here.
        if q.len() >= 4096 {
            q.pop_front();
        }
        q.push_back(origin);
    }

    /// That batch was not handed over after all.
    pub fn batch_dropped(&self, export: u32) {
        let mut o = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = o.get_mut(&export) {
            q.pop_back();
        }
    }

    /// The replay thread of `export` starts its next batch: where its lag counts from.
    pub fn batch_started(&self, export: u32) -> Instant {
        let mut o = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        o.get_mut(&export)
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(Instant::now)
    }

    /// Shows `state`'s replays of `export` on `mountpoint` until the state is dropped.
    pub fn mount(&self, export: &str, mountpoint: &Path, state: &Arc<ReplayState>) {
        let mut m = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|e| e.state.strong_count() > 0);
        m.push(MountEntry {
            export: export.to_string(),
            mountpoint: mountpoint.to_path_buf(),
            state: Arc::downgrade(state),
        });
    }

    /// What is true now.
    pub fn snapshot(&self) -> AgentStatus {
        let count = |op: Opcode| self.ops[op.index()].count.load(Relaxed);
        let mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        AgentStatus {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            requests: Opcode::ALL
                .iter()
                .zip(self.ops.iter())
                .filter(|(_, o)| o.count.load(Relaxed) > 0)
                .map(|(op, o)| {
                    let buckets: Vec<u64> = o.buckets.iter().map(|b| b.load(Relaxed)).collect();
                    OpStatus {
                        op: format!("{op:?}"),
                        count: o.count.load(Relaxed),
                        errors: o.errors.load(Relaxed),
                        seconds: o.nanos.load(Relaxed) as f64 / 1e9,
                        p50_us: quantile(&buckets, 0.5),
                        p99_us: quantile(&buckets, 0.99),
                        buckets,
                    }
                })
                .collect(),
            cache: KINDS
                .iter()
                .map(|(kind, hit, ops)| CacheStatus {
                    kind: kind.to_string(),
                    answered_here: hit.map_or(0, |h| self.hits[h as usize].load(Relaxed)),
                    sent_to_host: ops.iter().map(|o| count(*o)).sum(),
                })
                .collect(),
            events_received: self.events_received.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            mounts: mounts
                .iter()
                .filter_map(|m| Some(m.snapshot(&*m.state.upgrade()?)))
                .collect(),
        }
    }
}

/// The event lag of one mount: from the host's watcher reading a change to the end of its
/// replay here.
#[derive(Debug, Default)]
pub struct Lag {
    count: AtomicU64,
    last_us: AtomicU64,
    max_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Lag {
    /// A change whose origin is `origin` (see [`AgentStats::batch_started`]) is done.
    pub fn record(&self, origin: Instant) {
        let us = origin.elapsed().as_micros().min(u64::MAX as u128) as u64;
        self.count.fetch_add(1, Relaxed);
        self.last_us.store(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
    }
}

/// One change the replay thread did not replay.
#[derive(Clone, Debug)]
struct Outcome {
    at: SystemTime,
    outcome: &'static str,
    kind: String,
    path: String,
    reason: String,
}

/// The last [`RECENT`] changes of a mount that were skipped or failed, with why.
#[derive(Debug, Default)]
pub struct Recent(Mutex<VecDeque<Outcome>>);

impl Recent {
    /// `outcome` ("skipped" or "failed") of a change of `kind` at `path`, because `reason`.
    pub fn record(
        &self,
        outcome: &'static str,
        kind: &dyn std::fmt::Debug,
        path: &[u8],
        reason: String,
    ) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= RECENT {
            q.pop_front();
        }
        q.push_back(Outcome {
            at: SystemTime::now(),
            outcome,
            kind: format!("{kind:?}"),
            path: String::from_utf8_lossy(path).into_owned(),
            reason,
        });
    }
}

impl MountEntry {
    fn snapshot(&self, state: &ReplayState) -> MountStatus {
        let s = &state.stats;
        let n = |a: &AtomicU64| a.load(Relaxed);
        let buckets: Vec<u64> = s.lag.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let now = SystemTime::now();
        MountStatus {
            export: self.export.clone(),
            mountpoint: self.mountpoint.display().to_string(),
            received: n(&s.received),
            replayed: n(&s.replayed),
            skipped: n(&s.skipped),
            failed: n(&s.failed),
            failed_missing: n(&s.failed_missing),
            failed_stale: n(&s.failed_stale),
            failed_other: n(&s.failed_other),
            skipped_mount: n(&s.skipped_mount),
            skipped_unmounted: n(&s.skipped_unmounted),
            skipped_read_only: n(&s.skipped_read_only),
            overtaken: n(&s.overtaken),
            overflows: n(&s.overflows),
            lag_count: n(&s.lag.count),
            last_lag_seconds: n(&s.lag.last_us) as f64 / 1e6,
            max_lag_seconds: n(&s.lag.max_us) as f64 / 1e6,
            p50_lag_us: quantile(&buckets, 0.5),
            p99_lag_us: quantile(&buckets, 0.99),
            lag_buckets: buckets,
            recent: s
                .recent
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .rev()
                .map(|o| RecentStatus {
                    seconds_ago: now.duration_since(o.at).unwrap_or_default().as_secs_f64(),
                    outcome: o.outcome.to_string(),
                    kind: o.kind.clone(),
                    path: o.path.clone(),
                    reason: o.reason.clone(),
                })
                .collect(),
        }
    }
}

/// `ferry-agent status --json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Seconds since the agent started.
    pub uptime_seconds: f64,
    /// Requests sent to the host, by operation (only operations seen).
    pub requests: Vec<OpStatus>,
    /// Per cache kind, requests answered here and sent to the host (the kernel's own hits
    /// reach neither).
    pub cache: Vec<CacheStatus>,
    /// Host changes received.
    pub events_received: u64,
    /// Cache notifications written to the kernel (pages, attributes, names dropped).
    pub invalidations: u64,
    /// The mounts whose host changes are replayed.
    pub mounts: Vec<MountStatus>,
}

/// One operation sent to the host.
#[derive(Debug, Serialize, Deserialize)]
pub struct OpStatus {
    /// The operation (`Lookup`, `Read`, ...).
    pub op: String,
    /// Replies received.
    pub count: u64,
    /// Of which errors (ENOENT included).
    pub errors: u64,
    /// Total time from send to reply, in seconds.
    pub seconds: f64,
    /// Median latency (upper bound of its bucket), in µs.
    pub p50_us: u64,
    /// 99th percentile, likewise.
    pub p99_us: u64,
    /// `buckets[i]`: replies that took less than `2^i` µs (the last: any longer).
    pub buckets: Vec<u64>,
}

/// One kind of cached thing.
#[derive(Debug, Serialize, Deserialize)]
pub struct CacheStatus {
    /// `attributes`, `names`, `missing_names`, `listings`, `opens` or `pages`.
    pub kind: String,
    /// Requests of the kernel the agent answered itself.
    pub answered_here: u64,
    /// Requests sent to the host for it (the kernel's misses the agent could not answer).
    pub sent_to_host: u64,
}

/// One mount's replays of host changes.
#[derive(Debug, Serialize, Deserialize)]
pub struct MountStatus {
    /// The export.
    pub export: String,
    /// Where it is mounted.
    pub mountpoint: String,
    /// Changes taken by the replay thread.
    pub received: u64,
    /// Replayed (done).
    pub replayed: u64,
    /// Not replayed on purpose.
    pub skipped: u64,
    /// Replays that failed.
    pub failed: u64,
    /// ... a name was missing (ENOENT, ENOTDIR).
    pub failed_missing: u64,
    /// ... overtaken or refused (ESTALE, EEXIST, EPERM, ENOTEMPTY).
    pub failed_stale: u64,
    /// ... anything else.
    pub failed_other: u64,
    /// Skipped: a guest mount is on the directory.
    pub skipped_mount: u64,
    /// Skipped: not mounted any more.
    pub skipped_unmounted: u64,
    /// Skipped: a read-only mount (caches dropped only).
    pub skipped_read_only: u64,
    /// Replayed although the host had moved on since.
    pub overtaken: u64,
    /// Overflows (every cached name dropped).
    pub overflows: u64,
    /// Changes whose lag was measured.
    pub lag_count: u64,
    /// Event lag of the last change: host watcher to replay done, in seconds.
    pub last_lag_seconds: f64,
    /// The largest event lag so far.
    pub max_lag_seconds: f64,
    /// Median event lag (bucket upper bound), in µs.
    pub p50_lag_us: u64,
    /// 99th percentile, likewise.
    pub p99_lag_us: u64,
    /// `lag_buckets[i]`: changes whose lag was under `2^i` µs.
    pub lag_buckets: Vec<u64>,
    /// The last changes not replayed, newest first, with why.
    pub recent: Vec<RecentStatus>,
}

/// One change not replayed.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecentStatus {
    /// How long ago.
    pub seconds_ago: f64,
    /// `skipped` or `failed`.
    pub outcome: String,
    /// The change (`Created`, `Data`, ...).
    pub kind: String,
    /// Its path in the export.
    pub path: String,
    /// Why.
    pub reason: String,
}

impl AgentStatus {
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "ferry_agent_uptime_seconds",
            "gauge",
            "Seconds since ferry-agent started.",
        );
        let _ = writeln!(out, "ferry_agent_uptime_seconds {}", self.uptime_seconds);
        family(
            &mut out,
            "ferry_agent_request_duration_seconds",
            "histogram",
            "Requests sent to the host, from send to reply, by operation.",
        );
        for r in &self.requests {
            let labels = format!("op=\"{}\"", r.op);
            latency::prometheus(
                &mut out,
                "ferry_agent_request_duration_seconds",
                &labels,
                &r.buckets,
                Some(r.seconds),
            );
        }
        family(
            &mut out,
            "ferry_agent_request_errors_total",
            "counter",
            "Requests the host answered with an error.",
        );
        for r in &self.requests {
            let _ = writeln!(
                out,
                "ferry_agent_request_errors_total{{op=\"{}\"}} {}",
                r.op, r.errors
            );
        }
        family(
            &mut out,
            "ferry_agent_cache_answered_total",
            "counter",
            "Kernel requests the agent answered itself, by cache kind.",
        );
        for c in &self.cache {
            let _ = writeln!(
                out,
                "ferry_agent_cache_answered_total{{kind=\"{}\"}} {}",
                c.kind, c.answered_here
            );
        }
        family(
            &mut out,
            "ferry_agent_cache_sent_total",
            "counter",
            "Kernel requests sent to the host, by cache kind.",
        );
        for c in &self.cache {
            let _ = writeln!(
                out,
                "ferry_agent_cache_sent_total{{kind=\"{}\"}} {}",
                c.kind, c.sent_to_host
            );
        }
        family(
            &mut out,
            "ferry_agent_events_received_total",
            "counter",
            "Host changes received.",
        );
        let _ = writeln!(
            out,
            "ferry_agent_events_received_total {}",
            self.events_received
        );
        family(
            &mut out,
            "ferry_agent_invalidations_total",
            "counter",
            "Cache notifications written to the kernel.",
        );
        let _ = writeln!(
            out,
            "ferry_agent_invalidations_total {}",
            self.invalidations
        );
        type Field = fn(&MountStatus) -> u64;
        let outcomes: [(&str, Field); 3] = [
            ("done", |m| m.replayed),
            ("skipped", |m| m.skipped),
            ("failed", |m| m.failed),
        ];
        family(
            &mut out,
            "ferry_agent_replays_total",
            "counter",
            "Host changes replayed on a mount, by outcome.",
        );
        for m in &self.mounts {
            for (outcome, field) in outcomes {
                let _ = writeln!(
                    out,
                    "ferry_agent_replays_total{{export=\"{}\",mountpoint=\"{}\",outcome=\"{outcome}\"}} {}",
                    latency::label(&m.export),
                    latency::label(&m.mountpoint),
                    field(m)
                );
            }
        }
        family(
            &mut out,
            "ferry_agent_event_lag_seconds",
            "histogram",
            "Time from the host's watcher reading a change to the end of its replay in the guest.",
        );
        for m in &self.mounts {
            let labels = format!(
                "export=\"{}\",mountpoint=\"{}\"",
                latency::label(&m.export),
                latency::label(&m.mountpoint)
            );
            let sum = m
                .lag_buckets
                .iter()
                .enumerate()
                .map(|(i, n)| *n as f64 * (1u64 << i) as f64 / 1e6)
                .sum();
            latency::prometheus(
                &mut out,
                "ferry_agent_event_lag_seconds",
                &labels,
                &m.lag_buckets,
                Some(sum),
            );
        }
        out
    }

    /// The human form of `ferry-agent status`.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "ferry-agent up {:.0} s: {} host change(s) received, {} cache notification(s) to the kernel",
            self.uptime_seconds, self.events_received, self.invalidations
        );
        let _ = writeln!(
            o,
            "\n  {:<14} {:>14} {:>14}",
            "cache", "answered here", "sent to host"
        );
        for c in &self.cache {
            let here = if matches!(c.kind.as_str(), "attributes" | "names") {
                "(kernel)".to_string()
            } else {
                c.answered_here.to_string()
            };
            let _ = writeln!(o, "  {:<14} {:>14} {:>14}", c.kind, here, c.sent_to_host);
        }
        if !self.requests.is_empty() {
            let _ = writeln!(
                o,
                "\n  {:<16} {:>10} {:>8} {:>10} {:>10}",
                "op", "count", "errors", "p50 µs", "p99 µs"
            );
        }
        for r in &self.requests {
            let _ = writeln!(
                o,
                "  {:<16} {:>10} {:>8} {:>10} {:>10}",
                r.op, r.count, r.errors, r.p50_us, r.p99_us
            );
        }
        for m in &self.mounts {
            let _ = writeln!(
                o,
                "\nmount {} ({}): {} change(s), replayed {}, skipped {}, failed {} \
                 (missing {}, stale {}, other {}), overtaken {}, overflows {}",
                m.mountpoint,
                m.export,
                m.received,
                m.replayed,
                m.skipped,
                m.failed,
                m.failed_missing,
                m.failed_stale,
                m.failed_other,
                m.overtaken,
                m.overflows
            );
            let _ = writeln!(
                o,
                "  event lag (host watcher to replay done): last {:.1} ms, p50 < {:.1} ms, \
                 p99 < {:.1} ms, max {:.1} ms",
                m.last_lag_seconds * 1e3,
                m.p50_lag_us as f64 / 1e3,
                m.p99_lag_us as f64 / 1e3,
                m.max_lag_seconds * 1e3
            );
            if !m.recent.is_empty() {
                let _ = writeln!(o, "  not replayed (newest first):");
            }
            for r in &m.recent {
                let _ = writeln!(
                    o,
                    "    {:>7.1} s ago  {:<7} {:<10} {}: {}",
                    r.seconds_ago, r.outcome, r.kind, r.path, r.reason
                );
            }
        }
        o
    }
}

/// Where `ferry-agent status` looks by default (packaging/ferry-agent.service puts it there).
pub const DEFAULT_CONTROL: &str = "/run/ferry-agent/control.sock";

/// Binds a Unix socket at `path` (a stale one is replaced) usable by this user only.
fn bind_private(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    Ok(l)
}

/// Answers `status` (JSON) and `metrics` (Prometheus text) on the control socket at `path`
/// (mode 0600), on a thread of its own, for the process's life. No command changes anything.
pub fn serve_control(path: &Path) -> anyhow::Result<()> {
    let l = bind_private(path)?;
    info!("control socket on {} (ferry-agent status)", path.display());
    std::thread::Builder::new()
        .name("ferry-control".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                let mut rd = std::io::BufReader::new((&s).take(256));
                if rd.read_line(&mut line).is_err() {
                    continue;
                }
                let answer = match line.trim() {
                    "status" => {
                        serde_json::to_string(&agent().snapshot())
                            .unwrap_or_else(|e| format!("error: {e}"))
                            + "\n"
                    }
                    "metrics" => agent().snapshot().prometheus(),
                    other => format!("error: unknown command {other:?} (status or metrics)\n"),
                };
                let _ = (&s).write_all(answer.as_bytes());
            }
        })
        .context("cannot start the control thread")?;
    Ok(())
}

/// Serves the Prometheus text over HTTP at `addr`: `unix:PATH` (mode 0600) or
/// `tcp:HOST:PORT`, on a thread of its own.
pub fn serve_metrics(addr: &str) -> anyhow::Result<()> {
    fn answer(mut s: impl std::io::Read + std::io::Write) {
        // Read the request head (bounded); its contents do not matter.
        let mut buf = [0u8; 4096];
        let mut got = 0;
        while got < buf.len() {
            match s.read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let body = agent().snapshot().prometheus();
        let head = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(body.as_bytes());
    }
    let timeouts = Some(Duration::from_secs(2));
    let spawn = |f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name("ferry-metrics".into())
            .spawn(f)
            .map(drop)
            .context("cannot start the metrics thread")
    };
    if let Some(path) = addr.strip_prefix("unix:") {
        let l = bind_private(Path::new(path))?;
        info!("metrics on {addr}");
        spawn(Box::new(move || {
            for s in l.incoming().flatten() {
                let _ = s.set_read_timeout(timeouts);
                let _ = s.set_write_timeout(timeouts);
                answer(s);
            }
        }))
    } else if let Some(a) = addr.strip_prefix("tcp:") {
        let l = std::net::TcpListener::bind(a).with_context(|| format!("cannot bind {addr}"))?;
        if !l.local_addr().is_ok_and(|a| a.ip().is_loopback()) {
            warn!("metrics on {addr} are readable by anyone who can reach it");
        }
        info!("metrics on {addr}");
        spawn(Box::new(move || {
            for s in l.incoming().flatten() {
                let _ = s.set_read_timeout(timeouts);
                let _ = s.set_write_timeout(timeouts);
                answer(s);
            }
        }))
    } else {
        anyhow::bail!("--metrics {addr}: expected unix:PATH or tcp:HOST:PORT")
    }
}

/// Sends `command` (`status` or `metrics`) to the agent's control socket at `path` and
/// returns the whole answer.
pub fn query(path: &Path, command: &str) -> anyhow::Result<String> {
    ferry_common::control::ask(path, command).with_context(|| {
        format!(
            "cannot reach ferry-agent's control socket {} (is it running with --control {}?)",
            path.display(),
            path.display()
        )
    })
}

/// `ferry-agent status`: prints the agent's numbers (`json`: as one JSON object; `metrics`: the
/// Prometheus text), every second until interrupted with `watch`.
pub fn print_status(path: &Path, json: bool, metrics: bool, watch: bool) -> anyhow::Result<()> {
    loop {
        let text = if metrics {
            query(path, "metrics")?
        } else {
            let answer = query(path, "status")?;
            if json {
                answer
            } else {
                let st: AgentStatus = serde_json::from_str(&answer)
                    .with_context(|| format!("unexpected answer: {answer}"))?;
                st.render()
            }
        };
        if watch && !json && !metrics {
            print!("\x1b[H\x1b[2J");
        }
        print!("{text}");
        std::io::stdout().flush()?;
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_hits_and_lag_are_counted() {
        let a = agent();
        let before = a.snapshot();
        let lookups = |s: &AgentStatus| {
            s.cache
                .iter()
                .find(|c| c.kind == "names")
                .map_or(0, |c| c.sent_to_host)
        };
        a.request(Opcode::Lookup, Duration::from_micros(300), true);
        a.hit(Hit::MissingName);
        let after = a.snapshot();
        assert!(lookups(&after) > lookups(&before));
        let missing = |s: &AgentStatus| {
            s.cache
                .iter()
                .find(|c| c.kind == "missing_names")
                .unwrap()
                .answered_here
        };
        assert!(missing(&after) > missing(&before));
        // 300 µs: under 2^9 µs, not under 2^8 (other tests of this process count too).
        let bucket = |s: &AgentStatus| {
            s.requests
                .iter()
                .find(|r| r.op == "Lookup")
                .map_or(0, |r| r.buckets[9])
        };
        assert!(bucket(&after) > bucket(&before));

        // The host said its watcher read the batch 5 ms before sending it.
        a.batch_arrived(4242, 1, 5_000);
        let origin = a.batch_started(4242);
        let lag = Lag::default();
        lag.record(origin);
        assert!(lag.last_us.load(Relaxed) >= 5_000);
        // Nothing queued: the lag counts from now.
        assert!(a.batch_started(4242).elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn recent_outcomes_are_bounded_and_newest_first() {
        let state = Arc::new(ReplayState::default());
        for i in 0..RECENT + 5 {
            state.stats.recent.record(
                "skipped",
                &ferry_protocol::ChangeKind::Created,
                format!("f{i}").as_bytes(),
                "why".into(),
            );
        }
        let m = MountEntry {
            export: "e".into(),
            mountpoint: "/m".into(),
            state: Arc::downgrade(&state),
        }
        .snapshot(&state);
        assert_eq!(m.recent.len(), RECENT);
        assert_eq!(m.recent[0].path, format!("f{}", RECENT + 4));
        let text = AgentStatus {
            uptime_seconds: 1.0,
            requests: vec![],
            cache: vec![],
            events_received: 0,
            invalidations: 0,
            mounts: vec![m],
        }
        .render();
        assert!(text.contains("skipped") && text.contains("why"), "{text}");
    }
}
