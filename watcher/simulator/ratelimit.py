"""Per-action rate limiting over a sliding 1-second window, counted at arrival, plus the exact
window maxima and a bounded per-second histogram for plots.

Semantics (documented in the package docstring):
- Every request that names an action *arrives*: it is counted in ``arrivals``, in the
  arrival window (``max_window_arrivals``) and in the histogram, whatever happens next.
- A request that passed authentication is *admitted* when fewer than ``limit`` requests were
  admitted in the half-open window ``(t - 1 s, t]``; otherwise it is throttled
  (``RequestLimitExceeded``). Throttled and unauthenticated requests do not consume budget,
  so a client that backs off recovers after at most one second.
- ``max_window`` is the largest number of admitted requests in any 1-second window, exact:
  the deque holds precisely the admitted arrival times within one second of the newest, and
  the maximum over all windows is reached by a window ending at an arrival.
- Lowering ``limit`` at runtime takes effect at the next arrival (requests already admitted
  in the current window still count).

Times are monotonic seconds (the event loop's clock). Memory per action is O(limit + arrivals
in the last second + histogram_seconds).
"""

from __future__ import annotations

from collections import deque


class Window:
    """Arrival times within the last second, and the largest count ever seen in one."""

    __slots__ = ("_times", "peak")

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self.peak = 0

    def _expire(self, now: float) -> None:
        times = self._times
        edge = now - 1.0
        while times and times[0] <= edge:
            times.popleft()

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._times)

    def add(self, now: float) -> None:
        self._expire(now)
        self._times.append(now)
        if len(self._times) > self.peak:
            self.peak = len(self._times)


class ActionLimiter:
    """Admission and counters for one action."""

    __slots__ = (
        "_admitted",
        "_arrived",
        "_hist",
        "_hist_len",
        "arrivals",
        "limit",
        "throttled",
    )

    def __init__(self, limit: int, *, histogram_seconds: int) -> None:
        self.limit = limit
        self.arrivals = 0
        self.throttled = 0
        self._admitted = Window()
        self._arrived = Window()
        # [second, arrivals, throttled] per second since the simulator started.
        self._hist: deque[list[int]] = deque()
        self._hist_len = max(1, histogram_seconds)

    def arrive(self, now: float, second: int) -> None:
        self.arrivals += 1
        self._arrived.add(now)
        hist = self._hist
        if hist and hist[-1][0] == second:
            hist[-1][1] += 1
        else:
            hist.append([second, 1, 0])
            while hist[0][0] <= second - self._hist_len:
                hist.popleft()

    def admit(self, now: float) -> bool:
        if self._admitted.count(now) >= self.limit:
            self.throttled += 1
            if self._hist:
                self._hist[-1][2] += 1
            return False
        self._admitted.add(now)
        return True

    @property
    def max_window(self) -> int:
        return self._admitted.peak

    @property
    def max_window_arrivals(self) -> int:
        return self._arrived.peak

    def histogram(self) -> list[list[int]]:
        return [list(row) for row in self._hist]
