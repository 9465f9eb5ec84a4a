#!/usr/bin/env bash
# Memory per blob stored (issue 28, item 3): a repository of about BLOBS blobs, made with
# vault's smallest chunk (1 KiB average) from a generated stream, and the peak RSS and
# time of each command on it: backup, no-change backup, restore of one 1 MiB file,
# check, forget and prune. Run it at two sizes in one sitting: what grows with the blob
# count is what a command keeps per blob. vault's default chunk (128 KiB) makes about
# 8.4 million blobs per TiB stored, so bytes per blob x 8.4 = MB per TiB.
# Usage: large-index.sh OUT_DIR [BLOBS]   (BLOBS defaults to 50000000)
# VAULT: the binary (defaults to target/release/vault).
#
# The stream is numbered lines, each with 8 random hex digits: every chunk differs from
# every other and the chunker finds its cut points as in any data (in purely regular
# lines it falls into their period, and the blob count varies threefold with the key),
# yet it compresses about 6:1: 41 million blobs (85 GB backed up from standard input, in
# 50 parts) took 13.4 GB on disk and half an hour.
set -euo pipefail
out=${1:?usage: large-index.sh OUT_DIR [BLOBS]}
blobs=${2:-50000000}
here=$(cd "$(dirname "$0")" && pwd)
vault=${VAULT:-$here/../target/release/vault}
mkdir -p "$out"
out=$(cd "$out" && pwd)
src=$out/src repo=$out/repo
export VAULT_CACHE_DIR=$out/cache

step() { # name, command...: one line of figures
  local name=$1 t
  shift
  sync
  /usr/bin/time -f '%e %M' -o "$out/$name.time" "$@" > /dev/null 2> "$out/$name.err" || {
    echo "$name: failed"; tail -3 "$out/$name.err"; return 1; }
  t=$(tail -1 "$out/$name.time")
  printf '%-16s %8s s %6d MB\n' "$name" "${t% *}" "$((${t#* } / 1024))"
}
# `lines FROM COUNT`: COUNT lines of 69 bytes from line FROM on, deterministic (a C loop:
# a shell or Python one would be the bottleneck at 85 GB). The mean chunk came out at
# about 2050 bytes, 30 lines.
gen=$out/lines
if [[ ! -x $gen ]]; then
  cat > "$out/lines.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
int main(int argc, char **argv) {
  unsigned long long from = strtoull(argv[1], 0, 10), n = strtoull(argv[2], 0, 10);
  unsigned long long x = 0x9e3779b97f4a7c15ULL ^ from;
  static char buf[1 << 16];
  size_t at = 0;
  for (unsigned long long i = from; i < from + n; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17; /* xorshift64 */
    at += sprintf(buf + at, "line %015llu %08llx of a stream that no other line repeats\n",
                  i, x & 0xffffffffULL);
    if (at > sizeof buf - 128) { fwrite(buf, 1, at, stdout); at = 0; }
  }
  fwrite(buf, 1, at, stdout);
  return 0;
}
C
  gcc -O2 -o "$gen" "$out/lines.c"
fi

rm -rf "$repo" "$out/cache" "$out/restore" "$src"
mkdir -p "$src"
head -c $((1 << 20)) /dev/urandom > "$src/one.bin"
echo "a small file beside it" > "$src/two.txt"
VAULT_PASSWORD=bench "$vault" init -q --repo "$repo" --chunk-size 1K
(umask 077 && VAULT_PASSWORD=bench "$vault" key export --raw --repo "$repo" > "$out/key")
export VAULT_KEY_FILE=$out/key # opened as bupstash is: no password KDF in the figures
echo "vault $("$vault" --version | cut -d' ' -f2), $(date -u +%FT%TZ), target $blobs blobs"
# In parts of a million blobs: one file of 50 million chunks would list them all in one
# tree of over 3 GB, past what a tree may take.
parts=$(((blobs + 999999) / 1000000)) per=$((blobs * 2050 / 69 / ((blobs + 999999) / 1000000)))
part() { echo "\"$gen\" $(($1 * per)) $per | \"$vault\" backup -q --repo \"$repo\" --stdin --stdin-filename stream-$1.txt"; }
start=$(date +%s.%N)
for ((i = 0; i < parts - 1; i++)); do bash -c "$(part "$i")"; done
step backup-last-part bash -c "$(part $((parts - 1)))"
echo "backup-stream      $(echo "$(date +%s.%N) - $start" | bc | xargs printf '%.0f') s in $parts backups"

step backup "$vault" backup -q --repo "$repo" "$src"
"$vault" stats --mode raw-data --json --repo "$repo" | python3 -c '
import json, sys
s = json.load(sys.stdin)
r = s["repository"]
print("repository: %d blobs in %d packs, %d MB" % (r["blobs"], r["packs"], r["pack_bytes"] / 1e6))'
step backup-nochange "$vault" backup -q --repo "$repo" "$src"
step restore-one "$vault" restore -q --repo "$repo" latest --include "$src/one.bin" --target "$out/restore"
cmp "$src/one.bin" "$out/restore$src/one.bin"
step check "$vault" check -q --repo "$repo"
streams=$("$vault" snapshots --json --repo "$repo" |
  python3 -c 'import json, sys; print(" ".join(s["id"] for s in json.load(sys.stdin) if s["paths"][0].startswith("/stream-")))')
# shellcheck disable=SC2086 # one argument a snapshot
step forget "$vault" forget -q --repo "$repo" $streams
step prune-mark "$vault" prune -q --repo "$repo" --grace 0s
step prune-delete "$vault" prune -q --repo "$repo" --grace 0s
du -sb "$repo" | awk '{printf "repository after prune %d MB\n", $1 / 1e6}'
