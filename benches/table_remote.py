#!/usr/bin/env python3
"""Turns benches/peers.sh's remote-mode results.tsv into one Markdown table per backend.

Each cell is a step's wall seconds, round trips and megabytes through the latency proxy.
Then vault's ratio (wall) to restic and to the plain copier of the same bytes through
the same proxy: its upload of vault's repository as it was after gen1 for the first
backup, its run that finds nothing to do for the no-change backup, and its download of
vault's final repository for restore, check --read-data and verify (which read at most
that). Usage: table_remote.py results.tsv
"""
import sys
from collections import defaultdict

data = defaultdict(lambda: defaultdict(dict))  # backend -> step -> tool -> row
broken = []
for line in open(sys.argv[1]):
    r = line.rstrip("\n").split("\t")
    if len(r) < 3 or ":" not in r[1]:
        continue
    backend, step = r[1].split(":", 1)
    if step.endswith("-identical"):
        broken.append(f"{r[0]} on {backend}")
        continue
    tool, _, wall, cpu, rss, repo, moved, trips = (r + [""] * 8)[:8]
    data[backend][step][tool] = {
        "wall": float(wall),
        "repo": int(repo) if repo else None,
        "moved": moved or "-",
        "trips": trips or "-",
    }

LIMIT_OF = {
    "backup-gen1": "upload-gen1",
    "backup-nochange": "nochange",
    "restore": "download",
    "check-read-data": "download",
    "verify": "download",
}
COPIER = {
    "sftp": {
        "upload-gen1": "scp -r up",
        "nochange": "one sftp session listing the repository",
        "download": "scp -r down",
    },
    "s3": {
        "upload-gen1": "rclone copy up",
        "nochange": "rclone copy again, nothing to copy",
        "download": "rclone copy down",
    },
}


def cell(x):
    if x is None:
        return "-"
    return f"{x['wall']:.2f} s, {x['trips']} RT, {x['moved']} MB"


for backend, steps in data.items():
    limits = {s: v["limit"] for s, v in steps.items() if "limit" in v}
    rows = [s for s in steps if s not in limits]
    tools = sorted({t for s in rows for t in steps[s]}, key=lambda t: (t != "vault", t))
    peers = [t for t in tools if t != "vault"]
    print(f"\n{backend}:\n")
    head = " | ".join(tools)
    vs = " | ".join(f"vault / {t}" for t in peers)
    print(f"| step | {head} | {vs + ' | ' if vs else ''}limit | vault / limit |")
    print("|---" * (len(tools) + len(peers) + 3) + "|")
    for step in rows:
        v = steps[step].get("vault")
        cells = [cell(steps[step].get(t)) for t in tools]
        for t in peers:
            p = steps[step].get(t)
            ok = v and p and p["wall"] > 0
            cells.append(f"{v['wall'] / p['wall']:.2f}x" if ok else "-")
        lim = limits.get(LIMIT_OF.get(step))
        cells.append(cell(lim))
        ok = v and lim and lim["wall"] > 0
        cells.append(f"{v['wall'] / lim['wall']:.2f}x" if ok else "-")
        print(f"| {step} | " + " | ".join(cells) + " |")
    sizes = {t: max((steps[s][t]["repo"] or 0) for s in rows if t in steps[s]) for t in tools}
    cells = [f"{sizes[t]} MB" for t in tools] + ["-"] * (len(peers) + 2)
    print("| repository size | " + " | ".join(cells) + " |")
    for name, lim in limits.items():
        print(f"\nlimit {name} ({COPIER.get(backend, {}).get(name, '?')}): {cell(lim)}")
for b in broken:
    print(f"\nWARNING: {b}: the restore differs from the source")
