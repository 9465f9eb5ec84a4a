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
# vault, restic and rustic also mount the newest snapshot (FUSE; mounting included in
# each time) to read the largest file, walk every file's metadata
# and read every file; each row's peak RSS is the mount's, next to the restore's
# (MOUNT=0 leaves the mount steps out).
#
# Usage: benches/peers.sh [-c CORPUS_DIR] [-o OUT_DIR] [TOOL...]
#   defaults: -c /var/tmp/vault-bench/corpus -o /var/tmp/vault-bench/run, all five tools
# Missing tools are installed (apt-get install restic borgbackup libsodium-dev,
# cargo install --locked rustic-rs (with its mount feature) and bupstash); vault is built in release mode.
# Prints one TSV row per (tool, step) to OUT_DIR/results.tsv, then the table with
# vault's ratio to the best peer (and to the limit) for each step.
#
# Remote mode (issue 23): REMOTE=sftp, s3 or all benches/peers.sh [-c ...] [-o ...] [TOOL...]
# puts the repositories on an SFTP server (sshd on loopback with throwaway keys) and an S3
# server (a one-node Garage), each reached through examples/latency_proxy.rs, which adds
# RTT_MS of round-trip time (default 50) and, with RATE_MBIT set, caps each direction's
# rate. Steps: each generation's backup, a no-change backup, a restore (compared with the
# source), `check --read-data`, and vault's `verify`. The limit rows are a plain copier of
# vault's repository through the same proxy: up (scp -r for SFTP, rclone copy for S3, of
# the repository as it was after gen1), again with nothing to copy (rclone copy; for SFTP,
# one sftp session listing the repository) and down (the final repository). Every row
# also has the megabytes and round trips through the proxy. VAULT_REMOTE_FLAGS is added
# to vault's timed commands (e.g. VAULT_REMOTE_FLAGS='--connections 8'). This mode
# installs no backup tool and keeps the page cache (its steps measure the network); only
# vault and restic have remote steps, other tools are reported as not installed (or
# skipped). It needs sshd, scp, sftp, rclone and garage, which .ci/run installs. (Not
# s3s-fs, the tests' S3 server: it takes the empty `delimiter=` that restic and rclone
# send as a delimiter, so restic's check finds no packs, and answers a HEAD of a
# "directory" with 500, which rclone retries for 90 s.)
set -u
here=$(cd "$(dirname "$0")" && pwd)
export RESTIC_PASSWORD=benchpw RUSTIC_PASSWORD=benchpw BORG_PASSPHRASE=benchpw VAULT_PASSWORD=benchpw
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_DISPLAY_PASSPHRASE=no
export RESTIC_CACHE_DIR=${OUT_CACHE:-/var/tmp/vault-bench/cache}/restic
if [[ ${1:-} == _do ]]; then # internal: _do ACTION TOOL OUT
  action=$2 tool=$3 out=$4 src=$4/src r=${BENCH_REPO:-$4/repo-$3} # remote mode: a URL
  export BUPSTASH_REPOSITORY=$r BUPSTASH_KEY=$out/bupstash.key VAULT_CACHE_DIR=$out/cache-vault
  # vault, like bupstash, opens the repository with a key file here, so no password KDF
  # runs per step; the "open" step measures opening with the password instead.
  [[ $action == init || $action == open ]] || export VAULT_KEY_FILE=$out/vault.key
  # Remote mode: restic's ssh goes through the proxy's port with the throwaway key.
  restic() { command restic ${RESTIC_SFTP_COMMAND:+-o "sftp.command=$RESTIC_SFTP_COMMAND"} "$@"; }
  mount_read() { # what: mounts the newest snapshot at $out/mnt, reads it, unmounts
    local mnt=$out/mnt dir pid i biggest
    mkdir -p "$mnt"
    case $tool in # where the source directory appears in each tool's mount
      vault) "$VAULT" mount --repo "$r" "$mnt" & dir=$mnt/latest$src ;;
      restic) restic mount -r "$r" "$mnt" & dir=$mnt/snapshots/latest$src ;;
      rustic) rustic mount -r "$r" -e "$mnt" latest & dir=$mnt$src ;;
    esac
    pid=$!
    for ((i = 0; i < 600; i++)); do [[ -d $dir ]] && break; sleep 0.1; done
    [[ -d $dir ]] || { echo "$tool: $dir did not appear"; kill "$pid"; return 1; }
    case $1 in
      largest) biggest=$(cd "$src" && find . -type f -printf '%s %P\n' | sort -n | tail -1 | cut -d' ' -f2-)
        cat "$dir/$biggest" > /dev/null ;;
      walk) find "$dir" -printf '%s %T@ %m\n' > /dev/null ;;
      tree) find "$dir" -type f -print0 | xargs -0 -P2 -n64 cat > /dev/null ;;
    esac
    local rc=$?
    fusermount3 -u "$mnt" 2> /dev/null || umount "$mnt"
    wait "$pid"
    return $rc
  }
  case $action:$tool in
    init:vault) "$VAULT" init -q --repo "$r" &&
      (umask 077 && "$VAULT" key export --raw --repo "$r" > "$out/vault.key") ;;
    open:vault) "$VAULT" snapshots --repo "$r" > /dev/null ;;
    init:restic) restic init -r "$r" ;;
    init:rustic) rustic init -r "$r" ;;
    init:borg) borg init -e repokey-blake2 "$r" ;;
    init:bupstash) bupstash init && bupstash new-key -o "$BUPSTASH_KEY" ;;
    backup:vault) "$VAULT" backup --repo "$r" ${VAULT_REMOTE_FLAGS:-} "$src" ;;
    backup:restic) restic backup -r "$r" "$src" ;;
    backup:rustic) rustic backup -r "$r" "$src" ;;
    backup:borg) borg create --compression zstd,3 "$r::$(date +%s%N)" "$src" ;;
    backup:bupstash) bupstash put "$src" ;;
    restore:vault) "$VAULT" restore --repo "$r" ${VAULT_REMOTE_FLAGS:-} latest --target "$out/restore" ;;
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
    # Through a FUSE mount of the newest snapshot, mounting and unmounting included:
    # the largest file, every file's metadata, every file's bytes (as read:limit does).
    mount-*:vault | mount-*:restic | mount-*:rustic) mount_read "${action#mount-}" ;;
    read:limit) find "$src" -type f -print0 | xargs -0 -P2 -n64 cat > /dev/null ;;
    zstd:limit) tar -C "$src" -cf - . | zstd -q -"$LEVEL" -T0 > /dev/null ;;
    warm:limit) tar -C "$src" -cf - . | cat > /dev/null ;;
    copy:limit) cp -a "$src" "$out/restore/" ;;
    stat:limit) find "$src" -printf '%s %T@ %C@ %i\n' > /dev/null ;;
    # Remote mode only: reading everything back, and the plain copier of vault's
    # repository through the same proxy ($r is where it goes or comes from).
    check:vault) "$VAULT" check --read-data --repo "$r" ${VAULT_REMOTE_FLAGS:-} ;;
    check:restic) restic check --read-data -r "$r" ;;
    verify:vault) "$VAULT" verify --repo "$r" ${VAULT_REMOTE_FLAGS:-} ;;
    scp-up:limit) scp -q -r -P "$PROXY_PORT" $SSH_OPTS "$out/limit-src" "$SSH_DEST:$r" ;;
    sftp-ls:limit) echo "ls -l $r" | sftp -q -b - -P "$PROXY_PORT" $SSH_OPTS "$SSH_DEST" > /dev/null ;;
    scp-down:limit) scp -q -r -P "$PROXY_PORT" $SSH_OPTS "$SSH_DEST:$r" "$out/restore/" ;;
    rclone-up:limit | rclone-again:limit) rclone -q copy "$out/limit-src" "bench:$r" ;;
    rclone-down:limit) rclone -q copy "bench:$r" "$out/restore/repo-vault" ;;
    *) echo "unknown $action:$tool" >&2; exit 2 ;;
  esac
  exit
