#!/usr/bin/env bash
# Soak: thousands of event streams through ssegate for minutes, with clients
# coming and going and the upstream restarted; then every descriptor and
# (within a stated margin) the memory must be given back.
#
#   benches/soak.sh [--quick] [--streams N] [--duration S] [--slots K]
#                   [--rate R] [--restarts N] [--out DIR]
#
# 1. `ssegate bench upstream` (R events/s, 100-byte payload) and ssegate
#    (release build, one worker, pinned to core 0); a 10-stream warm-up so
#    lazy start-up allocations are in the baseline; sample ssegate (baseline).
# 2. Churn (pinned to core 1): K client slots of N/K streams each. A slot
#    runs one `ssegate bench --reconnect` of a random length after another
#    (60 to 180 s; --quick 10 to 25 s), the slots starting a few seconds
#    apart, so about N streams are open at any moment while some slots are
#    closing theirs and opening new ones.
# 3. The upstream is killed (SIGKILL) and started again on the same port at
#    1/3 and 2/3 of the run (--restarts N: N times, evenly spread); the
#    restarted one continues the id sequence (--first-id), generating the
#    last 10 ids again as an origin that keeps its events would replay them,
#    so the clients resume without a gap.
# 4. ssegate's VmRSS and open descriptors are sampled after the ramp, at
#    the middle, and at the end once every client has left (every 5 s as
#    well, in DIR/samples.csv).
#
# Leak verdict (exit 1): at the end, descriptors must be back to the
# baseline ±2, ssegate_streams_open (admin /metrics) must be 0, and RSS
# within the baseline + 2 KiB per stream, at least 4 MiB. ssegate gives
# the heap memory freed by a large drop in connections back to the OS
# within 10 s (src/memory.rs), so the end sample is taken 12 s after the
# last socket closed.
#
# Defaults: 5,000 streams, 600 s, 10 slots, 2 events/s. --quick: 500
# streams, 60 s, 5 slots. Everything stays in DIR (default: a new folder
# under /tmp, printed at the start).
#
# Environment: SSEGATE_BIN overrides the release binary built here.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY=(python3 "$ROOT/benches/resilience.py")

STREAMS=5000
DURATION=600
SLOTS=10
RATE=2
REPLAY=10
RESTARTS=2
OUT=""
QUICK=0
# Descriptors may differ by this much at the end (see BENCHMARKS.md).
FD_MARGIN=2
# RSS may end this much above the baseline, in KiB per stream, and at least
# RSS_MARGIN_MIN_KIB (see BENCHMARKS.md).
RSS_MARGIN_PER_STREAM_KIB=2
RSS_MARGIN_MIN_KIB=4096

usage() { sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; }
say() { echo "soak: $(date +%T) $*" >&2; }
die() { echo "soak: error: $*" >&2; exit 2; }
num() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 takes a whole number, got $2"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; STREAMS=500; DURATION=60; SLOTS=5 ;;
    --streams) num "$1" "${2:-}"; STREAMS="$2"; shift ;;
    --duration) num "$1" "${2:-}"; DURATION="$2"; shift ;;
    --slots) num "$1" "${2:-}"; SLOTS="$2"; shift ;;
    --rate) num "$1" "${2:-}"; RATE="$2"; shift ;;
    --restarts) num "$1" "${2:-}"; RESTARTS="$2"; shift ;;
    --out) OUT="${2:?--out needs a folder}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
if [ "$DURATION" -lt 120 ]; then
  MIN_LEN=10; MAX_LEN=25; STAGGER=1; RAMP=2
else
  MIN_LEN=60; MAX_LEN=180; STAGGER=3; RAMP=5
fi
[ "$DURATION" -ge 40 ] || die "--duration must be at least 40 s"
[ $(( STREAMS % SLOTS )) = 0 ] || die "--streams ($STREAMS) must be a multiple of --slots ($SLOTS)"
PER_SLOT=$(( STREAMS / SLOTS ))
case "$(uname -s)" in Linux) ;; *) die "Linux only (/proc, taskset)" ;; esac
command -v python3 >/dev/null || die "python3 is needed"

# ---------------------------------------------------------------------------
# processes: every one started here is stopped on exit, by pid
STOP_WAIT=10
CLEANUP_SIGNAL=TERM
# shellcheck source=benches/procs.sh
source "$ROOT/benches/procs.sh"
NOFILE="$(ulimit -n)"
[ "$NOFILE" = unlimited ] || [ $(( 2 * STREAMS + 500 )) -le "$NOFILE" ] ||
  die "$STREAMS streams need about $(( 2 * STREAMS + 500 )) descriptors in ssegate; the open-files limit is $NOFILE"

