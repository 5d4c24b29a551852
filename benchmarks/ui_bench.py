"""Server time of each status page at 300,000 tracked runs (issue 16: "every page <= 50 ms").

Why: the page's reads run against the whole registry; a query that is cheap on a test file can
read every run of a status, every active run, or every row of a label filter on a lab's
long-lived file. This builds such a file and asks each page of it repeatedly.

The file: the registry benchmark's cached 300,000-run / 2,000,000-event state (built by
``tests/big_state.py``; reused from ``--registry-cache`` when present, grown otherwise), copied
and migrated to the current schema, then given a realistic present on top of its history:

- the 2,000 active runs become 20 run groups of 96 samples (``batch-01``..``batch-20``) in
  every state (succeeded, failed with a failure reason, running, queued) plus 80 runs of
  ``g``-groups still running; one run in ten of the history is ``FAILED`` (30,000 runs);
- every event has a delivered outbox row (history kept, as issue 14 keeps it), the newest 300
  a pending row for a notifier that is failing, and 40 dead letters.

The page is served in-process (:class:`watcher.ui.pages.StatusPage` on a real aiohttp site on
127.0.0.1, as the daemon installs it) and asked over HTTP by a client in the same process.
**Server time** is measured by an outermost middleware: from the request's arrival at the app to
its rendered answer (session check, off-loop reads, template), sending excluded. For the live
feed (a stream that never returns) the time to the first chunk at the client is printed, with a
``Last-Event-ID`` 100 events back so the replay is read.

    .venv/bin/python benchmarks/ui_bench.py                  # 300,000 runs
    .venv/bin/python benchmarks/ui_bench.py --repeat 50      # more samples per page
    .venv/bin/python benchmarks/ui_bench.py --runs 30000 --events 200000   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import re
import shutil
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, CookieJar, web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from big_state import grow, run_uuid  # noqa: E402
from common import machine_info, percentile  # noqa: E402

from watcher.events import RunState  # noqa: E402
from watcher.service.metrics import Metrics  # noqa: E402
from watcher.statuses import Statuses  # noqa: E402
from watcher.store import Store  # noqa: E402
from watcher.store.api import SqliteStore  # noqa: E402
from watcher.store.db import Database, to_ts  # noqa: E402
from watcher.store.journal import append_event  # noqa: E402
from watcher.store.schema import MIGRATIONS, migrate  # noqa: E402
from watcher.transitions import detect  # noqa: E402
from watcher.ui.options import UiOptions  # noqa: E402
from watcher.ui.pages import StatusPage  # noqa: E402

TOKEN = "bench-ui-token-0123456789abcdef"
AIM_MS = 50.0
GROUPS, SAMPLES = 20, 96
# Per group of 96: where each sample is (succeeded, failed, running, queued), varied by group.
MIX = ((40, 6, 30, 20), (90, 6, 0, 0), (10, 2, 20, 64), (60, 12, 24, 0))
TERMINAL = frozenset({"SUCCESS", "FAILED"})


def _schema_key() -> str:
    return hashlib.sha256(repr(MIGRATIONS).encode()).hexdigest()[:12]


def base_file(args: argparse.Namespace) -> Path:
    """The big history: the registry benchmark's cached file, else grown here."""
    pattern = f"state-*-{args.runs}-{args.events}-{args.active}-s*.db"
    found = sorted(Path(args.registry_cache).glob(pattern), key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1]
    target = Path(args.cache) / f"base-{args.runs}-{args.events}-{args.active}.db"
    if not target.exists():
        print(f"growing {target} (no cached file in {args.registry_cache}) ...", flush=True)
        grow(target.with_suffix(".tmp"), runs=args.runs, events=args.events, active=args.active)
        target.with_suffix(".tmp").rename(target)
    return target


def build_state(args: argparse.Namespace) -> Path:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"ui-{_schema_key()}-{args.runs}-{args.events}-{args.active}.db"
    if path.exists() and not args.rebuild:
        return path
    base = base_file(args)
    started = time.monotonic()
    print(f"copying {base} ...", flush=True)
    tmp = path.with_suffix(".tmp")
    shutil.copyfile(base, tmp)
    with Store.open(tmp):
        pass  # migrated to the current schema
    present(tmp, runs=args.runs, active=args.active)
    tmp.rename(path)
    print(f"built {path} in {time.monotonic() - started:.0f} s", flush=True)
    return path


