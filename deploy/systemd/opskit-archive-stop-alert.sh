#!/usr/bin/env bash
# opskit-archive-stop-alert.sh: ExecStopPost= of opskit-archive.service.
#
# The wrapper (user_logs_archive.sh) calls the webhook itself whenever it exits non-zero. This
# hook covers what the wrapper cannot report: systemd killed it (TimeoutStartSec, SIGKILL after
# TimeoutStopSec), the OOM killer took it, or it dumped core. systemd passes SERVICE_RESULT,
# EXIT_CODE and EXIT_STATUS (systemd.exec(5)); results "success" and "exit-code" are left to
# the wrapper, so one failure gives one alert. The payload has opskit's alert schema
# (docs/alerts.md) and an Idempotency-Key header.
set -Eeuo pipefail

WEBHOOK_URL="${WEBHOOK_URL:-https://monitor.ipo.com/webhook/mongodb}"
UNIT="${UNIT:-opskit-archive.service}"
WEBHOOK_TIMEOUT_SECS="${WEBHOOK_TIMEOUT_SECS:-10}"
WEBHOOK_ATTEMPTS="${WEBHOOK_ATTEMPTS:-4}"
OPSKIT_BIN="${OPSKIT_BIN:-opskit}"
OPSKIT_CONFIG="${OPSKIT_CONFIG:-/etc/opskit/opskit.toml}"

result="${SERVICE_RESULT:-unknown}"
case "$result" in
    success | exit-code) exit 0 ;;
esac

json_str() {
    local s
    s="$(printf '%s' "$1" | tr -d '\000-\037')"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    printf '"%s"' "$s"
}

host="$(hostname -f 2>/dev/null || hostname 2>/dev/null || echo unknown)"
reason="systemd: $UNIT ended with result '$result' (${EXIT_CODE:-?} ${EXIT_STATUS:-?}); see journalctl -u $UNIT"
run_key="archive"
journal=""
if info="$("$OPSKIT_BIN" --config "$OPSKIT_CONFIG" -q archive month 2>/dev/null)"; then
    read -r _ run_key journal <<<"$info"
fi
failed_epoch="$(date -u '+%s')"
failed_at="$(date -u -d "@$failed_epoch" '+%Y-%m-%dT%H:%M:%SZ')"
started_at="${STARTED_AT:-$failed_at}"
payload="{\"runbook\":\"archive\",\"run_key\":$(json_str "$run_key"),\"step\":\"systemd\""
payload+=",\"error\":$(json_str "$reason"),\"host\":$(json_str "$host")"
payload+=",\"started_at\":$(json_str "$started_at"),\"failed_at\":$(json_str "$failed_at")"
payload+=",\"journal\":$(json_str "$journal")}"

for ((attempt = 1; attempt <= WEBHOOK_ATTEMPTS; attempt++)); do
    if printf '%s' "$payload" | curl --silent --show-error --fail \
        --connect-timeout 5 --max-time "$WEBHOOK_TIMEOUT_SECS" \
        -H 'Content-Type: application/json' -H "Idempotency-Key: $run_key-$failed_epoch" \
        -X POST --data-binary @- "$WEBHOOK_URL" >/dev/null; then
        echo "webhook called: $reason"
        exit 0
    fi
    ((attempt < WEBHOOK_ATTEMPTS)) && sleep $((attempt * 2))
done
echo "ALERT NOT DELIVERED to $WEBHOOK_URL: $reason" >&2
exit 0
