#!/usr/bin/env python3
"""Helpers for the cluster cells of benches/compare.sh (cluster-fanout,
cluster-redis): snapshots of the instances, Redis and the origin, the
results and the markdown report. Python 3.11 standard library only; the
/proc and /_stats readers are compare.py's.

compare.sh owns the processes; this file only looks at them. Results go
into results.json under "cluster" (not "runs": the chart and compare.py's
report keep to the one-proxy cells).

    cluster.py redis-ping PORT TIMEOUT_S
    cluster.py probe URL TIMEOUT_S             -> one event through an instance, not shared
    cluster.py snap OUT [proc:NAME=PID ...] [metrics:NAME=HOST:PORT ...]
                        [redis=PORT] [origin=HOST:PORT]
    cluster.py window CELL WANT MIN_WAIT_S DEADLINE_S END_S SPEC...
                   -> waits until the load clients (CELL/c-*.err) hold WANT
                      streams (or their count settles), sleeps 1 s, writes
                      CELL/snap_t1.json, sleeps until END_S after the start,
                      writes CELL/snap_t2.json (SPEC as for snap)
    cluster.py add RESULTS KIND CELL           -> KIND fanout or redis
    cluster.py report RESULTS
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare as cmp  # noqa: E402  (benches/compare.py: /proc, /_stats, results.json)


def die(msg: str) -> None:
    print(f"cluster.py: {msg}", file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------
# Redis (RESP over a plain socket: no client library, no redis-cli needed)


def _redis(port: int, *args: str, timeout: float = 5.0) -> bytes:
    """One command; returns the reply's payload (a bulk string or a status)."""
    out = f"*{len(args)}\r\n".encode()
    for a in args:
        b = a.encode()
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(out)
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("Redis closed the connection")
            buf += chunk
        head, rest = buf.split(b"\r\n", 1)
        if head[:1] in (b"+", b":"):
            return head[1:]
        if head[:1] == b"-":
            raise OSError(head[1:].decode(errors="replace"))
        if head[:1] != b"$":
            raise OSError(f"unexpected reply {head[:40]!r}")
        n = int(head[1:])
        while len(rest) < n + 2:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("Redis closed the connection")
            rest += chunk
        return rest[:n]


def redis_ping(port: int, timeout: float) -> None:
    end = time.time() + timeout
    last = ""
    while time.time() < end:
        try:
            if _redis(port, "PING", timeout=1) == b"PONG":
                return
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    die(f"Redis on 127.0.0.1:{port} did not answer PING in {timeout} s ({last})")


def redis_info(port: int) -> dict:
    """INFO's fields we use: cpu, memory, clients, stats and commandstats
    (calls and usec per command)."""
    text = _redis(port, "INFO", "everything").decode(errors="replace")
    out: dict = {"commands": {}}
    for line in text.splitlines():
        if ":" not in line or line.startswith("#"):
            continue
        k, v = line.split(":", 1)
        if k.startswith("cmdstat_"):
            fields = dict(p.split("=", 1) for p in v.split(","))
            out["commands"][k[len("cmdstat_"):]] = {
                "calls": int(fields.get("calls", 0)),
                "usec": int(fields.get("usec", 0))}
        elif k in ("used_cpu_sys", "used_cpu_user", "used_memory", "connected_clients",
                   "blocked_clients", "total_commands_processed", "instantaneous_ops_per_sec",
                   "total_net_input_bytes", "total_net_output_bytes", "redis_version"):
            try:
                out[k] = float(v) if "." in v else int(v)
            except ValueError:
                out[k] = v
    return out


def probe(url: str, timeout: float) -> str:
    """compare.py's probe, with a Cookie: a request with credentials does not
    share (no share_public, no Cookie among the key headers), so the probe
    leaves no shared stream behind (it would linger share_linger, held
    through Redis, and count among the instance's roles)."""
    import http.client
    import urllib.parse
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path + ("?" + u.query if u.query else ""),
                     headers={"Accept": "text/event-stream", "Cookie": "probe=1"})
        resp = conn.getresponse()
        ctype = resp.getheader("content-type", "")
        if resp.status != 200 or "text/event-stream" not in ctype:
            die(f"{url}: HTTP {resp.status}, content-type {ctype!r}")
        if not resp.read1(4096):
            die(f"{url}: 200 but an empty body")
        return f"ok: {url} 200 {ctype}"
    except OSError as e:
        die(f"{url}: {e}")
        return ""
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Prometheus text from an admin listener


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
KEEP = ("ssegate_cluster_", "ssegate_shared_", "ssegate_stream_events_total",
        "ssegate_streams_open", "ssegate_replays_total")


