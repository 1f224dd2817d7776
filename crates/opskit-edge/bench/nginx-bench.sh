#!/usr/bin/env bash
# Static-file and rate-limit benchmark of the spec §2 edge on the lab (docs/BENCHMARKS.md, ## nginx).
#
#  1. `opskit lab up --only nginx` starts the rendered config (our /static/ block).
#  2. A second nginx (same binary, same files, same TLS certificate) runs a config with only
#     nginx's defaults: `server { listen ssl; root <same www>; }`.
#  3. wrk alternates between the two (ABBA order), ROUNDS times per file, and prints the
#     median ratio; then 50 clients hammer /api/landing
#     for API_SECS seconds and the accepted count is compared with burst + 1 + floor(1.5 * T).
# Usage: bench/nginx-bench.sh [opskit binary]   (run as root; stops everything it started)
set -euo pipefail
OPSKIT=${1:-target/release/opskit}
LAB=$(mktemp -d /tmp/opskit-nginx-bench.XXXXXX)
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-10}
API_SECS=${API_SECS:-10}
BASE_PID=""
cleanup() {
  [ -n "$BASE_PID" ] && kill -TERM "$BASE_PID" 2>/dev/null || true
  "$OPSKIT" lab down --dir "$LAB" --purge >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$OPSKIT" lab up --dir "$LAB" --only nginx >/dev/null
N=$LAB/nginx
PORT=$(sed -n 's/^https_listen = \["127.0.0.1:\([0-9]*\)"\]/\1/p' "$LAB/opskit.toml")
BASE_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# A 256 KiB asset without a .gz next to it, beside the lab's app.css (+ app.css.gz).
head -c 262144 /dev/urandom > "$N/www/ipo/static/photo.bin"; chmod 644 "$N/www/ipo/static/photo.bin"

mkdir -p "$N/baseline/logs"
# The same TLS settings as ours (copied from the rendered config), so the comparison measures
# the /static/ block and not TLS 1.3 (ours, Mozilla intermediate) against nginx 1.22's default
# TLS 1.2.
TLS=$(grep -E '^ *ssl_(protocols|ecdh_curve|ciphers|prefer_server_ciphers|session_timeout|session_cache|session_tickets) ' "$N/edge/nginx.conf")
cat > "$N/baseline/nginx.conf" <<CONF
# nginx's defaults for serving files: no sendfile, no open_file_cache, no gzip, access log on.
user nobody nogroup;
worker_processes auto;
pid $N/baseline/nginx.pid;
events { }
http {
    include /etc/nginx/mime.types;
    client_body_temp_path $N/baseline/tmp-body;
    proxy_temp_path $N/baseline/tmp-proxy;
    fastcgi_temp_path $N/baseline/tmp-fastcgi;
    uwsgi_temp_path $N/baseline/tmp-uwsgi;
    scgi_temp_path $N/baseline/tmp-scgi;
    server {
        listen 127.0.0.1:$BASE_PORT ssl;
        server_name ipo.com;
        ssl_certificate $N/pki/ipo.com.crt;
        ssl_certificate_key $N/pki/ipo.com.key;
$TLS
        root $N/www/ipo;
    }
}
CONF
nginx -p "$N/baseline" -c "$N/baseline/nginx.conf" -e "$N/baseline/logs/error.log"
sleep 0.3
BASE_PID=$(cat "$N/baseline/nginx.pid")

# wrk takes SNI from the URL's host and cannot pin an address: resolve ipo.com to 127.0.0.1
# in a private mount namespace (a bind-mounted hosts file), never touching the real /etc/hosts.
printf '127.0.0.1 ipo.com\n' > "$N/hosts"
wrk() { unshare --mount sh -c 'mount --bind "$0" /etc/hosts && exec wrk "$@"' "$N/hosts" "$@"; }

run_wrk() { # port path -> "req/s p50 p99"
  wrk -t2 -c50 -d"${SECS}s" --latency -H 'Accept-Encoding: gzip' \
      "https://ipo.com:$1$2" | awk '
        /Requests\/sec/ {rps=$2}
        /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
        END {print rps, p50, p99}'
}

echo "machine: $(nproc) cores, $(uname -sr), $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1)"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
for path in /static/app.css /static/photo.bin; do
  ratios=""
  for round in $(seq 1 "$ROUNDS"); do
    # Alternate who goes first (ABBA) so drifting background load hits both sides alike.
    if [ $((round % 2)) -eq 1 ]; then
      ours=$(run_wrk "$PORT" "$path"); base=$(run_wrk "$BASE_PORT" "$path")
    else
      base=$(run_wrk "$BASE_PORT" "$path"); ours=$(run_wrk "$PORT" "$path")
    fi
    ratio=$(awk -v a="${ours%% *}" -v b="${base%% *}" 'BEGIN{printf "%.2f", a/b}')
    ratios="$ratios $ratio"
    echo "$path round $round: ours(rps p50 p99)= $ours | defaults= $base | ratio= $ratio"
  done
  echo "$path median ratio: $(echo $ratios | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')"
done

sleep 2   # let the api zone drain (notes P22)
out=$(wrk -t2 -c50 -d"${API_SECS}s" "https://ipo.com:$PORT/api/landing")
total=$(echo "$out" | awk '/requests in/ {print $1}')
secs=$(echo "$out" | awk '/requests in/ {gsub(/s,/,"",$4); print $4}')
non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
accepted=$(( total - ${non2xx:-0} ))
bound=$(awk -v t="$secs" 'BEGIN{print 0 + 1 + int(1.5 * t)}')
echo "api: 50 clients for ${secs}s: $total requests, $accepted accepted (200), ${non2xx:-0} rejected; bound burst+1+floor(1.5*T) = $bound -> $([ "$accepted" -le "$bound" ] && echo HOLDS || echo VIOLATED)"