# ---------------------------------------------------------------------------
# build, configure, start

find_ssegate
"$BIN" bench upstream --help 2>/dev/null | grep -q -- --first-id || die "$BIN has no 'bench upstream --first-id'"

[ -n "$OUT" ] || OUT="$(mktemp -d /tmp/ssegate-soak.XXXXXX)"
mkdir -p "$OUT/clients"
OUT="$(cd "$OUT" && pwd)"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '+dirty')"
say "$STREAMS streams in $SLOTS slots for $DURATION s, $RATE events/s; everything in $OUT"

UP_PORT="$("${PY[@]}" free-port)"
UP_ADDR="127.0.0.1:$UP_PORT"
UP_GEN=0
start_upstream() { # start_upstream FIRST_ID
  spawn "$OUT/upstream-$UP_GEN.out" "$OUT/upstream-$UP_GEN.err" "${LOAD_CPU[@]}" "$BIN" bench upstream \
    --listen "$UP_ADDR" --rate "$RATE" --payload 100 --first-id "$1"
  UP_PID="$SPAWNED"
  "${PY[@]}" wait-listen "$OUT/upstream-$UP_GEN.out" 15 >/dev/null ||
    die "the bench upstream did not start: $(tail -n 2 "$OUT/upstream-$UP_GEN.err")"
  UP_GEN=$(( UP_GEN + 1 ))
}
start_upstream 1

PORT="$("${PY[@]}" free-port)"
ADMIN="127.0.0.1:$("${PY[@]}" free-port)"
CONF="$OUT/ssegate.toml"
cat >"$CONF" <<EOF
# benches/soak.sh: one worker, pinned to core 0 by the script.
[server]
threads = 1
pid_file = "$OUT/ssegate.pid"
upgrade_sock = "$OUT/upgrade.sock"
grace_period = "1s"
shutdown_timeout = "1s"

[[listener]]
address = "127.0.0.1:$PORT"

[admin]
address = "$ADMIN"

[stream]
heartbeat = "15s"

[[upstream]]
name = "bench"
servers = ["$UP_ADDR"]

[[route]]
path = "/"
upstream = "bench"
EOF
"$BIN" check -c "$CONF" >"$OUT/check.log" 2>&1 || { cat "$OUT/check.log" >&2; die "ssegate check refused $CONF"; }
spawn "$OUT/ssegate.out" "$OUT/ssegate.err" env RUST_LOG=warn "${PROXY_CPU[@]}" "$BIN" run -c "$CONF"
PROXY_PID="$SPAWNED"
"${PY[@]}" wait-port "127.0.0.1:$PORT" 15 || die "ssegate did not start: $(tail -n 3 "$OUT/ssegate.err")"
URL="http://127.0.0.1:$PORT/soak"

sample() { # sample NAME: ssegate's RSS and descriptors now
  "${PY[@]}" sample "$PROXY_PID" >"$OUT/sample-$1.json" || die "ssegate is gone (sample $1): $(tail -n 3 "$OUT/ssegate.err")"
  say "sample $1: $(cat "$OUT/sample-$1.json")"
}

# Warm-up: lazy allocations of the first streams belong to the baseline.
"${LOAD_CPU[@]}" "$BIN" bench --json --url "$URL" --streams 10 --duration 1s >"$OUT/warmup.json" 2>"$OUT/warmup.err" ||
  die "warm-up failed: $(tail -n 2 "$OUT/warmup.err")"
sleep 2
sample baseline
BASE_FDS="$("${PY[@]}" sample "$PROXY_PID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["fds"])')"
spawn /dev/null "$OUT/sampler.err" "${LOAD_CPU[@]}" "${PY[@]}" sampler "$PROXY_PID" 5 "$OUT/samples.csv"
SAMPLER_PID="$SPAWNED"

# ---------------------------------------------------------------------------
# churn, restarts, samples

