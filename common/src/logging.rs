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
