#!/usr/bin/env bash
# How vault's first backup and its restore scale with the cores they may use (issue 28,
# item 5): for each core count C, the commands are pinned to the first C cores with
# taskset (vault chooses its worker threads from the cores it may run on), and timed
# against the machine's limit on the same cores, zstd at vault's level with C threads over
# the same bytes. Every step runs with the source in the page cache (read once before),
# so that the figures measure the CPU work, not the disk; restore writes to a fresh
# directory and is compared with the source.
#
# Usage: benches/scaling.sh [SOURCE] [WORK]
#   SOURCE defaults to /var/tmp/vault-bench/corpus/gen1 (benches/corpus.sh makes it),
#   WORK to /var/tmp/vault-bench/scaling. CORES="1 2 4 8" chooses the counts (default:
#   every count from 1 to nproc). VAULT=path (default target/release/vault, built if
#   missing). Prints TSV rows (cores, step, wall s, cpu s, peak RSS MiB), then for each
#   count backup/zstd and the speed-up over one core.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${1:-/var/tmp/vault-bench/corpus/gen1}
work=${2:-/var/tmp/vault-bench/scaling}
VAULT=${VAULT:-$here/../target/release/vault}
[[ -x $VAULT ]] || (cd "$here/.." && cargo build --release --quiet)
[[ -d $src ]] || { echo "no source at $src (benches/corpus.sh makes it)" >&2; exit 2; }
command -v taskset > /dev/null || { echo "taskset (util-linux) is needed" >&2; exit 2; }
max=$(nproc --all)
read -r -a counts <<< "${CORES:-$(seq -s ' ' 1 "$max")}"
LEVEL=$("$VAULT" init --help | grep -A3 -- --compression | sed -n 's/.*default: \([0-9]*\).*/\1/p' | head -1)
LEVEL=${LEVEL:-3}
export VAULT_PASSWORD=bench VAULT_CACHE_DIR=$work/cache
# A previous run's trees go aside and are deleted at the end (see the loop); a rerun
# within about five minutes of that deletion still pays for it.
trash=$work.trash
mkdir -p "$trash"
[[ ! -e $work ]] || mv "$work" "$trash/previous.$$"
mkdir -p "$work"
results=$work/results.tsv
: > "$results"
timed() { # cores step command...: one TSV row
  local c=$1 name=$2 t=$work/time
  shift 2
  # The previous step's writeback (2 GB restored, or deleted) would otherwise land on
  # this one: a restore after another took 34 s of system time in the journal.
  sync
  /usr/bin/time -f "%e %U %S %M" -o "$t" taskset -c "0-$((c - 1))" "$@" > "$work/log.$c.$name" 2>&1 ||
    { echo "FAILED $name on $c cores: $(tail -1 "$work/log.$c.$name")" >&2; exit 1; }
  read -r wall user sys rss < "$t"
  printf '%s\t%s\t%s\t%s\t%d\n' "$c" "$name" "$wall" "$(echo "$user + $sys" | bc)" $((rss / 1024)) | tee -a "$results"
}
tar -C "$src" -cf - . | cat > /dev/null # into the page cache
printf 'cores\tstep\twall_s\tcpu_s\tmaxrss_mb\n'
for c in "${counts[@]}"; do
  ((c >= 1 && c <= max)) || { echo "cannot pin to $c cores (this machine has $max)" >&2; exit 2; }
  timed "$c" zstd sh -c "tar -C '$src' -cf - . | zstd -q -$LEVEL -T$c > /dev/null"
  rm -rf "$work/repo" "$work/cache"
  # Not deleted until the end: ext4 skips inodes freed in the last minutes when it
  # allocates (recently_deleted), and a restore right after deleting 60 000 files spent
  # 37 s of system time scanning past them.
  [[ ! -e $work/restore ]] || mv "$work/restore" "$trash/restore.$c"
  "$VAULT" init -q --repo "$work/repo"
  (umask 077 && "$VAULT" key export --raw --repo "$work/repo" > "$work/vault.key")
  VAULT_KEY_FILE=$work/vault.key timed "$c" backup "$VAULT" backup -q --repo "$work/repo" "$src"
  mkdir -p "$work/restore"
  VAULT_KEY_FILE=$work/vault.key timed "$c" restore "$VAULT" restore -q --repo "$work/repo" latest --target "$work/restore"
  diff -r --no-dereference "$src" "$work/restore$src" > /dev/null ||
    { echo "restore on $c cores differs from the source" >&2; exit 1; }
done
mv "$work/restore" "$trash/restore.last"
rm -rf "$trash"
echo
awk -F'\t' '{ t[$1, $2] = $3; if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } }
  END {
    printf "cores\tbackup/zstd\tbackup speed-up\trestore speed-up\n"
    for (i = 1; i <= n; i++) {
      c = order[i]
      printf "%s\t%.2fx\t%.2fx\t%.2fx\n", c, t[c, "backup"] / t[c, "zstd"],
        t[order[1], "backup"] / t[c, "backup"], t[order[1], "restore"] / t[c, "restore"]
    }
  }' "$results"
