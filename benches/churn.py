#!/usr/bin/env python3
"""Host churn -> guest inotify events, and coherence lag after a host burst.

Starts `ferry share SRC MNT` (cached mode) itself, so run it as root with /dev/fuse:
  cargo build --release --locked --bin ferry
  python3 benches/churn.py [--bin target/release/ferry] [--ops 3000] [--procs 2] [--seed 1]
                           [--skip-churn] [--skip-lag] [--dirs 800] [--files 20000]

churn: `inotifywait -m -r` on SRC (native) and on MNT (guest) while a seeded fsstress-like
workload runs on SRC (`--procs` processes, `--ops` operations each: creates, writes, renames
of files and of directories whose files are being written, unlinks, whole-subtree deletes,
mkdir/rmdir, hard links, chmod). Prints per-type counts, and for CREATE/DELETE/MOVED_*/ATTRIB
the share of native (type, path) pairs the guest reported, counting a pair as covered when the
guest reported the creation of a directory above it (a collapsed burst), and the guest pairs
for paths the native watcher never reported (invented). The agent's replay statistics follow.

lag: the guest reads edit.txt; the host writes FILES files into DIRS new directories, then
rewrites edit.txt (same size); prints how long the guest took to read the new bytes.

The workload generator alone: python3 benches/churn.py --workload DIR --ops N --seed S
"""
import argparse, collections, os, random, re, shutil, signal, subprocess, sys, tempfile, threading, time

TYPES = ["CREATE", "DELETE", "MOVED_FROM", "MOVED_TO", "ATTRIB", "MODIFY", "CLOSE_WRITE"]
STRUCT = ["CREATE", "DELETE", "MOVED_FROM", "MOVED_TO", "ATTRIB"]


def workload(root, ops, seed):
    """A seeded fsstress-like workload on `root` (paths relative to it)."""
    rnd = random.Random(seed)
    files, dirs = [], [""]

    def pick(lst):
        return lst[rnd.randrange(len(lst))] if lst else None

    def fresh(d, p):
        return os.path.join(d, "%s%d_%d" % (p, seed, rnd.randrange(1 << 30)))

    def rescan():
        files.clear()
        dirs[:] = [""]
        for dp, dn, fn in os.walk(root):
            rel = os.path.relpath(dp, root)
            rel = "" if rel == "." else rel
            dirs.extend(os.path.join(rel, d) for d in dn)
            files.extend(os.path.join(rel, f) for f in fn)

    for i in range(ops):
        if i % 50 == 0:
            rescan()  # another process churns the same tree
        op = rnd.choices(
            ["creat", "write", "mkdir", "rename", "renamedir", "unlink", "rmtree", "rmdir", "link", "chmod"],
            weights=[20, 25, 8, 10, 5, 8, 2, 3, 5, 8],
        )[0]
        try:
            if op == "creat":
                p = fresh(pick(dirs), "f")
                with open(os.path.join(root, p), "wb") as f:
                    f.write(os.urandom(rnd.randrange(1, 4096)))
                files.append(p)
            elif op == "write" and files:
                p = pick(files)
                with open(os.path.join(root, p), "ab") as f:
                    f.write(b"x" * rnd.randrange(1, 512))
            elif op == "mkdir":
                p = fresh(pick(dirs), "d")
                os.mkdir(os.path.join(root, p))
                dirs.append(p)
                for _ in range(rnd.randrange(0, 4)):
                    q = fresh(p, "f")
                    with open(os.path.join(root, q), "wb") as f:
                        f.write(b"new")
                    files.append(q)
            elif op == "rename" and files:
                p = pick(files)
                q = fresh(pick(dirs), "r")
                os.rename(os.path.join(root, p), os.path.join(root, q))
                files.remove(p)
                files.append(q)
            elif op == "renamedir" and len(dirs) > 1:
                d = pick(dirs[1:])
                inside = [f for f in files if f.startswith(d + "/")]
                # A file inside changes, then its directory moves, then it changes again.
                for f in inside[:2]:
                    with open(os.path.join(root, f), "ab") as fh:
                        fh.write(b"y")
                parent = pick([x for x in dirs if x != d and not x.startswith(d + "/")])
                q = fresh(parent if parent is not None else "", "m")
                os.rename(os.path.join(root, d), os.path.join(root, q))
                for f in inside[:2]:
                    with open(os.path.join(root, q + f[len(d):]), "ab") as fh:
                        fh.write(b"z")
                rescan()
            elif op == "unlink" and files:
                p = pick(files)
                os.unlink(os.path.join(root, p))
                files.remove(p)
            elif op == "rmtree" and len(dirs) > 1:
                d = pick(dirs[1:])
                shutil.rmtree(os.path.join(root, d))
                rescan()
            elif op == "rmdir" and len(dirs) > 1:
                d = pick(dirs[1:])
                os.rmdir(os.path.join(root, d))
                dirs.remove(d)
            elif op == "link" and files:
                p = pick(files)
                q = fresh(pick(dirs), "l")
                os.link(os.path.join(root, p), os.path.join(root, q))
                files.append(q)
            elif op == "chmod" and files:
                p = pick(files)
                os.chmod(os.path.join(root, p), 0o600 | rnd.randrange(0, 0o100))
        except (FileNotFoundError, OSError):
            rescan()


