#!/usr/bin/env bash
# ssegate against direct, nginx, Caddy and HAProxy, on the same scenarios.
#
#   benches/compare.sh [--quick] [--scenarios idle,fanout,h2mux,latency,shared,websocket,cluster]
#                      [--targets direct,ssegate,nginx,caddy,haproxy]
#                      [--out DIR] [--duration SECONDS] [--no-install] [--no-chart]
#                      [--rounds N]
#
# Every (scenario, target) cell gets a fresh bench upstream and a fresh proxy:
#   - the proxy (one worker/thread) runs pinned to core 0 (taskset -c 0);
#   - the bench upstream, the load generator and this script's samplers run
#     pinned to core 1;
#   - "direct" is the load generator against the bench upstream, no proxy.
# Scenarios run one after the other, each through every target in turn, so a
# change in the machine's load hits all targets of a scenario alike.
#
# Results: DIR/results.json (every raw figure), a markdown report on stdout
# (also DIR/report.md) and DIR/chart.png. Logs and rendered configs: DIR/run/.
# DIR defaults to benches/results (benches/results/quick with --quick).
#
# --rounds N (latency only) runs the latency scenario N times, alternating
# the targets within each round (direct, ssegate, nginx, direct, ssegate,
# nginx, ...), and reports for each target the median and the range over the
# rounds of its p99 and p99.9 and of its added p99 and p99.9 (minus direct's in
# the same round). Other scenarios run once, as without it.
#
# The shared scenario (shared streams: a route with `share = true` makes
# identical subscribers share one upstream stream) is four cells per target,
# each selectable alone; `shared` names all four:
#   shared-h1     1,000 HTTP/1.1 subscribers x 20 events/s
#   shared-h2     10,000 subscribers over 10 h2c connections x 2 events/s
#   shared-idle   10,000 idle HTTP/1.1 subscribers (?idle=1)
#   shared-scale  100,000 subscribers of one stream over 100 h2c connections
#                 x 1 event/s, ssegate only: a proxy that cannot share opens
#                 one upstream connection per subscriber, and 100,000 do not
#                 fit the open-files limit (20,000 here)
# ssegate's rendered config gets SSEGATE_SHARE_KEYS (below) on its route; the
# peers keep their usual configs and so open one upstream connection per
# subscriber (shared-idle gives them min(10000, (limit - 200) / 2)
# subscribers, as idle does). Every subscriber of a cell asks for the same
# URL: one stream key. Per target the report shows the proxy's CPU per
# delivered event, the origin's connections and streams (peak open and
# accepted during the run, from the bench upstream's GET /_stats), the
# origin's CPU, p50 and p99 latency, the proxy's RSS per subscriber while
# all are held, gaps, and ratios to nginx. SSEGATE_SHARE=0 runs ssegate
# without the keys; so does a build whose `ssegate check` refuses them (said
# on stderr and in the report).
#
# The websocket scenario (WebSocket tunnels through each proxy to an echo
# origin, benches/ws_load.rs) is two cells; `websocket` names both:
#   ws-h1   1,000 HTTP/1.1 tunnels (Upgrade) x 10 messages/s of 64 bytes,
#           direct and every proxy
#   ws-h2   the same 1,000 tunnels as RFC 8441 streams over 10 h2c
#           connections, through the proxies whose h2c port advertises
#           SETTINGS_ENABLE_CONNECT_PROTOCOL (the others are skipped, with
#           their answer as the reason; direct is skipped: the echo origin
#           speaks HTTP/1.1 only)
# Each tunnel times the echo of each of its messages; after the sending,
# all tunnels are held open and silent while the proxy's RSS is sampled.
# nginx and HAProxy take benches/conf/nginx-ws.conf and haproxy-ws.cfg;
# ssegate's rendered config gets SSEGATE_WS_KEYS (below). The report shows
# p50 and p99 round-trip time, the proxy's CPU-s per million echoes (one
# echo = one message through the proxy each way), its RSS per idle tunnel,
# and ratios to nginx. A build of ssegate whose `ssegate check` refuses the
# keys fails its cells at once, with the checker's words.
#
# The cluster scenario (issue 14: ssegate instances sharing streams through
# one Redis) is ssegate only and opt-in: it is not among the default
# scenarios, `--scenarios cluster` names its two cells (each selectable alone):
#   cluster-fanout  3 instances and one Redis (redis-server on a free loopback
#                   port, --save "" --appendonly no), one origin, 3,000
#                   subscribers (1,000 per instance) of 10 stream URLs, all
#                   with one Host header so that a URL is one stream key on
#                   every instance: 10 load clients per instance, one per URL
#   cluster-redis   what one Redis carries: 3 instances, 10 stream URLs, one
#                   subscriber per URL per instance that has any, the origin's
#                   rate stepped up, with 2 followers per stream (subscribers
#                   on all 3 instances) and with 0 (on instance 1 only); a
#                   fresh Redis, origin and instances per step
# Instances (one worker thread each) run on core 0; Redis, the origin and
# the load clients on core 1. benches/cluster.py takes the snapshots (/proc
# CPU of every process, each instance's /metrics, Redis INFO, the origin's
# /_stats) and writes the report: delivered events/s, p99, CPU-s per million
# delivered events per instance, Redis CPU per million appends and reads,
# origin streams, the instances' roles. Without redis-server (and without
# installing it: --quick, --no-install, not root) the cells are skipped.
# REDIS_SERVER overrides the redis-server binary.
#
# --quick is a smoke test of a few seconds per cell: small counts, and only
# direct, ssegate and the peers already installed (nothing is installed).
# Without --quick, missing peers are installed from Debian's packages
# (nginx-light, caddy, haproxy) when running as root; a peer that cannot be
# had is skipped with a "skip:" line. See BENCHMARKS.md for the methodology.
#
# Environment: BENCH_BIN overrides the binary providing `bench` and
# `bench upstream` (default: the release ssegate built by this script);
# SSEGATE_SHARE=0 leaves the sharing keys out of ssegate's config.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HERE="$ROOT/benches"
PY=(python3 "$HERE/compare.py")

QUICK=0
SCENARIOS=""
TARGETS=""
OUT=""
DURATION_OVERRIDE=""
INSTALL=1
CHART=1
ROUNDS=1
# The bench upstream serves any path; one fixed path keeps logs readable.
BENCH_PATH="/sse"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
say() { echo "compare: $*" >&2; }
# thousands N: 9900 -> 9,900 (locale-independent).
thousands() { echo "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'; }
die() { echo "compare: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --scenarios) SCENARIOS="${2:?--scenarios needs a list}"; shift ;;
    --targets) TARGETS="${2:?--targets needs a list}"; shift ;;
    --out) OUT="${2:?--out needs a folder}"; shift ;;
    --duration) DURATION_OVERRIDE="${2:?--duration needs seconds}"; shift ;;
    --no-install) INSTALL=0 ;;
    --no-chart) CHART=0 ;;
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

SHARED_SCENARIOS="shared-h1 shared-h2 shared-idle shared-scale"
WS_SCENARIOS="ws-h1 ws-h2"
CLUSTER_SCENARIOS="cluster-fanout cluster-redis"
ALL_SCENARIOS="idle fanout h2mux latency $SHARED_SCENARIOS $WS_SCENARIOS"
# The cluster cells run only when named (they need redis-server).
KNOWN_SCENARIOS="$ALL_SCENARIOS $CLUSTER_SCENARIOS"
ALL_TARGETS="direct ssegate nginx caddy haproxy"
SCENARIOS="${SCENARIOS:-$ALL_SCENARIOS}"; SCENARIOS="${SCENARIOS//,/ }"
# "shared" names its four cells, "websocket" its two, "cluster" its two.
SCENARIOS=" $SCENARIOS "; SCENARIOS="${SCENARIOS// shared / $SHARED_SCENARIOS }"
SCENARIOS="${SCENARIOS// websocket / $WS_SCENARIOS }"
SCENARIOS="${SCENARIOS// cluster / $CLUSTER_SCENARIOS }"
SCENARIOS="$(echo $SCENARIOS)"
ONLY_CLUSTER=1
for s in $SCENARIOS; do
  case " $KNOWN_SCENARIOS " in *" $s "*) ;; *) die "unknown scenario: $s (known: $KNOWN_SCENARIOS)" ;; esac
  case " $CLUSTER_SCENARIOS " in *" $s "*) ;; *) ONLY_CLUSTER=0 ;; esac
done
TARGETS_GIVEN=1
# The cluster cells measure ssegate alone: no peer to install for them.
[ -n "$TARGETS" ] || [ "$ONLY_CLUSTER" = 0 ] || TARGETS=ssegate
[ -n "$TARGETS" ] || { TARGETS="$ALL_TARGETS"; TARGETS_GIVEN=0; }
TARGETS="${TARGETS//,/ }"
for t in $TARGETS; do
  case " $ALL_TARGETS " in *" $t "*) ;; *) die "unknown target: $t (known: $ALL_TARGETS)" ;; esac
