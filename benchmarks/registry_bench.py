"""Bounded work on a big registry: 300,000 runs and 2,000,000 events (issue 13, item 2).

Why: with 340,000 runs ``list --json`` took 20 s, ``/metrics`` 160 ms, ``GET /v1/runs`` 8.3 s
(109 MB) during which ``/healthz`` did not answer, and memory peaked at 861 MB. This grows a
state file of that size with the store's own code (``tests/big_state.py``; cached under
``--cache`` and reused while the schema is the same), starts the real daemon on it
against the simulator (whose runs are the registry's active runs, polled with the batch
strategy), and measures, printed beside the targets:

- startup: spawn to ``/healthz`` answering and to ``/readyz`` 200 (first poll cycle done),
  with the same daemon on a peer file holding only the active runs (no history) in the same
  run, so the history's share of the startup is visible;
- ``/metrics``: 50 scrapes (median, max);
- ``GET /v1/runs``: first page (default 100, and 1,000), first page of a status, a rare
  label and ``active=true``;
- ``/healthz`` every 20 ms while a client walks every page of ``/v1/runs`` and
  ``omics-watcher list --json`` streams the whole registry at the same time (max, p99);
- RSS: the daemon's peak (VmHWM) at the end and ``list --json``'s peak (sampled);
- bytes per event: the file (WAL checkpointed) divided by the events in it.

    .venv/bin/python benchmarks/registry_bench.py                       # full size
    .venv/bin/python benchmarks/registry_bench.py --runs 30000 --events 200000   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from big_state import grow  # noqa: E402
from common import daemon, machine_info, percentile, simulator, vm_hwm_mb  # noqa: E402

from watcher.store.schema import MIGRATIONS  # noqa: E402

TOKEN = "bench-registry-token-0123456789"
TARGETS = {
    "metrics_ms": 50.0,
    "healthz_ms": 200.0,
    "first_page_s": 2.0,
    "rss_mb": 200.0,
    "ready_s": 5.0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, *, auth: bool = False, timeout: float = 120.0) -> tuple[int, bytes, float]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", f"Bearer {TOKEN}")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = resp.read()
            return resp.status, body, time.perf_counter() - started
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.perf_counter() - started
    except OSError:
        return 0, b"", time.perf_counter() - started


def build_state(args: argparse.Namespace, active: list[str]) -> tuple[Path, float]:
    """The cached big file (built if missing); returns its path and the build time (0: cached)."""
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    # The schema's text, not only its version: an unreleased migration may still change.
    schema = hashlib.sha256(repr(MIGRATIONS).encode()).hexdigest()[:12]
    name = f"state-{schema}-{args.runs}-{args.events}-{len(active)}-s{args.seed}.db"
    path = cache / name
    fresh = path.exists() and time.time() - path.stat().st_mtime < 5 * 86400
    if fresh and not args.rebuild:  # older: its history nears the default retention
        return path, 0.0
    for stale in cache.glob("state-*.db*"):
        stale.unlink()
    started = time.monotonic()
    grow(path.with_suffix(".tmp"), runs=args.runs, events=args.events, active=len(active))
    _rename_active(path.with_suffix(".tmp"), active, args.runs)
    path.with_suffix(".tmp").rename(path)
    return path, time.monotonic() - started


def _rename_active(path: Path, active: list[str], runs: int) -> None:
    """The last runs (the active ones) take the simulator's UUIDs, so polling finds them."""
    from big_state import run_uuid

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pairs = [(new, run_uuid(runs - len(active) + i)) for i, new in enumerate(active)]
        conn.executemany("UPDATE runs SET run_uuid = ? WHERE run_uuid = ?", pairs)
        conn.executemany("UPDATE events SET run_uuid = ? WHERE run_uuid = ?", pairs)
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def peer_state(big: Path, target: Path) -> None:
    """The same active runs without any history: the startup floor."""
    with sqlite3.connect(big) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    with sqlite3.connect(target) as conn:
        conn.execute("DELETE FROM events")
        conn.execute("DELETE FROM runs WHERE terminal = 1")
        conn.commit()
        conn.execute("VACUUM")


