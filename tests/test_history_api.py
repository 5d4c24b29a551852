"""The admin API's history, dead letters and redelivery against a real SQLite store, through
aiohttp's test server (a real socket on 127.0.0.1): shapes, filters, codes and reasons."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from watcher.events import RunState
from watcher.service.metrics import Metrics
from watcher.service.server import Health, build_app
from watcher.service.state_metrics import StateGauges
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore
from watcher.transitions import detect

TOKEN = "adm-history-0123456789abcdef0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RUN = "84232c68-a016-4668-b2e3-168a175d6f29"
OTHER = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
TERMINAL = frozenset({"SUCCESS", "FAILED"})
NOTIFIERS = ("hook", "chat")


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    store: Store
    metrics: Metrics


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = Store.open(tmp_path / "state.db")
    adapted = SqliteStore(store)
    metrics = Metrics()
    StateGauges(adapted).install(metrics)  # redeliveries (and the rest), as the daemon does
    app = build_app(
        store=adapted,
        metrics=metrics,
        health=Health(),
        admin_token=TOKEN,
        default_project_id="prj",
        notifier_names=lambda: NOTIFIERS,
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Api(client, store, metrics)
    finally:
        await client.close()
        await adapted.close()


def record(store: Store, run: str, statuses: list[str], notifiers: tuple[str, ...]) -> None:
    start = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    store.track([TrackRequest(run, "prj")])
    prev: RunState | None = None
    for minutes, status in enumerate(statuses):
        cur = RunState(run, "prj", status, start + timedelta(minutes=minutes))
        event = detect(prev, cur, terminal=TERMINAL)
        assert store.record_observation(cur, event, notifiers=notifiers)
        prev = cur


async def test_a_runs_history_as_delivered_with_its_deliveries(api: Api) -> None:
    record(api.store, RUN, ["RUNNING", "FAILED"], NOTIFIERS)
    first, second, third, _ = api.store.pending_deliveries(limit=10)
    api.store.mark_delivered(first.id)
    api.store.mark_dead(second.id, error="HTTP 410 Gone", attempts=2)
    api.store.mark_silenced(third.id, "silence 4")

    resp = await api.client.get(f"/v1/runs/{RUN.upper()}/events", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    events = [entry.event for entry in api.store.run_history(RUN) or []]
    assert [{k: v for k, v in e.items() if k != "deliveries"} for e in body] == [
        e.to_dict() for e in events
    ]
    assert [e["deliveries"] for e in body] == [
        [
            {"notifier": "hook", "state": "delivered", "attempts": 1, "last_error": None},
            {"notifier": "chat", "state": "dead", "attempts": 2, "last_error": "HTTP 410 Gone"},
        ],
        [
            {"notifier": "hook", "state": "silenced", "attempts": 0, "last_error": "silence 4"},
            {"notifier": "chat", "state": "pending", "attempts": 0, "last_error": None},
        ],
    ]
    unknown = await api.client.get(f"/v1/runs/{OTHER}/events", headers=AUTH)
    assert (unknown.status, await unknown.json()) == (404, {"error": "run not in the registry"})
    # The same mistake gets the same answer wherever a run UUID is asked for.
    said = set()
    for path in ("/v1/runs/not-a-uuid/events", "/v1/events?run_uuid=not-a-uuid", "/v1/runs/x"):
        bad = await api.client.get(path, headers=AUTH)
        said.add((bad.status, (await bad.json())["error"]))
    assert said == {(400, "run_uuid: must be a canonical UUID (8-4-4-4-12 hex digits)")}
    # A run tracked but never polled has an empty history, not a 404.
    api.store.track([TrackRequest(OTHER, "prj")])
    empty = await api.client.get(f"/v1/runs/{OTHER}/events", headers=AUTH)
    assert (empty.status, await empty.json()) == (200, [])


async def test_events_filter_by_run_and_type(api: Api) -> None:
    record(api.store, RUN, ["RUNNING", "SUCCESS"], ("hook",))
    record(api.store, OTHER, ["RUNNING"], ("hook",))
    resp = await api.client.get("/v1/events", params={"run_uuid": RUN}, headers=AUTH)
    assert [(e["data"]["run_uuid"], e["data"]["status"]) for e in await resp.json()] == [
        (RUN, "SUCCESS"),
        (RUN, "RUNNING"),
    ]
    resp = await api.client.get("/v1/events", params={"type": "run.stuck"}, headers=AUTH)
    assert await resp.json() == []
    resp = await api.client.get(
        "/v1/events", params={"type": "run.status_changed", "run_uuid": OTHER}, headers=AUTH
    )
    assert [e["data"]["run_uuid"] for e in await resp.json()] == [OTHER]


async def test_dead_letters_filter_and_redelivery(api: Api) -> None:
    record(api.store, RUN, ["RUNNING", "SUCCESS"], NOTIFIERS)
    record(api.store, OTHER, ["RUNNING"], ("hook", "removed"))
    rows = api.store.pending_deliveries(limit=10)
    for row in rows:
        api.store.mark_dead(row.id, error=f"down ({row.notifier})")
    resp = await api.client.get("/v1/dead-letters", params={"notifier": "chat"}, headers=AUTH)
    chat = await resp.json()
    assert [letter["notifier"] for letter in chat] == ["chat", "chat"]
    assert [letter["delivery_id"] for letter in chat] == sorted(
        (r.id for r in rows if r.notifier == "chat"), reverse=True
    )
    resp = await api.client.get("/v1/dead-letters", params={"limit": "2"}, headers=AUTH)
    assert len(await resp.json()) == 2

    async def redeliver(body: object) -> tuple[int, dict[str, object]]:
        resp = await api.client.post("/v1/dead-letters/redeliver", json=body, headers=AUTH)
        return resp.status, await resp.json()

    chat_ids = sorted(r.id for r in rows if r.notifier == "chat")
    assert await redeliver({"notifier": "chat"}) == (200, {"redelivered": 2, "ids": chat_ids})
    hook_first = min(r.id for r in rows if r.notifier == "hook")
    assert await redeliver({"ids": [hook_first, 99999]}) == (
        200,
        {"redelivered": 1, "ids": [hook_first]},
    )
    # `all` leaves the letter of a notifier the daemon no longer has.
    status, body = await redeliver({"all": True})
    assert (status, body["redelivered"]) == (200, 2)
    assert [d.notifier for d in api.store.list_dead_letters()] == ["removed"]
    assert {d.event.id for d in api.store.pending_deliveries(limit=10)} == {
        r.event.id for r in rows if r.notifier != "removed"
    }

    text = (await (await api.client.get("/metrics")).read()).decode()
    counted = {
        s.labels["notifier"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "omics_watcher_redeliveries_total"
    }
    assert counted == {"chat": 2.0, "hook": 3.0}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "body:"),
        (b"not json", "body:"),
        (b"[]", "body:"),
        (b"{}", "body: give exactly one"),
        (b'{"all": false}', "body: give exactly one"),
        (b'{"all": true, "ids": [1]}', "body: give exactly one"),
        (b'{"all": "yes"}', "all:"),
        (b'{"ids": []}', "ids:"),
        (b'{"ids": ["1"]}', "ids.0:"),
        (b'{"ids": [0]}', "ids: delivery ids are positive"),
        (b'{"notifier": ""}', "notifier:"),
        (b'{"notifier": "\\u001b[2Jnope"}', "notifier: not one the daemon has"),
        (b'{"\\u001b": 1}', "(key):"),
    ],
)
async def test_a_malformed_redelivery_is_400_with_the_reason(
    api: Api, body: bytes, reason: str
) -> None:
    resp = await api.client.post(
        "/v1/dead-letters/redeliver",
        data=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error.startswith(reason), error
    assert "\x1b" not in json.dumps(error, ensure_ascii=False)  # the input is never echoed


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v1/runs/{RUN}/events"),
        ("GET", "/v1/dead-letters"),
        ("POST", "/v1/dead-letters/redeliver"),
    ],
)
async def test_every_route_needs_the_token(api: Api, method: str, path: str) -> None:
    resp = await api.client.request(method, path, json={"all": True})
    assert resp.status == 401
    assert "error" in await resp.json()
    wrong = await api.client.request(
        method, path, json={"all": True}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status == 401
