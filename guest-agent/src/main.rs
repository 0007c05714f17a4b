//! `ferry-agent`: the command line over [`ferry_agent::run`].

use clap::Parser;
use std::time::Duration;

use ferry_agent::AgentConfig;
use ferry_agent::cli::{Args, Command};

fn main() -> std::process::ExitCode {
    ferry_common::logging::init();
    let args = Args::parse();
    ferry_common::logging::exit_code("ferry-agent", real_main(args))
}

fn real_main(args: Args) -> anyhow::Result<()> {
    if let Some(Command::Status {
        control,
        json,
        metrics,
        watch,
    }) = args.command
    {
        return ferry_agent::stats::print_status(&control, json, metrics, watch);
    }
    let Some(connect) = args.connect else {
        anyhow::bail!("--connect ADDR is required");
    };
    let shutdown = ferry_agent::shutdown_on_signals()?;
    if let Some(path) = &args.control {
        ferry_agent::stats::serve_control(path)?;
    }
    if let Some(addr) = &args.metrics {
        ferry_agent::stats::serve_metrics(addr)?;
    }
    let token = ferry_common::token::load(args.token_file.as_deref(), args.token.as_deref())?;
    if args.events_only && args.targets.is_empty() {
        anyhow::bail!(
            "--events-only needs NAME=MOUNTPOINT arguments: the virtio-fs mounts to replay host \
             changes on (e.g. ferry-agent --events-only --connect vsock:1024 ex=/mnt/ex)"
        );
    }
    let config = AgentConfig {
        connect,
        token,
        mounts: if args.events_only {
            args.targets
        } else {
            args.mounts
        },
        ttl: Duration::from_millis(args.attr_timeout_ms),
        cache: args.cache,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        permissions: args.permissions,
        allow_other: args.allow_other.then_some(true),
        nonempty: args.nonempty,
        reconnect_timeout: Duration::from_secs(args.reconnect_timeout),
    };
    if args.events_only {
        ferry_agent::run_events_only(&config, shutdown)
    } else {
        ferry_agent::run(config, shutdown)
    }
}
