"""Background tasks given a bounded time to finish, and the pause of a periodic loop.

Pollers (in-flight polls) and the recorder (failure lookups holding events) both stop the
same way at shutdown: wait up to the grace for what is running, then cancel the rest and
wait for the cancellations, so nothing is left pending on the loop (:func:`drain`).

The periodic loops (stuck checks, retention, checkpoints, roll-ups, the lease's renewals,
the dispatcher's workers) pause the same way between passes: until their interval has
passed or an event (the daemon's stop, a wake-up) is set, whichever comes first
(:func:`wait_set`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


async def wait_set(event: asyncio.Event, seconds: float | None) -> None:
    """Wait until ``event`` is set, at most ``seconds`` (``None``: no bound).

    Through ``asyncio.timeout`` rather than ``asyncio.wait_for``, which would run the wait
    in a task of its own at every pause. Cancellation from outside still propagates."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


async def drain(tasks: Iterable[asyncio.Task[None]], grace: float | None) -> None:
    """Wait up to ``grace`` seconds (``None``: as long as it takes) for ``tasks``, then
    cancel what is left and wait for it."""
    pending_tasks = set(tasks)
    if not pending_tasks:
        return
    _, late = await asyncio.wait(pending_tasks, timeout=grace)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late)
