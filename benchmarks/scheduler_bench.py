"""The daemon under a saturated budget: rate, CPU per poll, memory, fairness, startup; and
detection / delivery latency with runs that change.

Every party runs in its own process: the simulator (``common.py sim``: the stock simulator
plus a middleware that logs each GetRunStatus arrival), the daemon (``omics-watcher run -c
FILE`` after ``omics-watcher track -c FILE -`` fed the run UUIDs on stdin), and the floor
(``common.py floor``). The benchmark process itself only sleeps and reads counters.

``--mode steady`` (default), with ``--runs N`` runs that never finish and
``interval_seconds = 1`` so that the 20/s budget, not the interval, sets the pace:

- startup: daemon process spawned → first GetRunStatus seen by the simulator; RSS then;
- warm-up: until every run has been polled once (the first cycle, in which each poll is a
  first observation and records an event), at most ``--max-warmup`` seconds; if the cap
  cuts the first cycle short the window is marked ``steady: false``;
- window (``--window`` s, or with ``--full-cycle`` at least one whole cycle): sustained
  GetRunStatus req/s from the simulator's per-second histogram (whole seconds inside the
  window), the most requests in any 1 s window over the daemon's whole life (the
  simulator's ``max_window_arrivals``, cross-checked against the arrival log), the daemon's
  CPU (psutil ``cpu_times`` user+system delta) divided by the polls that arrived in the
  window, RSS and peak RSS (VmHWM) at the end;
- fairness: from the arrival log, every gap between two consecutive polls of the same run
  whose second poll falls in the window. ``cycle`` = runs / sustained rate, the time one
  round robin over all runs takes at the measured rate. A fair scheduler has every gap ≈
  cycle; the target is max gap ≤ 1.2 × cycle. Coverage says how many runs had a gap in the
  window (100% needs a window of one cycle after the first cycle: ``--full-cycle``);
- floors: after the daemon stopped, two bare aiohttp loops, each in its own process, paced at
  the daemon's sustained rate against the same simulator, their CPU per request (psutil, the
  same way): ``prepared`` is issue 12's floor (one body and headers signed once before the
  loop; POST, read the answer's bytes), ``signed`` ours (per request a JSON body, headers and
  a TC3 signature; POST, ``json.loads``). The report gives the daemon's CPU per poll divided by
  each (issue 12's aim: ≤ 1.2× the prepared floor in steady state, 300 never-finishing runs).

``--baseline-code DIR --repeat N``: the steady measurement N times for the daemon from an
older source tree (``git archive COMMIT watcher | tar -x -C DIR``) and N times for this one,
alternating (old, new, old, new, ...), each with its floors in the same run; the medians and
every run's load average are reported. The machine's load changes under a single run, so a
before/after claim needs this rather than two separate runs.

``--mode latency``: ``--runs`` (default 200) finishing and flapping runs, ``interval_seconds
= 10`` (so 200 runs need exactly the 20/s budget), a webhook notifier posting to a receiver
in this process. Detection latency = simulator transition → event recorded (``events.
recorded_at`` in the state file), split into waiting for the next poll (transition →
arrival of the poll that saw it) and our processing (that arrival → recorded); delivery
latency = transition → webhook received. First observations (``previous_status: null``)
are left out: they measure when the daemon started, not how fast it notices.

Usage::

    .venv/bin/python benchmarks/scheduler_bench.py --runs 10000 [--window 60] [--full-cycle]
        [--max-warmup 600] [--floor-seconds 30] [--no-floor] [--profile S] [--json]
    .venv/bin/python benchmarks/scheduler_bench.py --runs 300 --window 40 --floor-seconds 20 \
        --baseline-code /tmp/old --repeat 3   # CPU per poll, old vs new, beside both floors
    .venv/bin/python benchmarks/scheduler_bench.py --mode latency [--runs 200]
        [--interval 10] [--duration 180] [--json]
"""

