"""No whole-registry work on the loop (issue 13): pages, filters, counts, reads off the loop.

A grown state file (:mod:`big_state`: runs tracked and events recorded with the store's own
code) behind the real aiohttp app on 127.0.0.1. The sizes are small enough for CI; the
full-size figures (300,000 runs, 2,000,000 events) come from ``benchmarks/registry_bench.py``.
Behaviour only, no timings: paging returns every run exactly once while the registry
changes, the filters select what they say, bad parameters are 400 naming the parameter, the
counts behind ``/metrics`` follow every writer, and ``/healthz`` answers while big reads run.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from big_state import BigState, final_status, grow, labels_of, run_uuid
from support import state_file_before

from watcher import cli
from watcher.service.metrics import Metrics
from watcher.service.server import Health, build_app
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore
from watcher.store.schema import _RUN_COUNTS, MIGRATIONS

TOKEN = "adm-bounded-reads-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RUNS, EVENTS, ACTIVE = 4_000, 24_000, 150


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> BigState:
    """Built once per module; tests that write copy it first."""
    return grow(
        tmp_path_factory.mktemp("big") / "state.db", runs=RUNS, events=EVENTS, active=ACTIVE
    )


@pytest.fixture
def big_copy(big: BigState, tmp_path: Path) -> Path:
    target = tmp_path / "state.db"
    with sqlite3.connect(big.path) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


async def _client(store: Store) -> TestClient[web.Request, web.Application]:
    app = build_app(
        store=SqliteStore(store),
        metrics=Metrics(),
        health=Health(),
        admin_token=TOKEN,
        default_project_id="prj-big",
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def served(
    big_copy: Path,
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Store]]:
    with Store.open(big_copy) as store:
        client = await _client(store)
        try:
            yield client, store
        finally:
            await client.close()


async def _walk(client: TestClient[web.Request, web.Application], query: str) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        url = f"/v1/runs?{query}" + (f"&cursor={cursor}" if cursor else "")
        resp = await client.get(url, headers=AUTH)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        seen.extend(run["run_uuid"] for run in page["runs"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


async def test_pages_return_every_run_once_while_the_registry_changes(served: Any) -> None:
    client, store = served
    seen: list[str] = []
    cursor = None
    added = [str(run_uuid(10_000_000 + i)) for i in range(30)]
    removed = [run_uuid(n) for n in range(100, 3_000, 300)]
    pages = 0
    while True:
        url = "/v1/runs?limit=700" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url, headers=AUTH)).json()
        seen.extend(run["run_uuid"] for run in page["runs"])
        cursor, pages = page["next_cursor"], pages + 1
        if pages == 2:  # a CLI tracks and untracks between two pages
            store.track(TrackRequest(u, "prj-big") for u in added)
            store.untrack(removed)
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    stayed = {run_uuid(n) for n in range(RUNS)} - set(removed)
    assert stayed <= set(seen)  # every run tracked throughout, exactly once
    assert set(added) <= set(seen)  # tracked behind the cursor: still reached
    assert pages == -(-len(seen) // 700)


async def test_filters_select_what_they_say(served: Any) -> None:
    client, _ = served
    expect_running = [
        run_uuid(n) for n in range(RUNS) if final_status(n, RUNS, ACTIVE) == "RUNNING"
    ]
    assert await _walk(client, "status=RUNNING&limit=1000") == expect_running
    assert await _walk(client, "active=true&limit=64") == expect_running
    failed = [run_uuid(n) for n in range(RUNS) if final_status(n, RUNS, ACTIVE) == "FAILED"]
    assert await _walk(client, "status=FAILED") == failed
    rare = [run_uuid(n) for n in range(RUNS) if labels_of(n).get("rare") == "yes"]
    assert await _walk(client, "label=rare%3Dyes&limit=3") == rare
    both = [u for u in rare if labels_of(int(u[-8:], 16))["team"] == "t7"]
    assert await _walk(client, "label=rare%3Dyes&label=team%3Dt7") == both
    assert await _walk(client, "status=NOPE") == []
    resp = await client.get("/v1/runs", headers=AUTH)
    page = await resp.json()
    assert len(page["runs"]) == 100
    assert page["next_cursor"]
    assert set(page["runs"][0]) >= {"run_uuid", "status", "labels", "terminal", "tracked_at"}


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("cursor=abc", "cursor"),
        ("cursor=", "cursor"),
        ("cursor=%00", "cursor"),
        ("status=", "status"),
        ("status=%1b%5b31m", "status"),
        ("label=noequals", "label"),
        ("label=%3Dv", "label"),
        ("active=yes", "active"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    served: Any, query: str, name: str
) -> None:
    client, _ = served
    resp = await client.get(f"/v1/runs?{query}", headers=AUTH)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error.startswith(f"{name}:")
    assert "\x1b" not in error
    assert "\x00" not in error


async def test_events_filter_by_run_and_type(served: Any) -> None:
    client, store = served
    target = run_uuid(42)
    resp = await client.get(f"/v1/events?run_uuid={target.upper()}&limit=1000", headers=AUTH)
    found = await resp.json()
    assert found
    assert {e["data"]["run_uuid"] for e in found} == {target}
    assert [e["id"] for e in found] == [e.id for e in store.events(limit=1000, run_uuid=target)]
    resp = await client.get("/v1/events?type=run.status_changed&limit=5", headers=AUTH)
    assert [e["type"] for e in await resp.json()] == ["run.status_changed"] * 5
    resp = await client.get("/v1/events?type=run.stuck", headers=AUTH)
    assert await resp.json() == []
    for bad, name in (("run_uuid=nope", "run_uuid"), ("type=", "type"), ("limit=0", "limit")):
        resp = await client.get(f"/v1/events?{bad}", headers=AUTH)
        assert (resp.status, (await resp.json())["error"].split(":")[0]) == (400, name)


async def test_healthz_answers_while_big_reads_run(served: Any) -> None:
    client, _ = served
    # Reads that scan the whole registry or event log (no match): they queue on the worker.
    heavy = [
        asyncio.ensure_future(client.get(path, headers=AUTH))
        for _ in range(6)
        for path in ("/v1/runs?label=none%3Dnone&limit=1000", "/v1/events?type=nope&limit=1000")
    ]
    answered_meanwhile = 0
    while not all(task.done() for task in heavy):
        resp = await client.get("/healthz")
        assert resp.status == 200
        if not all(task.done() for task in heavy):
            answered_meanwhile += 1
        metrics = await client.get("/metrics")
        assert metrics.status == 200
    assert answered_meanwhile >= 1
    for task in heavy:
        resp = task.result()
        assert resp.status == 200
        body = await resp.json()
        assert body in ([], {"runs": [], "next_cursor": None})


def test_counts_follow_every_writer(store: Store) -> None:
    def by_group_by() -> dict[str | None, int]:
        rows = store._db.query(  # the reference: the old whole-table query
            "SELECT status, count(*) FROM runs WHERE tracked = 1 GROUP BY status"
        )
        return {status: int(n) for status, n in rows}

    uuids = [run_uuid(n) for n in range(6)]
    store.track(TrackRequest(u) for u in uuids)
    assert store.count_by_status() == by_group_by() == {None: 6}
    with store._db.write() as conn:
        conn.execute("UPDATE runs SET status = 'RUNNING' WHERE run_uuid IN (?, ?)", uuids[:2])
        conn.execute(
            "UPDATE runs SET status = 'SUCCESS', terminal = 1 WHERE run_uuid = ?", uuids[2:3]
        )
    store.untrack(uuids[:1])
    assert store.count_by_status() == by_group_by() == {None: 3, "RUNNING": 1, "SUCCESS": 1}
    store.track([TrackRequest(uuids[0])])  # re-tracked: counted again under its last status
    with store._db.write() as conn:  # pruning deletes rows
        conn.execute("DELETE FROM runs WHERE run_uuid = ?", (uuids[2],))
    assert store.count_by_status() == by_group_by() == {None: 3, "RUNNING": 2}


def test_migration_fills_counts_of_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = state_file_before(path, MIGRATIONS.index(_RUN_COUNTS))
    rows = [(run_uuid(n), ["A", "B", None][n % 3], n % 5 != 0) for n in range(30)]
    conn.executemany(
        "INSERT INTO runs (run_uuid, status, tracked, tracked_at) VALUES (?, ?, ?, 0)", rows
    )
    conn.close()
    with Store.open(path) as store:
        expect = Counter(status for _, status, tracked in rows if tracked)
        assert store.count_by_status() == dict(expect)
        assert len(store.snapshot()[1]) == sum(1 for *_, tracked in rows if tracked)


def test_list_filters_and_streams_json(
    big: BigState, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[state]\npath = "{big.path}"\n')

    def listed(*args: str) -> Any:
        assert cli.main(["list", "-c", str(config), *args]) == 0
        return capsys.readouterr().out

    everything = json.loads(listed("--json"))
    assert [r["run_uuid"] for r in everything] == [run_uuid(n) for n in range(RUNS)]
    with Store.open(big.path) as store:  # byte for byte the old single json.dump
        assert (
            listed("--json")
            == json.dumps([r.to_json_dict() for r in store.list_runs()], ensure_ascii=False) + "\n"
        )
    active = json.loads(listed("--json", "--active", "--limit", "1200"))
    assert [r["status"] for r in active] == ["RUNNING"] * ACTIVE
    assert len(json.loads(listed("--json", "--limit", "1001"))) == 1001
    assert listed("--json", "--status", "NOPE") == "[]\n"
    text = listed("--status", "FAILED", "--label", "team=t3", "--limit", "5").splitlines()
    assert text[0].split() == ["RUN_UUID", "PROJECT", "STATUS", "TERMINAL", "LAST_POLLED", "LABELS"]
    assert len(text) == 6
    assert all(" FAILED " in line for line in text[1:])
    assert cli.main(["list", "-c", str(config), "--limit", "0"]) == 2


def test_loop_side_reads_use_indexes(big: BigState) -> None:
    """What the loop reads at startup, per scrape and per finished group is an index search,
    never a scan of the whole registry (the plan, not a timing)."""
    from watcher.store.groups import _GROUP_MEMBERS
    from watcher.store.registry import _SELECT_ACTIVE

    with Store.open(big.path) as store:
        plans = {
            "snapshot": _SELECT_ACTIVE,
            "group_members": _GROUP_MEMBERS,
            "counts": "SELECT status, runs FROM run_counts WHERE runs > 0",
        }
        for name, sql in plans.items():
            params = ("g1",) if "?" in sql else ()
            plan = " ".join(row[3] for row in store._db.query("EXPLAIN QUERY PLAN " + sql, params))
            assert "SCAN runs" not in plan, (name, plan)
        assert [m.run_uuid for m in store.group_members("g1")] == [
            run_uuid(n) for n in range(50, 100)
        ]
