//! `ferry-host`: the command line over [`ferry_host::run`].

use clap::Parser;
use ferry_host::IdOptions;
use ferry_host::cli::{Args, Command};

fn main() -> std::process::ExitCode {
    ferry_common::logging::init();
    let args = Args::parse();
    ferry_common::logging::exit_code("ferry-host", real_main(args))
}

fn real_main(args: Args) -> anyhow::Result<()> {
    if let Some(Command::StripOwners { path }) = args.command {
        return ferry_host::strip::run_strip_owners(&path);
    }
    let overrides = ferry_host::config_file::Overrides {
        exports: args.exports,
        listen: args.listen,
        token_file: args.token_file,
        token: args.token,
        client_tokens: args.client_tokens,
        no_auth: args.no_auth,
        socket_mode: args.socket_mode,
        limits: args.limits.overrides(),
        max_node_fds: args.max_node_fds,
        sandbox: args.sandbox,
        seccomp: args.seccomp,
        ids: IdOptions {
            mode: args.ids.mode,
            persist_owners: args.ids.persist_owners,
            permissions: args.ids.permissions,
        },
    };
    let (config, control, metrics) = overrides.load_all(args.config.as_deref())?;
    if args.check_config {
        ferry_host::check_config(&config)?;
        println!(
            "{}: ok: {} export(s) ({}), {} listener(s)",
            args.config
                .as_deref()
                .map_or("command line".into(), |p| p.display().to_string()),
            config.exports.len(),
            config
                .exports
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            config.listen.len()
        );
        return Ok(());
    }
    let ops = ferry_host::Ops {
        control: args.control.or(control),
        metrics: args.metrics.or(metrics),
    };
    // Before the runtime starts its threads: they inherit the sandbox. A reload reads the
    // configuration file and its token files again.
    let mut extra = ferry_host::sandbox::Extra::default();
    if let Some(path) = &args.config {
        extra.read.push(path.clone());
        extra
            .read
            .extend(ferry_host::config_file::FileConfig::load(path)?.token_files());
    }
    extra.read.extend(overrides.token_file.iter().cloned());
    extra
        .read
        .extend(overrides.client_tokens.iter().map(|(_, p)| p.clone()));
    extra.sockets.extend(ops.control.iter().cloned());
    match &ops.metrics {
        Some(ferry_host::ListenAddr::Unix(p)) => extra.sockets.push(p.clone()),
        Some(ferry_host::ListenAddr::Tcp(a)) => extra.ports.push(a.port()),
        _ => {}
    }
    ferry_host::sandbox::enter(&config, &extra)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry-host")
        .build()?;
    // SIGHUP reads the file again, with the same flags over it.
    let reloader: Option<ferry_host::Reloader> = args.config.map(|path| {
        Box::new(move || {
            ferry_host::sandbox::explain(overrides.load(Some(&path)).map_err(Into::into))
        }) as ferry_host::Reloader
    });
    rt.block_on(ferry_host::run_reloading(
        config,
        reloader,
        ops,
        ferry_host::shutdown_signal(),
    ))
}