fi

corpus=/var/tmp/vault-bench/corpus out=/var/tmp/vault-bench/run remote=${REMOTE:-}
while getopts c:o: opt; do
  case $opt in c) corpus=$OPTARG ;; o) out=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(vault restic rustic borg bupstash)
case $remote in
  '') unset VAULT_REMOTE_FLAGS BENCH_REPO BENCH_REPO_DIR PROXY_STATS ;;
  sftp | s3) backends=("$remote") ;;
  all) backends=(sftp s3) ;;
  *) echo "REMOTE must be sftp, s3 or all" >&2; exit 2 ;;
esac
if [[ -n $remote ]]; then # nothing is installed: a missing tool is reported, not awaited
  kept=()
  for t in "${tools[@]}"; do
    if [[ $t != vault ]] && ! command -v "$t" > /dev/null; then echo "$t: not installed"
    elif [[ $t == vault || $t == restic ]]; then kept+=("$t")
    else echo "$t: no remote steps here yet, skipped"; fi
  done
  tools=("${kept[@]}")
fi

need_apt=()
for need in rsync:rsync bc:bc /usr/bin/time:time zstd:zstd mke2fs:e2fsprogs python3:python3; do
  command -v "${need%%:*}" > /dev/null || need_apt+=("${need##*:}")
