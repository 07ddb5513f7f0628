#!/usr/bin/env python3
"""Helpers for benches/compare.sh: /proc sampling, readiness checks, results.json
and the markdown report. Python 3.11 standard library only.

compare.sh owns the processes (start, pin, stop); this file only looks at them
and does the bookkeeping. Every subcommand prints its answer on stdout (JSON
for measurements) and explains failures on stderr with exit status 1.

    compare.py free-ports N
    compare.py wait-listen FILE TIMEOUT_S          -> HOST:PORT from "listening on HOST:PORT"
    compare.py wait-port HOST:PORT TIMEOUT_S
    compare.py probe URL TIMEOUT_S                 -> HTTP/1.1 GET, wants 200 text/event-stream
    compare.py tree PID                            -> {"pids","rss_kib","pss_kib","cpu_s","sockets"}
    compare.py pids PID                            -> PID and its descendants
    compare.py idle-sample PID WANT_SOCKETS MIN_WAIT_S DEADLINE_S
    compare.py origin-stats HOST:PORT [reset]       -> the bench upstream's GET /_stats
    compare.py hold-sample PROXY_PID|- UPSTREAM_PID HOST:PORT BENCH_ERR STREAMS MIN_WAIT_S DEADLINE_S
    compare.py ws-idle-sample PROXY_PID BENCH_ERR DEADLINE_S
    compare.py bench-exe NAME                      -> the executable of bench NAME, from
                                                      `cargo bench --no-run --message-format=json` on stdin
    compare.py machine
    compare.py field FILE FIELD                    -> one field of a JSON file (a.b for nested)
    compare.py init RESULTS QUICK NOFILE TARGETS SCENARIOS SSEGATE_VERSION PEERS_TSV SKIPS_TSV
                    [ROUNDS [SHARES SHARE_NOTE]]
    compare.py skip RESULTS TARGET SCENARIO REASON
    compare.py add-run RESULTS SCENARIO TARGET CELL_DIR [ROUND]
    compare.py report RESULTS
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import statistics
import sys
import time
import urllib.parse
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_ORDER = ["direct", "ssegate", "nginx", "caddy", "haproxy"]
SCENARIO_ORDER = ["idle", "fanout", "h2mux", "latency",
                  "shared-h1", "shared-h2", "shared-idle", "shared-scale", "ws-h1", "ws-h2"]
SHARED_SCENARIOS = [s for s in SCENARIO_ORDER if s.startswith("shared-")]
WS_SCENARIOS = [s for s in SCENARIO_ORDER if s.startswith("ws-")]


def die(msg: str) -> None:
    print(f"compare.py: {msg}", file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------
# /proc


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        # fields[0] is the state, fields[1] the parent pid.
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def tree_pids(root: int) -> list[int]:
    """ROOT and all its descendants (nginx master + worker, etc.)."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            out.append(pid)
            todo.extend(kids.get(pid, []))
    return sorted(out)


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # utime and stime are fields 14 and 15 of stat; here 11 and 12 (0-based,
    # counted from the state, which is field 3).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _sockets(pid: int) -> int:
    n = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def tree(root: int) -> dict:
    """Resident memory, CPU time and open sockets of a process tree, summed.

    RSS counts pages shared between the tree's processes once per process (an
    nginx master and worker share their code): the benchmark only ever uses
    differences of RSS, in which that constant cancels out. PSS is recorded too.
    """
    pids = tree_pids(root)
    if not pids:
        die(f"process {root} is gone")
    return {
        "pids": pids,
        "rss_kib": sum(_status_kib(p, "VmRSS") for p in pids),
        "pss_kib": sum(_pss_kib(p) for p in pids),
        "cpu_s": round(sum(_cpu_s(p) for p in pids), 3),
        "sockets": sum(_sockets(p) for p in pids),
        "t": time.time(),
    }


def idle_sample(root: int, want: int, min_wait: float, deadline: float) -> dict:
    """Waits until the proxy holds WANT sockets (or their count stops growing
    after MIN_WAIT seconds), then samples its tree three times 0.5 s apart and
    returns the sample with the median RSS."""
    start = time.time()
    history: list[int] = []
    reason = "deadline"
    while time.time() - start < deadline:
        n = sum(_sockets(p) for p in tree_pids(root))
        history.append(n)
        if n >= want:
            reason = "all open"
            break
        settled = len(history) >= 5 and len(set(history[-5:])) == 1
        if time.time() - start >= min_wait and settled:
            reason = "count settled below target"
            break
        time.sleep(0.5)
    time.sleep(1.0)
    samples = []
    for _ in range(3):
        samples.append(tree(root))
        time.sleep(0.5)
    samples.sort(key=lambda s: s["rss_kib"])
    chosen = samples[1]
    chosen["why"] = reason
    chosen["waited_s"] = round(time.time() - start, 1)
    chosen["want_sockets"] = want
    return chosen


def origin_stats(addr: str, reset: bool = False, timeout: float = 5.0) -> dict:
    """The bench upstream's counters (GET /_stats, see `ssegate bench upstream
    --help`); with RESET its high-water marks restart from what is open."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/_stats" + ("?reset_max=1" if reset else ""))
        resp = conn.getresponse()
        ctype = resp.getheader("content-type", "")
        if resp.status != 200 or "application/json" not in ctype:
            # An older bench upstream answers any path with an event stream.
            die(f"{addr}/_stats: HTTP {resp.status} {ctype!r}: this bench upstream has no /_stats")
        out = json.loads(resp.read())
        out["t"] = time.time()
        return out
    except (OSError, ValueError) as e:
        die(f"{addr}/_stats: {e}")
        return {}
    finally:
        conn.close()


PROGRESS = re.compile(r"open (\d+)/(\d+)")


def _bench_open(path: str) -> int | None:
    """Streams open by the load generator's last progress line (one a second
    on stderr: `   5 s  open 9999/10000  failed 0 ...`)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    found = PROGRESS.findall(text.replace("\r", "\n"))
    return int(found[-1][0]) if found else None


