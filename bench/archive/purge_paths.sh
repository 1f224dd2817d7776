#!/usr/bin/env bash
# The MySQL purge alone, by path (issue 14; docs/BENCHMARKS.md, "purge paths"), on the lab MariaDB.
#
#   cargo build -p opskit && cargo build --release -p opskit-archive --example purge_paths
#   bench/archive/purge_paths.sh        # ROWS=1000000 POOLS="16M" REPEAT=2 BATCH=10000 CONNECTIONS=2
#
# Loads ROWS January rows of ~200 bytes (the table of bench/archive/run.sh), then, each on a
# fresh copy of the table and REPEAT times, deletes the month:
#   - floor: `DELETE … WHERE <month> LIMIT 10000` looped inside the server (one session,
#     autocommit, no export);
#   - locked: the example exports the month into memory, then `delete_archived` in batches of
#     BATCH over CONNECTIONS sessions with documents that carry no fingerprint (today's purge:
#     lock, compare, delete, commit);
#   - fp: the same with the export's server fingerprints (one DELETE per batch part).
# Only the delete is timed for locked/fp (purge_s); export_s is printed apart. Before each timed
# run the script waits for InnoDB's undo history to be purged; the order of the three rotates.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OPSKIT=${OPSKIT:-$TARGET/debug/opskit}
PURGE=${PURGE:-$TARGET/release/examples/purge_paths}
ROWS=${ROWS:-1000000}
POOLS=${POOLS:-16M}
REPEAT=${REPEAT:-2}
BATCH=${BATCH:-10000}
CONNECTIONS=${CONNECTIONS:-2}
LAB=${LAB:-/tmp/opskit-purge-bench}
RESULTS=${RESULTS:-$LAB-results.txt}
WHERE="create_on >= '2024-01-01 00:00:00' AND create_on < '2024-02-01 00:00:00'"

rm -rf "$LAB"
"$OPSKIT" lab up --dir "$LAB" --only mariadb >/dev/null
CNF=$LAB/mariadb/my.cnf
OWN_MARIADBD=""
cleanup() {
  if [[ -n $OWN_MARIADBD ]]; then
    mariadb-admin --defaults-file="$CNF" shutdown >/dev/null 2>&1 || true
  fi
  "$OPSKIT" lab down --dir "$LAB" >/dev/null 2>&1 || true
}
trap cleanup EXIT
PORT=$(awk -F= '/^port=/{print $2; exit}' "$CNF")
URI="mysql://root@127.0.0.1:$PORT/"
sql() { mariadb --defaults-file="$CNF" test "$@"; }
log() { echo "$*" | tee -a "$RESULTS"; }
: > "$RESULTS"
log "# $(date -u +%FT%TZ) on $(nproc) cores, $(awk '/MemTotal/{print $2/1024/1024 " GiB"}' /proc/meminfo); $(mariadbd --version | cut -d' ' -f1-4); rows=$ROWS batch=$BATCH connections=$CONNECTIONS"

SCHEMA="id BIGINT AUTO_INCREMENT PRIMARY KEY, create_on VARCHAR(19) NULL, user_id INT NOT NULL,
  action VARCHAR(16) NOT NULL, ip VARCHAR(15) NOT NULL, url VARCHAR(96) NOT NULL, status INT NOT NULL,
  session CHAR(16) NOT NULL, KEY idx_create_on (create_on)"

# The same rows as bench/archive/run.sh's load.
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
# InnoDB's deadlock and row-lock-wait counters (a retried part shows up here).
locks() { sql -N -e "SELECT GROUP_CONCAT(VARIABLE_VALUE ORDER BY VARIABLE_NAME) FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME IN ('INNODB_DEADLOCKS', 'INNODB_ROW_LOCK_WAITS')"; }
# settle: waits (up to 120 s) until InnoDB has purged the undo history of the previous runs
# (a table copy, the deletes), so each timed run starts from the same state; prints the length.
settle() {
  local h
  for _ in $(seq 1 600); do
    h=$(sql -N -e "SELECT COUNT FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'")
    ((h < 1000)) && break
    sleep 0.2
  done
  echo "$h"
}
# mariadbd's CPU time so far (user + system, clock ticks): the purge's cost to the server,
# steadier than wall time on a shared machine.
TICKS=$(getconf CLK_TCK)
server_cpu() { awk '{print $14 + $15}' "/proc/$(cat "$LAB/mariadb/mysqld.pid")/stat"; }
month_rows() { sql -N -e "SELECT COUNT(*) FROM user_logs WHERE $WHERE"; }

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

printf '%s\n' 'DELIMITER //' 'BEGIN NOT ATOMIC' '  REPEAT' \
  "    DELETE FROM user_logs WHERE $WHERE LIMIT 10000;" \
  '  UNTIL ROW_COUNT() = 0 END REPEAT;' 'END//' > "$LAB/floor.sql"

for pool in $POOLS; do
  [[ $pool == 16M ]] || restart_with_pool "$pool"
  log ""
  log "# InnoDB buffer pool $pool (innodb_buffer_pool_size=$(sql -N -e 'SELECT @@innodb_buffer_pool_size'))"
  load "$ROWS"
  for ((r = 1; r <= REPEAT; r++)); do
    # The order rotates from run to run, so no path always runs after the others' garbage.
    modes=(floor locked fp)
    for ((k = 0; k < 3; k++)); do
      mode=${modes[$(((k + r - 1) % 3))]}
      fresh_copy
      history=$(settle)
      before=$(locks)
      if [[ $mode == floor ]]; then
        cpu0=$(server_cpu)
        start=$(date +%s.%N)
        sql --batch -e "source $LAB/floor.sql"
        out="mode=floor purge_s=$(echo "scale=2; ($(date +%s.%N) - $start) / 1" | bc)"
        cpu1=$(server_cpu)
      else
        # The example prints the server's CPU counter around the purge alone.
        out=$(SERVER_PID=$(cat "$LAB/mariadb/mysqld.pid") "$PURGE" "$URI" test user_logs "$mode" "$BATCH" "$CONNECTIONS")
        cpu0=0 cpu1=0
      fi
      [[ $mode == floor ]] && out="$out server_cpu_s=$(echo "scale=2; ($cpu1 - $cpu0) / $TICKS" | bc)"
      log "pool=$pool run=$r $out left_in_month=$(month_rows) history_before=$history deadlocks,lock_waits: $before -> $(locks)"
    done
  done
done
log ""
log "done; results in $RESULTS"
