#!/usr/bin/env bash
# Side-by-side benchmark: vault, restic, rustic, borg and bupstash back up the same
# generations of one source tree (benches/corpus.sh makes them: gen1, gen2 = an upgrade,
# gen3 = small edits, each with a VM-like disk image) into local repositories, then run
# once more with no change, then restore the newest snapshot, then forget the two oldest
# of the four snapshots and prune. The page cache is dropped
# before every step (where permitted), every restore is compared byte for byte with the
# source, and "limit" rows time what the machine itself allows: reading every file cold,
# zstd at vault's level on all cores over the same bytes, reading every file's metadata
# cold (what a run that finds nothing changed cannot avoid), and `cp -a` of the tree.
#
# Usage: benches/peers.sh [-c CORPUS_DIR] [-o OUT_DIR] [TOOL...]
#   defaults: -c /var/tmp/vault-bench/corpus -o /var/tmp/vault-bench/run, all five tools
# Missing tools are installed (apt-get install restic borgbackup libsodium-dev,
# cargo install --locked rustic-rs bupstash); vault is built in release mode.
# Prints one TSV row per (tool, step) to OUT_DIR/results.tsv, then the table with
# vault's ratio to the best peer (and to the limit) for each step.
set -u
here=$(cd "$(dirname "$0")" && pwd)
export RESTIC_PASSWORD=benchpw RUSTIC_PASSWORD=benchpw BORG_PASSPHRASE=benchpw VAULT_PASSWORD=benchpw
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_DISPLAY_PASSPHRASE=no
export RESTIC_CACHE_DIR=${OUT_CACHE:-/var/tmp/vault-bench/cache}/restic
if [[ ${1:-} == _do ]]; then # internal: _do ACTION TOOL OUT
  action=$2 tool=$3 out=$4 src=$4/src r=$4/repo-$3
  export BUPSTASH_REPOSITORY=$r BUPSTASH_KEY=$out/bupstash.key VAULT_CACHE_DIR=$out/cache-vault
  # vault, like bupstash, opens the repository with a key file here, so no password KDF
  # runs per step; the "open" step measures opening with the password instead.
  [[ $action == init || $action == open ]] || export VAULT_KEY_FILE=$out/vault.key
  case $action:$tool in
    init:vault) "$VAULT" init -q --repo "$r" &&
      (umask 077 && "$VAULT" key export --raw --repo "$r" > "$out/vault.key") ;;
    open:vault) "$VAULT" snapshots --repo "$r" > /dev/null ;;
    init:restic) restic init -r "$r" ;;
    init:rustic) rustic init -r "$r" ;;
    init:borg) borg init -e repokey-blake2 "$r" ;;
    init:bupstash) bupstash init && bupstash new-key -o "$BUPSTASH_KEY" ;;
    backup:vault) "$VAULT" backup --repo "$r" "$src" ;;
    backup:restic) restic backup -r "$r" "$src" ;;
    backup:rustic) rustic backup -r "$r" "$src" ;;
    backup:borg) borg create --compression zstd,3 "$r::$(date +%s%N)" "$src" ;;
    backup:bupstash) bupstash put "$src" ;;
    restore:vault) "$VAULT" restore --repo "$r" latest --target "$out/restore" ;;
    restore:restic) restic restore -r "$r" latest --target "$out/restore" ;;
    restore:rustic) rustic restore -r "$r" latest "$out/restore" ;;
    restore:borg) cd "$out/restore" && borg extract "$r::$(borg list --last 1 --short "$r")" ;;
    restore:bupstash) id=$(bupstash list --format=jsonl1 | tail -1 | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])') &&
      bupstash get "id=$id" | tar -x -C "$out/restore" ;;
    # Half the snapshots (the two oldest of four) forgotten, then the space reclaimed.
    # vault's prune is two-phase: with no grace period, one run marks and a second
    # deletes, and both are timed, as what it takes to free the space.
    forget:vault) "$VAULT" forget -q --repo "$r" --keep-last 2 ;;
    forget:restic) restic forget -r "$r" --keep-last 2 ;;
    forget:rustic) rustic forget -r "$r" --keep-last 2 ;;
    forget:borg) borg prune --keep-last 2 "$r" ;;
    forget:bupstash) for id in $(bupstash list --format=jsonl1 | head -2 |
      python3 -c 'import json,sys;[print(json.loads(l)["id"]) for l in sys.stdin]'); do
      bupstash rm "id=$id" || exit 1; done ;;
    prune:vault) "$VAULT" prune --repo "$r" --grace 0s && "$VAULT" prune --repo "$r" --grace 0s ;;
    prune:restic) restic prune -r "$r" ;;
    prune:rustic) rustic prune -r "$r" ;;
    prune:borg) borg compact "$r" ;;
    prune:bupstash) bupstash gc ;;
    read:limit) find "$src" -type f -print0 | xargs -0 -P2 -n64 cat > /dev/null ;;
    zstd:limit) tar -C "$src" -cf - . | zstd -q -"$LEVEL" -T0 > /dev/null ;;
    warm:limit) tar -C "$src" -cf - . | cat > /dev/null ;;
    copy:limit) cp -a "$src" "$out/restore/" ;;
    stat:limit) find "$src" -printf '%s %T@ %C@ %i\n' > /dev/null ;;
    *) echo "unknown $action:$tool" >&2; exit 2 ;;
  esac
  exit