def hold_sample(proxy: int | None, upstream: int, origin: str, bench_err: str,
                streams: int, min_wait: float, deadline: float) -> dict:
    """Waits until the load generator reports every subscriber open (or its
    open count stops growing for 2.5 s after MIN_WAIT seconds), then samples
    the proxy's tree three times 0.5 s apart and keeps the median RSS, and
    samples the upstream's tree and the origin's counters once."""
    start = time.time()
    history: list[int] = []
    reason = "deadline"
    while time.time() - start < deadline:
        n = _bench_open(bench_err) or 0
        history.append(n)
        if n >= streams:
            reason = "all open"
            break
        settled = len(history) >= 5 and len(set(history[-5:])) == 1
        if time.time() - start >= min_wait and settled:
            reason = "count settled below target"
            break
        time.sleep(0.5)
    time.sleep(1.0)
    out: dict = {"why": reason, "open_at_sample": _bench_open(bench_err)}

    def sample(what):
        try:
            return what()
        except SystemExit:  # die(): the process is gone, or no /_stats
            return None

    if proxy is not None:
        samples = []
        for _ in range(3):
            if (one := sample(lambda: tree(proxy))) is not None:
                samples.append(one)
            time.sleep(0.5)
        samples.sort(key=lambda s: s["rss_kib"])
        out["proxy"] = samples[len(samples) // 2] if samples else None
    out["upstream"] = sample(lambda: tree(upstream))
    out["origin"] = sample(lambda: origin_stats(origin))
    out["waited_s"] = round(time.time() - start, 1)
    return out


WS_IDLE = re.compile(r"idle phase: open (\d+)/(\d+)")


def ws_idle_sample(proxy: int, bench_err: str, deadline: float) -> dict:
    """Waits for the WebSocket load client's `idle phase: open N/M` line (its
    tunnels are then open and silent, their last echoes in), waits 0.5 s,
    samples the proxy's tree three times 0.4 s apart and keeps the median
    RSS, with the number of tunnels open."""
    start = time.time()
    found = None
    while time.time() - start < deadline:
        try:
            found = WS_IDLE.search(Path(bench_err).read_text(errors="replace"))
        except OSError:
            found = None
        if found:
            break
        time.sleep(0.2)
    if not found:
        die(f"no 'idle phase' line in {bench_err} after {deadline} s")
    time.sleep(0.5)
    samples = []
    for _ in range(3):
        samples.append(tree(proxy))
        time.sleep(0.4)
    samples.sort(key=lambda s: s["rss_kib"])
    chosen = samples[1]
    chosen["tunnels_open"] = int(found.group(1))
    chosen["waited_s"] = round(time.time() - start, 1)
    return chosen


def bench_exe(name: str) -> str:
    """The executable cargo built for bench NAME, from its JSON messages."""
    exe = None
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (msg.get("reason") == "compiler-artifact" and msg.get("executable")
                and msg.get("target", {}).get("name") == name):
            exe = msg["executable"]
    if not exe:
        die(f"cargo built no executable for bench {name}")
    return exe


# --------------------------------------------------------------------------
# readiness


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_listen(path: str, timeout: float) -> str:
    end = time.time() + timeout
    pattern = re.compile(r"listening on (\S+:\d+)")
    while time.time() < end:
        try:
            m = pattern.search(Path(path).read_text())
        except OSError:
            m = None
        if m:
            return m.group(1)
        time.sleep(0.05)
    die(f'no "listening on HOST:PORT" line in {path} after {timeout} s')
    return ""


def wait_port(addr: str, timeout: float) -> None:
    host, port = addr.rsplit(":", 1)
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    die(f"nothing accepts connections on {addr} after {timeout} s")


def probe(url: str, timeout: float) -> str:
    """One HTTP/1.1 request; the answer must be a 200 event stream whose first
    body bytes arrive in time."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path + ("?" + u.query if u.query else ""),
                     headers={"Accept": "text/event-stream"})
        resp = conn.getresponse()
        ctype = resp.getheader("content-type", "")
        if resp.status != 200 or "text/event-stream" not in ctype:
            die(f"{url}: HTTP {resp.status}, content-type {ctype!r}")
        first = resp.read1(4096) if hasattr(resp, "read1") else resp.read(1)
        if not first:
            die(f"{url}: 200 but an empty body")
        return f"ok: {url} 200 {ctype}"
    except OSError as e:
        die(f"{url}: {e}")
        return ""
    finally:
        conn.close()


# --------------------------------------------------------------------------
# machine facts


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = _meminfo("MemTotal")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": os.uname().release,
        "mem_total_gib": round(mem_kib / 2**20, 1),
        "loadavg_at_start": list(os.getloadavg()),
        "thp": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
    }


def _meminfo(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------
# results.json


def _load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def _save(path: str, data: dict) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _maybe_json(path: Path):
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # The bench prints one object; take the last line that parses.
        for line in reversed(text.splitlines()):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def _tsv(path: str) -> list[list[str]]:
    return [line.split("\t") for line in Path(path).read_text().splitlines() if line.strip()]


def init(results: str, quick: str, nofile: str, targets: str, scenarios: str,
         ssegate_version: str, peers_tsv: str, skips_tsv: str, rounds: str = "1",
         shares: str = "0", share_note: str = "") -> None:
    peers = {name: {"version": version, "h2_downstream": h2 == "1", "h2_how": how}
             for name, version, h2, how in _tsv(peers_tsv)}
    data = {
        "schema": 1,
        "quick": quick == "1",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "ssegate": {"version": ssegate_version, "h2_how": "h2c on the plain listener",
                    # The shared-* cells: whether ssegate's route had the
                    # sharing keys, and what they were (or why not).
                    "shares": shares == "1", "share_note": share_note},
        "peers": peers,
        "targets": targets.split(),
        "scenarios": scenarios.split(),
        "nofile": int(nofile),
        "pinning": {"proxy": "core 0", "upstream_generator_samplers": "core 1"},
        "skipped": [{"target": t, "scenario": s or None, "reason": r}
                    for t, s, r in _tsv(skips_tsv)],
        "runs": [],
    }
    if int(rounds) > 1:
        # Alternating rounds of the latency scenario (compare.sh --rounds):
        # every round's run is in "round_runs"; "runs" holds one summary per
        # target whose figures are medians over the rounds (see summarize).
        data["rounds"] = int(rounds)
        data["round_runs"] = []
    _save(results, data)


def skip(results: str, target: str, scenario: str, reason: str) -> None:
    data = _load(results)
    data["skipped"].append({"target": target, "scenario": scenario or None,
                            "reason": reason})
    _save(results, data)


def _delta(after: dict | None, before: dict | None, key: str):
    if not after or not before:
        return None
    return round(after[key] - before[key], 3)


def add_run(results: str, scenario: str, target: str, cell: str, rnd: str | None = None) -> None:
    d = Path(cell)
    bench = _maybe_json(d / "bench.json")
    p0, p1 = _maybe_json(d / "proxy_before.json"), _maybe_json(d / "proxy_after.json")
    u0, u1 = _maybe_json(d / "upstream_before.json"), _maybe_json(d / "upstream_after.json")
    idle = _maybe_json(d / "proxy_idle.json")
    error = _read(str(d / "error")) or None
    if bench is None and error is None:
        error = f"no bench JSON in {d / 'bench.json'} (see {d / 'bench.err'})"
    if error is None and target != "direct" and not (p0 and p1):
        error = f"no /proc sample of the proxy: did it die? (see {d / 'proxy.err'})"
    if error is None and not (u0 and u1):
        error = f"no /proc sample of the upstream: did it die? (see {d / 'upstream.err'})"
    run: dict = {"scenario": scenario, "target": target, "ok": error is None,
                 "error": error, "cell_dir": str(d), "bench": bench}
    params = _maybe_json(d / "params.json")
    if params:
        run["params"] = params
    wall = _delta(p1 or u1, p0 or u0, "t")
    run["wall_s"] = round(wall, 2) if wall is not None else None
    run["proxy"] = None
    if p0:
        run["proxy"] = {
            "pids": p0["pids"],
            "before": p0, "after": p1, "idle_sample": idle,
            "cpu_s": _delta(p1, p0, "cpu_s"),
        }
    run["upstream"] = {"cpu_s": _delta(u1, u0, "cpu_s")} if u0 else None
    if scenario in SHARED_SCENARIOS:
        run["hold"] = _maybe_json(d / "hold.json")
        run["origin"] = {"before": _maybe_json(d / "origin_before.json"),
                         "after": _maybe_json(d / "origin_after.json")}
        if error is None and not (run["origin"]["before"] and run["origin"]["after"]):
            run["origin_error"] = (_read(str(d / "origin.err"))
                                   or "no /_stats sample of the bench upstream")
    run["derived"] = derive(run)
    run["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    data = _load(results)
    if rnd is None:
        data["runs"] = [r for r in data["runs"]
                        if not (r["scenario"] == scenario and r["target"] == target)]
        data["runs"].append(run)
    else:
        run["round"] = int(rnd)
        rounds = data.setdefault("round_runs", [])
        rounds[:] = [r for r in rounds
                     if not (r["scenario"] == scenario and r["target"] == target
                             and r.get("round") == run["round"])]
        rounds.append(run)
        summarize(data, scenario)
    data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data["machine"]["loadavg_at_end"] = list(os.getloadavg())
    _save(results, data)


# Latency figures summarized over alternating rounds.
ROUND_KEYS = ("lat_p50_ms", "lat_p90_ms", "lat_p99_ms", "lat_p999_ms", "lat_max_ms")
# Per-round figures whose medians and spreads the report shows; "added" ones
# are the target's percentile minus direct's in the same round.
SPREAD_KEYS = ("lat_p99_ms", "lat_p999_ms", "added_p99_ms", "added_p999_ms")


def _spread(values: list) -> dict | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return {"median": round(statistics.median(values), 4), "min": values[0],
            "max": values[-1], "n": len(values)}


def round_added(data: dict, scenario: str) -> None:
    """Sets each round run's added percentiles: its p50, p99 and p99.9 minus
    those of direct in the same round (None without a good direct run)."""
    rounds = [r for r in data.get("round_runs", []) if r["scenario"] == scenario]
    direct = {r["round"]: r["derived"] for r in rounds if r["target"] == "direct" and r["ok"]}
    for r in rounds:
        d, ref = r["derived"], direct.get(r["round"])
        for key in ("p50", "p99", "p999"):
            v = d.get(f"lat_{key}_ms")
            base = ref.get(f"lat_{key}_ms") if ref and r["target"] != "direct" else None
            d[f"added_{key}_ms"] = (round(v - base, 4)
                                    if v is not None and base is not None and r["ok"] else None)


def summarize(data: dict, scenario: str) -> None:
    """Replaces the runs of SCENARIO in "runs" by one summary per target over
    its rounds: each latency percentile is the median over the good rounds,
    gaps and duplicates are summed, and "spread" holds median, min and max of
    p99, p99.9 and of the added p99 and p99.9. Readers of "runs" (the chart,
    the goals) thus see medians over the rounds."""
    round_added(data, scenario)
    rounds = [r for r in data.get("round_runs", []) if r["scenario"] == scenario]
    targets = []
    for r in rounds:
        if r["target"] not in targets:
            targets.append(r["target"])
    data["runs"] = [r for r in data["runs"] if r["scenario"] != scenario]
    for t in targets:
        mine = sorted((r for r in rounds if r["target"] == t), key=lambda r: r["round"])
        good = [r for r in mine if r["ok"]]
        derived: dict = {}
        for key in ROUND_KEYS + ("events_per_s", "streams_opened", "streams_failed",
                                 "added_p50_ms", "added_p99_ms", "added_p999_ms"):
            s = _spread([r["derived"].get(key) for r in good])
            derived[key] = s["median"] if s else None
        for key in ("gaps", "duplicates", "errors_total"):
            vals = [r["derived"].get(key) for r in good if r["derived"].get(key) is not None]
            derived[key] = sum(vals) if vals else None
        derived["spread"] = {key: _spread([r["derived"].get(key) for r in good])
                             for key in SPREAD_KEYS}
        failed = [r for r in mine if not r["ok"]]
        params = dict(next((r["params"] for r in mine if r.get("params")), {}))
        if params:
            params["summary"] = (params.get("summary", "")
                                 + f"; median of {len(good)} alternating round(s)")
        data["runs"].append({
            "scenario": scenario, "target": t, "ok": bool(good),
            "error": ("; ".join(f"round {r['round']}: {r['error']}" for r in failed)
                      if failed else None),
            "rounds": [r["round"] for r in mine], "rounds_ok": len(good),
            "cell_dir": None, "bench": None, "params": params,
            "proxy": None, "upstream": None, "derived": derived,
        })


def derive(run: dict) -> dict:
    """The figures the report and the chart use, from the raw samples."""
    b = run.get("bench") or {}
    out: dict = {}
    opened = b.get("streams_opened")
    events = b.get("events")
    lat = b.get("latency_ms") or {}
    for key in ("p50", "p90", "p99", "p999", "max"):
        out[f"lat_{key}_ms"] = lat.get(key)
    out["events_per_s"] = b.get("events_per_s")
    out["gaps"] = b.get("gaps")
    out["duplicates"] = b.get("duplicates")
    out["streams_opened"] = opened
    out["streams_failed"] = b.get("streams_failed")
    errors = b.get("errors") or {}
    out["errors_total"] = sum(v for v in errors.values() if isinstance(v, (int, float)))
    out["generator_cpu_s"] = b.get("cpu_s")
    proxy = run.get("proxy") or {}
    up = run.get("upstream") or {}
    wall = run.get("wall_s")
    cpu = proxy.get("cpu_s")
    out["proxy_cpu_s"] = cpu
    out["upstream_cpu_s"] = up.get("cpu_s")
    out["proxy_cpu_s_per_m_events"] = (
        round(cpu / events * 1e6, 2) if cpu is not None and events else None)
    out["proxy_core_pct"] = round(100 * cpu / wall, 1) if cpu is not None and wall else None
    core1 = [v for v in (b.get("cpu_s"), up.get("cpu_s")) if v is not None]
    out["core1_pct"] = (round(100 * sum(core1) / wall, 1)
                        if len(core1) == 2 and wall else None)
    idle = proxy.get("idle_sample")
    before = proxy.get("before")
    if idle and before and opened:
        out["rss_before_kib"] = before["rss_kib"]
        out["rss_idle_kib"] = idle["rss_kib"]
        out["kib_per_stream"] = round((idle["rss_kib"] - before["rss_kib"]) / opened, 2)
        out["pss_kib_per_stream"] = round((idle["pss_kib"] - before["pss_kib"]) / opened, 2)
        # Each proxied HTTP/1.1 stream holds a client and an upstream socket.
        out["streams_held_at_sample"] = (idle["sockets"] - before["sockets"]) // 2
    if run.get("scenario") in SHARED_SCENARIOS:
        out.update(derive_shared(run, out))
    if run.get("scenario") in WS_SCENARIOS:
        return derive_ws(run, out)
    return out


def derive_ws(run: dict, base: dict) -> dict:
    """The websocket figures. An echo is one message through the proxy each
    way; CPU per echo takes the proxy's CPU over the whole run (opening,
    sending, idle, closing). Proxy core % is over the sending part only:
    from the sample before the run to the one in its idle phase."""
    b = run.get("bench") or {}
    rtt = b.get("rtt_ms") or {}
    out: dict = {key: base.get(key) for key in ("proxy_cpu_s", "upstream_cpu_s", "generator_cpu_s")}
    for key in ("p50", "p90", "p99", "p999", "max"):
        out[f"lat_{key}_ms"] = rtt.get(key)
    for key in ("tunnels_opened", "tunnels_failed", "open_at_idle", "closed_early",
                "messages_sent", "messages_received", "lost", "echoes_per_s"):
        out[key] = b.get(key)
    out["errors_total"] = sum(v for v in (b.get("errors") or {}).values()
                              if isinstance(v, (int, float)))
    out["first_error"] = b.get("first_error")
    echoes, cpu = b.get("messages_received"), base.get("proxy_cpu_s")
    out["proxy_cpu_s_per_m_echoes"] = (round(cpu / echoes * 1e6, 2)
                                       if cpu is not None and echoes else None)
    proxy = run.get("proxy") or {}
    before, idle = proxy.get("before"), proxy.get("idle_sample")
    if before and idle:
        span = idle["t"] - before["t"]
        out["proxy_core_pct"] = (round(100 * (idle["cpu_s"] - before["cpu_s"]) / span, 1)
                                 if span > 0 else None)
        out["rss_before_kib"] = before["rss_kib"]
        out["rss_idle_kib"] = idle["rss_kib"]
        n = idle.get("tunnels_open")
        out["tunnels_held_at_sample"] = n
        if n:
            out["kib_per_idle_tunnel"] = round((idle["rss_kib"] - before["rss_kib"]) / n, 2)
            out["pss_kib_per_idle_tunnel"] = round((idle["pss_kib"] - before["pss_kib"]) / n, 2)
    core1 = [v for v in (b.get("cpu_s"), base.get("upstream_cpu_s")) if v is not None]
    wall = run.get("wall_s")
    out["core1_pct"] = round(100 * sum(core1) / wall, 1) if len(core1) == 2 and wall else None
    return out


def _at(doc, *keys):
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)
    return doc


def derive_shared(run: dict, out: dict) -> dict:
    """The shared-* figures: the proxy's memory while every subscriber is
    held, and what the origin served during the run."""
    b = run.get("bench") or {}
    hold = run.get("hold") or {}
    before = (run.get("proxy") or {}).get("before")
    held = hold.get("proxy")
    res: dict = {}
    subscribers = hold.get("open_at_sample") or out.get("streams_opened")
    res["subscribers_at_sample"] = hold.get("open_at_sample")
    res["hold_why"] = hold.get("why")
    if before and held:
        res["rss_before_kib"] = before["rss_kib"]
        res["rss_held_kib"] = held["rss_kib"]
        res["proxy_sockets_held"] = held["sockets"] - before["sockets"]
        if subscribers:
            res["kib_per_subscriber"] = round((held["rss_kib"] - before["rss_kib"]) / subscribers, 2)
            res["pss_kib_per_subscriber"] = round(
                (held["pss_kib"] - before["pss_kib"]) / subscribers, 2)
    o0, o1 = (run.get("origin") or {}).get("before"), (run.get("origin") or {}).get("after")
    for what in ("streams", "connections"):
        res[f"origin_{what}_peak"] = _at(o1, what, "open_max")
        a0, a1 = _at(o0, what, "accepted"), _at(o1, what, "accepted")
        res[f"origin_{what}_accepted"] = a1 - a0 if a0 is not None and a1 is not None else None
        res[f"origin_{what}_at_start"] = _at(o0, what, "open")
        res[f"origin_{what}_held"] = _at(hold, "origin", what, "open")
    # Before the reset: the most origin streams open at once from the start
    # to the run (the probe's, then the 10-subscriber warm-up's).
    res["origin_streams_warmup_peak"] = _at(o0, "streams", "open_max")
    res["origin_lagged"] = (_at(o1, "lagged") - _at(o0, "lagged")
                            if _at(o0, "lagged") is not None and _at(o1, "lagged") is not None
                            else None)
    up_cpu, events = out.get("upstream_cpu_s"), b.get("events")
    res["origin_cpu_s_per_m_events"] = (round(up_cpu / events * 1e6, 2)
                                        if up_cpu is not None and events else None)
    peak = b.get("peak_rss_kib")
    res["generator_peak_rss_mib"] = round(peak / 1024, 1) if peak else None
    return res


# --------------------------------------------------------------------------
# report


def _num(v, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}{unit}"
    a = abs(v)
    digits = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 1 else 3
    return f"{v:,.{digits}f}{unit}"


def _load_text(avg) -> str:
    return "?" if not avg else " ".join(f"{x:.2f}" for x in avg)


def _ratio(v, ref) -> str | None:
    if v is None or ref is None or ref == 0:
        return None
    return f"{v / ref:.2f}×"


def _cell(v, n_ref, d_ref, unit: str = "", nginx=True, direct=True) -> str:
    text = _num(v, unit)
    parts = []
    if nginx and (r := _ratio(v, n_ref)):
        parts.append(f"N {r}")
    if direct and (r := _ratio(v, d_ref)):
        parts.append(f"D {r}")
    return f"{text} ({', '.join(parts)})" if parts and v is not None else text


def _opened(d: dict) -> str:
    text = f"{_num(d.get('streams_opened'))} / {_num(d.get('streams_failed'))}"
    if d.get("errors_total"):
        text += f" ({_num(d['errors_total'])} errors)"
    return text


def _label(run: dict) -> str:
    return run["target"] if run["ok"] else f"{run['target']} (FAILED)"


def _by_target(runs: list[dict], scenario: str) -> dict[str, dict]:
    return {r["target"]: r for r in runs if r["scenario"] == scenario}


def _targets(by: dict[str, dict]) -> list[str]:
    return [t for t in TARGET_ORDER if t in by] + sorted(t for t in by if t not in TARGET_ORDER)


def _params_line(by: dict[str, dict]) -> str:
    for r in by.values():
        if r.get("params"):
            return r["params"].get("summary", "")
    return ""


def report(results: str) -> str:
    data = _load(results)
    runs = data["runs"]
    m = data.get("machine", {})
    lines = [
        f"# ssegate comparison run{' (quick)' if data.get('quick') else ''}",
        "",
        f"{data.get('started', '?')} · {m.get('nproc')} cores, {m.get('cpu_model')}, "
        f"kernel {m.get('kernel')} · load average (1, 5, 15 min) at start "
        f"{_load_text(m.get('loadavg_at_start'))}, at end {_load_text(m.get('loadavg_at_end'))}",
        f"ssegate {data.get('ssegate', {}).get('version', '?')}"
        + "".join(f" · {name} {p.get('version', '?')}"
                  for name, p in data.get("peers", {}).items()),
        "",
        "Each cell: the absolute figure, then its ratio to nginx (N) and to "
        "direct (D), from this run only. Proxies on core 0 with one worker; "
        "upstream and load generator on core 1.",
        "",
    ]
    errors = [r for r in runs if not r["ok"]]
    errors += [dict(r, target=f"{r['target']} round {r['round']}")
               for r in data.get("round_runs", []) if not r["ok"]]

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    def ref(by, name, key):
        r = by.get(name)
        return (r or {}).get("derived", {}).get(key) if r and r["ok"] else None

    by = _by_target(runs, "idle")
    if by:
        lines += [f"## idle — {_params_line(by)}", "",
                  row(["target", "opened / failed", "held at sample", "proxy RSS before → during",
                       "KiB per idle stream", "PSS KiB per stream"]),
                  row(["---"] + ["---:"] * 5)]
        for t in _targets(by):
            d = by[t]["derived"]
            mib = (f"{d['rss_before_kib'] / 1024:,.1f} → {d['rss_idle_kib'] / 1024:,.1f} MiB"
                   if d.get("rss_idle_kib") is not None else "—")
            lines.append(row([
                _label(by[t]), _opened(d), _num(d.get("streams_held_at_sample")), mib,
                _cell(d.get("kib_per_stream"), ref(by, "nginx", "kib_per_stream"), None),
                _cell(d.get("pss_kib_per_stream"), ref(by, "nginx", "pss_kib_per_stream"), None),
            ]))
        lines.append("")

    for scen in ("fanout", "h2mux"):
        by = _by_target(runs, scen)
        if not by:
            continue
        lines += [f"## {scen} — {_params_line(by)}", "",
                  row(["target", "opened / failed", "events/s", "gaps / dups",
                       "p50 ms", "p99 ms", "p99.9 ms",
                       "proxy CPU-s per M events", "proxy core %",
                       "generator CPU-s", "upstream CPU-s", "core 1 %"]),
                  row(["---"] + ["---:"] * 11)]
        for t in _targets(by):
            d = by[t]["derived"]

            def c(key, nginx=True, direct=True):
                return _cell(d.get(key), ref(by, "nginx", key), ref(by, "direct", key),
                             nginx=nginx, direct=direct)

            lines.append(row([
                _label(by[t]), _opened(d), c("events_per_s"), f"{_num(d.get('gaps'))} / {_num(d.get('duplicates'))}",
                c("lat_p50_ms"), c("lat_p99_ms"), c("lat_p999_ms"),
                c("proxy_cpu_s_per_m_events", direct=False), _num(d.get("proxy_core_pct")),
                _num(d.get("generator_cpu_s")), _num(d.get("upstream_cpu_s")),
                _num(d.get("core1_pct")),
            ]))
        lines.append("")

    by = _by_target(runs, "latency")
    if by and data.get("round_runs"):
        lines += latency_rounds(data, by)
    elif by:
        dp50, dp99 = ref(by, "direct", "lat_p50_ms"), ref(by, "direct", "lat_p99_ms")
        lines += [f"## latency — {_params_line(by)}", "",
                  row(["target", "opened / failed", "gaps", "p50 ms", "p90 ms", "p99 ms",
                       "p99.9 ms", "max ms", "added p50 ms", "added p99 ms"]),
                  row(["---"] + ["---:"] * 9)]
        for t in _targets(by):
            d = by[t]["derived"]

            def c(key):
                return _cell(d.get(key), ref(by, "nginx", key), ref(by, "direct", key))

            def added(key, direct_value):
                v = d.get(key)
                return None if v is None or direct_value is None or t == "direct" else v - direct_value

            lines.append(row([
                _label(by[t]), _opened(d), _num(d.get("gaps")), c("lat_p50_ms"), c("lat_p90_ms"), c("lat_p99_ms"),
                c("lat_p999_ms"), _num(d.get("lat_max_ms")),
                _num(added("lat_p50_ms", dp50)), _num(added("lat_p99_ms", dp99)),
            ]))
        lines.append("")

    lines += shared_sections(data, runs)
    lines += ws_sections(data, runs)
    lines += goals(runs)
    lines += shared_goals(data, runs)
    lines += ws_goals(runs)
    if data.get("skipped"):
        lines += ["## skipped", ""]
        lines += [f"- {s['target']}{' / ' + s['scenario'] if s.get('scenario') else ''}: "
                  f"{s['reason']}" for s in data["skipped"]]
        lines.append("")
    if errors:
        lines += ["## failed cells", ""]
        lines += [f"- {r['scenario']} / {r['target']}: {r['error']}" for r in errors]
        lines.append("")
    return "\n".join(lines)


def _med_range(spread: dict | None) -> str:
    if not spread:
        return "—"
    if spread["n"] == 1:
        return _num(spread["median"])
    sep = " to " if spread["min"] < 0 else "–"
    return f"{_num(spread['median'])} ({_num(spread['min'])}{sep}{_num(spread['max'])})"


def latency_rounds(data: dict, by: dict[str, dict]) -> list[str]:
    """The latency section of a run with alternating rounds: per target the
    median and range over the rounds, then every round's own figures."""
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    rounds = [r for r in data["round_runs"] if r["scenario"] == "latency"]
    order = _targets(by)
    n = max((r["round"] for r in rounds), default=0)
    lines = [f"## latency — {_params_line(by)}", "",
             f"{n} rounds; in each round every target in turn ({', '.join(order)}), "
             "each with a fresh upstream and proxy. Figures: the median over the "
             "rounds, (min–max) in brackets. Added = the target's percentile minus "
             "direct's in the same round.", "",
             row(["target", "rounds ok", "gaps / dups", "p50 ms", "p99 ms", "p99.9 ms",
                  "added p99 ms", "added p99.9 ms"]),
             row(["---"] + ["---:"] * 7)]
    for t in order:
        d = by[t]["derived"]
        sp = d.get("spread") or {}
        lines.append(row([
            _label(by[t]), f"{by[t].get('rounds_ok', 0)} / {len(by[t].get('rounds', []))}",
            f"{_num(d.get('gaps'))} / {_num(d.get('duplicates'))}",
            _num(d.get("lat_p50_ms")), _med_range(sp.get("lat_p99_ms")),
            _med_range(sp.get("lat_p999_ms")),
            "—" if t == "direct" else _med_range(sp.get("added_p99_ms")),
            "—" if t == "direct" else _med_range(sp.get("added_p999_ms")),
        ]))
    lines.append("")

    # Round by round: p99 / p99.9 of each target, in the order they ran.
    cells = {(r["round"], r["target"]): r for r in rounds}
    lines += ["### latency, round by round: p99 / p99.9 ms", "",
              row(["round"] + order + ["load 1 min at end"]),
              row(["---:"] + ["---:"] * (len(order) + 1))]
    for k in range(1, n + 1):
        vals = []
        load = None
        for t in order:
            r = cells.get((k, t))
            if r is None:
                vals.append("—")
                continue
            load = r.get("loadavg_1m_at_end", load)
            if not r["ok"]:
                vals.append("FAILED")
                continue
            d = r["derived"]
            vals.append(f"{_num(d.get('lat_p99_ms'))} / {_num(d.get('lat_p999_ms'))}")
        lines.append(row([str(k)] + vals + [_num(load)]))
    lines.append("")

    # Paired comparison with nginx, round by round.
    if "ssegate" in by and "nginx" in by:
        diffs, wins = [], 0
        for k in range(1, n + 1):
            s, g = cells.get((k, "ssegate")), cells.get((k, "nginx"))
            if not (s and g and s["ok"] and g["ok"]):
                continue
            a, b = s["derived"].get("lat_p99_ms"), g["derived"].get("lat_p99_ms")
            if a is None or b is None:
                continue
            diffs.append(a - b)
            wins += a < b
        if diffs:
            sp = _spread(diffs)
            lines += [f"ssegate p99 − nginx p99, same round: median {_num(sp['median'])} ms "
                      f"({_num(sp['min'])} to {_num(sp['max'])}); ssegate's p99 is the lower "
                      f"in {wins} of {len(diffs)} rounds.", ""]
    return lines