def _failure(n: int) -> dict[str, str]:
    return {
        "task": f"align_{n % 7}",
        "message": f"Essential container in task exited with return code {n % 3 + 1}",
        "stderr_tail": "\n".join(f"[{i}] bwa mem: reading sample {n}" for i in range(40)),
    }


def present(path: Path, *, runs: int, active: int) -> None:
    """Groups of 96 in every state, failures with reasons, delivered/pending/dead deliveries."""
    now = datetime.now(UTC)
    db = Database.connect(path, busy_timeout=30, setup=migrate)
    try:
        with db.write() as conn:
            first = runs - active
            for i in range(min(active, GROUPS * SAMPLES)):
                n, group, k = first + i, i // SAMPLES, i % SAMPLES
                done, failed, running, _ = MIX[group % len(MIX)]
                status = (
                    "SUCCESS"
                    if k < done
                    else "FAILED"
                    if k < done + failed
                    else "RUNNING"
                    if k < done + failed + running
                    else "QUEUED"
                )
                uid = conn.execute("SELECT run_uuid FROM runs WHERE rowid = ?", (n + 1,)).fetchone()
                _set(conn, uid[0], n, f"batch-{group + 1:02d}", status, now - timedelta(minutes=i))
            conn.execute(
                "INSERT INTO outbox (event_seq, notifier, state, attempts, created_at, "
                "next_attempt_at, settled_at) SELECT seq, 'slack', 'delivered', 1, recorded_at, "
                "recorded_at, recorded_at FROM events"
            )
            newest = int(conn.execute("SELECT max(seq) FROM events").fetchone()[0])
            ts = to_ts(now)
            conn.execute(
                "INSERT INTO outbox (event_seq, notifier, state, attempts, created_at, "
                "next_attempt_at, last_error) SELECT seq, 'webhook', 'pending', 3, ?, ?, "
                "'HTTP 503 from the receiver' FROM events WHERE seq > ?",
                (ts - 600, ts + 60, newest - 300),
            )
            conn.execute(
                "INSERT INTO outbox (event_seq, notifier, state, attempts, created_at, "
                "next_attempt_at, last_error, dead_at, settled_at) SELECT seq, 'webhook', 'dead', "
                "8, ?, ?, 'HTTP 503 from the receiver', ?, ? FROM events "
                "WHERE seq > ? AND seq <= ?",
                (ts - 9000, ts, ts - 3000, ts - 3000, newest - 340, newest - 300),
            )
    finally:
        db.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _set(conn: sqlite3.Connection, uid: str, n: int, group: str, status: str, at: datetime) -> None:
    labels = {"team": f"t{n % 20}", "run_group": group, "sample": f"S{n % SAMPLES:03d}"}
    prev = RunState(uid, "prj-big", "RUNNING", at - timedelta(minutes=30), labels, {})
    cur = RunState(uid, "prj-big", status, at, labels, {"Status": status, "RunUuid": uid})
    event = detect(prev, cur, terminal=TERMINAL)
    if event is not None:
        if status == "FAILED":
            event = dataclasses.replace(event, data={**event.data, "failure": _failure(n)})
        append_event(conn, event, [], to_ts(at))
    conn.execute(
        "UPDATE runs SET labels = json(?), status = ?, terminal = ?, status_since = ? "
        "WHERE run_uuid = ?",
        (_json(labels), status, int(status in TERMINAL), to_ts(at), uid),
    )


def _json(labels: dict[str, str]) -> str:
    import json

    return json.dumps(labels, sort_keys=True)


# -- serving and asking ----------------------------------------------------------------------


