//! Ferry's integration tests: one binary, one module per topic. Tests that mount need root and
//! /dev/fuse (CI has both), some also a program or tool; without them they write
//! `SKIPPED: <test>: <reason>` on stderr and return, except under CI (`CI=true`), where they
//! fail (`harness::require`, `harness::skip_or_fail`).

// Real mounts through the real binaries, and the compare-two-trees machinery.
mod harness;
// The same operation sequences on a mount and on a plain directory.
mod posix;
// Path attacks and hostile bytes sent straight to ferry-host.
mod attacks;
// Tokens on every listener, socket file modes, per-export allow-lists.
mod auth;
// Hostile clients against the server's bounds: handshake deadline, Hello size, connection caps.
mod bounds;
// The two halves as separate processes: listeners, tokens, several exports and agents.
mod cli;
// Real programs on the mount: git, tar.
mod programs;
// Host changes seen by inotify clients in the guest, and cache coherence.
mod events;
// Host churn (fsstress-style) against a native watcher: per-type coverage, nothing invented.
mod churn;
// `ferry bench` on a share and a native directory: the JSON's rows, numbers and ratios.
mod bench_cmd;
// The agent inside a QEMU guest over vsock (needs .ci/vm-tools; SKIPPED without).
mod vm;
// Owners: squash, map and passthrough modes with programs running as several users.
mod ids;
// POSIX ACLs in each id mode, against a native directory.
mod acl;
// Generated operation sequences on a mount and a plain directory (proptest).
mod model;
// ferry-host killed and restarted under a separate agent's mount; an agent that dies.
mod reconnect;
// Locks across the boundary: host processes, two agents, disconnects, SQLite.
mod locks;
// mmap, sockets, device nodes and read-only exports through a mount.
mod special;
// Warm caches in `cached` mode, dropped by host events; `consistent` mode asks every time.
mod warm;
// Xattr probes answered in the guest, and kept coherent by host events.
mod xattr_cache;
// Path safety while the host swaps a directory for a symlink to /.
mod race;
// Symlinks lead neither the host watcher out of the export nor the replay out of the mount.
mod confine;
// fsx-style random I/O with mmap against an in-memory model.
mod fsx;
// A tree much larger than the node descriptor cap: descriptors stay bounded, data stays right.
mod scale;
// ferry-host as a vhost-user-fs backend of a QEMU guest (virtio-fs), with an events-only agent.
mod vm_virtiofs;
// libvirt's own daemon starts ferry-virtiofsd for a QEMU domain (needs libvirt-daemon-system).
mod vm_libvirt;
// ferry-virtiofsd under libvirt's, Kata's, cloud-hypervisor's, Lima's and Podman's argv.
mod vm_virtiofsd;
// `ferry share` as an ordinary user: fusermount3, allow_other, newcomers' errors.
mod unprivileged;
// pjdfstest and fsx-rs (from the crate registry) against the mount, compared with bindfs.
mod conformance;
// README.md's install commands in a fresh clone; every installed binary's --version.
mod install;
// ferry-host --config: a TOML file merged with flags, --check-config, the packaged sample.
mod config;
// packaging/: systemd units verified by systemd-analyze; man pages against --help.
mod packaging;
// ferry status, ferry ctl reload and the Prometheus endpoint of a running ferry-host.
mod status;
// ferry-agent status: the agent's counters, replay outcomes and event lag, JSON and Prometheus.
mod agent_status;
// The server sandbox: /proc/PID/status of a running ferry-host, a mount through it, Landlock
// refusing a directory moved out of the export, a reload beyond the sandbox refused.
mod sandbox;
