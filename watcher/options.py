"""Settings → option dataclasses: the one place where configuration meets components.

Components (pollers, dispatcher, event producers, limiters) take small frozen option
dataclasses and never import :mod:`watcher.config`, so each can be built and tested without a
whole configuration, and a config key touches only ``config.py``, this module and the component
that uses it. The composition root (:mod:`watcher.app`) calls the functions here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC
from typing import TypedDict
from zoneinfo import ZoneInfo

from watcher.config import MuteIntervalSettings, Settings, StuckSettings, WatchSettings
from watcher.delivery.digest import DigestPolicy
from watcher.delivery.dispatcher import Policy
from watcher.delivery.muting import (
    EVERY_DAY,
    WHOLE_DAY,
    MuteInterval,
    TimeRange,
    parse_clock,
    parse_weekday,
)
from watcher.enrich import DEFAULT_LANES, EnrichLimits
from watcher.notifiers.common import DigestSettings, NotifierBase
from watcher.notifiers.registry import rates_for
from watcher.polling.batch import BatchOptions
from watcher.polling.discovery import DiscoveryOptions, WatchOptions
from watcher.polling.per_run import SchedulerOptions
from watcher.polling.strategy import StrategyOptions
from watcher.retention import RetentionOptions
from watcher.service.server import ServerOptions
from watcher.statuses import Statuses, StatusOptions
from watcher.store.api import StateOptions
from watcher.stuck import StuckLimits
from watcher.ui.options import UiOptions

# Event producers and the HTTP server (helper D): stuck limits, server options.


def stuck_limits(settings: StuckSettings) -> StuckLimits:
    """``[stuck]``: ``per_label`` keys ``KEY=VALUE`` become ``(KEY, VALUE)`` pairs."""
    labels: dict[tuple[str, str], float] = {}
    for selector, seconds in settings.per_label.items():
        key, _, value = selector.partition("=")
        labels[(key.strip(), value.strip())] = seconds
    return StuckLimits(settings.after_seconds, dict(settings.per_status), labels)


def enrich_limits(settings: Settings) -> EnrichLimits:
    """``[polling] enrich_timeout_seconds``, and as many requests of each enrichment action
    in the client's hands at once as the ``calls_rate_per_second`` budget grants in 0.4 s."""
    polling = settings.polling
    lanes = max(DEFAULT_LANES, math.ceil(polling.calls_rate_per_second * 0.4))
    return EnrichLimits(timeout=polling.enrich_timeout_seconds, lanes=lanes)


def server_options(settings: Settings) -> ServerOptions:
    """``[server]`` and the default project of runs tracked through the admin API."""
    token = settings.server.admin_token
    return ServerOptions(
        host=settings.server.host,
        port=settings.server.port,
        admin_token=token.get_secret_value() if token else None,
        default_project_id=settings.tencentcloud.project_id,
        admin_address=settings.server.admin_address if token else None,
    )


def ui_options(settings: Settings) -> UiOptions | None:
    """The status page: ``None`` when off (``[server] ui = false`` or no
    ``admin_token``); a viewer token equal to the admin token grants admin, so it is dropped."""
    server = settings.server
    admin = server.admin_token.get_secret_value() if server.admin_token else ""
    if not server.ui or not admin:
        return None
    viewer = server.viewer_token.get_secret_value() if server.viewer_token else ""
    return UiOptions(
        admin_token=admin,
        viewer_token=viewer if viewer and viewer != admin else None,
        rate_per_second=settings.polling.rate_per_second,
        interval_seconds=settings.polling.interval_seconds,
    )


# Status vocabulary (helper C): what each run status means, for every component.


def status_options(settings: Settings) -> StatusOptions:
    """``[polling] terminal_statuses``; the known success/failure/warning names are built in."""
    return StatusOptions(terminal=settings.polling.terminal)


def status_vocabulary(settings: Settings) -> Statuses:
    """The one :class:`~watcher.statuses.Statuses` the composition root hands to every part."""
    return Statuses(status_options(settings))


# Delivery (helper B): how the dispatcher runs each notifier's deliveries.


def delivery_policy(
    settings: NotifierBase, intervals: Mapping[str, MuteInterval] | None = None
) -> Policy:
    """A ``[[notifiers]]`` table's age limit, timeout, pace (its own or its kind's), digest,
    and the mute windows it names (``intervals``: :func:`mute_intervals`)."""
    known = intervals or {}
    return Policy(
        max_age=settings.max_age_seconds,
        timeout=settings.timeout_seconds,
        rates=rates_for(settings),
        digest=digest_policy(settings.digest),
        mute=tuple(known[name] for name in settings.mute_intervals),
    )