def _mib(kib) -> str:
    return "—" if kib is None else f"{kib / 1024:,.1f}"


def _peak_accepted(d: dict, what: str) -> str:
    peak, acc = d.get(f"origin_{what}_peak"), d.get(f"origin_{what}_accepted")
    if peak is None and acc is None:
        return "—"
    return f"{_num(peak)} ({_num(acc)})"


def shared_sections(data: dict, runs: list[dict]) -> list[str]:
    """The shared-* cells: one table each."""
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    def ref(by, name, key):
        r = by.get(name)
        return (r or {}).get("derived", {}).get(key) if r and r["ok"] else None

    present = [s for s in SHARED_SCENARIOS if _by_target(runs, s)]
    skipped = [x for x in data.get("skipped", []) if x.get("scenario") in SHARED_SCENARIOS]
    if not present and not skipped:
        return []
    sg = data.get("ssegate", {})
    lines = ["## shared streams", "",
             (f"ssegate's route has the sharing keys: `{sg.get('share_note')}`."
              if sg.get("shares") else
              f"ssegate's route does NOT have the sharing keys: {sg.get('share_note') or '—'}.")
             + " The peers cannot share: they open one upstream connection per subscriber. "
             "Every subscriber of a cell asks for the same URL (one stream key). shared-scale "
             "runs for ssegate only: one upstream connection per subscriber, 100,000 of them at "
             "full size, does not fit the open-files limit "
             f"({_num(data.get('nofile'))}).", "",
             "Origin streams and connections: the most open at once during the run, and in "
             "brackets how many the origin accepted during it (a shared stream that lingers "
             "from the warm-up and is taken over by the run is open but not accepted again); "
             "from the bench upstream's `/_stats`. Proxy RSS is sampled once the load "
             "generator holds every subscriber; KiB per subscriber = (RSS then − RSS before) "
             "/ subscribers open then. CPU-s per M events: the proxy's, and the origin's, "
             "per million events delivered to the subscribers.", ""]
    for scen in present:
        by = _by_target(runs, scen)
        lines += [f"### {scen} — {_params_line(by)}", "",
                  row(["target", "opened / failed", "events/s", "gaps / dups", "p50 ms", "p99 ms",
                       "proxy CPU-s per M events", "proxy core %", "origin streams",
                       "origin connections", "origin CPU-s", "origin CPU-s per M events",
                       "proxy RSS before → held MiB", "KiB per subscriber",
                       "generator peak RSS MiB", "core 1 %"]),
                  row(["---"] + ["---:"] * 15)]
        for t in _targets(by):
            d = by[t]["derived"]

            def c(key, nginx=True, direct=True):
                return _cell(d.get(key), ref(by, "nginx", key), ref(by, "direct", key),
                             nginx=nginx, direct=direct)

            rss = (f"{_mib(d.get('rss_before_kib'))} → {_mib(d.get('rss_held_kib'))}"
                   if d.get("rss_held_kib") is not None else "—")
            lines.append(row([
                _label(by[t]), _opened(d), c("events_per_s", nginx=False),
                f"{_num(d.get('gaps'))} / {_num(d.get('duplicates'))}",
                c("lat_p50_ms"), c("lat_p99_ms"),
                c("proxy_cpu_s_per_m_events", direct=False), _num(d.get("proxy_core_pct")),
                _peak_accepted(d, "streams"), _peak_accepted(d, "connections"),
                c("upstream_cpu_s", direct=False), c("origin_cpu_s_per_m_events", direct=False),
                rss, c("kib_per_subscriber", direct=False),
                _num(d.get("generator_peak_rss_mib")), _num(d.get("core1_pct")),
            ]))
        lines.append("")
    return lines


