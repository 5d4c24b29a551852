"""Run every benchmark and write ``benchmarks/REPORT.md`` with the figures, the machine they
came from and PNG plots (``benchmarks/plots/``).

One command::

    .venv/bin/pip install -e '.[bench]'        # matplotlib + psutil (+ py-spy for --profile)
    .venv/bin/python benchmarks/run_all.py     # about 35-45 minutes
    .venv/bin/python benchmarks/run_all.py --quick   # smoke run, ~6 minutes, report in a temp dir

What runs, each as its own subprocess (so one failing benchmark is reported, not fatal):

- ``scheduler_bench.py`` at 1,000 / 10,000 / 100,000 tracked runs that never finish
  (sustained rate, max in any 1 s, CPU per poll beside the bare-aiohttp floor, RSS, startup,
  fairness of per-run poll gaps); at 1,000 and 10,000 the window covers a whole cycle after
  the first one, so every run's gap is measured; 100,000 runs need 5,000 s per cycle, so that
  run measures startup, memory and the first cycle only;
- ``scheduler_bench.py --mode latency``: detection and transition-to-delivery latency with
  finishing and flapping runs and a webhook receiver;
- ``client_bench.py``, ``notify_bench.py``, ``strategy_bench.py``, ``limiter_bench.py`` when
  present (skipped with a note otherwise), their output kept verbatim.

Before each benchmark it waits (up to ``--max-wait`` s) for the 1-minute load average to drop
below ``--max-load``, and records the load it started at. Everything talks to 127.0.0.1 only
and every process stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from common import machine_info, wait_for_quiet  # noqa: E402

PY = sys.executable


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _help(script: Path) -> str:
    done = subprocess.run(
        [PY, str(script), "--help"], capture_output=True, text=True, check=False, cwd=REPO
    )
    return done.stdout


def run_bench(
    name: str, argv: list[str], *, timeout: float, max_load: float, max_wait: float
) -> dict[str, Any]:
    """Run one benchmark; its JSON (when it prints one) and its text, never an exception."""
    load = wait_for_quiet(max_load, max_wait, log=log)
    log(f"## {name}: {' '.join(argv)}  (load {load[0]})")
    started = time.monotonic()
    entry: dict[str, Any] = {
        "name": name,
        "argv": argv,
        "load_at_start": load,
        "started_at": dt.datetime.now(dt.UTC).strftime("%H:%M"),
        "commit": _code_version(),
    }
    try:
        done = subprocess.run(
            [PY, *argv], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
        )
    except subprocess.TimeoutExpired as exc:
        entry["error"] = f"timed out after {timeout:.0f} s"
        entry["stdout"] = (exc.stdout or b"").decode(errors="replace") if exc.stdout else ""
        return entry
    entry["seconds"] = time.monotonic() - started
    entry["returncode"] = done.returncode
    entry["stderr"] = done.stderr
    entry["stdout"] = done.stdout
    if done.returncode != 0:
        entry["error"] = f"exit {done.returncode}: {done.stderr.strip()[-1500:]}"
        log(entry["error"])
        return entry
    if "--json" in argv:
        entry["json"] = _parse_json(done.stdout)
    log(f"## {name}: done in {entry['seconds']:.0f} s")
    return entry


def _mode(entry: dict[str, Any]) -> str | None:
    """``steady`` / ``latency`` for scheduler_bench results, else None."""
    data = entry.get("json")
    return data.get("mode") if isinstance(data, dict) else None


def _parse_json(text: str) -> Any:
    """The JSON a benchmark printed: all of stdout, or its last line, or from the first line
    that opens a JSON value to the end (a human-readable part may come first)."""
    with contextlib.suppress(ValueError):
        return json.loads(text)
    lines = text.splitlines()
    with contextlib.suppress(ValueError, IndexError):
        return json.loads([ln for ln in lines if ln.strip()][-1])
    for i, line in enumerate(lines):
        if line.startswith(("{", "[")):
            with contextlib.suppress(ValueError):
                return json.loads("\n".join(lines[i:]))
    return None


# -- plan ---------------------------------------------------------------------------------------


def plan(quick: bool, profile: bool) -> list[tuple[str, list[str], float]]:
    sched = str(HERE / "scheduler_bench.py")
    steps: list[tuple[str, list[str], float]] = []
    if quick:
        steps += [
            (
                "scheduler 1,000",
                [
                    sched,
                    "--runs",
                    "1000",
                    "--window",
                    "20",
                    "--max-warmup",
                    "60",
                    "--floor-seconds",
                    "10",
                    "--json",
                ],
                600,
            ),
            (
                "scheduler 10,000",
                [
                    sched,
                    "--runs",
                    "10000",
                    "--window",
                    "20",
                    "--max-warmup",
                    "15",
                    "--floor-seconds",
                    "10",
                    "--json",
                ],
                600,
            ),
            (
                "scheduler 100,000",
                [
                    sched,
                    "--runs",
                    "100000",
                    "--window",
                    "20",
                    "--max-warmup",
                    "10",
                    "--no-floor",
                    "--json",
                ],
                900,
            ),
            (
                "latency",
                [sched, "--mode", "latency", "--runs", "200", "--duration", "60", "--json"],
                600,
            ),
        ]
    else:
        prof = ["--profile", "90"] if profile else []
        steps += [
            ("scheduler 1,000", [sched, "--runs", "1000", "--full-cycle", "--json"], 1200),
            (
                "scheduler 10,000",
                [sched, "--runs", "10000", "--full-cycle", "--max-warmup", "700", *prof, "--json"],
                2400,
            ),
            (
                "scheduler 100,000",
                [sched, "--runs", "100000", "--max-warmup", "60", "--window", "60", "--json"],
                1200,
            ),
            (
                "latency",
                [sched, "--mode", "latency", "--runs", "200", "--duration", "240", "--json"],
                900,
            ),
        ]
    others = {
        "client_bench.py": (["--calls", "300", "--rounds", "1"] if quick else [], 900),
        "notify_bench.py": (["--events", "1000"] if quick else [], 900),
        "strategy_bench.py": (["--runs", "2000", "--duration", "30"] if quick else [], 1800),
        "limiter_bench.py": (["--seconds", "10"] if quick else [], 600),
    }
    for script, (extra, timeout) in others.items():
        path = HERE / script
        if not path.exists():
            steps.append((script, [], 0))  # reported as missing
            continue
        flags = ["--json"] if "--json" in _help(path) else []
        steps.append((script, [str(path), *extra, *flags], timeout))
    return steps


# -- plots --------------------------------------------------------------------------------------


def make_plots(results: dict[str, dict[str, Any]], plots: Path) -> list[str]:
    """PNG plots; returns notes (e.g. matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib is not installed (`pip install -e '.[bench]'`): no plots"]
    plots.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    steady = [(name, r["json"]) for name, r in results.items() if _mode(r) == "steady"]
    if steady:
        fig, axes = plt.subplots(len(steady), 1, figsize=(10, 2.6 * len(steady)), squeeze=False)
        for ax, (name, r) in zip(axes[:, 0], steady, strict=True):
            rows = r["histogram"]
            xs = [row[0] for row in rows]
            ax.plot(xs, [row[1] for row in rows], lw=0.8, label="GetRunStatus arrivals / s")
            if any(row[2] for row in rows):
                ax.plot(xs, [row[2] for row in rows], lw=0.8, color="red", label="throttled / s")
            ax.axhline(r["rate_per_second"], color="black", ls="--", lw=1, label="20/s budget")
            w0, w1 = r["window_offsets"]
            ax.axvspan(w0, w1, color="green", alpha=0.08, label="measured window")
            ax.set_ylim(0, r["rate_per_second"] * 1.3)
            ax.set_title(f"{name}: requests per second at the simulator", fontsize=10)
            ax.set_ylabel("req/s")
            ax.legend(loc="lower right", fontsize=7)
        axes[-1, 0].set_xlabel("seconds since the daemon was started")
        fig.tight_layout()
        fig.savefig(plots / "requests_per_second.png", dpi=110)
        plt.close(fig)

    with_gaps = [(name, r) for name, r in steady if r.get("gaps_over_cycle")]
    if with_gaps:
        fig, ax = plt.subplots(figsize=(8, 3.6))
        lo = min(min(r["gaps_over_cycle"]) for _, r in with_gaps)
        hi = max(max(r["gaps_over_cycle"]) for _, r in with_gaps)
        lo, hi = min(lo, 0.95), max(hi, 1.25)
        bins = [lo + (hi - lo) * i / 120 for i in range(121)]
        for name, r in with_gaps:
            ax.hist(
                r["gaps_over_cycle"],
                bins=bins,
                histtype="step",
                lw=1.2,
                label=f"{name} ({len(r['gaps_over_cycle']):,} gaps)",
            )
        ax.axvline(1.2, color="red", ls="--", lw=1, label="target: max ≤ 1.2 × cycle")
        ax.set_yscale("log")
        ax.set_xlabel("gap between two polls of one run / mean cycle (runs ÷ sustained rate)")
        ax.set_ylabel("gaps")
        ax.set_title("Per-run poll gaps under a saturated budget", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plots / "poll_gaps.png", dpi=110)
        plt.close(fig)
    else:
        notes.append("no poll gaps measured: poll_gaps.png not drawn")

    lat = next((r["json"] for r in results.values() if _mode(r) == "latency"), None)
    if lat and lat.get("delivery_samples"):
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), width_ratios=[3, 2])
        for key, label in (
            ("detection_samples", "transition → event recorded"),
            ("delivery_samples", "transition → webhook received"),
        ):
            data = sorted(lat[key])
            if data:
                ax.plot(data, [(i + 1) / len(data) for i in range(len(data))], label=label)
        ax.axvline(
            lat["expected_cycle_seconds"],
            color="black",
            ls="--",
            lw=1,
            label=f"per-run poll cycle ({lat['expected_cycle_seconds']:.0f} s)",
        )
        ax.set_xlabel("seconds after the simulator's transition")
        ax.set_ylabel("fraction of transitions")
        ax.set_title(
            f"Transition to delivery, {lat['runs']} runs, interval "
            f"{lat['interval_seconds']:.0f} s, 20/s budget",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        for key, label in (
            ("processing_samples", "poll arrival → event recorded"),
            ("record_to_delivery_samples", "event recorded → webhook received"),
        ):
            data = sorted(1000 * x for x in lat.get(key, []))
            if data:
                ax2.plot(data, [(i + 1) / len(data) for i in range(len(data))], label=label)
        ax2.set_xscale("log")
        ax2.set_xlabel("milliseconds (log scale)")
        ax2.set_title("…of which omics-watcher's own part", fontsize=10)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(plots / "delivery_latency.png", dpi=110)
        plt.close(fig)
    else:
        notes.append("no latency samples: delivery_latency.png not drawn")
    return notes


# -- report -------------------------------------------------------------------------------------


def _f(v: Any, fmt: str = ".2f", suffix: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:{fmt}}{suffix}"


def _ok(cond: bool | None) -> str:
    return "" if cond is None else (" ✅" if cond else " ❌")


def _code_version() -> str:
    """HEAD, plus a mark when watcher/ has uncommitted changes (others share the checkout)."""
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "watcher"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    ).stdout.strip()
    return _git() + (" + uncommitted changes in watcher/" if dirty else "")


