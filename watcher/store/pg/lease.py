"""The active daemon's lease in PostgreSQL, with a fencing epoch.

Why: several daemons may share one database, and exactly one of them may poll, record and
deliver. A lease row names that one (``holder``) until ``expires_at``; a standby takes it over
once it has expired (or was released), which bumps ``epoch``. Every write transaction of the
active daemon first checks, in that same transaction, that the row still holds its holder and
epoch (:func:`fence`), so a daemon that lost the lease (paused, partitioned, slow, frozen)
cannot record or mark anything any more, whatever it believes. No home-made consensus: the
row lock and the database's clock decide.

The row: ``lease (name, holder, epoch, expires_at)``, one per ``name`` (:data:`ACTIVE` for
the daemon). ``holder`` is ``NULL`` once released; ``epoch`` only ever grows.

Invariants and the reasoning behind them:
- Time is the database's only (``clock_timestamp()`` as unix seconds): ``expires_at`` is set
  and compared by the server, so clock skew between hosts cannot make two holders. Locally
  the holder counts its lease as lost at :attr:`Grant.deadline`, the monotonic time at which
  it *sent* the acquire or renewal plus ``lease_seconds``: never later than the server's
  ``expires_at``, so it stops polling before any standby may start (the budget holds).
- Exactly one contender wins: :func:`acquire` locks the row ``FOR UPDATE`` and re-reads it,
  so two contenders serialize and the second sees the first's fresh lease.
- Fencing vs renewals vs takeover, by row-lock strength: :func:`fence` takes ``FOR KEY
  SHARE``, which conflicts with ``FOR UPDATE`` but not with the ``FOR NO KEY UPDATE`` of a
  plain ``UPDATE`` of non-key columns. So a renewal (plain ``UPDATE``) never waits for the
  holder's own write transactions, while a takeover (``FOR UPDATE``) waits until every
  write transaction that passed the fence has committed or rolled back: no write of the old
  epoch commits after the new epoch exists. Once it exists, every later fence fails (READ
  COMMITTED re-reads the newest row version under the lock).
- A renewal succeeds while holder and epoch are ours, even just past ``expires_at`` if no
  standby took over meanwhile (the row lock orders the two; whichever comes first wins, and
  the epoch stays the single truth for writes).
- A frozen holder (SIGSTOP) in the middle of a write transaction keeps its ``KEY SHARE``
  lock, which would block a takeover forever: :func:`session_settings` sets
  ``idle_in_transaction_session_timeout`` (a fraction of the lease) on the daemon's
  connections, so the server ends that session and its locks, and :func:`acquire` gives up
  after ``lock_timeout`` instead of hanging (it is simply tried again). When the frozen
  daemon wakes up, its transaction is gone and its next fence fails.
- A killed connection (``pg_terminate_backend``, a network cut) rolls back the transaction
  it carried; the lease itself is not tied to a session, so the holder reconnects and
  carries on with the same epoch if it renews in time, else it finds itself fenced out.
- :func:`release` hands over at once (``holder = NULL``, expired); the epoch is kept, so the
  next :func:`acquire` bumps it.
- A write of one statement (the dispatcher's marks) carries the fence in that statement
  (:func:`fence_query` as a ``WITH`` the write joins): one round trip where BEGIN, fence,
  write and COMMIT take four, with the same guarantee, since the statement is its own
  transaction (the lock is held until it commits) and its write matches no row unless the
  fence found the lease row under the lock.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

ACTIVE = "active"
_NOW = "extract(epoch FROM clock_timestamp())::double precision"


class LeaseLost(Exception):
    """A write of a daemon whose lease (holder and epoch) is no longer the current one.

    Not a :class:`~watcher.store.db.StateError`: nothing is wrong with the database; this
    daemon must stop writing and become a standby.
    """

    def __init__(self, holder: str, epoch: int) -> None:
        super().__init__(f"lease lost: {holder} (epoch {epoch}) is no longer the active daemon")
        self.holder = holder
        self.epoch = epoch


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease held: what :func:`fence`, :func:`renew` and :func:`release` check.

    ``expires_at``: the database's unix seconds; ``deadline``: the local monotonic time after
    which the holder must count the lease as lost unless renewed (see the module docstring).
    """

    name: str
    holder: str
    epoch: int
    expires_at: float
    deadline: float


@dataclass(frozen=True, slots=True)
class LeaseState:
    """The row as a standby or ``/readyz`` sees it; ``remaining`` by the database's clock."""

    holder: str | None
    epoch: int
    remaining: float

    @property
    def held(self) -> bool:
        return self.holder is not None and self.remaining > 0