def ws_sections(data: dict, runs: list[dict]) -> list[str]:
    """The ws-* cells: one table each."""
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    def ref(by, name, key):
        r = by.get(name)
        return (r or {}).get("derived", {}).get(key) if r and r["ok"] else None

    present = [s for s in WS_SCENARIOS if _by_target(runs, s)]
    if not present:
        return []
    h1 = _by_target(runs, "ws-h1")
    lines = ["## websocket", "",
             "WebSocket tunnels to an echo origin (benches/ws_load.rs): each tunnel sends "
             "text messages that carry their send time and times each echo (RTT). An echo is "
             "one message through the proxy each way: proxy CPU-s per M echoes = the proxy's "
             "CPU over the whole run (opening, sending, idle, closing) per million echoes. "
             "Proxy core % covers the sending part only. KiB per idle tunnel = (RSS while "
             "every tunnel is open and silent, after the sending − RSS before the run) / "
             "tunnels open then. In ws-h2, \"h1\" is the ratio to the same target's ws-h1.", ""]
    for scen in present:
        by = _by_target(runs, scen)
        lines += [f"### {scen} — {_params_line(by)}", "",
                  row(["target", "opened / failed", "echoes/s", "lost", "p50 ms", "p99 ms",
                       "p99.9 ms", "proxy CPU-s per M echoes", "proxy core %",
                       "proxy RSS before → idle MiB", "KiB per idle tunnel",
                       "generator CPU-s", "origin CPU-s", "core 1 %"]),
                  row(["---"] + ["---:"] * 13)]
        for t in _targets(by):
            d = by[t]["derived"]

            def c(key, direct=True):
                text = _cell(d.get(key), ref(by, "nginx", key), ref(by, "direct", key),
                             direct=direct)
                if scen != "ws-h1" and d.get(key) is not None:
                    if (r := _ratio(d.get(key), ref(h1, t, key))):
                        text += f" (h1 {r})"
                return text

            opened = f"{_num(d.get('tunnels_opened'))} / {_num(d.get('tunnels_failed'))}"
            if d.get("errors_total"):
                opened += f" ({_num(d['errors_total'])} errors)"
            rss = (f"{_mib(d.get('rss_before_kib'))} → {_mib(d.get('rss_idle_kib'))}"
                   if d.get("rss_idle_kib") is not None else "—")
            lines.append(row([
                _label(by[t]), opened, _num(d.get("echoes_per_s")), _num(d.get("lost")),
                c("lat_p50_ms"), c("lat_p99_ms"), c("lat_p999_ms"),
                c("proxy_cpu_s_per_m_echoes", direct=False), _num(d.get("proxy_core_pct")),
                rss, c("kib_per_idle_tunnel", direct=False),
                _num(d.get("generator_cpu_s")), _num(d.get("upstream_cpu_s")),
                _num(d.get("core1_pct")),
            ]))
        lines.append("")
    return lines


