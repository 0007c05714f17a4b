//! `ferry`: both ends on one machine. `ferry share SRC MOUNTPOINT` runs the host server and the
//! guest agent in one process, joined by a socket pair, exactly as they would run across a VM
//! boundary (same protocol, same export core, same FUSE adapter).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Share a host directory with a Linux VM, or try it out on one machine.
#[derive(Parser, Debug)]
#[command(version = ferry_common::version(), about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount SRC at MOUNTPOINT through Ferry, in the foreground, until Ctrl-C or SIGTERM.
    ///
    /// Both halves run in this process and talk the real protocol over a socket pair: what
    /// works here works between a host and a VM.
    Share(ShareArgs),
    /// Compare filesystem performance: the same workloads (small files, a tree walk,
    /// sequential and 4 KiB random I/O with fsync variants, git status and fio where
    /// installed, host change to inotify event latency) on a baseline directory and one or
    /// more others, in one run, rounds in a rotated order. Prints medians with min-max and
    /// ratios to the baseline; --json, --csv and --svg write the numbers and a chart.
    ///
    /// `ferry bench [--targets native,ferry,bindfs] DIR` sets up each target in DIR itself;
    /// `ferry bench --share SRC` compares a directory in SRC with a `ferry share` mount it
    /// starts itself; `ferry bench --baseline DIR --target MNT...` compares directories you
    /// set up (a mount of any kind). Each runs in a new directory beneath the one given,
    /// removed afterwards. Root makes "cold" rows cold (it drops the kernel's caches).
    Bench(ferry::bench::command::BenchArgs),
    /// Remove every kept owner (the user.ferry.owner xattr) from the files and directories
    /// under PATH, without following symlinks or leaving PATH's filesystem.
    StripOwners {
        /// The tree to clean.
        path: PathBuf,
    },
    /// Show a running ferry-host's numbers, read from its control socket: per connected
    /// guest and export, requests by operation (count, p50 and p99 latency), bytes, open
    /// handles, nodes, descriptors, lock waiters, change events sent and overflowed, and the
    /// event queue with its lag; with --agent, a running ferry-agent's numbers instead (as
    /// `ferry-agent status`).
    Status {
        /// The server's control socket (ferry-host --control unix:PATH).
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
        control: PathBuf,
        /// Read a ferry-agent's control socket (ferry-agent --control PATH) instead.
        #[arg(long, value_name = "PATH", conflicts_with = "control")]
        agent: Option<PathBuf>,
        /// Print the numbers as one JSON object.
        #[arg(long)]
        json: bool,
        /// Refresh every second, like top, until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Ask a running ferry-host to do something over its control socket.
    Ctl {
        /// The server's control socket (ferry-host --control unix:PATH).
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
        control: PathBuf,
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Write the man pages of ferry, ferry-host and ferry-agent (one per command and
    /// subcommand, section 1) into DIR, e.g. /usr/local/share/man/man1.
    Man {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
    /// Print a shell completion script for PROGRAM to stdout, e.g.
    /// `ferry completions bash ferry-host > /etc/bash_completion.d/ferry-host`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
        /// The program to complete.
        #[arg(value_enum, default_value = "ferry")]
        program: Program,
    },
}

/// Where packaging/ferry-host.service puts the control socket.
const DEFAULT_CONTROL: &str = "/run/ferry/control.sock";

/// What `ferry ctl` asks for.
#[derive(Subcommand, Debug)]
enum CtlAction {
    /// Read the configuration file again and apply it, as SIGHUP does; prints the changes,
    /// or why the file was refused (then the exit status is 1).
    Reload,
}

/// One command over the control socket; the whole answer.
fn control(path: &std::path::Path, command: &str) -> anyhow::Result<String> {
    ferry_common::control::ask(path, command).with_context(|| {
        format!(
            "cannot reach ferry-host's control socket {} (is it running with --control unix:{}?)",
            path.display(),
            path.display()
        )
    })
}

fn status(path: &std::path::Path, json: bool, watch: bool) -> anyhow::Result<()> {
    loop {
        let answer = control(path, "status")?;
        if json {
            print!("{answer}");
        } else {
            let st: ferry_host::stats::Status = serde_json::from_str(&answer)
                .with_context(|| format!("unexpected answer: {answer}"))?;
            if watch {
                print!("\x1b[H\x1b[2J");
            }
            print!("{}", render_status(&st));
            use std::io::Write as _;
            std::io::stdout().flush()?;
        }
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn render_status(st: &ferry_host::stats::Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "ferry-host up {:.0} s, {} guest(s)",
        st.uptime_seconds,
        st.guests.len()
    );
    for e in &st.exports {
        let _ = writeln!(
            o,
            "export {}{}: host events seen {}, coalesced {}, suppressed (echoes) {}",
            e.name,
            if e.read_only { " (read-only)" } else { "" },
            e.events_seen,
            e.events_coalesced,
            e.events_suppressed
        );
    }
    for g in &st.guests {
        let _ = writeln!(
            o,
            "\nguest {} (connected {:.0} s, {} B of change events queued)",
            g.peer, g.uptime_seconds, g.events_queued
        );
        let _ = writeln!(
            o,
            "  event lag (host watcher to notice written): now {:.1} ms, last {:.1} ms, max {:.1} ms",
            g.event_lag_seconds * 1e3,
            g.last_event_lag_seconds * 1e3,
            g.max_event_lag_seconds * 1e3
        );
        for e in &g.exports {
            let _ = writeln!(
                o,
                "  export {}: read {} B, written {} B, {} handle(s), {} node(s), {} node fd(s), \
                 {} lock owner(s), {} lock waiter(s), events {} sent, {} overflowed",
                e.name,
                e.bytes_read,
                e.bytes_written,
                e.open_handles,
                e.nodes,
                e.node_fds,
                e.lock_owners,
                e.lock_waiters,
                e.events_sent,
                e.events_overflowed
            );
            if !e.requests.is_empty() {
                let _ = writeln!(
                    o,
                    "    {:<16} {:>10} {:>10} {:>10}",
                    "op", "count", "p50 µs", "p99 µs"
                );
            }
            for r in &e.requests {
                let _ = writeln!(
                    o,
                    "    {:<16} {:>10} {:>10} {:>10}",
                    r.op, r.count, r.p50_us, r.p99_us
                );
            }
        }
    }
    o
}

/// The three binaries, for `ferry man` and `ferry completions`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Program {
    Ferry,
    FerryHost,
    FerryAgent,
}

impl Program {
    /// The program's clap definition: the one its binary parses with.
    fn command(self) -> clap::Command {
        use clap::CommandFactory;
        match self {
            Program::Ferry => Cli::command(),
            Program::FerryHost => ferry_host::cli::Args::command(),
            Program::FerryAgent => ferry_agent::cli::Args::command(),
        }
    }
}

/// The arguments of `ferry share`.
#[derive(clap::Args, Debug)]
struct ShareArgs {
    /// Host directory to share.
    src: PathBuf,
    /// Empty directory to mount it on.
    mountpoint: PathBuf,
    /// Refuse every change with EROFS.
    #[arg(long)]
    read_only: bool,
    /// How the kernel caches: `cached` (kept coherent by host change events) or
    /// `consistent` (nothing cached). Both raise inotify events for host changes.
    #[arg(long, value_name = "MODE", default_value = "cached")]
    cache: ferry_agent::CacheMode,
    /// In `cached` mode, how long names and attributes may be kept without a host event,
    /// in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    attr_timeout_ms: u64,
    /// How owners translate. `passthrough`: ids unchanged, files are created as the
    /// calling user (needs root). `squash:UID:GID`: every file shows as owned by UID:GID
    /// and everything created through the mount belongs to this process's user (`squash`
    /// alone: this process's own ids). `map:[u:|g:|b:]GUEST:HOST:COUNT[,...]`: id ranges
    /// as in an idmapped mount; ids outside every range show as 65534 and cannot be set
    /// (needs root). Default: passthrough as root (the mount looks like SRC, as a bind
    /// mount would), else squash to your own ids.
    #[arg(long = "ids", value_name = "MODE", value_parser = parse_ids)]
    ids: Option<ferry_host::IdMode>,
    /// Keep owners set through the mount (chown, chgrp, and a chmod the host refuses) in
    /// the user.ferry.owner xattr of each file. Default: on in squash mode, off otherwise.
    #[arg(long, value_name = "on|off", value_parser = ferry_host::ids::parse_on_off)]
    persist_owners: Option<bool>,
    /// Who checks permissions: `guest` (the mount's kernel side, against the owners and
    /// modes shown, as on a local disk) or `host` (every user may do what this process's
    /// user may do). Default: host in squash mode, guest otherwise.
    #[arg(long, value_name = "guest|host", value_parser = ferry_host::ids::parse_permissions)]
    permissions: Option<ferry_host::Permissions>,
    /// Let the mount create character and block device nodes in SRC (as root, as mknod
    /// would). Off by default: a device node in SRC would open a device of this machine
    /// for anyone who can reach it there.
    #[arg(long)]
    devices: bool,
    /// POSIX ACLs through the mount: `on` (setfacl and getfacl work, the mount's kernel
    /// honours them where it checks permissions; entries' ids translate like owners) or `off`
    /// (as a filesystem mounted noacl). Squash mode never has them.
    #[arg(long, value_name = "on|off", value_parser = ferry_host::ids::parse_on_off, default_value = "on", action = clap::ArgAction::Set)]
    acl: bool,
    /// Let the mount set set-user-ID and set-group-ID bits on files and write
    /// security.capability. Off by default: such a file would give its powers to whoever runs
    /// it on this machine; chmod adding the bits answers EPERM and new files are made without
    /// them (set-group-ID directories are always allowed).
    #[arg(long)]
    setid: bool,
    /// Most O_PATH descriptors of looked-up files and directories the server keeps open;
    /// others are reopened when needed, by kernel file handle as root, by name beneath their
    /// parent otherwise.
    #[arg(long, env = "FERRY_MAX_NODE_FDS", value_name = "N", default_value_t = ferry_host::DEFAULT_NODE_FDS)]
    max_node_fds: usize,

    /// Let other users see the mount (FUSE's allow_other): root's services and container
    /// runtimes need it. On by default for root; an ordinary user may ask for it where
    /// /etc/fuse.conf has the line user_allow_other.
    #[arg(long)]
    allow_other: bool,

    /// Mount over a directory that holds files (they are hidden while shared); by default the
    /// mount point must be empty (it is created when only its last component is missing).
    #[arg(long)]
    nonempty: bool,
}

fn parse_ids(s: &str) -> Result<ferry_host::IdMode, String> {
    s.parse::<ferry_host::IdMode>()
        .map_err(|e| format!("{e} (expected {})", ferry_host::ids::IDS_SYNTAX))
}

fn main() -> std::process::ExitCode {
    ferry_common::logging::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Share(args) => share(args),
        Command::Bench(args) => std::env::current_exe()
            .context("cannot find the ferry binary to run `ferry share` with")
            .and_then(|ferry| ferry::bench::command::run(args, &ferry)),
        Command::StripOwners { path } => ferry_host::strip::run_strip_owners(&path),
        Command::Status {
            agent: Some(agent),
            json,
            watch,
            ..
        } => ferry_agent::stats::print_status(&agent, json, false, watch),
        Command::Status {
            control,
            json,
            watch,
            agent: None,
        } => status(&control, json, watch),
        Command::Ctl {
            control: path,
            action: CtlAction::Reload,
        } => control(&path, "reload").and_then(|answer| {
            print!("{answer}");
            anyhow::ensure!(answer.starts_with("ok"), "the reload was refused");
            Ok(())
        }),
        Command::Man { dir } => write_man_pages(&dir),
        Command::Completions { shell, program } => {
            let mut cmd = program.command();
            let name = cmd.get_name().to_string();
            clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
            Ok(())
        }
    };
    ferry_common::logging::exit_code("ferry", result)
}

fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for p in [Program::Ferry, Program::FerryHost, Program::FerryAgent] {
        clap_mangen::generate_to(p.command(), dir)
            .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    }
    Ok(())
}

