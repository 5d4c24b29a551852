"""The lease supervisor: which of several daemons sharing one PostgreSQL state is active.

Why: replicas share the database so that a dead node costs seconds, not a volume reattach;
exactly one of them may poll, record and deliver (the GetRunStatus budget and "recorded
once" both depend on it). :mod:`~watcher.store.pg.lease` holds the row and the fencing;
this module is the task that holds *this* daemon's side of it: the
:class:`~watcher.store.lock.StateClaim` of a PostgreSQL state.

How (a :class:`LeaseClaim`, one task, :meth:`LeaseClaim.run`):

- Its own connection, outside the store's pool, so a busy pool never delays a renewal
  (opened with :func:`~watcher.store.pg.lease.session_settings`; reopened after any failure).
- As a standby it tries :func:`~watcher.store.pg.lease.acquire` every ``retry_seconds`` (1).
  Once it holds the lease it still waits ``takeover_pause`` (1 s) before it counts as
  active: the old holder stopped calling the API by its own local deadline, which comes
  before the lease's expiry in the database, and a second more keeps that holder's last
  requests out of any 1 s window the new holder's requests fall in (the budget holds across
  a takeover). A released lease (the old holder drained and handed over) is taken at once.
- As the active daemon it renews every ``lease_seconds / 3``. The lease is lost the moment
  the local :attr:`~watcher.store.pg.lease.Grant.deadline` passes without a renewal, or a
  renewal finds the row taken: :meth:`LeaseClaim.holding` turns false by the clock alone
  (true even of a process that was frozen and has not run a line since it woke up), the
  current :class:`Term`'s ``lost`` event is set, and the claim goes back to standby. A lost
  grant is never renewed again, even if the database would still allow it: the daemon has
  already stopped its work, and it starts a new term with a new epoch.
- :meth:`LeaseClaim.grant` is what :meth:`PgStore.bind <watcher.store.pg.base.PgBase.bind>`
  fences writes with; :meth:`LeaseClaim.standby` is what ``/readyz`` and the polling_state
  gauge read; :meth:`LeaseClaim.holding` gates every API request and every notification
  (:func:`watcher.replica.lease_gate`).
- :meth:`LeaseClaim.aclose` (SIGTERM, after the daemon drained) releases the lease so a
  standby takes over at once, and closes the connection.

Failures of the database are logged once per outage (``lease_db_unreachable``) and retried;
they never stop the daemon: a standby stays a standby, an active daemon stays active until
its deadline, then stops like any daemon that lost its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from watcher.store.pg import lease
from watcher.store.pg.base import DB_ERRORS, database_name, describe, secret_of
from watcher.store.pg.lease import Grant
from watcher.tasks import wait_set

RETRY_SECONDS = 1.0
TAKEOVER_PAUSE = 1.0
CONNECT_TIMEOUT = 5.0
_FAILED: Any = object()  # the database did not answer (logged; tried again)


@dataclass(eq=False)
class Term:
    """One stretch of this daemon being the active one (one epoch).

    ``lost`` is set when the lease is lost (deadline passed without renewal, or the row was
    taken); a term ended by :meth:`LeaseClaim.aclose` is not lost, it was handed over.
    """

    epoch: int
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class LeaseClaim:
    """This daemon's side of the lease; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float,
        holder: str | None = None,
        retry_seconds: float = RETRY_SECONDS,
        takeover_pause: float = TAKEOVER_PAUSE,
        connect: Callable[..., Any] = asyncpg.connect,
        monotonic: Callable[[], float] = time.monotonic,
        logger: Any = None,
    ) -> None:
        if not lease_seconds > 0:
            raise ValueError("lease_seconds: must be more than 0")
        self._url = url
        self._name = database_name(url)
        self._secret = secret_of(url)
        self.lease_seconds = lease_seconds
        self.holder = holder or lease.new_holder()
        self._retry = retry_seconds
        self._pause = takeover_pause
        self._connect = connect
        self._monotonic = monotonic
        self._log = logger or structlog.get_logger("watcher.lease")
        self._conn: asyncpg.Connection | None = None
        self._grant: Grant | None = None
        self._active_from = 0.0
        self._term: Term | None = None
        self._became_active = asyncio.Event()
        self._closed = False
        self._db_down = False
        self._task: asyncio.Task[None] | None = None
        # Set once the first attempt to take the lease is over (whatever its outcome): from
        # then on the daemon knows whether it starts as a standby (sd_notify READY for one).
        self.tried = asyncio.Event()
        self._handover: Grant | None = None  # a grant given up by step_down, to release
        self._wake = asyncio.Event()  # step_down wakes the renewal loop

    # -- what the rest of the daemon reads ---------------------------------------------------
    def grant(self) -> Grant | None:
        """The lease while it is ours by the local clock (the store fences with it)."""
        grant = self._grant
        if grant is None or self._monotonic() >= grant.deadline:
            return None
        return grant

    def holding(self) -> bool:
        """True while this daemon is the active one: the lease is ours by the local clock and
        the takeover pause is over. Gates every API request and notification (one clock read)."""
        grant = self._grant
        if grant is None:
            return False
        now = self._monotonic()
        return self._active_from <= now < grant.deadline

    def standby(self) -> bool:
        """``/readyz`` says ``standby`` while this is true."""
        return not self.holding()

    @property
    def term(self) -> Term | None:
        """The current term, if this daemon is active (or in its takeover pause)."""
        return self._term

    async def next_term(self) -> Term:
        """Wait until this daemon is active (takeover pause over) and return that term."""
        while True:
            await self._became_active.wait()
            term = self._term
            if term is not None and not term.lost.is_set() and self.holding():
                return term
            self._became_active.clear()

    # -- the task ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Standby and active phases, until cancelled or :meth:`aclose`."""
        try:
            while not self._closed:
                grant = await self._standby_phase()
                if grant is None:
                    return
                await self._active_phase(grant)
        finally:
            await self._drop_connection()

    async def _standby_phase(self) -> Grant | None:
        """Try to take the lease every ``retry_seconds`` until it is ours (None: closed)."""
        while not self._closed:
            grant = await self._guarded(
                lambda conn: lease.acquire(
                    conn, self.holder, self.lease_seconds, monotonic=self._monotonic
                )
            )
            self.tried.set()
            if grant is not None and grant is not _FAILED:
                assert isinstance(grant, Grant)
                return grant
            await asyncio.sleep(self._retry)
        return None

    async def _active_phase(self, grant: Grant) -> None:
        """Hold the lease, renewing every third of it, until it is lost or closed."""
        self._take(grant)
        renew_every = self.lease_seconds / 3
        last_sent = grant.deadline - self.lease_seconds
        while not self._closed:
            if self._handover is not None:
                await self._release(self._handover)
                return
            now = self._monotonic()
            current = self._grant
            if current is None or now >= current.deadline:
                self._lose("deadline passed without a renewal")
                return
            wake = min(last_sent + renew_every, current.deadline)
            if now < wake:
                self._wake.clear()
                await wait_set(self._wake, wake - now)
                continue
            last_sent = now
            renewed = await self._renew(current)
            if renewed is None:  # no answer: try again soon, still before the deadline
                last_sent = self._monotonic() - renew_every + self._retry
                continue
            if renewed is False:
                self._lose("the lease was taken over")
                return
            if self._grant is current and isinstance(renewed, Grant):
                self._grant = renewed

    async def _renew(self, grant: Grant) -> Grant | bool | None:
        """A renewal bounded by the deadline: the new grant, ``False`` if the row is no longer
        ours, ``None`` if the database did not answer in time (tried again)."""
        left = grant.deadline - self._monotonic()
        if left <= 0:
            return None
        try:
            renewed = await asyncio.wait_for(
                self._guarded(
                    lambda conn: lease.renew(
                        conn, grant, self.lease_seconds, monotonic=self._monotonic
                    )
                ),
                timeout=left,
            )
        except TimeoutError:
            await self._drop_connection()
            return None
        if renewed is _FAILED:
            return None
        if renewed is None:
            return False
        assert isinstance(renewed, Grant)
        return renewed

    def _take(self, grant: Grant) -> None:
        self._grant = grant
        self._active_from = self._monotonic() + self._pause
        self._term = Term(grant.epoch)
        self._log.info(
            "lease_acquired",
            holder=self.holder,
            epoch=grant.epoch,
            active_in_seconds=self._pause,
        )
        asyncio.get_running_loop().call_later(self._pause, self._announce, self._term)

    def _announce(self, term: Term) -> None:
        if self._term is term and self.holding():
            self._log.info("lease_active", holder=self.holder, epoch=term.epoch)
            self._became_active.set()

    def _lose(self, reason: str) -> None:
        term, self._term, self._grant = self._term, None, None
        self._became_active.clear()
        if term is not None:
            term.lost.set()
            self._log.warning(
                "lease_lost", holder=self.holder, epoch=term.epoch, reason=reason, role="standby"
            )

    def step_down(self, reason: str) -> None:
        """Stop being the active daemon at once and hand the lease over (the active work
        failed, e.g. its connection to the database was cut mid-write): the row is released
        so a standby, or this daemon at its next try, takes over without waiting for expiry.
        The caller has already stopped the work."""
        grant = self._grant
        if self._term is None or grant is None:
            return
        self._lose(reason)
        self._handover = grant
        self._wake.set()

    async def _release(self, grant: Grant) -> None:
        self._handover = None
        released = await self._guarded(lambda conn: lease.release(conn, grant))
        if released is True:
            self._log.info("lease_released", holder=self.holder, epoch=grant.epoch)

    def forfeit(self, reason: str) -> None:
        """Give up a term the database no longer honours (a write was fenced out): stop at
        once and go back to standby; the next renewal would fail anyway."""
        if self._term is not None:
            self._lose(reason)

    # -- the connection ----------------------------------------------------------------------
    async def _guarded(self, call: Callable[[asyncpg.Connection], Any]) -> Any:
        """``call(conn)`` on the claim's own connection; a database failure is logged once
        per outage, drops the connection and answers :data:`_FAILED`."""
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect(
                    self._url,
                    timeout=CONNECT_TIMEOUT,
                    server_settings=lease.session_settings(self.lease_seconds),
                )
            result = await call(self._conn)
        except DB_ERRORS as exc:
            if not self._db_down:
                self._db_down = True
                self._log.warning(
                    "lease_db_unreachable", error=describe(self._name, exc, self._secret)
                )
            await self._drop_connection()
            return _FAILED
        if self._db_down:
            self._db_down = False
            self._log.info("lease_db_reachable", database=self._name)
        return result

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    def start(self) -> asyncio.Task[None]:
        """Run :meth:`run` as a task of its own (ended by :meth:`aclose`)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="lease")
        return self._task

    async def aclose(self) -> None:
        """Stop the task, release the lease if it is ours (after draining: a standby takes
        over at once) and close the connection."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        grant, term = self.grant(), self._term
        self._term, self._grant = None, None
        self._became_active.clear()
        if grant is not None:
            await self._release(grant)
        elif term is not None:
            term.lost.set()
        await self._drop_connection()