def ws_goals(runs: list[dict]) -> list[str]:
    """The WebSocket goals of BENCHMARKS.md, judged on this run."""
    if not any(r["scenario"] in WS_SCENARIOS for r in runs):
        return []

    def get(scen, target, key):
        for r in runs:
            if r["scenario"] == scen and r["target"] == target and r["ok"]:
                return r["derived"].get(key)
        return None

    def verdict(ok):
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    out = ["## goals: WebSocket tunnels (ssegate, this run)", ""]
    s, n = (get("ws-h1", t, "proxy_cpu_s_per_m_echoes") for t in ("ssegate", "nginx"))
    out.append(f"- CPU per message ≤ nginx (ws-h1): "
               f"{verdict(s <= n if s is not None and n is not None else None)} "
               f"({_num(s)} vs {_num(n)} CPU-s per million echoes)")
    s, n = (get("ws-h1", t, "kib_per_idle_tunnel") for t in ("ssegate", "nginx"))
    out.append(f"- memory per idle tunnel ≤ nginx (ws-h1): "
               f"{verdict(s <= n if s is not None and n is not None else None)} "
               f"({_num(s)} vs {_num(n)} KiB)")
    h2, h1 = (get(scen, "ssegate", "proxy_cpu_s_per_m_echoes") for scen in ("ws-h2", "ws-h1"))
    out.append(f"- CPU per message over h2 (RFC 8441) < over HTTP/1.1: "
               f"{verdict(h2 < h1 if h2 is not None and h1 is not None else None)} "
               f"({_num(h2)} vs {_num(h1)} CPU-s per million echoes)")
    cells = [(scen, get(scen, "ssegate", "tunnels_failed"), get(scen, "ssegate", "lost"))
             for scen in WS_SCENARIOS]
    cells = [c for c in cells if c[1] is not None]
    ok = all(f == 0 and lost == 0 for _, f, lost in cells) if cells else None
    out.append("- every tunnel open, no echo lost: " + verdict(ok) + " ("
               + (", ".join(f"{scen}: {_num(f)} failed, {_num(lost)} lost" for scen, f, lost in cells)
                  or "—") + ")")
    out.append("")
    return out