done
if [ -z "$OUT" ]; then
  if [ "$QUICK" = 1 ]; then OUT="$HERE/results/quick"; else OUT="$HERE/results"; fi
fi
# Absolute: the peers are started with paths under it from other folders.
OUT="$(realpath -m "$OUT")"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds takes a positive number, got $ROUNDS"
if [ "$ROUNDS" -gt 1 ] && [[ " ${SCENARIOS} " != *" latency "* ]]; then
  die "--rounds applies to the latency scenario only, and it is not among: $SCENARIOS"
fi
[ -z "$DURATION_OVERRIDE" ] || [[ "$DURATION_OVERRIDE" =~ ^[1-9][0-9]*$ ]] ||
  die "--duration takes whole seconds, got $DURATION_OVERRIDE"
case "$(uname -s)" in Linux) ;; *) die "Linux only (/proc, taskset)" ;; esac
command -v python3 >/dev/null || die "python3 is needed"
command -v taskset >/dev/null || die "taskset is needed (Debian package util-linux)"
CL_PY=(python3 "$HERE/cluster.py")

# ---------------------------------------------------------------------------
# processes: everything started here is recorded and stopped on exit

LIVE_PIDS=()
POLICY_RC_CREATED=0

forget() {
  local keep=() p
  for p in "${LIVE_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  LIVE_PIDS=("${keep[@]}")
}

# stop PID [SIGNAL]: signal the process, give it 5 s, then SIGKILL it and any
# descendant it left behind (nginx workers), by pid.
stop() {
  local pid="$1" sig="${2:-TERM}" kids p
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    forget "$pid"
    return 0
  fi
  kids="$("${PY[@]}" pids "$pid" 2>/dev/null || true)"
  kill -s "$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  for p in $kids; do
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  done
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

cleanup() {
  local p
  for p in "${LIVE_PIDS[@]}"; do stop "$p" TERM; done
  if [ "$POLICY_RC_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
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

# ---------------------------------------------------------------------------
# machine

NPROC="$(nproc)"
if [ "$NPROC" -ge 2 ]; then
  PROXY_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1)
else
  say "warning: $NPROC core: nothing is pinned and the figures mix proxy and load"
  PROXY_CPU=(); LOAD_CPU=()
fi

# Every process inherits the hard limit on open files. A proxied HTTP/1.1
# stream holds two descriptors in the proxy (client and upstream side).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
[ "$NOFILE" = unlimited ] && NOFILE=1048576
IDLE_MAX=$(( (NOFILE - 200) / 2 ))

# ---------------------------------------------------------------------------
# scenarios: counts, rates and durations (full, then --quick)

if [ "$QUICK" = 1 ]; then
  IDLE_STREAMS=200; IDLE_RAMP=1; IDLE_DUR=5
  FAN_STREAMS=100; FAN_RATE=20; FAN_DUR=3
  H2_STREAMS=100; H2_CONNS=2; H2_DUR=3
  LAT_STREAMS=20; LAT_RATE=10; LAT_DUR=3
  # The shared cells sample the proxy once all are open: 5 s leave room.
  SH1_STREAMS=100; SH1_RATE=20; SH1_RAMP=1; SH1_DUR=5
  SH2_STREAMS=200; SH2_CONNS=2; SH2_RATE=2; SH2_RAMP=1; SH2_DUR=5
  SIDLE_STREAMS=200; SIDLE_RAMP=1; SIDLE_DUR=5
  SCALE_STREAMS=2000; SCALE_CONNS=2; SCALE_RATE=1; SCALE_RAMP=1; SCALE_DUR=6
  # Sending for WS_DUR s (ramp included), then WS_IDLE s silent.
  WS_TUNNELS=100; WS_CONNS=2; WS_RAMP=1; WS_DUR=2; WS_IDLE=2
  CL_SUBS=300; CL_RATE=5; CL_RAMP=1; CL_DUR=6
  CR_STEPS="2:20 0:20"; CR_DUR=5
else
  IDLE_STREAMS=10000; IDLE_RAMP=5; IDLE_DUR=20
  FAN_STREAMS=1000; FAN_RATE=20; FAN_DUR=20
  H2_STREAMS=1000; H2_CONNS=10; H2_DUR=20
  LAT_STREAMS=100; LAT_RATE=10; LAT_DUR=20
  # shared-h2 at 2 events/s delivers what shared-h1 does (20,000 events/s):
  # the load generator has one core, and 20 events/s to 10,000 subscribers
  # would measure it rather than the proxy.
  SH1_STREAMS=1000; SH1_RATE=20; SH1_RAMP=1; SH1_DUR=20
  SH2_STREAMS=10000; SH2_CONNS=10; SH2_RATE=2; SH2_RAMP=2; SH2_DUR=20
  SIDLE_STREAMS=10000; SIDLE_RAMP=5; SIDLE_DUR=20
  SCALE_STREAMS=100000; SCALE_CONNS=100; SCALE_RATE=1; SCALE_RAMP=10; SCALE_DUR=40
  WS_TUNNELS=1000; WS_CONNS=10; WS_RAMP=2; WS_DUR=20; WS_IDLE=5
  # cluster-fanout: CL_SUBS subscribers over 3 instances x 10 URLs (an even
  # split: CL_SUBS is a multiple of 30). cluster-redis: steps FOLLOWERS:RATE
  # (events/s per stream, 10 streams), CR_DUR s each. With 2 followers the
  # three instances share core 0 and deliver 3 events per append: 1,000/s
  # per stream (30,000 deliveries/s) is about three quarters of it.
  CL_SUBS=3000; CL_RATE=10; CL_RAMP=2; CL_DUR=20
  CR_STEPS="2:1 2:100 2:300 2:1000 1:300 1:1000 0:1 0:100 0:300 0:1000 0:3000"; CR_DUR=15
fi
CL_INSTANCES=3; CL_URLS=10
[ $(( CL_SUBS % (CL_INSTANCES * CL_URLS) )) = 0 ] || die "CL_SUBS must be a multiple of $(( CL_INSTANCES * CL_URLS ))"
# Messages per second per tunnel, and their size (a 20-digit send time, then padding).
WS_RATE=10; WS_PAYLOAD=64
# shared-scale's full size, named in its skip reasons.
SCALE_FULL=100000
PAYLOAD=100
RAMP=1
if [ "$IDLE_STREAMS" -gt "$IDLE_MAX" ]; then
  say "idle: $IDLE_MAX streams, not $IDLE_STREAMS: a proxy needs two descriptors per stream and the open-files limit is $NOFILE"
  IDLE_STREAMS="$IDLE_MAX"
fi
if [ -n "$DURATION_OVERRIDE" ]; then
  # The idle ramp is part of its duration and sampling needs a few seconds after it.
  IDLE_DUR=$(( DURATION_OVERRIDE > IDLE_RAMP + 4 ? DURATION_OVERRIDE : IDLE_RAMP + 4 ))
  FAN_DUR="$DURATION_OVERRIDE"
  H2_DUR="$DURATION_OVERRIDE"; LAT_DUR="$DURATION_OVERRIDE"
  # The shared cells sample the proxy once every subscriber is open, at the
  # earliest 1 s after the ramp, and at least 3 s before the end.
  SH1_DUR=$(( DURATION_OVERRIDE > SH1_RAMP + 5 ? DURATION_OVERRIDE : SH1_RAMP + 5 ))
  SH2_DUR=$(( DURATION_OVERRIDE > SH2_RAMP + 5 ? DURATION_OVERRIDE : SH2_RAMP + 5 ))
  SIDLE_DUR=$(( DURATION_OVERRIDE > SIDLE_RAMP + 5 ? DURATION_OVERRIDE : SIDLE_RAMP + 5 ))
  SCALE_DUR=$(( DURATION_OVERRIDE > SCALE_RAMP + 8 ? DURATION_OVERRIDE : SCALE_RAMP + 8 ))
  WS_DUR=$(( DURATION_OVERRIDE > WS_RAMP + 2 ? DURATION_OVERRIDE : WS_RAMP + 2 ))
  # The cluster cells need a steady window after the openings.
  CL_DUR=$(( DURATION_OVERRIDE > CL_RAMP + 5 ? DURATION_OVERRIDE : CL_RAMP + 5 ))
  CR_DUR=$(( DURATION_OVERRIDE > 5 ? DURATION_OVERRIDE : 5 ))
fi

# ssegate's route in the shared-* cells: these keys (their names are pinned)
# make identical subscribers share one upstream stream. SSEGATE_SHARE=0 runs
# those cells without them (ssegate then opens one upstream connection per
# subscriber, as the peers do).
SSEGATE_SHARE_KEYS='share = true
replay_events = 1000
replay_bytes = "1MiB"'
SSEGATE_SHARE="${SSEGATE_SHARE:-1}"
case "$SSEGATE_SHARE" in 0|1) ;; *) die "SSEGATE_SHARE is 0 or 1, got $SSEGATE_SHARE" ;; esac
SHARE_NOTE="SSEGATE_SHARE=$SSEGATE_SHARE"

