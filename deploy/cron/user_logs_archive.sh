#!/usr/bin/env bash
# user_logs_archive.sh: the monthly backup and purge of MongoDB test.user_logs (spec §1).
#
# Cron runs it at 01:00 on the 1st of every month (deploy/cron/opskit-archive.cron). It is a
# thin, robust wrapper around `opskit archive run`, which does the work: export the previous
# month as .bson.gz + manifest, upload it over SFTP to the ~/.ssh/config host, verify it, and
# only then delete exactly the documents that are in the verified archive.
#
# What this wrapper adds:
#   - one run at a time (flock -n; a second run is refused, exit 3, and reported);
#   - a log file per archived month: $LOG_DIR/user_logs_archive-YYYY-MM.log (also printed
#     on the terminal when run from one);
#   - one alert per failure: opskit alerts for every failure it can report itself (exit 1,
#     2 or 3) and records each delivered alert in $OPSKIT_ALERT_RECEIPT; this wrapper alerts
#     only when opskit could not: it was killed or crashed, exited above 3, could not read its
#     config, could not deliver its alert, or never ran. Same JSON schema as opskit's alert,
#     with an Idempotency-Key header;
#   - an exit code that tells what happened (opskit's own: 0 done, 1 failed, 2 bad config,
#     3 refused; 127 opskit missing; 128+N killed by signal N).
#
# Usage: user_logs_archive.sh [opskit archive run flags, e.g. --month 2024-01 | --dry-run]
# Every setting below can be overridden from the environment (cron line or systemd unit).

# Functions below are called from traps, which shellcheck 0.9 reports as unreachable.
# shellcheck disable=SC2317
set -Eeuo pipefail

# ---- settings ------------------------------------------------------------------------------
OPSKIT_CONFIG="${OPSKIT_CONFIG:-/etc/opskit/opskit.toml}"
WEBHOOK_URL="${WEBHOOK_URL:-https://monitor.ipo.com/webhook/mongodb}"
OPSKIT_BIN="${OPSKIT_BIN:-opskit}"
LOG_DIR="${LOG_DIR:-/var/log/opskit}"
LOCK_FILE="${LOCK_FILE:-/var/lib/opskit/user_logs_archive.lock}"
WEBHOOK_TIMEOUT_SECS="${WEBHOOK_TIMEOUT_SECS:-10}"
WEBHOOK_ATTEMPTS="${WEBHOOK_ATTEMPTS:-4}"
# Seconds opskit gets to stop cleanly after SIGTERM/SIGINT before it is killed.
STOP_GRACE_SECS="${STOP_GRACE_SECS:-30}"
# --------------------------------------------------------------------------------------------

# cron's PATH is /usr/bin:/bin; the caller's PATH still comes first.
PATH="${PATH:-/usr/bin:/bin}:/usr/local/bin:/usr/bin:/bin"
umask 077

SCRIPT_NAME="user_logs_archive"
HOST="$(hostname -f 2>/dev/null || hostname 2>/dev/null || echo unknown)"
STARTED_AT="$(date -u '+%Y-%m-%dT%H:%M:%SZ')"
REASON=""
CHILD_PID=""
NOTIFIED=0
MONTH=""
RUN_KEY=""
JOURNAL=""
LOG_FILE=""
RECEIPT=""

log() {
    printf '%s %s[%d]: %s\n' "$(date '+%Y-%m-%dT%H:%M:%S%z')" "$SCRIPT_NAME" "$$" "$*"
}

# A JSON string literal: backslash, quote and control characters escaped.
json_str() {
    local s
    s="$(printf '%s' "$1" | tr -d '\000-\010\013\014\016-\037')"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    s="${s//$'\t'/\\t}"
    s="${s//$'\r'/\\r}"
    s="${s//$'\n'/\\n}"
    printf '"%s"' "$s"
}