done
for t in "${tools[@]}"; do
  [[ -z $remote ]] || break
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
export PATH=$HOME/.cargo/bin:$PATH
# rustic's mount is a cargo feature, off in crates.io's default build (it needs libfuse3).
rustic_mounts() { rustic mount --help > /dev/null 2>&1; }
# libfuse3-dev unpacked, not installed (its dependencies need not resolve): the linker and
# pkg-config need only its fuse3.pc and libfuse3.so, beside the installed libfuse3.so.3.
fuse3_dev_unpacked() {
  local d=${OUT_CACHE:-/var/tmp/vault-bench/cache}/fuse3-dev lib
  mkdir -p "$d" && (cd "$d" && apt-get download libfuse3-dev > /dev/null 2>&1 &&
    dpkg -x libfuse3-dev_*.deb root) || { echo "cannot get libfuse3-dev" >&2; return 1; }
  lib=$(dirname "$(find "$d/root" -name fuse3.pc)")/..
  sed -i "s|^prefix=.*|prefix=$d/root/usr|" "$lib/pkgconfig/fuse3.pc"
  ln -sf "$(ldconfig -p | awk '/libfuse3.so.3 /{print $NF; exit}')" "$lib/libfuse3.so"
  export PKG_CONFIG_PATH=$lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
}
for t in rustic:rustic-rs bupstash:bupstash; do
  [[ -z $remote && " ${tools[*]} " == *" ${t%%:*} "* ]] || continue
  case $t in
    rustic:*) command -v rustic > /dev/null && { [[ ${MOUNT:-1} == 0 ]] || rustic_mounts; } && continue
      command -v pkg-config > /dev/null || apt-get install -y -qq pkg-config > /dev/null
      pkg-config --exists fuse3 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfuse3-dev > /dev/null ||
        fuse3_dev_unpacked # a Debian mirror can be out of step with the installed libpcre2
      cargo install --locked --force --features mount rustic-rs || exit 2 ;;
    *) command -v "${t%%:*}" > /dev/null || cargo install --locked "${t##*:}" || exit 2 ;;
  esac
done
# The proxy apart: built with vault, the binary would get the dev-dependencies' features.
(cd "$here/.." && cargo build --release --quiet && { [[ -z $remote ]] ||
  cargo build --release --quiet --example latency_proxy; }) || exit 2