# ssegate's config in the ws-* cells (the names are pinned): WebSockets pass
# on every route by default; these keep a silent tunnel 10 minutes, as the
# peers' ws configs do, and advertise RFC 8441 on h2.
SSEGATE_WS_KEYS='[websocket]
idle_timeout = "10m"
h2 = true'

# ---------------------------------------------------------------------------
# build

say "building ssegate (release)"
"$ROOT/dev" setup >&2
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
SSEGATE="$ROOT/target/release/ssegate"
BENCH_BIN="${BENCH_BIN:-$SSEGATE}"
"$BENCH_BIN" bench --help >/dev/null 2>&1 ||
  die "$BENCH_BIN has no 'bench' subcommand (the load generator lives on branch bench-harness)"
"$BENCH_BIN" bench upstream --help >/dev/null 2>&1 ||
  die "$BENCH_BIN has no 'bench upstream' subcommand"
# The websocket cells' echo origin and load client (benches/ws_load.rs),
# built as a bench target so that its WebSocket crate stays a dev-dependency.
WS_BIN=""
if [[ " $SCENARIOS " == *" ws-"* ]]; then
  say "building benches/ws_load.rs (release)"
  WS_BIN="$(cd "$ROOT" && cargo bench --no-run --quiet --bench ws_load --message-format=json-render-diagnostics |
    "${PY[@]}" bench-exe ws_load)" || die "cargo bench --no-run --bench ws_load failed"
fi

# ---------------------------------------------------------------------------
# peers

declare -A PEER_PKG=([nginx]=nginx-light [caddy]=caddy [haproxy]=haproxy)
declare -A PEER_BIN=([nginx]=nginx [caddy]=caddy [haproxy]=haproxy)
declare -A H2=([direct]=1 [ssegate]=1)
declare -A VERSION=()
declare -A H2_NOTE=()
SKIPS=()

