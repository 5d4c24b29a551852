"""The daemon's view of the silences: the stored ones, reloaded when another process changed them.

Why: ``omics-watcher silence add`` and the admin API write silences into the state file while
the daemon runs; the dispatcher must apply them within 2 s without reading the table for every
delivery. :class:`LiveSilences` reads the store's ``silence_version`` (one row) at most once
per ``check_every`` seconds (1 s), and the silences themselves only when that number moved,
so a change is applied at the latest about a second after it was committed.

The dispatcher refreshes once per planning step (:meth:`LiveSilences.refresh`, which awaits
the store only when a second has passed) and then asks for each delivery about to go
(:meth:`LiveSilences.silencing`, no I/O): only deliveries
about to be sent are checked, so a delivery waiting for a retry that a new silence matches is
silenced at its next attempt. A state file that cannot be read keeps the last snapshot (the
failure is logged once per change of reason); deliveries are never held back for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from watcher.delivery.silencing import Silence, Silences
from watcher.events import Event
from watcher.store.api import SilenceSource
from watcher.store.db import StateError

DEFAULT_CHECK_EVERY = 1.0


class SilenceCheck(Protocol):
    """What the dispatcher asks at its planning step (:class:`LiveSilences` answers)."""

    async def refresh(self) -> None:
        """Reload the silences if they may have changed (once per planning step)."""
        ...

    def silencing(self, event: Event, notifier: str, now: datetime) -> Silence | None: ...


class LiveSilences:
    """The current silences of one state file, refreshed lazily; see the module docstring."""

    def __init__(
        self,
        source: SilenceSource,
        *,
        logger: Any,
        check_every: float = DEFAULT_CHECK_EVERY,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._log = logger
        self._check_every = check_every
        self._monotonic = monotonic
        self._version: int | None = None
        self._next_check = -float("inf")
        self._snapshot = Silences()
        self._failed: str | None = None

    async def refresh(self) -> None:
        """Reload if the stored silences changed (checked at most every ``check_every`` s)."""
        mono = self._monotonic()
        if mono < self._next_check:
            return
        self._next_check = mono + self._check_every
        try:
            version = await self._source.silence_version()
            if version == self._version:
                return
            items = tuple(await self._source.current_silences())
        except StateError as exc:
            if self._failed != str(exc):
                self._log.warning("silences_unreadable", error=str(exc))
                self._failed = str(exc)
            return
        self._failed = None
        self._version = version
        self._snapshot = Silences(items)
        self._log.info("silences_loaded", silences=len(items))

    def silencing(self, event: Event, notifier: str, now: datetime) -> Silence | None:
        """The silence that withholds ``event`` from ``notifier`` at ``now``, if any (as of
        the last :meth:`refresh`)."""
        return self._snapshot.silencing(event, notifier, now)
