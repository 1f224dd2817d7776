#!/usr/bin/env bash
# Benchmark of the archive pipeline on the lab MariaDB + lab sshd/SFTP (docs/BENCHMARKS.md, ## archive).
#
#   cargo build --release -p opskit && cargo build --release -p opskit-archive --example compress_stage
#   bench/archive/run.sh            # ROWS_LIST="500000 1000000 2000000" by default
#
# For each size in ROWS_LIST it loads that many January rows of ~200 bytes (plus 2 rows outside
# the month) and runs `opskit archive run`, recording wall time, peak RSS (/usr/bin/time) and the
# per-stage seconds from the metrics file. At the largest size it then puts the same rows through
# pt-archiver (--file, --bulk-delete, --limit 5000) and through a plain
# `mysqldump --where | gzip` + `sftp` + `DELETE … LIMIT 10000` loop, and compares the compression
# stage with `pigz -p 2 -6` on the same raw bytes. Everything runs on loopback; the lab is torn
# down at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OPSKIT=${OPSKIT:-$ROOT/target/release/opskit}
COMPRESS=${COMPRESS:-$ROOT/target/release/examples/compress_stage}
ROWS_LIST=${ROWS_LIST:-"500000 1000000 2000000"}
LAB=${LAB:-/tmp/opskit-archive-bench}
RESULTS=${RESULTS:-$LAB-results.txt}
LO="2024-01-01 00:00:00"
HI="2024-02-01 00:00:00"
WHERE="create_on >= '$LO' AND create_on < '$HI'"

rm -rf "$LAB"
"$OPSKIT" lab up --dir "$LAB" --only mariadb,sshd >/dev/null
trap '"$OPSKIT" lab down --dir "$LAB" >/dev/null 2>&1 || true' EXIT
CNF=$LAB/mariadb/my.cnf
# Optional knobs: PURGE_BATCH, PURGE_CONNECTIONS (archive.purge.*), SKIP_OTHERS=1 (opskit only).
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

MAX=0
for n in $ROWS_LIST; do ((n > MAX)) && MAX=$n; done

for n in $ROWS_LIST; do
  log ""
  log "## opskit archive run, $n rows"
  load "$n"; fresh_copy
  rm -rf "$LAB/state" "$LAB/staging" "$BACKUP/user_logs"
  /usr/bin/time -f '%e %M' -o "$LAB/time.txt" "$OPSKIT" --config "$LAB/opskit.toml" --log-format json \
    archive run --month 2024-01 > "$LAB/opskit-$n.log" 2>&1
  read -r wall rss < "$LAB/time.txt"
  raw=$(metric bytes_raw); gz=$(metric bytes_compressed)
  ex=$(metric export_seconds); up=$(metric upload_seconds); ve=$(metric verify_seconds); pu=$(metric purge_seconds)
  log "rows=$n wall_s=$wall rows_per_s=$(echo "$n / $wall" | bc) peak_rss_kib=$rss left_in_month=$(month_rows)"
  log "raw_bytes=$raw gz_bytes=$gz ratio=$(echo "scale=2; $raw / $gz" | bc)"
  log "export_s=$ex (raw $(echo "scale=1; $raw / $ex / 1000000" | bc) MB/s) upload_s=$up ($(echo "scale=1; $gz / $up / 1000000" | bc) MB/s compressed) verify_s=$ve purge_s=$pu ($(echo "$n / $pu" | bc) rows/s)"
  if [[ $n == "$MAX" ]]; then
    cp "$LAB/staging/test.user_logs.2024-01.bson.gz" "$LAB/archive-max.bson.gz"
  fi
done

if [[ -n ${SKIP_OTHERS:-} ]]; then exit 0; fi
log ""
log "## pt-archiver, $MAX rows (--file, --bulk-delete, --limit 5000 --txn-size 5000, index on create_on)"
fresh_copy
mkdir -p "$LAB/pt"; rm -f "$LAB/pt/"*
/usr/bin/time -f '%e %M' -o "$LAB/time.txt" pt-archiver \
  --source "h=127.0.0.1,P=$PORT,u=root,D=test,t=user_logs,i=idx_create_on" \
  --where "$WHERE" --file "$LAB/pt/%D.%t.txt" --limit 5000 --txn-size 5000 --bulk-delete \
  --no-safe-auto-increment --no-check-charset --statistics > "$LAB/pt.log" 2>&1
read -r wall rss < "$LAB/time.txt"
log "pt-archiver: wall_s=$wall rows_per_s=$(echo "$MAX / $wall" | bc) peak_rss_kib=$rss left_in_month=$(month_rows) file_bytes=$(stat -c %s "$LAB"/pt/*.txt)"
start=$(date +%s.%N)
pigz -p 2 -6 "$LAB"/pt/*.txt
sftp -F "$SSHCFG" -b - bak.ipo.com >/dev/null <<<"put $(ls "$LAB"/pt/*.gz) pt-archiver.txt.gz"
extra=$(echo "$(date +%s.%N) - $start" | bc)
log "pt-archiver + pigz -p 2 -6 + sftp: wall_s=$(echo "$wall + $extra" | bc) rows_per_s=$(echo "$MAX / ($wall + $extra)" | bc)"

log ""
log "## mysqldump --where | gzip + sftp + DELETE … LIMIT 10000 loop, $MAX rows"
fresh_copy
mkdir -p "$LAB/sh"; rm -f "$LAB/sh/"*
cat > "$LAB/sh/pipeline.sh" <<EOF
set -euo pipefail
mysqldump --defaults-file=$CNF --single-transaction --quick --no-create-info \
  --where "$WHERE" test user_logs | gzip -6 > $LAB/sh/user_logs.sql.gz
sftp -F $SSHCFG -b - bak.ipo.com >/dev/null <<<"put $LAB/sh/user_logs.sql.gz shell-pipeline.sql.gz"
while :; do
  n=\$(mariadb --defaults-file=$CNF test -N -e "DELETE FROM user_logs WHERE $WHERE LIMIT 10000; SELECT ROW_COUNT();")
  [ "\$n" -gt 0 ] || break
done
EOF
/usr/bin/time -f '%e %M' -o "$LAB/time.txt" bash "$LAB/sh/pipeline.sh" > "$LAB/sh.log" 2>&1
read -r wall rss < "$LAB/time.txt"
log "shell pipeline: wall_s=$wall rows_per_s=$(echo "$MAX / $wall" | bc) left_in_month=$(month_rows) gz_bytes=$(stat -c %s "$LAB/sh/user_logs.sql.gz")"

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