# apt_install PKG...: installs Debian packages without letting them start
# their system services (nginx on :80, Redis on :6379, ...). APT_WHY is
# empty when it worked, else why not.
apt_install() {
  APT_WHY=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    POLICY_RC_CREATED=1
  fi
  if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@") >"/tmp/compare-apt.$$.log" 2>&1; then
    APT_WHY="apt-get install $* failed: $(tail -n 1 "/tmp/compare-apt.$$.log")"
  fi
  rm -f "/tmp/compare-apt.$$.log"
  if [ "$POLICY_RC_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
}

want_target() { case " $TARGETS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
drop_target() {
  local keep="" t
  for t in $TARGETS; do [ "$t" = "$1" ] || keep="$keep $t"; done
  TARGETS="${keep# }"
}

missing=()
for peer in nginx caddy haproxy; do
  want_target "$peer" || continue
  command -v "${PEER_BIN[$peer]}" >/dev/null && continue
  if [ "$QUICK" = 1 ] && [ "$TARGETS_GIVEN" = 0 ]; then
    drop_target "$peer"   # quick smoke: only what is already here
    continue
  fi
  missing+=("$peer")
done
if [ "${#missing[@]}" -gt 0 ]; then
  pkgs=()
  for peer in "${missing[@]}"; do pkgs+=("${PEER_PKG[$peer]}"); done
  why=""
  if [ "$INSTALL" = 0 ]; then why="--no-install"
  elif [ "$(id -u)" != 0 ]; then why="not root"
  elif ! command -v apt-get >/dev/null; then why="no apt-get"
  else
    say "installing ${pkgs[*]} from Debian's packages"
    apt_install "${pkgs[@]}"
    why="$APT_WHY"
  fi
  for peer in "${missing[@]}"; do
    if ! command -v "${PEER_BIN[$peer]}" >/dev/null; then
      echo "skip: $peer (not installable: ${why:-${PEER_PKG[$peer]} installed no ${PEER_BIN[$peer]}})"
      SKIPS+=("$peer"$'\t\t'"not installable: ${why:-no binary}")
      drop_target "$peer"
    fi
  done
fi

# redis-server for the cluster cells: installed like the peers (Debian's
# redis-server) when missing, or the cells are skipped.
REDIS_SERVER="${REDIS_SERVER:-redis-server}"
CLUSTER_SKIP=""
if [[ " $SCENARIOS " == *" cluster-"* ]]; then
  if ! want_target ssegate; then
    CLUSTER_SKIP="ssegate is not among the targets"
  elif ! command -v "$REDIS_SERVER" >/dev/null; then
    if [ "$QUICK" = 1 ] || [ "$INSTALL" = 0 ] || [ "$(id -u)" != 0 ]; then
      CLUSTER_SKIP="no $REDIS_SERVER here, and it is not installed with --quick, --no-install or without root"
    else
      say "installing redis-server from Debian's packages"
      apt_install redis-server
      CLUSTER_SKIP="$APT_WHY"
      command -v "$REDIS_SERVER" >/dev/null || CLUSTER_SKIP="${CLUSTER_SKIP:-redis-server installed no $REDIS_SERVER}"
    fi
  fi
  if [ -n "$CLUSTER_SKIP" ]; then
    say "cluster cells skipped: $CLUSTER_SKIP"
  else
    VERSION[redis]="$("$REDIS_SERVER" --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
    say "redis-server ${VERSION[redis]} for the cluster cells"
  fi
fi

VERSION[ssegate]="$("$SSEGATE" --version | awk '{print $2}') ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '+dirty'))"
VERSION[direct]="bench upstream"
H2_NOTE[ssegate]="h2c on the plain listener"
H2_NOTE[direct]="bench upstream speaks h2c"
if want_target nginx; then
  VERSION[nginx]="$(nginx -v 2>&1 | sed 's/.*nginx\///')"
  if nginx -V 2>&1 | grep -- '--with-http_v2_module' >/dev/null; then
    H2[nginx]=1; H2_NOTE[nginx]="h2c via 'listen ... http2' on a second plain port"
  else
    H2[nginx]=0; H2_NOTE[nginx]="built without http_v2_module"
  fi
fi
if want_target haproxy; then
  VERSION[haproxy]="$(haproxy -v 2>&1 | awk 'NR == 1 {print $3}')"
  if haproxy -vv 2>&1 | grep -E '^ *h2 : mode=HTTP +side=FE' >/dev/null; then
    H2[haproxy]=1; H2_NOTE[haproxy]="h2c via 'bind ... proto h2' on a second port"
  else
    H2[haproxy]=0; H2_NOTE[haproxy]="no h2 frontend multiplexer"
  fi
fi
if want_target caddy; then
  VERSION[caddy]="$(caddy version 2>&1 | awk '{print $1}' | sed 's/^v//')"
  # The `servers { protocols h1 h2c }` global option exists from Caddy 2.6.
  if printf '%s\n' "2.6" "${VERSION[caddy]}" | sort -V -C; then
    H2[caddy]=1; H2_NOTE[caddy]="h2c via 'servers { protocols h1 h2c }' on the same port"
  else
    H2[caddy]=0; H2_NOTE[caddy]="Caddy ${VERSION[caddy]} predates 'protocols h2c'"
  fi
fi
for t in $TARGETS; do say "target $t ${VERSION[$t]:-}; h2 downstream: ${H2[$t]:-0} (${H2_NOTE[$t]:-})"; done
[ -n "$TARGETS" ] || die "no target left to run"

# ---------------------------------------------------------------------------
# results

LOAD1="$(cut -d ' ' -f 1 /proc/loadavg)"
if awk -v l="$LOAD1" -v n="$NPROC" 'BEGIN { exit !(l > n / 4) }'; then
  say "warning: load average $LOAD1 on $NPROC cores: other work shares these cores and the figures will be noisy"
fi

mkdir -p "$OUT"
RUN="$OUT/run"
rm -rf "$RUN"
mkdir -p "$RUN"
RESULTS="$OUT/results.json"

: >"$RUN/peers.tsv"
for t in nginx caddy haproxy; do
  if want_target "$t"; then
    printf '%s\t%s\t%s\t%s\n' "$t" "${VERSION[$t]}" "${H2[$t]}" "${H2_NOTE[$t]}" >>"$RUN/peers.tsv"
  fi
done
printf '%s\n' "${SKIPS[@]+"${SKIPS[@]}"}" >"$RUN/skips.tsv"

# ---------------------------------------------------------------------------
# one cell

# render TEMPLATE DEST: fill the placeholders of a benches/conf template.
render() {
  sed -e "s#@LISTEN@#127.0.0.1:$P1#g" -e "s#@LISTEN_H2@#127.0.0.1:$P2#g" \
      -e "s#@LISTEN_PORT@#$P1#g" -e "s#@UPSTREAM@#$UP_ADDR#g" \
      -e "s#@RUNDIR@#$CELL#g" -e "s#@NOFILE@#$NOFILE#g" \
      -e "s#@WORKER_CONNECTIONS@#$(( 2 * NOFILE ))#g" \
      -e "s#@MAXCONN@#$(( (NOFILE - 100) / 2 ))#g" "$1" >"$2"
  if grep -q '@[A-Z_0-9]*@' "$2"; then die "unfilled placeholder in $2"; fi
}

# render_ssegate DEST SHARE: ssegate's config; with SHARE=1 its route gets
# SSEGATE_SHARE_KEYS, right under the template's one [[route]] header.
render_ssegate() {
  render "$HERE/conf/ssegate.toml" "$1"
  [ "$2" = 1 ] || return 0
  [ "$(grep -c '^\[\[route\]\]' "$1")" = 1 ] || die "benches/conf/ssegate.toml must have exactly one [[route]]"
  awk -v keys="$SSEGATE_SHARE_KEYS" '{ print } /^\[\[route\]\]/ { print keys }' "$1" >"$1.tmp"
  mv "$1.tmp" "$1"
}

# Does this ssegate take the sharing keys? Until a build parses them,
# `ssegate check` refuses them, and the shared cells run ssegate without.
SHARE_USED=0
want_target ssegate || SHARE_NOTE="ssegate is not among the targets"
if [ "$SSEGATE_SHARE" = 1 ] && want_target ssegate &&
   [[ " $SCENARIOS " == *" shared-"* ]]; then
  CELL="$RUN/share-check"; mkdir -p "$CELL"
  P1=1; P2=2; UP_ADDR="127.0.0.1:3"
  render_ssegate "$CELL/ssegate.toml" 1
  if "$SSEGATE" check -c "$CELL/ssegate.toml" >"$CELL/check.log" 2>&1; then
    SHARE_USED=1
    SHARE_NOTE="$(echo "$SSEGATE_SHARE_KEYS" | paste -sd ';' | sed 's/;/; /g')"
  else
    SHARE_NOTE="ssegate check refuses the sharing keys ($(grep -m 1 -i 'error' "$CELL/check.log" || tail -n 1 "$CELL/check.log")): ssegate ran WITHOUT sharing"
    say "warning: $SHARE_NOTE"
  fi
fi

"${PY[@]}" init "$RESULTS" "$QUICK" "$NOFILE" "$TARGETS" "$SCENARIOS" \
  "${VERSION[ssegate]}" "$RUN/peers.tsv" "$RUN/skips.tsv" "$ROUNDS" \
  "$SHARE_USED" "$SHARE_NOTE"

# render_cluster DIR K [single]: instance K's config in DIR (its own pid
# file and upgrade socket): the bench template with the sharing keys on its
# route, an admin listener on ADMIN_PORT and [cluster] with Redis on
# REDIS_PORT (not with single: one instance on its own).
render_cluster() {
  local dir="$1" k="$2" single="${3:-}" cell_was="$CELL"
  mkdir -p "$dir"
  CELL="$dir"
  render_ssegate "$dir/ssegate.toml" 1
  CELL="$cell_was"
  printf '\n[admin]\naddress = "127.0.0.1:%s"\n' "$ADMIN_PORT" >>"$dir/ssegate.toml"
  [ -n "$single" ] ||
    printf '\n[cluster]\nredis = "redis://127.0.0.1:%s"\nname = "bench-%s"\n' \
      "$REDIS_PORT" "$k" >>"$dir/ssegate.toml"
}

# Does this ssegate take [cluster]? Until a build parses it, `ssegate check`
# refuses it, and the cluster cells are not run (said in the report).
if [[ " $SCENARIOS " == *" cluster-"* ]] && [ -z "$CLUSTER_SKIP" ]; then
  CELL="$RUN/cluster-check"; mkdir -p "$CELL"
  P1=1; P2=2; UP_ADDR="127.0.0.1:3"; ADMIN_PORT=4; REDIS_PORT=5
  render_cluster "$CELL" 1
  if "$SSEGATE" check -c "$CELL/ssegate.toml" >"$CELL/check.log" 2>&1; then
    "${CL_PY[@]}" note "$RESULTS" "ssegate check: $(grep -m 1 '^cluster:' "$CELL/check.log" || echo 'accepts [cluster]')"
  else
    CLUSTER_SKIP="ssegate check refuses [cluster] (a build without the cluster?): $(grep -m 1 -i 'error' "$CELL/check.log" || tail -n 1 "$CELL/check.log")"
    say "warning: $CLUSTER_SKIP"
  fi
fi

# start_proxy TARGET [ws]: config, check, start pinned; sets PROXY_PID,
# H1_BASE, H2_BASE. With ws, the WebSocket configs (nginx-ws.conf,
# haproxy-ws.cfg, ssegate's with SSEGATE_WS_KEYS; Caddy's as is).
start_proxy() {
  local t="$1" ws="${2:-}" p
  read -r P1 P2 <<<"$("${PY[@]}" free-ports 2)"
  case "$t" in
    ssegate)
      render_ssegate "$CELL/ssegate.toml" "$CELL_SHARES"
      [ -z "$ws" ] || printf '\n%s\n' "$SSEGATE_WS_KEYS" >>"$CELL/ssegate.toml"
      "$SSEGATE" check -c "$CELL/ssegate.toml" >"$CELL/check.log" 2>&1 ||
        { cat "$CELL/check.log" >&2; return 1; }
      spawn "$CELL/proxy.out" "$CELL/proxy.err" env RUST_LOG=warn "${PROXY_CPU[@]}" "$SSEGATE" run -c "$CELL/ssegate.toml"
      H1_BASE="http://127.0.0.1:$P1"; H2_BASE="$H1_BASE" ;;
    nginx)
      render "$HERE/conf/nginx${ws:+-ws}.conf" "$CELL/nginx.conf"
      nginx -t -q -p "$CELL" -c "$CELL/nginx.conf" >"$CELL/check.log" 2>&1 ||
        { cat "$CELL/check.log" >&2; return 1; }
      spawn "$CELL/proxy.out" "$CELL/proxy.err" "${PROXY_CPU[@]}" nginx -p "$CELL" -c "$CELL/nginx.conf"
      H1_BASE="http://127.0.0.1:$P1"; H2_BASE="http://127.0.0.1:$P2" ;;
    haproxy)
      render "$HERE/conf/haproxy${ws:+-ws}.cfg" "$CELL/haproxy.cfg"
      haproxy -c -q -f "$CELL/haproxy.cfg" >"$CELL/check.log" 2>&1 ||
        { cat "$CELL/check.log" >&2; return 1; }
      spawn "$CELL/proxy.out" "$CELL/proxy.err" "${PROXY_CPU[@]}" haproxy -db -f "$CELL/haproxy.cfg"
      H1_BASE="http://127.0.0.1:$P1"; H2_BASE="http://127.0.0.1:$P2" ;;
    caddy)
      render "$HERE/conf/Caddyfile" "$CELL/Caddyfile"
      mkdir -p "$CELL/caddy-home"
      local cenv=(env GOMAXPROCS=1 HOME="$CELL/caddy-home" XDG_DATA_HOME="$CELL/caddy-home" XDG_CONFIG_HOME="$CELL/caddy-home")
      "${cenv[@]}" caddy validate --config "$CELL/Caddyfile" --adapter caddyfile >"$CELL/check.log" 2>&1 ||
        { tail -n 3 "$CELL/check.log" >&2; return 1; }
      spawn "$CELL/proxy.out" "$CELL/proxy.err" "${cenv[@]}" "${PROXY_CPU[@]}" caddy run --config "$CELL/Caddyfile" --adapter caddyfile
      H1_BASE="http://127.0.0.1:$P1"; H2_BASE="$H1_BASE" ;;
    *) die "no proxy called $t" ;;
  esac
  PROXY_PID="$SPAWNED"
  for p in $P1 $P2; do
    [ "$p" = "$P2" ] && [ "$H2_BASE" = "$H1_BASE" ] && continue
    "${PY[@]}" wait-port "127.0.0.1:$p" 15 || { tail -n 5 "$CELL/proxy.err" >&2; return 1; }
  done
}

stop_signal() {
  case "$1" in ssegate) echo INT ;; *) echo TERM ;; esac
}

# bench ARGS...: the load generator, pinned, bounded in time, JSON on stdout.
bench() {
  "${LOAD_CPU[@]}" "$BENCH_BIN" bench --json "$@"
}

