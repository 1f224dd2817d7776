#!/usr/bin/env bash
# Benchmark of the archive pipeline on the lab MariaDB + lab sshd/SFTP (docs/BENCHMARKS.md, ## archive).
#
#   cargo build --release -p opskit && cargo build --release -p opskit-archive --example compress_stage
#   bench/archive/run.sh            # ROWS_LIST="1000000 2000000" POOLS="16M 1G" by default
#
# For each InnoDB buffer pool size in POOLS (the lab's 16M, then a production-like 1G: mariadbd
# is restarted on the same datadir and my.cnf with --innodb-buffer-pool-size) and each size in
# ROWS_LIST it loads that many January rows of ~200 bytes (plus 2 rows outside the month), then,
# each on a fresh copy of the table, runs:
#   - `opskit archive run` (wall time, peak RSS, per-stage seconds from the metrics file);
#   - the floor: the month's rows deleted with no export at all, one server-side loop of
#     `DELETE … WHERE <month> LIMIT 10000` (autocommit, one session): no archiver can beat it;
#   - pt-archiver (--file, --bulk-delete, --limit 5000), then pigz + sftp of its file;
#   - a plain `mysqldump --where | gzip` + `sftp` + `DELETE … LIMIT 10000` loop.
# A `summary` line per pool and size gives opskit ÷ floor (issue 14's target: ≤ 1.15). At the
# end it compares the compression stage with `pigz -p 2 -6` on the same raw bytes (when the
# compress_stage example is built). Everything runs on loopback; the lab is torn down at the end.
# Optional knobs: PURGE_BATCH, PURGE_CONNECTIONS (archive.purge.*), SEGMENT_DOCS,
# COMPRESSION_LEVEL (archive.*), FINGERPRINTS=true|false (archive.purge.fingerprints),
# DELETE_RETURNING=true|false (archive.purge.delete_returning), SKIP_OTHERS=1 (opskit and the floor only). Every tool's CPU
# seconds (its own and mariadbd's) are logged beside its wall time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OPSKIT=${OPSKIT:-$ROOT/target/release/opskit}
COMPRESS=${COMPRESS:-$ROOT/target/release/examples/compress_stage}
ROWS_LIST=${ROWS_LIST:-"1000000 2000000"}
POOLS=${POOLS:-"16M 1G"}
LAB=${LAB:-/tmp/opskit-archive-bench}
RESULTS=${RESULTS:-$LAB-results.txt}
LO="2024-01-01 00:00:00"
HI="2024-02-01 00:00:00"
WHERE="create_on >= '$LO' AND create_on < '$HI'"

rm -rf "$LAB"
"$OPSKIT" lab up --dir "$LAB" --only mariadb,sshd >/dev/null
CNF=$LAB/mariadb/my.cnf
OWN_MARIADBD=""
cleanup() {
  # A mariadbd this script restarted is not the lab's: shut it down before `lab down`.
  if [[ -n $OWN_MARIADBD ]]; then
    mariadb-admin --defaults-file="$CNF" shutdown >/dev/null 2>&1 || true
  fi
  "$OPSKIT" lab down --dir "$LAB" >/dev/null 2>&1 || true
}
trap cleanup EXIT
[[ -n ${SEGMENT_DOCS:-} ]] && sed -i "s/^segment_docs = .*/segment_docs = $SEGMENT_DOCS/" "$LAB/opskit.toml"
[[ -n ${FINGERPRINTS:-} ]] && sed -i "s/^fingerprints = .*/fingerprints = $FINGERPRINTS/" "$LAB/opskit.toml"
[[ -n ${DELETE_RETURNING:-} ]] && sed -i "s/^delete_returning = .*/delete_returning = $DELETE_RETURNING/" "$LAB/opskit.toml"
[[ -n ${COMPRESSION_LEVEL:-} ]] && sed -i "s/^compression_level = .*/compression_level = $COMPRESSION_LEVEL/" "$LAB/opskit.toml"
[[ -n ${PURGE_BATCH:-} ]] && sed -i "s/^batch_size = .*/batch_size = $PURGE_BATCH/" "$LAB/opskit.toml"
[[ -n ${PURGE_CONNECTIONS:-} ]] && sed -i "/^\[archive.purge\]/a connections = $PURGE_CONNECTIONS" "$LAB/opskit.toml" && sed -i '0,/^connections = 2$/{/^connections = 2$/d}' "$LAB/opskit.toml"
PORT=$(awk -F= '/^port=/{print $2; exit}' "$CNF")
SSHCFG=$LAB/ssh/ssh_config
BACKUP=$(sed -n 's/.*"backup_dir": *"\([^"]*\)".*/\1/p' "$LAB/lab.json" | head -1)
sql() { mariadb --defaults-file="$CNF" test "$@"; }
log() { echo "$*" | tee -a "$RESULTS"; }
: > "$RESULTS"
log "# $(date -u +%FT%TZ) on $(nproc) cores, $(awk '/MemTotal/{print $2/1024/1024 " GiB"}' /proc/meminfo); $(mariadbd --version | cut -d' ' -f1-4); lab my.cnf: $(grep -E '^innodb_(buffer_pool_size|log_file_size)' "$CNF" | tr '\n' ' ')"