def shared_goals(data: dict, runs: list[dict]) -> list[str]:
    """The shared-streams goals of BENCHMARKS.md, judged on this run."""
    if not any(r["scenario"] in SHARED_SCENARIOS for r in runs):
        return []

    def get(scen, target, key):
        for r in runs:
            if r["scenario"] == scen and r["target"] == target and r["ok"]:
                return r["derived"].get(key)
        return None

    def verdict(ok):
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    out = ["## goals: shared streams (ssegate, this run)", ""]
    if not data.get("ssegate", {}).get("shares"):
        out += ["ssegate's route did not have the sharing keys in this run: the goals below "
                "judge a proxy that opens one upstream connection per subscriber.", ""]
    for scen, what, limit in (("shared-h1", "HTTP/1.1", 0.6), ("shared-h2", "h2c", 0.2)):
        s, n = (get(scen, t, "proxy_cpu_s_per_m_events") for t in ("ssegate", "nginx"))
        ratio = s / n if s is not None and n else None
        out.append(f"- CPU per delivered event, {what} ({scen}) ≤ {limit}× nginx: "
                   f"{verdict(ratio <= limit if ratio is not None else None)} "
                   f"({_num(s)} vs {_num(n)} CPU-s per million events"
                   f"{f', {ratio:.2f}×' if ratio is not None else ''})")
    k = get("shared-idle", "ssegate", "kib_per_subscriber")
    out.append(f"- memory ≤ 3 KiB per idle subscriber (shared-idle): "
               f"{verdict(k <= 3 if k is not None else None)} ({_num(k)} KiB)")
    opened, failed, gaps, rss = (get("shared-scale", "ssegate", key) for key in
                                 ("streams_opened", "streams_failed", "gaps", "rss_held_kib"))
    want = next((r.get("params", {}).get("streams") for r in runs
                 if r["scenario"] == "shared-scale" and r["target"] == "ssegate"), None)
    ok = (None if opened is None or gaps is None or rss is None
          else opened == want and not failed and gaps == 0 and rss <= 1024 * 1024)
    out.append(f"- scale (shared-scale): every subscriber open, 0 gaps, proxy RSS ≤ 1 GiB: "
               f"{verdict(ok)} ({_num(opened)} of {_num(want)} open, {_num(failed)} failed, "
               f"gaps {_num(gaps)}, RSS {_mib(rss)} MiB)")
    p99 = get("shared-h2", "ssegate", "lat_p99_ms")
    out.append(f"- latency p99 ≤ 50 ms with 10,000 subscribers (shared-h2): "
               f"{verdict(p99 <= 50 if p99 is not None else None)} ({_num(p99)} ms)")
    cells = []
    for scen in SHARED_SCENARIOS:
        peak, acc = (get(scen, "ssegate", k) for k in
                     ("origin_streams_peak", "origin_streams_accepted"))
        if peak is not None and acc is not None:
            cells.append((scen, peak, acc))
    ok = all(peak == 1 and acc <= 1 for _, peak, acc in cells) if cells else None
    out.append("- origin: exactly 1 upstream stream per stream key, in every cell: "
               f"{verdict(ok)} (most open at once, accepted: "
               + (", ".join(f"{scen} {_num(peak)}, {_num(acc)}" for scen, peak, acc in cells)
                  or "—") + ")")
    out.append("")
    return out


