#!/usr/bin/env python3
"""Helpers for benches/upgrade.sh and benches/soak.sh (standard library only).

    resilience.py free-port                      a free TCP port on 127.0.0.1
    resilience.py wait-listen FILE SECONDS       ADDR from a "listening on ADDR" line
    resilience.py wait-port HOST:PORT SECONDS    until a TCP connect succeeds
    resilience.py wait-file PATH SECONDS         until PATH exists
    resilience.py sample PID                     {"rss_kib", "fds", "sockets"} as JSON
    resilience.py sampler PID SECONDS OUT        a CSV line of the above every SECONDS
    resilience.py wait-fds PID MAX SECONDS       until PID has at most MAX descriptors
    resilience.py last-id HOST:PORT SECONDS      the id of the next event an origin sends
    resilience.py metric HOST:PORT NAME          a metric's sum from an admin listener
    resilience.py churn ...                      soak clients in waves (see churn())
    resilience.py upgrade-report ...             verdict of benches/upgrade.sh
    resilience.py soak-report ...                verdict of benches/soak.sh

Everything prints to stdout; failures go to stderr with exit code 1.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def die(msg: str) -> None:
    print(f"resilience.py: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------
# processes and ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listen(path: str, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith("listening on "):
                    return line[len("listening on "):].strip()
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    die(f"no 'listening on' line in {path} after {timeout} s")
    return ""


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def wait_port(addr: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(_split(addr), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    die(f"nothing accepts on {addr} after {timeout} s")


def wait_file(path: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path):
            return
        time.sleep(0.02)
    die(f"{path} did not appear within {timeout} s")


def sample(pid: int) -> dict:
    """Resident memory and descriptors of one process, from /proc."""
    rss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = sockets = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                sockets += 1
        except OSError:
            pass  # closed meanwhile
    heap = anon = 0
    try:
        region = ""
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split(" ", 1)[0]
                if "-" in first and not first.endswith(":"):
                    region = line.split()[-1] if len(line.split()) >= 6 else ""
                elif line.startswith("Rss:") and region == "[heap]":
                    heap += int(line.split()[1])
                elif line.startswith("Anonymous:"):
                    anon += int(line.split()[1])
    except OSError:
        pass
    return {"t": round(time.time(), 3), "rss_kib": rss, "fds": fds, "sockets": sockets,
            "heap_kib": heap, "anon_kib": anon}


def sampler(pid: int, every: float, out: str) -> None:
    with open(out, "a") as f:
        if f.tell() == 0:
            f.write("unix_s,rss_kib,fds,sockets\n")
        while True:
            try:
                s = sample(pid)
            except OSError:
                return  # the process is gone
            f.write(f"{s['t']},{s['rss_kib']},{s['fds']},{s['sockets']}\n")
            f.flush()
            time.sleep(every)


def wait_fds(pid: int, most: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if sample(pid)["fds"] <= most:
            return
        time.sleep(0.2)
    # Not an error here: the caller samples and judges.


def metric(addr: str, name: str) -> float:
    """The sum of a metric's samples on an admin listener's /metrics."""
    with socket.create_connection(_split(addr), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    total = 0.0
    for line in got.decode(errors="replace").splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def last_id(addr: str, timeout: float) -> int:
    """The id of the next event the origin publishes (GET /?count=1)."""
    with socket.create_connection(_split(addr), timeout=timeout) as s:
        s.sendall(b"GET /?count=1 HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        got = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
            for line in got.split(b"\n"):
                if line.startswith(b"id: "):
                    return int(line[4:].strip())
    die(f"no event id from {addr}")
    return 0


# ---------------------------------------------------------------------------
# soak clients


def churn(argv: list[str]) -> None:
    """churn BIN URL OUTDIR SLOTS PER_SLOT SECONDS STAGGER MIN_LEN MAX_LEN RAMP SEED

    SLOTS client slots, each holding PER_SLOT streams: a slot runs one
    `ssegate bench --reconnect` of a random length in [MIN_LEN, MAX_LEN]
    seconds after another until SECONDS have passed since the start; slot i
    starts i * STAGGER seconds in. So about SLOTS * PER_SLOT streams are open
    at any moment while some slots are closing theirs and opening new ones.
    A run that would end within MIN_LEN / 2 of the end is stretched to the
    end instead. Each run's JSON goes to OUTDIR/slot<i>-<n>.json.
    SIGTERM or SIGINT stops every bench run by pid and exits.
    """
    (binary, url, outdir, slots, per_slot, seconds, stagger, min_len, max_len, ramp,
     seed) = argv
    slots, per_slot, ramp = int(slots), int(per_slot), int(ramp)
    seconds, stagger = float(seconds), float(stagger)
    min_len, max_len = int(min_len), int(max_len)
    rng = random.Random(int(seed))
    start = time.monotonic()
    stop_at = start + seconds
    live: dict[int, tuple[subprocess.Popen, object, object]] = {}
    runs = [0] * slots
    next_start = [start + i * stagger for i in range(slots)]

    def stop(*_):
        for proc, _out, _err in live.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 5
        for proc, _out, _err in live.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        sys.exit(130)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log = open(os.path.join(outdir, "churn.log"), "a")
    while True:
        now = time.monotonic()
        for i in range(slots):
            proc = live.get(i, (None,))[0]
            if proc is not None:
                if proc.poll() is None:
                    continue
                _p, out, err = live.pop(i)
                out.close()
                err.close()
                print(f"{time.time():.3f} slot {i} run {runs[i]} exited {proc.returncode}",
                      file=log, flush=True)
                runs[i] += 1
                next_start[i] = now
            if now < next_start[i] or now >= stop_at:
                continue
            left = stop_at - now
            length = rng.randint(min_len, max_len)
            if left - length < min_len / 2:
                length = left
            length = max(int(round(length)), ramp + 1)
            name = os.path.join(outdir, f"slot{i}-{runs[i]}")
            out = open(name + ".json", "w")
            err = open(name + ".err", "w")
            cmd = [binary, "bench", "--reconnect", "--json", "--url", url,
                   "--streams", str(per_slot), "--ramp", f"{ramp}s", "--duration", f"{length}s"]
            live[i] = (subprocess.Popen(cmd, stdout=out, stderr=err), out, err)
            print(f"{time.time():.3f} slot {i} run {runs[i]} starts: {length} s", file=log,
                  flush=True)
        if not live and now >= stop_at:
            return
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# reports


def _load(path: str) -> dict | None:
    try:
        text = Path(path).read_text().strip()
        return json.loads(text) if text else None
    except (OSError, json.JSONDecodeError):
        return None


def _ms(v) -> str:
    return "—" if v is None else f"{v:,.0f} ms"


def upgrade_report(argv: list[str]) -> None:
    """upgrade-report BENCH_JSON STREAMS FACTS_JSON: prints the verdict, exit 1 on failure."""
    bench_path, streams, facts_path = argv
    streams = int(streams)
    b = _load(bench_path)
    facts = _load(facts_path) or {}
    if b is None:
        die(f"no JSON from the bench in {bench_path}")
    e = b["errors"]
    lost = streams - b["streams_open_at_end"]
    rows = [
        ("streams requested / opened / open at the end", f"{streams:,} / {b['streams_opened']:,} / {b['streams_open_at_end']:,}"),
        ("failed first opens", f"{b['streams_failed']:,}"),
        ("reconnections", f"{b['reconnections']:,}"),
        ("failed reconnection attempts", f"{b['reconnect_failures']:,}"),
        ("gaps / duplicates", f"{b['gaps']:,} / {b['duplicates']:,}"),
        ("longest without a connection", _ms(b["max_disconnected_ms"])),
        ("longest silence on an open connection", _ms(b["max_silence_ms"])),
        ("events delivered", f"{b['events']:,} ({b['events_per_s']:,.0f}/s over {b['duration_s']} s)"),
        ("errors (every ended connection counts)",
         ", ".join(f"{k} {v:,}" for k, v in e.items() if v) or "none"),
        ("latency p50 / p99 / max",
         "—" if not b.get("latency_ms") else
         f"{b['latency_ms']['p50']} / {b['latency_ms']['p99']} / {b['latency_ms']['max']} ms"),
    ]
    for key, label in [
        ("old_ends", "old process: its streams' ends (access log)"),
        ("new_ends", "new process: its streams' ends (access log)"),
        ("old_exit", "old process exited"),
    ]:
        if key in facts:
            rows.append((label, str(facts[key])))
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    problems = []
    if b["gaps"] or b["duplicates"]:
        problems.append(f"{b['gaps']} gaps and {b['duplicates']} duplicates")
    if b["streams_opened"] != streams or b["streams_failed"]:
        problems.append(f"{streams - b['streams_opened']} streams never opened")
    if lost:
        problems.append(f"{lost} streams not open when the run ended")
    if b["reconnections"] < streams:
        problems.append(f"only {b['reconnections']} reconnections for {streams} streams")
    if facts.get("old_exit_code") not in (None, 0):
        problems.append(f"the old process exited with {facts['old_exit_code']}")
    if problems:
        print("FAIL: " + "; ".join(problems))
        sys.exit(1)
    print("PASS: every stream moved to the new process, ids continued without gap or duplicate")


def soak_report(argv: list[str]) -> None:
    """soak-report RUN_DIR STREAMS RSS_MARGIN_KIB FD_MARGIN: prints the verdict, exit 1 on a leak."""
    run, streams, rss_margin, fd_margin = argv
    rss_margin, fd_margin = int(rss_margin), int(fd_margin)
    samples = {k: _load(os.path.join(run, f"sample-{k}.json"))
               for k in ("baseline", "ramped", "middle", "end")}
    benches = []
    for p in sorted(Path(run).glob("clients/slot*.json")):
        j = _load(str(p))
        if j is None:
            benches.append({"file": p.name, "missing": True})
        else:
            j["file"] = p.name
            benches.append(j)
    ok_runs = [b for b in benches if not b.get("missing")]
    tot = lambda k: sum(b[k] for b in ok_runs)
    print(f"  client runs: {len(benches)} ({len(benches) - len(ok_runs)} without a report)")
    print(f"  streams opened {tot('streams_opened'):,}, failed first opens {tot('streams_failed'):,}, "
          f"open at their run's end {tot('streams_open_at_end'):,}")
    print(f"  reconnections {tot('reconnections'):,}, failed reconnection attempts "
          f"{tot('reconnect_failures'):,}, longest without a connection "
          f"{_ms(max((b['max_disconnected_ms'] for b in ok_runs), default=None))}")
    print(f"  events {tot('events'):,}, gaps {tot('gaps'):,}, duplicates {tot('duplicates'):,}")
    errs: dict[str, int] = {}
    for b in ok_runs:
        for k, v in b["errors"].items():
            errs[k] = errs.get(k, 0) + v
    print("  errors (every ended connection counts): "
          + (", ".join(f"{k} {v:,}" for k, v in errs.items() if v) or "none"))
    print()
    mib = lambda kib: f"{kib / 1024:,.1f} MiB"
    print("  | sample | ssegate RSS | of which [heap] | anonymous | fds | sockets |")
    print("  |---|---:|---:|---:|---:|---:|")
    for k, s in samples.items():
        if s:
            print(f"  | {k} | {mib(s['rss_kib'])} | {mib(s.get('heap_kib', 0))} | "
                  f"{mib(s.get('anon_kib', 0))} | {s['fds']:,} | {s['sockets']:,} |")
        else:
            print(f"  | {k} | — | — | — | — | — |")
    try:
        rows = Path(run, "samples.csv").read_text().splitlines()[1:]
        peak = max(int(r.split(",")[1]) for r in rows)
        most = max(int(r.split(",")[3]) for r in rows)
        print(f"  every 5 s (samples.csv): peak RSS {mib(peak)}, most sockets {most:,}")
    except (OSError, ValueError, IndexError):
        pass
    print()
    problems = []
    base, end = samples["baseline"], samples["end"]
    if not base or not end:
        die("missing baseline or end sample")
    dfd = end["fds"] - base["fds"]
    drss = end["rss_kib"] - base["rss_kib"]
    print(f"  end − baseline: fds {dfd:+d} (allowed ±{fd_margin}), "
          f"RSS {drss / 1024:+,.1f} MiB (allowed +{rss_margin / 1024:,.1f} MiB)")
    if abs(dfd) > fd_margin:
        problems.append(f"descriptors: {dfd:+d} after every client left")
    if drss > rss_margin:
        problems.append(f"memory: RSS {drss / 1024:+.1f} MiB after every client left")
    open_end = _load(os.path.join(run, "streams-open-end.json"))
    if open_end is not None:
        print(f"  ssegate_streams_open at the end: {open_end:g}")
        if open_end != 0:
            problems.append(f"ssegate still counts {open_end:g} open streams")
    if any(b.get("missing") for b in benches):
        problems.append("a client run left no report")
    if problems:
        print("FAIL (leak): " + "; ".join(problems))
        sys.exit(1)
    print("PASS: descriptors back to baseline, no stream left open, RSS within the margin")


def main(argv: list[str]) -> None:
    if not argv:
        die(__doc__ or "")
    cmd, args = argv[0], argv[1:]
    if cmd == "free-port":
        print(free_port())
    elif cmd == "wait-listen":
        print(wait_listen(args[0], float(args[1])))
    elif cmd == "wait-port":
        wait_port(args[0], float(args[1]))
    elif cmd == "wait-file":
        wait_file(args[0], float(args[1]))
    elif cmd == "sample":
        print(json.dumps(sample(int(args[0]))))
    elif cmd == "sampler":
        sampler(int(args[0]), float(args[1]), args[2])
    elif cmd == "wait-fds":
        wait_fds(int(args[0]), int(args[1]), float(args[2]))
    elif cmd == "metric":
        print(f"{metric(args[0], args[1]):g}")
    elif cmd == "last-id":
        print(last_id(args[0], float(args[1])))
    elif cmd == "churn":
        churn(args)
    elif cmd == "upgrade-report":
        upgrade_report(args)
    elif cmd == "soak-report":
        soak_report(args)
    else:
        die(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