# True when opskit delivered an alert for this run itself.
opskit_alerted() {
    [[ -n "$RECEIPT" && -s "$RECEIPT" ]]
}

# POSTs the failure to the webhook in opskit's alert schema (docs/alerts.md), with a timeout
# per attempt and a bounded number of attempts. Never fails: the wrapper's exit code is the
# run's, not the webhook's.
notify() {
    local rc="$1" reason="$2" payload tail_lines attempt=1 delay=2 failed_epoch failed_at key
    [[ -n "$WEBHOOK_URL" ]] || { log "no WEBHOOK_URL set; not alerting"; return 0; }
    tail_lines="$(tail -n 10 "$LOG_FILE" 2>/dev/null || true)"
    failed_epoch="$(date -u '+%s')"
    failed_at="$(date -u -d "@$failed_epoch" '+%Y-%m-%dT%H:%M:%SZ')"
    key="${RUN_KEY:-archive}-$failed_epoch"
    payload="{\"runbook\":\"archive\",\"run_key\":$(json_str "${RUN_KEY:-archive}")"
    payload+=",\"step\":\"wrapper\""
    payload+=",\"error\":$(json_str "$reason (exit code $rc; log $LOG_FILE; last lines: $tail_lines)")"
    payload+=",\"host\":$(json_str "$HOST")"
    payload+=",\"started_at\":$(json_str "$STARTED_AT"),\"failed_at\":$(json_str "$failed_at")"
    payload+=",\"journal\":$(json_str "$JOURNAL")}"
    while ((attempt <= WEBHOOK_ATTEMPTS)); do
        if printf '%s' "$payload" | curl --silent --show-error --fail \
            --connect-timeout 5 --max-time "$WEBHOOK_TIMEOUT_SECS" \
            -H 'Content-Type: application/json' -H "Idempotency-Key: $key" \
            -X POST --data-binary @- "$WEBHOOK_URL" >/dev/null; then
            log "webhook called (exit code $rc)"
            return 0
        fi
        log "webhook attempt $attempt/$WEBHOOK_ATTEMPTS failed"
        ((attempt++)) || true
        ((attempt <= WEBHOOK_ATTEMPTS)) && sleep "$delay"
        delay=$((delay * 2))
    done
    log "ALERT NOT DELIVERED: the webhook $WEBHOOK_URL could not be reached; exit code $rc: $reason"
    return 0
}

on_err() {
    local rc=$? line="${BASH_LINENO[0]:-?}"
    [[ -n "$REASON" ]] || REASON="wrapper error at line $line: '$BASH_COMMAND' exited $rc"
}

on_exit() {
    local rc=$?
    trap - ERR EXIT INT TERM HUP
    set +e
    if ((rc != 0)) && ((NOTIFIED == 0)); then
        NOTIFIED=1
        [[ -n "$REASON" ]] || REASON="exit code $rc"
        log "FAILED: $REASON"
        if opskit_alerted; then
            log "opskit already sent the alert for this failure; not alerting twice"
        else
            notify "$rc" "$REASON"
        fi
    fi
    [[ -n "$RECEIPT" ]] && rm -f "$RECEIPT"
    exit "$rc"
}

on_signal() {
    local sig="$1" num="$2"
    REASON="the wrapper received SIG$sig"
    log "$REASON; stopping opskit"
    if [[ -n "$CHILD_PID" ]] && kill -0 "$CHILD_PID" 2>/dev/null; then
        kill -TERM "$CHILD_PID" 2>/dev/null || true
        local waited=0
        while kill -0 "$CHILD_PID" 2>/dev/null && ((waited < STOP_GRACE_SECS)); do
            sleep 1
            ((waited++)) || true
        done
        if kill -0 "$CHILD_PID" 2>/dev/null; then
            log "opskit did not stop within ${STOP_GRACE_SECS}s; killing it"
            kill -KILL "$CHILD_PID" 2>/dev/null || true
        else
            log "opskit stopped at a safe point; the same command resumes the run"
        fi
    fi
    exit $((128 + num))
}