def goals(runs: list[dict]) -> list[str]:
    """The four goals of BENCHMARKS.md, judged on this run's figures."""
    def get(scen, target, key):
        for r in runs:
            if r["scenario"] == scen and r["target"] == target and r["ok"]:
                return r["derived"].get(key)
        return None

    if not any(r["scenario"] in ("idle", "fanout", "h2mux", "latency") for r in runs):
        return []
    out = ["## goals (ssegate, this run)", ""]

    def verdict(ok):
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    gaps = [get(s, "ssegate", "gaps") for s in ("fanout", "h2mux", "latency")]
    gaps = [g for g in gaps if g is not None]
    out.append(f"- zero gaps: {verdict(all(g == 0 for g in gaps) if gaps else None)} "
               f"(gaps {gaps})")
    s, n = (get("fanout", t, "proxy_cpu_s_per_m_events") for t in ("ssegate", "nginx"))
    out.append(f"- CPU per event ≤ nginx: "
               f"{verdict(s <= n if s is not None and n is not None else None)} "
               f"({_num(s)} vs {_num(n)} CPU-s per million events)")
    s, n = (get("idle", t, "kib_per_stream") for t in ("ssegate", "nginx"))
    out.append(f"- memory per idle stream ≤ nginx: "
               f"{verdict(s <= n if s is not None and n is not None else None)} "
               f"({_num(s)} vs {_num(n)} KiB)")
    s, d = (get("latency", t, "lat_p99_ms") for t in ("ssegate", "direct"))
    added = s - d if s is not None and d is not None else None
    how = ""
    lat = [r for r in runs if r["scenario"] == "latency" and r["target"] == "ssegate" and r["ok"]]
    if lat and "rounds" in lat[0]:
        # Alternating rounds: the median of the per-round differences.
        added = lat[0]["derived"].get("added_p99_ms")
        how = f", median over {lat[0]['rounds_ok']} rounds"
    out.append(f"- p99 added latency < 1 ms: "
               f"{verdict(added < 1 if added is not None else None)} ({_num(added)} ms{how})")
    out.append("")
    return out


