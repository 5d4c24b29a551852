"""The HTTP server against a real SQLite store: probes, metrics, admin API, errors, listening.

Requests go through aiohttp's test server (a real socket on 127.0.0.1) or a real
:class:`HttpServer`; the store is a real file in ``tmp_path``. No mocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from support import admin_server

from watcher.config import ConfigError, load_settings
from watcher.events import RunState
from watcher.options import server_options
from watcher.service.connections import ConnectionLimits
from watcher.service.metrics import Metrics
from watcher.service.server import (
    MAX_BODY_BYTES,
    AppParts,
    Health,
    HttpServer,
    ServerStartError,
    build_app,
)
from watcher.service.state_metrics import StateGauges
from watcher.store import Store
from watcher.store.api import SqliteStore
from watcher.transitions import detect

TOKEN = "adm-7f3c9e1b5d2a4c6e8f0a1b3c5d7e9f1a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UUID_A = "84232c68-a016-4668-b2e3-168a175d6f29"
UUID_B = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
DEFAULT_PROJECT = "prj-default"
TERMINAL = frozenset({"SUCCESS", "FAILED"})

INTERFACE_SAMPLES = {
    "omics_watcher_polls_total",
    "omics_watcher_api_request_seconds_bucket",
    "omics_watcher_throttled_total",
    "omics_watcher_tracked_runs",
    "omics_watcher_transitions_total",
    "omics_watcher_deliveries_total",
    "omics_watcher_outbox_pending",
    "omics_watcher_oldest_pending_delivery_seconds",
}


@dataclass
class Harness:
    client: TestClient[web.Request, web.Application]
    store: Store
    health: Health
    metrics: Metrics
    wakeups: list[int] = field(default_factory=list)


async def make_harness(store: Store, *, admin_token: str | None) -> Harness:
    health = Health()
    metrics = Metrics()
    adapted = SqliteStore(store)
    StateGauges(adapted).install(metrics)  # as the daemon does: read at each scrape
    wakeups: list[int] = []
    app = build_app(
        store=adapted,
        metrics=metrics,
        health=health,
        admin_token=admin_token,
        default_project_id=DEFAULT_PROJECT,
        on_tracked=lambda: wakeups.append(1),
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    return Harness(client, store, health, metrics, wakeups)


@pytest.fixture
async def h(store: Store) -> AsyncIterator[Harness]:
    harness = await make_harness(store, admin_token=TOKEN)
    try:
        yield harness
    finally:
        await harness.client.close()


def record_history(store: Store, run_uuid: str) -> None:
    """Two real transitions (none -> RUNNING -> SUCCESS), each with a delivery to "ops"."""
    start = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    prev: RunState | None = None
    for minutes, status in enumerate(["RUNNING", "SUCCESS"]):
        cur = RunState(run_uuid, DEFAULT_PROJECT, status, start + timedelta(minutes=minutes))
        event = detect(prev, cur, terminal=TERMINAL)
        assert store.record_observation(cur, event, notifiers=["ops"])
        prev = cur


# -- probes and metrics ---------------------------------------------------------------------


async def test_healthz_ok_and_unhealthy(store: Store) -> None:
    h = await make_harness(store, admin_token=None)
    try:
        resp = await h.client.get("/healthz")
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    finally:
        await h.client.close()

    alive = [False]
    app = build_app(
        store=SqliteStore(store),
        metrics=Metrics(),
        health=Health(alive=lambda: alive[0]),
        admin_token=None,
        default_project_id="",
    )
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/healthz")
        assert resp.status == 503
        assert (await resp.json())["status"] == "unhealthy"
        assert (await client.get("/readyz")).status == 503


async def test_readiness_transitions(h: Harness) -> None:
    resp = await h.client.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {"status": "not_ready", "reason": "starting"}

    h.health.ready = True
    resp = await h.client.get("/readyz")
    # interface.md: {"status", "reason"} in every answer (reason null when ready)
    assert (resp.status, await resp.json()) == (200, {"status": "ready", "reason": None})

    h.health.draining = True
    resp = await h.client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["reason"] == "draining"
    # Liveness is unaffected by draining: the process still works.
    assert (await h.client.get("/healthz")).status == 200


async def test_metrics_text_format_has_interface_families(h: Harness) -> None:
    resp = await h.client.post("/v1/runs", json={"run_uuid": UUID_A}, headers=AUTH)
    assert resp.status == 201
    h.metrics.polls.labels(outcome="ok").inc()
    h.metrics.api_request_seconds.labels(action="GetRunStatus").observe(0.05)
    h.metrics.throttled.inc()
    h.metrics.transitions.inc()
    h.metrics.deliveries.labels(notifier="ops", outcome="delivered").inc()

    resp = await h.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(await resp.text())
        for s in family.samples
    }
    names = {name for name, _ in samples}
    assert names >= INTERFACE_SAMPLES
    assert samples[("omics_watcher_tracked_runs", (("status", "unknown"),))] == 1
    assert samples[("omics_watcher_polls_total", (("outcome", "ok"),))] == 1
    assert samples[("omics_watcher_outbox_pending", ())] == 0


# -- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer"}, "missing bearer token"),
        ({"Authorization": f"Basic {TOKEN}"}, "missing bearer token"),
        ({"Authorization": TOKEN}, "missing bearer token"),
        ({"Authorization": "Bearer not-the-token"}, "invalid bearer token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "invalid bearer token"),
        ({"Authorization": f"Bearer {TOKEN[:-1]}"}, "invalid bearer token"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/runs"), ("POST", "/v1/runs"), ("DELETE", f"/v1/runs/{UUID_A}"), ("GET", "/v1/x")],
)
async def test_admin_refuses_without_the_token(
    h: Harness, headers: dict[str, str], reason: str, method: str, path: str
) -> None:
    resp = await h.client.request(method, path, headers=headers, json={"run_uuid": UUID_A})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
    assert await resp.json() == {"error": reason}
    assert h.store.list_runs() == []
    assert h.wakeups == []


async def test_bearer_scheme_is_case_insensitive(h: Harness) -> None:
    resp = await h.client.get("/v1/runs", headers={"Authorization": f"bearer {TOKEN}"})
    assert resp.status == 200


@pytest.mark.parametrize("token", ["", None])
async def test_admin_api_off_without_token(store: Store, token: str | None) -> None:
    h = await make_harness(store, admin_token=token)
    try:
        for method, path in [
            ("GET", "/v1/runs"),
            ("POST", "/v1/runs"),
            ("GET", "/v1"),
            ("DELETE", f"/v1/runs/{UUID_A}"),
            ("GET", "/v1/events"),
        ]:
            resp = await h.client.request(method, path, json={"run_uuid": UUID_A}, headers=AUTH)
            assert resp.status == 404, (method, path)
            assert "admin API off" in (await resp.json())["error"]
        assert store.list_runs() == []
        # The probes still work.
        assert (await h.client.get("/healthz")).status == 200
    finally:
        await h.client.close()


# -- runs -------------------------------------------------------------------------------------


async def test_track_list_untrack(h: Harness) -> None:
    resp = await h.client.post(
        "/v1/runs", json={"run_uuid": UUID_A.upper(), "labels": {"team": "genomics"}}, headers=AUTH
    )
    assert resp.status == 201
    body = await resp.json()
    assert body["run_uuid"] == UUID_A
    assert body["project_id"] == DEFAULT_PROJECT
    assert body["labels"] == {"team": "genomics"}
    assert body["status"] is None
    assert resp.headers["Location"] == f"/v1/runs/{UUID_A}"
    assert h.wakeups == [1]

    resp = await h.client.post("/v1/runs", json={"run_uuid": UUID_A}, headers=AUTH)
    assert resp.status == 200
    assert (await resp.json())["run_uuid"] == UUID_A

    resp = await h.client.post(
        "/v1/runs", json={"run_uuid": UUID_B, "project_id": "prj-x"}, headers=AUTH
    )
    assert resp.status == 201
    # Re-posting without project_id keeps the run's project and merges labels.
    resp = await h.client.post(
        "/v1/runs", json={"run_uuid": UUID_B, "labels": {"k": "v"}}, headers=AUTH
    )
    assert resp.status == 200
    assert (await resp.json())["project_id"] == "prj-x"
    assert len(h.wakeups) == 4

    resp = await h.client.get("/v1/runs", headers=AUTH)
    assert resp.status == 200
    page = await resp.json()
    assert page["next_cursor"] is None
    listed = page["runs"]
    # The objects `omics-watcher list --json` prints.
    assert json.dumps(listed) == json.dumps([r.to_json_dict() for r in h.store.list_runs()])
    assert [r["run_uuid"] for r in listed] == [UUID_A, UUID_B]
    assert listed[1]["labels"] == {"k": "v"}

    resp = await h.client.get(f"/v1/runs/{UUID_B}", headers=AUTH)
    assert (resp.status, (await resp.json())["project_id"]) == (200, "prj-x")

    resp = await h.client.delete(f"/v1/runs/{UUID_A.upper()}", headers=AUTH)
    assert resp.status == 204
    assert await resp.read() == b""
    resp = await h.client.delete(f"/v1/runs/{UUID_A}", headers=AUTH)
    assert resp.status == 404
    assert "error" in await resp.json()
    assert (await h.client.get(f"/v1/runs/{UUID_A}", headers=AUTH)).status == 404
    assert [r.run_uuid for r in h.store.list_runs()] == [UUID_B]


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        (b"{not json", "body"),
        (b"", "body"),
        (b"[]", "body"),
        (b'"x"', "body"),
        (b"{}", "run_uuid"),
        (json.dumps({"run_uuid": "not-a-uuid"}).encode(), "run_uuid"),
        (json.dumps({"run_uuid": UUID_A + "\n"}).encode(), "run_uuid"),
        (json.dumps({"run_uuid": "{" + UUID_A + "}"}).encode(), "run_uuid"),
        (json.dumps({"run_uuid": 12}).encode(), "run_uuid"),
        (json.dumps({"run_uuid": UUID_A, "extra": 1}).encode(), "extra"),
        (json.dumps({"run_uuid": UUID_A, "labels": {"team": 1}}).encode(), "labels.team"),
        (json.dumps({"run_uuid": UUID_A, "labels": ["a"]}).encode(), "labels"),
        (json.dumps({"run_uuid": UUID_A, "labels": {" ": "v"}}).encode(), "labels"),
        (json.dumps({"run_uuid": UUID_A, "project_id": 5}).encode(), "project_id"),
    ],
)
async def test_track_rejects_malformed_bodies(h: Harness, body: bytes, field_name: str) -> None:
    resp = await h.client.post(
        "/v1/runs", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error.startswith(f"{field_name}:") or f"; {field_name}:" in error, error
    assert h.store.list_runs() == []
    assert h.wakeups == []


async def test_bad_uuid_in_path_is_400(h: Harness) -> None:
    resp = await h.client.delete("/v1/runs/nope", headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("run_uuid:")


async def test_body_over_limit_is_413(h: Harness) -> None:
    padding = "x" * MAX_BODY_BYTES
    body = json.dumps({"run_uuid": UUID_A, "labels": {"pad": padding}})
    resp = await h.client.post(
        "/v1/runs", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert "error" in await resp.json()
    assert h.store.list_runs() == []


# -- events and dead letters ------------------------------------------------------------------


async def test_events_newest_first_with_limit(h: Harness) -> None:
    await h.client.post("/v1/runs", json={"run_uuid": UUID_A}, headers=AUTH)
    record_history(h.store, UUID_A)

    resp = await h.client.get("/v1/events", headers=AUTH)
    assert resp.status == 200
    events = await resp.json()
    assert [e["data"]["status"] for e in events] == ["SUCCESS", "RUNNING"]
    assert events == [e.to_dict() for e in h.store.events(limit=100)]

    resp = await h.client.get("/v1/events?limit=1", headers=AUTH)
    assert [e["data"]["status"] for e in await resp.json()] == ["SUCCESS"]
    resp = await h.client.get("/v1/events?limit=1000", headers=AUTH)
    assert resp.status == 200


@pytest.mark.parametrize("limit", ["", "0", "1001", "-1", "1.5", "abc", "１", "99999999999"])
@pytest.mark.parametrize("path", ["/v1/events", "/v1/dead-letters"])
async def test_limit_garbage_is_400(h: Harness, path: str, limit: str) -> None:
    resp = await h.client.get(path, params={"limit": limit}, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("limit:")


async def test_dead_letters(h: Harness) -> None:
    await h.client.post("/v1/runs", json={"run_uuid": UUID_A}, headers=AUTH)
    record_history(h.store, UUID_A)
    first = h.store.pending_deliveries()[0]
    h.store.mark_dead(first.id, error="HTTP 410 Gone", attempts=3)

    resp = await h.client.get("/v1/dead-letters?limit=10", headers=AUTH)
    assert resp.status == 200
    letters = await resp.json()
    assert len(letters) == 1
    # interface.md's keys (the second release's shape; `dead-letters --json` prints the same).
    (letter,) = letters
    dead_at = letter.pop("dead_at")
    assert datetime.fromisoformat(dead_at.replace("Z", "+00:00")).tzinfo is not None
    assert letter == {
        "delivery_id": first.id,
        "notifier": "ops",
        "event_id": first.event.id,
        "run_uuid": UUID_A,
        "type": "run.status_changed",
        "attempts": 3,
        "last_error": "HTTP 410 Gone",
    }


# -- errors -----------------------------------------------------------------------------------


async def test_unknown_route_and_wrong_method_are_json(h: Harness) -> None:
    resp = await h.client.get("/nope")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert "error" in await resp.json()

    resp = await h.client.post("/healthz")
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"]
    assert "error" in await resp.json()

    resp = await h.client.put("/v1/runs", headers=AUTH)
    assert resp.status == 405
    assert "error" in await resp.json()


async def test_store_failure_is_500_without_traceback(h: Harness) -> None:
    h.store.close()  # the loop's connection (pages of /v1/runs read on a connection of their own)
    with structlog.testing.capture_logs() as logs:
        resp = await h.client.get(f"/v1/runs/{UUID_A}", headers=AUTH)
    assert resp.status == 500
    assert await resp.json() == {"error": "internal error"}
    assert any(entry["event"] == "http_handler_failed" for entry in logs)


async def test_token_never_leaks(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with structlog.testing.capture_logs() as logs:
        h = await make_harness(store, admin_token=TOKEN)
        try:
            calls: list[tuple[str, str, dict[str, str], Any]] = [
                ("POST", "/v1/runs", AUTH, {"run_uuid": UUID_A}),
                ("POST", "/v1/runs", AUTH, {"run_uuid": UUID_A, "token": TOKEN}),
                ("POST", "/v1/runs", {"Authorization": f"Bearer {TOKEN}x"}, {}),
                ("GET", "/v1/runs", {"Authorization": f"Basic {TOKEN}"}, None),
                ("GET", "/v1/runs", AUTH, None),
                ("GET", "/v1/events", AUTH, None),
                ("GET", "/v1/nope", AUTH, None),
                ("PUT", "/v1/runs", AUTH, None),
                ("DELETE", f"/v1/runs/{UUID_A}", AUTH, None),
                ("GET", "/metrics", AUTH, None),
            ]
            for method, path, headers, body in calls:
                resp = await h.client.request(method, path, headers=headers, json=body)
                seen.append(await resp.text())
                seen.append(json.dumps(dict(resp.headers)))
        finally:
            await h.client.close()
    events = [entry["event"] for entry in logs]
    assert "admin_run_tracked" in events
    assert "admin_run_untracked" in events
    assert "admin_auth_failed" in events
    assert all(TOKEN not in text for text in seen)
    assert TOKEN not in repr(logs)
    assert TOKEN not in caplog.text


# -- the real listener ------------------------------------------------------------------------


def probe_app(store: Store, health: Health) -> web.Application:
    return build_app(
        store=SqliteStore(store),
        metrics=Metrics(),
        health=health,
        admin_token=None,
        default_project_id="",
    )


async def test_http_server_serves_until_stop(store: Store) -> None:
    health = Health()
    server = HttpServer(probe_app(store, health), shutdown_timeout=1.0)
    port = await server.start("127.0.0.1", 0)
    assert port > 0
    assert server.port == port
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
        health.ready = True
        async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
            assert resp.status == 200
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert server.port is None
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    await server.stop()  # idempotent


async def test_port_in_use_is_a_start_error(store: Store) -> None:
    first = HttpServer(probe_app(store, Health()))
    port = await first.start("127.0.0.1", 0)
    try:
        second = HttpServer(probe_app(store, Health()))
        with pytest.raises(ServerStartError, match=f"127.0.0.1:{port}"):
            await second.start("127.0.0.1", port)
        assert second.port is None
        with pytest.raises(RuntimeError):
            await second.run(asyncio.Event())
        with pytest.raises(RuntimeError):
            await first.start("127.0.0.1", 0)
    finally:
        await first.stop()


# -- stalled and hostile clients (issue 13: a server that stalled clients cannot take down) --

MARKER = "MaRkEr-9f1c<script>"


def admin_apps(store: Store) -> tuple[web.Application, web.Application]:
    """The two halves of ``[server] admin_listen``: probes and metrics; the admin API."""

    def app(parts: AppParts) -> web.Application:
        return build_app(
            store=SqliteStore(store),
            metrics=Metrics(),
            health=Health(),
            admin_token=TOKEN,
            default_project_id=DEFAULT_PROJECT,
            parts=parts,
        )

    return app("probes"), app("admin")


async def raw_exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def test_admin_listen_serves_the_admin_api_only_on_its_own_address(store: Store) -> None:
    public, admin = admin_apps(store)
    server = HttpServer(public, admin_app=admin, shutdown_timeout=1.0)
    port = await server.start("127.0.0.1", 0, admin=("127.0.0.1", 0))
    admin_port = server.admin_port
    assert admin_port is not None
    assert admin_port != port
    try:
        async with aiohttp.ClientSession() as session:
            main, apart = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
            for path in ("/healthz", "/metrics"):
                async with session.get(main + path) as resp:
                    assert resp.status == 200, path
            # Absent from the main listener, even with the right token.
            for method, path in (("GET", "/v1/runs"), ("POST", "/v1/runs"), ("GET", "/v1")):
                async with session.request(method, main + path, headers=AUTH, json={}) as resp:
                    assert resp.status == 404, (method, path)
                    assert await resp.json() == {"error": "Not Found"}
            # Present on its own listener, with the usual bearer check.
            async with session.get(apart + "/v1/runs", headers=AUTH) as resp:
                assert resp.status == 200
            async with session.get(apart + "/v1/runs") as resp:
                assert resp.status == 401
            body = {"run_uuid": UUID_A}
            async with session.post(apart + "/v1/runs", headers=AUTH, json=body) as resp:
                assert resp.status == 201
            async with session.get(apart + "/metrics") as resp:
                assert resp.status == 404
    finally:
        await server.stop()
    assert store.get_run(UUID_A) is not None


async def test_admin_address_needs_an_admin_app(store: Store) -> None:
    server = HttpServer(probe_app(store, Health()))
    with pytest.raises(ValueError, match="admin"):
        await server.start("127.0.0.1", 0, admin=("127.0.0.1", 0))
    assert server.port is None


@pytest.mark.parametrize(
    "request_bytes",
    [
        # Malformed requests aiohttp's parser refuses (its own answers quote the bytes).
        f"GET / HTTP/1.1\r\nBad{MARKER} Header\r\n\r\n",
        f"{MARKER} / HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /\x01{MARKER} HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET / HTTP/9.{MARKER}\r\nHost: x\r\n\r\n",
        f"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: {MARKER}\r\n\r\n",
        f"GET / HTTP/1.1\r\nHost: x\r\nX-Long: {MARKER}{'a' * 9000}\r\n\r\n",
        # Requests the app refuses.
        f"GET /{MARKER} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        f"GET /v1/runs/{MARKER} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n",
        f"GET /v1/events?limit={MARKER} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n",
        f"GET /v1/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {MARKER}\r\n\r\n",
    ],
)
async def test_error_bodies_never_echo_the_input(store: Store, request_bytes: str) -> None:
    async with admin_server(store, TOKEN) as port:
        answer = await raw_exchange(port, request_bytes.encode("latin-1"))
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert 400 <= status < 500, answer[:200]
    assert b"application/json" in head
    assert "error" in json.loads(body)
    assert b"MaRkEr" not in answer
    assert b"<script>" not in answer


@pytest.mark.parametrize(
    "body_json",
    [
        {"run_uuid": MARKER},
        {"run_uuid": UUID_A, "labels": {"k": 7, MARKER: MARKER}},
        {"run_uuid": UUID_A, MARKER: 1},
    ],
)
async def test_validation_errors_name_fields_but_never_echo_values(
    h: Harness, body_json: dict[str, Any]
) -> None:
    resp = await h.client.post("/v1/runs", headers=AUTH, json=body_json)
    assert resp.status == 400
    text = await resp.text()
    assert "error" in json.loads(text)
    assert "<script>" not in text


async def test_a_full_server_makes_room_for_a_probe(store: Store) -> None:
    limits = ConnectionLimits(max_connections=8, header_timeout=60.0)
    server = HttpServer(probe_app(store, Health()), limits=limits, shutdown_timeout=1.0)
    port = await server.start("127.0.0.1", 0)
    stalled: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(20):  # far more than the bound, each with half a request
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            stalled.append((reader, writer))
        probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = await raw_exchange(port, probe)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
        # The oldest stalled connections were closed to make room; the newest are still open.
        closed = 0
        for reader, _ in stalled:
            try:
                data = await asyncio.wait_for(reader.read(), 0.3)
            except TimeoutError:
                continue
            assert data == b""  # closed without an answer
            closed += 1
        assert closed >= 20 - 8
        assert closed < 20
    finally:
        for _, writer in stalled:
            writer.close()
        await server.stop()


async def test_a_request_head_must_arrive_within_the_header_timeout(store: Store) -> None:
    limits = ConnectionLimits(header_timeout=0.3)
    server = HttpServer(probe_app(store, Health()), limits=limits, shutdown_timeout=1.0)
    port = await server.start("127.0.0.1", 0)
    try:
        answer = await raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", timeout=10)
        assert answer == b""  # closed without an answer
        quiet = await raw_exchange(port, b"", timeout=10)  # connected, never sent a byte
        assert quiet == b""
    finally:
        await server.stop()


async def test_a_body_must_arrive_within_the_body_timeout(h: Harness) -> None:
    limits = ConnectionLimits(body_timeout=0.3)
    async with admin_server(h.store, TOKEN, limits=limits) as port:
        head = (
            "POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n"
        )
        answer = await raw_exchange(port, head.encode() + b'{"run_uuid": ', timeout=10)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"].startswith("request body")
    assert h.store.get_run(UUID_A) is None


@pytest.mark.parametrize(
    ("admin_listen", "expected"),
    [
        (None, None),  # the default: the admin API on `listen`
        ("127.0.0.1:9477", None),  # the same address as `listen`: one listener
        ("127.0.0.1:9478", ("127.0.0.1", 9478)),
        ("[::1]:9478", ("::1", 9478)),
    ],
)
def test_admin_listen_setting(admin_listen: str | None, expected: tuple[str, int] | None) -> None:
    environ = {"OMICS_WATCHER_SERVER__ADMIN_TOKEN": TOKEN}
    if admin_listen is not None:
        environ["OMICS_WATCHER_SERVER__ADMIN_LISTEN"] = admin_listen
    options = server_options(load_settings(None, environ=environ))
    assert options.admin_address == expected
    # Without a token there is no admin API, so no listener of its own either.
    environ.pop("OMICS_WATCHER_SERVER__ADMIN_TOKEN")
    assert server_options(load_settings(None, environ=environ)).admin_address is None


@pytest.mark.parametrize("bad", ["9478", "127.0.0.1:", ":9478", "127.0.0.1:99999"])
def test_admin_listen_must_be_host_and_port(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.admin_listen"):
        load_settings(None, environ={"OMICS_WATCHER_SERVER__ADMIN_LISTEN": bad})
