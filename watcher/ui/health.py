"""The watcher's own health as the overview shows it, read from what the daemon already keeps.

Why not a new source of truth: the request rate, throttles and the auth pause are the
Prometheus series the daemon exports (read here from the same collectors ``/metrics``
renders), readiness is the :class:`~watcher.service.server.Health` the probes answer from, and
the outbox comes from the state file. So the page can never disagree with ``/metrics`` or
``/readyz``.

The request rate needs two readings apart in time: :class:`RateMeter` keeps a short window of
samples of the GetRunStatus request count (taken every :data:`SAMPLE_SECONDS` by the page's
own small task), and answers the rate over that window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.registry import Collector

from watcher.service.metrics import Metrics

STATUS_ACTION = "GetRunStatus"  # the request the 20/s budget is about
SAMPLE_SECONDS = 2.0
WINDOW_SAMPLES = 16  # about half a minute of samples


def _total(collector: Collector, sample_name: str, **labels: str) -> float:
    total = 0.0
    for family in collector.collect():
        for sample in family.samples:
            if sample.name == sample_name and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


def status_requests(metrics: Metrics) -> float:
    """GetRunStatus requests answered so far (the count ``/metrics`` renders for the histogram)."""
    return float(metrics.api_request_seconds.count(STATUS_ACTION))


class RateMeter:
    """A rate over the last few samples of a growing count."""

    def __init__(
        self, read: Callable[[], float], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._read = read
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=WINDOW_SAMPLES)

    def sample(self) -> None:
        self._samples.append((self._clock(), self._read()))

    def rate(self) -> float | None:
        """Per second over the window; ``None`` until two samples a second apart exist."""
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        if t1 - t0 < 1.0:
            return None
        return max(0.0, (c1 - c0) / (t1 - t0))


@dataclass(frozen=True, slots=True)
class WatcherHealth:
    """Everything of the health panel but the outbox (read from the state file)."""

    readiness: str  # "ready" or the /readyz reason
    requests_per_second: float | None
    budget_per_second: float
    cycle_seconds: float | None  # time to poll every active run once at the measured rate
    throttled: int
    auth_paused: bool


def watcher_health(
    *,
    metrics: Metrics,
    meter: RateMeter,
    not_ready_reason: str | None,
    active_runs: int,
    budget: float,
    interval: float,
) -> WatcherHealth:
    rate = meter.rate()
    cycle = None
    if active_runs == 0:
        cycle = 0.0
    elif rate:
        cycle = max(interval, active_runs / rate)
    return WatcherHealth(
        readiness=not_ready_reason or "ready",
        requests_per_second=rate,
        budget_per_second=budget,
        cycle_seconds=cycle,
        throttled=int(_total(metrics.throttled, "omics_watcher_throttled_total")),
        auth_paused=_total(metrics.polling_paused, "omics_watcher_polling_paused") > 0,
    )