# run_cell SCENARIO TARGET [ROUND]: one cell; with ROUND, one round of the
# alternating latency rounds (its own cell folder, recorded as that round).
run_cell() {
  local scen="$1" t="$2" rnd="${3:-}" rate streams dur ramp url base flags=() summary want max_s sock_base
  local shared=0 http2=false
  CELL="$RUN/$scen-$t${rnd:+-r$rnd}"
  mkdir -p "$CELL"
  CELL_SHARES=0
  case "$scen" in shared-*) shared=1; CELL_SHARES="$SHARE_USED" ;; esac
  case "$scen" in
    idle) rate=$FAN_RATE; streams=$IDLE_STREAMS; dur=$IDLE_DUR; ramp=$IDLE_RAMP
          summary="$(thousands "$streams") idle HTTP/1.1 streams (?idle=1), opened over ${ramp} s, held to ${dur} s; RSS sampled once all were open" ;;
    fanout) rate=$FAN_RATE; streams=$FAN_STREAMS; dur=$FAN_DUR; ramp=$RAMP
          summary="$(thousands "$streams") HTTP/1.1 streams × $rate events/s, $PAYLOAD-byte payload, $dur s (ramp ${ramp} s included)" ;;
    h2mux) rate=$FAN_RATE; streams=$H2_STREAMS; dur=$H2_DUR; ramp=$RAMP
          flags=(--http2 --connections "$H2_CONNS")
          summary="$(thousands "$streams") streams over $H2_CONNS HTTP/2 (h2c) connections × $rate events/s, $PAYLOAD-byte payload, $dur s (ramp ${ramp} s included)" ;;
    latency) rate=$LAT_RATE; streams=$LAT_STREAMS; dur=$LAT_DUR; ramp=$RAMP
          summary="$(thousands "$streams") HTTP/1.1 streams × $rate events/s, $PAYLOAD-byte payload, $dur s (ramp ${ramp} s included)" ;;
    shared-h1) rate=$SH1_RATE; streams=$SH1_STREAMS; dur=$SH1_DUR; ramp=$SH1_RAMP
          summary="$(thousands "$streams") HTTP/1.1 subscribers of one stream × $rate events/s, $PAYLOAD-byte payload, $dur s (ramp ${ramp} s included)" ;;
    shared-h2) rate=$SH2_RATE; streams=$SH2_STREAMS; dur=$SH2_DUR; ramp=$SH2_RAMP
          flags=(--http2 --connections "$SH2_CONNS")
          summary="$(thousands "$streams") subscribers of one stream over $SH2_CONNS h2c connections × $rate events/s, $PAYLOAD-byte payload, $dur s (ramp ${ramp} s included)" ;;
    shared-idle) rate=$FAN_RATE; streams=$SIDLE_STREAMS; dur=$SIDLE_DUR; ramp=$SIDLE_RAMP
          # A proxy that does not share holds two descriptors per subscriber.
          if [ "$t" != direct ] && [ "$CELL_SHARES$t" != 1ssegate ] && [ "$streams" -gt "$IDLE_MAX" ]; then
            streams=$IDLE_MAX
          fi
          summary="$(thousands "$streams") idle HTTP/1.1 subscribers of one stream (?idle=1), opened over ${ramp} s, held to ${dur} s" ;;
    shared-scale) rate=$SCALE_RATE; streams=$SCALE_STREAMS; dur=$SCALE_DUR; ramp=$SCALE_RAMP
          flags=(--http2 --connections "$SCALE_CONNS")
          summary="$(thousands "$streams") subscribers of one stream over $SCALE_CONNS h2c connections × $rate events/s, $PAYLOAD-byte payload, $dur s (ramp ${ramp} s included)" ;;
  esac
  [ "${#flags[@]}" = 0 ] || http2=true
  [ "$shared" = 0 ] || [ "$t" != ssegate ] ||
    summary="$summary; ssegate's route $([ "$CELL_SHARES" = 1 ] && echo "with share = true" || echo "WITHOUT the sharing keys")"
  write_params() {
    printf '{"summary": "%s", "streams": %d, "rate": %d, "payload": %d, "duration_s": %d, "ramp_s": %d, "http2": %s, "shares": %s}\n' \
      "$summary" "$streams" "$rate" "$PAYLOAD" "$dur" "$ramp" "$http2" \
      "$([ "$t" = ssegate ] && [ "$CELL_SHARES" = 1 ] && echo true || echo false)" >"$CELL/params.json"
  }
  write_params
  say "── $scen / $t${rnd:+ (round $rnd of $ROUNDS)}: $summary"

  # The upstream: fresh for every cell, pinned with the load generator.
  spawn "$CELL/upstream.out" "$CELL/upstream.err" "${LOAD_CPU[@]}" "$BENCH_BIN" bench upstream \
    --listen 127.0.0.1:0 --rate "$rate" --payload "$PAYLOAD"
  UP_PID="$SPAWNED"
  if ! UP_ADDR="$("${PY[@]}" wait-listen "$CELL/upstream.out" 15)"; then
    echo "bench upstream did not start: $(tail -n 3 "$CELL/upstream.err")" >"$CELL/error"
    stop "$UP_PID"; "${PY[@]}" add-run "$RESULTS" "$scen" "$t" "$CELL" ${rnd:+"$rnd"}; return 0
  fi

  PROXY_PID=""
  if [ "$t" = direct ]; then
    H1_BASE="http://$UP_ADDR"; H2_BASE="$H1_BASE"
  elif ! start_proxy "$t"; then
    echo "$t did not start (see $CELL)" >"$CELL/error"
    [ -z "$PROXY_PID" ] || stop "$PROXY_PID" KILL
    stop "$UP_PID"; "${PY[@]}" add-run "$RESULTS" "$scen" "$t" "$CELL" ${rnd:+"$rnd"}; return 0
  fi
  base="$H1_BASE"; [ "$http2" = true ] && base="$H2_BASE"
  url="$base$BENCH_PATH"; case "$scen" in idle|shared-idle) url="$url?idle=1" ;; esac

  # Readiness: one plain HTTP/1.1 event stream end to end, then a short
  # warm-up with the scenario's own protocol, so lazy start-up allocations
  # land in the memory baseline and a failing protocol shows up here.
  if ! "${PY[@]}" probe "$H1_BASE$BENCH_PATH?count=1" 10 >"$CELL/probe.log" 2>&1 ||
     ! bench --url "$url" --streams 10 "${flags[@]}" --duration 1s >"$CELL/warmup.json" 2>"$CELL/warmup.err" ||
     [ "$("${PY[@]}" field "$CELL/warmup.json" streams_opened)" = 0 ]; then
    if [ "$http2" = true ]; then
      echo "skip: $t $scen (h2c warm-up failed: $(cat "$CELL/probe.log" "$CELL/warmup.err" | tail -n 1))"
      "${PY[@]}" skip "$RESULTS" "$t" "$scen" "h2c warm-up failed (see $CELL)"
    else
      echo "warm-up failed: $(cat "$CELL/probe.log" "$CELL/warmup.err" | tail -n 2 | tr '\n' ' ')" >"$CELL/error"
      "${PY[@]}" add-run "$RESULTS" "$scen" "$t" "$CELL" ${rnd:+"$rnd"}
    fi
    [ -z "$PROXY_PID" ] || stop "$PROXY_PID" "$(stop_signal "$t")"
    stop "$UP_PID"; return 0
  fi
  sleep 1

  # A process that died leaves its sample file empty; add-run reports it.
  [ -z "$PROXY_PID" ] || "${LOAD_CPU[@]}" "${PY[@]}" tree "$PROXY_PID" >"$CELL/proxy_before.json" || true
  "${LOAD_CPU[@]}" "${PY[@]}" tree "$UP_PID" >"$CELL/upstream_before.json" || true
  # What the origin serves from here on: its counters, and its high-water
  # marks restarted from what is open now (a shared stream may linger from
  # the warm-up, and the run may take it over).
  [ "$shared" = 0 ] || "${LOAD_CPU[@]}" "${PY[@]}" origin-stats "$UP_ADDR" reset \
    >"$CELL/origin_before.json" 2>"$CELL/origin.err" || true
  # An ssegate whose config takes the sharing keys but which did not share
  # the warm-up's 10 subscribers (the origin saw more than 2 streams at once:
  # the probe's and the shared one) needs two descriptors per HTTP/1.1
  # subscriber, or one per h2c subscriber plus the connections. Past the
  # open-files limit, shared-idle trims as idle does, and shared-scale is
  # not run rather than run into the limit.
  if [ "$shared" = 1 ] && [ "$t" = ssegate ] && [ "$CELL_SHARES" = 1 ]; then
    want="$("${PY[@]}" field "$CELL/origin_before.json" streams.open_max || true)"
    local client_fds="$streams"
    [ "$http2" = false ] || client_fds="${flags[2]}"
    if { [ -z "$want" ] || [ "$want" -gt 2 ]; } && [ $(( client_fds + streams + 200 )) -gt "$NOFILE" ]; then
      why="ssegate did not share the warm-up's 10 subscribers (the origin had ${want:-?} streams open at once), and $(thousands "$streams") upstream connections do not fit the open-files limit of $(thousands "$NOFILE")"
      if [ "$scen" = shared-idle ]; then
        streams="$IDLE_MAX"
        summary="$(thousands "$streams") idle HTTP/1.1 subscribers of one stream (?idle=1), opened over ${ramp} s, held to ${dur} s; trimmed: $why"
        say "$summary"
        write_params
      else
        echo "not run: $why" >"$CELL/error"
        stop "$PROXY_PID" "$(stop_signal "$t")"
        stop "$UP_PID"; "${PY[@]}" add-run "$RESULTS" "$scen" "$t" "$CELL" ${rnd:+"$rnd"}; return 0
      fi
    fi
  fi

  # Bounded: duration plus ramp plus a minute of slack for connecting and closing.
  max_s=$(( dur + ramp + 60 ))
  spawn "$CELL/bench.json" "$CELL/bench.err" timeout -s INT -k 5 "$max_s" \
    "${LOAD_CPU[@]}" "$BENCH_BIN" bench --json --url "$url" --streams "$streams" "${flags[@]}" \
    --ramp "${ramp}s" --duration "${dur}s"
  local bench_pid="$SPAWNED"

  if [ "$shared" = 1 ]; then
    # Once the load generator says every subscriber is open (or the count
    # stops growing after the ramp): proxy, origin and generator samples.
    "${LOAD_CPU[@]}" "${PY[@]}" hold-sample "${PROXY_PID:--}" "$UP_PID" "$UP_ADDR" "$CELL/bench.err" \
      "$streams" $(( ramp + 1 )) $(( dur - 3 )) >"$CELL/hold.json" 2>"$CELL/hold-sample.err" || true
  elif [ "$scen" = idle ] && [ -n "$PROXY_PID" ]; then
    sock_base="$("${PY[@]}" field "$CELL/proxy_before.json" sockets || true)"
    want=$(( ${sock_base:-0} + 2 * streams ))
    # The ramp is part of --duration; sampling takes 2.5 s after the wait.
    "${LOAD_CPU[@]}" "${PY[@]}" idle-sample "$PROXY_PID" "$want" $(( ramp + 2 )) $(( dur - 3 )) \
      >"$CELL/proxy_idle.json" 2>"$CELL/idle-sample.err" || true
  fi

  local rc=0
  wait "$bench_pid" || rc=$?
  forget "$bench_pid"
  [ -z "$PROXY_PID" ] || "${LOAD_CPU[@]}" "${PY[@]}" tree "$PROXY_PID" >"$CELL/proxy_after.json" || true
  "${LOAD_CPU[@]}" "${PY[@]}" tree "$UP_PID" >"$CELL/upstream_after.json" || true
  [ "$shared" = 0 ] || "${LOAD_CPU[@]}" "${PY[@]}" origin-stats "$UP_ADDR" \
    >"$CELL/origin_after.json" 2>>"$CELL/origin.err" || true
  [ "$rc" = 0 ] || echo "bench exited $rc: $(tail -n 2 "$CELL/bench.err" | tr '\n' ' ')" >"$CELL/error"

  [ -z "$PROXY_PID" ] || stop "$PROXY_PID" "$(stop_signal "$t")"
  stop "$UP_PID"
  "${PY[@]}" add-run "$RESULTS" "$scen" "$t" "$CELL" ${rnd:+"$rnd"}
}