def _git() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    ).stdout.strip()
    return head or "unknown"


def steady_table(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    def row(label: str, fn: Any) -> str:
        cells = []
        for _, r in runs:
            try:
                cells.append(fn(r))
            except (KeyError, TypeError):
                cells.append("n/a")
        return f"| {label} | " + " | ".join(cells) + " |"

    def floor(r: dict[str, Any], key: str, fmt: str = ".3f") -> str:
        return _f(r["floor"][key], fmt) if r.get("floor") else "n/a"

    lines = [
        "| figure | " + " | ".join(f"{r['runs']:,} runs" for _, r in runs) + " |",
        "|---|" + "---|" * len(runs),
        row(
            "`omics-watcher track -` (all runs, one call)",
            lambda r: _f(r["track_seconds"], ".2f", " s"),
        ),
        row(
            "startup: spawn → first GetRunStatus (≤ 3 s)",
            lambda r: _f(r["startup_seconds"], ".2f", " s") + _ok(r["startup_seconds"] <= 3),
        ),
        row("RSS at first poll", lambda r: _f(r["rss_mb_at_first_poll"], ".1f", " MB")),
        row(
            "first cycle (every run polled once)",
            lambda r: (
                _f(r["first_cycle_seconds"], ".0f", " s")
                if r["first_cycle_seconds"]
                else "not reached (window is in the first cycle)"
            ),
        ),
        row(
            "measured window",
            lambda r: (
                _f(r["window_seconds"], ".0f", " s") + ("" if r["steady"] else " (first cycle)")
            ),
        ),
        row(
            "sustained GetRunStatus rate (≥ 19.4/s)",
            lambda r: _f(r["rate_sustained"], ".2f", "/s") + _ok(r["rate_sustained"] >= 19.4),
        ),
        row(
            "max requests in any 1 s window, whole run (≤ 20)",
            lambda r: f"{r['max_in_any_1s']}" + _ok(r["max_in_any_1s"] <= 20),
        ),
        row(
            "throttled / signature failures",
            lambda r: f"{r['throttled']} / {r['signature_failures']}",
        ),
        row(
            "daemon CPU per poll (target ≤ 1 ms)",
            lambda r: _f(r["cpu_ms_per_poll"], ".3f", " ms") + _ok(r["cpu_ms_per_poll"] <= 1.0),
        ),
        row(
            "… user / system",
            lambda r: f"{r['user_ms_per_poll']:.3f} / {r['system_ms_per_poll']:.3f} ms",
        ),
        row(
            "floor: bare aiohttp loop, CPU per request",
            lambda r: floor(r, "cpu_ms_per_request") + (" ms" if r.get("floor") else ""),
        ),
        row("daemon ÷ floor", lambda r: _f(r.get("cost_ratio"), ".2f", "×")),
        row(
            "process wake-ups per poll (daemon / floor)",
            lambda r: f"{r['wakeups_per_poll']:.2f} / {floor(r, 'wakeups_per_request', '.2f')}",
        ),
        row("daemon CPU, share of one core", lambda r: _f(r["cpu_percent"], ".1f", " %")),
        row(
            "RSS end of window / peak (≤ 150 MB)",
            lambda r: (
                f"{r['rss_mb']:.1f} / {_f(r['rss_peak_mb'], '.1f')} MB"
                + _ok(max(r["rss_mb"], r["rss_peak_mb"] or 0) <= 150)
            ),
        ),
        row("events recorded in the window", lambda r: f"{r['events_in_window']:,}"),
        row("mean cycle = runs ÷ sustained rate", lambda r: _f(r["cycle_seconds"], ".1f", " s")),
        row(
            "poll gaps measured (runs covered)",
            lambda r: f"{r['gaps_measured']:,} ({100 * r['gap_coverage']:.0f} %)",
        ),
        row(
            "gap min / p50 / p99 / max",
            lambda r: (
                " / ".join(_f(r[k], ".1f") for k in ("gap_min", "gap_p50", "gap_p99", "gap_max"))
                + " s"
                if r["gaps_measured"]
                else "n/a"
            ),
        ),
        row(
            "max gap ÷ mean cycle (≤ 1.2)",
            lambda r: (
                _f(r["gap_max_over_cycle"], ".3f")
                + _ok(None if r["gap_max_over_cycle"] is None else r["gap_max_over_cycle"] <= 1.2)
            ),
        ),
        row("min gap ÷ mean cycle", lambda r: _f(r["gap_min_over_cycle"], ".3f")),
        row(
            "SIGTERM → exit (code)",
            lambda r: f"{_f(r['exit_seconds'], '.1f', ' s')} ({r['exit_code']})",
        ),
    ]
    return lines


def write_report(
    path: Path,
    results: dict[str, dict[str, Any]],
    *,
    machine: dict[str, Any],
    command: str,
    started: dt.datetime,
    finished: dt.datetime,
    plot_dir: Path,
    plot_notes: list[str],
    quick: bool,
    rerun: list[str],
) -> None:
    out: list[str] = []
    w = out.append
    w("# omics-watcher benchmark report")
    w("")
    if quick:
        w("> **Quick smoke run (`--quick`)**: short windows, figures are indicative only.")
        w("")
    w(
        f"Generated by `{command}`, "
        f"{started:%Y-%m-%d %H:%M} – {finished:%H:%M} UTC. Every figure below was measured by the "
        "committed scripts in that run; rerun the command to regenerate this file and the plots."
    )
    if rerun:
        w("")
        w(
            f"Re-run afterwards with `{PY_REL} benchmarks/run_all.py --from-raw RESULTS.json "
            f"--only {','.join(rerun)}`, which ran those steps again and kept the others."
        )
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| CPU | {machine['cpu']} |")
    w(f"| cores | {machine['cores']} |")
    w(f"| RAM | {machine['ram_gib']} GiB |")
    w(f"| Python | {machine['python']} |")
    w(f"| OS | {machine['platform']} |")
    w(f"| load average at start (1/5/15 min) | {' / '.join(str(x) for x in machine['loadavg'])} |")
    w("")
    w("| benchmark | started (UTC) | load average (1 min) | code |")
    w("|---|---|---:|---|")
    for name, r in results.items():
        if r.get("argv"):
            load = r.get("load_at_start", ["?"])[0]
            w(f"| {name} | {r.get('started_at', '?')} | {load} | `{r.get('commit', '?')}` |")
    w("")

    steady = [(n, r["json"]) for n, r in results.items() if _mode(r) == "steady"]
    if steady:
        w("## Scheduler: saturated budget (`scheduler_bench.py`)")
        w("")
        w(
            "Runs that never finish, `rate_per_second = 20`, `interval_seconds = 1` (so the "
            "budget, not the interval, sets the pace), simulator limit 20/s. Simulator, daemon "
            "(`omics-watcher run`, runs added with `omics-watcher track -` on stdin) and floor "
            "each run in their own process."
        )
        w("")
        w("```")
        for name, _ in steady:
            w(f"{PY_REL} {' '.join(_rel(a) for a in results[name]['argv'])}")
        w("```")
        w("")
        out.extend(steady_table(steady))
        w("")
        w(_steady_notes(steady))
        w("")
        if (plot_dir / "requests_per_second.png").exists():
            w(f"![requests per second]({_rel_plot(plot_dir, path, 'requests_per_second.png')})")
            w("")
        if (plot_dir / "poll_gaps.png").exists():
            w(f"![poll gaps]({_rel_plot(plot_dir, path, 'poll_gaps.png')})")
            w("")

    profiled = [(n, r) for n, r in steady if r.get("profile") and "categories" in r["profile"]]
    if profiled:
        name, r = profiled[0]
        p = r["profile"]
        total = p["samples"] or 1
        w(f"## Where the daemon's CPU goes ({name}, steady state)")
        w("")
        w(
            f"py-spy, {p['seconds']:.0f} s at 1000 Hz with `--gil` (samples only while the daemon "
            f"runs Python code; {p['samples']:,} samples over {p['polls']:,} polls). Each sample "
            "is charged to the first category, in this order, found in its stack. Shares are "
            "reliable; "
            "the µs column is samples ÷ polls and only a rough guide (sampling misses time in "
            "syscalls, which `cpu_times` above includes)."
        )
        w("")
        w("| category | share | ≈ µs per poll |")
        w("|---|---:|---:|")
        for cat, n in p["categories"]:
            w(f"| {cat} | {100 * n / total:.1f} % | {1000 * n / max(p['polls'], 1):.0f} |")
        w("")
        w("Our own functions, inclusive (a function's share includes what it calls):")
        w("")
        w("| function | share |")
        w("|---|---:|")
        for fn, n in p["own_functions"][:15]:
            w(f"| `{fn}` | {100 * n / total:.1f} % |")
        w("")
    elif any(r.get("profile", {}).get("error") for _, r in steady):
        w("Profile: " + next(r["profile"]["error"] for _, r in steady if r.get("profile")))
        w("")

    lat_entry = next((r for r in results.values() if _mode(r) == "latency"), None)
    if lat_entry:
        lat = lat_entry["json"]
        w("## Detection and delivery latency (`scheduler_bench.py --mode latency`)")
        w("")
        w(
            f"{lat['runs']} runs (half finishing, half flapping between RUNNING and PAUSED every "
            f"~20 s), `interval_seconds = {lat['interval_seconds']:.0f}` with a 20/s budget (one "
            f"poll per run every {lat['expected_cycle_seconds']:.0f} s), a webhook notifier "
            f"posting to a receiver in the benchmark process, {lat['duration_seconds']:.0f} s. "
            "Latencies are "
            "measured from the transition time in the simulator's timeline; first observations "
            "(`previous_status: null`) are left out."
        )
        w("")
        w("```")
        w(f"{PY_REL} {' '.join(_rel(a) for a in lat_entry['argv'])}")
        w("```")
        w("")
        w("| latency | p50 | p99 | max | n |")
        w("|---|---:|---:|---:|---:|")
        for key, label, unit in (
            ("detection", "detection: transition → event recorded", "s"),
            ("detection_wait_for_poll", "… of which waiting for the run's next poll", "s"),
            ("detection_processing", "… of which our processing (poll arrival → recorded)", "ms"),
            ("detection_processing_plain", "… … for transitions into non-failing statuses", "ms"),
            (
                "detection_processing_enriched",
                "… … for failures (GetRunCalls + GetRunJobLog first)",
                "ms",
            ),
            ("delivery", "delivery: transition → webhook received", "s"),
            ("record_to_delivery", "… of which recorded → webhook received", "ms"),
        ):
            v = lat.get(key)
            if v is None:
                continue
            k = 1000.0 if unit == "ms" else 1.0
            cells = [
                _f(None if v[q] is None else k * v[q], ".1f" if unit == "ms" else ".2f", f" {unit}")
                for q in ("p50", "p99", "max")
            ]
            w(f"| {label} | " + " | ".join(cells) + f" | {v['n']:,} |")
        w("")
        w(
            f"Events recorded: {lat['events']:,}; undelivered at the end: {lat['undelivered']}; "
            f"transitions that reverted before the run's next poll (so no event, by design): "
            f"{lat['transitions_reverted_before_next_poll']}; max requests in any 1 s: "
            f"{lat['max_in_any_1s']}; throttled: {lat['throttled']}. Detection is dominated by the "
            "wait for the run's next poll, which is uniform over one polling cycle "
            f"(expected p50 ≈ {lat['expected_cycle_seconds'] / 2:.1f} s, p99 ≈ "
            f"{0.99 * lat['expected_cycle_seconds']:.1f} s): shorten it with a smaller "
            "`interval_seconds` as long as runs ÷ interval stays under the budget, or with the "
            "`batch` strategy (see strategy_bench below)."
        )
        w("")
        if (plot_dir / "delivery_latency.png").exists():
            w(f"![delivery latency]({_rel_plot(plot_dir, path, 'delivery_latency.png')})")
            w("")

    for name, r in results.items():
        if _mode(r) in ("steady", "latency"):
            continue
        if not r.get("argv"):
            w(f"## {name}")
            w("")
            w(f"Skipped: `benchmarks/{name}` is not in this checkout.")
            w("")
            continue
        w(f"## {name}")
        w("")
        w("```")
        w(f"{PY_REL} {' '.join(_rel(a) for a in r.get('argv', []))}")
        w("```")
        w("")
        if r.get("error"):
            w(f"**Failed**: {r['error']}")
            w("")
        text = r.get("stdout", "").strip()
        if r.get("json") is not None:
            # The human part, if any: whatever precedes the JSON.
            lines = text.splitlines()
            starts = [i for i, ln in enumerate(lines) if ln.startswith(("{", "["))]
            text = "\n".join(lines[: starts[0]]).strip() if starts else ""
            if text:
                w("```")
                w(text)
                w("```")
                w("")
            out.extend(_json_table(r["json"]))
        elif text:
            w("```")
            w(text)
            w("```")
        w("")

    w("## Method notes")
    w("")
    w(METHOD)
    for note in plot_notes:
        w(f"- {note}")
    path.write_text("\n".join(out) + "\n")


PY_REL = ".venv/bin/python"


def _rel(arg: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(arg).resolve().relative_to(REPO))
    return arg


def _rel_plot(plot_dir: Path, report: Path, name: str) -> str:
    try:
        return str((plot_dir / name).resolve().relative_to(report.parent.resolve()))
    except ValueError:
        return str(plot_dir / name)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return f"[{len(value)} values]" if len(value) > 5 else ", ".join(_cell(v) for v in value)
    return str(value)


def _json_table(data: Any) -> list[str]:
    """A benchmark's JSON as a Markdown table: one column per object of a list, or key/value."""
    objects = data if isinstance(data, list) else [data]
    if not objects or not all(isinstance(o, dict) for o in objects):
        return ["```json", json.dumps(_trim(data), indent=1), "```"]
    keys: list[str] = []
    for o in objects:
        keys += [k for k in o if k not in keys]
    lines = ["| | " + " | ".join(f"#{i + 1}" for i in range(len(objects))) + " |"]
    if len(objects) == 1:
        lines = ["| | |"]
    lines.append("|---|" + "---|" * len(objects))
    lines += [f"| {k} | " + " | ".join(_cell(o.get(k, "")) for o in objects) + " |" for k in keys]
    return lines


def _trim(value: Any) -> Any:
    """Long sample lists out of the JSON shown in the report."""
    if isinstance(value, dict):
        return {k: _trim(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) > 20:
        return f"[{len(value)} values]"
    return value


def _steady_notes(steady: list[tuple[str, dict[str, Any]]]) -> str:
    notes = []
    for name, r in steady:
        floor = r.get("floor")
        if not r["steady"]:
            notes.append(
                f"{name}: the window lies in the first cycle, where every poll is a first "
                "observation that records an event, routes it and delivers it (here to the "
                f"implied log notifier): {r['cpu_ms_per_poll']:.2f} ms per poll is that cost, "
                "not the steady state."
            )
        elif r["cpu_ms_per_poll"] > 1.0 and floor and floor["cpu_ms_per_request"] > 0.8:
            notes.append(
                f"{name}: CPU per poll {r['cpu_ms_per_poll']:.2f} ms misses the 1 ms target, but "
                f"the bare aiohttp floor costs {floor['cpu_ms_per_request']:.2f} ms per request on "
                f"this machine in the same run, so the daemon's own work is about "
                f"{max(0.0, r['cpu_ms_per_poll'] - floor['cpu_ms_per_request']):.2f} ms per poll "
                f"({r['cost_ratio']:.2f}× the floor)."
            )
        if r["rate_sustained"] < 19.8:
            gap = 1000.0 / r["rate_sustained"]
            notes.append(
                f"{name}: {r['rate_sustained']:.2f} req/s = one request every {gap:.1f} ms instead "
                "of 50.0 ms: the pacing limiter spaces each grant 1/rate after the previous "
                "*actual* grant, so every late wake-up of the event loop is lost for good."
            )
    if not notes:
        return ""
    return "Notes:\n\n" + "\n".join(f"- {n}" for n in notes)


METHOD = """\
- **Rate** is read from the simulator's own per-second histogram of GetRunStatus arrivals
  (whole seconds inside the window); **max in any 1 s** is the simulator's exact sliding-window
  maximum over the daemon's whole life (`max_window_arrivals`), cross-checked against the
  arrival log.
- **CPU per poll** = the daemon process's `psutil` `cpu_times()` (user + system) over the
  window ÷ GetRunStatus requests that arrived at the simulator in the window. Everything is
  included: signing, HTTP, parsing, SQLite, scheduling, logging, the HTTP server's idle cost.
- **Floor**: after the daemon stopped, a bare aiohttp loop in its own process, paced at the
  daemon's sustained rate against the same simulator, signing each request with
  `watcher.omics.signing.sign`, POSTing it and `json.loads`-ing the answer, nothing else; its
  CPU per request measured the same way. The ratio is what our own code costs on top.
- **Wake-ups** are voluntary context switches of the process (`num_ctx_switches`): on a small
  VM every time an idle event loop is woken costs CPU, so they explain much of the difference.
- **Fairness**: the benchmark's simulator child logs the arrival time and run of every
  GetRunStatus. A gap is the time between two consecutive polls of one run, counted when the
  second poll falls in the window; the **mean cycle** is runs ÷ sustained rate, the time one
  round robin over every run takes. A fair scheduler under a saturated budget has every gap
  ≈ one cycle; the target is max gap ≤ 1.2 × cycle. With `--full-cycle` the window lasts one
  whole cycle after the first, so every run's gap is measured (coverage 100 %).
- **First cycle**: the first poll of each run is a first observation and records a
  `run.status_changed` event (`previous_status: null`). The steady-state window starts once
  every run has been polled once; for 100,000 runs (5,000 s per cycle) the window lies inside
  the first cycle and says so.
- **Startup** = from spawning `omics-watcher run` (100,000 runs already in the state file) to
  the first GetRunStatus arriving at the simulator; **RSS** is `memory_info().rss`, the peak is
  the kernel's `VmHWM`.
- **Latency**: transition times come from the simulator's timeline, "recorded" is
  `events.recorded_at` in the state file, "received" is the webhook receiver's clock; all on
  one machine, one clock.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where REPORT.md and plots/ go (default: benchmarks/, or a temp dir with --quick)",
    )
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument(
        "--max-wait",
        type=float,
        default=900.0,
        help="seconds to wait for the load to drop before each benchmark",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--only", default="", help="comma-separated names to run (debugging)")
    parser.add_argument("--raw", type=Path, default=None, help="also save all results as JSON")
    parser.add_argument(
        "--from-raw", type=Path, default=None, help="rewrite the report from a --raw file"
    )
    args = parser.parse_args()

    out_dir = args.out_dir or (
        Path(tempfile.mkdtemp(prefix="omics-bench-")) if args.quick else HERE
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    machine = machine_info()
    log(f"# machine: {machine}")
    results: dict[str, dict[str, Any]] = {}
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    steps = plan(args.quick, profile=not args.no_profile)
    if args.from_raw:
        saved = json.loads(args.from_raw.read_text())
        results, machine = saved["results"], saved["machine"]
        # With --only, those steps run again and replace their saved results.
        steps = [step for step in steps if step[0] in only] if only else []
        for entry in results.values():
            if entry.get("json") is None and "--json" in entry.get("argv", []):
                entry["json"] = _parse_json(entry.get("stdout", ""))
        started = dt.datetime.fromisoformat(saved["started"])
    for name, argv, timeout in steps:
        if only and name not in only:
            continue
        if not argv:
            log(f"## {name}: not present, skipped")
            results[name] = {"name": name, "argv": []}
            continue
        results[name] = run_bench(
            name, argv, timeout=timeout, max_load=args.max_load, max_wait=args.max_wait
        )
    finished = (
        dt.datetime.fromisoformat(saved["finished"])
        if args.from_raw and not only
        else dt.datetime.now(dt.UTC)
    )
    plot_dir = out_dir / "plots"
    notes = make_plots(results, plot_dir)
    command = PY_REL + " benchmarks/run_all.py" + (" --quick" if args.quick else "")
    rerun = sorted(only) if args.from_raw and only else []
    report = out_dir / "REPORT.md"
    write_report(
        report,
        results,
        machine=machine,
        command=command,
        started=started,
        finished=finished,
        plot_dir=plot_dir,
        plot_notes=notes,
        quick=args.quick,
        rerun=rerun,
    )
    if args.raw:
        raw = {
            "results": results,
            "machine": machine,
            "started": started.isoformat(),
            "finished": finished.isoformat(),
        }
        args.raw.write_text(json.dumps(raw, default=str))
    log(f"# wrote {report}")
    print(report)
    failed = [n for n, r in results.items() if r.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