def configure(d: Any, state: Path, port: int) -> None:
    text = d.config_path.read_text()
    text = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
    text = text.replace("[server]\n", f'[server]\nadmin_token = "{TOKEN}"\n')
    text = text.replace("[polling]\n", '[polling]\nstrategy = "batch"\n')
    text = text.replace(f'path = "{d.state_path}"', f'path = "{state}"')
    d.config_path.write_text(text)


def startup(d: Any, base: str) -> tuple[float, float]:
    d.start()
    healthy = ready = 0.0
    deadline = time.time() + 300
    while time.time() < deadline and not ready:
        if not healthy and get(f"{base}/healthz", timeout=2)[0] == 200:
            healthy = time.time() - d.started_at
        if healthy and get(f"{base}/readyz", timeout=2)[0] == 200:
            ready = time.time() - d.started_at
        time.sleep(0.02)
    return healthy, ready


_WALKER = """
import json, sys, time, urllib.request
base, token = sys.argv[1], sys.argv[2]
cursor, pages, runs, started = None, 0, 0, time.perf_counter()
while True:
    url = base + "/v1/runs?limit=1000" + ("&cursor=" + cursor if cursor else "")
    request = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    page = json.loads(urllib.request.urlopen(request, timeout=120).read())
    pages, runs, cursor = pages + 1, runs + len(page["runs"]), page["next_cursor"]
    if cursor is None:
        break
print(json.dumps({"pages": pages, "runs": runs, "seconds": time.perf_counter() - started}))
"""


def probe_while(base: str, busy: Any) -> list[float]:
    """``/healthz`` latencies every 20 ms while ``busy()`` is true (from this thread only)."""
    health: list[float] = []
    while busy():
        status, _, took = get(f"{base}/healthz", timeout=30)
        health.append(took if status == 200 else float("inf"))
        time.sleep(0.02)
    return health


def under_load(d: Any, base: str) -> dict[str, Any]:
    """/healthz every 20 ms while another process walks every page of /v1/runs and
    `list --json` streams the registry; then as long again with nothing read (the peer)."""
    walker = subprocess.Popen(
        [sys.executable, "-c", _WALKER, base, TOKEN], stdout=subprocess.PIPE, text=True
    )
    started = time.perf_counter()
    sink = open(os.devnull, "wb")  # noqa: SIM115 - closed below, after the process
    lister = subprocess.Popen(
        [*d.command(), "list", "--json", "-c", str(d.config_path)], env=d.env, stdout=sink
    )
    peak = [0.0]
    ps = psutil.Process(lister.pid)

    def busy() -> bool:
        if lister.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], ps.memory_info().rss / 2**20)
        list_done = lister.poll() is not None
        if list_done and "list_s" not in times:
            times["list_s"] = time.perf_counter() - started
        return walker.poll() is None or not list_done

    times: dict[str, float] = {}
    health = probe_while(base, busy)
    loaded = time.perf_counter() - started
    sink.close()
    walk = json.loads(walker.stdout.read() if walker.stdout else "{}")
    until = time.perf_counter() + loaded
    idle = probe_while(base, lambda: time.perf_counter() < until)
    return {
        "healthz_max_ms": max(health) * 1000,
        "healthz_p99_ms": (percentile(health, 99) or 0) * 1000,
        "healthz_samples": len(health),
        "idle_healthz_max_ms": max(idle) * 1000,
        "idle_healthz_p99_ms": (percentile(idle, 99) or 0) * 1000,
        "walk": walk,
        "list_json_s": times.get("list_s"),
        "list_json_rss_mb": peak[0],
        "list_exit": lister.returncode,
    }


