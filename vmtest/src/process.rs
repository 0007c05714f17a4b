//! Child processes a VM run starts (QEMU, vhost-device-vsock, ferry-host, a host-side agent):
//! output to a log file, stopped by pid when dropped. Nothing else is ever signalled.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running child with its log.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout and stderr going to `log_dir/NAME.log`.
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out.try_clone().expect("dup a log file");
        // If the test process dies without running destructors (SIGKILL, a CI time-out), the
        // child goes with it instead of leaving a QEMU spinning. The signal fires when the
        // spawning thread exits; Drop has stopped the child long before that in every normal
        // path.
        // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
        // async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `limit` for it to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        // SAFETY: kill(2) on the pid of our own unreaped child: it cannot have been reused.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        if let Some(s) = self.wait_exit(grace) {
            return Some(s);
        }
        let child = self.child.as_mut()?;
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
        // A failing test shows what each of its processes said.
        if std::thread::panicking() {
            let log = self.log();
            if !log.trim().is_empty() {
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- {} log (last {} lines) ----", self.name, tail.len());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Waits until `path` exists, while `proc` (when given) is still running. Panics with the
/// process's log when it exits first or when `limit` passes.
pub fn wait_for_path(path: &Path, mut proc: Option<&mut Proc>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if let Some(p) = proc.as_deref_mut() {
            if let Some(s) = p.exited() {
                panic!(
                    "{} exited ({s}) before creating {}:\n{}",
                    p.name(),
                    path.display(),
                    p.log()
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
