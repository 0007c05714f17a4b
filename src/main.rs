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
#[command(version, about, long_about = None)]
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
    Share {
        /// Host directory to share.
        src: PathBuf,
        /// Empty directory to mount it on.
        mountpoint: PathBuf,
        /// Refuse every change with EROFS.
        #[arg(long)]
        read_only: bool,
        /// How long the kernel may cache names and attributes, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        attr_timeout_ms: u64,
    },
}

fn main() -> std::process::ExitCode {
    ferry_host::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Share {
            src,
            mountpoint,
            read_only,
            attr_timeout_ms,
        } => share(
            src,
            mountpoint,
            read_only,
            Duration::from_millis(attr_timeout_ms),
        ),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn share(src: PathBuf, mountpoint: PathBuf, read_only: bool, ttl: Duration) -> anyhow::Result<()> {
    // Signals are taken before any thread starts so that every thread inherits the mask.
    let shutdown = ferry_agent::shutdown_on_signals()?;
    let name = "share".to_string();
    let exports = ferry_host::open_exports(&[ferry_host::ExportSpec {
        name: name.clone(),
        path: src.clone(),
        read_only,
    }])?;
    ferry_host::raise_fd_limit();
    let state = Arc::new(ferry_host::ServerState {
        exports,
        token: None,
    });
    let (host_end, guest_end) =
        std::os::unix::net::UnixStream::pair().context("cannot create a socket pair")?;

    // The host half serves its end of the pair on threads of its own, as it would serve a
    // socket accepted from a VM.
    let server = std::thread::Builder::new()
        .name("ferry-host".into())
        .spawn(move || ferry_host::serve_connection(host_end, &state, "ferry share"))?;

    tracing::info!(
        "sharing {} at {}{}; Ctrl-C to stop",
        src.display(),
        mountpoint.display(),
        if read_only { " (read-only)" } else { "" }
    );
    let config = ferry_agent::AgentConfig {
        connect: ferry_agent::ConnectAddr::Unix(PathBuf::from("socketpair")),
        token: None,
        mounts: vec![(name, mountpoint)],
        ttl,
        connect_timeout: Duration::ZERO,
    };
    let result = ferry_agent::serve_stream(guest_end, &config, shutdown);
    // The agent has unmounted and closed its end; the server connection ends with it.
    let _ = server.join();
    result
}