def new_holder() -> str:
    """A holder id unique to this process: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def session_settings(lease_seconds: float) -> dict[str, str]:
    """Server settings for every connection of a daemon holding (or seeking) the lease.

    A session idle inside a transaction for a third of the lease (at least 1 s) is ended by
    the server: its locks must not outlive a frozen holder's lease.
    """
    idle_ms = max(1000, int(lease_seconds * 1000 / 3))
    return {
        "application_name": "omics-watcher",
        "idle_in_transaction_session_timeout": str(idle_ms),
    }


def _check_seconds(lease_seconds: float) -> None:
    if not lease_seconds > 0:
        raise ValueError("lease_seconds: must be more than 0")


async def acquire(
    conn: asyncpg.Connection,
    holder: str,
    lease_seconds: float,
    *,
    name: str = ACTIVE,
    lock_wait: float = 1.0,
    monotonic: Callable[[], float] = time.monotonic,
) -> Grant | None:
    """Take the lease if it is free or expired (epoch + 1); ``None`` if someone holds it.

    Also ``None`` when a write transaction of the old holder keeps the row locked for more
    than ``lock_wait`` seconds: call again (a frozen one is ended by the server, see
    :func:`session_settings`).
    """
    _check_seconds(lease_seconds)
    sent = monotonic()
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT set_config('lock_timeout', $1, true)", f"{max(1, int(lock_wait * 1000))}"
            )
            await conn.execute(
                "INSERT INTO lease (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", name
            )
            row = await conn.fetchrow(
                f"SELECT holder, expires_at > {_NOW} AS live FROM lease WHERE name = $1 "  # noqa: S608 - a literal
                "FOR UPDATE",
                name,
            )
            if row is None or (row["holder"] is not None and row["live"]):
                return None
            taken = await conn.fetchrow(
                f"UPDATE lease SET holder = $2, epoch = epoch + 1, expires_at = {_NOW} + $3 "  # noqa: S608 - a literal
                "WHERE name = $1 RETURNING epoch, expires_at",
                name,
                holder,
                float(lease_seconds),
            )
    except asyncpg.LockNotAvailableError:
        return None
    assert taken is not None
    return Grant(
        name, holder, int(taken["epoch"]), float(taken["expires_at"]), sent + lease_seconds
    )


async def renew(
    conn: asyncpg.Connection,
    grant: Grant,
    lease_seconds: float,
    *,
    monotonic: Callable[[], float] = time.monotonic,
) -> Grant | None:
    """Extend the lease by ``lease_seconds`` from now; ``None`` if it is no longer ours."""
    _check_seconds(lease_seconds)
    sent = monotonic()
    expires = await conn.fetchval(
        f"UPDATE lease SET expires_at = {_NOW} + $4 "  # noqa: S608 - a literal
        "WHERE name = $1 AND holder = $2 AND epoch = $3 RETURNING expires_at",
        grant.name,
        grant.holder,
        grant.epoch,
        float(lease_seconds),
    )
    if expires is None:
        return None
    return Grant(grant.name, grant.holder, grant.epoch, float(expires), sent + lease_seconds)


async def release(conn: asyncpg.Connection, grant: Grant) -> bool:
    """Give the lease up at once (after draining); ``False`` if it was no longer ours."""
    status = await conn.execute(
        "UPDATE lease SET holder = NULL, expires_at = 0 "
        "WHERE name = $1 AND holder = $2 AND epoch = $3",
        grant.name,
        grant.holder,
        grant.epoch,
    )
    return bool(status == "UPDATE 1")


def fence_query(first: int = 1) -> str:
    """The fence's query: the lease row if ``grant`` (name, holder, epoch: parameters
    ``$first`` to ``$first + 2``) is still the lease, ``KEY SHARE`` locked until the
    transaction ends. One text for :func:`fence` and for a one-statement write's ``WITH``
    (:meth:`~watcher.store.pg.base.PgBase._write_one`), whose parameters come first."""
    return (
        f"SELECT epoch FROM lease WHERE name = ${first} AND holder = ${first + 1} "  # noqa: S608 - numbers
        f"AND epoch = ${first + 2} FOR KEY SHARE"
    )


def fence_args(grant: Grant) -> tuple[str, str, int]:
    """The parameters of :func:`fence_query`, in its order."""
    return grant.name, grant.holder, grant.epoch


async def fence(conn: asyncpg.Connection, grant: Grant) -> None:
    """Inside a write transaction, first: raise :class:`LeaseLost` unless ``grant`` is still
    the lease; otherwise hold a ``KEY SHARE`` lock on it until the transaction ends."""
    if not conn.is_in_transaction():
        raise RuntimeError("fence() must run inside the write transaction it guards")
    found = await conn.fetchval(fence_query(), *fence_args(grant))
    if found is None:
        raise LeaseLost(grant.holder, grant.epoch)


@asynccontextmanager
async def fenced(conn: asyncpg.Connection, grant: Grant) -> AsyncIterator[asyncpg.Connection]:
    """One write transaction of the active daemon: fenced first, committed at the end of the
    block, rolled back (nothing written) if the fence or the block raises."""
    async with conn.transaction():
        await fence(conn, grant)
        yield conn


async def state(conn: asyncpg.Connection, *, name: str = ACTIVE) -> LeaseState:
    """The lease as it stands (never held: no holder, epoch 0)."""
    row = await conn.fetchrow(
        f"SELECT holder, epoch, expires_at - {_NOW} AS remaining FROM lease WHERE name = $1",  # noqa: S608 - a literal
        name,
    )
    if row is None:
        return LeaseState(None, 0, 0.0)
    holder = row["holder"]
    remaining = max(0.0, float(row["remaining"])) if holder is not None else 0.0
    return LeaseState(holder, int(row["epoch"]), remaining)