export VAULT=$here/../target/release/vault PROXY=$here/../target/release/examples/latency_proxy
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
repo_mb() { # dir: its size in MB; remote mode's S3 repositories are direct:BUCKET/PREFIX
  case $1 in
    direct:*) rclone size --json "$1" 2> /dev/null |
      python3 -c 'import json,sys; print(-(-json.load(sys.stdin)["bytes"] >> 20))' ;;
    *) du -sm "$1" 2> /dev/null | cut -f1 ;;
  esac
}
proxy_counts() { # remote mode: bytes (both ways) and round trips through the proxy so far
  sleep 0.15 # the proxy writes its counters at most every 50 ms
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["bytes_up"] + s["bytes_down"], s["round_trips"])' "$PROXY_STATS"
}
step() { # tool step action [warm]
  local tool=$1 name=$2 action=$3 t=$out/time.$1.$2 before="" row
  [[ ${4:-} == warm || -n $remote ]] || drop_caches
  [[ -z ${PROXY_STATS:-} ]] || before=$(proxy_counts)
  /usr/bin/time -f "%e %U %S %M" -o "$t" "$0" _do "$action" "$tool" "$out" > "$out/log.$tool.$name" 2>&1 ||
    echo "FAILED $tool $name: $(tail -1 "$out/log.$tool.$name")" >&2
  read -r wall user sys rss < <(tail -1 "$t")
  row=$(printf '%s\t%s\t%s\t%s\t%d\t%s' "$tool" "$name" "$wall" "$(echo "$user + $sys" | bc)" $((rss / 1024)) \
    "$(repo_mb "${BENCH_REPO_DIR:-$out/repo-$tool}")")
  if [[ -n $before ]]; then # megabytes moved and round trips, through the proxy
    read -r bytes0 trips0 <<< "$before"
    read -r bytes1 trips1 < <(proxy_counts)
    row+=$(awk -v b="$((bytes1 - bytes0))" -v t="$((trips1 - trips0))" 'BEGIN { printf "\t%.1f\t%d", b / 1e6, t }')
  fi
  printf '%s\n' "$row" | tee -a "$results"
}
restore_step() { # tool step: restores the newest snapshot and compares it with the source
  local tool=$1 got
  rm -rf "$out/restore"; mkdir -p "$out/restore"
  step "$tool" "$2" restore
  got=$(find "$out/restore" -type d -path "*${out#/}/src" | head -1)
  if ! diff -r --no-dereference "$out/src" "${got:-$out/restore}" > "$out/diff.$tool.$2" 2>&1; then
    echo "RESTORE DIFFERS $tool: see $out/diff.$tool.$2" >&2
    printf '%s\t%s-identical\tno\n' "$tool" "$2" >> "$results"
  fi
  rm -rf "$out/restore"
}
if [[ -n $remote ]]; then
  # Remote mode: each backend's server on loopback behind the latency proxy; every tool's
  # steps, then the copier's, through it.
  export RTT_MS=${RTT_MS:-50} VAULT_REMOTE_FLAGS=${VAULT_REMOTE_FLAGS:-}
  # Garage's key ids are GK and 24 hex digits, its secrets 64 hex digits.
  export AWS_ACCESS_KEY_ID=GK0123456789abcdef01234567
  export AWS_SECRET_ACCESS_KEY=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  for remote_name in BENCH DIRECT; do # rclone's remotes: through the proxy, and direct
    for kv in TYPE=s3 PROVIDER=Other REGION=us-east-1 ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID \
      SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY; do export "RCLONE_CONFIG_${remote_name}_$kv"; done
  done
  unset AWS_CA_BUNDLE # rclone 1.60 fails on it even for a plain-http endpoint
  keys=$out/sshd
  export SSH_DEST=$(id -un)@127.0.0.1
  export SSH_OPTS="-i $keys/userkey -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
  pids=()
  stop_ssh_masters() { # vault's SFTP backend leaves `ssh -M -f -N` masters; ours use our key
    local pid
    for pid in $(pgrep -f -- "-M -f -N .*-i $keys/userkey"); do kill "$pid"; done
  }
  stop() { stop_ssh_masters; [[ ${#pids[@]} -eq 0 ]] || { kill "${pids[@]}"; wait; } 2> /dev/null; }
  trap stop EXIT
  free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  listening() { # port pid: waits until the port takes connections, while pid lives
    for _ in $(seq 400); do
      (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return
      kill -0 "$2" 2> /dev/null || break
      sleep 0.05
    done
    echo "nothing listens on $1" >&2; exit 2
  }
  start_proxy() { # name upstream_port: sets PROXY_PORT and PROXY_STATS
    export PROXY_STATS=$out/proxy-$1.json
    rm -f "$out/proxy-$1.port"
    "$PROXY" --upstream "127.0.0.1:$2" --rtt-ms "$RTT_MS" ${RATE_MBIT:+--rate-mbit "$RATE_MBIT"} \
      --stats "$PROXY_STATS" > "$out/proxy-$1.port" &
    pids+=($!)
    until [[ -s $out/proxy-$1.port ]]; do kill -0 "${pids[-1]}" || exit 2; sleep 0.02; done
    read -r PROXY_PORT < "$out/proxy-$1.port"
    export PROXY_PORT
  }
  start_sftp() { # sshd with throwaway keys, as tests/common/servers.rs starts it
    rm -rf "$keys" "$out/remote-sftp"; mkdir -p "$keys" "$out/remote-sftp" /run/sshd
    for k in hostkey userkey; do ssh-keygen -q -t ed25519 -N '' -f "$keys/$k" || exit 2; done
    cp "$keys/userkey.pub" "$keys/authorized_keys"
    local port; port=$(free_port)
    printf '%s\n' "Port $port" "ListenAddress 127.0.0.1" "HostKey $keys/hostkey" \
      "AuthorizedKeysFile $keys/authorized_keys" "PermitRootLogin yes" "PasswordAuthentication no" \
      "KbdInteractiveAuthentication no" "UsePAM no" "StrictModes no" "PidFile $keys/sshd.pid" \
      "Subsystem sftp internal-sftp" > "$keys/sshd_config"
    "$(command -v sshd || echo /usr/sbin/sshd)" -f "$keys/sshd_config" -D -e 2> "$out/log.sshd" &
    pids+=($!)
    listening "$port" $!
    start_proxy sftp "$port"
    rdir=$out/remote-sftp ldir=$out/remote-sftp # where the server keeps a path: the same
  }
  start_s3() { # a one-node Garage with bucket "bench"
    local g=$out/remote-s3 rpc s3
    rm -rf "$g"; mkdir -p "$g"
    rpc=$(free_port) s3=$(free_port)
    printf '%s\n' "metadata_dir = \"$g/meta\"" "data_dir = \"$g/data\"" 'db_engine = "sqlite"' \
      'replication_factor = 1' "rpc_bind_addr = \"127.0.0.1:$rpc\"" "rpc_public_addr = \"127.0.0.1:$rpc\"" \
      "rpc_secret = \"$(python3 -c 'import secrets; print(secrets.token_hex(32))')\"" \
      '[s3_api]' 's3_region = "us-east-1"' "api_bind_addr = \"127.0.0.1:$s3\"" \
      'root_domain = ".s3.garage.localhost"' > "$g/garage.toml"
    RUST_LOG=warn garage -c "$g/garage.toml" server > "$out/log.garage" 2>&1 &
    pids+=($!)
    listening "$s3" $!
    admin() { # a garage command, retried while the node starts; prints its output
      for _ in $(seq 100); do garage -c "$g/garage.toml" "$@" 2>> "$out/log.garage" && return; sleep 0.3; done
      echo "garage $* failed: see $out/log.garage" >&2; exit 2
    }
    local id; id=$(admin node id -q)
    { admin layout assign -z dc1 -c 1G "${id%%@*}" && admin layout apply --version 1 &&
      admin bucket create bench && admin key import --yes -n bench "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" &&
      admin bucket allow --read --write --owner bench --key bench; } >> "$out/log.garage"
    export RCLONE_CONFIG_DIRECT_ENDPOINT=http://127.0.0.1:$s3
    start_proxy s3 "$s3"
    export RCLONE_CONFIG_BENCH_ENDPOINT=http://127.0.0.1:$PROXY_PORT
    rdir=bench ldir=direct:bench # Garage keeps blocks, not files: sizes are asked directly
  }
  at() { # backend tool: the tool's repository URL, and the directory the server keeps it in
    local p=127.0.0.1:$PROXY_PORT
    unset RESTIC_SFTP_COMMAND
    case $1:$2 in
      sftp:vault) BENCH_REPO="sftp://$SSH_DEST:$PROXY_PORT$rdir/repo-vault?key=$keys/userkey&known_hosts=accept" ;;
      sftp:restic) BENCH_REPO=sftp:$SSH_DEST:$rdir/repo-restic
        export RESTIC_SFTP_COMMAND="ssh -p $PROXY_PORT $SSH_OPTS $SSH_DEST -s sftp" ;;
      s3:vault) BENCH_REPO="s3://$rdir/repo-vault?endpoint=http://$p&region=us-east-1" ;;
      s3:restic) BENCH_REPO=s3:http://$p/$rdir/repo-restic ;;
    esac
    export BENCH_REPO BENCH_REPO_DIR=$ldir/repo-$2
  }
  for need in sshd:sftp scp:sftp sftp:sftp garage:s3 rclone:s3; do
    [[ " ${backends[*]} " != *" ${need##*:} "* ]] || command -v "${need%%:*}" > /dev/null ||
      [[ -x /usr/sbin/${need%%:*} ]] || { echo "${need%%:*} is not installed (bash .ci/run installs it)" >&2; exit 2; }
  done
  rm -rf "$out/limit-src"
  echo "# REMOTE=$remote RTT_MS=$RTT_MS${RATE_MBIT:+ RATE_MBIT=$RATE_MBIT}${VAULT_REMOTE_FLAGS:+ VAULT_REMOTE_FLAGS=$VAULT_REMOTE_FLAGS}"
  printf 'tool\tstep\twall_s\tcpu_s\tmaxrss_mb\trepo_mb\tmoved_mb\tround_trips\n'
  for b in "${backends[@]}"; do
    "start_$b"
    for tool in "${tools[@]}"; do
      rm -rf "$out/src" "$out/cache-vault"
      at "$b" "$tool"
      "$0" _do init "$tool" "$out" > "$out/log.$tool.$b:init" 2>&1 ||
        { echo "FAILED init $tool on $b: $(tail -1 "$out/log.$tool.$b:init")" >&2; continue; }
      for g in "$corpus"/gen*; do
        copy_gen "$g"
        step "$tool" "$b:backup-${g##*/}" backup
        # The copier's upload moves what vault's first backup moved.
        [[ $tool != vault || ${g##*/} != gen1 || -d $out/limit-src ]] || case $BENCH_REPO_DIR in
          direct:*) rclone -q copy "$BENCH_REPO_DIR" "$out/limit-src" ;;
          *) cp -a "$BENCH_REPO_DIR" "$out/limit-src" ;;
        esac
      done
      step "$tool" "$b:backup-nochange" backup
      restore_step "$tool" "$b:restore"
      step "$tool" "$b:check-read-data" check
      [[ $tool != vault ]] || step vault "$b:verify" verify
      [[ $b != sftp ]] || stop_ssh_masters
    done
    [[ -d $out/limit-src ]] || { echo "no limit rows for $b: vault did not run" >&2; continue; }
    case $b in
      sftp) up=scp-up again=sftp-ls down=scp-down ;;
      s3) up=rclone-up again=rclone-again down=rclone-down ;;
    esac
    export BENCH_REPO=$rdir/limit-up BENCH_REPO_DIR=$ldir/limit-up
    step limit "$b:upload-gen1" "$up"
    step limit "$b:nochange" "$again"
    export BENCH_REPO=$rdir/repo-vault BENCH_REPO_DIR=$ldir/repo-vault
    rm -rf "$out/restore"; mkdir -p "$out/restore"
    step limit "$b:download" "$down"
    rm -rf "$out/restore"
  done
  echo
  python3 "$here/table_remote.py" "$results"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
  exit
fi
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
  restore_step "$tool" restore
  if [[ ${MOUNT:-1} != 0 && ($tool == vault || $tool == restic || $tool == rustic) ]]; then # the tools with a mount
    if [[ $tool == rustic ]] && ! rustic_mounts; then
      echo "rustic: built without its mount feature, no mount rows" >&2
    else
      for m in largest walk tree; do step "$tool" "mount-$m" "mount-$m"; done
    fi
  fi
  step "$tool" forget-half forget
  step "$tool" prune prune
done
python3 "$here/table.py" "$results"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
