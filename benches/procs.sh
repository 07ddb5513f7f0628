# Sourced by benches/soak.sh and benches/upgrade.sh: the ssegate binary they
# run, and processes started in the background, every one of them stopped
# when the script exits, however it exits. Before sourcing, the script defines say() and
# may set STOP_WAIT (seconds a process gets between its signal and SIGKILL,
# default 5) and CLEANUP_SIGNAL (what processes still running at exit get,
# default INT). Afterwards PROXY_CPU and LOAD_CPU pin commands to core 0 and
# core 1 (empty when the machine cannot), and the open-files limit is raised
# to the hard limit.

STOP_WAIT="${STOP_WAIT:-5}"
CLEANUP_SIGNAL="${CLEANUP_SIGNAL:-INT}"
LIVE_PIDS=()

# forget PID: no longer ours to stop.
forget() {
  local keep=() p
  for p in "${LIVE_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  LIVE_PIDS=("${keep[@]+"${keep[@]}"}")
}

# stop PID [SIGNAL]: signal (default INT), wait up to STOP_WAIT s, then SIGKILL.
stop() {
  local pid="$1" sig="${2:-INT}"
  if kill -0 "$pid" 2>/dev/null; then
    kill -s "$sig" "$pid" 2>/dev/null || true
    for _ in $(seq $(( STOP_WAIT * 10 ))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

# Every process still ours, in the order started (a churn driver before the
# bench runs it stops by pid itself).
cleanup() {
  local p
  for p in "${LIVE_PIDS[@]+"${LIVE_PIDS[@]}"}"; do stop "$p" "$CLEANUP_SIGNAL"; done
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# spawn OUT ERR CMD...: start CMD in the background; its pid is in SPAWNED.
spawn() {
  local out="$1" err="$2"
  shift 2
  "$@" >"$out" 2>"$err" &
  SPAWNED=$!
  LIVE_PIDS+=("$SPAWNED")
}

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PROXY_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1)
else
  say "warning: not pinned (needs two cores and taskset): proxy and load share the cores"
  PROXY_CPU=(); LOAD_CPU=()
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# find_ssegate: sets BIN to the binary to run: $SSEGATE_BIN if set, else
# the release build of this checkout (built first). Needs ROOT, say and die.
find_ssegate() {
  if [ -n "${SSEGATE_BIN:-}" ]; then
    BIN="$SSEGATE_BIN"
    return
  fi
  say "building ssegate (release)"
  (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
  BIN="$ROOT/target/release/ssegate"
}