trap on_err ERR
trap on_exit EXIT
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT
trap 'on_signal HUP 1' HUP

# ---- which month, which run (opskit says; it also proves the config readable) --------------
ASKED_MONTH=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --month) ASKED_MONTH="${args[i + 1]:-}" ;;
        --month=*) ASKED_MONTH="${args[i]#--month=}" ;;
    esac
done
CONFIG_ERROR=""
if ! command -v "$OPSKIT_BIN" >/dev/null 2>&1; then
    CONFIG_ERROR="$OPSKIT_BIN not found in PATH=$PATH"
elif info="$("$OPSKIT_BIN" --config "$OPSKIT_CONFIG" -q archive month ${ASKED_MONTH:+--month "$ASKED_MONTH"} 2>&1)"; then
    read -r MONTH RUN_KEY JOURNAL <<<"$info"
else
    CONFIG_ERROR="opskit could not read its configuration or the month: $info"
fi
# Without opskit's answer: the asked month, else the previous month in this zone (TZ=).
if [[ -z "$MONTH" ]]; then
    MONTH="${ASKED_MONTH:-$(date -d "$(date '+%Y-%m-01') -1 month" '+%Y-%m')}"
    MONTH="${MONTH//[^0-9-]/_}"
fi

# ---- log file (falls back to /tmp so that a bad LOG_DIR still gets logged and alerted) -----
if ! mkdir -p "$LOG_DIR" 2>/dev/null || ! [[ -w "$LOG_DIR" ]]; then
    echo "$SCRIPT_NAME: cannot write to LOG_DIR=$LOG_DIR; logging to /tmp" >&2
    LOG_DIR="/tmp"
fi
LOG_FILE="$LOG_DIR/$SCRIPT_NAME-$MONTH.log"
if [[ -t 1 ]]; then
    # From a terminal: to the terminal and to the log.
    exec > >(tee -a "$LOG_FILE") 2>&1
else
    exec >>"$LOG_FILE" 2>&1
fi
log "start: $OPSKIT_BIN --config $OPSKIT_CONFIG archive run $* (month $MONTH)"

if [[ -n "$CONFIG_ERROR" ]]; then
    REASON="$CONFIG_ERROR"
    log "$REASON"
    if command -v "$OPSKIT_BIN" >/dev/null 2>&1; then exit 2; else exit 127; fi
fi

# ---- one run at a time ----------------------------------------------------------------------
mkdir -p "$(dirname "$LOCK_FILE")"
exec 9>>"$LOCK_FILE"
if ! flock -n 9; then
    REASON="another run holds $LOCK_FILE (still running?); this run was refused"
    exit 3
fi

# ---- the run ----------------------------------------------------------------------------------
RECEIPT="$(mktemp "${TMPDIR:-/tmp}/opskit-alert-receipt.XXXXXX")"
# In the background so that a TERM/INT reaches the trap at once, not after opskit ends. The
# lock fd is not passed on: a crashed wrapper must not leave the lock held by an orphan.
OPSKIT_ALERT_RECEIPT="$RECEIPT" "$OPSKIT_BIN" --config "$OPSKIT_CONFIG" archive run "$@" 9>&- &
CHILD_PID=$!
set +e
wait "$CHILD_PID"
rc=$?
set -e
CHILD_PID=""

if ((rc == 0)); then
    log "done"
    exit 0
elif ((rc > 128)); then
    REASON="opskit was killed by signal $((rc - 128)) (crash, OOM killer or kill -$((rc - 128)))"
elif ((rc > 3)); then
    REASON="opskit ended with the unexpected exit code $rc (a crash?)"
else
    REASON="opskit archive run exited $rc (1 failed, 2 bad usage/config, 3 refused; see $LOG_FILE)"
fi
exit "$rc"