from __future__ import annotations

import argparse
import base64
import bisect
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
from common import (
    FLOOR_KINDS,
    REPO,
    Daemon,
    Receiver,
    Sim,
    daemon,
    machine_info,
    percentile,
    run_floor,
    simulator,
    sliding_max,
    vm_hwm_mb,
)

ACTION = "GetRunStatus"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"scheduler-bench-secret!!").decode()


def say(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _alive(d: Daemon) -> None:
    assert d.proc is not None
    if d.proc.poll() is not None:
        raise RuntimeError(f"the daemon exited with {d.proc.returncode}:\n{d.log_tail()}")


def _sleep_watching(d: Daemon, seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        _alive(d)
        time.sleep(min(1.0, left))


def _first_arrival(sim: Sim, d: Daemon, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _alive(d)
        times, _ = sim.arrivals(since=d.started_at)
        if times:
            return times[0]
        time.sleep(0.05)
    raise RuntimeError(f"no GetRunStatus within {timeout} s of starting:\n{d.log_tail()}")


def _histogram_rate(stats: dict[str, Any], t0: float, t1: float) -> tuple[float, list[list[int]]]:
    """Mean arrivals per whole second inside [t0, t1] and the rows of the daemon's life."""
    started = stats["started_at"]
    rows = stats["histogram"].get(ACTION, [])
    by_second = {row[0]: row for row in rows}
    first, last = int(t0 - started) + 1, int(t1 - started) - 1  # whole seconds only
    counts = [by_second.get(s, [s, 0, 0])[1] for s in range(first, last + 1)]
    return (sum(counts) / len(counts) if counts else 0.0), rows


def _gaps(
    times: list[float], runs: list[int], t0: float, t1: float
) -> tuple[list[float], int, int]:
    """Gaps between consecutive polls of one run whose second poll is in [t0, t1];
    also how many runs had such a gap and the most polls any run had in the window."""
    last: dict[int, float] = {}
    gaps: list[float] = []
    covered: set[int] = set()
    in_window: defaultdict[int, int] = defaultdict(int)
    for t, run in zip(times, runs, strict=True):
        if run < 0:
            continue
        if t0 <= t <= t1:
            in_window[run] += 1
            if run in last:
                gaps.append(t - last[run])
                covered.add(run)
        last[run] = t
    return gaps, len(covered), max(in_window.values(), default=0)


def _events_between(state: Path, t0: float, t1: float) -> int:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE recorded_at BETWEEN ? AND ?", (t0, t1)
        ).fetchone()
    return int(row[0])


def steady(args: argparse.Namespace) -> dict[str, Any]:
    n, rate = args.runs, args.rate
    sim_config = {
        "runs": n,
        "seed": args.seed,
        "kinds": {"forever": 1.0},
        "rate_limit": args.sim_limit,
        "histogram_seconds": 7200,
    }
    result: dict[str, Any] = {
        "mode": "steady",
        "runs": n,
        "rate_per_second": rate,
        "interval_seconds": args.interval,
        "simulator_limit": args.sim_limit,
        "machine": machine_info(),
    }
    say(f"# steady: {n} never-finishing runs, budget {rate}/s, simulator limit {args.sim_limit}/s")
    with simulator(sim_config) as sim:
        with daemon(sim, rate=rate, interval=args.interval, source=args.code) as d:
            result["track_seconds"] = d.track(sim.runs)
            say(f"# tracked {n} runs with `track -` in {result['track_seconds']:.2f} s")
            d.start()
            assert d.proc is not None
            proc = psutil.Process(d.proc.pid)
            first = _first_arrival(sim, d, timeout=120)
            result["startup_seconds"] = first - d.started_at
            result["rss_mb_at_first_poll"] = proc.memory_info().rss / 2**20
            say(f"# first poll {result['startup_seconds']:.2f} s after spawn")

            # Warm-up: the first cycle (every poll a first observation), capped.
            warm_end = time.monotonic() + args.max_warmup
            seen: set[int] = set()
            since = d.started_at
            while time.monotonic() < warm_end:
                _sleep_watching(d, min(5.0, max(0.0, warm_end - time.monotonic())))
                times, idx = sim.arrivals(since=since)
                if times:
                    since = times[-1]
                    seen.update(i for i in idx if i >= 0)
                if len(seen) >= n:
                    break
            first_cycle_done = len(seen) >= n
            result["first_cycle_seconds"] = time.time() - d.started_at if first_cycle_done else None
            result["steady"] = first_cycle_done
            if first_cycle_done:
                _sleep_watching(d, args.settle)  # first-observation deliveries trail a little
            say(
                "# warm-up done: "
                + (
                    f"first cycle complete after {result['first_cycle_seconds']:.0f} s"
                    if first_cycle_done
                    else f"first cycle NOT complete ({len(seen)}/{n} runs polled): "
                    "the window measures first observations"
                )
            )

            window = args.window
            if args.full_cycle and first_cycle_done:
                window = max(window, 1.05 * n / rate + 5)
            cpu0, ctx0, t0 = proc.cpu_times(), proc.num_ctx_switches(), time.time()
            say(f"# measuring for {window:.0f} s")
            _sleep_watching(d, window)
            cpu1, ctx1, t1 = proc.cpu_times(), proc.num_ctx_switches(), time.time()
            result["rss_mb"] = proc.memory_info().rss / 2**20
            result["rss_peak_mb"] = vm_hwm_mb(proc.pid)
            result["daemon_threads"] = proc.num_threads()
            stats = sim.stats()
            times, idx = sim.arrivals(since=d.started_at)
            if args.profile > 0:
                say(f"# profiling the daemon with py-spy for {args.profile:.0f} s")
                result["profile"] = profile_daemon(sim, d, args.profile, gil=not args.profile_all)
                if args.profile_out and (d.workdir / "profile.txt").exists():
                    shutil.copy(d.workdir / "profile.txt", args.profile_out)
            d.stop()
            result["exit_code"], result["exit_seconds"] = d.exit_code, d.exit_seconds
            result["events_in_window"] = _events_between(d.state_path, t0, t1)

        polls = bisect.bisect_right(times, t1) - bisect.bisect_left(times, t0)
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        hist_rate, rows = _histogram_rate(stats, t0, t1)
        gaps, covered, most = _gaps(times, idx, t0, t1)
        sustained = hist_rate
        cycle = n / sustained if sustained else None
        result.update(
            window_seconds=t1 - t0,
            polls_in_window=polls,
            rate_sustained=sustained,
            rate_from_log=polls / (t1 - t0),
            max_in_any_1s=stats["max_window_arrivals"][ACTION],
            max_in_any_1s_log=sliding_max(times),
            throttled=stats["throttled"][ACTION],
            signature_failures=stats["signature_failures"],
            auth_failures=stats["auth_failures"],
            api_errors=stats["errors"],
            other_actions={a: c for a, c in stats["requests"].items() if a != ACTION and c},
            cpu_seconds=cpu,
            cpu_ms_per_poll=1000 * cpu / max(polls, 1),
            user_ms_per_poll=1000 * (cpu1.user - cpu0.user) / max(polls, 1),
            system_ms_per_poll=1000 * (cpu1.system - cpu0.system) / max(polls, 1),
            wakeups_per_poll=(ctx1.voluntary - ctx0.voluntary) / max(polls, 1),
            cpu_percent=100 * cpu / (t1 - t0),
            cycle_seconds=cycle,
            gaps_measured=len(gaps),
            gap_coverage=covered / n,
            most_polls_of_one_run_in_window=most,
            gap_mean=sum(gaps) / len(gaps) if gaps else None,
            gap_min=min(gaps) if gaps else None,
            gap_p50=percentile(gaps, 50),
            gap_p99=percentile(gaps, 99),
            gap_max=max(gaps) if gaps else None,
            gap_max_over_cycle=(max(gaps) / cycle) if gaps and cycle else None,
            gap_min_over_cycle=(min(gaps) / cycle) if gaps and cycle else None,
            histogram=[
                [round(stats["started_at"] + r[0] - d.started_at), r[1], r[2]] for r in rows
            ],
            window_offsets=[t0 - d.started_at, t1 - d.started_at],
            gaps_over_cycle=[round(g / cycle, 4) for g in gaps] if cycle else [],
        )

        if not args.no_floor:
            floor_rate = min(rate, sustained) if sustained else rate
            result["floors"] = {}
            for kind in FLOOR_KINDS:
                say(f"# floor ({kind}): bare paced aiohttp loop at {floor_rate:.2f}/s")
                floor = run_floor(
                    sim, rate=floor_rate, warmup=3.0, window=args.floor_seconds, kind=kind
                )
                floor["ratio"] = result["cpu_ms_per_poll"] / max(floor["cpu_ms_per_request"], 1e-9)
                result["floors"][kind] = floor
            result["floor"] = result["floors"]["signed"]
            result["cost_ratio"] = result["floor"]["ratio"]
        result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


# -- profile ------------------------------------------------------------------------------------

# Where a sample's time goes: the first category (in this order) with a frame in its stack.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("RunMetadata model (pydantic)", ("watcher/omics/models.py", "pydantic/")),
    ("TC3 signing", ("watcher/omics/signing.py",)),
    ("SQLite store", ("watcher/store/",)),
    ("recording / delivery", ("watcher/recorder.py", "watcher/delivery/", "watcher/notifiers/")),
    ("pacing limiter", ("watcher/omics/limiter.py",)),
    ("answer decoding (json, error mapping)", ("interpret_answer", "json/")),
    ("aiohttp client", ("aiohttp/",)),
    ("client glue (OmicsClient)", ("watcher/omics/client.py",)),
    ("scheduler", ("watcher/polling/",)),
    ("logging (structlog)", ("structlog/", "watcher/service/logs.py")),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
)


def _py_spy() -> str | None:
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def profile_daemon(sim: Sim, d: Daemon, seconds: float, *, gil: bool = True) -> dict[str, Any]:
    """Sample the running daemon with py-spy at 1000 Hz and attribute the samples.

    ``gil``: only the thread holding the GIL (Python code); otherwise every thread that is
    not idle, so that C work done without the GIL (SQLite, the selector's syscalls) shows too,
    under the Python frame that called it.
    """
    exe = _py_spy()
    if exe is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    assert d.proc is not None
    out = d.workdir / "profile.txt"
    t0 = time.time()
    done = subprocess.run(
        [
            exe,
            "record",
            "-p",
            str(d.proc.pid),
            "-d",
            str(int(seconds)),
            "-r",
            "1000",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
            *(["--gil"] if gil else []),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    t1 = time.time()
    if done.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed: {done.stderr.strip()[-300:]}"}
    times, _ = sim.arrivals(since=t0)
    polls = sum(1 for t in times if t <= t1)
    categories: defaultdict[str, int] = defaultdict(int)
    own: defaultdict[str, int] = defaultdict(int)
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for name, needles in CATEGORIES:
            if any(needle in frame for frame in frames for needle in needles):
                categories[name] += n
                break
        else:
            categories["other"] += n
        # Our own functions, inclusive: each one once per sample.
        for frame in set(frames):
            if "(watcher/" in frame and "watcher/cli.py" not in frame:
                own[frame.rsplit(":", 1)[0] + ")"] += n
    return {
        "seconds": t1 - t0,
        "polls": polls,
        "samples": total,
        "note": (
            "py-spy --gil samples at 1000 Hz: time the daemon held the GIL (Python code), "
            "not syscalls; shares are reliable, absolute µs only roughly"
            if gil
            else "py-spy samples at 1000 Hz of every non-idle thread (C work under its caller)"
        ),
        "categories": sorted(categories.items(), key=lambda kv: -kv[1]),
        "own_functions": sorted(own.items(), key=lambda kv: -kv[1])[:25],
    }


# -- latency ----------------------------------------------------------------------------------


def latency(args: argparse.Namespace) -> dict[str, Any]:
    n = args.runs
    sim_config = {
        "runs": n,
        "seed": args.seed,
        "kinds": {"finishing": 0.5, "flapping": 0.5},
        "queued_seconds": [5.0, 40.0],
        "initializing_seconds": [5.0, 40.0],
        "running_seconds": [30.0, 150.0],
        "flap_period_seconds": 20.0,
        "rate_limit": args.sim_limit,
    }
    result: dict[str, Any] = {
        "mode": "latency",
        "runs": n,
        "rate_per_second": args.rate,
        "interval_seconds": args.interval,
        "duration_seconds": args.duration,
        "machine": machine_info(),
    }
    say(f"# latency: {n} finishing/flapping runs, interval {args.interval} s, {args.duration} s")
    with simulator(sim_config) as sim, Receiver() as receiver:
        hook = {"name": "bench", "type": "webhook", "url": receiver.url, "secret": WEBHOOK_SECRET}
        with daemon(sim, rate=args.rate, interval=args.interval, notifiers=[hook]) as d:
            d.track(sim.runs)
            d.start()
            _first_arrival(sim, d, timeout=60)
            _sleep_watching(d, args.duration)
            time.sleep(1.0)  # let the last deliveries land
            d.stop()
            with sqlite3.connect(f"file:{d.state_path}?mode=ro", uri=True) as conn:
                events = conn.execute(
                    "SELECT id, run_uuid, recorded_at, body FROM events "
                    "WHERE type = 'run.status_changed' ORDER BY seq"
                ).fetchall()
            started = d.started_at
        timeline = sim.timeline()
        times, idx = sim.arrivals(since=started)
        stats = sim.stats()

    index = {u: i for i, u in enumerate(sim.runs)}
    polls: defaultdict[int, list[float]] = defaultdict(list)
    for t, i in zip(times, idx, strict=True):
        polls[i].append(t)
    changes: defaultdict[str, list[tuple[float, str]]] = defaultdict(list)
    for row in timeline:
        if row["from"] is not None:
            changes[row["run_uuid"]].append((row["at"], row["to"]))

    detect, wait, process, deliver, after_record = [], [], [], [], []
    process_plain, process_enriched = [], []
    matched: set[tuple[str, float]] = set()
    for event_id, run_uuid, recorded_at, body in events:
        data = json.loads(body)["data"]
        if data.get("previous_status") is None:
            continue
        candidates = [
            at for at, to in changes[run_uuid] if to == data["status"] and at <= recorded_at
        ]
        if not candidates:
            continue
        at = candidates[-1]
        matched.add((run_uuid, at))
        detect.append(recorded_at - at)
        run_polls = polls[index[run_uuid]]
        k = bisect.bisect_left(run_polls, at)
        if k < len(run_polls) and run_polls[k] <= recorded_at:
            wait.append(run_polls[k] - at)
            process.append(recorded_at - run_polls[k])
            # A failing transition is enriched (GetRunCalls, GetRunJobLog through their own
            # 5/s limiter) before it is recorded: the event then carries data.failure.
            enriched = process_enriched if data.get("failure") else process_plain
            enriched.append(recorded_at - run_polls[k])
        got = receiver.received.get(event_id)
        if got is not None:
            deliver.append(got[0] - at)
            after_record.append(got[0] - recorded_at)

    # Transitions the daemon could have seen (after its first poll of the run, before the
    # end) but never reported: the run changed back before its next poll.
    end = max(times) if times else started
    possible = 0
    for run_uuid, rows in changes.items():
        run_polls = polls[index[run_uuid]]
        if not run_polls:
            continue
        possible += sum(1 for at, _ in rows if run_polls[0] < at < run_polls[-1] and at < end)
    missed = possible - len({m for m in matched if m[0] in changes})

    def summary(values: list[float]) -> dict[str, Any]:
        return {
            "n": len(values),
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "max": max(values) if values else None,
        }

    per_run_cycle = max(n / args.rate, args.interval)
    result.update(
        events=len(events),
        detection=summary(detect),
        detection_wait_for_poll=summary(wait),
        detection_processing=summary(process),
        detection_processing_plain=summary(process_plain),
        detection_processing_enriched=summary(process_enriched),
        delivery=summary(deliver),
        record_to_delivery=summary(after_record),
        undelivered=sum(1 for e in events if e[0] not in receiver.received),
        transitions_reverted_before_next_poll=max(0, missed),
        expected_cycle_seconds=per_run_cycle,
        max_in_any_1s=stats["max_window_arrivals"][ACTION],
        throttled=stats["throttled"][ACTION],
        signature_failures=stats["signature_failures"],
        detection_samples=[round(x, 4) for x in detect],
        delivery_samples=[round(x, 4) for x in deliver],
        processing_samples=[round(x, 5) for x in process],
        record_to_delivery_samples=[round(x, 5) for x in after_record],
    )
    return result


# -- output -----------------------------------------------------------------------------------


def _f(value: Any, fmt: str = ".2f", unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:{fmt}}{unit}"


def steady_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, verdict) rows."""

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("ok" if ok else "MISSED")

    rows = [
        ("tracked runs", f"{r['runs']:,}", "", ""),
        ("`track -` of all runs", _f(r["track_seconds"], ".2f", " s"), "seconds", ""),
        (
            "startup (spawn → first GetRunStatus)",
            _f(r["startup_seconds"], ".2f", " s"),
            "≤ 3 s",
            verdict(r["startup_seconds"] <= 3.0),
        ),
        (
            "window",
            f"{r['window_seconds']:.0f} s"
            + ("" if r["steady"] else " (first cycle: every poll a first observation)"),
            "",
            "",
        ),
        (
            "sustained GetRunStatus rate",
            _f(r["rate_sustained"], ".2f", " req/s"),
            "≥ 19.4",
            verdict(r["rate_sustained"] >= 19.4),
        ),
        (
            "max requests in any 1 s window",
            f"{r['max_in_any_1s']} (log: {r['max_in_any_1s_log']})",
            "≤ 20",
            verdict(r["max_in_any_1s"] <= 20),
        ),
        (
            "throttled / signature failures",
            f"{r['throttled']} / {r['signature_failures']}",
            "0 / 0",
            verdict(r["throttled"] == 0 and r["signature_failures"] == 0),
        ),
        (
            "daemon CPU per poll",
            _f(r["cpu_ms_per_poll"], ".3f", " ms") + f" ({r['cpu_percent']:.1f}% of a core)",
            "≤ 1 ms",
            verdict(r["cpu_ms_per_poll"] <= 1.0),
        ),
    ]
    for kind, floor in r.get("floors", {}).items():
        rows.append(
            (
                f"floor CPU per request ({kind})",
                _f(floor["cpu_ms_per_request"], ".3f", " ms") + f" at {floor['rate']:.2f}/s",
                "",
                "",
            )
        )
        aim = kind == "prepared"
        rows.append(
            (
                f"ratio daemon / {kind} floor",
                _f(floor["ratio"], ".2f", "×"),
                "≤ 1.2" if aim else "",
                verdict(floor["ratio"] <= 1.2) if aim else "",
            )
        )
    rows += [
        (
            "RSS at end of window (peak)",
            f"{r['rss_mb']:.1f} MB ({_f(r['rss_peak_mb'], '.1f')} MB)",
            "≤ 150 MB",
            verdict(max(r["rss_mb"], r["rss_peak_mb"] or 0) <= 150),
        ),
        ("events recorded in window", str(r["events_in_window"]), "", ""),
        ("mean cycle (runs / rate)", _f(r["cycle_seconds"], ".1f", " s"), "", ""),
        (
            "poll gaps measured (runs covered)",
            f"{r['gaps_measured']:,} ({100 * r['gap_coverage']:.0f}%)",
            "",
            "",
        ),
        (
            "poll gap min / p50 / p99 / max",
            " / ".join(_f(r[k], ".1f") for k in ("gap_min", "gap_p50", "gap_p99", "gap_max"))
            + " s",
            "",
            "",
        ),
        (
            "max gap / mean cycle",
            _f(r["gap_max_over_cycle"], ".3f"),
            "≤ 1.2",
            verdict(None if r["gap_max_over_cycle"] is None else r["gap_max_over_cycle"] <= 1.2),
        ),
        (
            "clean stop (exit code, seconds)",
            f"{r['exit_code']}, {_f(r['exit_seconds'], '.1f')} s",
            "0",
            verdict(r["exit_code"] == 0),
        ),
    ]
    return rows


def latency_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    def s(key: str, ms: bool = False) -> str:
        v = r[key]
        if ms:
            p50 = None if v["p50"] is None else 1000 * v["p50"]
            p99 = None if v["p99"] is None else 1000 * v["p99"]
            return f"p50 {_f(p50, '.1f')} ms, p99 {_f(p99, '.1f')} ms (n={v['n']})"
        return f"p50 {_f(v['p50'], '.2f')} s, p99 {_f(v['p99'], '.2f')} s (n={v['n']})"

    return [
        ("runs / interval", f"{r['runs']} / {r['interval_seconds']} s", "", ""),
        ("expected per-run cycle", _f(r["expected_cycle_seconds"], ".1f", " s"), "", ""),
        ("detection (transition → recorded)", s("detection"), "", ""),
        ("… waiting for the next poll", s("detection_wait_for_poll"), "", ""),
        ("… our processing (poll → recorded)", s("detection_processing", True), "", ""),
        ("   … plain transitions", s("detection_processing_plain", True), "", ""),
        ("   … failures (enriched first)", s("detection_processing_enriched", True), "", ""),
        ("delivery (transition → webhook received)", s("delivery"), "", ""),
        ("… recorded → webhook received", s("record_to_delivery", True), "", ""),
        ("events / undelivered", f"{r['events']} / {r['undelivered']}", "", ""),
        (
            "transitions reverted before the next poll",
            str(r["transitions_reverted_before_next_poll"]),
            "",
            "",
        ),
        ("max in any 1 s / throttled", f"{r['max_in_any_1s']} / {r['throttled']}", "≤ 20 / 0", ""),
    ]


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Steady runs alternating old code and new (``--baseline-code``), floors in each run."""
    codes = [("old", args.baseline_code), ("new", args.code)]  # code None: this tree
    runs: list[dict[str, Any]] = []
    for i in range(args.repeat):
        for label, source in codes:
            say(f"# compare: round {i + 1}/{args.repeat}, {label} code")
            args.code = source
            r = steady(args)
            r["code"] = label
            runs.append(r)

    def med(label: str, get: Any) -> float | None:
        values = [get(r) for r in runs if r["code"] == label]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    summary = {}
    for label, _ in codes:
        summary[label] = {
            "cpu_ms_per_poll": med(label, lambda r: r["cpu_ms_per_poll"]),
            "rate_sustained": med(label, lambda r: r["rate_sustained"]),
            **{
                f"floor_{kind}_ms": med(
                    label, lambda r, k=kind: r["floors"][k]["cpu_ms_per_request"]
                )
                for kind in FLOOR_KINDS
            },
            **{
                f"ratio_{kind}": med(label, lambda r, k=kind: r["floors"][k]["ratio"])
                for kind in FLOOR_KINDS
            },
        }
    return {
        "mode": "compare",
        "baseline_code": str(args.baseline_code),
        "code": str(args.code or REPO),
        "machine": machine_info(),
        "summary": summary,
        "runs": runs,
    }


def compare_rows(c: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = [
        ("run (code, load 1/5 min at start → end)", "daemon ms/poll", "floors p / s ms", "ratios")
    ]
    for r in c["runs"]:
        fl, load0 = r["floors"], r["machine"]["loadavg"]
        rows.append(
            (
                f"{r['code']}  load {load0[0]:.2f}/{load0[1]:.2f}"
                f" → {r['loadavg_end'][0]:.2f}/{r['loadavg_end'][1]:.2f}"
                f"  {r['rate_sustained']:.2f} req/s",
                f"{r['cpu_ms_per_poll']:.3f}",
                f"{fl['prepared']['cpu_ms_per_request']:.3f} / "
                f"{fl['signed']['cpu_ms_per_request']:.3f}",
                f"{fl['prepared']['ratio']:.2f}× / {fl['signed']['ratio']:.2f}×",
            )
        )
    for label, m in c["summary"].items():
        rows.append(
            (
                f"median {label}",
                _f(m["cpu_ms_per_poll"], ".3f"),
                f"{_f(m['floor_prepared_ms'], '.3f')} / {_f(m['floor_signed_ms'], '.3f')}",
                f"{_f(m['ratio_prepared'], '.2f')}× / {_f(m['ratio_signed'], '.2f')}×",
            )
        )
    return rows


def print_table(rows: list[tuple[str, str, str, str]], out: Any) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["steady", "latency"], default="steady")
    parser.add_argument("--runs", type=int, default=None, help="steady 10000, latency 200")
    parser.add_argument("--rate", type=float, default=20.0, help="the daemon's budget")
    parser.add_argument("--sim-limit", type=int, default=20, help="the simulator's limit")
    parser.add_argument("--interval", type=float, default=None, help="steady 1, latency 10")
    parser.add_argument("--window", type=float, default=60.0, help="steady: measured seconds")
    parser.add_argument("--full-cycle", action="store_true", help="window ≥ one whole cycle")
    parser.add_argument("--max-warmup", type=float, default=600.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--floor-seconds", type=float, default=30.0)
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        help="steady: py-spy the daemon for S s after the window",
    )
    parser.add_argument(
        "--code", type=Path, default=None, help="steady: run the daemon from this source tree"
    )
    parser.add_argument(
        "--baseline-code",
        type=Path,
        default=None,
        help="steady: alternate runs of the daemon from this (older) source tree and this one",
    )
    parser.add_argument("--repeat", type=int, default=3, help="with --baseline-code: rounds")
    parser.add_argument(
        "--profile-all",
        action="store_true",
        help="with --profile: every non-idle thread, not only the GIL holder",
    )
    parser.add_argument(
        "--profile-out", type=Path, default=None, help="keep py-spy's raw stacks in this file"
    )
    parser.add_argument("--duration", type=float, default=180.0, help="latency: seconds")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    args = parser.parse_args(argv)
    if args.mode == "steady" and args.baseline_code is not None:
        args.runs = args.runs or 300
        args.interval = args.interval or 1.0
        result = compare(args)
        rows = compare_rows(result)
    elif args.mode == "steady":
        args.runs = args.runs or 10_000
        args.interval = args.interval or 1.0
        result = steady(args)
        rows = steady_rows(result)
    else:
        args.runs = args.runs or 200
        args.interval = args.interval or 10.0
        result = latency(args)
        rows = latency_rows(result)
    out = sys.stderr if args.json else sys.stdout
    header = [] if result["mode"] == "compare" else [("figure", "value", "target", "")]
    print_table([*header, *rows], out)
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
