"""Prometheus metrics: one registry per application instance, never the global default.

Counters are incremented by the components that own the facts (scheduler, client hook,
dispatcher). Values that live in the state (runs by status, outbox depth and age,
redeliveries) are read at scrape time, so they can never drift from it: the store is async
(SQLite or PostgreSQL) and prometheus collectors are not, so :meth:`Metrics.scrape` first
awaits the readers given to :meth:`Metrics.before_scrape`
(:mod:`watcher.service.state_metrics`), then the collectors render what they read.
Label values are run statuses, outcomes and notifier names: never secrets, never run ids
(cardinality).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from watcher.service.request_metrics import LabelledCounter, LabelledHistogram

API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Recording to delivery: milliseconds when the destination is up, up to hours through retries.
DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """What the state file says at scrape time."""

    runs_by_status: Mapping[str, int]
    outbox_pending: int
    oldest_pending_seconds: float


class _StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], StateSnapshot | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._snapshot()
        if snap is None:  # the state could not be read for this scrape: no stale values
            return
        runs = GaugeMetricFamily(
            "omics_watcher_tracked_runs",
            "Tracked runs by last seen status ('unknown' before the first poll).",
            labels=["status"],
        )
        for status, count in sorted(snap.runs_by_status.items()):
            runs.add_metric([status], count)
        yield runs
        yield GaugeMetricFamily(
            "omics_watcher_outbox_pending",
            "Deliveries waiting in the outbox.",
            value=snap.outbox_pending,
        )
        yield GaugeMetricFamily(
            "omics_watcher_oldest_pending_delivery_seconds",
            "Age of the oldest pending delivery (0 when none).",
            value=snap.oldest_pending_seconds,
        )


class _MutedCollector(Collector):
    """Deliveries each notifier holds in a mute window, asked of the dispatcher at scrape."""

    def __init__(self, muted: Callable[[], Mapping[str, int]]) -> None:
        self._muted = muted

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "omics_watcher_deliveries_muted",
            "Deliveries a notifier holds in a mute window now (0 outside its windows; counted "
            "from its last outbox scan, so at most 500).",
            labels=["notifier"],
        )
        for notifier, held in sorted(self._muted().items()):
            family.add_metric([notifier], held)
        yield family


class Metrics:
    """Every metric family the daemon exports, registered on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._before_scrape: list[Callable[[], Awaitable[None]]] = []
        r = self.registry
        # the per-request series: plain numbers, the library's exposition (request_metrics)
        self.polls = LabelledCounter(
            "omics_watcher_polls", "Status polls by outcome.", "outcome", registry=r
        )
        self.api_request_seconds = LabelledHistogram(
            "omics_watcher_api_request_seconds",
            "Omics API request latency (limiter wait excluded).",
            "action",
            buckets=API_BUCKETS,
            registry=r,
        )
        self.throttled = Counter(
            "omics_watcher_throttled", "RequestLimitExceeded answers received.", registry=r
        )
        self.limiter_wait_seconds = LabelledCounter(
            "omics_watcher_limiter_wait_seconds",
            "Time requests spent waiting for the rate limiter.",
            "action",
            registry=r,
        )
        self.transitions = Counter(
            "omics_watcher_transitions", "Status transitions recorded.", registry=r
        )
        self.events = Counter(
            "omics_watcher_events", "Events recorded, by type.", ["type"], registry=r
        )
        self.deliveries = Counter(
            "omics_watcher_deliveries",
            "Delivery attempts by notifier and outcome.",
            ["notifier", "outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "omics_watcher_delivery_seconds",
            "From an event's recording to its successful delivery, per delivered row.",
            ["notifier"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.polling_paused = Gauge(
            "omics_watcher_polling_paused",
            "1 while polling is paused because credentials or permissions fail.",
            registry=r,
        )
        self.clock_skew_seconds = Gauge(
            "omics_watcher_clock_skew_seconds",
            "Estimated server clock minus local clock, from SignatureExpire answers.",
            registry=r,
        )
        # the HTTP server's own defences (watcher.service.auth_failures, .connections)
        self.admin_auth_failures = Counter(
            "omics_watcher_admin_auth_failures",
            "Refused authentications on the admin listener (api: bearer token, ui_login).",
            ["via"],
            registry=r,
        )
        for via in ("api", "ui_login"):
            self.admin_auth_failures.labels(via=via)
        self.http_connections_shed = Counter(
            "omics_watcher_http_connections_shed",
            "Connections the server closed to protect itself, by reason.",
            ["reason"],
            registry=r,
        )
        for reason in ("capacity", "descriptors", "head_timeout", "body_timeout"):
            self.http_connections_shed.labels(reason=reason)
        self.http_connections_open = Gauge(
            "omics_watcher_http_connections_open",
            "Open HTTP connections (every listener).",
            registry=r,
        )

    def watch_state(self, snapshot: Callable[[], StateSnapshot | None]) -> None:
        """Export the state's gauges from ``snapshot()`` at every scrape (``None``: leave them
        out of this scrape)."""
        self.registry.register(_StateCollector(snapshot))

    def before_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Await ``refresh()`` at each :meth:`scrape`, before the collectors run."""
        self._before_scrape.append(refresh)

    async def scrape(self) -> bytes:
        """What ``/metrics`` serves: the awaited reads first, then :meth:`render`."""
        for refresh in self._before_scrape:
            await refresh()
        return self.render()

    def watch_muted(self, muted: Callable[[], Mapping[str, int]]) -> None:
        """Export ``omics_watcher_deliveries_muted`` from ``muted()`` at every scrape."""
        self.registry.register(_MutedCollector(muted))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ApiRequestMetrics:
    """The Omics client's request observer: wait and duration under each request's own action.

    ``actions`` get their series at zero from the start, as the limiters' actions always had.
    """

    def __init__(self, metrics: Metrics, *, actions: Iterable[str] = ()) -> None:
        self._metrics = metrics
        self._waits: dict[str, Callable[[float], None]] = {}
        self._durations: dict[str, Callable[[float], None]] = {}
        for action in actions:
            self._bind(action)

    def _bind(self, action: str) -> None:
        self._waits[action] = self._metrics.limiter_wait_seconds.labels(action=action).inc
        self._durations[action] = self._metrics.api_request_seconds.labels(action=action).observe

    def waited(self, action: str, seconds: float) -> None:
        if action not in self._waits:
            self._bind(action)
        self._waits[action](seconds)

    def completed(self, action: str, seconds: float) -> None:
        if action not in self._durations:
            self._bind(action)
        self._durations[action](seconds)


class HttpMetrics:
    """What the HTTP server's connection guard reports: shed connections, the open count."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def shed(self, reason: str) -> None:
        self._metrics.http_connections_shed.labels(reason=reason).inc()

    def open_connections(self, count: int) -> None:
        self._metrics.http_connections_open.set(count)


class DeliveryMetrics:
    """The dispatcher's observer: every row's outcome, and how long a delivered one took."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def delivery(self, *, notifier: str, outcome: str, latency: float | None) -> None:
        self._metrics.deliveries.labels(notifier=notifier, outcome=outcome).inc()
        if outcome == "delivered" and latency is not None:
            self._metrics.delivery_seconds.labels(notifier=notifier).observe(max(latency, 0.0))
