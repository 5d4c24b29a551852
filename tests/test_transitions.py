"""detect() and the event builders: one event per status change, the right terminal flag."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.events import NOT_FOUND, STATUS_CHANGED, STUCK, Event, RunState, isoformat_z
from watcher.transitions import detect, is_terminal, not_found_event, stuck_event

TERMINAL = frozenset({"SUCCESS", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "FAILED"})
KNOWN = ["INIT", "QUEUED", "RUNNING", *sorted(TERMINAL)]
T0 = datetime(2026, 11, 27, 10, 0, 0, 123000, tzinfo=UTC)
RUN = "84232c68-a016-4668-b2e3-168a175d6f29"

statuses = st.one_of(st.sampled_from(KNOWN), st.text(min_size=1, max_size=12))


def fixed_id(now: datetime) -> str:
    return f"evt_{int(now.timestamp() * 1000)}"


def state(
    status: str | None,
    *,
    at: datetime = T0,
    project_id: str = "prj-1",
    labels: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> RunState:
    return RunState(
        run_uuid=RUN,
        project_id=project_id,
        status=status,
        observed_at=at,
        labels={"team": "genomics"} if labels is None else labels,
        metadata={"Status": status} if metadata is None else metadata,
    )


def test_first_observation_is_an_event_with_previous_none() -> None:
    cur = state("RUNNING", metadata={"Status": "RUNNING", "RunId": "x"})
    event = detect(None, cur, terminal=TERMINAL, new_id=fixed_id)
    assert event == Event(
        type=STATUS_CHANGED,
        id=fixed_id(T0),
        timestamp=T0,
        data={
            "run_uuid": RUN,
            "project_id": "prj-1",
            "previous_status": None,
            "status": "RUNNING",
            "terminal": False,
            "observed_at": "2026-11-27T10:00:00.123Z",
            "labels": {"team": "genomics"},
            "metadata": {"Status": "RUNNING", "RunId": "x"},
            "failure": None,
        },
    )


def test_change_into_terminal_status() -> None:
    later = T0 + timedelta(seconds=30)
    event = detect(state("RUNNING"), state("SUCCESS", at=later), terminal=TERMINAL)
    assert event is not None
    assert (event.previous_status, event.status, event.terminal) == ("RUNNING", "SUCCESS", True)
    assert event.timestamp == later
    assert event.data["observed_at"] == isoformat_z(later)
    assert event.id.startswith("evt_")


def test_unchanged_status_gives_nothing() -> None:
    assert detect(state("RUNNING"), state("RUNNING", metadata={"x": 1}), terminal=TERMINAL) is None


def test_observation_without_status_gives_nothing() -> None:
    assert detect(None, state(None), terminal=TERMINAL) is None
    assert detect(state("RUNNING"), state(None), terminal=TERMINAL) is None


def test_labels_and_project_fall_back_to_previous_state() -> None:
    prev = state("QUEUED", labels={"team": "a", "env": "prod"}, project_id="prj-9")
    cur = state("RUNNING", labels={"team": "b"}, project_id="")
    event = detect(prev, cur, terminal=TERMINAL)
    assert event is not None
    assert event.labels == {"team": "b", "env": "prod"}
    assert event.project_id == "prj-9"


def test_is_terminal() -> None:
    assert is_terminal("SUCCESS", TERMINAL)
    assert not is_terminal("RUNNING", TERMINAL)
    assert not is_terminal("success", TERMINAL)
    assert not is_terminal(None, TERMINAL)


def test_not_found_event() -> None:
    event = not_found_event(state("RUNNING"), now=T0, new_id=fixed_id)
    assert event.type == NOT_FOUND
    assert event.id == fixed_id(T0)
    assert event.data == {
        "run_uuid": RUN,
        "project_id": "prj-1",
        "last_status": "RUNNING",
        "observed_at": "2026-11-27T10:00:00.123Z",
        "labels": {"team": "genomics"},
    }


def test_stuck_event() -> None:
    since = T0 - timedelta(hours=1, milliseconds=500)
    event = stuck_event(state("QUEUED"), since=since, now=T0, new_id=fixed_id)
    assert event.type == STUCK
    assert event.timestamp == T0
    assert event.data == {
        "run_uuid": RUN,
        "project_id": "prj-1",
        "status": "QUEUED",
        "since": isoformat_z(since),
        "stuck_seconds": 3600,
        "labels": {"team": "genomics"},
    }
    with pytest.raises(ValueError, match="without a status"):
        stuck_event(state(None), since=since, now=T0)


@given(st.lists(statuses, max_size=30))
def test_exactly_one_event_per_change(sequence: list[str]) -> None:
    prev: RunState | None = None
    events: list[Event] = []
    for i, status in enumerate(sequence):
        cur = state(status, at=T0 + timedelta(seconds=i))
        event = detect(prev, cur, terminal=TERMINAL, new_id=fixed_id)
        if event is not None:
            events.append(event)
        prev = cur
    changes = [
        (before, after)
        for before, after in zip([None, *sequence], sequence, strict=False)
        if before != after
    ]
    assert [(e.previous_status, e.status) for e in events] == changes
    for event in events:
        assert event.type == STATUS_CHANGED
        assert event.terminal == (event.status in TERMINAL)


@given(statuses, statuses)
def test_event_iff_status_differs(before: str, after: str) -> None:
    event = detect(state(before), state(after), terminal=TERMINAL)
    assert (event is None) == (before == after)


@given(st.text(max_size=20).filter(lambda s: s not in TERMINAL))
def test_unknown_status_is_never_terminal(status: str) -> None:
    assert not is_terminal(status, TERMINAL)
    event = detect(None, state(status), terminal=TERMINAL)
    if status:
        assert event is not None
        assert event.terminal is False
        assert event.status == status
