"""A pacing limiter that keeps *every* 1-second window at or under the budget, at the server.

Tencent counts requests per action as they arrive. A token bucket (``AsyncLimiter(20, 1)``)
averages 20/s but lets 39 through in one second; this limiter instead enforces two rules
for each new request:

1. pacing: at least ``1 / rate`` seconds after the previous grant, so load is smooth;
2. window: the request ``capacity`` grants earlier must have *finished* (or, if it hangs,
   be ``guard`` seconds old) more than one second ago. A request arrives at the server
   between its grant and its completion, so this bounds what the server can observe,
   whatever the scheduling jitter of either side.

On loopback the cost of rule 2 is tiny (19.9+/s of a 20/s budget); against a distant
endpoint it trades a little throughput for never being throttled. ``throttled()`` halves
the rate (once per second at most, since a burst of throttled answers is one signal) and
pauses for a second; the rate then climbs back linearly, because other tools may share
the account's budget and would be throttled again by an instant return to full speed.

Waiters are served first come, first served. Time comes from an injected monotonic clock.
The limiter knows nothing of actions or metrics: one limiter may pace several actions (the
GetRunCalls and GetRunJobLog budget), so the client times each request and labels it.

Why not ``aiolimiter``: ``AsyncLimiter(1, 1 / rate)`` does grant at exactly ``1 / rate``
spacing, which is rule 1, but it cannot carry the rest. Its leak rate is fixed in
``__init__`` (setting ``max_rate`` or ``time_period`` later changes nothing), so the throttle
response would need a new bucket, which starts empty and grants at once; a newcomer can take a
token ahead of a woken waiter, so the limiter's own lock is needed for first come, first
served anyway, and under that lock the bucket only ever computes ``last grant + 1 / rate``;
and it reads ``loop.time()`` rather than the injected clock the window rule and the tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

WINDOW_SECONDS = 1.0
_EPSILON = 0.002  # keep a closed 1 s window from holding capacity + 1 requests


class Limiter(Protocol):
    """What the Omics client needs from a limiter."""

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]: ...

    def throttled(self) -> None: ...


class _Grant:
    __slots__ = ("busy_until", "granted_at")

    def __init__(self, granted_at: float, busy_until: float) -> None:
        self.granted_at = granted_at
        self.busy_until = busy_until


class PacingLimiter:
    """At most ``rate`` requests in any 1 s window; slows down when the server throttles."""

    def __init__(
        self,
        rate: float,
        *,
        guard: float = 0.25,
        recover_per_second: float = 0.1,
        min_fraction: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.max_rate = rate
        self._rate = rate
        self._guard = guard
        self._recover = recover_per_second * rate
        self._min_rate = max(rate * min_fraction, 0.05)
        self._clock = clock
        self._sleep = sleep
        self._grants: deque[_Grant] = deque(maxlen=max(1, math.floor(rate)))
        self._last_grant = -math.inf
        self._paused_until = -math.inf
        self._last_throttle = -math.inf
        self._rate_changed_at = clock()
        self._lock = asyncio.Lock()
        self.waiting = 0  # callers queued for a permit right now

    @property
    def rate(self) -> float:
        """The rate in force now (below ``max_rate`` while recovering from throttling)."""
        self._recover_rate(self._clock())
        return self._rate

    def _recover_rate(self, now: float) -> None:
        if self._rate < self.max_rate:
            gained = (now - self._rate_changed_at) * self._recover
            self._rate = min(self.max_rate, self._rate + gained)
        self._rate_changed_at = now

    def _capacity(self) -> int:
        return max(1, math.floor(self._rate + 1e-9))

    def _earliest(self, now: float) -> float:
        """When the next request may start, given the rules in the module docstring."""
        self._recover_rate(now)
        at = max(self._last_grant + 1.0 / self._rate, self._paused_until)
        capacity = self._capacity()
        if len(self._grants) >= capacity:
            oldest = self._grants[-capacity]
            busy_until = min(oldest.busy_until, oldest.granted_at + self._guard)
            at = max(at, busy_until + WINDOW_SECONDS + _EPSILON)
        return at

    async def acquire(self) -> _Grant:
        """Wait for a permit; first come, first served."""
        self.waiting += 1
        try:
            async with self._lock:
                while True:
                    now = self._clock()
                    at = self._earliest(now)
                    if at <= now:
                        break
                    await self._sleep(at - now)
                grant = _Grant(now, math.inf)
                self._grants.append(grant)
                self._last_grant = now
        finally:
            self.waiting -= 1
        return grant

    def release(self, grant: _Grant) -> None:
        """The request is complete (response body read): its window starts now."""
        grant.busy_until = self._clock()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a permit for the duration of one request, response body included."""
        grant = await self.acquire()
        try:
            yield
        finally:
            self.release(grant)

    def throttled(self) -> None:
        """The server refused a request for exceeding the limit: slow everyone down."""
        now = self._clock()
        if now - self._last_throttle < WINDOW_SECONDS:
            return  # answers to one burst are one signal, not many
        self._last_throttle = now
        self._recover_rate(now)
        self._rate = max(self._min_rate, self._rate / 2)
        self._paused_until = now + WINDOW_SECONDS
