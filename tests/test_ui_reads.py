"""The status page's bounded reads (``watcher/store/overview.py``) give the same answers as a
plain reading of the registry: pages read through a window still return every matching run
exactly once and in order; the latest failures are the newest across failing statuses; the
run groups in progress are the first by name, counted right. Real state files; the speed
itself is measured by ``benchmarks/ui_bench.py``."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import state_file_before

from watcher.service.metrics import Metrics
from watcher.statuses import Statuses
from watcher.store import Store, TrackedRun, TrackRequest
from watcher.store.api import SqliteStore
from watcher.store.overview import _ACTIVE_GROUPS, _LATEST_IN_STATUS, GroupCount
from watcher.store.registry import RunFilter
from watcher.store.schema import _UI_READS, MIGRATIONS
from watcher.ui.options import UiOptions
from watcher.ui.pages import StatusPage
from watcher.ui.views import RunsQuery

RUNS = 240
STATUSES = ("SUCCESS", "FAILED", "RUNNING", "QUEUED", "EXECUTOR_ERROR", None)
TERMINAL = Statuses().terminal


def _uuids(count: int) -> list[str]:
    rng = random.Random(16)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


def _labels(n: int) -> dict[str, str]:
    labels = {"team": f"t{n % 4}", "run_group": f"g{n // 24}"}
    if n % 37 == 5:
        labels["rare"] = "yes"
    return labels


def _set_status(store: Store, uid: str, status: str | None, since: float) -> None:
    with store._db.write() as conn:  # the columns the recorder writes
        conn.execute(
            "UPDATE runs SET status = ?, terminal = ?, status_since = ? WHERE run_uuid = ?",
            (status, int(status in TERMINAL), since, uid),
        )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state.db") as opened:
        uuids = _uuids(RUNS)
        opened.track(TrackRequest(u, f"p{n % 3}", _labels(n)) for n, u in enumerate(uuids))
        for n, u in enumerate(uuids):
            _set_status(opened, u, STATUSES[n % len(STATUSES)], 1_000.0 + n)
        opened.untrack(uuids[200:205])
        yield opened


def _matches(run: TrackedRun, where: RunFilter) -> bool:
    return (
        (where.status is None or run.status == where.status)
        and (where.project_id is None or run.project_id == where.project_id)
        and (where.uuid_prefix is None or run.run_uuid.startswith(where.uuid_prefix))
        and all(run.labels.get(k) == v for k, v in where.labels.items())
    )


def _walk(store: Store, where: RunFilter) -> tuple[list[str], int]:
    """Every run the pages give, in order, and how many pages ended in their window."""
    seen: list[str] = []
    cursor, windows_ended = None, 0
    for _ in range(RUNS):
        page = store.page_runs_window(where, limit=5, cursor=cursor, windows=(17, 29))
        assert len(page.runs) <= 5
        seen.extend(run.run_uuid for run in page.runs)
        if page.searched_to is not None:
            windows_ended += 1
            assert page.next_cursor is not None
            assert page.searched_from <= page.searched_to < page.newest
        if page.next_cursor is None:
            return seen, windows_ended
        cursor = page.next_cursor
    raise AssertionError("the pages never ended")


def test_windowed_pages_give_every_matching_run_once_in_order(store: Store) -> None:
    runs = store.list_runs()
    some = runs[42].run_uuid
    filters = [
        RunFilter(),
        RunFilter(labels={"team": "t1"}),
        RunFilter(labels={"rare": "yes"}),
        RunFilter(labels={"team": "nobody"}),
        RunFilter(project_id="p2"),
        RunFilter(project_id="nope"),
        RunFilter(uuid_prefix=some[:1]),
        RunFilter(uuid_prefix=some[:9]),
        RunFilter(uuid_prefix=some),
        RunFilter(uuid_prefix="ffffffff-ffff"),
        RunFilter(labels={"run_group": "g3"}),
        RunFilter(labels={"run_group": "g3", "team": "t2"}),
        RunFilter(status="FAILED", labels={"team": "t3"}),
        RunFilter(status="RUNNING", project_id="p1"),
    ]
    for where in filters:
        expected = [run.run_uuid for run in runs if _matches(run, where)]
        seen, windows_ended = _walk(store, where)
        assert seen == expected, where
        column = where.project_id is not None or len(where.uuid_prefix or "12345678") < 8
        label = any(k != "run_group" for k in where.labels)
        if "run_group" in where.labels or not (column or label):
            assert windows_ended == 0, where  # an index bounds it: no window
    # A rare label is searched for a window at a time: pages end in their window.
    assert _walk(store, RunFilter(labels={"team": "nobody"})) == ([], RUNS // 17)
    assert store.page_runs_window(RunFilter(uuid_prefix=some), limit=5).runs[0].run_uuid == some


def test_latest_failures_are_the_newest_across_failing_statuses(store: Store) -> None:
    runs = store.list_runs()
    _set_status(store, runs[3].run_uuid, "SYSTEM_ERROR", 9_000.0)  # the newest failure
    failing = Statuses().failing
    got = store.latest_in_statuses(failing, limit=4)
    expected = sorted(
        (r for r in store.list_runs() if r.status in failing),
        key=lambda r: r.status_since or 0,
        reverse=True,
    )[:4]
    assert [r.run_uuid for r in got] == [r.run_uuid for r in expected]
    assert got[0].run_uuid == runs[3].run_uuid
    plan = store._db.query("EXPLAIN QUERY PLAN " + _LATEST_IN_STATUS, ("FAILED", 4))
    assert any("runs_tracked_by_status_since" in row[3] for row in plan), plan


def test_groups_in_progress_are_the_first_by_name_counted(store: Store) -> None:
    runs = store.list_runs()
    in_progress = sorted(
        {r.labels["run_group"] for r in runs if r.status is None or r.status not in TERMINAL}
    )
    found = store.active_groups(limit=3)
    assert list(found) == in_progress[:3]
    for name, counts in found.items():
        members = [r for r in runs if r.labels["run_group"] == name]
        expected: dict[tuple[str | None, bool], int] = {}
        for r in members:
            key = (r.status, r.terminal)
            expected[key] = expected.get(key, 0) + 1
        assert {(c.status, c.terminal): c.runs for c in counts} == expected
        assert all(isinstance(c, GroupCount) and not c.stopped for c in counts)
    # A group whose every run finished is not in progress.
    for r in runs:
        if r.labels["run_group"] == in_progress[0]:
            _set_status(store, r.run_uuid, "SUCCESS", 5_000.0)
    assert in_progress[0] not in store.active_groups(limit=3)
    plan = store._db.query("EXPLAIN QUERY PLAN " + _ACTIVE_GROUPS, (3,))
    assert any("runs_active_by_group" in row[3] for row in plan), plan


def test_an_existing_file_gains_the_page_indexes(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = state_file_before(path, MIGRATIONS.index(_UI_READS))
    conn.execute(
        "INSERT INTO runs (run_uuid, status, tracked, tracked_at, status_since, labels) "
        "VALUES ('a', 'FAILED', 1, 0, 5, '{\"run_group\":\"x\"}')"
    )
    conn.close()
    with Store.open(path) as store:
        names = {row[0] for row in store._db.query("SELECT name FROM sqlite_master")}
        assert {"runs_tracked_by_status_since", "runs_active_by_group"} <= names
        assert [r.run_uuid for r in store.latest_in_statuses(["FAILED"], limit=5)] == ["a"]


def test_the_runs_page_says_how_far_a_window_searched(store: Store) -> None:
    found = store.page_runs_window(
        RunFilter(labels={"team": "nobody"}), limit=50, windows=(100, 100)
    )
    assert (found.runs, found.searched_to, found.newest) == ([], 100, RUNS)
    page = StatusPage(
        UiOptions(admin_token="admin-token-0123456789"),
        store=SqliteStore(store),
        metrics=Metrics(),
        statuses=Statuses(),
        not_ready_reason=lambda: None,
    )
    html = page._env.get_template("runs.html").render(
        session=None,
        csrf="",
        static={"app.css": "/ui/static/app.css", "app.js": "/ui/static/app.js"},
        ago=str,
        duration=str,
        severity=Statuses().severity,
        now_ts=0.0,
        iso=str,
        query=RunsQuery(label="team=nobody"),
        page_runs=found,
        error="",
        page="runs",
        next_url="/ui/runs?label=team%3Dnobody&cursor=" + str(found.next_cursor),
    )
    assert "No run matches among the runs searched." in html
    assert f"Searched runs 1 to 100 of the {RUNS} ever tracked" in html
    assert '<a rel="next" href="/ui/runs?label=team%3Dnobody&amp;cursor=' in html
    assert ">Search on</a>" in html
