#!/usr/bin/env python3
"""Analysis for benches/latency_tail.sh (standard library only).

    latency_tail.py header
    latency_tail.py cell DIR RATE SECONDS STREAMS   -> one JSON line of figures
    latency_tail.py line                            -> that JSON (stdin) as a table row
    latency_tail.py summary ROWS.jsonl              -> medians per target

A cell's DIR holds: pids ("target root worker upstream"), bench.pid,
bench.json (the load generator's --json), stat.csv (perf stat -x,),
timehist.txt (perf sched timehist) and, for ssegate, metrics_before.txt and
metrics_after.txt (/metrics of the admin listener).

From timehist, each process's runs (a thread on a core from its switch-in
to its switch-out) are grouped by the upstream's ticks: a tick starts when
the bench upstream is woken by its ticker (see ticks_from); a tick's burst is what starts
within 20 ms of it (a fifth of the period if shorter): later runs are other
things (tokio re-filing a long timer 64 ms on, progress lines). The proxy's
helper threads that wake on their own clock (pingora's "Timer thread", every
10 ms; "ssegate-trim", every 10 s) are counted apart, not in its bursts. Per
tick and process:
  done_ms    end of its last run in the tick, from the tick's start;
  busy_ms    its CPU time in the tick;
  wakeups    runs in the tick;
  sched_ms   its summed sch delay in the tick (woken but waiting for a core:
             time other work on the machine took from it);
and per core, others_ms: CPU time in the tick of every task that is none of
upstream, load generator, proxy (the machine's other work); over the whole
window, the other tasks with the longest single runs (a burst on that core
may wait that long), e.g. the kernel's kdamond.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

LINE = re.compile(
    r"^\s*(\d+\.\d+)\s+\[(\d+)\]\s+(.*?)\[(\d+)(?:/(\d+))?\]\s+"
    r"(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)")


def pct(values, p):
    values = sorted(values)
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def runs_of(timehist: str) -> list[tuple]:
    """(start_s, end_s, cpu, pid, tid, comm, sch_delay_s) of every run."""
    out = []
    for line in timehist.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        t, cpu, comm, tid, pid, _wait, sch, run = m.groups()
        if comm.strip() == "<idle>":
            continue
        end = float(t)
        out.append((end - float(run) / 1e3, end, int(cpu), int(pid or tid), int(tid),
                    comm.strip(), float(sch) / 1e3))
    return out


def ticks_from(up_runs: list[tuple], period: float) -> list[float]:
    """Tick starts. The upstream's ticker fires every period (tokio's
    interval, 1 ms wheel), so its ticks share one phase: the phase where the
    upstream spends the most CPU within 2 ms (its other wake-ups, such as
    tokio re-filing the long timer 64 ms later, are short). Each tick starts
    at the first wake-up of the upstream (run start minus sch delay) within
    1 ms of that phase."""
    if not up_runs:
        return []
    t_first = min(r[0] for r in up_runs)
    bins = [0.0] * max(1, int(period / 0.0005))
    for start, end, *_rest in up_runs:
        b = int(((start - t_first) % period) / 0.0005) % len(bins)
        bins[b] += end - start
    # CPU within 2 ms from each phase bin (4 bins).
    best = max(range(len(bins)), key=lambda i: sum(bins[(i + k) % len(bins)] for k in range(4)))
    phase = t_first + best * 0.0005
    t_last = max(r[0] for r in up_runs)
    starts = []
    k = 0
    while phase + k * period <= t_last:
        t = phase + k * period
        wakes = [r[0] - r[6] for r in up_runs if t - 0.001 <= r[0] < t + 0.002]
        starts.append(min(wakes) if wakes else t)
        k += 1
    return starts


# Threads of a proxy that run on their own clock, not on events.
HELPERS = ("Timer thread", "ssegate-trim")


def sched_figures(timehist: str, groups: dict[str, set[int]], period: float, secs: float) -> dict:
    runs = runs_of(timehist)
    if not runs:
        return {}
    mine = set().union(*groups.values())
    helpers = [r for r in runs if r[3] in groups.get("proxy", set()) and r[5] in HELPERS]
    runs_all = runs
    runs = [r for r in runs if not (r[3] in groups.get("proxy", set()) and r[5] in HELPERS)]
    burst = min(0.02, period / 5)
    ticks = ticks_from([r for r in runs if r[3] in groups.get("upstream", set())], period)
    # Drop the first and last tick: the window may cut them.
    ticks = ticks[1:-1]
    per: dict[str, dict[str, list]] = {g: {"done_ms": [], "busy_ms": [], "wakeups": [], "sched_ms": [],
                                            "max_sched_ms": []} for g in groups}
    others = {0: [], 1: []}
    for t0 in ticks:
        t1 = t0 + burst
        inside = [r for r in runs if t0 <= r[0] < t1]
        for g, pids in groups.items():
            rs = [r for r in inside if r[3] in pids]
            if not rs:
                continue
            per[g]["done_ms"].append((max(r[1] for r in rs) - t0) * 1e3)
            per[g]["busy_ms"].append(sum(r[1] - r[0] for r in rs) * 1e3)
            per[g]["wakeups"].append(len(rs))
            per[g]["sched_ms"].append(sum(r[6] for r in rs) * 1e3)
            per[g]["max_sched_ms"].append(max(r[6] for r in rs) * 1e3)
        for cpu in others:
            others[cpu].append(sum(r[1] - r[0] for r in inside
                                   if r[2] == cpu and r[3] not in mine
                                   and not r[5].startswith("perf")) * 1e3)
    out: dict = {"ticks": len(ticks)}
    for g, figs in per.items():
        out[g] = {k: {"p50": pct(v, 50), "p90": pct(v, 90), "max": max(v) if v else None}
                  for k, v in figs.items()}
    for cpu, v in others.items():
        out[f"others_core{cpu}_ms"] = {"p50": pct(v, 50), "p90": pct(v, 90), "max": max(v) if v else None}
    # Threads of the proxy that ran, by name: which threads wake up at all.
    names: dict[str, dict] = {}
    for r in runs_all:
        if r[3] in groups.get("proxy", set()):
            n = names.setdefault(r[5], {"runs_per_s": 0.0, "cpu_ms_per_s": 0.0})
            n["runs_per_s"] += 1 / secs
            n["cpu_ms_per_s"] += (r[1] - r[0]) * 1e3 / secs
    out["proxy_threads"] = {k: {a: round(b, 2) for a, b in v.items()} for k, v in names.items()}
    # How often a helper thread ran while the worker was in a burst.
    out["helper_runs"] = len(helpers)
    # The machine's other work, by name and core, over the whole window:
    # CPU ms per second and the longest single run (what a burst can wait).
    other: dict[str, list] = {}
    for r in runs_all:
        if r[3] in mine or r[5].startswith("perf"):
            continue
        name = re.sub(r"[/:].*$", "", r[5])
        a = other.setdefault(f"{name}@core{r[2]}", [0.0, 0.0])
        a[0] += (r[1] - r[0]) * 1e3 / secs
        a[1] = max(a[1], (r[1] - r[0]) * 1e3)
    top = sorted(other.items(), key=lambda kv: -kv[1][1])[:4]
    out["others_top"] = {k: {"cpu_ms_per_s": round(v[0], 2), "longest_ms": round(v[1], 2)} for k, v in top}
    return out


def stat_figures(text: str) -> dict:
    v = {}
    for line in text.splitlines():
        f = line.strip().split(",")
        if len(f) > 2 and f[0] and not line.startswith("#"):
            try:
                v[f[2].split(":")[-1]] = float(f[0])
            except ValueError:
                pass
    return v


BUCKET = re.compile(r'^ssegate_relay_delay_seconds_bucket\{le="([^"]+)"\}\s+(\d+)', re.M)
SUM = re.compile(r'^ssegate_relay_delay_seconds_(sum|count)\s+(\S+)', re.M)


def relay_delay(before: str, after: str) -> dict | None:
    b, a = dict(BUCKET.findall(before)), dict(BUCKET.findall(after))
    if not a:
        return None
    delta = {le: int(a[le]) - int(b.get(le, 0)) for le in a}
    sa, sb = dict(SUM.findall(after)), dict(SUM.findall(before))
    count = float(sa.get("count", 0)) - float(sb.get("count", 0))
    total = float(sa.get("sum", 0)) - float(sb.get("sum", 0))
    return {"count": int(count), "mean_us": round(total / count * 1e6, 1) if count else None,
            "cumulative": delta}


def cell(d: str, rate: str, secs: str, streams: str) -> dict:
    dd = Path(d)
    target, root, worker, up = read(dd / "pids").split()
    bench_pid = read(dd / "bench.pid").strip()
    groups = {"upstream": {int(up)}}
    if bench_pid:
        groups["client"] = {int(bench_pid)}
    if worker != "0":
        groups["proxy"] = {int(worker), int(root)}
    period = 1.0 / float(rate)
    row: dict = {"target": target, "round": int(dd.name.rsplit("-r", 1)[1])}
    try:
        b = json.loads(read(dd / "bench.json").strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        b = {}
    lat = b.get("latency_ms") or {}
    row["lat"] = {k: lat.get(k) for k in ("p50", "p90", "p99", "p999", "max")}
    row["events"] = b.get("events")
    row["gaps"] = b.get("gaps")
    st = stat_figures(read(dd / "stat.csv"))
    if st:
        ev = int(streams) * float(rate) * int(secs)
        row["per_event"] = {
            "cpu_us": round(st.get("task-clock", 0) * 1e3 / ev, 2),
            "syscalls": round(st.get("sys_enter", 0) / ev, 2),
            "epoll_wait": round(st.get("sys_enter_epoll_wait", 0) / ev, 3),
            "ctxsw": round(st.get("context-switches", 0) / ev, 3),
            "recvfrom": round(st.get("sys_enter_recvfrom", 0) / ev, 2),
            "read": round(st.get("sys_enter_read", 0) / ev, 2),
            "sendto": round(st.get("sys_enter_sendto", 0) / ev, 2),
            "writev": round(st.get("sys_enter_writev", 0) / ev, 2),
            "write": round(st.get("sys_enter_write", 0) / ev, 2),
        }
        row["migrations"] = st.get("cpu-migrations")
    row["relay_delay"] = relay_delay(read(dd / "metrics_before.txt"), read(dd / "metrics_after.txt"))
    row["sched"] = sched_figures(read(dd / "timehist.txt"), groups, period, float(secs))
    return row


def fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


HEAD = ("target   rnd  p50    p99    p99.9  | proxy: done  busy  wakeups  sched | up done  client done "
        "| core0 others | cpu_us/ev  ctxsw/ev  epoll/ev")


def line(row: dict) -> str:
    s = row.get("sched") or {}
    p, u, c = s.get("proxy") or {}, s.get("upstream") or {}, s.get("client") or {}

    def q(g, k, which="p50"):
        return (g.get(k) or {}).get(which)


    pe = row.get("per_event") or {}
    lat = row["lat"]
    text = (f"{row['target']:<8} {row['round']:<3} {fmt(lat.get('p50'))}  {fmt(lat.get('p99'))}  "
            f"{fmt(lat.get('p999'))}  | {fmt(q(p, 'done_ms'))}/{fmt(q(p, 'done_ms', 'p90'))}  "
            f"{fmt(q(p, 'busy_ms'))}  {fmt(q(p, 'wakeups'), 0)}  {fmt(q(p, 'sched_ms'))}/{fmt(q(p, 'sched_ms', 'p90'))} "
            f"| {fmt(q(u, 'done_ms'))}/{fmt(q(u, 'done_ms', 'p90'))}  {fmt(q(c, 'done_ms'))}/{fmt(q(c, 'done_ms', 'p90'))} "
            f"| {fmt((s.get('others_core0_ms') or {}).get('p50'))}/{fmt((s.get('others_core0_ms') or {}).get('p90'))} "
            f"| {fmt(pe.get('cpu_us'))}  {fmt(pe.get('ctxsw'), 3)}  {fmt(pe.get('epoll_wait'), 3)}")
    rd = row.get("relay_delay")
    if rd and rd["count"]:
        cum = {float(k): v for k, v in rd["cumulative"].items()}
        parts = [f"≤{k * 1e6:g} µs {100 * v / rd['count']:.1f}%"
                 for k, v in sorted(cum.items()) if k <= 0.0025]
        text += f"\n    relay delay ({rd['count']} chunks, mean {rd['mean_us']} µs): " + ", ".join(parts)
        text += f"; > 1 ms: {rd['count'] - cum.get(0.001, 0)}"
    if s.get("others_top"):
        text += "\n    other work, longest runs: " + ", ".join(
            f"{k} {v['longest_ms']:.1f} ms ({v['cpu_ms_per_s']:.1f} ms CPU/s)"
            for k, v in s["others_top"].items())
    if s.get("proxy_threads"):
        text += "\n    proxy threads: " + ", ".join(
            f"{k}: {v['runs_per_s']:.0f} runs/s, {v['cpu_ms_per_s']:.2f} ms CPU/s"
            for k, v in s["proxy_threads"].items())
    return text


def summary(path: str) -> str:
    rows = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    out = ["", "medians over rounds (ms; done = from the upstream's tick to the end of the process's last run in that tick's burst, p50 over ticks; busy = its CPU time in the burst):"]
    for t in dict.fromkeys(r["target"] for r in rows):
        mine = [r for r in rows if r["target"] == t]

        def m(f):
            return fmt(med([f(r) for r in mine]))

        def sc(g, k, which="p50"):
            return lambda r: ((r.get("sched") or {}).get(g) or {}).get(k, {}).get(which)

        out.append(
            f"  {t:<8} p99 {m(lambda r: r['lat'].get('p99'))}  p99.9 {m(lambda r: r['lat'].get('p999'))}  "
            f"proxy done {m(sc('proxy', 'done_ms'))} (p90 {m(sc('proxy', 'done_ms', 'p90'))})  "
            f"proxy busy {m(sc('proxy', 'busy_ms'))}  proxy wakeups {m(sc('proxy', 'wakeups'))}  "
            f"upstream done {m(sc('upstream', 'done_ms'))} busy {m(sc('upstream', 'busy_ms'))}  "
            f"client done {m(sc('client', 'done_ms'))} (p90 {m(sc('client', 'done_ms', 'p90'))}) "
            f"busy {m(sc('client', 'busy_ms'))}  "
            f"cpu µs/event {m(lambda r: (r.get('per_event') or {}).get('cpu_us'))}")
    return "\n".join(out)


def main(argv):
    cmd = argv[0]
    if cmd == "header":
        print(HEAD)
    elif cmd == "cell":
        print(json.dumps(cell(*argv[1:5])))
    elif cmd == "line":
        for l in sys.stdin:
            if l.strip():
                print(line(json.loads(l)))
    elif cmd == "summary":
        print(summary(argv[1]))
    else:
        sys.exit(f"latency_tail.py: unknown subcommand {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
