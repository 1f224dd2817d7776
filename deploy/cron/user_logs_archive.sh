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
#   - a log file per month;
#   - the webhook is called whenever the run fails, crashes, is killed, or the wrapper itself
#     fails, even when opskit could not send its own alert;
#   - an exit code that tells what happened (opskit's own: 0 done, 1 failed, 2 bad config,
#     3 refused; 128+N killed by signal N).
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
REASON=""
CHILD_PID=""
NOTIFIED=0

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

# POSTs the failure to the webhook, with a timeout per attempt and a bounded number of
# attempts. Never fails: the wrapper's exit code is the run's, not the webhook's.
notify() {
    local rc="$1" reason="$2" payload tail_lines attempt=1 delay=2
    [[ -n "$WEBHOOK_URL" ]] || { log "no WEBHOOK_URL set; not alerting"; return 0; }
    tail_lines="$(tail -n 20 "$LOG_FILE" 2>/dev/null || true)"
    payload="{\"source\":$(json_str "$SCRIPT_NAME.sh"),\"runbook\":\"archive\""
    payload+=",\"host\":$(json_str "$HOST"),\"exit_code\":$rc"
    payload+=",\"reason\":$(json_str "$reason"),\"log\":$(json_str "$LOG_FILE")"
    payload+=",\"config\":$(json_str "$OPSKIT_CONFIG")"
    payload+=",\"time\":$(json_str "$(date -u '+%Y-%m-%dT%H:%M:%SZ')")"
    payload+=",\"log_tail\":$(json_str "$tail_lines")}"
    while ((attempt <= WEBHOOK_ATTEMPTS)); do
        if printf '%s' "$payload" | curl --silent --show-error --fail \
            --connect-timeout 5 --max-time "$WEBHOOK_TIMEOUT_SECS" \
            -H 'Content-Type: application/json' -X POST --data-binary @- \
            "$WEBHOOK_URL" >/dev/null; then
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
        notify "$rc" "$REASON"
    fi
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
        fi
    fi
    exit $((128 + num))
}

trap on_err ERR
trap on_exit EXIT
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT
trap 'on_signal HUP 1' HUP

# ---- log file (falls back to /tmp so that a bad LOG_DIR still gets logged and alerted) -----
if ! mkdir -p "$LOG_DIR" 2>/dev/null || ! [[ -w "$LOG_DIR" ]]; then
    echo "$SCRIPT_NAME: cannot write to LOG_DIR=$LOG_DIR; logging to /tmp" >&2
    LOG_DIR="/tmp"
fi
LOG_FILE="$LOG_DIR/$SCRIPT_NAME-$(date '+%Y-%m').log"
exec >>"$LOG_FILE" 2>&1
log "start: $OPSKIT_BIN --config $OPSKIT_CONFIG archive run $*"

# ---- one run at a time ----------------------------------------------------------------------
mkdir -p "$(dirname "$LOCK_FILE")"
exec 9>>"$LOCK_FILE"
if ! flock -n 9; then
    REASON="another run holds $LOCK_FILE (still running?); this run was refused"
    exit 3
fi

command -v "$OPSKIT_BIN" >/dev/null 2>&1 || {
    REASON="$OPSKIT_BIN not found in PATH=$PATH"
    exit 127
}

# ---- the run ----------------------------------------------------------------------------------
# In the background so that a TERM/INT reaches the trap at once, not after opskit ends. The
# lock fd is not passed on: a crashed wrapper must not leave the lock held by an orphan.
"$OPSKIT_BIN" --config "$OPSKIT_CONFIG" archive run "$@" 9>&- &
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
else
    REASON="opskit archive run exited $rc (1 failed, 2 bad usage/config, 3 refused; see $LOG_FILE)"
fi
exit "$rc"
