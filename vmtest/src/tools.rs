//! Finding what a VM run needs on the host: QEMU, a static busybox, vhost-device-vsock and a
//! Debian guest kernel. `.ci/vm-tools` installs them all; each can also be named by an
//! environment variable.
//!
//! | what | variable | default |
//! |---|---|---|
//! | QEMU | `FERRY_VM_QEMU` | `qemu-system-x86_64` on PATH |
//! | busybox (static) | `FERRY_VM_BUSYBOX` | `busybox` on PATH (Debian's busybox-static) |
//! | vhost-device-vsock | `FERRY_VM_VHOST_DEVICE_VSOCK` | the cache's `vhost-device-vsock-<ver>/bin/`, then PATH |
//! | kernel | `FERRY_VM_KERNEL_DIR` (an unpacked linux-image package) | the one `.ci/vm-tools` unpacked under the cache's `kernel/` |
//! | virtiofsd (benchmark only, optional) | `FERRY_VM_VIRTIOFSD` | the cache's `virtiofsd-<ver>/bin/` (`.ci/bench-tools`), then PATH |
//! | the cache | `FERRY_VM_CACHE` | `$XDG_CACHE_HOME/ferry-vm`, else `~/.cache/ferry-vm` |

use std::path::{Path, PathBuf};

/// The vhost-device-vsock release `.ci/vm-tools` installs and the VM test is written against.
pub const VHOST_DEVICE_VSOCK_VERSION: &str = "0.3.0";

/// The virtiofsd release `.ci/bench-tools` installs for the benchmark.
pub const VIRTIOFSD_VERSION: &str = "1.13.2";

/// virtiofsd, the reference virtio-fs backend, for the benchmark's baseline (optional).
pub fn virtiofsd() -> Option<PathBuf> {
    let cached = cache_dir()
        .join(format!("virtiofsd-{VIRTIOFSD_VERSION}"))
        .join("bin/virtiofsd");
    tool("FERRY_VM_VIRTIOFSD", &[cached], "virtiofsd")
}

/// Where downloaded kernels and built tools are kept between runs.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRY_VM_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Path::new(&d).join("ferry-vm");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/ferry-vm")
}