LOAD_START="$(cut -d ' ' -f 1 /proc/loadavg)"
T0=$(date +%s)
spawn "$OUT/churn.out" "$OUT/churn.err" timeout -s TERM -k 15 $(( DURATION + MAX_LEN + 60 )) \
  "${LOAD_CPU[@]}" "${PY[@]}" churn "$BIN" "$URL" "$OUT/clients" "$SLOTS" "$PER_SLOT" "$DURATION" \
  "$STAGGER" "$MIN_LEN" "$MAX_LEN" "$RAMP" 42
CHURN_PID="$SPAWNED"

# at SECONDS: sleep until that many seconds after the churn started.
at() {
  local left=$(( T0 + $1 - $(date +%s) ))
  [ "$left" -le 0 ] || sleep "$left"
  kill -0 "$PROXY_PID" 2>/dev/null || die "ssegate died: $(tail -n 3 "$OUT/ssegate.err")"
  kill -0 "$CHURN_PID" 2>/dev/null || die "the clients stopped early: $(tail -n 3 "$OUT/churn.err")"
}

restart_upstream() {
  local last first
  # The id the origin sends next, then 100 ms for it to reach every client.
  # On a busy machine a SIGKILL can still land while the origin is writing
  # an event to some of its thousands of subscribers; an origin that keeps
  # its events would replay those after Last-Event-ID. The restarted bench
  # origin stands in for that by generating the last REPLAY ids again
  # (same ids, new timestamps): a client resumes after whatever it last got,
  # and the origin sends nothing at or below a client's Last-Event-ID, so
  # this adds no duplicate.
  last="$("${PY[@]}" last-id "$UP_ADDR" 10)" || die "cannot read the upstream's last id"
  sleep 0.1
  kill -KILL "$UP_PID"
  wait "$UP_PID" 2>/dev/null || true
  forget "$UP_PID"
  first=$(( last > REPLAY ? last + 1 - REPLAY : 1 ))
  say "upstream killed after id $last; starting it again with --first-id $first"
  echo "$(date +%s.%N) $last" >>"$OUT/restarts.txt"
  start_upstream "$first"
}

# The restarts spread evenly over the run (two: at 1/3 and 2/3); the
# middle sample at 1/2, moved 5 s later if a restart falls within 5 s of it.
RAMPED_AT=$(( SLOTS * STAGGER + RAMP + 5 ))
MIDDLE=$(( DURATION / 2 ))
EVENTS=("$RAMPED_AT sample ramped")
for i in $(seq "$RESTARTS"); do
  r=$(( DURATION * i / (RESTARTS + 1) ))
  [ $(( r > MIDDLE - 5 && r <= MIDDLE ? 1 : 0 )) = 0 ] || MIDDLE=$(( r + 5 ))
  EVENTS+=("$r restart_upstream")
done
EVENTS+=("$MIDDLE sample middle")
while read -r when what; do
  at "$when"; $what
done < <(printf '%s\n' "${EVENTS[@]}" | sort -n -k1,1)

# Every client leaves when its run ends; the last ones end at DURATION.
CHURN_CODE=0
wait "$CHURN_PID" || CHURN_CODE=$?
forget "$CHURN_PID"
[ "$CHURN_CODE" = 0 ] || say "warning: the churn process exited $CHURN_CODE: $(tail -n 3 "$OUT/churn.err")"
say "every client left; waiting for ssegate to close their sockets"
"${PY[@]}" wait-fds "$PROXY_PID" $(( BASE_FDS + FD_MARGIN )) 30
# ssegate's memory trimmer looks every 10 s (src/memory.rs).
sleep 12
sample end
"${PY[@]}" metric "$ADMIN" ssegate_streams_open >"$OUT/streams-open-end.json" || true
LOAD_END="$(cut -d ' ' -f 1 /proc/loadavg)"
stop "$SAMPLER_PID" TERM
stop "$PROXY_PID" INT
stop "$UP_PID" INT

echo "ssegate soak: commit $COMMIT, $STREAMS streams in $SLOTS slots of $PER_SLOT, $DURATION s, $RATE events/s, upstream restarted $RESTARTS times$([ "$QUICK" = 1 ] && echo ' (--quick)'); load average $LOAD_START at the start, $LOAD_END at the end"
RSS_MARGIN=$(( RSS_MARGIN_PER_STREAM_KIB * STREAMS ))
[ "$RSS_MARGIN" -ge "$RSS_MARGIN_MIN_KIB" ] || RSS_MARGIN=$RSS_MARGIN_MIN_KIB
"${PY[@]}" soak-report "$OUT" "$STREAMS" "$RSS_MARGIN" "$FD_MARGIN"
