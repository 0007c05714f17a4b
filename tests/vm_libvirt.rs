//! libvirt starts `ferry-virtiofsd`: a transient QEMU TCG domain (libvirt's own qemu driver,
//! Debian's libvirt-daemon-system) with memfd shared memory and a
//! `<filesystem type='mount'><driver type='virtiofs'/><binary path='ferry-virtiofsd'/>`
//! device, booting the VM tests' kernel and initramfs. libvirt builds the command line
//! (`--fd=N -o source=...,cache=always,xattr`), binds the socket and passes it; the guest
//! mounts the tag and runs the shared file workload (`tests/vm/files.sh`), which the host
//! checks afterwards.
//!
//! The CI machine is a container whose PID 1 is not systemd: when no libvirtd answers, the
//! test starts `virtlogd` and `libvirtd` in the foreground itself and stops them afterwards.
//! QEMU runs as root (a static DAC label), so libvirt neither changes owners nor needs to reach
//! the kernel under root's home.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_vmtest::{Proc, run_dir, static_bins};

use crate::harness::{Need, require, vm_tools};
use crate::vm::{check_guest_writes_on_the_host, prepare_host_tree};

const URI: &str = "qemu:///system";

/// `virsh -c URI ARGS`, killed after 300 s: the first `create` after libvirtd starts also
/// probes QEMU's capabilities, which takes a while on a loaded machine under TCG.
fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("300")
        .args(["virsh", "-c", URI])
        .args(args)
        .output()
        .expect("virsh runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The libvirt daemons this test started (none when one was already running).
struct Daemons(Vec<Proc>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for p in self.0.iter_mut().rev() {
            p.stop(Duration::from_secs(10));
        }
    }
}

/// A libvirtd that answers: the running one, or virtlogd and libvirtd started here.
fn libvirtd(logs: &Path) -> Daemons {
    if virsh(&["version"]).0 {
        return Daemons(Vec::new());
    }
    let daemons = Daemons(vec![
        Proc::spawn("virtlogd", &mut Command::new("virtlogd"), logs),
        Proc::spawn("libvirtd", &mut Command::new("libvirtd"), logs),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = virsh(&["version"]);
        if ok {
            return daemons;
        }
        assert!(
            Instant::now() < deadline,
            "libvirtd did not answer within 60 s: {out}\n{}",
            daemons.0[1].log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Destroys the transient domain if it still runs.
struct Domain(String);

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
    }
}

#[test]
fn vm_libvirt_starts_ferry_virtiofsd() {
    let Some(tools) = vm_tools() else {
        return;
    };
    if !require(&[
        Need::Fuse,
        Need::Program("libvirtd"),
        Need::Program("virtlogd"),
        Need::Program("virsh"),
    ]) {
        return;
    }
    let bins = static_bins();
    let bin = bins.host.with_file_name("ferry-virtiofsd");
    let run = run_dir("ferry-libvirt.");
    let initrd = run.path().join("initrd.cpio");
    crate::vm_virtiofsd::compat_initrd(&tools, &initrd);
    let share = run.path().join("share");
    prepare_host_tree(&share);
    let console = run.path().join("console.log");
    let name = format!("ferry-test-{}", std::process::id());
    let xml = format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init ferry.tags=libvirt</cmdline>
  </os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <devices>
    <emulator>{qemu}</emulator>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs' queue='1024'/>
      <binary path='{bin}' xattr='on'>
        <cache mode='always'/>
      </binary>
      <source dir='{share}'/>
      <target dir='libvirt'/>
    </filesystem>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
",
        kernel = tools.kernel.image.display(),
        initrd = initrd.display(),
        qemu = tools.qemu.display(),
        bin = bin.display(),
        share = share.display(),
        console = console.display(),
    );
    let xml_path = run.path().join("domain.xml");
    std::fs::write(&xml_path, &xml).unwrap();

    let _daemons = libvirtd(run.path());
    let (ok, out) = virsh(&["create", xml_path.to_str().unwrap()]);
    assert!(ok, "virsh create failed: {out}\n{xml}");
    let domain = Domain(name.clone());
    // libvirt ran ferry-virtiofsd with its own argv: the process is there, with --fd.
    let argv = Command::new("pgrep")
        .args(["-a", "-f", &bin.display().to_string()])
        .output()
        .unwrap();
    let argv = String::from_utf8_lossy(&argv.stdout).to_string();
    eprintln!("libvirt started: {argv}");
    assert!(
        argv.contains("--fd=") && argv.contains(&format!("source={}", share.display())),
        "no ferry-virtiofsd with libvirt's argv among: {argv:?}"
    );

    // The guest script runs, then the guest powers off and libvirt destroys the domain.
    let deadline = Instant::now() + Duration::from_secs(600);
    let text = loop {
        let text = std::fs::read_to_string(&console)
            .unwrap_or_default()
            .replace('\r', "");
        if text.contains("=== FERRY-END") {
            break text;
        }
        let (_, state) = virsh(&["domstate", &name]);
        assert!(
            Instant::now() < deadline
                && !state.contains("shut off")
                && !state.contains("failed to get domain"),
            "the guest script did not end (domain: {state}):\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let script = text
        .split("=== FERRY-BEGIN")
        .nth(1)
        .and_then(|s| s.split("=== FERRY-END").next())
        .unwrap_or_default();
    eprintln!("---- guest script output ----\n{script}");
    assert!(
        text.contains("=== FERRY-END rc=0"),
        "the guest script failed:\n{text}"
    );
    for step in ["mount-libvirt", "workload-libvirt"] {
        assert!(
            script.contains(&format!("FERRY-OK {step}\n")),
            "step {step} did not pass:\n{script}"
        );
    }
    drop(domain);
    check_guest_writes_on_the_host(&share);
}