# ws_load ARGS...: the WebSocket load client, pinned with the echo origin.
ws_load() {
  "${LOAD_CPU[@]}" "$WS_BIN" load "$@"
}

# run_ws_cell SCENARIO TARGET: one cell of the websocket scenario (ws-h1,
# ws-h2): a fresh echo origin and proxy, a warm-up of 10 tunnels, then the
# run, with the proxy's RSS sampled while every tunnel is open and silent.
run_ws_cell() {
  local scen="$1" t="$2" flags=() http2=false summary url why max_s rc=0
  CELL="$RUN/$scen-$t"
  mkdir -p "$CELL"
  CELL_SHARES=0
  summary="$(thousands "$WS_TUNNELS") HTTP/1.1 tunnels (Upgrade)"
  if [ "$scen" = ws-h2 ]; then
    http2=true; flags=(--h2 --connections "$WS_CONNS")
    summary="$(thousands "$WS_TUNNELS") RFC 8441 tunnels over $WS_CONNS h2c connections"
  fi
  summary="$summary × $WS_RATE messages/s echoed, $WS_PAYLOAD-byte text, $WS_DUR s (ramp $WS_RAMP s included), then $WS_IDLE s open and silent"
  printf '{"summary": "%s", "tunnels": %d, "rate": %d, "payload": %d, "duration_s": %d, "ramp_s": %d, "idle_s": %d, "http2": %s, "connections": %d}\n' \
    "$summary" "$WS_TUNNELS" "$WS_RATE" "$WS_PAYLOAD" "$WS_DUR" "$WS_RAMP" "$WS_IDLE" "$http2" \
    "$([ "$http2" = true ] && echo "$WS_CONNS" || echo "$WS_TUNNELS")" >"$CELL/params.json"
  say "── $scen / $t: $summary"

  # The echo origin: fresh for every cell, pinned with the load client.
  spawn "$CELL/upstream.out" "$CELL/upstream.err" "${LOAD_CPU[@]}" "$WS_BIN" echo --listen 127.0.0.1:0
  UP_PID="$SPAWNED"
  if ! UP_ADDR="$("${PY[@]}" wait-listen "$CELL/upstream.out" 15)"; then
    echo "echo origin did not start: $(tail -n 3 "$CELL/upstream.err")" >"$CELL/error"
    stop "$UP_PID"; "${PY[@]}" add-run "$RESULTS" "$scen" "$t" "$CELL"; return 0
  fi
  PROXY_PID=""
  if [ "$t" = direct ]; then
    H1_BASE="http://$UP_ADDR"; H2_BASE="$H1_BASE"
  elif ! start_proxy "$t" ws; then
    why="$t did not start (see $CELL)"
    if [ "$t" = ssegate ] && ! "$SSEGATE" check -c "$CELL/ssegate.toml" >/dev/null 2>&1; then
      why="ssegate check refuses the WebSocket config (a build without WebSocket pass-through?): $(head -n 1 "$CELL/check.log")"
    fi
    echo "$why" >"$CELL/error"
    [ -z "$PROXY_PID" ] || stop "$PROXY_PID" KILL
    stop "$UP_PID"; "${PY[@]}" add-run "$RESULTS" "$scen" "$t" "$CELL"; return 0
  fi
  url="$H1_BASE"; [ "$http2" = false ] || url="$H2_BASE"
  url="ws://${url#http://}/ws"

  # Readiness and warm-up in one: 10 tunnels for 1 s, every echo back.
  if ! timeout -s KILL 30 "${LOAD_CPU[@]}" "$WS_BIN" load --url "$url" --tunnels 10 --rate "$WS_RATE" \
         --payload "$WS_PAYLOAD" --ramp 0.2 --duration 1 --quiet "${flags[@]}" \
         >"$CELL/warmup.json" 2>"$CELL/warmup.err" ||
     [ "$("${PY[@]}" field "$CELL/warmup.json" tunnels_failed)" != 0 ] ||
     [ "$("${PY[@]}" field "$CELL/warmup.json" messages_received)" = 0 ]; then
    why="$(tail -n 1 "$CELL/warmup.err")"
    [ -n "$why" ] || why="$("${PY[@]}" field "$CELL/warmup.json" first_error)"
    if [ "$http2" = true ] && [ "$t" != ssegate ] && [[ "$why" == *"does not advertise"* ]]; then
      # A peer without RFC 8441 is skipped; ssegate advertises it by config.
      echo "skip: $t $scen (its h2c port does not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL: no RFC 8441)"
      "${PY[@]}" skip "$RESULTS" "$t" "$scen" "its h2c port does not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL: no RFC 8441 WebSockets"
    else
      echo "warm-up failed: ${why:-no output (see $CELL)}" >"$CELL/error"
      "${PY[@]}" add-run "$RESULTS" "$scen" "$t" "$CELL"
    fi
    [ -z "$PROXY_PID" ] || stop "$PROXY_PID" "$(stop_signal "$t")"
    stop "$UP_PID"; return 0
  fi
  sleep 0.5

  [ -z "$PROXY_PID" ] || "${LOAD_CPU[@]}" "${PY[@]}" tree "$PROXY_PID" >"$CELL/proxy_before.json" || true
  "${LOAD_CPU[@]}" "${PY[@]}" tree "$UP_PID" >"$CELL/upstream_before.json" || true
  # Bounded: the run, its idle phase, 2 s for the last echoes, 5 s to close, and slack.
  max_s=$(( WS_DUR + WS_IDLE + 40 ))
  spawn "$CELL/bench.json" "$CELL/bench.err" timeout -s INT -k 5 "$max_s" \
    "${LOAD_CPU[@]}" "$WS_BIN" load --url "$url" --tunnels "$WS_TUNNELS" --rate "$WS_RATE" \
    --payload "$WS_PAYLOAD" --ramp "$WS_RAMP" --duration "$WS_DUR" --idle "$WS_IDLE" "${flags[@]}"
  local bench_pid="$SPAWNED"
  # The proxy's tree once the client says every tunnel is open and silent.
  [ -z "$PROXY_PID" ] || "${LOAD_CPU[@]}" "${PY[@]}" ws-idle-sample "$PROXY_PID" "$CELL/bench.err" \
    $(( WS_DUR + 10 )) >"$CELL/proxy_idle.json" 2>"$CELL/idle-sample.err" || true
  wait "$bench_pid" || rc=$?
  forget "$bench_pid"
  [ -z "$PROXY_PID" ] || "${LOAD_CPU[@]}" "${PY[@]}" tree "$PROXY_PID" >"$CELL/proxy_after.json" || true
  "${LOAD_CPU[@]}" "${PY[@]}" tree "$UP_PID" >"$CELL/upstream_after.json" || true
  [ "$rc" = 0 ] || echo "ws_load exited $rc: $(grep -v '^ *[0-9]* s  open' "$CELL/bench.err" | tail -n 2 | tr '\n' ' ')" >"$CELL/error"
  [ -z "$PROXY_PID" ] || stop "$PROXY_PID" "$(stop_signal "$t")"
  stop "$UP_PID"
  "${PY[@]}" add-run "$RESULTS" "$scen" "$t" "$CELL"
}

