//! [`FerryFs`]'s construction and options, and how its handlers send requests.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{self as proto, Errno, Reply, Request as Req};
use fuser::{FopenFlags, Request};

use super::FerryFs;
use super::attr::fopen_flags;
use super::caller::{caller_groups, ctx};
use super::locks::Locks;
use crate::client::Client;

impl FerryFs {
    /// An adapter forwarding to export `export` of `client`, with the given entry/attr TTL.
    pub fn new(client: Arc<Client>, export: u32, ttl: Duration) -> Self {
        Self {
            locks: Locks::new(client.welcome().features),
            client,
            export,
            ttl,
            caller_groups: false,
            deferred_forgets: Arc::default(),
            dir_caches: Arc::default(),
            plus: Arc::default(),
            prefetched: Arc::default(),
            replay: Arc::default(),
            keep_cache: false,
            listings: Arc::default(),
            lazy: Arc::default(),
            lazy_open: false,
            posix_acl: false,
        }
    }

    /// Has the kernel enforce POSIX ACLs (`FUSE_POSIX_ACL`, for a mount whose permissions the
    /// kernel checks): it reads the ACL xattrs through GETXATTR, checks access and default
    /// ACLs, and sends creating requests the mode without the umask applied
    /// (`FUSE_DONT_MASK`), the umask beside it, so the server applies a parent's default ACL
    /// instead of the umask as a local filesystem does.
    pub fn with_posix_acl(mut self, on: bool) -> Self {
        self.posix_acl = on;
        self
    }

    /// Keeps file pages cached across opens; only safe when host changes invalidate them.
    pub fn with_keep_cache(mut self, keep: bool) -> Self {
        self.keep_cache = keep;
        self
    }

    /// FOPEN flags for an open reply: the server's, plus KEEP_CACHE in `cached` mode.
    pub(super) fn open_flags(&self, bits: u32) -> FopenFlags {
        let mut f = fopen_flags(bits);
        if self.keep_cache && !f.contains(FopenFlags::FOPEN_DIRECT_IO) {
            f |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        f
    }

    /// Makes creating requests carry the caller's supplementary groups, read from
    /// `/proc/PID/status` (FUSE passes only the uid, gid and pid). The server asks for them
    /// when it creates files as the caller ([`proto::ExportInfo::wants_groups`]).
    pub fn with_caller_groups(mut self, on: bool) -> Self {
        self.caller_groups = on;
        self
    }

    /// Sends every FLUSH to the host, whose filesystem can fail a close
    /// ([`proto::ExportInfo::flush_to_host`]): `close(2)` then returns that error.
    pub fn with_host_flush(mut self, on: bool) -> Self {
        self.locks.flush_to_host(on);
        self
    }

    /// The caller's `Ctx`, with its supplementary groups when the server wants them: for a
    /// request sent later on the caller's behalf (a read-only open answered here is opened on
    /// the host by the first request that needs it, and must be checked as its opener).
    pub(super) fn ctx_with_groups(&self, req: &Request) -> proto::Ctx {
        let mut ctx = ctx(req);
        if self.caller_groups && ctx.uid != 0 && ctx.pid != 0 {
            ctx.groups = caller_groups(ctx.pid);
        }
        ctx
    }

    pub(super) fn call<F>(&self, req: &Request, body: Req<'_>, payload: &[u8], done: F)
    where
        F: FnOnce(Result<Reply<'_>, Errno>) + Send + 'static,
    {
        let mut ctx = ctx(req);
        // In map mode every request runs as the caller on the host, whose kernel checks
        // permissions (and ACL group entries) against the groups too; requests on an open
        // handle check nothing more, and skip the read of `/proc`.
        if self.caller_groups && ctx.uid != 0 && ctx.pid != 0 && !on_open_handle(&body) {
            ctx.groups = caller_groups(ctx.pid);
        }
        self.client
            .call(self.export, ctx, &body, payload, Box::new(done));
    }

    /// As [`Self::call`] for a request that creates a node: the caller's supplementary groups
    /// go with it when the server wants them.
    pub(super) fn call_creating<F>(&self, req: &Request, body: Req<'_>, done: F)
    where
        F: FnOnce(Result<Reply<'_>, Errno>) + Send + 'static,
    {
        let mut ctx = ctx(req);
        // Root bypasses the permission checks the groups would serve.
        if self.caller_groups && ctx.uid != 0 && ctx.pid != 0 {
            ctx.groups = caller_groups(ctx.pid);
        }
        self.client
            .call(self.export, ctx, &body, &[], Box::new(done));
    }

    pub(super) fn forget_nodes(&self, req: &Request, mut nodes: Vec<(u64, u64)>) {
        nodes.append(&mut self.take_deferred());
        if nodes.is_empty() {
            return;
        }
        self.client
            .send_oneway(self.export, ctx(req), &Req::Forget(proto::Forget { nodes }));
    }

    pub(super) fn take_deferred(&self) -> Vec<(u64, u64)> {
        std::mem::take(
            &mut *self
                .deferred_forgets
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    pub(super) fn flush_deferred(&self, req: &Request) {
        let nodes = self.take_deferred();
        if !nodes.is_empty() {
            self.forget_nodes(req, nodes);
        }
    }
}

/// Whether `body` works on a handle the caller already opened (data, sync, locks, release),
/// where the host checks no permission again and the caller's groups are not needed.
fn on_open_handle(body: &Req<'_>) -> bool {
    matches!(
        body,
        Req::Read(_)
            | Req::Write(_)
            | Req::Flush(_)
            | Req::Release(_)
            | Req::Fsync(_)
            | Req::Readdir(_)
            | Req::Readdirplus(_)
            | Req::Releasedir(_)
            | Req::Fsyncdir(_)
            | Req::Lseek(_)
            | Req::Getlk(_)
            | Req::Setlk(_)
            | Req::Flock(_)
    )
}
