#!/usr/bin/env python3
"""Fails when a package Ferry builds declares a rust-version newer than Ferry's own.

Only one toolchain is installed, so the declared MSRV (`rust-version` in the workspace
Cargo.toml) cannot be checked by building with it. Two checks stand in for that:

- clippy's `incompatible_msrv` lint (deny in the workspace lints) rejects a standard library
  API newer than the MSRV in Ferry's own code;
- this script reads the locked dependency graph (`cargo metadata --locked`, for the host's
  target: Ferry builds on Linux only) and rejects any package whose `rust-version` is newer
  than the MSRV, since a release of it would not build with the declared toolchain.

A dependency that declares no rust-version cannot be checked this way; the script lists how
many there are. Run from anywhere in the repository: `python3 .ci/msrv.py`.
"""

import json
import subprocess
import sys


def version(text):
    """'1.85' or '1.85.0' as a comparable tuple (1, 85, 0)."""
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def show(v):
    return ".".join(str(p) for p in v)


def main():
    host = next(
        line.split(":", 1)[1].strip()
        for line in subprocess.run(
            ["rustc", "-vV"], check=True, capture_output=True, text=True
        ).stdout.splitlines()
        if line.startswith("host:")
    )
    meta = json.loads(
        subprocess.run(
            [
                "cargo",
                "metadata",
                "--format-version",
                "1",
                "--locked",
                "--filter-platform",
                host,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    packages = {p["id"]: p for p in meta["packages"]}
    members = [packages[i] for i in meta["workspace_members"]]

    undeclared = [m["name"] for m in members if not m.get("rust_version")]
    if undeclared:
        print(f"msrv: workspace members without rust-version: {', '.join(undeclared)}")
        return 1
    msrv = min(version(m["rust_version"]) for m in members)

    # Every package the members build, through normal, build and dev dependencies.
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    reached, todo = set(), list(meta["workspace_members"])
    while todo:
        pid = todo.pop()
        if pid in reached:
            continue
        reached.add(pid)
        todo.extend(d["pkg"] for d in nodes[pid]["deps"])

    too_new, silent = [], 0
    for pid in sorted(reached, key=lambda i: packages[i]["name"]):
        p = packages[pid]
        declared = p.get("rust_version")
        if not declared:
            silent += 1
        elif version(declared) > msrv:
            too_new.append(f"{p['name']} {p['version']} needs Rust {declared}")

    if too_new:
        print(f"msrv: Ferry declares rust-version {show(msrv)}, but these packages need newer:")
        for line in too_new:
            print(f"  {line}")
        print("Raise rust-version in Cargo.toml, or keep the older releases in Cargo.lock.")
        return 1
    newest = max(
        (version(packages[i]["rust_version"]) for i in reached if packages[i].get("rust_version")),
        default=msrv,
    )
    print(
        f"msrv: rust-version {show(msrv)} holds for all {len(reached)} packages "
        f"(the newest any declares is {show(newest)}; {silent} declare none)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
