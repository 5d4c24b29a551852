"""What the PostgreSQL store's parts share: the pool, the clock, transactions, error mapping.

Invariants:
- Every failure of the database or of the connection to it leaves this package as a
  :class:`~watcher.store.db.StateError` naming the database by its name only (a URL may
  carry a password, so it is never quoted, and reasons are scrubbed of it).
- Every write goes through :meth:`PgBase._write`: one transaction on one pooled connection,
  committed when the block ends, rolled back if it raises. When the store is bound to a
  lease (:meth:`PgBase.bind`), the daemon's writes are fenced first
  (:func:`~watcher.store.pg.lease.fence`) in that transaction, and raise
  :class:`~watcher.store.pg.lease.LeaseLost` (not a ``StateError``) on a standby before a
  connection is even taken. A write of one statement may instead go through
  :meth:`PgBase._write_one`: the same fence and the write in one statement, one round trip
  (the dispatcher's marks, one per delivery). User writes (track, untrack, silences,
  redelivery) pass ``fenced=False``: they belong to the user, on any replica, and
  compare-and-set keeps them safe.
- Reads that must agree with each other (a snapshot and its cursor, a run's history) run in
  one ``REPEATABLE READ READ ONLY`` transaction; single reads run in autocommit.
- Registry writers (track, untrack, discovery) take the ``change_seq`` counter row first, so
  they commit one at a time in counter order, as SQLite's single writer does: a reader's
  cursor never skips a change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from watcher.store.db import StateError, to_ts
from watcher.store.pg.lease import Grant, LeaseLost, fence, fence_args, fence_query

# Failures of the server, of the protocol or of the network: all become StateError.
DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # A pooled connection whose server session was ended (pg_terminate_backend, a failover)
    # can fail its next statement with "another operation is in progress".
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
NO_LIMIT = 2**63 - 1  # above any seq or id: "no upper bound" without composing SQL


def database_name(url: str) -> str:
    """The database a libpq URL names (``dbname`` parameter, else its path, else the user)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if query.get("dbname"):
        return query["dbname"][0]
    path = unquote(parts.path.lstrip("/"))
    if path:
        return path
    return unquote(parts.username or "") or "postgres"


def secret_of(url: str) -> str | None:
    """The URL's password, to scrub from reasons (never shown)."""
    parts = urlsplit(url)
    found = parts.password or next(iter(parse_qs(parts.query).get("password", [])), None)
    return unquote(found) if found else None


def describe(name: str, exc: BaseException, secret: str | None = None) -> str:
    """A one-line reason naming the database (never its URL)."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if secret:
        reason = reason.replace(secret, "***")
    if isinstance(exc, OSError | TimeoutError) and not isinstance(exc, asyncpg.PostgresError):
        return f"database {name} cannot be reached ({reason})"
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return f"database {name} refused the credentials ({reason})"
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return f"database {name}: the role lacks a right the watcher needs ({reason})"
    return f"database {name}: {reason}"


class PgBase:
    """The pool, the clock and the transaction helpers of the PostgreSQL store."""

    _pool: asyncpg.Pool
    _name: str
    _secret: str | None
    _clock: Callable[[], datetime]
    _grant_of: Callable[[], Grant | None] | None

    def bind(self, grant_of: Callable[[], Grant | None] | None) -> None:
        """Fence the daemon's writes with the lease ``grant_of()`` returns (``None``: this
        daemon is a standby, its writes raise :class:`LeaseLost`); ``bind(None)`` unbinds."""
        self._grant_of = grant_of

    def _now(self) -> float:
        return to_ts(self._clock())

    def _error(self, exc: BaseException) -> StateError:
        return StateError(describe(self._name, exc, self._secret))

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for the block; database failures become :class:`StateError`."""
        try:
            async with self._pool.acquire() as proxy:
                # The pool hands out a proxy that forwards to the connection.
                yield cast(asyncpg.Connection, proxy)
        except DB_ERRORS as exc:
            raise self._error(exc) from None

    def _grant(self) -> Grant | None:
        """The lease the daemon's writes are fenced with (``None``: not bound to one)."""
        if self._grant_of is None:
            return None
        grant = self._grant_of()
        if grant is None:
            raise LeaseLost("this daemon (a standby)", 0)
        return grant

    @asynccontextmanager
    async def _write(self, *, fenced: bool = True) -> AsyncIterator[asyncpg.Connection]:
        """One write transaction (see the module docstring for the fence)."""
        grant = self._grant() if fenced else None
        async with self._conn() as conn, conn.transaction():
            if grant is not None:
                await fence(conn, grant)
            yield conn

    async def _write_one(self, write: str, *args: object) -> int:
        """One fenced write statement in one round trip; returns the rows it wrote.

        Why: a delivery's mark is one ``UPDATE``; through :meth:`_write` it costs four round
        trips (BEGIN, fence, ``UPDATE``, COMMIT). Here the fence is a ``WITH fence`` of the
        same statement, which is its own transaction (see :mod:`~watcher.store.pg.lease`).
        ``write`` must join ``fence`` (``UPDATE ... FROM fence WHERE ...``), so it writes
        nothing unless the fence found the lease; its parameters are ``args``. Unbound,
        ``fence`` is one empty row and the write runs as it is.
        """
        grant = self._grant()
        head = "SELECT" if grant is None else fence_query(len(args) + 1)
        params = args if grant is None else (*args, *fence_args(grant))
        sql = (
            f"WITH fence AS ({head}), written AS ({write} RETURNING 1) "  # noqa: S608 - literals
            "SELECT (SELECT count(*) FROM fence), (SELECT count(*) FROM written)"
        )
        async with self._conn() as conn:
            row = await conn.fetchrow(sql, *params)
        assert row is not None  # an aggregate's one row
        if grant is not None and not row[0]:
            raise LeaseLost(grant.holder, grant.epoch)
        return int(row[1])

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[asyncpg.Connection]:
        """A read-only transaction: every query in the block sees the same snapshot."""
        async with (
            self._conn() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield conn

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        """One autocommit query, all rows."""
        async with self._conn() as conn:
            return list(await conn.fetch(sql, *args))


def command_count(status: str) -> int:
    """The row count of a command tag (``UPDATE 3``, ``DELETE 0``, ``INSERT 0 1``)."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


async def next_change_seq(conn: asyncpg.Connection) -> int:
    """Bump and return the registry's change counter (its row lock orders registry writers)."""
    return int(
        await conn.fetchval(
            "UPDATE counters SET value = value + 1 WHERE name = 'change_seq' RETURNING value"
        )
    )


async def lock_change_seq(conn: asyncpg.Connection) -> int:
    """Take the change counter's row lock without bumping it; returns its value."""
    return int(
        await conn.fetchval("SELECT value FROM counters WHERE name = 'change_seq' FOR UPDATE")
    )