def metrics(addr: str, timeout: float = 5.0) -> list[dict]:
    """The ssegate_cluster_* and shared-stream samples of ADDR's /metrics,
    each {"name", "labels", "value"} (histogram buckets left out)."""
    host, port = addr.rsplit(":", 1)
    import http.client
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        if resp.status != 200:
            die(f"{addr}/metrics: HTTP {resp.status}")
        text = resp.read().decode(errors="replace")
    except OSError as e:
        die(f"{addr}/metrics: {e}")
        return []
    finally:
        conn.close()
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m or not m.group(1).startswith(KEEP) or m.group(1).endswith("_bucket"):
            continue
        labels = dict(LABEL.findall(m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append({"name": m.group(1), "labels": labels, "value": value})
    return out


def msum(samples: list[dict] | None, name: str, **want: str) -> float | None:
    """The sum of NAME's samples whose labels include WANT; None without a
    scrape, 0 when the scrape has no such series."""
    if samples is None:
        return None
    total = sum(s["value"] for s in samples if s["name"] == name
                and all(s["labels"].get(k) == v for k, v in want.items()))
    return int(total) if float(total).is_integer() else total


# --------------------------------------------------------------------------
# snapshots


def snap(spec: list[str]) -> dict:
    """One snapshot of everything SPEC names. A process or endpoint that does
    not answer is null (the report says so), never a crash."""
    out: dict = {"t": time.time(), "proc": {}, "metrics": {}, "loadavg": list(os.getloadavg())}

    def guarded(what):
        try:
            return what()
        except (SystemExit, OSError, ValueError):
            return None

    for item in spec:
        if item.startswith("proc:"):
            name, pid = item[5:].split("=", 1)
            out["proc"][name] = guarded(lambda: cmp.tree(int(pid)))
        elif item.startswith("metrics:"):
            name, addr = item[8:].split("=", 1)
            out["metrics"][name] = guarded(lambda: metrics(addr))
        elif item.startswith("redis="):
            out["redis"] = guarded(lambda: redis_info(int(item[6:])))
        elif item.startswith("origin="):
            out["origin"] = guarded(lambda: cmp.origin_stats(item[7:]))
        else:
            die(f"unknown snapshot item {item!r}")
    return out


def _clients_open(cell: Path) -> int:
    return sum(cmp._bench_open(str(p)) or 0 for p in sorted(cell.glob("c-*.err")))


def window(cell: str, want: int, min_wait: float, deadline: float, end: float,
           spec: list[str]) -> None:
    """The steady window of a cell: from 1 s after every client stream is
    open (or the count settled) to END seconds after the call."""
    d = Path(cell)
    start = time.time()
    history: list[int] = []
    why = "deadline"
    while time.time() - start < deadline:
        n = _clients_open(d)
        history.append(n)
        if n >= want:
            why = "all open"
            break
        if time.time() - start >= min_wait and len(history) >= 5 and len(set(history[-5:])) == 1:
            why = "count settled below target"
            break
        time.sleep(0.5)
    time.sleep(1.0)
    t1 = snap(spec)
    t1["open"] = _clients_open(d)
    t1["why"] = why
    cmp._save(str(d / "snap_t1.json"), t1)
    rest = start + end - time.time()
    if rest > 0:
        time.sleep(rest)
    t2 = snap(spec)
    t2["open"] = _clients_open(d)
    cmp._save(str(d / "snap_t2.json"), t2)


# --------------------------------------------------------------------------
# results


def _cpu(a: dict | None, b: dict | None, name: str) -> float | None:
    pa, pb = (a or {}).get("proc", {}).get(name), (b or {}).get("proc", {}).get(name)
    if not pa or not pb:
        return None
    return round(pb["cpu_s"] - pa["cpu_s"], 3)


def _mdelta(a: dict | None, b: dict | None, inst: str, name: str, **labels: str) -> float | None:
    va = msum((a or {}).get("metrics", {}).get(inst), name, **labels)
    vb = msum((b or {}).get("metrics", {}).get(inst), name, **labels)
    return None if va is None or vb is None else vb - va


def _sum(values) -> float | None:
    values = list(values)
    return None if not values or any(v is None for v in values) else sum(values)


def _rate(v, span) -> float | None:
    return round(v / span, 1) if v is not None and span else None


def _per_m(cpu, n) -> float | None:
    return round(cpu / n * 1e6, 2) if cpu is not None and n else None


def _commands(a: dict | None, b: dict | None, span: float | None) -> dict:
    """Redis commands between two snapshots: calls/s and µs of Redis time
    per call, by command."""
    ca = ((a or {}).get("redis") or {}).get("commands", {})
    cb = ((b or {}).get("redis") or {}).get("commands", {})
    out = {}
    for name, v in cb.items():
        if name in ("info", "ping"):
            continue  # this script's own snapshots and readiness checks
        calls = v["calls"] - ca.get(name, {}).get("calls", 0)
        usec = v["usec"] - ca.get(name, {}).get("usec", 0)
        if calls > 0:
            out[name] = {"calls": calls, "per_s": _rate(calls, span),
                         "usec_per_call": round(usec / calls, 2)}
    return out


def _instances(params: dict) -> list[str]:
    return [f"i{k}" for k in range(1, int(params.get("instances", 3)) + 1)]


def derive(cell: Path) -> dict:
    params = cmp._maybe_json(cell / "params.json") or {}
    s0, s1, s2, s3 = (cmp._maybe_json(cell / f"snap_{n}.json")
                      for n in ("before", "t1", "t2", "after"))
    insts = _instances(params)
    error = cmp._read(str(cell / "error")) or None
    clients = []
    for p in sorted(cell.glob("c-*.json")):
        # c-<instance>-<stream>.json
        _, inst, stream = p.stem.split("-", 2)
        b = cmp._maybe_json(p)
        if b is None:
            error = error or f"no JSON from load client {p.name} (see {p.with_suffix('.err')})"
            continue
        lat = b.get("latency_ms") or {}
        clients.append({"instance": inst, "stream": stream,
                        "opened": b.get("streams_opened"), "failed": b.get("streams_failed"),
                        "events": b.get("events"), "events_per_s": b.get("events_per_s"),
                        "gaps": b.get("gaps"), "duplicates": b.get("duplicates"),
                        "errors": sum(v for v in (b.get("errors") or {}).values()
                                      if isinstance(v, (int, float))),
                        "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
                        "p999_ms": lat.get("p999"), "max_ms": lat.get("max"),
                        "cpu_s": b.get("cpu_s")})
    span = (s2["t"] - s1["t"]) if s1 and s2 else None
    wall = (s3["t"] - s0["t"]) if s0 and s3 else None
    out: dict = {"ok": error is None, "error": error, "params": params, "cell_dir": str(cell),
                 "clients": len(clients), "window_s": round(span, 2) if span else None,
                 "wall_s": round(wall, 2) if wall else None,
                 "window_why": (s1 or {}).get("why"), "open_at_t1": (s1 or {}).get("open"),
                 "loadavg": {"before": (s0 or {}).get("loadavg"),
                             "after": (s3 or {}).get("loadavg")}}

    def agg(cs: list[dict]) -> dict:
        p99 = [c["p99_ms"] for c in cs if c["p99_ms"] is not None]
        p50 = [c["p50_ms"] for c in cs if c["p50_ms"] is not None]
        return {"opened": _sum(c["opened"] for c in cs), "failed": _sum(c["failed"] for c in cs),
                "events": _sum(c["events"] for c in cs),
                "events_per_s": round(_sum(c["events_per_s"] for c in cs) or 0, 1),
                "gaps": _sum(c["gaps"] for c in cs), "duplicates": _sum(c["duplicates"] for c in cs),
                "errors": _sum(c["errors"] for c in cs),
                "p50_ms_median": round(statistics.median(p50), 3) if p50 else None,
                "p99_ms_median": round(statistics.median(p99), 3) if p99 else None,
                "p99_ms_max": max(p99) if p99 else None,
                "p999_ms_max": max((c["p999_ms"] for c in cs if c["p999_ms"] is not None),
                                   default=None),
                "generator_cpu_s": round(_sum(c["cpu_s"] for c in cs) or 0, 2)}

    out["total"] = agg(clients)
    per = {}
    for inst in insts:
        mine = [c for c in clients if c["instance"] == inst]
        a = agg(mine)
        a["cpu_s_run"] = _cpu(s0, s3, inst)
        a["cpu_s_per_m_events"] = _per_m(a["cpu_s_run"], a["events"])
        cw = _cpu(s1, s2, inst)
        a["cpu_s_window"] = cw
        a["core_pct_window"] = round(100 * cw / span, 1) if cw is not None and span else None
        # Events the instance wrote to its clients in the window (its own counter).
        ev = _mdelta(s1, s2, inst, "ssegate_stream_events_total")
        a["events_window"] = ev
        a["events_per_s_window"] = _rate(ev, span)
        a["cpu_s_per_m_events_window"] = _per_m(cw, ev)
        a["appended"] = _mdelta(s1, s2, inst, "ssegate_cluster_events_total", op="appended")
        a["read"] = _mdelta(s1, s2, inst, "ssegate_cluster_events_total", op="read")
        a["upstream_opens_run"] = _mdelta(s0, s3, inst, "ssegate_shared_upstream_opens_total")
        ms = (s2 or {}).get("metrics", {}).get(inst)
        a["roles"] = ({role: msum(ms, "ssegate_cluster_streams", role=role)
                       for role in ("holder", "follower", "local")} if ms is not None else None)
        a["fallbacks"] = _mdelta(s0, s3, inst, "ssegate_cluster_fallbacks_total")
        a["takeovers"] = _mdelta(s0, s3, inst, "ssegate_cluster_lease_takeovers_total")
        a["history_lost"] = _mdelta(s0, s3, inst, "ssegate_cluster_history_lost_total")
        a["redis_up"] = msum(ms, "ssegate_cluster_redis_up")
        per[inst] = a
    out["instances"] = per
    appended = _sum(per[i]["appended"] for i in insts)
    read = _sum(per[i]["read"] for i in insts)
    out["appended_per_s"] = _rate(appended, span)
    out["read_per_s"] = _rate(read, span)
    out["upstream_opens_run"] = _sum(per[i]["upstream_opens_run"] for i in insts)
    t = out["total"]
    t["cpu_s_run"] = _sum(per[i]["cpu_s_run"] for i in insts)
    t["cpu_s_per_m_events"] = _per_m(t["cpu_s_run"], t["events"])
    t["cpu_s_window"] = _sum(per[i]["cpu_s_window"] for i in insts)
    t["events_window"] = _sum(per[i]["events_window"] for i in insts)
    t["events_per_s_window"] = _rate(t["events_window"], span)
    t["cpu_s_per_m_events_window"] = _per_m(t["cpu_s_window"], t["events_window"])
    t["core_pct_window"] = (round(100 * t["cpu_s_window"] / span, 1)
                            if t["cpu_s_window"] is not None and span else None)
    rc_run, rc_win = _cpu(s0, s3, "redis"), _cpu(s1, s2, "redis")

    def rusage(snapshot):
        r = (snapshot or {}).get("redis") or {}
        u, sy = r.get("used_cpu_user"), r.get("used_cpu_sys")
        return None if u is None or sy is None else u + sy

    ru1, ru2 = rusage(s1), rusage(s2)
    # The same CPU time as /proc, from Redis's own getrusage (INFO cpu), in
    # µs instead of clock ticks (10 ms): the fit uses this one.
    ru_win = round(ru2 - ru1, 4) if ru1 is not None and ru2 is not None else None
    ev_win = _sum(per[i]["events_window"] for i in insts)
    out["redis"] = {
        "cpu_s_run": rc_run,
        "cpu_s_window": rc_win,
        "core_pct_window": round(100 * rc_win / span, 1) if rc_win is not None and span else None,
        "cpu_s_window_rusage": ru_win,
        "core_pct_window_rusage": (round(100 * ru_win / span, 2)
                                   if ru_win is not None and span else None),
        "cpu_s_per_m_appends_rusage": _per_m(ru_win, appended),
        "cpu_s_per_m_reads_rusage": _per_m(ru_win, read),
        "cpu_s_per_m_appends": _per_m(rc_win, appended),
        "cpu_s_per_m_reads": _per_m(rc_win, read),
        "cpu_s_per_m_delivered": _per_m(rc_win, ev_win),
        "cpu_s_per_m_delivered_run": _per_m(rc_run, out["total"]["events"]),
        "commands": _commands(s1, s2, span),
        "used_memory_mib": (round(((s2 or {}).get("redis") or {}).get("used_memory", 0) / 2**20, 1)
                            if (s2 or {}).get("redis") else None),
        "connected_clients": ((s2 or {}).get("redis") or {}).get("connected_clients"),
        "blocked_clients": ((s2 or {}).get("redis") or {}).get("blocked_clients"),
        "version": ((s2 or {}).get("redis") or {}).get("redis_version"),
    }
    oc = _cpu(s0, s3, "origin")
    o0, o1, ot = ((s or {}).get("origin") for s in (s0, s3, s2))
    acc0, acc1 = cmp._at(o0, "streams", "accepted"), cmp._at(o1, "streams", "accepted")
    out["origin"] = {
        "cpu_s_run": oc,
        "streams_accepted": acc1 - acc0 if acc0 is not None and acc1 is not None else None,
        "streams_open_in_window": cmp._at(ot, "streams", "open"),
        "streams_open_max": cmp._at(o1, "streams", "open_max"),
        "streams_open_at_start": cmp._at(o0, "streams", "open"),
        "events_published": ((cmp._at(o1, "events_published") or 0)
                             - (cmp._at(o0, "events_published") or 0)) if o0 and o1 else None,
    }
    if out["ok"] and not (s0 and s1 and s2 and s3):
        out["ok"] = False
        out["error"] = "a snapshot is missing (see the cell folder)"
    return out


def add(results: str, kind: str, cell: str) -> None:
    run = derive(Path(cell))
    data = cmp._load(results)
    cl = data.setdefault("cluster", {"fanout": None, "redis_steps": []})
    if kind == "fanout":
        cl["fanout"] = run
    elif kind == "single":
        cl["fanout_single"] = run
    elif kind == "redis":
        cl["redis_steps"].append(run)
        cl["redis_fit"] = fit(cl["redis_steps"])
    else:
        die(f"unknown kind {kind!r}")
    data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data["machine"]["loadavg_at_end"] = list(os.getloadavg())
    cmp._save(results, data)


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Gaussian elimination for a small square system; None if singular."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[p][c]) < 1e-12:
            return None
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c])]
    return [m[i][n] / m[i][i] for i in range(n)]


