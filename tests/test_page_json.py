"""Pages of the registry rendered by SQLite are byte for byte the Python rendering.

Why: ``GET /v1/runs`` builds each run's JSON inside SQLite (``page_runs_json``) so the worker
thread serving a page holds the GIL as little as possible (issue 13: ``/healthz`` waited for
it during a walk of every page). A client must not see any difference: each object must be
exactly ``json.dumps(run.to_json_dict(), ensure_ascii=False, separators=(",", ":"))``, for
labels with unicode and control characters and for timestamps whose fraction rounds at the
millisecond, microsecond or second boundary. Real state file, real store code.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcher.store import RunFilter, Store, TrackRequest
from watcher.store.models import TrackedRun

LABEL_TEXTS = [
    "plain",
    "é ü 中文 😀 \u2028\u2029 \ufeff \x85 \x7f",
    'quote " backslash \\ slash /',
    "ctl \x00 \x01 \x08 \t \n \x0b \x0c \r \x1b[31m \x1f",
    "",
]
TIMESTAMPS = [
    None,
    0.0,
    1.0,
    1_764_470_000.0,
    1_764_470_000.0005,
    1_764_470_000.0004999,
    1_764_470_000.9995,
    1_764_470_000.9999994,
    1_764_470_000.9999996,  # rounds up to the next second in fromtimestamp
    1_764_470_000.123456789,
    1_764_470_001.5,
    253_402_300_799.999,  # 9999-12-31T23:59:59.999Z
    1_764_470_000,  # stored as an INTEGER
]


def python_json(run: TrackedRun) -> str:
    return json.dumps(run.to_json_dict(), ensure_ascii=False, separators=(",", ":"))


def every_page_json(store: Store, where: RunFilter | None = None, limit: int = 3) -> list[str]:
    found: list[str] = []
    cursor = None
    while True:
        page = store.page_runs_json(limit=limit, cursor=cursor, where=where)
        found.extend(page.runs)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def set_columns(path: Path, uuid: str, **values: object) -> None:
    names = ", ".join(f"{name} = ?" for name in values)  # names: literals of this test
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE runs SET {names} WHERE run_uuid = ?", [*values.values(), uuid])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "state.db")
    yield opened
    opened.close()


def test_pages_are_byte_identical_to_python(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    requests = []
    for i, text in enumerate(LABEL_TEXTS):
        labels = {"k": text, f"key {text}"[:63]: "v", "z": str(i)} if text else {}
        requests.append(TrackRequest(f"run-{i}-{text[:3]}", f"proj-{text[:5]}", labels))
    for i in range(len(TIMESTAMPS)):
        requests.append(TrackRequest(f"ts-{i}", "", {}))
    store.track(requests)
    set_columns(path, "run-0-pla", status="RUNNING", terminal=0)
    set_columns(path, "run-1-é ü", status="FAILED", terminal=1, stopped=1)
    set_columns(path, "run-2-quo", status='é\x1b"', project_id="")
    for i, moment in enumerate(TIMESTAMPS):
        tracked = 1_764_000_000.25 if moment is None else moment
        set_columns(
            path,
            f"ts-{i}",
            tracked_at=tracked,
            last_polled_at=moment,
            status_since=moment,
            status="SUCCEEDED" if i % 2 else None,
            terminal=i % 2,
        )
    expected = [python_json(run) for run in store.iter_runs()]
    assert len(expected) == len(requests)
    assert every_page_json(store) == expected
    assert every_page_json(store, limit=1000) == expected
    for where in (RunFilter(status="FAILED"), RunFilter(active=True), RunFilter(labels={"z": "2"})):
        assert every_page_json(store, where) == [python_json(r) for r in store.iter_runs(where)]


def test_an_empty_registry_is_an_empty_last_page(store: Store) -> None:
    page = store.page_runs_json(limit=10)
    assert page.runs == []
    assert page.next_cursor is None


def test_cursors_are_those_of_page_runs(store: Store) -> None:
    store.track([TrackRequest(f"run-{i}", "", {}) for i in range(7)])
    cursor = None
    while True:
        rows, objects = (
            store.page_runs(limit=3, cursor=cursor),
            store.page_runs_json(limit=3, cursor=cursor),
        )
        assert objects.next_cursor == rows.next_cursor
        assert objects.runs == [python_json(run) for run in rows.runs]
        if rows.next_cursor is None:
            break
        cursor = rows.next_cursor


TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    labels=st.dictionaries(TEXT, TEXT, max_size=4),
    moment=st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False),
)
def test_any_label_and_timestamp(
    store: Store, tmp_path: Path, labels: dict[str, str], moment: float
) -> None:
    store.track([TrackRequest("run-h", "p", {})])
    labels_text = json.dumps(labels, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    set_columns(
        tmp_path / "state.db",
        "run-h",
        labels=labels_text,
        tracked_at=moment,
        last_polled_at=moment,
        status_since=moment,
    )
    expected = [python_json(run) for run in store.iter_runs()]
    assert len(expected) == 1
    assert every_page_json(store) == expected
