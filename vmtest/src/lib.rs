//! Boots throwaway QEMU guests for Ferry's VM test (`tests/vm.rs`) and VM benchmark
//! (`benches/vmbench.rs`): the same boot code for both.
//!
//! - [`tools`]: finding QEMU, a static busybox, vhost-device-vsock and a Debian kernel (what
//!   `.ci/vm-tools` installs); SKIPPED or, under CI, a failure when one is missing.
//! - [`build`]: the static `ferry-agent` and `ferry-host` the guest runs.
//! - [`initramfs`]: the guest root (busybox, modules in dependency order, `/init`, binaries,
//!   scripts), written with [`cpio`].
//! - [`machine`]: one VM: QEMU under TCG, vhost-device-vsock, 9p shares, the console, deadlines.
//! - [`process`]: child processes with logs, stopped by pid when dropped.
//!
//! Guest side: `guest/init` is PID 1; `guest/lib.sh` is `/lib/ferry.sh`, the helpers guest
//! scripts source. The guest talks to the host through console lines starting `FERRY-`.

pub mod build;
pub mod cpio;
pub mod initramfs;
pub mod machine;
pub mod process;
pub mod tools;

pub use build::{StaticBins, inotify_helper, static_bins};
pub use initramfs::Initramfs;
pub use machine::{GUEST_CID, TOKEN, Vm, VmConfig, run_dir, serve_virtiofs, uds_in};
pub use process::{Proc, wait_for_path};
pub use tools::Tools;
