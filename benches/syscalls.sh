#!/usr/bin/env bash
# Per-event work of the proxy in steady state: syscalls by kind, context
# switches, and user against kernel CPU, ssegate next to nginx.
#
#   benches/syscalls.sh [--mode h1|h2] [--rounds N] [--seconds S] [--targets ssegate,nginx]
#
# Each round starts, for every target in turn, a fresh bench upstream
# (20 events/s, 100-byte payload) and a fresh proxy with the configs of
# benches/conf/, pinned like compare.sh (proxy on core 0, load on core 1),
# opens 1,000 streams (h1: one HTTP/1.1 connection each; h2: over 10 h2c
# connections), waits 4 s for the ramp to pass, then counts for S seconds
# (default 10) with `perf stat` on the proxy's worker process:
# raw_syscalls:sys_enter, sendto, writev, recvfrom, epoll_wait,
# context-switches and task-clock, and reads utime and stime from /proc.
# Targets alternate within a round, so a change in the machine's load hits
# both alike. One line per (round, target), then the medians.
#
# Needs perf with tracepoint access (root), taskset, and nginx for the
# nginx target. SSEGATE_BIN: the ssegate binary to use (default: the
# release build of this checkout, built first).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HERE="$ROOT/benches"
MODE=h1
ROUNDS=3
SECS=10
TARGETS="ssegate nginx"

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "syscalls: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE="${2:?--mode needs h1 or h2}"; shift ;;
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
    --seconds) SECS="${2:?--seconds needs a number}"; shift ;;
    --targets) TARGETS="${2:?--targets needs a list}"; TARGETS="${TARGETS//,/ }"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
case "$MODE" in h1|h2) ;; *) die "--mode is h1 or h2, got $MODE" ;; esac
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds takes a positive number"
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || die "--seconds takes a positive number"
for t in $TARGETS; do
  case "$t" in ssegate|nginx) ;; *) die "unknown target: $t (known: ssegate nginx)" ;; esac
done
command -v perf >/dev/null || die "perf is needed (Debian package linux-perf)"
command -v taskset >/dev/null || die "taskset is needed (Debian package util-linux)"
case " $TARGETS " in *" nginx "*) command -v nginx >/dev/null || die "nginx is not installed" ;; esac

if [ -n "${SSEGATE_BIN:-}" ]; then
  BIN="$SSEGATE_BIN"
