"""Failed authentications (admin API bearer token, status page login): counted, logged bounded.

Why: every refused request used to write one ``admin_auth_failed`` line, so a client sending
wrong tokens as fast as it could wrote the log as fast as it could. Now every failure is
counted in ``omics_watcher_admin_auth_failures_total{via}`` (``via``: ``api`` or
``ui_login``; never the address, whose values are unbounded), and the log gets, per window of
``every`` seconds (opened by a failure):

- the first failure of each address in full (its own event name, e.g. ``admin_auth_failed``),
  for at most ``detailed`` addresses;
- when more failed, one ``auth_failures_suppressed`` line at the window's end: how many were
  not logged, from how many addresses, and the busiest addresses with their counts.

So a window writes at most ``detailed + 1`` lines, whatever the rate. The per-address table
holds at most ``max_addresses`` entries (failures from further addresses are still counted in
the totals). The status page's :class:`~watcher.ui.sessions.LoginThrottle` decides whether a
login may be tried; this module only reports, for both the API and the page (one path).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web

Via = Literal["api", "ui_login"]
VIAS: tuple[Via, ...] = ("api", "ui_login")
BUSIEST_SHOWN = 5


class AuthFailureLog:
    """Counts every failure (``count(via)``) and logs them bounded (see the module docstring)."""

    def __init__(
        self,
        *,
        log: Any,
        count: Callable[[Via], None],
        every: float = 60.0,
        detailed: int = 5,
        max_addresses: int = 1024,
    ) -> None:
        self._log = log
        self._count = count
        self._every = every
        self._detailed = detailed
        self._max_addresses = max_addresses
        self._window: asyncio.TimerHandle | None = None
        self._logged: set[str] = set()  # addresses logged in full in this window
        self._by_address: Counter[str] = Counter()  # not logged in full, in this window
        self._by_via: Counter[str] = Counter()
        self._suppressed = 0

    def failed(self, remote: str | None, via: Via, event: str, **fields: Any) -> None:
        """One refused authentication from ``remote``; ``event``/``fields``: its full line."""
        self._count(via)
        address = remote or "?"
        if self._window is None:
            self._window = asyncio.get_running_loop().call_later(self._every, self.flush)
        if address not in self._logged and len(self._logged) < self._detailed:
            self._logged.add(address)
            self._log.warning(event, remote=address, **fields)
            return
        self._suppressed += 1
        self._by_via[via] += 1
        if address in self._by_address or len(self._by_address) < self._max_addresses:
            self._by_address[address] += 1

    def flush(self) -> None:
        """End the window: the summary line when failures went unlogged. Also at shutdown."""
        if self._window is not None:
            self._window.cancel()
            self._window = None
        if self._suppressed:
            self._log.warning(
                "auth_failures_suppressed",
                suppressed=self._suppressed,
                by_via=dict(self._by_via),
                addresses=len(self._by_address),
                busiest={a: n for a, n in self._by_address.most_common(BUSIEST_SHOWN)},
                period_seconds=self._every,
            )
        self._logged.clear()
        self._by_address.clear()
        self._by_via.clear()
        self._suppressed = 0

    async def on_cleanup(self, app: web.Application) -> None:
        self.flush()


AUTH_FAILURES = web.AppKey("auth_failures", AuthFailureLog)
