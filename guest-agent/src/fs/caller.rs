//! Who is calling: the protocol `Ctx` of a FUSE request, and the caller's supplementary groups.

use ferry_protocol::Ctx;
use fuser::Request;
use tracing::debug;

pub(super) fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        groups: Vec::new(),
    }
}

/// The supplementary groups of thread `tid` (the pid FUSE reports is the calling thread's),
/// from the `Groups:` line of `/proc/TID/status`; empty when the thread is gone.
pub fn caller_groups(tid: u32) -> Vec<u32> {
    match std::fs::read(format!("/proc/{tid}/status")) {
        Ok(status) => parse_groups(&status),
        Err(e) => {
            debug!(tid, "cannot read the caller's groups: {e}");
            Vec::new()
        }
    }
}

/// The ids on the `Groups:` line of a `/proc/PID/status` text.
fn parse_groups(status: &[u8]) -> Vec<u32> {
    status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"Groups:"))
        .map(|l| {
            String::from_utf8_lossy(l)
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_come_from_proc_status() {
        let status = b"Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t27 100 2000 \nNSpid:\t5\n";
        assert_eq!(parse_groups(status), vec![27, 100, 2000]);
        assert_eq!(parse_groups(b"Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups(b"Name:\tx\n"), Vec::<u32>::new());
        // This thread's own groups, as the kernel reports them.
        let tid = nix::unistd::gettid().as_raw() as u32;
        let mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        assert_eq!(caller_groups(tid), mine);
        assert_eq!(caller_groups(u32::MAX), Vec::<u32>::new());
    }
}