class Watch:
    """`inotifywait -m -r` on a directory, collecting (events, relative path)."""

    def __init__(self, d):
        self.d = d.rstrip("/") + "/"
        self.lines = []
        self.p = subprocess.Popen(
            ["inotifywait", "-m", "-r", "--format", "%e\t%w%f",
             "-e", "create,delete,moved_from,moved_to,attrib,modify,close_write", d],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self.last = time.monotonic()
        threading.Thread(target=self._read, daemon=True).start()
        # inotifywait prints "Watches established." on stderr once it is ready.
        for line in self.p.stderr:
            if "established" in line:
                break

    def _read(self):
        self.times = {}
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))
            self.last = time.monotonic()
            self.times.setdefault(line.rstrip("\n").rpartition("/")[2], self.last)

    def stop(self):
        self.p.send_signal(signal.SIGINT)
        self.p.wait()

    def pairs(self):
        out = []
        for l in self.lines:
            ev, _, path = l.partition("\t")
            rel = path[len(self.d):] if path.startswith(self.d) else path
            for t in ev.split(","):
                if t in TYPES:
                    out.append((t, rel.rstrip("/")))
        return out


def settle(watches, quiet=3.0, limit=120):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if all(time.monotonic() - w.last > quiet for w in watches):
            return
        time.sleep(0.2)


def start_share(bin_, src, mnt, log):
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    if os.environ.get("CHURN_LOG"):
        log = open(os.environ["CHURN_LOG"], "w")
    p = subprocess.Popen([bin_, "share", src, mnt], stdout=log, stderr=log, env=env)
    for _ in range(300):
        if os.path.ismount(mnt):
            return p
        time.sleep(0.05)
    raise SystemExit("mount did not appear")


def stop_share(p, mnt):
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        subprocess.run(["umount", "-l", mnt])
        p.kill()


