"""The lease supervisor and the active/standby switch, in one process against a real
PostgreSQL 15: one of two claims is active and the other a standby; a handover on close
is immediate; a killed connection is survived; a holder whose clock passed its deadline
(what a frozen process sees when it wakes) is a standby and its writes are fenced out; the
active work is cancelled at once when the lease is lost and drained on stop, then the lease
is released; the HTTP session sends nothing while the lease is not held."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aiohttp
import asyncpg
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import until

from watcher.replica import lease_gate, lease_trace, serve_terms
from watcher.store.api import open_async_store
from watcher.store.db import StateError
from watcher.store.models import TrackRequest
from watcher.store.pg import lease
from watcher.store.pg.claim import LeaseClaim
from watcher.store.pg.lease import LeaseLost

LEASE = 2.0


class Clock:
    """time.monotonic plus a jump the test can add (a freeze as the frozen process sees it)."""

    def __init__(self) -> None:
        self.jump = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.jump


@pytest.fixture
async def claims(pg_url: str) -> AsyncIterator[Callable[..., LeaseClaim]]:
    made: list[LeaseClaim] = []

    def make(holder: str, **kwargs: object) -> LeaseClaim:
        claim = LeaseClaim(pg_url, lease_seconds=LEASE, holder=holder, **kwargs)  # type: ignore[arg-type]
        claim.start()
        made.append(claim)
        return claim

    yield make
    for claim in made:
        await claim.aclose()


async def row(pg_url: str) -> lease.LeaseState:
    conn = await asyncpg.connect(pg_url)
    try:
        return await lease.state(conn)
    finally:
        await conn.close()


async def test_one_of_two_is_active_and_close_hands_over_at_once(
    pg_url: str, claims: Callable[..., LeaseClaim]
) -> None:
    a = claims("daemon-a")
    term_a = await asyncio.wait_for(a.next_term(), 30)
    b = claims("daemon-b")
    await asyncio.sleep(LEASE)  # b tried about twice meanwhile
    assert a.holding()
    assert not a.standby()
    assert b.standby()
    assert b.grant() is None
    assert b.term is None
    assert (await row(pg_url)).holder == "daemon-a"
    # a renews: still the holder well past one lease.
    await asyncio.sleep(LEASE)
    assert a.holding()
    assert not term_a.lost.is_set()
    await a.aclose()  # SIGTERM's path: released, so b need not wait for the expiry
    assert a.standby()
    started = time.monotonic()
    term_b = await asyncio.wait_for(b.next_term(), 30)
    # b takes it at its next try (1 s apart) plus the takeover pause, not after a lease.
    assert term_b.epoch == term_a.epoch + 1
    assert (await row(pg_url)).holder == "daemon-b"
    assert time.monotonic() - started < 30


async def test_a_killed_connection_keeps_the_lease(
    pg_url: str, pg_cluster: object, claims: Callable[..., LeaseClaim]
) -> None:
    a = claims("daemon-a")
    term = await asyncio.wait_for(a.next_term(), 30)
    admin = await asyncpg.connect(pg_url)
    try:
        for _ in range(3):
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'omics-watcher' AND pid <> pg_backend_pid()"
            )
            assert killed >= 1
            await asyncio.sleep(LEASE / 2)
        await asyncio.sleep(LEASE)
    finally:
        await admin.close()
    assert a.holding()
    assert not term.lost.is_set()
    assert (await row(pg_url)).epoch == term.epoch


async def test_a_holder_past_its_deadline_is_a_standby_and_fenced_out(
    pg_url: str, claims: Callable[..., LeaseClaim]
) -> None:
    clock = Clock()
    a = claims("daemon-a", monotonic=clock)
    term = await asyncio.wait_for(a.next_term(), 30)
    grant = a.grant()
    assert grant is not None
    store = await open_async_store(url=pg_url, lease_seconds=LEASE)
    try:
        await store.track([TrackRequest(run_uuid="r1", project_id="p")])
        store.bind(a.grant)  # type: ignore[attr-defined]
        await store.record_polls([("r1", datetime.now(UTC))])  # active: written
        clock.jump = LEASE + 1  # the process wakes up after a freeze past its deadline
        assert not a.holding()
        assert a.standby()
        assert a.grant() is None
        with pytest.raises(LeaseLost):
            await store.record_polls([("r1", datetime.now(UTC))])
        await asyncio.wait_for(term.lost.wait(), 30)
        # A user's write is not the daemon's: it is not fenced.
        await store.track([TrackRequest(run_uuid="r2", project_id="p")])
        assert await store.get_run("r2") is not None
    finally:
        await store.close()


async def test_the_active_work_stops_at_once_when_the_lease_is_lost_and_drains_on_stop(
    pg_url: str, claims: Callable[..., LeaseClaim]
) -> None:
    log = structlog.get_logger("test")
    a = claims("daemon-a")
    events: list[str] = []

    async def term(drain: asyncio.Event) -> None:
        events.append("started")
        try:
            await drain.wait()
            events.append("drained")
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    stop = asyncio.Event()
    serving = asyncio.ensure_future(serve_terms(a, term, stop=stop, log=log))
    await until(lambda: events == ["started"], timeout=30)
    # Another daemon takes the row over (as after a freeze): a's next renewal finds it gone.
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(
            "UPDATE lease SET holder = 'daemon-x', epoch = epoch + 1, "
            "expires_at = extract(epoch FROM clock_timestamp()) + 3600"
        )
        await until(lambda: events == ["started", "cancelled"], timeout=30)
        assert a.standby()
        assert not serving.done()  # a standby again, waiting for a new term
        await admin.execute("UPDATE lease SET holder = NULL, expires_at = 0")
        await until(lambda: events == ["started", "cancelled", "started"], timeout=30)
        epoch = (await lease.state(admin)).epoch
        stop.set()
        await asyncio.wait_for(serving, 30)
        assert events[-1] == "drained"
        released = await lease.state(admin)
        assert released.holder is None
        assert released.epoch == epoch
    finally:
        await admin.close()


async def test_no_http_request_leaves_the_session_without_the_lease() -> None:
    """The session hook: the server sees nothing from a daemon that is not holding."""
    seen: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    holding = False
    try:
        trace = lease_trace(lease_gate(lambda: holding))
        async with aiohttp.ClientSession(trace_configs=[trace]) as http:
            url = f"http://127.0.0.1:{server.port}/hook"
            sending = asyncio.ensure_future(http.post(url, data=b"{}"))
            await asyncio.sleep(0.3)
            assert not sending.done()
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            assert seen == []
            holding = True
            async with http.post(url, data=b"{}") as resp:
                assert resp.status == 204
            assert seen == ["/hook"]
    finally:
        await server.close()


async def test_a_database_failure_of_the_active_work_hands_the_lease_over(
    pg_url: str, claims: Callable[..., LeaseClaim]
) -> None:
    """A StateError from the work (a connection cut mid-write) does not end the process: the
    term ends, the lease is released at once, and the next term may be this daemon's."""
    log = structlog.get_logger("test")
    a = claims("daemon-a")
    terms: list[int] = []

    async def term(drain: asyncio.Event) -> None:
        current = a.term
        assert current is not None
        terms.append(current.epoch)
        if len(terms) == 1:
            raise StateError("database t: connection was closed in the middle of operation")
        await drain.wait()

    stop = asyncio.Event()
    serving = asyncio.ensure_future(serve_terms(a, term, stop=stop, log=log))
    try:
        await until(lambda: len(terms) == 2, timeout=30)
        assert terms[1] == terms[0] + 1  # released, then taken again: a new epoch
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)
