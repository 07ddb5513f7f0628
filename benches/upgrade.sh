#!/usr/bin/env bash
# Event streams across a zero-downtime upgrade: no event lost, none repeated.
#
#   benches/upgrade.sh [--quick] [--streams N] [--duration S] [--upgrade-at S]
#                      [--rate R] [--out DIR]
#
# 1. `ssegate bench upstream` (R events/s, 100-byte payload), pinned to core 1;
# 2. ssegate (release build, one worker) in front of it, pinned to core 0;
# 3. `ssegate bench --reconnect --streams N --duration S --json` against the
#    proxy, pinned to core 1;
# 4. at --upgrade-at seconds: `ssegate run -c FILE --upgrade` beside the
#    running process, then SIGQUIT to the old one: it hands its listening
#    socket over at once, waits 5 s (pingora's fixed CLOSE_TIMEOUT, so the
#    new process is surely accepting), then ends each stream at an event
#    boundary after `retry: 1000..2000`; the bench's streams reconnect with
#    Last-Event-ID to the new process;
# 5. the bench's report: streams, reconnections, gaps, duplicates, failed
#    opens, longest disconnection, events delivered.
#
# Exits 1 when any gap or duplicate was seen, a stream never opened or was
# not open when the run ended, fewer reconnections than streams were made,
# or the old process did not exit cleanly. Defaults: 1,000 streams, 30 s,
# upgrade at 10 s, 20 events/s. --quick: 100 streams, 14 s, upgrade at 3 s
# (the streams move 5 to 7 s after SIGQUIT, and the run must outlast that).
# Logs, the config and the bench's JSON stay in DIR (default: a new folder
# under /tmp, printed at the end).
#
# Environment: SSEGATE_BIN overrides the release binary built here (both
# proxies, the bench and the origin).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=(python3 "$ROOT/benches/resilience.py")

STREAMS=1000
DURATION=30
UPGRADE_AT=10
RATE=20
RAMP=2
OUT=""
QUICK=0

usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; }
say() { echo "upgrade: $*" >&2; }
die() { echo "upgrade: error: $*" >&2; exit 2; }
num() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 takes a whole number, got $2"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; STREAMS=100; DURATION=14; UPGRADE_AT=3; RAMP=1 ;;
    --streams) num "$1" "${2:-}"; STREAMS="$2"; shift ;;
    --duration) num "$1" "${2:-}"; DURATION="$2"; shift ;;
    --upgrade-at) num "$1" "${2:-}"; UPGRADE_AT="$2"; shift ;;
    --rate) num "$1" "${2:-}"; RATE="$2"; shift ;;
    --out) OUT="${2:?--out needs a folder}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
[ "$UPGRADE_AT" -gt "$RAMP" ] || die "--upgrade-at must come after the ${RAMP} s ramp"
[ $(( UPGRADE_AT + 10 )) -le "$DURATION" ] ||
  die "--duration must be at least --upgrade-at + 10 s: the streams move 5 to 7 s after SIGQUIT"
case "$(uname -s)" in Linux) ;; *) die "Linux only (/proc, taskset)" ;; esac
command -v python3 >/dev/null || die "python3 is needed"

# ---------------------------------------------------------------------------
# processes: every one started here is stopped on exit, by pid
STOP_WAIT=5
CLEANUP_SIGNAL=INT
# shellcheck source=benches/procs.sh
source "$ROOT/benches/procs.sh"

# ---------------------------------------------------------------------------
# build and configure

find_ssegate
"$BIN" bench --help 2>/dev/null | grep -q -- --reconnect || die "$BIN has no 'bench --reconnect'"

[ -n "$OUT" ] || OUT="$(mktemp -d /tmp/ssegate-upgrade.XXXXXX)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '+dirty')"

spawn "$OUT/upstream.out" "$OUT/upstream.err" "${LOAD_CPU[@]}" "$BIN" bench upstream \
  --listen 127.0.0.1:0 --rate "$RATE" --payload 100
UP_PID="$SPAWNED"
UP_ADDR="$("${PY[@]}" wait-listen "$OUT/upstream.out" 15)" || die "the bench upstream did not start"

PORT="$("${PY[@]}" free-port)"
CONF="$OUT/ssegate.toml"
SOCK="$OUT/upgrade.sock"
cat >"$CONF" <<EOF
# benches/upgrade.sh: one worker, pinned to core 0 by the script.
[server]
threads = 1
pid_file = "$OUT/ssegate.pid"
upgrade_sock = "$SOCK"
grace_period = "5s"
shutdown_timeout = "2s"

[[listener]]
address = "127.0.0.1:$PORT"

[stream]
heartbeat = "15s"
shutdown_retry = "1s"
shutdown_retry_jitter = "1s"

[[upstream]]
name = "bench"
servers = ["$UP_ADDR"]

[[route]]
path = "/"
upstream = "bench"
EOF
"$BIN" check -c "$CONF" >"$OUT/check.log" 2>&1 || { cat "$OUT/check.log" >&2; die "ssegate check refused $CONF"; }

