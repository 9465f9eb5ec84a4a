#!/usr/bin/env bash
# Regenerates the seed corpus in fuzz/corpus/<target>: small real inputs for every
# target. Text seeds are written here; the binary ones (objects, key files, packs and
# blobs as vault writes them, under the targets' fixed key) by examples/make_seeds.rs.
# Each seed starts with the mode byte its target reads first (see fuzz_targets/).
set -euo pipefail
cd "$(dirname "$0")"

# seed TARGET NAME MODE-BYTE TEXT: the mode byte (octal escape), then the text.
seed() {
  mkdir -p "corpus/$1"
  printf "$3%s" "$4" >"corpus/$1/$2"
}
# text TARGET NAME TEXT: the text alone.
text() {
  mkdir -p "corpus/$1"
  printf '%s' "$3" >"corpus/$1/$2"
}

rm -rf corpus

# prune_records: first byte picks the record (0 mark, 1 revival, 2 deletion, 3 format),
# the second is stored_object's mode (1: the rest is sealed as the body).
z=0000000000000000000000000000000000000000000000000000000000000000
seed prune_records mark '\000\001' '{"version":1,"time":"2026-12-03T00:00:00Z","packs":["'"$z"'"]}'
seed prune_records revival '\001\001' '{"version":1,"time":"2026-12-03T00:00:00Z","revived":[{"mark":"'"$z"'","packs":["'"$z"'"]}]}'
seed prune_records deletion '\002\001' '{"version":1,"time":"2026-12-03T00:00:00Z","packs":["'"$z"'"]}'
seed prune_records format '\003\001' '{"version":3,"time":"2026-12-03T00:00:00Z","features":["two-phase-prune"]}'
# cli_parsers: 0 times, 1 sizes, 2 spans, 3 lock waits, 4 group-by, 5 max-unused,
# 6 subsets, 7 exclude patterns, 8 ids, 9 mirror names. Time seeds use mode 0 (UTC clock)
# and 10 (the clock in a zone with summer time).
i=0
for t in now today yesterday 'Yesterday 14:00' friday 'last monday' sun 2026-11-02 \
  2026-11-02T14:00 '2026-11-02 14:00:30' 2026-11-02T14:00:00Z 2026-11-02T14:00:00+05:00 \
  '3h ago' '2 days ago' 1w '90 minutes ago' '1 month ago' '2 years'; do
  seed cli_parsers "time-$i" '\000' "$t"
  seed cli_parsers "time-tz-$i" '\012' "$t"
  i=$((i + 1))
done
for t in 16M 16MiB 1.5G 4096 '2 kb' 1T; do seed cli_parsers "size-$t" '\001' "$t"; done
for t in 30d 2w 6m 1y 12h 1y6m; do seed cli_parsers "span-$t" '\002' "$t"; done
for t in 30s 10m 2h 45; do seed cli_parsers "wait-$t" '\003' "$t"; done
# Regression: this count times 3600 overflowed u64 (a panic in debug builds).
seed cli_parsers wait-overflow '\003' '9999999999999999999h'
seed cli_parsers group-1 '\004' 'host,paths'
seed cli_parsers group-2 '\004' 'host, tags'
seed cli_parsers unused-pct '\005' '5%'
seed cli_parsers unused-size '\005' '100M'
seed cli_parsers subset-pct '\006' '10%'
seed cli_parsers subset-part '\006' '1/7'
seed cli_parsers subset-size '\006' '2G'
seed cli_parsers excludes '\007' $'*.tmp\n/home/*/.cache\n!keep.tmp\n# comment\n**/node_modules/\n[a-z]?.log\n'
seed cli_parsers id '\010' 'ab3f00000000000000000000000000000000000000000000000000000000c0de'
seed cli_parsers mirror '\011' 'offsite-1'

text cli_retention last-daily '--keep-last 3 --keep-daily 7 --keep-within 30d'
text cli_retention all-periods '--keep-hourly 24 --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --keep-yearly 3'
text cli_retention within-periods '--keep-within-daily 7d --keep-within-weekly 1y6m --keep-within-hourly 12h --group-by host,tags --keep-tag daily'
text cli_retention filters '--host a --tag daily --path /data --keep-monthly 6 --prune --max-unused 5%'

i=0
for l in /srv/backup fs:///srv/backup relative/repo \
  's3://bucket/some/prefix?endpoint=https://s3.example.com&region=eu-central-1&virtual_host=true' \
  'sftp://me@example.org:2222/backups?key=~/.ssh/id_ed25519&known_hosts=accept' \
  webdav://host:8080/path webdavs://[::1]:8443/dav gcs://bucket/prefix \
  'azblob://container/prefix?account=NAME' 'b2://bucket/prefix?bucket_id=ID' ftp://host/x; do
  text cli_location "loc-$i" "$l"
  i=$((i + 1))
done

i=0
for c in 'init --repo /srv/backup' 'backup /home/u --exclude *.tmp --tag daily --one-file-system' \
  'snapshots --json --host a' 'restore latest --target /tmp/r' 'forget --keep-daily 7 --prune -n' \
  'prune --max-unused 5%' 'check --read-data-subset 1/7' '--lock-wait 10m -vv snapshots' \
  'ls latest /etc' 'key list' 'mirror add offsite s3://b/p' 'export /mnt/usb --snapshots --keep-last 2'; do
  text cli_args "args-$i" "$c"
  i=$((i + 1))
done

# The binary seeds. Built with the flags `cargo fuzz build` uses (cargo-fuzz 0.13, ASan),
# so the dependencies it already built are reused; other flags would only rebuild them.
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Zsanitizer=address \
-Cllvm-args=-sanitizer-coverage-stack-depth -Cdebug-assertions -Ccodegen-units=1" \
  cargo +nightly run --quiet --manifest-path Cargo.toml --target "$triple" --release \
  --config 'profile.release.debug="line-tables-only"' --example make_seeds -- corpus
du -sh corpus
