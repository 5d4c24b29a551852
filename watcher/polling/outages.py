"""What the pollers saw of the Omics API: answers, failures, auth pauses; outages logged.

Why one object for both pollers: an outage is a fact about the API, not about one run or
one poller. Logging it per failed poll wrote a line per run (10,000 runs down: 10,000
lines, three times over with the old 1st/5th/20th rule) while saying neither where nor why;
readiness needs the same facts ("no answer for a minute", "credentials refused") to say
``api_unreachable`` or ``auth_paused`` instead of ``ready``. So the pollers report here,
through four calls, and :class:`Outages` keeps the condition and writes bounded lines:

- :meth:`Outages.answered`: any successful answer (the hot path: one attribute test while
  all is well);
- :meth:`Outages.failed`: a poll that got no usable answer (transient: connection, DNS,
  timeout, TLS, HTTP status, a Tencent error code). The first failure of an outage is one
  warning line naming the host and the cause; later ones are debug lines; every
  :attr:`OutageTiming.summary_seconds` while failures last one ``poll_failures`` warning
  counts them (failures, causes, hosts, runs affected, answers meanwhile). When answers come
  back (none failed for :attr:`OutageTiming.recovery_quiet_seconds`) one ``poll_recovered``
  line sums the outage up. A new outage's first line is held back (counted in the next
  line) if another was written less than ``summary_seconds`` ago, so a flapping API cannot
  make the log grow with the number of runs either;
- :meth:`Outages.paused`: credentials or permissions refused (polling pauses; the pause
  itself and its own log lines are :class:`~watcher.polling.common.AuthPause`'s).

:meth:`Outages.condition` is what readiness reads (:class:`~watcher.service.health.Health`):
``auth_paused`` while paused, ``api_unreachable`` once polls have failed for
:attr:`OutageTiming.unreachable_seconds` without a single answer, else ``None``. Counting
from the first failure (not from the last answer) is what makes it mean "while runs are
due": a daemon with nothing to poll for an hour is not unreachable at its first failure.
:meth:`Outages.detail` says the condition's words for people (``systemctl status``): the
refusal's error code, or the host and since when it has not answered.

Discovery reports here too (its DescribeRuns passes ask the same API): any answer, and the
failures the pollers would back off on; its refusals and refused filters stay its own
lines, since they do not pause polling. Failure enrichment does not (see
:mod:`watcher.enrich`): it asks only right after a poll was answered, and its per-event
``failure_enrichment_incomplete`` line is what says which event went without details.

Time comes from injected clocks (monotonic for every decision, wall only to say "since");
nothing here sleeps or starts a task.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from watcher.omics.errors import OmicsError
from watcher.service.health import PollingState

UNREACHABLE_SECONDS = 60.0  # no answer for this long while polls fail: api_unreachable
SUMMARY_SECONDS = 30.0  # one poll_failures line this often while failures last
RECOVERY_QUIET_SECONDS = 10.0  # answers and no failure for this long: the outage is over
MAX_ERROR_CHARS = 200  # the server's or library's message, cut (the cause says the gist)


@dataclass(frozen=True, slots=True)
class OutageTiming:
    """The three periods above; tests make them short."""

    unreachable_seconds: float = UNREACHABLE_SECONDS
    summary_seconds: float = SUMMARY_SECONDS
    recovery_quiet_seconds: float = RECOVERY_QUIET_SECONDS


@dataclass(slots=True)
class _Tally:
    """Failures counted since some moment (the last summary, or the outage's start)."""

    failures: int = 0
    answers: int = 0
    causes: Counter[str] = field(default_factory=Counter)
    hosts: Counter[str] = field(default_factory=Counter)
    runs: set[str] = field(default_factory=set)

    def add(self, host: str, cause: str, runs: Collection[str]) -> None:
        self.failures += 1
        self.causes[cause] += 1
        self.hosts[host] += 1
        self.runs.update(runs)

    def fields(self) -> dict[str, Any]:
        return {
            "failures": self.failures,
            "causes": dict(self.causes.most_common()),
            "hosts": dict(self.hosts.most_common()),
            "runs_affected": len(self.runs),
            "answers": self.answers,
        }


@dataclass(slots=True)
class _Outage:
    """One outage: from its first failure until answers came back and stayed
    (:attr:`OutageTiming.recovery_quiet_seconds`)."""

    started: float
    last_failure: float
    next_summary: float
    # The first failure since the last answer (monotonic, and wall time to say "since");
    # None once an answer came, while the outage waits to be over.
    failing_since: float | None
    failing_since_wall: float
    window: _Tally = field(default_factory=_Tally)  # since the last line
    total: _Tally = field(default_factory=_Tally)  # since the outage began


class Outages:
    """The API as the pollers saw it; see the module docstring."""

    def __init__(
        self,
        *,
        host: str,
        timing: OutageTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        log: Any = None,
    ) -> None:
        self.host = host  # the API endpoint the pollers ask (scheme and path aside)
        self._timing = timing or OutageTiming()
        self._clock = clock
        self._wall_clock = wall_clock
        self._log = log if log is not None else structlog.get_logger("watcher.polling")
        self._paused: str | None = None  # why polling is paused (auth), None when not
        self._outage: _Outage | None = None  # None while all is well
        self._last_line = -float("inf")  # when the last first-line or summary was written

    # -- what the pollers report ----------------------------------------------------------

    def answered(self) -> None:
        """A request got a successful answer (two attribute tests while all is well)."""
        if self._outage is not None or self._paused is not None:
            self._answered_after_trouble()

    def failed(
        self, error: OmicsError, *, runs: Collection[str], event: str, **fields: Any
    ) -> None:
        """A request got no usable answer; ``runs``: the runs it was about; ``event`` and
        ``fields``: the per-failure log line (``poll_failed`` with ``run_uuid``, ...)."""
        now = self._clock()
        cause = error.cause
        line = {
            **fields,
            "host": self.host,
            "cause": cause,
            "code": error.code,
            "error": error.message[:MAX_ERROR_CHARS],
        }
        outage = self._outage
        if outage is None:
            outage = self._outage = _Outage(
                started=now,
                last_failure=now,
                next_summary=now + self._timing.summary_seconds,
                failing_since=now,
                failing_since_wall=self._wall_clock(),
            )
            if now - self._last_line >= self._timing.summary_seconds:
                self._last_line = now
                self._log.warning(
                    event,
                    **line,
                    hint=f"summarised every {self._timing.summary_seconds:g} s while failures last",
                )
                outage.total.add(self.host, cause, runs)
                return
        elif outage.failing_since is None:  # failing again after an answer, still in it
            outage.failing_since, outage.failing_since_wall = now, self._wall_clock()
        outage.last_failure = now
        outage.window.add(self.host, cause, runs)
        outage.total.add(self.host, cause, runs)
        self._log.debug(event, **line)
        if now >= outage.next_summary:
            self._summarise(outage, now)

    def paused(self, reason: str) -> None:
        """Credentials or permissions were refused; polling pauses until an answer."""
        self._paused = reason

    # -- what readiness reads -------------------------------------------------------------

    def condition(self) -> PollingState | None:
        """``AUTH_PAUSED``, ``API_UNREACHABLE`` or ``None`` (nothing wrong seen)."""
        if self._paused is not None:
            return PollingState.AUTH_PAUSED
        outage = self._outage
        since = outage.failing_since if outage is not None else None
        if since is not None and self._clock() - since >= self._timing.unreachable_seconds:
            return PollingState.API_UNREACHABLE
        return None

    def detail(self) -> str:
        """The words for :meth:`condition` (``""`` when it is ``None``): the refusal's error
        code, or the host not answering and since when (UTC, to the second). Never a secret:
        an error code and the configured endpoint's host."""
        condition = self.condition()
        if condition is PollingState.AUTH_PAUSED:
            return f"{self._paused}: polling paused, check credentials and permissions"
        if condition is PollingState.API_UNREACHABLE and self._outage is not None:
            when = datetime.fromtimestamp(self._outage.failing_since_wall, UTC)
            return f"no answer from {self.host} since {when:%Y-%m-%d %H:%M:%S} UTC"
        return ""

    # -- internals ------------------------------------------------------------------------

    def _answered_after_trouble(self) -> None:
        self._paused = None
        outage = self._outage
        if outage is None:
            return
        outage.failing_since = None
        now = self._clock()
        outage.window.answers += 1
        outage.total.answers += 1
        if now - outage.last_failure < self._timing.recovery_quiet_seconds:
            return  # answers again, but failures too until a moment ago: not over yet
        self._outage = None
        self._log.info(
            "poll_recovered",
            lasted_seconds=round(outage.last_failure - outage.started, 1),
            **outage.total.fields(),
        )

    def _summarise(self, outage: _Outage, now: float) -> None:
        window = outage.window
        outage.window = _Tally()
        outage.next_summary = now + self._timing.summary_seconds
        self._last_line = now
        self._log.warning(
            "poll_failures",
            failing_seconds=round(now - outage.started, 1),
            unreachable=self.condition() is PollingState.API_UNREACHABLE,
            **window.fields(),
        )
