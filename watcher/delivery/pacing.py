"""Pacing for one destination: how long the next request must wait to keep its rate.

A window ``(count, seconds)`` (from :meth:`watcher.notifiers.base.Rate.windows`) admits a
new request only when the request ``count`` places back has *finished* at least ``seconds``
ago; one still in flight blocks. So however long requests take to arrive, the destination
never sees more than ``count`` per ``seconds``, and bursts queue here instead of being refused
there. A ``Retry-After`` pauses the whole destination (:meth:`Pacer.pause`).

Why not ``aiolimiter``: its leaky bucket counts a request when it *starts*; a destination
counts it when it *arrives*, which may be a timeout later. Counting from the end is the rule
that keeps WeCom's 20 per minute with slow answers, and it needs the finish times kept here.

Pure bookkeeping in event-loop (monotonic) time; the dispatcher's worker does the waiting.
"""

from __future__ import annotations

import math
from collections import deque

from watcher.notifiers.base import Rate


class Slot:
    """One request's place in the pacing history; its finish time is unknown while in flight."""

    __slots__ = ("finished",)

    def __init__(self) -> None:
        self.finished = math.inf


class Pacer:
    """Sliding-window pacing for one destination."""

    def __init__(self, rates: tuple[Rate, ...]) -> None:
        self._windows = [window for rate in rates for window in rate.windows()]
        depth = max((count for count, _ in self._windows), default=0)
        self._history: deque[Slot] = deque(maxlen=max(depth, 1))
        self._paused_until = -math.inf

    def delay(self, now: float) -> float:
        """Seconds until a request may start (``inf``: wait for one in flight to finish)."""
        wait = max(0.0, self._paused_until - now)
        for count, seconds in self._windows:
            if len(self._history) >= count:
                wait = max(wait, self._history[-count].finished + seconds - now)
        return wait

    def start(self) -> Slot:
        """Count a request that starts now; :meth:`finish` its slot when it is answered."""
        slot = Slot()
        self._history.append(slot)
        return slot

    @staticmethod
    def finish(slot: Slot, now: float) -> None:
        slot.finished = now

    def pause(self, until: float) -> None:
        """Hold every request back until ``until`` (a ``Retry-After``)."""
        self._paused_until = max(self._paused_until, until)
