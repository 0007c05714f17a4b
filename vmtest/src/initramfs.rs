//! The guest's root filesystem, built as a cpio archive the kernel unpacks into RAM: busybox as
//! the whole userland, the kernel modules Ferry needs (loaded by `/init` in dependency order),
//! `/init` and `/lib/ferry.sh` from `guest/`, and whatever binaries and scripts a run adds.

use std::collections::{BTreeMap, HashSet};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::cpio;
use crate::tools::{Kernel, Tools};

/// The guest's `/init`: mounts the pseudo filesystems, loads the modules, runs `/guest.sh`
/// between markers, powers off.
pub const INIT: &str = include_str!("../guest/init");
/// Shell helpers every guest script can source: `. /lib/ferry.sh`.
pub const LIB: &str = include_str!("../guest/lib.sh");

/// Modules every Ferry guest loads: virtio over PCI, FUSE, and the virtio vsock transport.
pub const BASE_MODULES: &[&str] = &["virtio_pci", "fuse", "vmw_vsock_virtio_transport"];
/// Modules for QEMU's built-in 9p share (the benchmark's baseline).
pub const NINEP_MODULES: &[&str] = &["9pnet_virtio", "9p"];
/// Modules for virtio-fs (`mount -t virtiofs`).
pub const VIRTIOFS_MODULES: &[&str] = &["virtiofs"];

/// An initramfs being assembled. Files are named by their path in the guest.
pub struct Initramfs {
    files: BTreeMap<String, Source>,
    /// Module names in load order, with their `.ko` files.
    modules: Vec<(String, PathBuf)>,
    kernel: Kernel,
}

enum Source {
    Bytes(Vec<u8>, u32),
    Host(PathBuf, u32),
}