def timing_middleware(times: dict[str, list[float]]) -> Any:
    @web.middleware
    async def timed(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        key = request.headers.get("X-Bench-Page")
        if key:
            times.setdefault(key, []).append(time.perf_counter() - started)
        return response

    return timed


async def login(client: ClientSession, base: str) -> None:
    async with client.get(base + "/ui/login") as resp:
        text = await resp.text()
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found, "no login form"
    data = {"token": TOKEN, "csrf": found.group(1)}
    async with client.post(base + "/ui/login", data=data, allow_redirects=False) as resp:
        assert resp.status == 303, resp.status


def pages(store: Store) -> dict[str, str]:
    """Each page asked, by the name printed."""
    failed = store.latest_in_statuses(["FAILED"], limit=1)[0].run_uuid
    some = run_uuid(1234)
    prefix = store.latest_in_statuses(["RUNNING"], limit=1)[0].run_uuid[:6]
    return {
        "overview": "/ui/",
        "runs (no filter)": "/ui/runs",
        "runs status=FAILED": "/ui/runs?status=FAILED",
        "runs status=RUNNING": "/ui/runs?status=RUNNING",
        "runs status=NOPE (none)": "/ui/runs?status=NOPE",
        "runs run_group=batch-07": "/ui/runs?run_group=batch-07",
        "runs run_group=nope (none)": "/ui/runs?run_group=nope",
        "runs label=rare=yes": "/ui/runs?label=rare%3Dyes",
        "runs label=team=nope (none)": "/ui/runs?label=team%3Dnope",
        "runs project=prj-big": "/ui/runs?project=prj-big",
        "runs project=nope (none)": "/ui/runs?project=nope",
        f"runs prefix={prefix}": f"/ui/runs?prefix={prefix}",
        "runs prefix=ffffffff (none)": "/ui/runs?prefix=ffffffff",
        "run detail (failed, group)": f"/ui/runs/{failed}",
        "run detail (history)": f"/ui/runs/{some}",
    }


async def feed_first_answer(client: ClientSession, base: str, last_seq: int) -> float:
    started = time.perf_counter()
    headers = {"Last-Event-ID": str(max(0, last_seq - 100))}
    async with client.get(base + "/ui/events", headers=headers) as resp:
        assert resp.status == 200, resp.status
        seen = b""
        while b"event: run-event" not in seen:
            seen += await resp.content.readany()
        return time.perf_counter() - started


async def measure(path: Path, repeat: int) -> tuple[dict[str, list[float]], list[float]]:
    times: dict[str, list[float]] = {}
    with Store.open(path) as store:
        asked = pages(store)
        last_seq = store.last_event_seq()
        adapted = SqliteStore(store)  # the daemon's view of the state (watcher.store.api)
        page = StatusPage(
            UiOptions(admin_token=TOKEN),
            store=adapted,
            metrics=Metrics(),
            statuses=Statuses(),
            not_ready_reason=lambda: None,
        )
        app = web.Application(middlewares=[timing_middleware(times)])
        page.install(app)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        feed: list[float] = []
        try:
            async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as client:
                await login(client, base)
                for name, url in asked.items():  # warm: the first answer fills caches
                    async with client.get(base + url) as resp:
                        assert resp.status == 200, (name, resp.status)
                        body = await resp.read()
                        assert len(body) < 150_000, (name, len(body))
                for _ in range(repeat):
                    for name, url in asked.items():
                        async with client.get(base + url, headers={"X-Bench-Page": name}) as r:
                            await r.read()
                    feed.append(await feed_first_answer(client, base, last_seq))
        finally:
            await runner.cleanup()
            await adapted.close()
    return times, feed


def _ms(values: list[float], q: float) -> str:
    found = percentile(values, q)
    return "-" if found is None else f"{found * 1000:7.1f}"


def report(times: dict[str, list[float]], feed: list[float], args: argparse.Namespace) -> None:
    info = machine_info()
    print(f"\nmachine: {info.get('cpu')}, {info.get('cores')} cores")
    print(f"state: {args.runs:,} runs, {args.events:,} events, {args.active:,} active")
    print(f"{'page':34} {'median ms':>9} {'p95 ms':>7}  (aim <= {AIM_MS:.0f} ms server time)")
    worst = 0.0
    for name, values in times.items():
        p95 = percentile(values, 95) or 0.0
        worst = max(worst, p95)
        mark = "" if p95 * 1000 <= AIM_MS else "  OVER"
        print(f"{name:34} {_ms(values, 50):>9} {_ms(values, 95):>7}{mark}")
    print(f"{'live feed, first event (client)':34} {_ms(feed, 50):>9} {_ms(feed, 95):>7}")
    print(f"samples per page: {len(feed)}; load average: {os.getloadavg()}")
    print(f"worst p95 server time: {worst * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300_000, help="tracked runs (%(default)s)")
    parser.add_argument("--events", type=int, default=2_000_000, help="events (%(default)s)")
    parser.add_argument("--active", type=int, default=2_000, help="active runs (%(default)s)")
    parser.add_argument("--repeat", type=int, default=30, help="asks per page (%(default)s)")
    parser.add_argument("--cache", default="/tmp/omics-ui-bench", help="(%(default)s)")
    parser.add_argument(
        "--registry-cache", default="/tmp/omics-registry-bench", help="(%(default)s)"
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached state file")
    args = parser.parse_args()
    path = build_state(args)
    print(f"load average before: {os.getloadavg()}", flush=True)
    times, feed = asyncio.run(measure(path, args.repeat))
    report(times, feed, args)


if __name__ == "__main__":
    main()
