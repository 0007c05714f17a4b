//! Logging set-up for every Ferry binary.

/// Logs to stderr through `tracing`; `RUST_LOG` overrides the default filter (`info`, with
/// fuser's own chatter at `error`). Colours only on a terminal. Calling it twice is harmless.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The process exit code for a binary's result: success, or the error (with its chain of
/// causes, `{:#}`) on stderr after the program's name, and failure.
pub fn exit_code<E: std::fmt::Display>(
    program: &str,
    result: Result<(), E>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
