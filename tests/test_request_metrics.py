"""The per-request series render exactly as prometheus_client's Histogram and Counter did.

Why: ``omics_watcher_api_request_seconds`` and ``omics_watcher_limiter_wait_seconds`` moved
from the library's objects to plain numbers (watcher/service/request_metrics.py); a scraper
must not see any difference. The same observations go into both, and the /metrics texts are
compared line for line (the ``_created`` times set equal, since they are creation instants).
"""

from __future__ import annotations

import math
import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics

from watcher.service.metrics import API_BUCKETS, ApiRequestMetrics, Metrics
from watcher.service.request_metrics import LabelledCounter, LabelledHistogram
from watcher.ui.health import status_requests

OBSERVATIONS = [
    ("GetRunStatus", 0.0, 0.004),
    ("GetRunStatus", 0.3, 0.005),  # on a bound: counted in that bound's bucket
    ("GetRunStatus", 0.0, 0.0051),
    ("GetRunCalls", 1.25, 0.75),
    ("GetRunStatus", 0.0, 31.0),  # past the last bound: +Inf only
    ("GetRunJobLog", 0.0, 0.0),
    ("GetRunStatus", 2.0, 1e-9),
]

CREATED = re.compile(r"^(\S+_created\{[^}]*\}) \S+$", re.M)


def _texts(observations: list[tuple[str, float, float]]) -> tuple[str, str]:
    lib = CollectorRegistry()
    h = Histogram(
        "omics_watcher_api_request_seconds",
        "Omics API request latency (limiter wait excluded).",
        ["action"],
        buckets=API_BUCKETS,
        registry=lib,
    )
    c = Counter(
        "omics_watcher_limiter_wait_seconds",
        "Time requests spent waiting for the rate limiter.",
        ["action"],
        registry=lib,
    )
    ours = CollectorRegistry()
    oh = LabelledHistogram(
        "omics_watcher_api_request_seconds",
        "Omics API request latency (limiter wait excluded).",
        "action",
        buckets=API_BUCKETS,
        registry=ours,
    )
    oc = LabelledCounter(
        "omics_watcher_limiter_wait_seconds",
        "Time requests spent waiting for the rate limiter.",
        "action",
        registry=ours,
    )
    for action, wait, duration in observations:
        c.labels(action=action).inc(wait)
        h.labels(action=action).observe(duration)
        oc.labels(action=action).inc(wait)
        oh.labels(action=action).observe(duration)
    return generate_latest(lib).decode(), generate_latest(ours).decode()


def _same_created(text: str) -> str:
    return CREATED.sub(r"\1 CREATED", text)


def test_exposition_identical_to_prometheus_client() -> None:
    lib, ours = _texts(OBSERVATIONS)
    assert "omics_watcher_api_request_seconds_bucket" in lib
    assert "omics_watcher_limiter_wait_seconds_created" in lib
    assert _same_created(ours) == _same_created(lib)


def test_exposition_identical_before_any_observation() -> None:
    lib, ours = _texts([])
    assert ours == lib  # HELP and TYPE lines only


def test_exposition_identical_without_created_series() -> None:
    prometheus_metrics.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        lib, ours = _texts(OBSERVATIONS)
    finally:
        prometheus_metrics.enable_created_metrics()  # type: ignore[no-untyped-call]
    assert "_created" not in ours
    assert ours == lib


def test_created_is_when_the_series_first_appeared() -> None:
    lib, ours = _texts(OBSERVATIONS[:1])
    created = [float(v) for v in re.findall(r"_created\{[^}]*\} (\S+)", ours)]
    reference = [float(v) for v in re.findall(r"_created\{[^}]*\} (\S+)", lib)]
    assert len(created) == len(reference) == 2
    assert all(math.isclose(a, b, abs_tol=60.0) for a, b in zip(created, reference, strict=True))


def test_daemon_observer_and_status_page_count_read_the_same_numbers() -> None:
    metrics = Metrics()
    observer = ApiRequestMetrics(metrics, actions=["GetRunCalls"])
    text = metrics.render().decode()
    # a limiter's action has its series at zero from the start
    assert 'omics_watcher_limiter_wait_seconds_total{action="GetRunCalls"} 0.0' in text
    assert 'omics_watcher_api_request_seconds_count{action="GetRunCalls"} 0.0' in text
    for _ in range(3):
        observer.waited("GetRunStatus", 0.01)
        observer.completed("GetRunStatus", 0.02)
    text = metrics.render().decode()
    assert 'omics_watcher_api_request_seconds_count{action="GetRunStatus"} 3.0' in text
    assert 'omics_watcher_api_request_seconds_bucket{action="GetRunStatus",le="0.025"} 3.0' in text
    assert 'omics_watcher_limiter_wait_seconds_total{action="GetRunStatus"} 0.03' in text
    assert status_requests(metrics) == 3.0