fi

corpus=/var/tmp/vault-bench/corpus out=/var/tmp/vault-bench/run
while getopts c:o: opt; do
  case $opt in c) corpus=$OPTARG ;; o) out=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(vault restic rustic borg bupstash)

need_apt=()
for need in rsync:rsync bc:bc /usr/bin/time:time zstd:zstd mke2fs:e2fsprogs python3:python3; do
  command -v "${need%%:*}" > /dev/null || need_apt+=("${need##*:}")
done
for t in "${tools[@]}"; do
  case $t in
    restic) command -v restic > /dev/null || need_apt+=(restic) ;;
    borg) command -v borg > /dev/null || need_apt+=(borgbackup) ;;
    bupstash) command -v bupstash > /dev/null || need_apt+=(libsodium-dev pkg-config) ;;
  esac
done
if [[ ${#need_apt[@]} -gt 0 ]]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" > /dev/null ||
    { echo "cannot install ${need_apt[*]}" >&2; exit 2; }
fi
for t in rustic:rustic-rs bupstash:bupstash; do
  [[ " ${tools[*]} " == *" ${t%%:*} "* ]] || continue
  command -v "${t%%:*}" > /dev/null || cargo install --locked "${t##*:}" || exit 2
done
export PATH=$HOME/.cargo/bin:$PATH
(cd "$here/.." && cargo build --release --quiet) || exit 2
export VAULT=$here/../target/release/vault
LEVEL=$("$VAULT" init --help | grep -A3 -- --compression | sed -n 's/.*default: \([0-9]*\).*/\1/p' | head -1)
export LEVEL=${LEVEL:-3}

[[ -d $corpus/gen3 ]] || bash "$here/corpus.sh" "$corpus" || exit 2
mkdir -p "$out"; out=$(cd "$out" && pwd)
results=$out/results.tsv
: > "$results"
listing() { (cd "$1" && find . ! -type d -printf '%P %y %s %T@ %m\n' | LC_ALL=C sort); }
copy_gen() { # rsync keeps unchanged files' inodes between generations, as on a real machine
  rsync -a --delete "$1/" "$out/src/"
  # rsync trusts size and mtime: a file changed within the same second would be skipped,
  # and every tool would then back up (and "restore identically") the wrong generation.
  cmp -s <(listing "$1") <(listing "$out/src") ||
    { echo "copy of $1 differs from it (same size and mtime?); rebuild the corpus" >&2; exit 2; }
}
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2> /dev/null || true; }
step() { # tool step action [warm]
  local tool=$1 name=$2 action=$3 t=$out/time.$1.$2
  [[ ${4:-} == warm ]] || drop_caches
  /usr/bin/time -f "%e %U %S %M" -o "$t" "$0" _do "$action" "$tool" "$out" > "$out/log.$tool.$name" 2>&1 ||
    echo "FAILED $tool $name: $(tail -1 "$out/log.$tool.$name")" >&2
  read -r wall user sys rss < <(tail -1 "$t")
  printf '%s\t%s\t%s\t%s\t%d\t%s\n' "$tool" "$name" "$wall" "$(echo "$user + $sys" | bc)" $((rss / 1024)) \
    "$(du -sm "$out/repo-$tool" 2> /dev/null | cut -f1)" | tee -a "$results"
}
printf 'tool\tstep\twall_s\tcpu_s\tmaxrss_mb\trepo_mb\n'
# The machine's own limits: reading the first two generations (the backups that read
# every file), compressing the first, the metadata of the last (all a no-change run must
# read) and copying it.
copy_gen "$corpus/gen1"
step limit read-gen1 read
"$0" _do warm limit "$out" # zstd's limit is its computing alone: the bytes are cached
step limit zstd-gen1 zstd warm
copy_gen "$corpus/gen2" # the upgrade backup reads every file too
step limit read-gen2 read
rm -rf "$out/restore"; mkdir -p "$out/restore"
copy_gen "$corpus/gen3"
step limit stat-gen3 stat
step limit copy-gen3 copy
rm -rf "$out/restore"
for tool in "${tools[@]}"; do
  rm -rf "$out/repo-$tool" "$out/src" "$out/cache-vault"
  "$0" _do init "$tool" "$out" > "$out/log.$tool.init" 2>&1 || { echo "FAILED init $tool" >&2; continue; }
  for g in "$corpus"/gen*; do
    copy_gen "$g"
    step "$tool" "backup-${g##*/}" backup
  done
  step "$tool" backup-nochange backup
  [[ $tool == vault ]] && step vault open-with-password open
  rm -rf "$out/restore"; mkdir -p "$out/restore"
  step "$tool" restore restore
  got=$(find "$out/restore" -type d -path "*${out#/}/src" | head -1)
  if ! diff -r --no-dereference "$out/src" "${got:-$out/restore}" > "$out/diff.$tool" 2>&1; then
    echo "RESTORE DIFFERS $tool: see $out/diff.$tool" >&2
    printf '%s\trestore-identical\tno\n' "$tool" >> "$results"
  fi
  rm -rf "$out/restore"
  step "$tool" forget-half forget
  step "$tool" prune prune
done
python3 "$here/table.py" "$results"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
