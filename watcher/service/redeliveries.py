"""``omics_watcher_redeliveries_total{notifier}``: dead letters put back in the outbox.

Why a collector reading the state rather than a counter in memory: redeliveries are made by
the CLI (another process) and by any replica's admin API, so the count lives in the state
(``counters``, written with the redelivery, see :mod:`watcher.store.history`) and is read at
each scrape (awaited before rendering, by :class:`~watcher.service.state_metrics.StateGauges`).
It only grows (retention never resets it), as a Prometheus counter must.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class RedeliveryCollector(Collector):
    """Renders ``counts()`` (redelivered rows by notifier, as last read) at every scrape."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "omics_watcher_redeliveries",
            "Dead letters put back in the outbox (redeliver, POST /v1/dead-letters/redeliver).",
            labels=["notifier"],
        )
        for notifier, count in sorted(self._counts().items()):
            family.add_metric([notifier], count)
        yield family