impl Initramfs {
    /// busybox, `/init`, `/lib/ferry.sh` and [`BASE_MODULES`].
    pub fn new(tools: &Tools) -> Result<Initramfs, String> {
        let mut me = Initramfs {
            files: BTreeMap::new(),
            modules: Vec::new(),
            kernel: tools.kernel.clone(),
        };
        me.host_file("/bin/busybox", &tools.busybox, 0o755);
        me.bytes("/init", INIT, 0o755);
        me.bytes("/lib/ferry.sh", LIB, 0o644);
        me.bytes("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644);
        me.bytes("/etc/group", "root:x:0:\n", 0o644);
        me.modules(BASE_MODULES)?;
        Ok(me)
    }

    /// Adds a file from the host.
    pub fn host_file(&mut self, guest: &str, host: &Path, mode: u32) -> &mut Self {
        self.files
            .insert(guest.to_string(), Source::Host(host.to_path_buf(), mode));
        self
    }

    /// Adds a file with these contents.
    pub fn bytes(&mut self, guest: &str, data: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.files
            .insert(guest.to_string(), Source::Bytes(data.into(), mode));
        self
    }

    /// Adds kernel modules and everything they depend on, to be loaded dependencies first.
    /// Modules built into the kernel are skipped.
    pub fn modules(&mut self, names: &[&str]) -> Result<&mut Self, String> {
        let index = ModuleIndex::read(&self.kernel.modules)?;
        let mut seen: HashSet<String> = self.modules.iter().map(|(n, _)| n.clone()).collect();
        let mut order = Vec::new();
        for n in names {
            index.resolve(&normalize(n), &mut seen, &mut order)?;
        }
        for name in order {
            let path = index.paths[&name].clone();
            self.modules.push((name, path));
        }
        Ok(self)
    }

    /// Writes the archive.
    pub fn write(&self, out: &Path) -> Result<(), String> {
        let io = |e: std::io::Error| format!("writing {}: {e}", out.display());
        let f = std::fs::File::create(out).map_err(io)?;
        let mut w = cpio::Writer::new(BufWriter::new(f));
        let mut dirs: HashSet<String> = HashSet::new();
        for d in ["/dev", "/proc", "/sys", "/tmp", "/run", "/mnt", "/root"] {
            w.dir(d, 0o755).map_err(io)?;
            dirs.insert(d.to_string());
        }
        // The kernel opens /dev/console for init before anything is mounted.
        w.char_dev("/dev/console", 0o600, 5, 1).map_err(io)?;
        let mut load_list = String::new();
        let mut files: Vec<(String, Source)> = Vec::new();
        for (name, path) in &self.modules {
            load_list.push_str(name);
            load_list.push('\n');
            files.push((
                format!("/lib/modules/{name}.ko"),
                Source::Host(path.clone(), 0o644),
            ));
        }
        files.push((
            "/lib/modules/load.list".into(),
            Source::Bytes(load_list.into_bytes(), 0o644),
        ));
        let all = self.files.iter().map(|(g, s)| (g.as_str(), s));
        for (guest, src) in all.chain(files.iter().map(|(g, s)| (g.as_str(), s))) {
            // Parents first: the kernel does not create missing directories.
            let rel = guest.trim_start_matches('/');
            if let Some((parents, _)) = rel.rsplit_once('/') {
                let mut dir = String::new();
                for comp in parents.split('/') {
                    dir.push('/');
                    dir.push_str(comp);
                    if dirs.insert(dir.clone()) {
                        w.dir(&dir, 0o755).map_err(io)?;
                    }
                }
            }
            match src {
                Source::Bytes(b, mode) => w.file(guest, *mode, b).map_err(io)?,
                Source::Host(p, mode) => {
                    let data =
                        std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
                    w.file(guest, *mode, &data).map_err(io)?;
                }
            }
        }
        w.finish().map_err(io)?;
        Ok(())
    }
}

/// Module names use `_` and `-` interchangeably; the kernel reports them with `_`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The modules of one kernel: where each `.ko` is and which are built in.
struct ModuleIndex {
    paths: BTreeMap<String, PathBuf>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    fn read(dir: &Path) -> Result<ModuleIndex, String> {
        let mut paths = BTreeMap::new();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                    if let Some(stem) = name.strip_suffix(".ko") {
                        paths.insert(normalize(stem), p.clone());
                    } else if name.contains(".ko.") {
                        // Debian 12 ships plain .ko files; a compressed tree needs unpacking.
                        let stem = name.split(".ko.").next().unwrap_or(name);
                        paths.entry(normalize(stem)).or_insert(p.clone());
                    }
                }
            }
        }
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .map(|f| normalize(f.trim_end_matches(".ko")))
            .collect();
        Ok(ModuleIndex { paths, builtin })
    }

    /// Appends `name` to `order` after its dependencies (depth first, each once).
    fn resolve(
        &self,
        name: &str,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        if !seen.insert(name.to_string()) || self.builtin.contains(name) {
            return Ok(());
        }
        let path = self
            .paths
            .get(name)
            .ok_or_else(|| format!("kernel module {name} not found (nor built in)"))?;
        if path.extension().is_some_and(|e| e != "ko") {
            return Err(format!(
                "{} is compressed; unpack the modules first",
                path.display()
            ));
        }
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for dep in depends(&data) {
            self.resolve(&normalize(&dep), seen, order)?;
        }
        order.push(name.to_string());
        Ok(())
    }
}

/// The `depends=` entry of a module's `.modinfo` section: NUL-separated `key=value` strings.
fn depends(ko: &[u8]) -> Vec<String> {
    ko.split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake module tree: `a` needs `b` and `c`, `b` needs `c`; `d` is built in.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/x");
        std::fs::create_dir_all(&k).unwrap();
        let ko = |deps: &str| format!("\x7fELF junk\0license=GPL\0depends={deps}\0vermagic=6.1\0");
        std::fs::write(k.join("a.ko"), ko("b,c")).unwrap();
        std::fs::write(k.join("b.ko"), ko("c,d")).unwrap();
        std::fs::write(k.join("c.ko"), ko("")).unwrap();
        std::fs::write(k.join("z-dash.ko"), ko("a")).unwrap();
        std::fs::write(dir.path().join("modules.builtin"), "kernel/y/d.ko\n").unwrap();
        dir
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let dir = tree();
        let idx = ModuleIndex::read(dir.path()).unwrap();
        let (mut seen, mut order) = (HashSet::new(), Vec::new());
        idx.resolve("z_dash", &mut seen, &mut order).unwrap();
        idx.resolve("b", &mut seen, &mut order).unwrap();
        assert_eq!(order, ["c", "b", "a", "z_dash"]);
        let e = idx.resolve("nope", &mut seen, &mut order).unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn modinfo_depends_is_read() {
        assert_eq!(
            depends(b"x\0depends=virtio,virtio_ring\0name=y\0"),
            ["virtio", "virtio_ring"]
        );
        assert!(depends(b"x\0depends=\0").is_empty());
        assert!(depends(b"no modinfo here").is_empty());
    }
}