def measure(d: Any, base: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    scrapes = [get(f"{base}/metrics")[2] for _ in range(50)]
    out["metrics_ms"] = {"median": percentile(scrapes, 50), "max": max(scrapes)}
    out["metrics_ms"] = {k: v * 1000 for k, v in out["metrics_ms"].items()}
    pages = {}
    for name, query in (
        ("default", ""),
        ("limit_1000", "limit=1000"),
        ("status_FAILED", "status=FAILED&limit=1000"),
        ("label_rare", "label=rare%3Dyes&limit=1000"),
        ("label_none", "label=none%3Dnone"),
        ("active", "active=true&limit=1000"),
    ):
        status, body, took = get(f"{base}/v1/runs?{query}", auth=True)
        pages[name] = {"status": status, "s": took, "runs": len(json.loads(body)["runs"])}
    out["first_page"] = pages
    status, body, took = get(f"{base}/v1/events?type=nope&limit=1000", auth=True)
    out["events_type_scan_s"] = took
    out["load"] = under_load(d, base)
    again = [get(f"{base}/metrics")[2] for _ in range(50)]
    out["metrics_after_ms"] = {"median": percentile(again, 50), "max": max(again)}
    out["metrics_after_ms"] = {k: v * 1000 for k, v in out["metrics_after_ms"].items()}
    out["daemon_vm_hwm_mb"] = vm_hwm_mb(d.proc.pid) if d.proc else None
    return out


def bytes_per_event(path: Path, events: int) -> float:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size / max(1, events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--active", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache", default="/tmp/omics-registry-bench")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine_info(), "load_before": os.getloadavg()}
    sim_config = {"runs": args.active, "seed": args.seed, "running_seconds": [3600, 7200]}
    with simulator(sim_config) as sim:
        big, built = build_state(args, sim.runs)
        report["build_seconds"] = built
        report["bytes_per_event"] = bytes_per_event(big, args.events)
        report["file_mb"] = big.stat().st_size / 2**20
        with daemon(sim, rate=20, interval=30) as peer_d:
            peer = peer_d.workdir / "peer.db"
            peer_state(big, peer)
            port = free_port()
            configure(peer_d, peer, port)
            report["peer_startup_s"] = startup(peer_d, f"http://127.0.0.1:{port}")
        with daemon(sim, rate=20, interval=30) as d:
            work = d.workdir / "big.db"
            shutil.copyfile(big, work)
            port = free_port()
            configure(d, work, port)
            base = f"http://127.0.0.1:{port}"
            report["startup_s"] = startup(d, base)
            report.update(measure(d, base))
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=2, default=str))
    print_summary(report, args)


def print_summary(r: dict[str, Any], args: argparse.Namespace) -> None:
    load = r["load"]
    rows = [
        (
            "/metrics max (median) ms",
            r["metrics_ms"]["max"],
            r["metrics_ms"]["median"],
            "metrics_ms",
        ),
        (
            "/healthz max (p99) ms under load",
            load["healthz_max_ms"],
            load["healthz_p99_ms"],
            "healthz_ms",
        ),
        (
            "first page /v1/runs s (limit 1000)",
            r["first_page"]["default"]["s"],
            r["first_page"]["limit_1000"]["s"],
            "first_page_s",
        ),
        (
            "daemon RSS peak MB (list --json peak)",
            r["daemon_vm_hwm_mb"] or 0,
            load["list_json_rss_mb"],
            "rss_mb",
        ),
        ("startup to ready s (to /healthz)", r["startup_s"][1], r["startup_s"][0], "ready_s"),
    ]
    size = f"{args.runs} runs, {args.events} events, {args.active} active"
    print(f"\nregistry {size}; load {r['load_before']} -> {r['load_after']}")
    for label, value, aside, key in rows:
        verdict = "met" if value <= TARGETS[key] else "MISSED"
        print(f"  {label:44s} {value:9.3f} ({aside:.3f})  target <= {TARGETS[key]:g}  {verdict}")
    healthy, ready = r["peer_startup_s"]
    print(f"  peer startup without history: ready {ready:.3f} s, /healthz {healthy:.3f} s")
    print(f"  every page of /v1/runs: {load['walk']}; list --json {load['list_json_s']:.1f} s")
    idle_max, idle_p99 = load["idle_healthz_max_ms"], load["idle_healthz_p99_ms"]
    print(
        f"  peer: /healthz with nothing read, same daemon, as long: max {idle_max:.1f} ms, "
        f"p99 {idle_p99:.1f} ms"
    )
    after = r["metrics_after_ms"]
    print(
        f"  /metrics again after the load: max {after['max']:.1f} ms, "
        f"median {after['median']:.1f} ms"
    )
    per_event, size_mb = r["bytes_per_event"], r["file_mb"]
    print(f"  bytes per event (whole file / events): {per_event:.0f}; file {size_mb:.0f} MB")


if __name__ == "__main__":
    main()
