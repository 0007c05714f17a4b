#!/usr/bin/env python3
"""Host change -> guest inotify event latency.

Usage: start `ferry share SRC MNT` (release build for real figures), then
  python3 benches/event-latency.py SRC MNT     # through the mount
  python3 benches/event-latency.py DIR DIR     # the same watcher on a native directory
Creates, appends to and deletes 50 files in SRC and times each until inotifywait on MNT
reports the matching event; prints median and p90 per kind."""
import os, subprocess, time, sys, statistics, threading, queue
src, mnt = sys.argv[1], sys.argv[2]
p = subprocess.Popen(["inotifywait", "-m", "-q", "--format", "%f %e", mnt], stdout=subprocess.PIPE, text=True, bufsize=1)
q = queue.Queue()
threading.Thread(target=lambda: [q.put((time.monotonic(), l.split())) for l in p.stdout], daemon=True).start()
time.sleep(0.5)
lat = {"create": [], "modify": [], "delete": []}
def wr(n):
    with open(os.path.join(src, n), "a") as f: f.write("x")
ops = (("create", lambda n: open(os.path.join(src, n), "w").close(), "CREATE"), ("modify", wr, "MODIFY"), ("delete", lambda n: os.unlink(os.path.join(src, n)), "DELETE"))
for i in range(50):
    for kind, op, ev in ops:
        name = f"f{i}"
        t0 = time.monotonic(); op(name)
        while True:
            try: t, line = q.get(timeout=5)
            except queue.Empty: print("timeout", kind); break
            if line and line[0] == name and ev in line[1].split(","):
                lat[kind].append((t - t0) * 1000); break
        time.sleep(0.02)
        while not q.empty(): q.get()
p.kill()
for k, v in lat.items():
    v.sort(); print(f"{k}: median {statistics.median(v):.2f} ms, p90 {v[int(len(v)*0.9)]:.2f} ms, n={len(v)}")
