#!/usr/bin/env python3
"""Turns benches/peers.sh's results.tsv into a Markdown table with vault's ratios.

For each step: every tool's wall seconds, CPU seconds, peak RSS and repository size;
then vault's ratio to the best peer (wall, RSS) and, for the first two backups and the
restore, to the machine's limit (max of cold read and zstd for the first backup, cold
read for the upgrade, which reads every file again, a cold walk reading every file's
metadata for the no-change run, cp -a for a restore). Usage: table.py results.tsv
"""
import sys
from collections import defaultdict

rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
data = defaultdict(dict)  # step -> tool -> (wall, cpu, rss, repo)
broken = set()
for r in rows:
    if r[1] == "restore-identical":
        broken.add(r[0])
        continue
    tool, step, wall, cpu, rss, repo = (r + [""] * 6)[:6]
    data[step][tool] = (float(wall), float(cpu), int(rss), int(repo) if repo else None)

steps = [s for s in data if not s.startswith(("read", "zstd", "stat", "copy"))]
tools = sorted({t for s in steps for t in data[s]}, key=lambda t: (t != "vault", t))
limit = data
lim = {}
if "read-gen1" in data and "zstd-gen1" in data:
    lim["backup-gen1"] = max(data["read-gen1"]["limit"][0], data["zstd-gen1"]["limit"][0])
if "read-gen2" in data:
    lim["backup-gen2"] = data["read-gen2"]["limit"][0]
if "stat-gen3" in data:
    lim["backup-nochange"] = data["stat-gen3"]["limit"][0]
if "copy-gen3" in data:
    lim["restore"] = data["copy-gen3"]["limit"][0]

def cell(v):
    return "-" if v is None else f"{v:g}"

print("| step | " + " | ".join(tools) + " | vault / best peer | vault / limit |")
print("|---" * (len(tools) + 3) + "|")
for step in steps:
    peers = {t: v for t, v in data[step].items() if t != "vault"}
    best = min(peers.items(), key=lambda kv: kv[1][0]) if peers else None
    v = data[step].get("vault")
    cells = []
    for t in tools:
        x = data[step].get(t)
        cells.append("-" if x is None else f"{x[0]:.2f} s, {x[2]} MB")
    ratio = f"{v[0] / best[1][0]:.2f}x ({best[0]})" if v and best and best[1][0] > 0 else "-"
    to_lim = f"{v[0] / lim[step]:.2f}x ({lim[step]:.2f} s)" if v and step in lim else "-"
    print(f"| {step} | " + " | ".join(cells) + f" | {ratio} | {to_lim} |")
last = steps[-1] if steps else None
# The size once everything is backed up; after prune it has its own line.
kept = [s for s in steps if s not in ("forget-half", "prune")]
sizes = {t: data[s][t][3] for s in kept for t in data[s] if data[s][t][3] is not None}
if sizes:
    peers = {t: m for t, m in sizes.items() if t != "vault"}
    line = " | ".join(f"{sizes.get(t, '-')} MB" for t in tools)
    best = min(peers.items(), key=lambda kv: kv[1]) if peers else None
    ratio = f"{sizes['vault'] / best[1]:.2f}x ({best[0]})" if "vault" in sizes and best else "-"
    print(f"| repository size | {line} | {ratio} | - |")
if "prune" in data:
    after = {t: v[3] for t, v in data["prune"].items() if v[3] is not None}
    line = " | ".join(f"{after.get(t, '-')} MB" for t in tools)
    print(f"| size after forget + prune | {line} | - | - |")
for s in ("read-gen1", "zstd-gen1", "read-gen2", "stat-gen3", "copy-gen3"):
    if s in data:
        print(f"\nlimit {s}: {data[s]['limit'][0]:.2f} s wall, {data[s]['limit'][1]:.2f} s CPU")
for t in sorted(broken):
    print(f"\nWARNING: {t}'s restore differs from the source")
