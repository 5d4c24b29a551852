"""The daemon's state as probes and metrics tell it: one place decides it.

``/readyz`` and the ``omics_watcher_polling_state`` gauge must never disagree, and an
operator (or a load balancer) must learn *why* the daemon is not ready: it used to say
``starting`` while credentials were refused and ``ready`` while every poll failed to
connect. :meth:`Health.state` is the one function that decides, from:

- flags the composition root sets: ``ready`` (the state is open and the first poll cycle
  ran) and ``draining`` (shutdown began);
- a :class:`PollingCondition`, what the pollers saw of the API
  (:class:`~watcher.polling.outages.Outages`: ``auth_paused``, ``api_unreachable``);
- a ``standby`` check: true while another replica is the active one (a daemon that shares
  its database with others: the lease's ``LeaseClaim.standby``; :func:`never` without one);
- an ``alive`` check for ``/healthz`` (``/readyz`` says ``unhealthy`` when it fails).

Precedence, first that holds: draining, standby, auth_paused, api_unreachable, starting,
else polling (ready). A daemon that is leaving or not in charge has nothing else to say;
refused credentials and an unreachable API say more than "starting" (and keep a daemon
from ever finishing its first cycle). Nothing here imports the server or the pollers.

:meth:`Health.status_line` words the same state for people, as ``systemctl status`` shows
it (sd_notify ``STATUS=``, sent by :meth:`~watcher.service.sdnotify.SdNotifier.status_loop`
whenever the line changes): ``watching 300 runs``, ``auth_paused: <error code>: ...``,
``api_unreachable: no answer from <host> since ...``, ``standby: ...``, ``draining``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class PollingState(enum.StrEnum):
    """What the daemon is doing; every state but ``POLLING`` is ``/readyz`` 503 with its
    value as the reason."""

    POLLING = "polling"
    STARTING = "starting"
    AUTH_PAUSED = "auth_paused"
    API_UNREACHABLE = "api_unreachable"
    DRAINING = "draining"
    STANDBY = "standby"


class PollingCondition(Protocol):
    """What the pollers saw of the API: ``AUTH_PAUSED``, ``API_UNREACHABLE`` or ``None``,
    and its words for people (``""`` when there is nothing to say; never a secret)."""

    def condition(self) -> PollingState | None: ...

    def detail(self) -> str: ...


def always() -> bool:
    return True


def never() -> bool:
    return False


def nothing_tracked() -> int:
    return 0


class _NothingSeen:
    def condition(self) -> PollingState | None:
        return None

    def detail(self) -> str:
        return ""


class Health:
    """Process health as the probes report it; see the module docstring."""

    __slots__ = ("_alive", "_polling", "_standby", "_tracked", "draining", "ready")

    def __init__(
        self,
        *,
        alive: Callable[[], bool] = always,
        polling: PollingCondition | None = None,
        standby: Callable[[], bool] = never,
        tracked: Callable[[], int] = nothing_tracked,
    ) -> None:
        self.ready = False
        self.draining = False
        self._alive = alive
        self._polling: PollingCondition = polling or _NothingSeen()
        self._standby = standby
        self._tracked = tracked  # runs the poller watches, for the status line

    def alive(self) -> bool:
        return self._alive()

    def state(self) -> PollingState:
        """The one decision (precedence in the module docstring)."""
        if self.draining:
            return PollingState.DRAINING
        if self._standby():
            return PollingState.STANDBY
        trouble = self._polling.condition()
        if trouble is not None:
            return trouble
        if not self.ready:
            return PollingState.STARTING
        return PollingState.POLLING

    def not_ready_reason(self) -> str | None:
        """``None`` when ready to serve, else why not: ``unhealthy`` or a state's value."""
        if not self.alive():
            return "unhealthy"
        state = self.state()
        return None if state is PollingState.POLLING else state.value

    def status_line(self) -> str:
        """:meth:`state` in one line for ``systemctl status``: the state's value first
        (what ``/readyz`` says), then what an operator acts on. Stable while nothing
        changes, so a sender can compare lines to tell a change."""
        state = self.state()
        if state is PollingState.POLLING:
            return f"watching {self._tracked()} runs"
        if state is PollingState.STARTING:
            return f"starting: first poll of {self._tracked()} runs"
        if state is PollingState.STANDBY:
            return "standby: another replica is active"
        if state is PollingState.DRAINING:
            return "draining"
        detail = self._polling.detail()  # auth_paused, api_unreachable
        return f"{state.value}: {detail}" if detail else state.value


class PollingStateGauge(Collector):
    """``omics_watcher_polling_state{state=...}``: 1 for :meth:`Health.state`, 0 for the
    others, computed at each scrape (so it cannot drift from ``/readyz``)."""

    def __init__(self, health: Health) -> None:
        self._health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        current = self._health.state()
        gauge = GaugeMetricFamily(
            "omics_watcher_polling_state",
            "1 for the daemon's current state (polling, starting, auth_paused, "
            "api_unreachable, draining, standby), 0 for the others.",
            labels=["state"],
        )
        for state in PollingState:
            gauge.add_metric([state.value], 1.0 if state is current else 0.0)
        yield gauge
