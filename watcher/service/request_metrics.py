"""The per-request series as plain numbers, rendered like prometheus_client's own.

Why not prometheus_client's ``Histogram`` and ``Counter``: every Omics request observes two
series (the limiter wait and the request's duration) and every poll counts its outcome, about
twenty times a second, and each of the library's observations takes a lock (and a histogram's
walks the buckets in Python); measured beside the prepared-body floor the two observations
were about 0.05x of the daemon's CPU per poll (benchmarks/REPORT.md, issue 12 item 5).
The daemon observes them on its one event loop, and ``/metrics`` renders on that loop too, so
the numbers need no lock: an observation is a ``bisect`` and two additions.

The exposition is the library's, sample for sample (names, labels, ``le`` spelling, the
``_sum``/``_count``/``_created`` samples, ``PROMETHEUS_DISABLE_CREATED_SERIES``), because the
collectors yield the same :class:`~prometheus_client.metrics_core.Metric` families that
``generate_latest`` turns into text; ``tests/test_request_metrics.py`` compares the two texts.
The ``labels(...)`` children keep the library's ``observe``/``inc`` shape.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString


def _use_created() -> bool:
    # the library's switch (env PROMETHEUS_DISABLE_CREATED_SERIES, disable_created_metrics())
    return bool(getattr(prometheus_metrics, "_use_created", True))


class HistogramChild:
    """One label value's buckets (not cumulative), sum and creation time."""

    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        if amount == amount:  # as the library: NaN goes into the sum but into no bucket
            self.counts[bisect_left(self._bounds, amount)] += 1


class CounterChild:
    """One label value's total and creation time."""

    __slots__ = ("created", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.total += amount


class LabelledHistogram(Collector):
    """A histogram with one label, exported exactly as ``prometheus_client.Histogram``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds[-1] != INF:
            bounds.append(INF)
        self._name = name
        self._doc = documentation
        self._label = label
        self._bounds = tuple(bounds)
        self._les = tuple(floatToGoString(b) for b in bounds)  # type: ignore[no-untyped-call]
        self._children: dict[str, HistogramChild] = {}
        registry.register(self)

    def labels(self, **labels: str) -> HistogramChild:
        key = str(next(iter(labels.values())))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = HistogramChild(self._bounds)
        return child

    def count(self, value: str) -> int:
        """Observations under label ``value`` so far (0 before the first)."""
        child = self._children.get(value)
        return sum(child.counts) if child else 0

    def describe(self) -> list[Metric]:
        return [Metric(self._name, self._doc, "histogram")]

    def collect(self) -> Iterator[Metric]:
        family = Metric(self._name, self._doc, "histogram")
        created = _use_created()
        for value, child in list(self._children.items()):
            acc = 0
            for le, n in zip(self._les, child.counts, strict=True):
                acc += n
                family.add_sample(self._name + "_bucket", {self._label: value, "le": le}, acc)
            family.add_sample(self._name + "_count", {self._label: value}, acc)
            family.add_sample(self._name + "_sum", {self._label: value}, child.sum)
            if created:
                family.add_sample(self._name + "_created", {self._label: value}, child.created)
        yield family


class LabelledCounter(Collector):
    """A counter with one label, exported exactly as ``prometheus_client.Counter``."""

    def __init__(
        self, name: str, documentation: str, label: str, *, registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._doc = documentation
        self._label = label
        self._children: dict[str, CounterChild] = {}
        registry.register(self)

    def labels(self, **labels: str) -> CounterChild:
        key = str(next(iter(labels.values())))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = CounterChild()
        return child

    def describe(self) -> list[Metric]:
        return [Metric(self._name, self._doc, "counter")]

    def collect(self) -> Iterator[Metric]:
        family = Metric(self._name, self._doc, "counter")
        created = _use_created()
        for value, child in list(self._children.items()):
            family.add_sample(self._name + "_total", {self._label: value}, child.total)
            if created:
                family.add_sample(self._name + "_created", {self._label: value}, child.created)
        yield family