def churn(args, tmp):
    src, mnt = os.path.join(tmp, "src"), os.path.join(tmp, "mnt")
    os.makedirs(src)
    os.makedirs(mnt)
    for d in range(10):
        os.makedirs(os.path.join(src, "base%d" % d))
        for f in range(10):
            with open(os.path.join(src, "base%d" % d, "f%d" % f), "w") as fh:
                fh.write("seed")
    log = open(os.path.join(tmp, "ferry.log"), "w+")
    share = start_share(args.bin, src, mnt, log)
    native, guest = Watch(src), Watch(mnt)
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, __file__, "--workload", src, "--ops", str(args.ops),
                               "--seed", str(args.seed * 100 + i)]) for i in range(args.procs)]
    for p in procs:
        p.wait()
    end = time.monotonic()
    settle([native, guest])
    native.stop()
    guest.stop()
    lag = max(0.0, guest.last - max(native.last, end))
    stop_share(share, mnt)
    log.seek(0)
    stats = [l.strip() for l in log if "host change events ended" in l or "replay" in l and "skipped" in l]
    n, g = native.pairs(), guest.pairs()
    nc, gc = collections.Counter(t for t, _ in n), collections.Counter(t for t, _ in g)
    print("churn: %d procs x %d ops, seed %d, workload %.2f s; last guest event %.2f s after the last native one"
          % (args.procs, args.ops, args.seed, end - t0, lag))
    gset = set(g)
    created_dirs = {p for t, p in g if t in ("CREATE", "MOVED_TO")}

    def covered(t, p):
        if (t, p) in gset:
            return True
        parts = p.split("/")
        return any("/".join(parts[:i]) in created_dirs for i in range(1, len(parts)))

    nset = set(n)
    print("%-12s %8s %8s %8s %10s %9s" % ("event", "native", "guest", "count%", "covered%", "invented"))
    for t in TYPES:
        npairs = {x for x in nset if x[0] == t}
        cov = sum(1 for x in npairs if covered(*x))
        inv = sum(1 for x in gset if x[0] == t and x not in nset) if t in STRUCT else 0
        print("%-12s %8d %8d %7.1f%% %9.1f%% %9s" % (
            t, nc[t], gc[t], 100.0 * gc[t] / max(1, nc[t]),
            100.0 * cov / max(1, len(npairs)), inv if t in STRUCT else "-"))
    for s in stats:
        print("agent:", s[-400:])


def lag(args, tmp):
    src, mnt = os.path.join(tmp, "lsrc"), os.path.join(tmp, "lmnt")
    os.makedirs(src)
    os.makedirs(mnt)
    with open(os.path.join(src, "edit.txt"), "w") as f:
        f.write("old-content-0000")
    log = open(os.path.join(tmp, "ferry-lag.log"), "w+")
    share = start_share(args.bin, src, mnt, log)
    guest = Watch(mnt)  # a recursive watcher in the guest, as a bundler would have
    path = os.path.join(mnt, "edit.txt")
    with open(path) as f:
        assert f.read() == "old-content-0000"
    per = args.files // args.dirs
    t0 = time.monotonic()
    for d in range(args.dirs):
        dp = os.path.join(src, "pkg%04d" % d)
        os.mkdir(dp)
        for i in range(per):
            with open(os.path.join(dp, "f%d.js" % i), "w") as f:
                f.write("x")
    burst_end = time.monotonic()
    with open(os.path.join(src, "edit.txt"), "r+") as f:
        f.write("new-content-0001")
    edited = time.monotonic()
    seen = None
    while time.monotonic() - edited < 120:
        with open(path) as f:
            if f.read() == "new-content-0001":
                seen = time.monotonic()
                break
        time.sleep(0.002)
    settle([guest], quiet=2.0, limit=300)
    guest.stop()
    stop_share(share, mnt)
    log.seek(0)
    stats = [l.strip() for l in log if "host change events ended" in l]
    print("lag: %d files in %d new dirs written in %.2f s" % (per * args.dirs, args.dirs, burst_end - t0))
    print("lag: edit after the burst visible in the guest after %s" %
          ("%.1f ms" % ((seen - edited) * 1000) if seen else "never (120 s)"))
    ev = guest.times.get("edit.txt")
    print("lag: the guest watcher heard of the edit after %s" %
          ("%.1f ms" % ((ev - edited) * 1000) if ev else "never"))
    print("lag: guest watcher's last event %.2f s after the edit; %d guest events" %
          (guest.last - edited, len(guest.lines)))
    for s in stats:
        print("agent:", s[-400:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/ferry")
    ap.add_argument("--ops", type=int, default=3000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dirs", type=int, default=800)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--skip-churn", action="store_true")
    ap.add_argument("--skip-lag", action="store_true")
    ap.add_argument("--workload")
    args = ap.parse_args()
    if args.workload:
        return workload(args.workload, args.ops, args.seed)
    tmp = tempfile.mkdtemp(prefix="ferry-churn-")
    try:
        if not args.skip_churn:
            churn(args, tmp)
        if not args.skip_lag:
            lag(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
