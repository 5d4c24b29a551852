"""The :class:`PgStore` facade: the PostgreSQL state's pool, opened and closed again.

The methods live in one mixin per concern, as the SQLite store's (registry, recording and
journal, outbox with history and holds, silences, discovery with groups and references,
the status page's reads); this class only owns the pool, the clock and the lease binding.
See :mod:`watcher.store.pg.base` for the invariants every part keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import asyncpg

from watcher.store.api import DerivedReads
from watcher.store.db import StateError, StateMissing, utc_now
from watcher.store.pg.base import DB_ERRORS, database_name, describe, secret_of
from watcher.store.pg.figures import FiguresMixin
from watcher.store.pg.journal import JournalMixin, RecordingMixin
from watcher.store.pg.lease import Grant, session_settings
from watcher.store.pg.outbox import HistoryMixin, HoldsMixin, OutboxMixin
from watcher.store.pg.overview import OverviewMixin
from watcher.store.pg.registry import RegistryMixin
from watcher.store.pg.runs_extra import DiscoveryMixin, GroupsMixin
from watcher.store.pg.schema import MIGRATIONS, migrate, schema_version
from watcher.store.pg.silences import SilencesMixin

DEFAULT_POOL_SIZE = 10
CONNECT_TIMEOUT = 10.0


async def keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset of a released connection: nothing beyond asyncpg's own rollback.

    asyncpg's default reset sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` at every release: a second round trip and four statements for every store
    call, most of which are one statement (``benchmarks/backend_bench.py``). The store leaves
    no session state to undo: settings are transaction-local (``set_config(..., true)``),
    advisory locks transaction-level, no LISTEN, no cursor outlives its transaction; and the
    pool still rolls back a transaction left open (and drops listeners) before calling this.
    """


class PgStore(
    RegistryMixin,
    RecordingMixin,
    JournalMixin,
    OutboxMixin,
    HistoryMixin,
    HoldsMixin,
    DiscoveryMixin,
    GroupsMixin,
    OverviewMixin,
    SilencesMixin,
    FiguresMixin,
    DerivedReads,
):
    """The watcher's state in PostgreSQL (:class:`~watcher.store.api.AsyncStore`)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        name: str,
        *,
        secret: str | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._pool = pool
        self._name = name
        self._secret = secret
        self._clock = clock
        self._grant_of: Callable[[], Grant | None] | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        create: bool = True,
        clock: Callable[[], datetime] = utc_now,
        lease_seconds: float = 15.0,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> PgStore:
        """Connect a pool to ``url`` and check (``create``: migrate) the schema.

        Without ``create`` (reading commands) a database without our schema is refused and
        nothing is created. Raises :class:`StateError`, naming the database, never the URL.
        """
        name, secret = database_name(url), secret_of(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=CONNECT_TIMEOUT,
                server_settings=session_settings(lease_seconds),
                reset=keep_session,
            )
        except DB_ERRORS as exc:
            raise StateError(describe(name, exc, secret)) from None
        except ValueError:  # a malformed URL; its text may quote the URL
            raise StateError(
                f"database {name}: [state] url is not a valid PostgreSQL URL"
            ) from None
        store = cls(pool, name, secret=secret, clock=clock)
        try:
            await store._check_schema(create)
        except BaseException:
            await pool.close()
            raise
        return store

    async def _check_schema(self, create: bool) -> None:
        async with self._conn() as conn:
            if create:
                await migrate(conn)
                return
            version = await schema_version(conn)
        if version == 0:
            raise StateMissing(
                f"database {self._name} holds no omics-watcher state yet "
                "(the daemon or 'track' creates it)"
            )
        if version > len(MIGRATIONS):
            raise StateError(
                f"database {self._name} has schema version {version}, newer than this "
                f"omics-watcher knows ({len(MIGRATIONS)}); upgrade omics-watcher"
            )

    @property
    def name(self) -> str:
        return f"database {self._name}"

    async def close(self) -> None:
        await self._pool.close()