SCHEMA="id BIGINT AUTO_INCREMENT PRIMARY KEY, create_on VARCHAR(19) NULL, user_id INT NOT NULL,
  action VARCHAR(16) NOT NULL, ip VARCHAR(15) NOT NULL, url VARCHAR(96) NOT NULL, status INT NOT NULL,
  session CHAR(16) NOT NULL, KEY idx_create_on (create_on)"

# load N: user_logs_src with N January rows of about 200 bytes as BSON, plus 2 outside the month.
load() {
  local n=$1 chunk=250000 a b
  sql -e "DROP TABLE IF EXISTS user_logs_src; CREATE TABLE user_logs_src ($SCHEMA) ENGINE=InnoDB;"
  for ((a = 0; a < n; a += chunk)); do
    b=$((a + chunk - 1)); ((b >= n)) && b=$((n - 1))
    sql -e "INSERT INTO user_logs_src (create_on,user_id,action,ip,url,status,session)
      SELECT DATE_FORMAT(TIMESTAMP('2024-01-01') + INTERVAL (seq * 2678399 DIV $n) SECOND, '%Y-%m-%d %H:%i:%s'),
        (seq * 7919) % 100000, ELT(1 + seq % 5, 'login','logout','view','click','purchase'),
        CONCAT('10.', (seq >> 16) & 255, '.', (seq >> 8) & 255, '.', seq & 255),
        CONCAT('/api/v1/items/', (seq * 31) % 50000, '?ref=', ELT(1 + seq % 3, 'home','search','mail')),
        ELT(1 + seq % 10, 200,200,200,200,200,200,200,304,404,500), LEFT(MD5(seq), 16)
      FROM seq_${a}_to_${b};"
  done
  sql -e "INSERT INTO user_logs_src (create_on,user_id,action,ip,url,status,session) VALUES
    ('2023-12-31 23:59:59',1,'edge','1.1.1.1','/',200,'x'), ('2024-02-01 00:00:00',1,'edge','1.1.1.1','/',200,'y');"
}
fresh_copy() {
  sql -e "DROP TABLE IF EXISTS user_logs; CREATE TABLE user_logs LIKE user_logs_src;
          INSERT INTO user_logs SELECT * FROM user_logs_src; ANALYZE TABLE user_logs;" >/dev/null
}
month_rows() { sql -N -e "SELECT COUNT(*) FROM user_logs WHERE $WHERE"; }
metric() { awk -v k="opskit_archive_$1{" 'index($0, k) == 1 {print $2}' "$LAB/metrics/opskit_archive.prom"; }

# restart_with_pool SIZE: shuts mariadbd down cleanly and starts it again on the same datadir
# and my.cnf with an InnoDB buffer pool of SIZE (the command line overrides my.cnf).
restart_with_pool() {
  local size=$1 pid
  pid=$(cat "$LAB/mariadb/mysqld.pid")
  mariadb-admin --defaults-file="$CNF" shutdown
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  local as_root=()
  [[ $(id -u) == 0 ]] && as_root=(--user=root)
  setsid mariadbd --defaults-file="$CNF" "${as_root[@]}" --innodb-buffer-pool-size="$size" \
    --innodb-buffer-pool-size-max="$size" >> "$LAB/mariadb/bench-restart.log" 2>&1 < /dev/null &
  OWN_MARIADBD=$!
  for _ in $(seq 1 150); do
    mariadb-admin --defaults-file="$CNF" ping >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "mariadbd did not come back with a $size buffer pool" >&2
  exit 1
}

# server_cpu: mariadbd's user + system CPU seconds so far (all its threads).
server_cpu() {
  local pid
  pid=$(cat "$LAB/mariadb/mysqld.pid")
  awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$pid/stat"
}