# The access log (one line per ended stream, with its end reason) shows how
# each process let its streams go.
LOG_ENV=(env RUST_LOG=warn,ssegate::access=info)
spawn "$OUT/old.out" "$OUT/old.err" "${LOG_ENV[@]}" "${PROXY_CPU[@]}" "$BIN" run -c "$CONF"
OLD_PID="$SPAWNED"
"${PY[@]}" wait-port "127.0.0.1:$PORT" 15 || die "ssegate did not start: $(tail -n 3 "$OUT/old.err")"

# ---------------------------------------------------------------------------
# run

say "$STREAMS streams for $DURATION s through ssegate on 127.0.0.1:$PORT, upgrade at $UPGRADE_AT s; logs in $OUT"
BENCH_MAX=$(( DURATION + 30 ))
spawn "$OUT/bench.json" "$OUT/bench.err" timeout -s INT -k 5 "$BENCH_MAX" \
  "${LOAD_CPU[@]}" "$BIN" bench --reconnect --json --url "http://127.0.0.1:$PORT/sse" \
  --streams "$STREAMS" --ramp "${RAMP}s" --duration "${DURATION}s"
BENCH_PID="$SPAWNED"
T0=$(date +%s.%N)

sleep "$UPGRADE_AT"
kill -0 "$BENCH_PID" 2>/dev/null || die "the bench ended before the upgrade: $(tail -n 2 "$OUT/bench.err")"
kill -0 "$OLD_PID" 2>/dev/null || die "ssegate died before the upgrade: $(tail -n 3 "$OUT/old.err")"

rm -f "$SOCK"
spawn "$OUT/new.out" "$OUT/new.err" "${LOG_ENV[@]}" "${PROXY_CPU[@]}" "$BIN" run -c "$CONF" --upgrade
NEW_PID="$SPAWNED"
"${PY[@]}" wait-file "$SOCK" 15 || die "the new process does not wait on $SOCK: $(tail -n 3 "$OUT/new.err")"
T_QUIT=$(date +%s.%N)
kill -QUIT "$OLD_PID"
say "SIGQUIT to the old process $OLD_PID at $(awk -v a="$T_QUIT" -v b="$T0" 'BEGIN { printf "%.1f", a - b }') s; new process $NEW_PID"

# The old process drains for grace_period, then stops within shutdown_timeout.
OLD_CODE=""
for _ in $(seq 200); do
  if ! kill -0 "$OLD_PID" 2>/dev/null; then
    OLD_CODE=0; wait "$OLD_PID" || OLD_CODE=$?
    forget "$OLD_PID"
    break
  fi
  sleep 0.1
done
T_OLD=$(date +%s.%N)
if [ -z "$OLD_CODE" ]; then
  OLD_EXIT="still running 20 s after SIGQUIT"; OLD_CODE=124
else
  OLD_EXIT="$(awk -v a="$T_OLD" -v b="$T_QUIT" 'BEGIN { printf "%.1f", a - b }') s after SIGQUIT, exit code $OLD_CODE"
fi
kill -0 "$NEW_PID" 2>/dev/null || die "the new process died: $(tail -n 3 "$OUT/new.err")"

BENCH_CODE=0
wait "$BENCH_PID" || BENCH_CODE=$?
forget "$BENCH_PID"
[ "$BENCH_CODE" = 0 ] || say "the bench exited $BENCH_CODE: $(tail -n 2 "$OUT/bench.err")"

# The new process writes an access-log line as each stream's end is noticed:
# wait until the count stops changing (at most 10 s) before stopping it.
seen=-1
for _ in $(seq 20); do
  now="$(grep -c 'stream end' "$OUT/new.err" || true)"
  [ "$now" = "$seen" ] && break
  seen="$now"; sleep 0.5
done
stop "$NEW_PID" INT
stop "$UP_PID" INT

# ends FILE: "shutdown 1000, client_gone 3" from an access log.
ends() {
  local counts
  counts="$(grep -o 'end=[a-z_]*' "$1" 2>/dev/null | sort | uniq -c | awk '{ sub("end=", "", $2); printf "%s%s %d", sep, $2, $1; sep = ", " }')"
  echo "${counts:-none}"
}
printf '{"old_exit": "%s", "old_exit_code": %d, "old_ends": "%s", "new_ends": "%s"}\n' \
  "$OLD_EXIT" "$OLD_CODE" "$(ends "$OUT/old.err")" "$(ends "$OUT/new.err")" >"$OUT/facts.json"

echo "ssegate upgrade with $STREAMS streams: commit $COMMIT, $DURATION s, $RATE events/s, SIGQUIT at ${UPGRADE_AT} s$([ "$QUICK" = 1 ] && echo ' (--quick)')"
"${PY[@]}" upgrade-report "$OUT/bench.json" "$STREAMS" "$OUT/facts.json"