# --------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    if not argv:
        die("no subcommand; see the module docstring")
    cmd, args = argv[0], argv[1:]
    if cmd == "free-ports":
        print(" ".join(map(str, free_ports(int(args[0])))))
    elif cmd == "wait-listen":
        print(wait_listen(args[0], float(args[1])))
    elif cmd == "wait-port":
        wait_port(args[0], float(args[1]))
    elif cmd == "probe":
        print(probe(args[0], float(args[1])))
    elif cmd == "pids":
        print(" ".join(map(str, tree_pids(int(args[0])))))
    elif cmd == "tree":
        print(json.dumps(tree(int(args[0]))))
    elif cmd == "idle-sample":
        print(json.dumps(idle_sample(int(args[0]), int(args[1]), float(args[2]), float(args[3]))))
    elif cmd == "origin-stats":
        print(json.dumps(origin_stats(args[0], len(args) > 1 and args[1] == "reset")))
    elif cmd == "hold-sample":
        proxy = None if args[0] == "-" else int(args[0])
        print(json.dumps(hold_sample(proxy, int(args[1]), args[2], args[3], int(args[4]),
                                     float(args[5]), float(args[6]))))
    elif cmd == "ws-idle-sample":
        print(json.dumps(ws_idle_sample(int(args[0]), args[1], float(args[2]))))
    elif cmd == "bench-exe":
        print(bench_exe(args[0]))
    elif cmd == "machine":
        print(json.dumps(machine(), indent=2))
    elif cmd == "field":
        v = _at(_maybe_json(Path(args[0])) or {}, *args[1].split("."))
        print("" if v is None else v)
    elif cmd == "init":
        init(*args)
    elif cmd == "skip":
        skip(args[0], args[1], args[2], args[3])
    elif cmd == "add-run":
        add_run(args[0], args[1], args[2], args[3], args[4] if len(args) > 4 else None)
    elif cmd == "report":
        print(report(args[0]))
    else:
        die(f"unknown subcommand {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
