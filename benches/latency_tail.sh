#!/usr/bin/env bash
# Where a latency tail comes from: the latency scenario's load (100 HTTP/1.1
# streams x 10 events/s, 100-byte payload) through each target, watched with
# instruments that count rather than time, so that a loaded machine still
# gives usable answers.
#
#   benches/latency_tail.sh [--targets direct,ssegate,nginx] [--rounds N]
#                           [--seconds S] [--streams N] [--rate R] [--no-sched] [--keep]
#
# Each round runs every target in turn (fresh bench upstream and proxy, pinned
# like compare.sh: proxy on core 0, upstream and load generator on core 1).
# After a 3 s ramp and settle, for S seconds (default 10):
#   - perf stat on the proxy's process: context switches, epoll_wait,
#     recvfrom/sendto/writev/read/write, task-clock (CPU per event, and how
#     many events each wake-up handled);
#   - perf sched record on both cores (unless --no-sched); latency_tail.py
#     then groups each process's runs into the bursts of the upstream's
#     ticks: how long the proxy's burst lasts from the tick, how long it ran,
#     how often it was woken, how long it waited for its core (sch delay:
#     other work on the machine), and the same for the bench upstream and
#     the load generator on core 1;
#   - for ssegate, its ssegate_relay_delay_seconds histogram from the admin
#     /metrics endpoint (an [admin] listener is added to benches/conf's
#     config for this script only), before and after.
# The load generator's own latency percentiles (whole run) come last.
#
# Needs root (perf tracepoints), perf (Debian package linux-perf), taskset,
# python3, and nginx for the nginx target. SSEGATE_BIN: the ssegate binary
# (default: the release build of this checkout, built first). Everything
# stays on 127.0.0.1 and every run is bounded in time. Output: a text report
# on stdout; raw files in a temporary folder kept with --keep.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HERE="$ROOT/benches"
TARGETS="direct ssegate nginx"
ROUNDS=1
SECS=10
STREAMS=100
RATE=10
SCHED=1
KEEP=0

say() { echo "latency_tail: $*" >&2; }
die() { echo "latency_tail: error: $*" >&2; exit 1; }
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --targets) TARGETS="${2:?--targets needs a list}"; TARGETS="${TARGETS//,/ }"; shift ;;
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
    --seconds) SECS="${2:?--seconds needs a number}"; shift ;;
    --streams) STREAMS="${2:?--streams needs a number}"; shift ;;
    --rate) RATE="${2:?--rate needs a number}"; shift ;;
    --no-sched) SCHED=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
for v in ROUNDS SECS STREAMS RATE; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "${v,,} takes a positive number, got ${!v}"
done
[ "$SECS" -le 120 ] || die "--seconds is at most 120"
[ "$STREAMS" -le 5000 ] || die "--streams is at most 5000"
for t in $TARGETS; do
  case "$t" in direct|ssegate|nginx) ;; *) die "unknown target: $t (known: direct ssegate nginx)" ;; esac
done
command -v perf >/dev/null || die "perf is needed (Debian package linux-perf)"
command -v python3 >/dev/null || die "python3 is needed"
[ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null || die "needs two cores and taskset"
case " $TARGETS " in *" nginx "*) command -v nginx >/dev/null || die "nginx is not installed (apt-get install nginx-light, or benches/compare.sh installs it)" ;; esac

# shellcheck source=benches/procs.sh
source "$HERE/procs.sh"
find_ssegate
PY=(python3 "$HERE/compare.py")
ANALYZE=(python3 "$HERE/latency_tail.py")

WORK="$(mktemp -d /tmp/ssegate-latency-tail.XXXXXX)"
on_exit() {
  cleanup
  if [ "$KEEP" = 1 ]; then say "raw files kept in $WORK"; else rm -rf "$WORK"; fi
}
trap on_exit EXIT

metrics() { # metrics ADMIN_ADDR OUT: the admin endpoint's /metrics, or nothing
  python3 - "$1" >"$2" 2>/dev/null <<'EOF' || true
import sys, urllib.request
print(urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode())
EOF
}

