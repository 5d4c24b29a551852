"""A pacing limiter that keeps *every* 1-second window at or under the budget, at the server.

Tencent counts requests per action as they arrive. A token bucket (``AsyncLimiter(20, 1)``)
averages 20/s but lets 39 through in one second; this limiter instead enforces two rules
for each new request:

1. pacing: ``1 / rate`` seconds after the previous grant was *due*, so load is smooth (a
   late wake-up of the event loop is made up at the next grant instead of being lost for
   good: at 20/s a 0.9 ms lag per grant cost 0.35 req/s), but never by more than half an
   interval, and from an idle start the next grant is a whole interval away;
2. window: the request ``capacity`` grants earlier must have *arrived* more than one second
   ago, where its arrival is bounded from what the client sees (below).

Grants may go in groups (``group``, 1 by default; the daemon's GetRunStatus limiter 4): when
the timer finds the head of the queue due, up to ``group`` queued callers (never more than
the window's capacity) go at once, each counted at its own place in rule 1's schedule (so
groups of four at 20/s leave every 0.2 s) and each checked against rule 2 (the group waits
until its *last* member may start: a delay, never an early start). A caller queued alone is
not held for partners. Why: on a small VM the CPU a request costs is mostly the wake-up
around it (caches gone cold since the last one), not the Python it runs: a bare aiohttp loop
sending four requests per wake-up paid 0.48-0.57 of the CPU per request of one that sends
one (``poll_cost_bench.py --grouped-floor``; benchmarks/REPORT.md, "Permits in groups").
Once formed, the window rule keeps a group together by itself: requests granted together
complete together, and the window they open a second later opens for all of them.

Arrival bound. For request ``i`` write ``g`` its grant, ``a`` its arrival at the server and
``c`` its completion (response body read), all on the client's clock, and split its round
trip ``c - g = u + s + d``: ``u = a - g`` (signing, sending, uplink), ``s`` (the server's
work) and ``d`` (downlink, reading). Every part has a floor; call ``F`` the sum of the three
floors. The rule grants ``j`` only once ``g_j > c_i + 1 s - credit`` for ``i = j - capacity``,
with ``credit = max(0, m - margin)`` and ``m`` the smallest round trip seen so far.

Claim: if ``m - margin <= F``, no closed 1 s window at the server holds more than
``capacity`` arrivals. Take such a window with ``capacity + 1`` arrivals; let ``i`` be the
smallest index among them and ``j`` the largest, so ``j >= i + capacity`` (arrivals may come
out of order, indices may not repeat). Grants are monotone in the index, so
``a_j = g_j + u_j >= g_(i+capacity) + u_j > c_i + 1 - m + margin + u_j``, and
``c_i = a_i + s_i + d_i``, hence ``a_j - a_i > 1 + (u_j + s_i + d_i) - (m - margin)
>= 1 + F - (m - margin) >= 1``: the two are not in one window. Note what the argument needs
and what it does not: the uplink of one request and the downlink of *another* are each at
least their own floor, however asymmetric the route or the jitter, but a round trip seen is
only ever *at least* ``F`` (``m >= F``), so ``margin`` must cover how far the fastest round
trip seen lies above the floor, i.e. that at least one request had every part near its
floor at once. With ``credit = 0`` this is the old rule ("completed more than 1 s ago"),
safe with no assumption at all, which pays a whole round trip per ``capacity`` requests
(17.3/s of 20 at 150 ms): the credit gives that back minus the jitter and the margin.

What keeps ``m - margin <= F`` in practice:
- a request cancelled in flight is not a sample (it would only lower ``m``: safe, but the
  credit would be gone for good), and it counts as in flight (the guard's bound below), since
  its bytes may still be on the way; a failure the client turns into an answer, e.g. a
  refused connection, is a sample, with that same safe effect;
- the first ``rate`` requests are no samples (they open the connection pool: TCP and TLS
  handshakes add round trips to ``u`` that later requests on those connections do not pay),
  and there is no credit before ``warmup`` samples more, since a few draws of the jitter are
  not yet near its floor; with the simulator's ±10 ms (uniform, split over both ways), 50
  samples leave the fastest more than 5 ms above the floor with a probability near 1e-3,
  falling with each one;
- ``m`` never rises: a slower route only costs throughput. The residual risks are a route
  that gets *shorter* by more than ``margin``, and samples that all paid some delay later
  requests do not (e.g. every connection of the first seconds closed after one request);
  both end with the first fast sample, and the next rule reacts if the server noticed;
- a throttled answer means an assumption failed or the budget is shared: the rate halves
  (below) and the estimate starts over from new samples.

A request still in flight counts as arrived ``guard`` seconds after its grant (a hung request
must not stop the limiter). That assumes two requests' uplinks differ by less than
``guard``, old rule and new alike: a request that opens a TLS connection across a 150 ms
route arrives some 0.5 s after its grant, so on such a route the guard is the weaker link.

``throttled()`` halves the rate (once per second at most, since a burst of throttled answers
is one signal) and pauses for a second; the rate then climbs back linearly, because other
tools may share the account's budget and would be throttled again by an instant return to
full speed.

Waiters are served first come, first served, by one timer rather than a lock: a caller that
may go at once (nobody queued, the rules allow it) is granted without suspending; otherwise it
queues a future, and a single timer armed for the earliest allowed instant grants the head of
the queue (with its group) when it fires, then re-arms for the next (callers that leave the
queue can only make the head's instant earlier: the timer is then replaced, never left to
fire late). Each grant, or group, thus
costs one timer and the wake-up of the callers it is for; a lock would also wake the next
caller in line only for it to
compute its instant and sleep (a future, a handle and a task step per request, at 20 requests
a second for as long as the daemon runs). Time comes from an injected monotonic clock and
timers from an injected ``call_later`` (the event loop's by default), so tests run the rules
on virtual time. The limiter knows nothing of actions or metrics: one limiter may pace several
actions, so the client times each request and labels it.

Why not ``aiolimiter``: ``AsyncLimiter(1, 1 / rate)`` does grant at exactly ``1 / rate``
spacing, which is rule 1, but it cannot carry the rest. Its leak rate is fixed in
``__init__`` (setting ``max_rate`` or ``time_period`` later changes nothing), so the throttle
response would need a new bucket, which starts empty and grants at once; a newcomer can take a
token ahead of a woken waiter, so the limiter's own queue is needed for first come, first
served anyway, and in front of that queue the bucket only ever computes ``last grant + 1 /
rate``; and it reads ``loop.time()`` rather than the injected clock the window rule and the
tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

WINDOW_SECONDS = 1.0
_EPSILON = 0.002  # keep a closed 1 s window from holding capacity + 1 requests
_CATCH_UP = 0.5  # of an interval: how far rule 1's schedule may lag behind the clock


class Timer(Protocol):
    """What ``call_later`` returns: the event loop's ``TimerHandle``, or a test clock's."""

    def cancel(self) -> None: ...


class Limiter(Protocol):
    """What the Omics client needs from a limiter."""

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]: ...

    def throttled(self) -> None: ...


class _RoundTrips:
    """The fastest round trip seen, once there are enough samples to trust it."""

    __slots__ = ("_count", "_fastest", "_margin", "_skip", "_warmup", "value")

    def __init__(self, *, margin: float, skip: int, warmup: int) -> None:
        self._margin = margin
        self._skip = skip
        self._warmup = warmup
        self._count = 0
        self._fastest = math.inf
        # credit(), kept up to date by observe() and forget(): read twice per request.
        self.value = 0.0

    def observe(self, seconds: float) -> None:
        self._count += 1
        if self._count > self._skip:
            if seconds < self._fastest:
                self._fastest = seconds
            if self._count >= self._skip + self._warmup:
                self.value = max(0.0, self._fastest - self._margin)

    def forget(self) -> None:
        self._count, self._fastest, self.value = 0, math.inf, 0.0

    def credit(self) -> float:
        """How much earlier than completion + 1 s the next window may open (see above)."""
        return self.value


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
        latency_credit: bool = True,
        margin: float = 0.005,
        warmup: int = 50,
        recover_per_second: float = 0.1,
        min_fraction: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        call_later: Callable[[float, Callable[[], None]], Timer] | None = None,
        group: int = 1,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if group < 1:
            raise ValueError("group must be at least 1")
        self.max_rate = rate
        self._rate = rate
        self._guard = guard
        self._latency_credit = latency_credit
        # The first ``rate`` requests form the connection pool: their handshakes are not
        # samples of the route (a TLS handshake adds two round trips or more).
        skip = max(1, math.floor(rate))
        self._round_trips = _RoundTrips(margin=margin, skip=skip, warmup=warmup)
        self._recover = recover_per_second * rate
        self._min_rate = max(rate * min_fraction, 0.05)
        self._clock = clock
        self._call_later = call_later  # None: the running event loop's
        self._full_capacity = max(1, math.floor(rate + 1e-9))  # _capacity() at max_rate
        self._grants: deque[_Grant] = deque(maxlen=self._full_capacity)  # rule 2 looks back so far
        self._last_due = -math.inf  # when the previous grant was due (rule 1's schedule)
        self._paused_until = -math.inf
        self._last_throttle = -math.inf
        self._rate_changed_at = clock()
        self._queue: deque[asyncio.Future[_Grant]] = deque()  # a done one was cancelled
        self._timer: Timer | None = None  # will call _wake; armed whenever a caller waits
        self._timer_at = math.inf  # when it fires (clock time)
        self._loop: asyncio.AbstractEventLoop | None = None  # see _bound_loop
        self.waiting = 0  # callers queued for a permit right now
        self._on_drained: list[Callable[[], None]] = []
        self._group = group  # queued callers granted together at most (module docstring)

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

    def _earliest(self, now: float, size: int = 1) -> float:
        """When the next ``size`` requests may start together, given the rules in the module
        docstring: rule 1 for the first of them, rule 2 for each."""
        # Runs about twice per grant: the common case (full rate, no pause) without calls.
        if self._rate < self.max_rate:
            self._recover_rate(now)
        else:
            self._rate_changed_at = now
        at = self._last_due + 1.0 / self._rate
        if self._paused_until > at:
            at = self._paused_until
        capacity = self._capacity() if self._rate != self.max_rate else self._full_capacity
        grants = self._grants
        first = len(grants) - capacity  # the grant ``capacity`` before the first of them
        for index in range(max(first, 0), first + size):
            oldest = grants[index]
            arrived_by = oldest.granted_at + self._guard  # in flight: the guard's bound
            if oldest.busy_until < math.inf:
                credit = self._round_trips.value if self._latency_credit else 0.0
                if oldest.busy_until - credit < arrived_by:
                    arrived_by = oldest.busy_until - credit
            if arrived_by + WINDOW_SECONDS + _EPSILON > at:
                at = arrived_by + WINDOW_SECONDS + _EPSILON
        return at

    @property
    def credit(self) -> float:
        """Seconds the window rule takes off each completion (0 with the old rule)."""
        return self._round_trips.credit() if self._latency_credit else 0.0

    async def acquire(self) -> _Grant:
        """Wait for a permit; first come, first served."""
        delay = now = 0.0  # with callers queued, the timer is armed for the head already
        if not self.waiting:
            now = self._clock()
            at = self._earliest(now)
            if at <= now:  # nobody waits and the rules allow it: no suspension, no timer
                grant = self._grant(at, now)
                self._drained()
                return grant
            delay = at - now
        waiter: asyncio.Future[_Grant] = self._bound_loop().create_future()
        self._queue.append(waiter)
        self.waiting += 1
        if self.waiting == 1:  # the head: a timer left from cancelled callers may be late
            self._arm_by(now + delay, now)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():  # still queued: _wake drops it
                self._left()
                if self.waiting:  # a smaller group behind the head may go sooner
                    self._reconsider()
            else:  # granted, then cancelled before it ran: never sent, so it never arrives
                waiter.result().busy_until = self._clock()
            raise

    def _arm_by(self, at: float, now: float) -> None:
        """Have the timer fire at ``at`` at the latest: kept if it fires by then, else
        replaced (one timer at a time, so a late one never holds the head back)."""
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        call_later = self._call_later or self._bound_loop().call_later
        self._timer = call_later(max(0.0, at - now), self._wake)

    def _reconsider(self) -> None:
        """Callers left the queue: the head's group may have shrunk and may go sooner."""
        now = self._clock()
        self._arm_by(self._earliest(now, self._group_size()), now)

    def _group_size(self) -> int:
        """How many queued callers the head takes along: never more than the window holds
        (rate 1/s: one). The capacity can only grow inside _earliest (the rate recovers
        there), so a size taken before it stays safe."""
        capacity = self._full_capacity if self._rate == self.max_rate else self._capacity()
        return min(self._group, self.waiting, capacity)

    def _bound_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this limiter serves, bound on first use (as asyncio's own locks).

        Kept rather than asked for: ``asyncio.get_running_loop()`` checks the process id with
        a ``getpid`` system call each time, twice per queued request here (py-spy: 2 % of
        the daemon's busy samples)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _wake(self) -> None:
        """The timer: grant the head of the queue (and up to ``group - 1`` callers behind it,
        at their places in the schedule) if the rules allow it now, re-arm if not.

        A bug in here would leave every queued caller waiting for good, silently (nothing
        re-arms the timer): they get the exception instead, and each poll fails loudly."""
        self._timer, self._timer_at = None, math.inf
        try:
            self._grant_due()
        except Exception as exc:
            queue, self._queue = self._queue, deque()
            for waiter in queue:
                if not waiter.done():
                    waiter.set_exception(exc)
                    self._left()
            raise

    def _grant_due(self) -> None:
        """Grant every group whose time has come; arm the timer for the next one."""
        queue = self._queue
        while queue:
            if queue[0].done():  # cancelled while it waited
                queue.popleft()
                continue
            now = self._clock()
            size = self._group_size()
            at = self._earliest(now, size)
            if at > now:
                self._arm_by(at, now)
                return
            while size and queue:
                waiter = queue.popleft()
                if waiter.done():
                    continue
                waiter.set_result(self._grant(at, now))
                self._left()
                size -= 1
                at = self._last_due + 1.0 / self._rate  # the next one's place in the schedule

    def _grant(self, at: float, now: float) -> _Grant:
        grant = _Grant(now, math.inf)
        self._grants.append(grant)
        # On schedule: a wake-up up to half an interval late is made up at the next grant;
        # after an idle spell the schedule starts again from now (no burst).
        on_time = at >= now - _CATCH_UP / self._rate
        self._last_due = at if on_time else now
        return grant

    def _left(self) -> None:
        """A queued caller was granted or cancelled."""
        self.waiting -= 1
        if not self.waiting:
            self._drained()

    def _drained(self) -> None:
        for hook in self._on_drained:
            hook()

    def when_drained(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` whenever the queue empties (the last waiter granted or cancelled).

        A poller that keeps requests queued learns that it should refill the queue without
        a timer while its requests are out (the per-run scheduler's wake-up)."""
        self._on_drained.append(hook)

    def release(self, grant: _Grant, *, answered: bool = True) -> None:
        """The request is complete (response body read): its window starts now.

        ``answered=False`` (cancelled or failed in flight, no answer read): it may still be on
        its way to the server, so it keeps counting as in flight (arrived by the guard's
        bound, never by its completion less the credit) and is no round trip sample.
        """
        if answered:
            now = self._clock()
            grant.busy_until = now
            self._round_trips.observe(now - grant.granted_at)

    def slot(self) -> _Slot:
        """Hold a permit for the duration of one request, response body included."""
        return _Slot(self)

    def throttled(self) -> None:
        """The server refused a request for exceeding the limit: slow everyone down."""
        now = self._clock()
        if now - self._last_throttle < WINDOW_SECONDS:
            return  # answers to one burst are one signal, not many
        self._last_throttle = now
        self._recover_rate(now)
        self._rate = max(self._min_rate, self._rate / 2)
        self._paused_until = now + WINDOW_SECONDS
        self._round_trips.forget()  # the old rule until fresh samples vouch for the network


class _Slot:
    """``async with limiter.slot()``: one permit, released when the block ends.

    A plain class rather than ``contextlib.asynccontextmanager``: it is entered 20 times a
    second, and the generator-based manager costs an async generator and its frames each time.
    """

    __slots__ = ("_grant", "_limiter")

    def __init__(self, limiter: PacingLimiter) -> None:
        self._limiter = limiter
        self._grant: _Grant | None = None

    async def __aenter__(self) -> None:
        self._grant = await self._limiter.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        grant = self._grant
        if grant is not None:
            self._grant = None
            # Cancelled or failed in flight: its duration is not a round trip sample.
            self._limiter.release(grant, answered=exc_type is None)
