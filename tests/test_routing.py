"""Routing: which notifiers an event goes to (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from watcher.events import Event
from watcher.routing import RouteSettings, select

NAMES = ["ops", "chat", "mail", "audit"]


def event(type_: str = "run.status_changed", **data: Any) -> Event:
    base: dict[str, Any] = {
        "run_uuid": "84232c68-a016-4668-b2e3-168a175d6f29",
        "project_id": "prj-a",
        "previous_status": "RUNNING",
        "status": "SUCCESS",
        "terminal": True,
        "labels": {"team": "genomics", "env": "prod"},
    }
    base.update(data)
    return Event(type=type_, id="evt_1", timestamp=datetime(2026, 1, 1, tzinfo=UTC), data=base)


def route(**raw: Any) -> RouteSettings:
    return RouteSettings.model_validate(raw)


def test_no_routes_means_every_notifier_in_order() -> None:
    assert select(event(), [], NAMES) == NAMES
    assert select(event(), [], ["b", "a", "b"]) == ["b", "a"]


@pytest.mark.parametrize(
    ("filters", "matches"),
    [
        ({}, True),
        ({"statuses": ["SUCCESS", "FAILED"]}, True),
        ({"statuses": ["FAILED"]}, False),
        ({"from_statuses": ["RUNNING"]}, True),
        ({"from_statuses": ["QUEUED"]}, False),
        ({"terminal_only": True}, True),
        ({"projects": ["prj-a"]}, True),
        ({"projects": ["prj-b"]}, False),
        ({"labels": {"team": "genomics"}}, True),
        ({"labels": {"team": "genomics", "env": "dev"}}, False),
        ({"labels": {"missing": "x"}}, False),
        ({"types": ["run.status_changed"]}, True),
        ({"types": ["run.stuck"]}, False),
        ({"statuses": ["SUCCESS"], "projects": ["prj-a"], "terminal_only": True}, True),
        ({"statuses": ["SUCCESS"], "projects": ["prj-b"]}, False),  # all filters ANDed
    ],
)
def test_each_filter(filters: dict[str, Any], matches: bool) -> None:
    routes = [route(notifiers=["chat"], **filters)]
    assert select(event(), routes, NAMES) == (["chat"] if matches else [])


def test_terminal_only_and_first_observation() -> None:
    running = event(status="RUNNING", previous_status=None, terminal=False)
    assert select(running, [route(notifiers=["ops"], terminal_only=True)], NAMES) == []
    assert select(running, [route(notifiers=["ops"], from_statuses=["QUEUED"])], NAMES) == []
    assert select(running, [route(notifiers=["ops"], statuses=["RUNNING"])], NAMES) == ["ops"]


def test_union_over_matching_routes_is_stable_and_unique() -> None:
    routes = [
        route(notifiers=["mail", "ops"], statuses=["SUCCESS"]),
        route(notifiers=["ops", "chat"], labels={"team": "genomics"}),
        route(notifiers=["audit"], statuses=["FAILED"]),
    ]
    assert select(event(), routes, NAMES) == ["ops", "chat", "mail"]


def test_unknown_names_in_routes_are_ignored_and_stuck_events_route_by_type() -> None:
    stuck = event("run.stuck", status="QUEUED", terminal=False)
    routes = [route(notifiers=["gone", "ops"], types=["run.stuck"])]
    assert select(stuck, routes, NAMES) == ["ops"]


def test_route_validation() -> None:
    with pytest.raises(ValidationError):
        route(notifiers=[])
    with pytest.raises(ValidationError):
        route(notifiers=["ops"], status=["SUCCESS"])  # typo: unknown key