# ---------------------------------------------------------------------------
# the cluster cells: several ssegate instances, one Redis

# start_cluster RATE [single]: a fresh Redis, origin (RATE events/s) and
# CL_INSTANCES instances, in CELL; with single, one instance without
# [cluster] and no Redis. Sets REDIS_PORT, REDIS_PID, UP_ADDR, UP_PID and
# the arrays INST_PID, INST_PORT, INST_ADMIN (index 1..), and CL_SPEC (what
# cluster.py snapshots). On failure: CELL/error, and 1.
start_cluster() {
  local rate="$1" single="${2:-}" k ports n="$CL_INSTANCES"
  INST_PID=(); INST_PORT=(); INST_ADMIN=(); CL_SPEC=()
  [ -z "$single" ] || n=1
  spawn "$CELL/upstream.out" "$CELL/upstream.err" "${LOAD_CPU[@]}" "$BENCH_BIN" bench upstream \
    --listen 127.0.0.1:0 --rate "$rate" --payload "$PAYLOAD"
  UP_PID="$SPAWNED"
  if ! UP_ADDR="$("${PY[@]}" wait-listen "$CELL/upstream.out" 15)"; then
    echo "bench upstream did not start: $(tail -n 3 "$CELL/upstream.err")" >"$CELL/error"
    return 1
  fi
  CL_SPEC=("proc:origin=$UP_PID" "origin=$UP_ADDR")
  [ -z "$single" ] || { start_instances 1 single; return; }
  read -r REDIS_PORT <<<"$("${PY[@]}" free-ports 1)"
  mkdir -p "$CELL/redis"
  spawn "$CELL/redis.out" "$CELL/redis.err" "${LOAD_CPU[@]}" "$REDIS_SERVER" --port "$REDIS_PORT" \
    --bind 127.0.0.1 --save "" --appendonly no --dir "$CELL/redis" --logfile ""
  REDIS_PID="$SPAWNED"
  if ! "${CL_PY[@]}" redis-ping "$REDIS_PORT" 15 2>"$CELL/redis-ping.err"; then
    echo "redis-server did not start: $(cat "$CELL/redis-ping.err") $(tail -n 2 "$CELL/redis.out" "$CELL/redis.err" | tr '\n' ' ')" >"$CELL/error"
    return 1
  fi
  CL_SPEC+=("proc:redis=$REDIS_PID" "redis=$REDIS_PORT")
  start_instances "$n"
}

# start_instances N [single]: the instances of start_cluster, started,
# listening, and each answering one event.
start_instances() {
  local n="$1" single="${2:-}" k ports
  for k in $(seq "$n"); do
    read -r -a ports <<<"$("${PY[@]}" free-ports 3)"
    P1="${ports[0]}"; P2="${ports[1]}"; ADMIN_PORT="${ports[2]}"
    render_cluster "$CELL/i$k" "$k" "$single"
    if ! "$SSEGATE" check -c "$CELL/i$k/ssegate.toml" >"$CELL/i$k/check.log" 2>&1; then
      echo "ssegate check refuses instance $k's config: $(head -n 1 "$CELL/i$k/check.log")" >"$CELL/error"
      return 1
    fi
    spawn "$CELL/i$k/proxy.out" "$CELL/i$k/proxy.err" env RUST_LOG=warn "${PROXY_CPU[@]}" \
      "$SSEGATE" run -c "$CELL/i$k/ssegate.toml"
    INST_PID[k]="$SPAWNED"; INST_PORT[k]="$P1"; INST_ADMIN[k]="127.0.0.1:$ADMIN_PORT"
    CL_SPEC+=("proc:i$k=$SPAWNED" "metrics:i$k=127.0.0.1:$ADMIN_PORT")
  done
  for k in $(seq "$n"); do
    if ! "${PY[@]}" wait-port "127.0.0.1:${INST_PORT[k]}" 15 2>/dev/null ||
       ! "${PY[@]}" wait-port "${INST_ADMIN[k]}" 15 2>/dev/null; then
      echo "instance $k did not start: $(tail -n 3 "$CELL/i$k/proxy.err" | tr '\n' ' ')" >"$CELL/error"
      return 1
    fi
  done
  # Readiness: one event end to end through each instance, on a request
  # that does not share (it carries a Cookie): a shared probe would linger
  # as a held stream, with its lease renewed in Redis.
  for k in $(seq "$n"); do
    if ! "${CL_PY[@]}" probe "http://127.0.0.1:${INST_PORT[k]}/ready?count=1" 10 >>"$CELL/probe.log" 2>&1; then
      echo "probe of instance $k failed: $(tail -n 1 "$CELL/probe.log")" >"$CELL/error"
      return 1
    fi
  done
}

stop_cluster() {
  local k
  for k in "${!INST_PID[@]}"; do stop "${INST_PID[k]}" INT; done
  [ -z "${UP_PID:-}" ] || stop "$UP_PID"
  [ -z "${REDIS_PID:-}" ] || stop "$REDIS_PID"
  INST_PID=(); UP_PID=""; REDIS_PID=""
}

# cluster_clients N COPIES DUR RAMP INSTANCES...: COPIES load clients of N
# subscribers per stream URL on each of INSTANCES, all with the same Host
# header (the host is part of a stream key). Their pids: CLIENT_PIDS.
# The first instance to open a stream key holds it: URL s is opened first
# on the (s mod count + 1)-th of INSTANCES, 0.5 s before the others, so
# the holders are spread over the instances (4, 3, 3 with 3 and 10 URLs).
cluster_clients() {
  local n="$1" copies="$2" dur="$3" ramp="$4" k s j pass first
  shift 4
  local insts=("$@")
  CLIENT_PIDS=()
  for pass in first rest; do
    for s in $(seq 0 $(( CL_URLS - 1 ))); do
      first="${insts[s % ${#insts[@]}]}"
      for k in "${insts[@]}"; do
        { [ "$pass" = first ] && [ "$k" = "$first" ]; } ||
          { [ "$pass" = rest ] && [ "$k" != "$first" ]; } || continue
        for j in $(seq "$copies"); do
          spawn "$CELL/c-i$k-s$s-$j.json" "$CELL/c-i$k-s$s-$j.err" timeout -s INT -k 5 $(( dur + ramp + 60 )) \
            "${LOAD_CPU[@]}" "$BENCH_BIN" bench --json --url "http://127.0.0.1:${INST_PORT[k]}$BENCH_PATH/s$s" \
            -H "Host: cluster.bench" --streams "$n" --ramp "${ramp}s" --duration "${dur}s"
          CLIENT_PIDS+=("$SPAWNED")
        done
      done
    done
    [ "$pass" = rest ] || [ "${#insts[@]}" = 1 ] || sleep 0.5
  done
}

# cluster_wait: waits for every load client; a failed one is noted in CELL/error.
cluster_wait() {
  local p rc bad=0
  for p in "${CLIENT_PIDS[@]}"; do
    rc=0; wait "$p" || rc=$?
    forget "$p"
    [ "$rc" = 0 ] || bad=$(( bad + 1 ))
  done
  [ "$bad" = 0 ] || echo "$bad load client(s) exited non-zero (see $CELL/c-*.err)" >"$CELL/error"
}

