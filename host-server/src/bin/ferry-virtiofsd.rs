//! `ferry-virtiofsd`: Ferry's virtio-fs backend under virtiofsd's command line, for launchers
//! that start virtiofsd (libvirt's `<binary path=...>`, Kata's `virtio_fs_daemon`, Lima,
//! Podman, cloud-hypervisor's recipe). The command line is read by [`ferry_host::virtiofsd`].

use ferry_host::virtiofsd::{self, Invocation};

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os();
    let program = virtiofsd::program_name(args.next().as_ref());
    let args: Result<Vec<String>, _> = args.map(|a| a.into_string()).collect();
    let Ok(args) = args else {
        eprintln!("{program}: arguments must be valid UTF-8");
        return std::process::ExitCode::FAILURE;
    };
    let invocation = match virtiofsd::parse(args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{program}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match invocation {
        Invocation::Help => print!("{}", virtiofsd::HELP),
        Invocation::Version => println!("{program} (ferry) {}", env!("CARGO_PKG_VERSION")),
        Invocation::PrintCapabilities => print!("{}", virtiofsd::CAPABILITIES),
        Invocation::Serve(compat) => {
            if let (Some(level), None) = (&compat.log_level, std::env::var_os("RUST_LOG")) {
                // SAFETY: no other thread exists yet, so nothing reads the environment
                // while it changes.
                unsafe { std::env::set_var("RUST_LOG", format!("{level},fuser=error")) };
            }
            ferry_common::logging::init();
            return ferry_common::logging::exit_code(&program, virtiofsd::run(*compat));
        }
    }
    std::process::ExitCode::SUCCESS
}
