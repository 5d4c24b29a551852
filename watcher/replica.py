"""One daemon among replicas sharing a PostgreSQL state: active or standby, and the switch.

Why: a standby must keep serving (``/healthz``, ``/metrics``, the admin API, the status
page) while it polls, records and delivers nothing; the active daemon must stop all of that
the moment its lease is lost, and hand over at once when it is told to stop. The lease
itself is :class:`~watcher.store.pg.claim.LeaseClaim`'s; this module is what the composition
root runs around it:

- :func:`serve_terms` runs the daemon's active work (polling, roll-ups, delivery, stuck
  checks, discovery, pruning: the ``term`` coroutine the composition root provides) for each
  term the claim grants. A lost lease cancels that work at once (nothing is drained: its
  writes would be fenced out anyway) and the daemon is a standby again, waiting for a new
  term. A stop while active sets the term's ``drain`` event (the work finishes in its usual
  order) and then releases the lease so a standby takes over without waiting for it to
  expire. A :class:`~watcher.store.pg.lease.LeaseLost` from the work (the database fenced a
  write out) ends the term the same way as a lost lease; a
  :class:`~watcher.store.db.StateError` (the database failed a write: a connection cut,
  the server restarting) ends it too and hands the lease over at once, instead of ending
  the process: it keeps serving as a standby and may be granted the next term itself.
- :func:`lease_gate` reads :meth:`LeaseClaim.holding` (the clock, not a flag) at the last
  moment before anything leaves the daemon, and parks the caller until its task is cancelled
  when the lease is not held. The cancellation above needs the loop to run; after a freeze
  (SIGSTOP, a stalled VM) the loop may first resume polls and deliveries that were due long
  ago, and this gate is what keeps them from leaving a daemon that lost its lease, whatever
  code path they came from. It has two users, so every way out reads the same answer:
  :func:`lease_trace`, a trace hook on the daemon's one HTTP session run by aiohttp just
  before each request is sent (GetRunStatus, enrichment calls, HTTP notifications), and the
  dispatcher, which awaits it right before each notifier's attempt (every kind, email over
  SMTP too, which does not use that session). It gates the start, not every byte: a request
  or an SMTP session it let start before a freeze is not recalled, and may leave at the
  thaw, after a takeover; a notification's mark is then fenced out, so the new active daemon
  sends it again (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp

from watcher.store.db import StateError
from watcher.store.pg.claim import LeaseClaim
from watcher.store.pg.lease import LeaseLost

Term = Callable[[asyncio.Event], Awaitable[None]]
# Awaited right before something leaves the daemon: returns while it may, else never.
Gate = Callable[[], Awaitable[None]]


async def _park() -> None:
    """Wait until cancelled: the work of a daemon that lost its lease is about to be."""
    await asyncio.Event().wait()


def lease_gate(holding: Callable[[], bool]) -> Gate:
    """The gate to await right before sending anything: it returns at once while
    ``holding()`` (one call, no suspension) and otherwise parks until the caller's task is
    cancelled, which a lost lease does to all of the term's work."""

    async def gate() -> None:
        if not holding():
            await _park()

    return gate


def lease_trace(gate: Gate) -> aiohttp.TraceConfig:
    """A trace hook for the daemon's HTTP session: each request awaits ``gate`` (the
    :func:`lease_gate` the dispatcher awaits too) before it starts."""

    async def on_request_start(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        await gate()

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    return trace


async def starts_as_standby(claim: LeaseClaim) -> bool:
    """Wait for the claim's first try at the lease; true if another replica holds it (the
    daemon then tells systemd it is up: a standby never finishes a first poll cycle)."""
    await claim.tried.wait()
    return claim.term is None


def _only(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """True if ``exc`` (an exception group: each of its leaves) is one of ``kinds``."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(inner, kinds) for inner in exc.exceptions)
    return isinstance(exc, kinds)


def _first_line(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return str(exc)


async def serve_terms(claim: LeaseClaim, term: Term, *, stop: asyncio.Event, log: Any) -> None:
    """Run ``term(drain)`` for every term ``claim`` grants, until ``stop`` is set.

    Starts the claim's task (:meth:`LeaseClaim.start`). Returns once stopped: after the
    active term drained, with the lease released (:meth:`LeaseClaim.aclose`, so a standby
    takes over at once), or at once on a standby.
    """
    claim.start()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            granted = asyncio.ensure_future(claim.next_term())
            await asyncio.wait({granted, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not granted.done():
                granted.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await granted
                return
            await _one_term(claim, term, granted.result().lost, stopping, log)
    finally:
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
    await claim.aclose()


async def _one_term(
    claim: LeaseClaim, term: Term, lost: asyncio.Event, stopping: asyncio.Future[Any], log: Any
) -> None:
    """One term: the work until the lease is lost (cancelled at once) or ``stopping``
    (drained, then the lease released)."""
    drain = asyncio.Event()
    work = asyncio.ensure_future(term(drain))
    losing = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait({work, losing, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.done() and not losing.done():
            drain.set()
            await asyncio.wait({work, losing}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():  # the lease was lost: stop everything at once
            work.cancel()
        try:
            await work
        except asyncio.CancelledError:
            if not losing.done():
                raise
        except BaseException as exc:
            if _only(exc, (LeaseLost,)):
                claim.forfeit("a write was fenced out by a newer lease")
            elif _only(exc, (LeaseLost, StateError)):
                # The database failed the active work (a connection cut mid-write): the
                # process keeps serving as a standby and hands the lease over at once.
                log.error("active_work_failed", error=_first_line(exc), role="standby")
                claim.step_down("the active work failed on the database")
            else:
                raise
        if lost.is_set():
            log.warning("active_work_stopped", reason="lease lost", role="standby")
    finally:
        losing.cancel()
        if not work.done():
            work.cancel()