def mute_intervals(settings: Settings) -> dict[str, MuteInterval]:
    """Every ``[[mute_intervals]]`` table by name (names were checked unique and known)."""
    return {entry.name: mute_interval(entry) for entry in settings.mute_intervals}


def mute_interval(settings: MuteIntervalSettings) -> MuteInterval:
    """One ``[[mute_intervals]]`` table: no weekdays is every day, no times the whole day."""
    return MuteInterval(
        name=settings.name,
        weekdays=frozenset(parse_weekday(day) for day in settings.weekdays) or EVERY_DAY,
        times=tuple(
            TimeRange(parse_clock(t.start), parse_clock(t.end, end=True)) for t in settings.times
        )
        or (WHOLE_DAY,),
        zone=UTC if settings.timezone == "UTC" else ZoneInfo(settings.timezone),
    )


def digest_policy(settings: DigestSettings | None) -> DigestPolicy | None:
    """``digest = {...}`` on a notifier; ``None`` (one message per event) when absent."""
    if settings is None:
        return None
    return DigestPolicy(
        window=settings.window_seconds, group_by=settings.group_by, max_items=settings.max_items
    )


# Pollers and discovery (helper A): per-run scheduler, batch poller, strategy, [[watch]].


def poll_drain_seconds(settings: Settings) -> float:
    """How long in-flight polls may finish at stop: a request's timeout, within the grace."""
    grace = settings.daemon.shutdown_grace_seconds
    return min(settings.polling.request_timeout_seconds + 1, grace / 2)


class _PollerCommon(TypedDict):
    """The ``[polling]`` keys both pollers read alike."""

    interval_seconds: float
    terminal: frozenset[str]
    request_timeout_seconds: float
    default_project_id: str  # for runs tracked without one
    drain_seconds: float


def _poller_common(settings: Settings) -> _PollerCommon:
    polling = settings.polling
    return _PollerCommon(
        interval_seconds=polling.interval_seconds,
        terminal=polling.terminal,
        request_timeout_seconds=polling.request_timeout_seconds,
        default_project_id=settings.tencentcloud.project_id,
        drain_seconds=poll_drain_seconds(settings),
    )


def scheduler_options(settings: Settings) -> SchedulerOptions:
    """``[polling]`` for the per-run scheduler."""
    return SchedulerOptions(
        rate_per_second=settings.polling.rate_per_second, **_poller_common(settings)
    )


def batch_options(settings: Settings) -> BatchOptions:
    """``[polling]`` for the DescribeRuns batch poller (GetRunStatus for its follow-ups)."""
    polling = settings.polling
    return BatchOptions(
        batch_size=polling.batch_size,
        describe_rate_per_second=polling.describe_rate_per_second,
        status_rate_per_second=polling.rate_per_second,
        **_poller_common(settings),
    )


def strategy_options(settings: Settings) -> StrategyOptions:
    """``[polling] strategy`` and the budget ``auto`` weighs."""
    polling = settings.polling
    return StrategyOptions(
        mode=polling.strategy,
        rate_per_second=polling.rate_per_second,
        interval_seconds=polling.interval_seconds,
        batch=batch_options(settings),
    )


def watch_options(settings: WatchSettings) -> WatchOptions:
    """One ``[[watch]]`` table."""
    return WatchOptions(
        project_id=settings.project_id,
        filters={name: tuple(values) for name, values in settings.filters.items()},
        labels=dict(settings.labels),
        interval_seconds=settings.interval_seconds,
        notify_existing=settings.notify_existing,
    )


def discovery_options(settings: Settings) -> DiscoveryOptions:
    """Every ``[[watch]]`` table, with the terminal statuses and the default project."""
    return DiscoveryOptions(
        watches=tuple(watch_options(entry) for entry in settings.watch),
        terminal=settings.polling.terminal,
        default_project_id=settings.tencentcloud.project_id,
        retention_seconds=settings.state.retention_days * 86400.0,
    )


# Retention (helper W5): how long finished runs stay, how often pruning passes run.


def retention_options(settings: Settings) -> RetentionOptions:
    """``[state] retention_days``: a pass every 5 minutes, or more often for a retention of
    less than an hour (so a retention of seconds, as in tests, is applied within seconds)."""
    seconds = settings.state.retention_days * 86400.0
    return RetentionOptions(
        retention_seconds=seconds, interval_seconds=min(300.0, max(0.5, seconds / 10))
    )


def state_options(settings: Settings) -> StateOptions:
    """``[state] path`` or ``url`` (config.py makes them exclusive) and ``lease_seconds``."""
    state = settings.state
    url = state.url.get_secret_value() if state.url is not None else None
    return StateOptions(
        path=None if url is not None else state.path, url=url, lease_seconds=state.lease_seconds
    )