else
  echo "syscalls: building ssegate (release)" >&2
  (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
  BIN="$ROOT/target/release/ssegate"
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK="$(mktemp -d /tmp/ssegate-syscalls.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  local master
  master="$(cat "$WORK/cell/nginx.pid" 2>/dev/null || true)"
  [ -z "$master" ] || kill "$master" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap 'cleanup; rm -rf "$WORK"' EXIT

PY=(python3 "$HERE/compare.py")

ticks() { # utime stime of a pid, in clock ticks
  local f; read -r -a f <"/proc/$1/stat"
  echo "${f[13]} ${f[14]}"
}

# One measurement: prints "target sys sendto writev recvfrom epoll_wait ctxsw task_ms user_ticks sys_ticks events".
measure() {
  local t="$1" cell="$WORK/cell" up p1 p2 pid url flags
  rm -rf "$cell"; mkdir -p "$cell"
  local up_port
  read -r up_port p1 p2 <<<"$("${PY[@]}" free-ports 3)"
  up="127.0.0.1:$up_port"
  taskset -c 1 "$BIN" bench upstream --listen "$up" --rate 20 --payload 100 >"$cell/up.log" 2>&1 &
  PIDS+=($!)
  local render=(sed -e "s#@LISTEN@#127.0.0.1:$p1#g" -e "s#@LISTEN_H2@#127.0.0.1:$p2#g"
    -e "s#@LISTEN_PORT@#$p1#g" -e "s#@UPSTREAM@#$up#g" -e "s#@RUNDIR@#$cell#g"
    -e "s#@NOFILE@#20000#g" -e "s#@WORKER_CONNECTIONS@#40000#g" -e "s#@MAXCONN@#9950#g")
  if [ "$t" = ssegate ]; then
    "${render[@]}" "$HERE/conf/ssegate.toml" >"$cell/ssegate.toml"
    RUST_LOG=warn taskset -c 0 "$BIN" run -c "$cell/ssegate.toml" >"$cell/proxy.log" 2>&1 &
    pid=$!; PIDS+=("$pid")
    url="http://127.0.0.1:$p1/sse"
  else
    for d in body proxy fastcgi uwsgi scgi; do mkdir -p "$cell/nginx-$d"; done
    "${render[@]}" "$HERE/conf/nginx.conf" >"$cell/nginx.conf"
    taskset -c 0 nginx -p "$cell" -c "$cell/nginx.conf" >"$cell/proxy.log" 2>&1 &
    PIDS+=($!)
    local master=$!
    for _ in $(seq 50); do pid="$(pgrep -P "$master" nginx | head -n 1 || true)"; [ -n "$pid" ] && break; sleep 0.1; done
    [ -n "$pid" ] || die "nginx started no worker: $(tail -n 3 "$cell/proxy.log")"
    url="http://127.0.0.1:$p1/sse"; [ "$MODE" = h1 ] || url="http://127.0.0.1:$p2/sse"
  fi
  "${PY[@]}" wait-port "$up" 15 || die "bench upstream did not start: $(tail -n 3 "$cell/up.log")"
  "${PY[@]}" wait-port "127.0.0.1:$p1" 15 || die "$t did not start: $(tail -n 3 "$cell/proxy.log")"
  flags=(); [ "$MODE" = h1 ] || flags=(--http2 --connections 10)
  taskset -c 1 "$BIN" bench --json --url "$url" --streams 1000 "${flags[@]}" --ramp 1s \
    --duration "$((SECS + 6))s" >"$cell/bench.json" 2>"$cell/bench.err" &
  local bench=$!
  sleep 4
  local before after
  before="$(ticks "$pid")"
  perf stat -x, -o "$cell/stat.csv" -p "$pid" \
    -e raw_syscalls:sys_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_writev \
    -e syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,context-switches,task-clock \
    -- sleep "$SECS" 2>/dev/null
  after="$(ticks "$pid")"
  wait "$bench" || true
  cleanup; PIDS=()
  python3 - "$t" "$cell/stat.csv" "$before" "$after" "$cell/bench.json" <<'EOF'
import json, sys
t, stat, before, after, bench = sys.argv[1:]
v = {}
for line in open(stat):
    f = line.strip().split(",")
    if len(f) > 2 and f[0] and not line.startswith("#"):
        try:
            v[f[2].split(":")[-1]] = float(f[0])
        except ValueError:
            pass
u0, s0 = map(int, before.split()); u1, s1 = map(int, after.split())
opened = json.load(open(bench)).get("streams_opened", 0)
print(t, int(v.get("sys_enter", 0)), int(v.get("sys_enter_sendto", 0)), int(v.get("sys_enter_writev", 0)),
      int(v.get("sys_enter_recvfrom", 0)), int(v.get("sys_enter_epoll_wait", 0)),
      int(v.get("context-switches", 0)), round(v.get("task-clock", 0)), u1 - u0, s1 - s0, opened)
EOF
}

echo "mode $MODE, 1,000 streams x 20 events/s, ${SECS} s counted per cell, $ROUNDS round(s)"
printf '%-6s %-8s %9s %8s %8s %9s %7s %7s %8s %6s %6s\n' round target syscalls sendto writev recvfrom epoll ctxsw task_ms user sys
for r in $(seq "$ROUNDS"); do
  for t in $TARGETS; do
    read -r name sys send wv recv ep cs ms ut st opened <<<"$(measure "$t")"
    [ "$opened" = 1000 ] || echo "warning: $t opened $opened of 1000 streams" >&2
    printf '%-6s %-8s %9s %8s %8s %9s %7s %7s %8s %6s %6s\n' "$r" "$name" "$sys" "$send" "$wv" "$recv" "$ep" "$cs" "$ms" "$ut" "$st" |
      tee -a "$WORK/rows"
  done
done
echo "medians (task_ms = CPU ms in the window; user/sys in clock ticks of 10 ms):"
for t in $TARGETS; do
  awk -v t="$t" '$2 == t { i = n++; ms[i] = $9; u[i] = $10; s[i] = $11 }
    function med(a, n,   i, j, x) { for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
      return n % 2 ? a[int(n / 2)] : (a[n / 2 - 1] + a[n / 2]) / 2 }
    END { if (n) printf "  %-8s task_ms %s  user %s  sys %s\n", t, med(ms, n), med(u, n), med(s, n) }' "$WORK/rows"
done