# timed FILE CMD…: runs CMD under /usr/bin/time with its output in FILE; sets WALL, RSS,
# CPU (the command's own user + system seconds, children included), SCPU (mariadbd's CPU
# seconds meanwhile) and CODE (its exit code; a failure is logged, not fatal, so the other
# tools still run). On 2 cores, WALL ≥ (CPU + SCPU) / 2: work can only hide under other work
# where a core is idle.
timed() {
  local out=$1 s0 u s
  shift
  CODE=0
  s0=$(server_cpu)
  /usr/bin/time -f '%e %M %U %S' -o "$LAB/time.txt" "$@" > "$out" 2>&1 || CODE=$?
  read -r WALL RSS u s < <(tail -1 "$LAB/time.txt")
  CPU=$(echo "$u + $s" | bc)
  SCPU=$(echo "$(server_cpu) - $s0" | bc)
  if [[ $CODE != 0 ]]; then
    log "FAILED (exit $CODE): $1 … — last lines of $out:"
    tail -3 "$out" | tee -a "$RESULTS"
  fi
}

MAX=0
for n in $ROWS_LIST; do ((n > MAX)) && MAX=$n; done

for pool in $POOLS; do
  [[ $pool == 16M ]] || restart_with_pool "$pool"
  log ""
  log "# InnoDB buffer pool $pool (innodb_buffer_pool_size=$(sql -N -e 'SELECT @@innodb_buffer_pool_size'), innodb_log_file_size=$(sql -N -e 'SELECT @@innodb_log_file_size'))"
  for n in $ROWS_LIST; do
    load "$n"

    log ""
    log "## opskit archive run, $n rows, pool $pool"
    fresh_copy
    rm -rf "$LAB/state" "$LAB/staging" "$BACKUP/user_logs"
    timed "$LAB/opskit-$pool-$n.log" "$OPSKIT" --config "$LAB/opskit.toml" --log-format json \
      archive run --month 2024-01
    opskit_wall=$WALL
    raw=$(metric bytes_raw); gz=$(metric bytes_compressed)
    ex=$(metric export_seconds); up=$(metric upload_seconds); ve=$(metric verify_seconds); pu=$(metric purge_seconds)
    log "rows=$n wall_s=$WALL rows_per_s=$(echo "$n / $WALL" | bc) peak_rss_kib=$RSS left_in_month=$(month_rows) opskit_cpu_s=$CPU server_cpu_s=$SCPU"
    opskit_cpu=$(echo "$CPU + $SCPU" | bc)
    log "raw_bytes=$raw gz_bytes=$gz ratio=$(echo "scale=2; $raw / $gz" | bc)"
    log "export_s=$ex (raw $(echo "scale=1; $raw / $ex / 1000000" | bc) MB/s) upload_s=$up ($(echo "scale=1; $gz / $up / 1000000" | bc) MB/s compressed) verify_s=$ve purge_s=$pu ($(echo "$n / $pu" | bc) rows/s)"
    if [[ $n == "$MAX" ]]; then
      cp "$LAB/staging/test.user_logs.2024-01.bson.gz" "$LAB/archive-max.bson.gz"
    fi

    log ""
    log "## floor: DELETE … WHERE <month> LIMIT 10000, looped inside the server (one session, autocommit, no export), $n rows, pool $pool"
    fresh_copy
    printf '%s\n' 'DELIMITER //' 'BEGIN NOT ATOMIC' '  REPEAT' \
      "    DELETE FROM user_logs WHERE $WHERE LIMIT 10000;" \
      '  UNTIL ROW_COUNT() = 0 END REPEAT;' 'END//' > "$LAB/floor.sql"
    timed "$LAB/floor.log" mariadb --defaults-file="$CNF" test --batch -e "source $LAB/floor.sql"
    floor_wall=$WALL
    log "floor: wall_s=$WALL rows_per_s=$(echo "$n / $WALL" | bc) left_in_month=$(month_rows) server_cpu_s=$SCPU"
    floor_cpu=$(echo "$CPU + $SCPU" | bc)

    pt_wall=- pt_full=- sh_wall=-
    if [[ -z ${SKIP_OTHERS:-} ]]; then
      log ""
      log "## pt-archiver, $n rows, pool $pool (--file, --bulk-delete, --limit 5000 --txn-size 5000, index on create_on)"
      fresh_copy
      mkdir -p "$LAB/pt"; rm -f "$LAB/pt/"*
      timed "$LAB/pt.log" pt-archiver \
        --source "h=127.0.0.1,P=$PORT,u=root,D=test,t=user_logs,i=idx_create_on" \
        --where "$WHERE" --file "$LAB/pt/%D.%t.txt" --limit 5000 --txn-size 5000 --bulk-delete \
        --no-safe-auto-increment --no-check-charset --statistics
      pt_wall=$WALL
      log "pt-archiver: wall_s=$WALL rows_per_s=$(echo "$n / $WALL" | bc) peak_rss_kib=$RSS left_in_month=$(month_rows) file_bytes=$(stat -c %s "$LAB"/pt/*.txt)"
      start=$(date +%s.%N)
      pigz -p 2 -6 "$LAB"/pt/*.txt
      sftp -F "$SSHCFG" -b - bak.ipo.com >/dev/null <<<"put $(ls "$LAB"/pt/*.gz) pt-archiver.txt.gz"
      extra=$(echo "$(date +%s.%N) - $start" | bc)
      pt_full=$(echo "$pt_wall + $extra" | bc)
      log "pt-archiver + pigz -p 2 -6 + sftp: wall_s=$pt_full rows_per_s=$(echo "$n / $pt_full" | bc)"

      log ""
      log "## mysqldump --where | gzip + sftp + DELETE … LIMIT 10000 loop, $n rows, pool $pool"
      fresh_copy
      mkdir -p "$LAB/sh"; rm -f "$LAB/sh/"*
      {
        echo 'set -euo pipefail'
        echo "mysqldump --defaults-file=$CNF --single-transaction --quick --no-create-info --where \"$WHERE\" test user_logs | gzip -6 > $LAB/sh/user_logs.sql.gz"
        echo "sftp -F $SSHCFG -b - bak.ipo.com >/dev/null <<<\"put $LAB/sh/user_logs.sql.gz shell-pipeline.sql.gz\""
        echo 'while :; do'
        echo "  n=\$(mariadb --defaults-file=$CNF test -N -e \"DELETE FROM user_logs WHERE $WHERE LIMIT 10000; SELECT ROW_COUNT();\")"
        # shellcheck disable=SC2016 # $n is the generated script's own variable
        echo '  [ "$n" -gt 0 ] || break'
        echo 'done'
      } > "$LAB/sh/pipeline.sh"
      timed "$LAB/sh.log" bash "$LAB/sh/pipeline.sh"
      sh_wall=$WALL
      log "shell pipeline: wall_s=$WALL rows_per_s=$(echo "$n / $WALL" | bc) left_in_month=$(month_rows) gz_bytes=$(stat -c %s "$LAB/sh/user_logs.sql.gz")"
    fi
    log ""
    log "summary pool=$pool rows=$n opskit_s=$opskit_wall floor_s=$floor_wall opskit_over_floor=$(echo "scale=2; $opskit_wall / $floor_wall" | bc) opskit_cpu_s=$opskit_cpu floor_cpu_s=$floor_cpu shell_s=$sh_wall pt_archiver_s=$pt_wall pt_archiver_gz_sftp_s=$pt_full"
  done
done

if [[ -n ${SKIP_OTHERS:-} || ! -x $COMPRESS ]]; then
  log ""
  log "done; results in $RESULTS"
  exit 0
fi
log ""
log "## compression stage vs pigz -p 2 -6 on the same raw BSON ($MAX rows)"
pigz -dc "$LAB/archive-max.bson.gz" > "$LAB/raw.bson"
cat "$LAB/raw.bson" > /dev/null
start=$(date +%s.%N); pigz -p 2 -6 -c "$LAB/raw.bson" > "$LAB/raw.pigz.gz"; pz=$(echo "$(date +%s.%N) - $start" | bc)
rawsz=$(stat -c %s "$LAB/raw.bson")
log "pigz -p 2 -6: ${pz}s = $(echo "scale=1; $rawsz / $pz / 1000000" | bc) MB/s, ratio $(echo "scale=2; $rawsz / $(stat -c %s "$LAB/raw.pigz.gz")" | bc)"
log "$("$COMPRESS" "$LAB/raw.bson" "$LAB/raw.ours.bson.gz" 6)"
rm -f "$LAB/raw.bson" "$LAB/raw.pigz.gz" "$LAB/raw.ours.bson.gz"*
log ""
log "done; results in $RESULTS"
