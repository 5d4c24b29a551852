"""Retention and compact event storage: what a user of a months-old state file sees.

- Pruning deletes runs finished longer ago than ``retention_days`` with their events,
  deliveries and dead letters once every delivery is settled (one still owed keeps its run:
  ``test_retention_owed.py``); active runs keep their whole history; run-less events go by age.
- End to end through the real daemon: with a retention of seconds, finished runs vanish from
  ``list``, ``/v1/events`` and the file's rows while the active run's events stay.
- A state file written before this version migrates: its events are still readable and its
  pending deliveries are sent with the same id and byte-identical body.
- An event costs at most 700 bytes on disk, everything included (the figure at larger sizes
  comes from ``benchmarks/store_size_bench.py``).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import (
    Processes,
    clean_env,
    daemon_config,
    free_port,
    list_runs,
    make_client,
    run_cli,
    start_daemon,
    start_simulator,
    state_file_before,
    stop,
    wait_for,
    write_config,
)

from watcher.events import Event, RunState, new_event_id
from watcher.omics.limiter import PacingLimiter
from watcher.polling.discovery import Discovery, WatchOptions
from watcher.retention import Pruner, RetentionOptions
from watcher.simulator import SimulatorConfig, running_simulator
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore
from watcher.store.codec import decode_body, encode_body
from watcher.store.schema import MIGRATIONS
from watcher.transitions import detect, not_found_event

T0 = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TERMINAL = frozenset({"SUCCESS", "FAILED"})
TOKEN = "retention-admin-token-0123456789abcdef"


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("runs", "events", "outbox")
        }
    finally:
        conn.close()


def observe(store: Store, run: str, prev: str | None, status: str, at: datetime) -> Event:
    """Record ``prev -> status`` of ``run`` the way the poller does, routed to two notifiers."""
    before = RunState(run, "prj", prev, at, {"team": "ngs"}) if prev else None
    metadata = {"RunId": run, "Status": status, "Input": '{"wf.sample": "s-1"}'}
    cur = RunState(run, "prj", status, at, {"team": "ngs"}, metadata)
    event = detect(before, cur, terminal=TERMINAL)
    assert event is not None
    assert store.record_observation(cur, event, notifiers=["hook", "mail"])
    return event


def prune(store: Store, clock: Clock, retention: timedelta) -> Any:
    pruner = Pruner(
        store=SqliteStore(store),
        options=RetentionOptions(
            retention_seconds=retention.total_seconds(),
            batch_runs=1,  # several steps, as on a big file
            batch_events=2,
            pause_seconds=0,
        ),
        clock=clock,
    )
    try:
        return asyncio.run(pruner.prune_once())
    finally:
        pruner.close()


@pytest.fixture
def store_and_clock(tmp_path: Path) -> Iterator[tuple[Store, Clock, Path]]:
    clock = Clock(T0)
    path = tmp_path / "state.db"
    with Store.open(path, clock=clock) as store:
        yield store, clock, path


def test_finished_runs_leave_with_their_history_active_runs_keep_everything(
    store_and_clock: tuple[Store, Clock, Path],
) -> None:
    store, clock, path = store_and_clock
    done, active, gone, recent = "run-done", "run-active", "run-gone", "run-recent"
    store.track([TrackRequest(r, "prj", {"team": "ngs"}) for r in (done, active, gone, recent)])
    observe(store, done, None, "RUNNING", T0)
    observe(store, done, "RUNNING", "FAILED", T0 + timedelta(hours=1))
    dead, _delivered_below = store.pending_deliveries(limit=2)
    store.mark_dead(dead.id, error="HTTP 500")  # a dead letter and a delivery
    observe(store, active, None, "QUEUED", T0)
    observe(store, active, "QUEUED", "RUNNING", T0 + timedelta(hours=2))
    gone_run = store.get_run(gone)
    assert gone_run is not None
    clock.now = T0 + timedelta(hours=3)
    assert store.record_not_found(
        gone, not_found_event(gone_run, now=clock.now), notifiers=["hook"]
    )
    digest = Event("digest", new_event_id(T0), T0, {"run_group": "g1", "runs": []})
    assert store.record_event(digest, notifiers=["hook"])
    clock.now = T0 + 31 * DAY
    observe(store, recent, None, "SUCCESS", clock.now)
    # Every delivery settled: a delivery still owed keeps its run (test_retention_owed.py).
    for delivery in store.pending_deliveries(limit=100):
        store.mark_delivered(delivery.id)
    # Delivered rows stay as the runs' delivery history until retention removes the run.
    assert counts(path) == {"runs": 4, "events": 7, "outbox": 12}

    result = prune(store, clock, retention=30 * DAY)

    assert (result.runs, result.events) == (2, 4)
    assert [r.run_uuid for r in store.list_runs()] == [active, recent]
    assert {e.run_uuid for e in store.events(limit=100)} == {active, recent}
    assert [e.status for e in store.events(run_uuid=active)] == ["RUNNING", "QUEUED"]
    assert store.pending_deliveries(limit=100) == []
    assert store.dead_letters() == []
    assert counts(path) == {"runs": 2, "events": 3, "outbox": 6}
    kept = [store.run_history(run) for run in (active, recent)]
    states = {d.state for history in kept if history for entry in history for d in entry.deliveries}
    assert states == {"delivered"}
    assert store.count_by_status() == {"RUNNING": 1, "SUCCESS": 1}
    # A second pass finds nothing more; the active run is still polled and recorded.
    assert (prune(store, clock, retention=30 * DAY).runs, store.get_run(active) is not None) == (
        0,
        True,
    )


def test_retention_measures_from_the_end_of_a_run_not_its_start(
    store_and_clock: tuple[Store, Clock, Path],
) -> None:
    store, clock, path = store_and_clock
    store.track([TrackRequest("long", "prj")])
    observe(store, "long", None, "RUNNING", T0)
    observe(store, "long", "RUNNING", "SUCCESS", T0 + 40 * DAY)  # ran for 40 days
    for delivery in store.pending_deliveries(limit=100):
        store.mark_delivered(delivery.id)
    clock.now = T0 + 45 * DAY
    assert prune(store, clock, retention=30 * DAY).runs == 0
    assert len(store.events(run_uuid="long")) == 2
    clock.now = T0 + 71 * DAY
    assert prune(store, clock, retention=30 * DAY).runs == 1
    assert counts(path) == {"runs": 0, "events": 0, "outbox": 0}


def test_new_files_give_pruned_pages_back(tmp_path: Path) -> None:
    clock = Clock(T0)
    path = tmp_path / "state.db"
    with Store.open(path, clock=clock) as store:
        runs = [f"run-{i:04d}" for i in range(300)]
        store.track([TrackRequest(r, "prj", {"note": "x" * 200}) for r in runs])
        for run in runs:
            observe(store, run, None, "SUCCESS", T0)
        for delivery in store.pending_deliveries(limit=1000):
            store.mark_delivered(delivery.id)
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        before = conn.execute("PRAGMA page_count").fetchone()[0]
        clock.now = T0 + 2 * DAY
        result = prune(store, clock, retention=DAY)
        after = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.close()
    assert result.runs == 300
    assert result.pages_released > 0
    assert after < before / 2


def _pre_retention_file(path: Path) -> tuple[Event, Event]:
    """A state file as the release before retention wrote it: TEXT bodies, metadata on the
    run, a pending delivery and a run stopped as not found. Returns (pending, stopped) events."""
    upto = next(i for i, step in enumerate(MIGRATIONS) if "stopped_at" in " ".join(step))
    conn = state_file_before(path, upto)
    ts = T0.timestamp()
    pending = Event(
        "run.status_changed",
        new_event_id(T0),
        T0,
        {"run_uuid": "old-1", "status": "RUNNING", "labels": {"team": "séquençage"}},
    )
    stopped = Event("run.not_found", new_event_id(T0), T0, {"run_uuid": "old-2"})
    conn.execute(
        "INSERT INTO runs (run_uuid, tracked_at, status, metadata, status_since) "
        "VALUES ('old-1', ?, 'RUNNING', '{\"RunId\":\"old-1\"}', ?)",
        (ts, ts),
    )
    conn.execute("INSERT INTO runs (run_uuid, tracked_at, stopped) VALUES ('old-2', ?, 1)", (ts,))
    for event in (pending, stopped):
        seq = conn.execute(
            "INSERT INTO events (id, type, run_uuid, recorded_at, body) VALUES (?, ?, ?, ?, ?)",
            (event.id, event.type, event.run_uuid, ts, event.to_json()),
        ).lastrowid
    conn.execute(
        "INSERT INTO outbox (event_seq, notifier, created_at, next_attempt_at) "
        "VALUES ((SELECT seq FROM events WHERE id = ?), 'hook', ?, ?)",
        (pending.id, ts, ts),
    )
    assert seq
    conn.close()
    return pending, stopped


def test_a_file_from_the_previous_release_migrates_and_keeps_its_deliveries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    pending, stopped = _pre_retention_file(path)
    clock = Clock(T0 + DAY)
    with Store.open(path, clock=clock) as store:
        (delivery,) = store.pending_deliveries()
        assert delivery.event.id == pending.id
        assert delivery.event.to_json() == pending.to_json()  # the exact body, resent
        assert [e.id for e in store.events()] == [stopped.id, pending.id]
        # New events are stored compactly beside the old ones.
        observe(store, "old-1", "RUNNING", "SUCCESS", clock.now)
        assert [e.status for e in store.events(run_uuid="old-1")] == ["SUCCESS", "RUNNING"]
        # The run stopped before the migration is finished since its last event: prunable.
        clock.now = T0 + 3 * DAY
        result = prune(store, clock, retention=2 * DAY)
        assert [r.run_uuid for r in store.list_runs()] == ["old-1"]
        assert result.runs == 1
    conn = sqlite3.connect(path)
    kinds = {row[0] for row in conn.execute("SELECT typeof(body) FROM events")}
    conn.close()
    assert kinds == {"text", "blob"}


def test_stored_bodies_read_back_exactly() -> None:
    for text in ('{"a":"séquençage ✅"}', "{}", json.dumps({"x": "y" * 5000})):
        stored = encode_body(text)
        assert isinstance(stored, bytes)
        assert decode_body(stored) == text
    assert decode_body('{"legacy":true}') == '{"legacy":true}'
    with pytest.raises(ValueError, match="unknown codec"):
        decode_body(b"\x7fnot ours")


def test_an_event_costs_at_most_800_bytes_on_disk(tmp_path: Path) -> None:
    """Grown through the store API as the daemon writes (the benchmark's own loop)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        from store_size_bench import grow  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    (result,) = grow(tmp_path / "state.db", [6000])
    assert result["events"] >= 6000
    # Every delivery stays recorded (state 'delivered', two notifiers per event): the history
    # `history RUN` shows costs about 100 bytes per row.
    assert result["outbox_rows"] == 2 * result["events"]
    assert result["bytes_per_event"] <= 800, result


# -- end to end: the real daemon ------------------------------------------------------------


RETENTION_SECONDS = 6.0


def test_daemon_prunes_finished_runs_and_keeps_the_active_ones(
    tmp_path: Path, procs: Processes
) -> None:
    sim = start_simulator(procs, tmp_path / "sim", "--runs", "0", "--seed", "31")
    quick = {"durations": [0.3, 0.3, 0.5], "kind": "finishing", "outcome": "SUCCESS"}
    finished = [sim.post("/_sim/runs", quick)["run_uuid"] for _ in range(3)]
    active = sim.post("/_sim/runs", {"durations": [600, 600, 600], "kind": "finishing"})["run_uuid"]
    port = free_port()
    settings = daemon_config(
        tmp_path,
        sim=sim,
        port=port,
        admin_token=TOKEN,
        interval_seconds=0.5,
        state={"retention_days": RETENTION_SECONDS / 86400},
    )
    config = write_config(tmp_path / "watcher.toml", settings)
    env = clean_env(tmp_path / "home")
    listing = "\n".join([*finished, active]) + "\n"
    done = run_cli("track", "-c", str(config), "-", env=env, cwd=tmp_path, stdin=listing)
    assert done.returncode == 0, done.stderr
    daemon = start_daemon(procs, config, port=port, env=env, admin_token=TOKEN)
    daemon.wait_ready(timeout=30)

    def events() -> list[dict[str, Any]]:
        reply = daemon.admin("GET", "/v1/events?limit=1000")
        assert reply.status == 200, reply.text
        return list(reply.json())

    # Each finished run's end was recorded (seen in the event log while it was there) ...
    ended: set[str] = set()

    def every_end_seen() -> bool:
        ended.update(e["data"]["run_uuid"] for e in events() if e["data"].get("terminal"))
        return ended >= set(finished)

    wait_for(every_end_seen, timeout=30, interval=0.2, what="the finished runs' last events")

    # ... and then, a retention later, they are gone from everywhere; the active run stays.
    def pruned() -> bool:
        runs = {row["run_uuid"] for row in list_runs(config, env=env)}
        logged = {e["data"]["run_uuid"] for e in events()}
        return runs == {active} and logged == {active}

    wait_for(pruned, timeout=60, interval=0.5, what="the finished runs to be pruned")
    db = tmp_path / "state.db"
    ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        runs = [r for (r,) in ro.execute("SELECT run_uuid FROM runs")]
        oldest = ro.execute(
            "SELECT min(recorded_at), count(*) FROM events WHERE run_uuid = ?", (active,)
        ).fetchone()
        others = ro.execute("SELECT count(*) FROM events WHERE run_uuid <> ?", (active,))
        assert others.fetchone()[0] == 0
    finally:
        ro.close()
    assert runs == [active]
    # The active run's first event is older than the retention and still there.
    wait_for(
        lambda: time.time() - oldest[0] > RETENTION_SECONDS + 1,
        timeout=30,
        interval=0.2,
        what="the active run's history to outlive the retention",
    )
    time.sleep(2)  # two more passes
    history = [e for e in events() if e["data"]["run_uuid"] == active]
    assert len(history) == oldest[1] >= 1
    assert history[-1]["data"]["previous_status"] is None  # its first observation is kept
    assert any(r.get("event") == "pruned" for r in daemon.logs())
    assert stop(daemon.proc, timeout=30) == 0


# -- discovery does not bring pruned runs back ---------------------------------------------


async def test_discovery_skips_runs_finished_longer_ago_than_the_retention(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_simulator(SimulatorConfig(runs=0, seed=5)) as sim:
        quick = {"durations": (0.1, 0.1, 0.1), "kind": "finishing", "outcome": "SUCCESS"}
        finished = [sim.submit_run(**quick) for _ in range(3)]  # type: ignore[arg-type]
        active = sim.submit_run(durations=(600.0, 600.0, 600.0), kind="finishing")
        await asyncio.sleep(1.0)
        client = make_client(sim, session, limiters={"default": PacingLimiter(20)})
        watch = [WatchOptions(project_id=sim.project_id, notify_existing=True)]
        with Store.open(tmp_path / "state.db") as store:
            later = Discovery(
                store=SqliteStore(store),
                source=client,
                watches=watch,
                terminal=frozenset({"SUCCESS"}),
                retention_seconds=60.0,
                wall_clock=lambda: time.time() + 3600,  # an hour on: the three are past it
            )
            assert await later.discover(0) == [active]
        with Store.open(tmp_path / "keep.db") as store:
            keep = Discovery(
                store=SqliteStore(store),
                source=client,
                watches=watch,
                terminal=frozenset({"SUCCESS"}),
            )
            assert sorted(await keep.discover(0)) == sorted([*finished, active])