/// An unpacked Debian linux-image package.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `boot/vmlinuz-<release>`.
    pub image: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-amd64`.
    pub release: String,
}

impl Kernel {
    /// Reads the package tree rooted at `root`.
    pub fn at(root: &Path) -> Result<Kernel, String> {
        let modroot = root.join("lib/modules");
        let release = std::fs::read_dir(&modroot)
            .map_err(|e| format!("{}: {e}", modroot.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .max()
            .ok_or_else(|| format!("no kernel release under {}", modroot.display()))?;
        let image = root.join(format!("boot/vmlinuz-{release}"));
        if !image.is_file() {
            return Err(format!("{} is missing", image.display()));
        }
        Ok(Kernel {
            image,
            modules: modroot.join(&release),
            release,
        })
    }
}

/// Everything a VM run needs.
#[derive(Clone, Debug)]
pub struct Tools {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// A statically linked busybox (it becomes the guest's whole userland).
    pub busybox: PathBuf,
    /// The vhost-user vsock backend.
    pub vhost_device_vsock: PathBuf,
    /// The guest kernel and its modules.
    pub kernel: Kernel,
}

impl Tools {
    /// Finds every tool, or lists what is missing and how to get it.
    pub fn find() -> Result<Tools, Vec<String>> {
        let mut missing = Vec::new();
        let cache = cache_dir();
        let qemu = tool("FERRY_VM_QEMU", &[], "qemu-system-x86_64")
            .ok_or_else(|| "qemu-system-x86_64 (apt-get install qemu-system-x86)".to_string());
        let busybox = tool("FERRY_VM_BUSYBOX", &[], "busybox")
            .ok_or_else(|| "busybox (apt-get install busybox-static)".to_string())
            .and_then(|b| match is_static(&b) {
                Ok(true) => Ok(b),
                Ok(false) => Err(format!(
                    "{} is dynamically linked; the guest needs a static one \
                     (apt-get install busybox-static)",
                    b.display()
                )),
                Err(e) => Err(format!("{}: {e}", b.display())),
            });
        let vdv_cached = cache
            .join(format!("vhost-device-vsock-{VHOST_DEVICE_VSOCK_VERSION}"))
            .join("bin/vhost-device-vsock");
        let vhost_device_vsock = tool(
            "FERRY_VM_VHOST_DEVICE_VSOCK",
            &[vdv_cached],
            "vhost-device-vsock",
        )
        .ok_or_else(|| {
            format!(
                "vhost-device-vsock (cargo install --locked --root {}/vhost-device-vsock-{v} \
                         vhost-device-vsock --version ={v})",
                cache.display(),
                v = VHOST_DEVICE_VSOCK_VERSION
            )
        });
        let kernel = find_kernel(&cache);
        match (qemu, busybox, vhost_device_vsock, kernel) {
            (Ok(qemu), Ok(busybox), Ok(vhost_device_vsock), Ok(kernel)) => Ok(Tools {
                qemu,
                busybox,
                vhost_device_vsock,
                kernel,
            }),
            (q, b, v, k) => {
                for e in [q.err(), b.err(), v.err(), k.err()].into_iter().flatten() {
                    missing.push(e);
                }
                Err(missing)
            }
        }
    }

    /// [`Tools::find`] for a test or benchmark named `what`. When something is missing it says
    /// SKIPPED loudly and returns `None`, except under CI (`CI=true`), where a VM run that
    /// cannot happen is a failure: CI installs everything with `.ci/vm-tools`.
    pub fn for_run(what: &str) -> Option<Tools> {
        match Tools::find() {
            Ok(t) => Some(t),
            Err(missing) => {
                let list = missing.join("\n  - ");
                let msg = format!(
                    "{what} needs:\n  - {list}\nInstall them all with `bash .ci/vm-tools`."
                );
                if in_ci() {
                    panic!("CI=true and the VM cannot run: {msg}");
                }
                eprintln!("\n*** SKIPPED {msg} ***\n");
                None
            }
        }
    }
}

/// Whether this is a CI run (`CI=true`), where a VM test that cannot run is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `$var` if set, else the first existing candidate, else `name` on PATH.
fn tool(var: &str, candidates: &[PathBuf], name: &str) -> Option<PathBuf> {
    if let Some(v) = std::env::var_os(var) {
        let p = PathBuf::from(v);
        return p.is_file().then_some(p);
    }
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn find_kernel(cache: &Path) -> Result<Kernel, String> {
    if let Some(dir) = std::env::var_os("FERRY_VM_KERNEL_DIR") {
        return Kernel::at(Path::new(&dir)).map_err(|e| format!("FERRY_VM_KERNEL_DIR: {e}"));
    }
    let dir = cache.join("kernel");
    let newest = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("lib/modules").is_dir())
        .max();
    match newest {
        Some(root) => Kernel::at(&root),
        None => Err(format!(
            "a Debian guest kernel unpacked under {} (apt-get download linux-image-<ver>-amd64, \
             dpkg-deb -x)",
            dir.display()
        )),
    }
}

/// Whether an ELF executable is statically linked: it has no `PT_INTERP` program header, so
/// no dynamic loader (and no shared library) is needed to run it. Static-pie counts as static.
pub fn is_static(path: &Path) -> std::io::Result<bool> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let f = std::fs::read(path)?;
    if f.len() < 64 || &f[..4] != b"\x7fELF" || f[4] != 2 || f[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([f[o], f[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(f[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let ty = f
            .get(o..o + 4)
            .ok_or_else(|| bad("truncated program headers"))?;
        if u32::from_le_bytes(ty.try_into().expect("4 bytes")) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        // The test binary itself is dynamically linked (a normal Rust build); /bin/sh too.
        let me = std::env::current_exe().unwrap();
        assert!(!is_static(&me).unwrap());
        // A non-ELF file is an error, not a guess.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        assert!(is_static(&script).is_err());
        // A static one, when the machine has Debian's busybox-static.
        if let Some(bb) = tool("FERRY_VM_BUSYBOX", &[], "busybox") {
            if let Ok(out) = std::process::Command::new("file").arg(&bb).output() {
                let says = String::from_utf8_lossy(&out.stdout);
                assert_eq!(
                    is_static(&bb).unwrap(),
                    says.contains("statically linked") || says.contains("static-pie"),
                    "{says}"
                );
            }
        }
    }

    #[test]
    fn kernel_tree_layout() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Kernel::at(dir.path()).is_err());
        std::fs::create_dir_all(dir.path().join("lib/modules/6.1.0-9-amd64")).unwrap();
        let e = Kernel::at(dir.path()).unwrap_err();
        assert!(e.contains("vmlinuz-6.1.0-9-amd64"), "{e}");
        std::fs::create_dir_all(dir.path().join("boot")).unwrap();
        std::fs::write(dir.path().join("boot/vmlinuz-6.1.0-9-amd64"), b"").unwrap();
        let k = Kernel::at(dir.path()).unwrap();
        assert_eq!(k.release, "6.1.0-9-amd64");
        assert!(k.modules.ends_with("lib/modules/6.1.0-9-amd64"));
    }
}
