"""Background tasks given a bounded time to finish: the one way components stop them.

Pollers (in-flight polls) and the recorder (failure lookups holding events) both stop the
same way at shutdown: wait up to the grace for what is running, then cancel the rest and
wait for the cancellations, so nothing is left pending on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


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
