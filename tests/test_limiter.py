"""The pacing limiter, on a virtual clock: window bound, sustained rate, throttle response."""

from __future__ import annotations

import asyncio
import bisect
import itertools

import pytest

from watcher.omics.limiter import PacingLimiter


class VirtualClock:
    """Time that moves only when the limiter sleeps, so results do not depend on the machine."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def max_in_any_window(times: list[float], width: float = 1.0) -> int:
    """Largest number of instants inside any closed window of ``width`` seconds."""
    times = sorted(times)
    return max((bisect.bisect_right(times, t + width) - i for i, t in enumerate(times)), default=0)


async def drive(limiter: PacingLimiter, clock: VirtualClock, n: int, latency: float) -> list[float]:
    """Grant ``n`` requests back to back; each one completes ``latency`` after its grant."""
    grants = []
    for _ in range(n):
        grant = await limiter.acquire()
        grants.append(grant.granted_at)
        grant.busy_until = grant.granted_at + latency
    return grants


@pytest.mark.parametrize("latency", [0.0005, 0.005, 0.02])
async def test_never_more_than_rate_in_any_window_and_sustains_97_percent(
    latency: float,
) -> None:
    clock = VirtualClock()
    limiter = PacingLimiter(20, clock=clock, sleep=clock.sleep)
    grants = await drive(limiter, clock, 2000, latency)
    # The server sees each request somewhere between its grant and its completion: check
    # the worst case, grants for early requests and completions for late ones, by shifting.
    assert max_in_any_window(grants) <= 20
    assert max_in_any_window([g + latency for g in grants]) <= 20
    rate = (len(grants) - 1) / (grants[-1] - grants[0])
    assert rate >= 0.97 * 20, rate


async def test_a_request_that_hangs_holds_its_window_only_for_the_guard() -> None:
    clock = VirtualClock()
    limiter = PacingLimiter(20, guard=0.25, clock=clock, sleep=clock.sleep)
    hung = await limiter.acquire()  # never released
    others = await drive(limiter, clock, 40, 0.001)
    assert max_in_any_window([hung.granted_at, *others]) <= 20
    # The hung request delays the 21st grant by at most the guard, not forever.
    assert others[-1] - hung.granted_at < 2 * (1.0 + 0.25) + 0.1


async def test_fractional_rates_pace_evenly() -> None:
    clock = VirtualClock()
    limiter = PacingLimiter(2.5, clock=clock, sleep=clock.sleep)
    grants = await drive(limiter, clock, 50, 0.001)
    assert max_in_any_window(grants) <= 2
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert min(gaps) >= 0.4 - 1e-9


async def test_throttling_halves_the_rate_once_per_burst_then_recovers() -> None:
    clock = VirtualClock()
    limiter = PacingLimiter(20, clock=clock, sleep=clock.sleep, recover_per_second=0.1)
    await drive(limiter, clock, 10, 0.001)
    for _ in range(15):  # fifteen throttled answers to one burst
        limiter.throttled()
    assert limiter.rate == pytest.approx(10, abs=0.1)  # halved once, not fifteen times
    before = clock.now
    await drive(limiter, clock, 1, 0.001)
    assert clock.now - before >= 1.0  # paused for the server's window to clear
    clock.now += 10  # ten quiet seconds at +2/s per second bring it back to full speed
    assert limiter.rate == pytest.approx(20)


async def test_repeated_throttling_never_stops_traffic() -> None:
    clock = VirtualClock()
    limiter = PacingLimiter(20, clock=clock, sleep=clock.sleep)
    for _ in range(30):
        limiter.throttled()
        clock.now += 1.1
    assert limiter.rate >= 1.0
    await drive(limiter, clock, 3, 0.001)


async def test_waiters_are_served_in_arrival_order() -> None:
    clock = VirtualClock()
    limiter = PacingLimiter(5, clock=clock, sleep=clock.sleep)
    order: list[int] = []

    async def caller(i: int) -> None:
        async with limiter.slot():
            order.append(i)

    await asyncio.gather(*(caller(i) for i in range(30)))
    assert order == list(range(30))


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        PacingLimiter(0)
