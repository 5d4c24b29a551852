"""When to try a delivery again, and one bounded attempt.

The retry rules every send follows, whether the dispatcher runs it from the outbox or
``omics-watcher test-notify`` runs it at once (:func:`send_now`):

* the first retry within about a second, then doubling with equal jitter (between half and
  all of 1, 2, 4 ... s), capped at 300 s;
* never sooner than the destination's ``Retry-After``, obeyed up to an hour;
* an attempt is bounded by the notifier's timeout, and every failure comes out as
  :class:`~watcher.notifiers.base.Retryable` or :class:`~watcher.notifiers.base.Permanent`
  (a timeout or a bug in a notifier is retryable).

Pure apart from :func:`attempt` and :func:`send_now`, which await the notifier.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from watcher.events import Event
from watcher.notifiers.base import Notifier, Permanent, Retryable

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 300.0
# A Retry-After is honoured up to an hour: a broken or hostile answer ("Retry-After: 9999999")
# must not silence a destination for days.
MAX_RETRY_AFTER_SECONDS = 3600.0


def backoff(
    attempts: int,
    *,
    first: float = FIRST_RETRY_SECONDS,
    cap: float = MAX_RETRY_SECONDS,
    uniform: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempts`` (1-based): ``first·2^(n-1)``, capped, jittered.

    "Equal jitter" (between half and all of the step), not full jitter: retries of many rows
    still spread out, but the schedule stays predictable enough that a receiver back after a
    10 s outage is reached within about 16 s of the first failure (0.5-1, then 1-2, 2-4,
    4-8 s ...), as the interface promises ("bridged within about 20 s").
    """
    ceiling = min(cap, first * 2.0 ** min(max(attempts - 1, 0), 32))
    return ceiling * (0.5 + 0.5 * uniform())


def honoured(retry_after: float | None) -> float:
    """How much of a ``Retry-After`` is obeyed: all of it, up to an hour."""
    return min(max(retry_after or 0.0, 0.0), MAX_RETRY_AFTER_SECONDS)


def retry_delay(
    attempts: int, retry_after: float | None, *, uniform: Callable[[], float] = random.random
) -> float:
    """The backoff, but never sooner than the destination asked (``Retry-After``, capped)."""
    return max(backoff(attempts, uniform=uniform), honoured(retry_after))


async def attempt(notifier: Notifier, event: Event, *, time_limit: float) -> None:
    """One bounded delivery attempt; every failure comes out as Retryable or Permanent."""
    try:
        async with asyncio.timeout(time_limit):
            await notifier.send(event)
    except (Retryable, Permanent):
        raise
    except TimeoutError:
        raise Retryable(f"timed out after {time_limit:g} s") from None
    except Exception as exc:  # a notifier bug must not kill its worker or lose the row
        # Only the type: an exception's text may quote a URL with its token.
        raise Retryable(f"internal error in notifier: {type(exc).__name__}") from None


async def send_now(
    notifier: Notifier,
    event: Event,
    *,
    attempts: int = 5,
    deadline: float,
    time_limit: float = 10.0,
    uniform: Callable[[], float] = random.random,
) -> int:
    """Deliver ``event`` now, retrying by the usual rules; return the attempts it took.

    ``deadline`` is in event-loop time (``loop.time()``). Raises the last
    :class:`Retryable` when ``attempts`` are used up or the next wait would pass the deadline,
    and :class:`Permanent` at once. Used by ``omics-watcher test-notify``.
    """
    loop = asyncio.get_running_loop()
    for number in range(1, max(1, attempts) + 1):
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise Retryable("deadline passed before delivery")
        try:
            await attempt(notifier, event, time_limit=min(time_limit, remaining))
            return number
        except Retryable as exc:
            delay = retry_delay(number, exc.retry_after, uniform=uniform)
            if number >= attempts or loop.time() + delay >= deadline:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