fn share(args: ShareArgs) -> anyhow::Result<()> {
    let ShareArgs {
        src,
        mountpoint,
        read_only,
        cache,
        attr_timeout_ms,
        ids,
        persist_owners,
        permissions,
        devices,
        acl,
        setid,
        max_node_fds,
        allow_other,
        nonempty,
    } = args;
    let ttl = Duration::from_millis(attr_timeout_ms);
    let ids = ferry_host::IdOptions {
        mode: ids,
        persist_owners,
        permissions,
    };
    // Signals are taken before any thread starts so that every thread inherits the mask.
    let shutdown = ferry_agent::shutdown_on_signals()?;
    let name = "share".to_string();
    let exports = ferry_host::open_exports(&[ferry_host::ExportSpec {
        name: name.clone(),
        path: src.clone(),
        read_only,
        ids,
        devices,
        acl,
        setid,
        allow: None,
    }])?;
    exports[0].set_max_node_fds(max_node_fds);
    tracing::info!(
        limit = ferry_host::raise_fd_limit(),
        node_fds = max_node_fds,
        "open file limit; node descriptors cached"
    );
    let policy = exports[0].ids().to_string();
    // Both ends are this process, over a socket pair nobody else can reach: no token.
    let state = Arc::new(ferry_host::ServerState::new(
        exports,
        ferry_host::Auth::none(),
        ferry_host::Limits::default(),
    ));
    let (host_end, guest_end) =
        std::os::unix::net::UnixStream::pair().context("cannot create a socket pair")?;

    // The host half serves its end of the pair on threads of its own, as it would serve a
    // socket accepted from a VM.
    let server = std::thread::Builder::new()
        .name("ferry-host".into())
        .spawn(move || {
            ferry_host::serve_connection(host_end, &state, &ferry_host::Peer::named("ferry share"))
        })?;

    tracing::info!(
        "sharing {} at {}{} ({}); Ctrl-C to stop",
        src.display(),
        mountpoint.display(),
        if read_only { " (read-only)" } else { "" },
        policy
    );
    let mountpoint_shown = mountpoint.clone();
    let config = ferry_agent::AgentConfig {
        connect: ferry_agent::ConnectAddr::Unix(PathBuf::from("socketpair")),
        token: None,
        mounts: vec![(name, mountpoint)],
        ttl,
        cache,
        connect_timeout: Duration::ZERO,
        permissions: None,
        allow_other: Some(allow_other || ferry_agent::preflight::allow_other_permitted()),
        nonempty,
        // One process runs both ends: nothing to reconnect to.
        reconnect_timeout: Duration::ZERO,
    };
    if !config.allow_other.unwrap_or(true) {
        tracing::info!(
            "only you can use {}: other users, root's services and container runtimes cannot \
             (to let them, add `user_allow_other` to /etc/fuse.conf and pass --allow-other)",
            mountpoint_shown.display()
        );
    }
    let result = ferry_agent::serve_stream(guest_end, &config, shutdown);
    // The agent has unmounted and closed its end; the server connection ends with it.
    let _ = server.join();
    result
}
