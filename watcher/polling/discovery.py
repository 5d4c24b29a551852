"""Discovery: ``[[watch]]`` entries find runs with DescribeRuns and track them on their own.

Every ``interval_seconds`` each entry pages through DescribeRuns (its ``project_id`` and
``filters``) and tracks, with its ``labels``, every run the registry has never seen
(:meth:`~watcher.store.Store.track_discovered`). Pollers then pick the runs up from the
registry like runs tracked with ``omics-watcher track``.

Invariants:

- A run is tracked by discovery at most once, ever: only runs without a registry row are
  inserted, in one transaction per page, and rows are deleted only by retention. So restarts
  never track twice, and a run the user untracked stays untracked. A run retention deleted
  (finished longer ago than ``[state] retention_days``) is not tracked again: a listed run
  that is terminal with an ``UpdateTime`` older than the retention is skipped, since it
  was either pruned or would be at once.
- An entry's *first* pass (persisted per entry, keyed by project and filters) records what
  it finds as a silent baseline unless ``notify_existing = true``: the project's history
  (finished runs especially) is not news, so no event and no notification; transitions
  after that are reported as usual. Runs found by later passes are new: they are tracked
  without a status, and their first poll reports them (``previous_status: null``). A first
  pass cut short (crash, API error) is repeated as a first pass.
- Later passes stop at the first page that holds no new run, since DescribeRuns lists the
  newest runs first; every ``FULL_PASS_EVERY``-th pass (and the first pass after a start)
  reads every page, and entries filtering on ``Status`` always do, because a run entering
  that status can sit anywhere in the list. Paging over a changing list can skip a run; the
  next full pass finds it.
- Failures never end discovery: transient ones and throttling retry within the entry's
  interval with backoff, credential or permission refusals back off up to the interval,
  refused filters (a configuration mistake) are logged as errors and retried rarely.
- The API as discovery sees it is reported to the pollers'
  :class:`~watcher.polling.outages.Outages`: every answer, and every failure a poller would
  back off on (connection, timeout, HTTP status, Tencent internal errors), which then is
  logged as part of the one outage (its first line ``discovery_failed``, then the
  summaries) and counts toward ``api_unreachable``: a daemon that only discovers is not
  "ready" while the API is down. Refusals and refused filters are not outages (polling is
  not paused by them) and keep their own lines, as does throttling.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from watcher.omics.errors import AuthError, BadRequest, OmicsError, is_permission_refusal
from watcher.omics.models import RunsFilter
from watcher.polling.common import (
    BAD_REQUEST_BACKOFF_SECONDS,
    DESCRIBE_LIMIT,
    RunLister,
    RunSummaryLike,
    backoff_delay,
)
from watcher.polling.outages import Outages
from watcher.polling.run_poll import Action, action_for
from watcher.store import DiscoveredRun

PAGE_SIZE = DESCRIBE_LIMIT
FULL_PASS_EVERY = 10


def watch_key(project_id: str, filters: Sequence[RunsFilter]) -> str:
    """A stable name for an entry's search: its project and filters, order-independent."""
    spec = {f.name: sorted(f.values) for f in filters}
    return json.dumps([project_id, spec], sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """One ``[[watch]]`` entry: where to look, what to label the runs found, how often."""

    project_id: str = ""  # empty: the configured default project
    filters: Mapping[str, Sequence[str]] = field(default_factory=dict)  # DescribeRuns filters
    labels: Mapping[str, str] = field(default_factory=dict)
    interval_seconds: float = 60.0
    notify_existing: bool = False  # report what the first pass finds instead of a baseline


@dataclass(frozen=True, slots=True)
class DiscoveryOptions:
    watches: Sequence[WatchOptions]
    terminal: frozenset[str]
    default_project_id: str = ""
    retention_seconds: float = 0.0  # [state] retention_days; 0: nothing is ever pruned


@dataclass(slots=True)
class _Watch:
    index: int
    settings: WatchOptions
    project_id: str  # the ProjectId requests name, and the runs are tracked with
    filters: list[RunsFilter]
    key: str
    passes: int = 0  # completed in this process
    errors: int = 0
    due: float = 0.0  # monotonic


class DiscoveryStore(Protocol):
    """The part of the :class:`~watcher.store.api.AsyncStore` discovery uses."""

    async def track_discovered(
        self, runs: Sequence[DiscoveredRun], *, baseline: bool, terminal: frozenset[str]
    ) -> list[str]: ...

    async def discovery_done(self, watch_key: str) -> bool: ...

    async def mark_discovery_done(self, watch_key: str) -> None: ...


class Discovery:
    """Runs every ``[[watch]]`` entry's passes; see the module docstring."""

    def __init__(
        self,
        *,
        store: DiscoveryStore,
        source: RunLister[RunSummaryLike],
        watches: Sequence[WatchOptions],
        terminal: frozenset[str],
        default_project_id: str = "",
        on_tracked: Callable[[], None] = lambda: None,
        rng: random.Random | None = None,
        retention_seconds: float = 0.0,
        wall_clock: Callable[[], float] = time.time,
        outages: Outages | None = None,
    ) -> None:
        self._store = store
        self._source = source
        self._outages = outages or Outages(host="")  # the daemon's: shared with the pollers
        self._terminal = terminal
        self._retention = retention_seconds
        self._wall_clock = wall_clock
        self._on_tracked = on_tracked
        self._rng = rng or random.Random()
        self._log = structlog.get_logger("watcher.discovery")
        self._watches: list[_Watch] = []
        for index, entry in enumerate(watches):
            project = entry.project_id or default_project_id
            filters = [RunsFilter(name, list(values)) for name, values in entry.filters.items()]
            self._watches.append(
                _Watch(index, entry, project, filters, watch_key(project, filters))
            )

    def _now(self) -> float:
        return time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Run passes, each entry every ``interval_seconds``, until ``stop`` is set."""
        if not self._watches:
            return
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                watch = min(self._watches, key=lambda w: w.due)
                now = self._now()
                if watch.due > now:
                    await asyncio.wait({stopper}, timeout=watch.due - now)
                    continue
                try:
                    await self.discover(watch.index)
                except OmicsError as exc:
                    watch.due = now + self._failed(watch, exc)
                else:
                    # From the start of the pass: passes come every interval, however long
                    # paging took (a pass longer than the interval is followed at once).
                    watch.due = now + watch.settings.interval_seconds
        finally:
            stopper.cancel()

    async def discover(self, index: int) -> list[str]:
        """One pass of entry ``index``; the UUIDs it tracked. Raises :class:`OmicsError`."""
        watch = self._watches[index]
        first = not await self._store.discovery_done(watch.key)
        baseline = first and not watch.settings.notify_existing
        full = first or watch.passes % FULL_PASS_EVERY == 0 or "Status" in watch.settings.filters
        labels = dict(watch.settings.labels)
        seen: set[str] = set()
        added: list[str] = []
        offset = 0
        while True:
            total, page = await self._source.describe_runs(
                project_id=watch.project_id, filters=watch.filters, limit=PAGE_SIZE, offset=offset
            )
            self._outages.answered()
            found = []
            for summary in page:
                if summary.RunUuid not in seen and not self._past_retention(summary):
                    seen.add(summary.RunUuid)
                    found.append(
                        DiscoveredRun(
                            summary.RunUuid,
                            watch.project_id,
                            summary.Status,
                            _with_group(labels, summary.RunGroupId),
                        )
                    )
            new = await self._store.track_discovered(
                found, baseline=baseline, terminal=self._terminal
            )
            if new:
                added.extend(new)
                self._on_tracked()
            offset += len(page)
            if not page or offset >= total:
                break
            if not full and not new:
                break  # newest first: below a page of known runs there is nothing new
        if first:
            await self._store.mark_discovery_done(watch.key)
        watch.passes += 1
        watch.errors = 0
        if added:
            self._log.info(
                "runs_discovered",
                watch=index,
                project_id=watch.project_id,
                count=len(added),
                baseline=baseline,
            )
        return added

    def _past_retention(self, summary: RunSummaryLike) -> bool:
        """Finished longer ago than the retention: pruned already (or at once if tracked)."""
        if self._retention <= 0 or summary.Status not in self._terminal:
            return False
        updated = summary.update_time
        return updated is not None and updated.timestamp() < self._wall_clock() - self._retention

    def _failed(self, watch: _Watch, exc: OmicsError) -> float:
        """Log a failed pass; seconds until the entry is tried again."""
        watch.errors += 1
        interval = watch.settings.interval_seconds
        fields: dict[str, Any] = {
            "watch": watch.index,
            "project_id": watch.project_id,
            "code": exc.code,
            "error": exc.message,
            "errors": watch.errors,
        }
        if isinstance(exc, BadRequest):
            delay = max(interval, BAD_REQUEST_BACKOFF_SECONDS)
            self._log.error(
                "discovery_bad_request", hint="check this [[watch]] entry's filters", **fields
            )
            return delay
        backoff = backoff_delay(watch.errors, base=5.0, rng=self._rng)
        if isinstance(exc, AuthError):
            # Retrying faster than the regular schedule cannot fix credentials.
            delay = max(interval, backoff)
            if watch.errors == 1 and is_permission_refusal(exc.code):
                self._log.error(
                    "discovery_refused",
                    hint="these credentials may not call DescribeRuns; discovery retries slowly",
                    **fields,
                )
                return delay
        else:
            delay = min(interval, backoff)
            if action_for(exc) is Action.BACK_OFF:  # the API failing: part of an outage
                self._outages.failed(
                    exc,
                    runs=(),
                    event="discovery_failed",
                    watch=watch.index,
                    project_id=watch.project_id,
                    errors=watch.errors,
                    retry_in=round(delay, 1),
                )
                return delay
        if watch.errors in (1, 5, 20):
            self._log.warning("discovery_failed", retry_in=round(delay, 1), **fields)
        return delay


def build_discovery(
    options: DiscoveryOptions,
    *,
    store: DiscoveryStore,
    source: RunLister[RunSummaryLike],
    on_tracked: Callable[[], None],
    outages: Outages | None = None,
) -> Discovery:
    """Discovery for the configured ``[[watch]]`` entries (its ``run`` returns at once if
    there are none), reporting the API's failures and answers to ``outages``."""
    return Discovery(
        store=store,
        source=source,
        watches=options.watches,
        terminal=options.terminal,
        default_project_id=options.default_project_id,
        on_tracked=on_tracked,
        retention_seconds=options.retention_seconds,
        outages=outages,
    )


def _with_group(labels: dict[str, str], run_group: str | None) -> dict[str, str]:
    """The entry's labels plus ``run_group`` from DescribeRuns, for digests and roll-ups.

    A ``run_group`` the user set in the entry wins.
    """
    if not run_group or "run_group" in labels:
        return labels
    return {**labels, "run_group": run_group}