# run_cluster_fanout: 3 instances, CL_SUBS subscribers of 10 shared streams;
# before it, the same subscribers and load clients on one instance without
# [cluster] (the baseline: what the cluster adds).
run_cluster_fanout() {
  local per_url=$(( CL_SUBS / (CL_INSTANCES * CL_URLS) )) summary k mode
  for mode in single cluster; do
    CELL="$RUN/cluster-fanout"
    [ "$mode" = cluster ] || CELL="$RUN/cluster-fanout-single"
    mkdir -p "$CELL"
    if [ "$mode" = cluster ]; then
      summary="$CL_INSTANCES instances × $(thousands $(( CL_SUBS / CL_INSTANCES ))) HTTP/1.1 subscribers ($(thousands "$CL_SUBS") in all, $per_url per URL per instance) of $CL_URLS shared streams × $CL_RATE events/s, $PAYLOAD-byte payload, $CL_DUR s (ramp $CL_RAMP s included), one Redis"
    else
      summary="baseline: 1 instance without [cluster], the same $(thousands "$CL_SUBS") subscribers and $(( CL_INSTANCES * CL_URLS )) load clients"
    fi
    printf '{"summary": "%s", "instances": %d, "stream_urls": %d, "subscribers": %d, "rate": %s, "payload": %d, "duration_s": %d, "ramp_s": %d}\n' \
      "$summary" "$([ "$mode" = cluster ] && echo "$CL_INSTANCES" || echo 1)" "$CL_URLS" "$CL_SUBS" \
      "$CL_RATE" "$PAYLOAD" "$CL_DUR" "$CL_RAMP" >"$CELL/params.json"
    say "── cluster-fanout: $summary"
    if start_cluster "$CL_RATE" "$([ "$mode" = cluster ] || echo single)"; then
      "${LOAD_CPU[@]}" "${PY[@]}" origin-stats "$UP_ADDR" reset >/dev/null 2>>"$CELL/origin.err" || true
      "${LOAD_CPU[@]}" "${CL_PY[@]}" snap "$CELL/snap_before.json" "${CL_SPEC[@]}"
      if [ "$mode" = cluster ]; then
        cluster_clients "$per_url" 1 "$CL_DUR" "$CL_RAMP" $(seq "$CL_INSTANCES")
      else
        cluster_clients "$per_url" "$CL_INSTANCES" "$CL_DUR" "$CL_RAMP" 1
      fi
      # The steady window: from 1 s after every subscriber is open to 2 s
      # before the clients close.
      "${LOAD_CPU[@]}" "${CL_PY[@]}" window "$CELL" "$CL_SUBS" $(( CL_RAMP + 1 )) $(( CL_DUR - 3 )) \
        $(( CL_DUR - 2 )) "${CL_SPEC[@]}" 2>"$CELL/window.err" || true
      cluster_wait
      "${LOAD_CPU[@]}" "${CL_PY[@]}" snap "$CELL/snap_after.json" "${CL_SPEC[@]}"
    fi
    stop_cluster
    for k in 1 2 3; do
      [ ! -s "$CELL/i$k/proxy.err" ] || say "instance $k's stderr (last lines): $(tail -n 2 "$CELL/i$k/proxy.err" | tr '\n' ' ')"
    done
    "${CL_PY[@]}" add "$RESULTS" "$([ "$mode" = cluster ] && echo fanout || echo single)" "$CELL"
  done
}

# run_cluster_redis: the steps of CR_STEPS (followers:rate), in order.
run_cluster_redis() {
  local f r insts summary step
  for step in $CR_STEPS; do
    f="${step%%:*}"; r="${step#*:}"
    [[ "$f" =~ ^[0-2]$ && "$r" =~ ^[0-9]+$ ]] || die "CR_STEPS: $step is not FOLLOWERS:RATE (followers 0 to 2)"
    {
      CELL="$RUN/cluster-redis-f$f-r$r"
      mkdir -p "$CELL"
      summary="10 streams × $r events/s, one subscriber per stream on $(( f + 1 )) of $CL_INSTANCES instances ($f followers per stream), $CR_DUR s"
      printf '{"summary": "%s", "instances": %d, "stream_urls": %d, "subscribers": %d, "rate": %s, "followers": %d, "payload": %d, "duration_s": %d}\n' \
        "$summary" "$CL_INSTANCES" "$CL_URLS" $(( CL_URLS * (f + 1) )) "$r" "$f" "$PAYLOAD" "$CR_DUR" >"$CELL/params.json"
      say "── cluster-redis: $summary"
      if start_cluster "$r"; then
        "${LOAD_CPU[@]}" "${CL_PY[@]}" snap "$CELL/snap_before.json" "${CL_SPEC[@]}"
        insts="$(seq $(( f + 1 )))"
        # shellcheck disable=SC2086  # one word per instance
        cluster_clients 1 1 "$CR_DUR" 0 $insts
        "${LOAD_CPU[@]}" "${CL_PY[@]}" window "$CELL" $(( CL_URLS * (f + 1) )) 1 $(( CR_DUR - 3 )) \
          $(( CR_DUR - 1 )) "${CL_SPEC[@]}" 2>"$CELL/window.err" || true
        cluster_wait
        "${LOAD_CPU[@]}" "${CL_PY[@]}" snap "$CELL/snap_after.json" "${CL_SPEC[@]}"
      fi
      stop_cluster
      "${CL_PY[@]}" add "$RESULTS" redis "$CELL"
    }
  done
}

# ---------------------------------------------------------------------------
# run

START=$(date +%s)
for scen in $SCENARIOS; do
  if [ "$scen" = latency ] && [ "$ROUNDS" -gt 1 ]; then
    # Alternating rounds: every target once per round, in the same order.
    for r in $(seq "$ROUNDS"); do
      for t in $TARGETS; do run_cell "$scen" "$t" "$r"; done
    done
    continue
  fi
  case "$scen" in
    cluster-fanout|cluster-redis)
      if [ -n "$CLUSTER_SKIP" ]; then
        echo "skip: ssegate $scen ($CLUSTER_SKIP)"
        "${PY[@]}" skip "$RESULTS" ssegate "$scen" "$CLUSTER_SKIP"
      else
        "run_${scen//-/_}"
      fi
      continue ;;
  esac
  for t in $TARGETS; do
    case "$scen" in
      ws-h2)
        if [ "$t" = direct ]; then
          why="the echo origin speaks HTTP/1.1 only; the proxies turn RFC 8441 into an HTTP/1.1 Upgrade to it"
          echo "skip: $t $scen ($why)"
          "${PY[@]}" skip "$RESULTS" "$t" "$scen" "$why"
          continue
        fi
        if [ "${H2[$t]:-0}" != 1 ]; then
          echo "skip: $t $scen (${H2_NOTE[$t]:-no h2 downstream})"
          "${PY[@]}" skip "$RESULTS" "$t" "$scen" "${H2_NOTE[$t]:-no h2 downstream}"
          continue
        fi
        run_ws_cell "$scen" "$t"; continue ;;
      ws-h1) run_ws_cell "$scen" "$t"; continue ;;
    esac
    if [ "$scen" = shared-scale ] && [ "$t" != ssegate ]; then
      why="ssegate only: $t cannot share, so it opens one upstream connection per subscriber, and $(thousands "$SCALE_FULL") (the full size) do not fit the open-files limit of $(thousands "$NOFILE")"
      [ "$t" != direct ] || why="ssegate only: the case measures a proxy holding $(thousands "$SCALE_FULL") subscribers (the full size) of one upstream stream"
      echo "skip: $t $scen ($why)"
      "${PY[@]}" skip "$RESULTS" "$t" "$scen" "$why"
      continue
    fi
    if [ "$scen" = shared-scale ] && [ "$SHARE_USED" = 0 ] && [ "$SCALE_STREAMS" -gt "$IDLE_MAX" ]; then
      why="ssegate does not share in this run ($SHARE_NOTE), and $(thousands "$SCALE_STREAMS") upstream connections do not fit the open-files limit of $(thousands "$NOFILE")"
      echo "skip: $t $scen ($why)"
      "${PY[@]}" skip "$RESULTS" "$t" "$scen" "$why"
      continue
    fi
    case "$scen" in
      h2mux|shared-h2|shared-scale)
        if [ "${H2[$t]:-0}" != 1 ]; then
          echo "skip: $t $scen (${H2_NOTE[$t]:-no h2 downstream})"
          "${PY[@]}" skip "$RESULTS" "$t" "$scen" "${H2_NOTE[$t]:-no h2 downstream}"
          continue
        fi ;;
    esac
    run_cell "$scen" "$t"
  done
done
say "all cells done in $(( $(date +%s) - START )) s"

{ "${PY[@]}" report "$RESULTS"; "${CL_PY[@]}" report "$RESULTS"; } | tee "$OUT/report.md"
# The chart draws the one-proxy cells; a cluster-only run has none.
if [ "$CHART" = 1 ] && [ "$ONLY_CLUSTER" = 0 ]; then
  if (cd "$ROOT" && cargo bench --quiet --bench chart -- "$RESULTS" "$OUT/chart.png") >"$RUN/chart.log" 2>&1; then
    say "chart: $OUT/chart.png"
  else
    say "chart failed (see $RUN/chart.log): $(tail -n 1 "$RUN/chart.log")"
  fi
fi
say "results: $RESULTS"
