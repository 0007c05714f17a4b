//! The `ferry-agent` command line (clap), in the library so that `ferry man` and
//! `ferry completions` generate from the same definitions the binary parses with.

use std::path::PathBuf;

use crate::ConnectAddr;
use clap::Parser;

/// Mount Ferry exports inside the VM with FUSE.
///
/// Connects to a ferry-host, mounts each requested export, and serves the mounts until SIGINT or
/// SIGTERM (or until the server goes away), then unmounts them all (lazily, so open files do
/// not block the exit).
#[derive(Parser, Debug)]
#[command(version = ferry_common::version(), about, long_about = None,
          subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Instead of mounting: show a running agent's numbers.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The ferry-host to connect to: unix:PATH, tcp:HOST:PORT, vsock:PORT (the host, CID 2)
    /// or vsock:CID:PORT. Inside a VM use vsock:PORT whatever the VMM: with QEMU/KVM
    /// (vhost-vsock) it reaches ferry-host --listen vsock:PORT; with Firecracker,
    /// cloud-hypervisor or vhost-device-vsock the VMM delivers it to the host's Unix socket
    /// PATH_PORT (ferry-host --listen hybrid-vsock:PATH:PORT). hybrid-vsock:PATH:PORT, run on
    /// the host, reaches a server listening on vsock port PORT inside the VM whose VMM socket
    /// is PATH (the CONNECT handshake).
    #[arg(long, value_name = "ADDR", required = true)]
    pub connect: Option<ConnectAddr>,

    /// Export to mount, as NAME=MOUNTPOINT (NAME as given to ferry-host --export). Repeat for
    /// several mounts.
    #[arg(long = "mount", value_name = "NAME=MOUNTPOINT", required_unless_present = "events_only",
          conflicts_with = "events_only", value_parser = parse_mount)]
    pub mounts: Vec<(String, PathBuf)>,

    /// Mount nothing: for each NAME=MOUNTPOINT given after the options, where MOUNTPOINT is a
    /// virtio-fs mount of export NAME served by the same ferry-host, replay the export's host
    /// changes on it, so that programs in this VM get inotify events for host-side changes and
    /// the kernel's caches of the mount are refreshed (virtio-fs itself has no notification
    /// path).
    #[arg(long)]
    pub events_only: bool,

    /// With --events-only: the virtio-fs mounts to replay host changes on.
    #[arg(value_name = "NAME=MOUNTPOINT", requires = "events_only", value_parser = parse_mount)]
    pub targets: Vec<(String, PathBuf)>,

    /// File holding the shared token the server requires (trailing whitespace ignored).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// The shared token itself; prefer --token-file, which keeps it out of `ps`.
    #[arg(
        long,
        env = "FERRY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// How the guest kernel caches: `cached` (names, attributes and pages kept, made coherent
    /// by host change events) or `consistent` (nothing cached; every access asks the host).
    /// Both raise inotify events in the guest for host changes.
    #[arg(long, value_name = "MODE", default_value = "cached")]
    pub cache: crate::CacheMode,

    /// In `cached` mode, how long the guest kernel may keep names and attributes without a
    /// host event, in milliseconds (1000 at most when the server sends no events).
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub attr_timeout_ms: u64,

    /// While the server is not reachable yet (the VM booted first), keep retrying for this
    /// many seconds, with a backoff of up to 5 s between attempts. 0 tries once.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub connect_timeout: u64,

    /// When the connection to ferry-host drops (a restart or an upgrade), keep the mounts,
    /// hold requests for up to this many seconds while reconnecting, and resume: open files,
    /// locks and change events carry on. Past it, requests fail with EIO until the server is
    /// back. 0 turns reconnection off: the agent unmounts and exits.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub reconnect_timeout: u64,

    /// Who checks permissions on the mounts: `guest` (this kernel checks every access against
    /// the owners and modes shown, as on a local disk: mount option default_permissions) or
    /// `host` (anything the server's user may do, every user here may do). By default each
    /// export follows what ferry-host chose for it (guest, except in squash mode).
    #[arg(long, value_name = "guest|host", value_parser = parse_permissions)]
    pub permissions: Option<ferry_protocol::Permissions>,

    /// Let users other than the one running the agent use the mounts (FUSE's allow_other):
    /// root's services and container runtimes need it. On by default where allowed (as root,
    /// or where /etc/fuse.conf has user_allow_other); asking for it where not allowed is an
    /// error.
    #[arg(long)]
    pub allow_other: bool,

    /// Mount over directories that hold files (hidden while mounted); by default a mount
    /// point must be empty.
    #[arg(long)]
    pub nonempty: bool,

    /// Answer `ferry-agent status` on this Unix socket (created with mode 0600; it only
    /// reports numbers), e.g. /run/ferry-agent/control.sock.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Serve the agent's numbers as Prometheus text over HTTP: unix:PATH (mode 0600) or
    /// tcp:HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

/// What `ferry-agent` can do besides mounting.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Show a running agent's numbers, read from its control socket: requests sent to the
    /// host by operation (count, errors, p50 and p99 latency), what the agent answered itself
    /// per cache kind, host changes received, and per mount the replays done, skipped and
    /// failed, the event lag (host watcher to replay done) and the last changes not replayed,
    /// with why.
    Status {
        /// The agent's control socket (ferry-agent --control PATH).
        #[arg(long, value_name = "PATH", default_value = crate::stats::DEFAULT_CONTROL)]
        control: PathBuf,
        /// Print the numbers as one JSON object.
        #[arg(long, conflicts_with = "metrics")]
        json: bool,
        /// Print the Prometheus text.
        #[arg(long)]
        metrics: bool,
        /// Refresh every second, like top, until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
}

pub fn parse_permissions(s: &str) -> Result<ferry_protocol::Permissions, String> {
    match s {
        "guest" => Ok(ferry_protocol::Permissions::Guest),
        "host" => Ok(ferry_protocol::Permissions::Host),
        _ => Err(format!("{s:?}: expected guest or host")),
    }
}

pub fn parse_mount(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid --mount {s:?}: expected NAME=MOUNTPOINT"))?;
    if name.is_empty() || path.is_empty() {
        return Err(format!("invalid --mount {s:?}: expected NAME=MOUNTPOINT"));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}
