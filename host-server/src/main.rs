//! `ferry-host`: the command line over [`ferry_host::run`].

use std::path::PathBuf;

use clap::Parser;
use ferry_host::{ExportSpec, ListenAddr, ServerConfig};

/// Export host directories to Ferry guest agents.
///
/// Each --export is offered to every client; each --listen accepts clients. Guests mount an
/// export by its NAME with `ferry-agent --mount NAME=MOUNTPOINT`.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Directory to export, as NAME=PATH, or NAME=PATH:ro to refuse every change with EROFS.
    /// Repeat for several exports.
    #[arg(long = "export", value_name = "NAME=PATH[:ro]", required = true)]
    exports: Vec<ExportSpec>,

    /// Where to accept guest agents: unix:PATH, tcp:PORT (loopback), tcp:HOST:PORT,
    /// vsock:PORT (AF_VSOCK, for vhost-vsock guests such as QEMU/KVM), or
    /// hybrid-vsock:PATH:PORT (Firecracker, cloud-hypervisor, vhost-device-vsock: guests
    /// connecting to vsock port PORT arrive on the Unix socket PATH_PORT, where PATH is the
    /// VMM's vsock socket), or vhost-user-fs:SOCKET:NAME (a virtio-fs device backend serving
    /// export NAME to a VMM such as QEMU; the guest mounts it with `mount -t virtiofs NAME`).
    /// TCP always requires a token. Repeat for several listeners.
    #[arg(long = "listen", value_name = "ADDR", required = true)]
    listen: Vec<ListenAddr>,

    /// File holding the shared token clients must present (trailing newline ignored). When a
    /// token is set, every client must present it, whatever the listener.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// The shared token itself; prefer --token-file, which keeps it out of `ps`.
    #[arg(
        long,
        env = "FERRY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
}

fn main() -> std::process::ExitCode {
    ferry_host::init_logging();
    let args = Args::parse();
    match real_main(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-host: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main(args: Args) -> anyhow::Result<()> {
    let token = ferry_host::load_token(args.token_file.as_deref(), args.token.as_deref())?;
    let config = ServerConfig {
        exports: args.exports,
        listen: args.listen,
        token,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry-host")
        .build()?;
    rt.block_on(ferry_host::run(config, ferry_host::shutdown_signal()))
}