def fit(steps: list[dict]) -> dict | None:
    """What an append and a follower's read cost Redis, rate by rate: the
    Redis CPU (getrusage) per append with 0 followers is the append's cost
    (the streams' fixed cost of leases and expiry refreshes included, which
    is small next to it from 100 events/s per stream up); with F followers
    at the same rate, the extra CPU per append divided by F is a read's.
    Steps are compared at equal rates only: how many events one EVALSHA or
    XREAD carries grows with the rate, so the cost per event falls."""
    cost: dict[tuple[int, float], float] = {}
    for s in steps:
        r = s.get("redis") or {}
        per = r.get("cpu_s_per_m_appends_rusage")
        if per is None:
            per = r.get("cpu_s_per_m_appends")
        p = s.get("params") or {}
        if s.get("ok") and per is not None and p.get("followers") is not None:
            cost[(int(p["followers"]), float(p["rate"]))] = per  # CPU-s per M = µs per append
    by_rate: dict[str, dict] = {}
    for (f, rate), per in sorted(cost.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if f != 0 or rate < 100:
            continue  # below 100 events/s per stream the fixed cost dominates
        reads = {str(g): round((cost[(g, rate)] - per) / g, 2)
                 for (g, r2) in cost if r2 == rate and g > 0}
        by_rate[f"{rate:g}"] = {"us_per_append": round(per, 2), "us_per_read": reads}
    if not by_rate:
        return None
    basis = max((r for r in by_rate if by_rate[r]["us_per_read"]), key=float, default=None)
    out: dict = {"by_rate": by_rate, "basis_rate": basis}
    if basis is not None:
        b = by_rate[basis]
        reads = list(b["us_per_read"].values())
        out["us_per_append"] = b["us_per_append"]
        out["us_per_read"] = round(sum(reads) / len(reads), 2)
    return out


# --------------------------------------------------------------------------
# report


def _num(v, unit: str = "") -> str:
    return cmp._num(v, unit)


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _roles(r: dict | None) -> str:
    if r is None:
        return "—"
    return " / ".join(_num(r.get(k)) for k in ("holder", "follower", "local"))


FANOUT_HEAD = ["instance", "opened / failed", "events/s (window)", "gaps / dups",
               "p50 ms (median)", "p99 ms (median, worst)", "CPU-s per M events (window)",
               "CPU-s per M events (run)", "core % (window)", "appends/s", "reads/s",
               "upstream opens", "roles h / f / l"]


def _fanout_row(name: str, a: dict, span, roles=True) -> list[str]:
    return [name, f"{_num(a['opened'])} / {_num(a['failed'])}", _num(a.get("events_per_s_window")),
            f"{_num(a['gaps'])} / {_num(a['duplicates'])}", _num(a["p50_ms_median"]),
            f"{_num(a['p99_ms_median'])}, {_num(a['p99_ms_max'])}",
            _num(a.get("cpu_s_per_m_events_window")), _num(a.get("cpu_s_per_m_events")),
            _num(a.get("core_pct_window")),
            _num(_rate(a.get("appended"), span)) if roles else "",
            _num(_rate(a.get("read"), span)) if roles else "",
            _num(a.get("upstream_opens_run")) if roles else "",
            _roles(a.get("roles")) if roles else ""]


def fanout_section(f: dict, single: dict | None) -> list[str]:
    p = f.get("params", {})
    lines = [f"## cluster-fanout — {p.get('summary', '')}", ""]
    if not f["ok"]:
        lines += [f"FAILED: {f['error']}", ""]
    lines += [
        "Three ssegate instances (one worker thread each, all on core 0), one Redis, the "
        "origin and the load clients on core 1. Each instance's subscribers are spread "
        "evenly over the 10 stream URLs, 10 load clients per instance (one per URL, all "
        "with the same Host header, so a URL is one stream key on every instance). "
        "Events/s and CPU-s per M events (window): the instance's "
        "`ssegate_stream_events_total` (events written to its subscribers) and its /proc "
        "CPU over the steady window; (run): its CPU from before the clients started to "
        "after they ended, per event its clients received. Latency: each load client's "
        "own p50 / p99 over its streams; the table shows the median client and the worst. "
        "Roles: `ssegate_cluster_streams{role}` in the window, holder / follower / local. "
        "The baseline row: the same subscribers and load clients on one instance without "
        "`[cluster]`, run just before.", "",
        row(FANOUT_HEAD), row(["---"] + ["---:"] * (len(FANOUT_HEAD) - 1))]
    span = f.get("window_s")
    for name, a in f["instances"].items():
        lines.append(row(_fanout_row(name, a, span)))
    t = dict(f["total"], appended=None, read=None, upstream_opens_run=f.get("upstream_opens_run"),
             roles=None)
    cells = _fanout_row("**all 3**", t, span)
    cells[9], cells[10] = _num(f.get("appended_per_s")), _num(f.get("read_per_s"))
    cells[12] = ""
    lines.append(row(cells))
    if single:
        st = dict(single["total"], upstream_opens_run=single.get("upstream_opens_run"))
        cells = _fanout_row("baseline: 1 instance" + ("" if single["ok"] else " (FAILED)"),
                            st, single.get("window_s"), roles=False)
        cells[11] = _num(single.get("upstream_opens_run"))
        lines.append(row(cells))
        ratios = ["cluster ÷ baseline", "", "", ""]
        for key in ("p50_ms_median", "p99_ms_median", "cpu_s_per_m_events_window",
                    "cpu_s_per_m_events"):
            ratios.append(cmp._ratio(t.get(key), st.get(key)) or "—")
        ratios[5] = f"{ratios[5]}, {cmp._ratio(t.get('p99_ms_max'), st.get('p99_ms_max')) or '—'}"
        lines.append(row(ratios + [""] * (len(FANOUT_HEAD) - len(ratios))))
    r, o = f["redis"], f["origin"]
    lines += ["",
              f"Redis {r.get('version') or '?'}: {_num(r['cpu_s_run'])} CPU-s over the run "
              f"({_num(f.get('wall_s'))} s), {_num(r['core_pct_window'])} % of a core in the "
              f"steady window ({_num(span)} s); {_num(r['cpu_s_per_m_appends'])} CPU-s per M "
              f"appends, {_num(r['cpu_s_per_m_delivered'])} CPU-s per M delivered events "
              f"(window); {_num(r['connected_clients'])} client connections (this script's "
              f"one included), {_num(r['blocked_clients'])} blocked in XREAD, "
              f"{_num(r['used_memory_mib'])} MiB used.",
              f"Origin: {_num(o['streams_accepted'])} streams accepted during the run, "
              f"{_num(o['streams_open_in_window'])} open in the window, most open at once "
              f"{_num(o['streams_open_max'])}; {_num(o['cpu_s_run'])} CPU-s. "
              f"Load clients: {_num(t['generator_cpu_s'])} CPU-s"
              + (f" (baseline: {_num(single['total']['generator_cpu_s'])}; origin streams "
                 f"{_num(single['origin']['streams_accepted'])})" if single else "") + ".",
              f"Load average before → after: {cmp._load_text(f['loadavg']['before'])} → "
              f"{cmp._load_text(f['loadavg']['after'])}"
              + (f" (baseline: {cmp._load_text(single['loadavg']['before'])} → "
                 f"{cmp._load_text(single['loadavg']['after'])})" if single else "") + ".", ""]
    if r.get("commands"):
        lines += ["Redis commands in the steady window (calls/s, Redis's own µs per call): "
                  + ", ".join(f"{k} {_num(v['per_s'])}/s ({_num(v['usec_per_call'])} µs)"
                              for k, v in sorted(r["commands"].items(),
                                                 key=lambda kv: -kv[1]["calls"])), ""]
    return lines


def redis_section(steps: list[dict], fitted: dict | None) -> list[str]:
    lines = ["## cluster-redis — what one Redis carries", "",
             "Few subscribers, many events: 3 instances, 10 stream URLs, one subscriber per "
             "URL on each instance that has any (followers = instances with subscribers − 1: "
             "with 0, only instance 1 has subscribers and holds every stream). Each step is a "
             "fresh Redis, origin and instances. Appends/s and reads/s are the instances' "
             "`ssegate_cluster_events_total{op}` over the steady window; Redis CPU over the "
             "same window from /proc/PID/stat (10 ms ticks) and from Redis's own getrusage "
             "(INFO cpu, µs); the per-M columns and the fit use the latter. Per M appends and "
             "per M reads divide the same CPU (the fit below separates them).", "",
             row(["origin events/s per stream", "followers", "appends/s", "reads/s",
                  "delivered events/s", "gaps", "Redis core % (/proc; getrusage)",
                  "Redis CPU-s per M appends", "per M reads (same CPU)", "Redis calls/s (top 3)",
                  "instances core % (1, 2, 3)", "load 1 min"]),
             row(["---:"] * 12)]
    for s in steps:
        p, r = s.get("params", {}), s.get("redis", {})
        top = sorted((r.get("commands") or {}).items(), key=lambda kv: -kv[1]["calls"])[:3]
        cores = ", ".join(_num(a["core_pct_window"]) for a in s["instances"].values())
        label = _num(p.get("rate")) + ("" if s["ok"] else " (FAILED)")
        lines.append(row([
            label, _num(p.get("followers")), _num(s.get("appended_per_s")),
            _num(s.get("read_per_s")), _num(s["total"]["events_per_s"]),
            _num(s["total"]["gaps"]),
            f"{_num(r.get('core_pct_window'))}; {_num(r.get('core_pct_window_rusage'))}",
            _num(r.get("cpu_s_per_m_appends_rusage")), _num(r.get("cpu_s_per_m_reads_rusage")),
            ", ".join(f"{k} {_num(v['per_s'])}" for k, v in top) or "—", cores,
            _num((s["loadavg"].get("after") or [None])[0])]))
    lines.append("")
    if fitted and fitted.get("by_rate"):
        lines.append("Redis CPU per event, by the origin's rate per stream (an append: the CPU per "
                     "append with 0 followers; a read: the extra CPU per append with F followers "
                     "at the same rate, divided by F): " + "; ".join(
                         f"{r}/s: append {_num(v['us_per_append'])} µs"
                         + "".join(f", read {_num(x)} µs ({f} followers)"
                                   for f, x in sorted(v["us_per_read"].items()))
                         for r, v in sorted(fitted["by_rate"].items(), key=lambda kv: float(kv[0])))
                     + ". More events per stream and second ride in one EVALSHA or XREAD, so "
                     "each costs less.")
        a, b = fitted.get("us_per_append"), fitted.get("us_per_read")
        if a is not None and b is not None:
            lines.append(f"Linear extrapolation at {fitted['basis_rate']} events/s per stream "
                         f"(append {_num(a)} µs, read {_num(b)} µs, the mean over the follower "
                         "counts) to a whole core of this machine (here Redis shared core 1 with "
                         "the origin and the load clients): one core ≈")
            for k in (0, 1, 2, 5, 10):
                lines.append(f"- {k} followers per stream: {_num(round(1e6 / (a + k * b)))} "
                             f"appends/s ({_num(round(k * 1e6 / (a + k * b)))} reads/s)")
        lines.append("")
    for s in steps:
        if not s["ok"]:
            lines.append(f"- FAILED step (rate {s['params'].get('rate')}, followers "
                         f"{s['params'].get('followers')}): {s['error']}")
    return lines


def goals(f: dict | None) -> list[str]:
    if not f:
        return []

    def verdict(ok):
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    want = f.get("params", {}).get("stream_urls", 10)
    acc, opens = f["origin"]["streams_accepted"], f.get("upstream_opens_run")
    ok = None if acc is None else acc == want and (opens is None or opens == want)
    t = f["total"]
    gaps_ok = None if t["gaps"] is None else t["gaps"] == 0 and t["duplicates"] == 0
    subs = f.get("params", {}).get("subscribers")
    open_ok = None if t["opened"] is None else t["opened"] == subs and not t["failed"]
    return ["## goals: cluster (this run)", "",
            f"- origin streams == {want}: {verdict(ok)} (origin accepted {_num(acc)} during "
            f"the run; ssegate_shared_upstream_opens_total summed over the instances "
            f"{_num(opens)})",
            f"- 0 gaps, 0 duplicates: {verdict(gaps_ok)} (gaps {_num(t['gaps'])}, duplicates "
            f"{_num(t['duplicates'])})",
            f"- every subscriber open: {verdict(open_ok)} ({_num(t['opened'])} of {_num(subs)}, "
            f"{_num(t['failed'])} failed)", ""]


def report(results: str) -> str:
    data = cmp._load(results)
    cl = data.get("cluster")
    if not cl:
        return ""
    lines = ["# cluster", ""]
    if cl.get("note"):
        lines += [cl["note"], ""]
    if cl.get("fanout"):
        lines += fanout_section(cl["fanout"], cl.get("fanout_single"))
    if cl.get("redis_steps"):
        lines += redis_section(cl["redis_steps"], cl.get("redis_fit"))
    lines += goals(cl.get("fanout"))
    return "\n".join(lines)


def note(results: str, text: str) -> None:
    data = cmp._load(results)
    data.setdefault("cluster", {"fanout": None, "redis_steps": []})["note"] = text
    cmp._save(results, data)


def main(argv: list[str]) -> None:
    if not argv:
        die("no subcommand; see the module docstring")
    cmd, args = argv[0], argv[1:]
    if cmd == "redis-ping":
        redis_ping(int(args[0]), float(args[1]))
    elif cmd == "probe":
        print(probe(args[0], float(args[1])))
    elif cmd == "snap":
        cmp._save(args[0], snap(args[1:]))
    elif cmd == "window":
        window(args[0], int(args[1]), float(args[2]), float(args[3]), float(args[4]), args[5:])
    elif cmd == "add":
        add(args[0], args[1], args[2])
    elif cmd == "note":
        note(args[0], args[1])
    elif cmd == "report":
        print(report(args[0]))
    else:
        die(f"unknown subcommand {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
