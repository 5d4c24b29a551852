"""CPU per poll beside the floor, measured at the same time (issue 12 item 5).

Why another benchmark: ``scheduler_bench.py`` measures the daemon, then the floor, one after
the other. On this shared 2-core VM the CPU a request costs swings by up to 3× within
minutes (other tenants, steal, cache pressure), so two figures taken a minute apart do not
make a ratio: rounds of the same code ranged 1.02-1.48× there. Here every party runs at
once, each against its own simulator (so each has the whole 20/s budget and nobody waits
for anybody else), and CPU is sampled for all of them at the same instants:

- ``floor:prepared`` — issue 12's floor: a bare aiohttp loop paced at ``--rate``, posting
  one body with headers signed once before the loop and reading the answer's bytes;
- ``floor:signed`` (``--signed-floor``) — the same loop signing a fresh body each request;
- ``floor:grouped`` (``--grouped-floor``) — the prepared loop sending ``STATUS_GROUP``
  requests at once, as the daemon's GetRunStatus limiter groups its permits: beside it the
  daemon's own work per poll shows without the wake-ups the grouping saves;
- ``new`` — the daemon from this tree (or ``--code DIR``), ``--runs`` never-finishing runs,
  ``interval_seconds = 1`` so that the budget sets the pace (steady state: every poll quiet);
- ``old`` — with ``--peer DIR`` (repeatable, ``--peer-label``): the daemon from another
  source tree, e.g. ``git worktree add /tmp/old COMMIT``.

After every daemon finished its first cycle (each poll there is a first observation that
records an event) and ``--settle`` seconds more, ``--rounds`` windows of ``--window``
seconds follow back to back. For each window and party: CPU (user + system of the whole
process, psutil) ÷ the GetRunStatus requests its simulator saw arrive in that window.
Each window's ratio daemon ÷ floor compares two figures taken over the same seconds; the
report gives the median ratio over the windows, its spread (min-max and the quartiles) and
the load average during each window. The CPU figures are clock-tick quantised (10 ms), so
a window should hold at least a few hundred milliseconds of CPU (20 s at 20/s ≈ 400 polls).

Usage::

    .venv/bin/python benchmarks/poll_cost_bench.py --runs 300 --rounds 9 --window 20 \\
        [--peer /tmp/old --peer-label old] [--signed-floor] [--grouped-floor] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
from common import PYTHON, Daemon, Sim, daemon, machine_info, simulator, stop_process

COMMON = Path(__file__).resolve().parent / "common.py"


def say(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _sim_config(runs: int, seed: int) -> dict[str, Any]:
    return {"runs": runs, "seed": seed, "kinds": {"forever": 1.0}, "rate_limit": 20}


@contextlib.contextmanager
def floor_process(sim: Sim, *, kind: str, rate: float) -> Iterator[subprocess.Popen[bytes]]:
    """``common.py floor`` running until stopped (its own window is never reached)."""
    args = {
        "kind": kind,
        "endpoint": sim.endpoint,
        "secret_id": sim.secret_id,
        "secret_key": sim.secret_key,
        "runs": sim.runs[:1000],
        "rate": rate,
        "warmup": 0.0,
        "window": 1e9,
    }
    proc = subprocess.Popen(
        [PYTHON, str(COMMON), "floor"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(args).encode())
    proc.stdin.close()
    try:
        yield proc
    finally:
        stop_process(proc, grace=5)


class Party:
    """One measured process and the simulator that counts its requests."""

    def __init__(self, name: str, sim: Sim, pid: int) -> None:
        self.name = name
        self.sim = sim
        self.proc = psutil.Process(pid)
        self.kind = "floor" if name.startswith("floor") else "daemon"

    def cpu(self) -> float:
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def requests(self, t0: float, t1: float) -> int:
        times, _ = self.sim.arrivals(since=t0)
        return sum(1 for t in times if t <= t1)


def _wait_first_cycle(sim: Sim, d: Daemon, runs: int, timeout: float) -> None:
    seen: set[int] = set()
    since = d.started_at
    deadline = time.monotonic() + timeout
    while len(seen) < runs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"first cycle not done in {timeout} s:\n{d.log_tail()}")
        assert d.proc is not None
        if d.proc.poll() is not None:
            raise RuntimeError(f"daemon exited {d.proc.returncode}:\n{d.log_tail()}")
        time.sleep(1.0)
        times, idx = sim.arrivals(since=since)
        if times:
            since = times[-1]
            seen.update(i for i in idx if i >= 0)


def measure(args: argparse.Namespace, parties: list[Party]) -> list[dict[str, Any]]:
    rounds = []
    for k in range(args.rounds):
        load0 = os.getloadavg()[0]
        t0 = time.time()
        cpu0 = [p.cpu() for p in parties]
        time.sleep(args.window)
        cpu1 = [p.cpu() for p in parties]
        t1 = time.time()
        row: dict[str, Any] = {"round": k + 1, "seconds": t1 - t0}
        for p, c0, c1 in zip(parties, cpu0, cpu1, strict=True):
            n = p.requests(t0, t1)
            row[p.name] = {"requests": n, "cpu_ms": 1000 * (c1 - c0)}
            row[p.name]["ms_per_request"] = row[p.name]["cpu_ms"] / max(n, 1)
        floor = row["floor:prepared"]["ms_per_request"]
        for p in parties:
            if p.kind == "daemon":
                row[p.name]["ratio_prepared"] = row[p.name]["ms_per_request"] / floor
                for kind in ("signed", "grouped"):
                    if f"floor:{kind}" in row:
                        row[p.name][f"ratio_{kind}"] = (
                            row[p.name]["ms_per_request"] / row[f"floor:{kind}"]["ms_per_request"]
                        )
        row["loadavg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        rounds.append(row)
        say(
            f"# round {k + 1}: load {row['loadavg'][0]:.2f}→{row['loadavg'][1]:.2f}  "
            + "  ".join(
                f"{p.name} {row[p.name]['ms_per_request']:.3f} ms ({row[p.name]['requests']})"
                + (
                    f" {row[p.name]['ratio_prepared']:.2f}×"
                    if "ratio_prepared" in row[p.name]
                    else ""
                )
                + (
                    f" (grouped {row[p.name]['ratio_grouped']:.2f}×)"
                    if "ratio_grouped" in row[p.name]
                    else ""
                )
                for p in parties
            )
        )
    return rounds


def summarise(rounds: list[dict[str, Any]], parties: list[Party]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parties:
        ms = [r[p.name]["ms_per_request"] for r in rounds]
        entry: dict[str, Any] = {"ms_per_request_median": statistics.median(ms)}
        for key in ("ratio_prepared", "ratio_signed", "ratio_grouped"):
            values = sorted(r[p.name][key] for r in rounds if key in r[p.name])
            if values:
                q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
                entry[key] = {
                    "median": statistics.median(values),
                    "min": values[0],
                    "max": values[-1],
                    "q1": q[0],
                    "q3": q[2],
                    "rounds_at_most_1_2": sum(1 for v in values if v <= 1.2),
                }
        out[p.name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="never-finishing runs per daemon")
    parser.add_argument("--rate", type=float, default=20.0, help="budget and floor pace, req/s")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--window", type=float, default=20.0, help="seconds per round")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--code", type=Path, default=None, help="the 'new' daemon's tree")
    parser.add_argument("--peer", type=Path, action="append", default=[], help="older tree")
    parser.add_argument("--peer-label", action="append", default=[], help="name per --peer")
    parser.add_argument("--signed-floor", action="store_true", help="also the signed floor")
    parser.add_argument("--grouped-floor", action="store_true", help="also the grouped floor")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    args = parser.parse_args(argv)
    daemons: list[tuple[str, Path | None]] = [("new", args.code)]
    for i, peer in enumerate(args.peer):
        label = args.peer_label[i] if i < len(args.peer_label) else f"peer{i + 1}"
        daemons.append((label, peer))
    kinds = [
        "prepared",
        *(["signed"] if args.signed_floor else []),
        *(["grouped"] if args.grouped_floor else []),
    ]
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "runs": args.runs,
        "rate": args.rate,
        "window_seconds": args.window,
        "daemons": {label: str(src) if src else "this tree" for label, src in daemons},
        "machine": machine_info(),
    }
    with contextlib.ExitStack() as stack:
        parties: list[Party] = []
        started: list[tuple[Sim, Daemon]] = []
        for _label, source in daemons:
            sim = stack.enter_context(simulator(_sim_config(args.runs, args.seed)))
            d = stack.enter_context(daemon(sim, rate=args.rate, interval=1.0, source=source))
            d.track(sim.runs)
            started.append((sim, d))
        for (sim, d), (label, _) in zip(started, daemons, strict=True):
            d.start()
            assert d.proc is not None
            parties.append(Party(label, sim, d.proc.pid))
        for kind in kinds:
            sim = stack.enter_context(simulator(_sim_config(args.runs, args.seed)))
            proc = stack.enter_context(floor_process(sim, kind=kind, rate=args.rate))
            parties.append(Party(f"floor:{kind}", sim, proc.pid))
        for sim, d in started:
            _wait_first_cycle(sim, d, args.runs, timeout=120 + 2 * args.runs / args.rate)
        say(f"# every daemon's first cycle done; settling {args.settle:.0f} s")
        time.sleep(args.settle)
        rounds = measure(args, parties)
        for _sim, d in started:
            d.stop()
        result["exit_codes"] = {
            label: d.exit_code for (label, _), (_s, d) in zip(daemons, started, strict=True)
        }
    result["rounds"] = rounds
    result["summary"] = summarise(rounds, parties)
    for name, entry in result["summary"].items():
        line = f"{name:16s} median {entry['ms_per_request_median']:.3f} ms/request"
        for key in ("ratio_prepared", "ratio_signed", "ratio_grouped"):
            if key in entry:
                e = entry[key]
                line += (
                    f"  {key.split('_')[1]} floor ×{e['median']:.2f}"
                    f" (min {e['min']:.2f}, q1 {e['q1']:.2f}, q3 {e['q3']:.2f}, max {e['max']:.2f};"
                    f" {e['rounds_at_most_1_2']}/{len(rounds)} rounds ≤ 1.2)"
                )
        say(line)
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
