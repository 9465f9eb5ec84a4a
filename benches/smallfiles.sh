#!/usr/bin/env bash
# Builds the many-small-files corpus of issue 28: 500 000 files of 0-8 KiB (half text,
# half random bytes) in a maildir-like fan-out (users/NNN/FOLDER/{cur,new}/MSG), as mail
# stores, source trees and node_modules are. gen1 is that tree; gen2 and gen3 are each the
# one before with 1% of the files changed and 1% added. About 2 GB per generation.
# Usage: smallfiles.sh OUT_DIR [FILES]   (FILES defaults to 500000; deterministic)
# Then: MOUNT=0 benches/peers.sh -c OUT_DIR -o RUN_DIR [tools...]  (MOUNT=0: reading
# 500 000 files through each tool's FUSE mount takes many minutes a tool)
set -euo pipefail
out=${1:?usage: smallfiles.sh OUT_DIR [FILES]}
files=${2:-500000}
mkdir -p "$out"
if [[ ! -d $out/gen1 ]]; then
  python3 - "$out/gen1.partial" "$files" <<'PY'
import os, random, sys
root, total = sys.argv[1], int(sys.argv[2])
rng = random.Random(28)
words = [rng.randbytes(rng.randrange(2, 9)).hex()[: rng.randrange(2, 12)] for _ in range(4096)]
folders = ["INBOX", "Sent", "Archive", "lists", "Drafts"]
def text(n):
    out, size = [], 0
    while size < n:
        line = " ".join(rng.choices(words, k=rng.randrange(4, 14))) + "\n"
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:n]
per_dir = 500
for i in range(total):
    d, k = divmod(i, per_dir)
    user, rest = divmod(d, len(folders) * 2)
    folder, sub = divmod(rest, 2)
    path = os.path.join(root, f"users/{user:04}", folders[folder], ("cur", "new")[sub])
    if k == 0:
        os.makedirs(path, exist_ok=True)
    size = rng.randrange(0, 8193)
    body = text(size) if i % 2 == 0 else rng.randbytes(size)
    with open(os.path.join(path, f"{1700000000 + i}.M{i}P{k}.host:2,S"), "wb") as f:
        f.write(body)
PY
  mv "$out/gen1.partial" "$out/gen1"
fi
next_night() { # gen N+1: gen N with 1% of its files changed and 1% added
  local from=$out/gen$1 to=$out/gen$(($1 + 1))
  [[ -d $to ]] && return
  rm -rf "$to.partial"
  cp -a "$from" "$to.partial"
  python3 - "$to.partial" "$1" <<'PY'
import os, random, sys
root, night = sys.argv[1], int(sys.argv[2])
rng = random.Random(28 + night)
paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
for p in rng.sample(paths, len(paths) // 100):        # change 1%
    with open(p, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(rng.randrange(0, size + 1))
        f.write(rng.randbytes(rng.randrange(16, 512)))
dirs = sorted({os.path.dirname(p) for p in paths})
for i in range(len(paths) // 100):                    # add 1%
    with open(os.path.join(rng.choice(dirs), f"added.{night}.{i}.host:2,"), "wb") as f:
        f.write(rng.randbytes(rng.randrange(0, 8193)))
PY
  mv "$to.partial" "$to"
}
next_night 1
next_night 2
du -sh --apparent-size "$out"/gen*