# cell TARGET ROUND: one measurement, its raw files in $WORK/TARGET-rROUND.
cell() {
  local t="$1" r="$2" cell="$WORK/$1-r$2" up p1 p2 pa pid="" root="" url
  mkdir -p "$cell"
  read -r up p1 p2 pa <<<"$("${PY[@]}" free-ports 4)"
  up="127.0.0.1:$up"
  spawn "$cell/up.out" "$cell/up.err" "${LOAD_CPU[@]}" "$BIN" bench upstream --listen "$up" --rate "$RATE" --payload 100
  local up_pid="$SPAWNED"
  "${PY[@]}" wait-port "$up" 15 || die "bench upstream did not start: $(tail -n 3 "$cell/up.err")"
  local render=(sed -e "s#@LISTEN@#127.0.0.1:$p1#g" -e "s#@LISTEN_H2@#127.0.0.1:$p2#g"
    -e "s#@LISTEN_PORT@#$p1#g" -e "s#@UPSTREAM@#$up#g" -e "s#@RUNDIR@#$cell#g"
    -e "s#@NOFILE@#$(ulimit -n)#g" -e "s#@WORKER_CONNECTIONS@#$(( 2 * $(ulimit -n) ))#g"
    -e "s#@MAXCONN@#$(( ($(ulimit -n) - 100) / 2 ))#g")
  case "$t" in
    direct) url="http://$up/sse" ;;
    ssegate)
      "${render[@]}" "$HERE/conf/ssegate.toml" >"$cell/ssegate.toml"
      printf '\n# Added by latency_tail.sh: the relay-delay histogram.\n[admin]\naddress = "127.0.0.1:%s"\n' "$pa" >>"$cell/ssegate.toml"
      "$BIN" check -c "$cell/ssegate.toml" >"$cell/check.log" 2>&1 || die "ssegate check: $(tail -n 3 "$cell/check.log")"
      spawn "$cell/proxy.out" "$cell/proxy.err" env RUST_LOG=warn "${PROXY_CPU[@]}" "$BIN" run -c "$cell/ssegate.toml"
      root="$SPAWNED"; pid="$root"
      url="http://127.0.0.1:$p1/sse" ;;
    nginx)
      for d in body proxy fastcgi uwsgi scgi; do mkdir -p "$cell/nginx-$d"; done
      "${render[@]}" "$HERE/conf/nginx.conf" >"$cell/nginx.conf"
      spawn "$cell/proxy.out" "$cell/proxy.err" "${PROXY_CPU[@]}" nginx -p "$cell" -c "$cell/nginx.conf"
      root="$SPAWNED"
      for _ in $(seq 50); do pid="$(pgrep -P "$root" nginx | head -n 1 || true)"; [ -n "$pid" ] && break; sleep 0.1; done
      [ -n "$pid" ] || die "nginx started no worker: $(tail -n 3 "$cell/proxy.err")"
      url="http://127.0.0.1:$p1/sse" ;;
  esac
  [ "$t" = direct ] || "${PY[@]}" wait-port "127.0.0.1:$p1" 15 || die "$t did not start: $(tail -n 3 "$cell/proxy.err")"
  [ "$t" != ssegate ] || "${PY[@]}" wait-port "127.0.0.1:$pa" 15 || die "ssegate's admin listener did not start"
  "${PY[@]}" probe "$url?count=1" 10 >"$cell/probe.log" 2>&1 || die "$t: probe failed: $(tail -n 1 "$cell/probe.log")"

  # The load: ramp 1 s, then 2 s to settle, S s measured, 2 s to spare.
  spawn "$cell/bench.json" "$cell/bench.err" timeout -s INT -k 5 $(( SECS + 70 )) \
    "${LOAD_CPU[@]}" "$BIN" bench --json --url "$url" --streams "$STREAMS" --ramp 1s --duration "$(( SECS + 5 ))s"
  local bench_pid="$SPAWNED"
  sleep 3
  printf '%s %s %s %s\n' "$t" "${root:-0}" "${pid:-0}" "$up_pid" >"$cell/pids"
  [ "$t" != ssegate ] || metrics "127.0.0.1:$pa" "$cell/metrics_before.txt"
  local stat_pid="" sched_pid=""
  if [ -n "$pid" ]; then
    # Every thread of the proxy's worker process (-p follows all of them).
    spawn /dev/null "$cell/stat.err" perf stat -x, -o "$cell/stat.csv" -p "$pid" \
      -e raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom \
      -e syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_read \
      -e syscalls:sys_enter_write,context-switches,cpu-migrations,task-clock \
      -- sleep "$SECS"
    stat_pid="$SPAWNED"
  fi
  if [ "$SCHED" = 1 ]; then
    spawn "$cell/sched.out" "$cell/sched.err" perf sched record -o "$cell/sched.data" -a -- sleep "$SECS"
    sched_pid="$SPAWNED"
  fi
  # Processes: the upstream and the load generator, by pid, for the analysis.
  echo "$(pgrep -f -n -- "--url $url" || true)" >"$cell/bench.pid"
  [ -z "$stat_pid" ] || { wait "$stat_pid" || true; forget "$stat_pid"; }
  [ -z "$sched_pid" ] || { wait "$sched_pid" || true; forget "$sched_pid"; }
  [ "$t" != ssegate ] || metrics "127.0.0.1:$pa" "$cell/metrics_after.txt"
  wait "$bench_pid" || true
  forget "$bench_pid"
  if [ "$SCHED" = 1 ] && [ -s "$cell/sched.data" ]; then
    perf sched timehist -i "$cell/sched.data" >"$cell/timehist.txt" 2>"$cell/timehist.err" || true
    rm -f "$cell/sched.data"
  fi
  [ -z "$root" ] || stop "$root" INT
  stop "$up_pid" INT
  "${ANALYZE[@]}" cell "$cell" "$RATE" "$SECS" "$STREAMS" | tee -a "$WORK/rows.jsonl" | "${ANALYZE[@]}" line
}

say "$STREAMS streams x $RATE events/s, $SECS s watched per cell, $ROUNDS round(s); targets: $TARGETS; load average: $(cut -d ' ' -f 1-3 /proc/loadavg)"
"${ANALYZE[@]}" header
for r in $(seq "$ROUNDS"); do
  for t in $TARGETS; do cell "$t" "$r"; done
done
"${ANALYZE[@]}" summary "$WORK/rows.jsonl"
say "load average at end: $(cut -d ' ' -f 1-3 /proc/loadavg)"
