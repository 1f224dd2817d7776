#!/usr/bin/env bash
# The archive's MongoDB path next to its MariaDB path on one lab (docs/BENCHMARKS.md,
# "### MongoDB path on the lab's SecantusDB"). SecantusDB is a MongoDB-compatible server, NOT
# MongoDB: its numbers say nothing about MongoDB's speed.
#
#   cargo build -p opskit            # or --release, and OPSKIT=target/release/opskit
#   bench/archive/mongo.sh           # ROWS_LIST="2000 5000" by default
#
# For each size: `opskit lab seed` fills test.user_logs on both servers (the month plus a
# tenth in each neighbour plus 4 bad dates), then `opskit archive run --month 2024-01` runs
# once per source (default adaptive purge settings: first batch 5000, target 500 ms), under
# /usr/bin/time for the peak RSS; the stage seconds come from the metrics file, the batch
# sizes from the purge's last log line.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OPSKIT=${OPSKIT:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/opskit}
ROWS_LIST=${ROWS_LIST:-"2000 5000"}
LAB=${LAB:-/tmp/opskit-archive-mongo-bench}
RESULTS=${RESULTS:-$LAB-results.txt}

rm -rf "$LAB"
"$OPSKIT" lab up --dir "$LAB" --only mariadb,mongodb,sshd >/dev/null
trap '"$OPSKIT" lab down --dir "$LAB" >/dev/null 2>&1 || true' EXIT
MONGO_URI=$(python3 -c 'import json,sys
for s in json.load(open(sys.argv[1]))["servers"]:
    if s["kind"] == "mongodb": print(s["details"]["uri"])' "$LAB/lab.json")
log() { echo "$*" | tee -a "$RESULTS"; }
: > "$RESULTS"
log "# $(date -u +%FT%TZ) on $(nproc) cores, $(awk '/MemTotal/{print $2/1024/1024 " GiB"}' /proc/meminfo); opskit $OPSKIT; SecantusDB at $MONGO_URI"

METRICS=$(awk -F'"' '/^metrics_dir/{print $2}' "$LAB/opskit.toml")
STATE=$(awk -F'"' '/^state_dir/{print $2}' "$LAB/opskit.toml")
STAGING=$(awk -F'"' '/^staging_dir/{print $2}' "$LAB/opskit.toml")
BACKUP=$(python3 -c 'import json,sys
d=json.load(open(sys.argv[1]))
for s in d["servers"]:
    if s["kind"]=="sshd": print(s["details"]["backup_dir"])' "$LAB/lab.json")
# Optional: PURGE_FIRST (archive.purge.batch_size, the first batch), SOURCES ("mariadb mongodb").
[[ -n ${PURGE_FIRST:-} ]] && sed -i "s/^batch_size = .*/batch_size = $PURGE_FIRST/" "$LAB/opskit.toml"
sed "s#^source_uri = .*#source_uri = \"$MONGO_URI\"#" "$LAB/opskit.toml" > "$LAB/opskit-mongodb.toml"

metric() { awk -v m="opskit_archive_$1" '$1 ~ "^"m"[{]" {print $2}' "$METRICS/opskit_archive.prom"; }

for rows in $ROWS_LIST; do
  "$OPSKIT" lab seed --dir "$LAB" --rows "$rows" >/dev/null
  for src in ${SOURCES:-mariadb mongodb}; do
    cfg=$LAB/opskit.toml; [[ $src == mongodb ]] && cfg=$LAB/opskit-mongodb.toml
    rm -rf "$STATE" "$STAGING" "$BACKUP"/*; mkdir -p "$STAGING"
    start=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$LAB/rss" "$OPSKIT" --config "$cfg" -v archive run --month 2024-01 \
      > "$LAB/run-$src-$rows.out" 2> "$LAB/run-$src-$rows.err"
    end=$(date +%s.%N)
    wall=$(echo "$end - $start" | bc)
    sizes=$(grep -o 'purge done in [^)]*)' "$LAB/run-$src-$rows.err" | tail -1)
    # The batch sizes in order, repeats collapsed: "5000 21 42 84 …".
    chosen=$(grep -o 'next batch [0-9]*' "$LAB/run-$src-$rows.err" | awk '{print $3}' | uniq | tr '\n' ' ')
    log "$src rows=$rows wall=${wall}s docs_per_s=$(echo "$rows / $wall" | bc) rss_kb=$(cat "$LAB/rss") export=$(metric export_seconds)s upload=$(metric upload_seconds)s verify=$(metric verify_seconds)s purge=$(metric purge_seconds)s deleted=$(metric documents_deleted) batch_end=$(metric purge_batch_size) retries=$(metric purge_batch_retries) [$sizes] sizes: ${chosen:-unchanged}"
  done
done
