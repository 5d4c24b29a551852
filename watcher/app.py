"""Composition root: builds every component for ``run`` and runs them in one TaskGroup.

``run_daemon`` reads as four phases (uvicorn's shape; kopf's spawn apart from run):

- :func:`build`: settings become option dataclasses (:mod:`watcher.options`) and every part
  is made: the state (an :class:`~watcher.store.api.AsyncStore`: a SQLite file or
  PostgreSQL), HTTP session, Omics client, the live notifier set, dispatcher, the one
  :class:`~watcher.sink.EventSink` every producer writes through, pollers, server;
- :func:`startup`: listen, load the registry, open the sd_notify channel;
- :meth:`Serving.spawn`: the long-lived tasks in one :class:`asyncio.TaskGroup` (if one
  dies, all stop and the process exits non-zero so systemd or Kubernetes restarts it); the
  active daemon's work (polling, roll-ups, delivery, stuck checks, discovery, retention) is
  one :class:`ActiveTerm` inside it, the hook where a lost lease stops all of it at once;
- :meth:`Serving.shutdown`: :attr:`Serving.SHUTDOWN`, an ordered list of named steps:
  readiness 503 → polling stops and in-flight polls finish → failures being enriched get
  their details or go as they are → the roll-up's last check →
  the dispatcher drains within the grace period → the server stops. Anything undelivered
  stays in the outbox for the next start.

Resources are opened in an :class:`~contextlib.AsyncExitStack` and closed in reverse order.
SIGHUP (:class:`Reloader`) replaces the notifier set held by :class:`LiveNotifiers` as one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from watcher.checkpoints import Checkpointer
from watcher.config import Settings
from watcher.connect import STATUS_ACTION, build_client, build_limiters, http_session
from watcher.delivery.digest import group_progress
from watcher.delivery.dispatcher import Dispatcher
from watcher.delivery.silencer import LiveSilences
from watcher.enrich import FailureEnricher
from watcher.events import Event
from watcher.notifier_set import LiveNotifiers, NotifierSet, forget_removed_notifiers
from watcher.omics.client import OmicsClient
from watcher.omics.limiter import PacingLimiter
from watcher.options import (
    discovery_options,
    enrich_limits,
    retention_options,
    scheduler_options,
    server_options,
    state_options,
    status_vocabulary,
    strategy_options,
    stuck_limits,
    ui_options,
)
from watcher.polling.discovery import Discovery, build_discovery
from watcher.polling.loop import Collaborators
from watcher.polling.outages import Outages, OutageTiming
from watcher.polling.per_run import Scheduler
from watcher.polling.strategy import Poller, build_poller
from watcher.recorder import Recorder
from watcher.replica import Gate, lease_gate, lease_trace, serve_terms, starts_as_standby
from watcher.retention import Pruner
from watcher.rollup import RollupTracker
from watcher.service.health import Health, PollingStateGauge, never
from watcher.service.metrics import ApiRequestMetrics, DeliveryMetrics, Metrics
from watcher.service.sdnotify import SdNotifier
from watcher.service.server import AppParts, HttpServer, build_app
from watcher.service.state_metrics import StateGauges
from watcher.settings_diff import report_unapplied
from watcher.sink import EventSink
from watcher.statuses import Statuses
from watcher.store.api import AsyncStore, SqliteStore, StateOptions
from watcher.store.lock import claim_state
from watcher.store.pg.claim import LeaseClaim
from watcher.store.pg.store import PgStore
from watcher.stuck import StuckChecker
from watcher.ui.pages import StatusPage


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Wiring:
    """Hooks a caller (the demo, tests) may attach to a running daemon."""

    on_event: Callable[[Event], None] = lambda event: None
    on_ready: Callable[[int], None] = lambda port: None
    # When an outage makes /readyz say api_unreachable, how often it is summarised in the
    # log, when it is over (tests shorten them).
    outages: OutageTiming = field(default_factory=OutageTiming)


@dataclass
class Daemon:
    """Every part of one ``run``, built by :func:`build`; nothing runs yet."""

    settings: Settings
    store: AsyncStore
    session: aiohttp.ClientSession
    metrics: Metrics
    health: Health
    notifiers: LiveNotifiers
    dispatcher: Dispatcher
    rollups: RollupTracker
    stuck: StuckChecker
    recorder: Recorder
    poller: Poller
    discovery: Discovery
    server: HttpServer
    log: Any
    pruner: Pruner
    claim: LeaseClaim | None = None  # PostgreSQL: the lease (watcher.replica)


async def build(
    settings: Settings,
    *,
    stack: contextlib.AsyncExitStack,
    environ: Mapping[str, str],
    wiring: Wiring,
) -> Daemon:
    """Open the state (a SQLite file or PostgreSQL, ``[state] path`` or ``url``) and the
    HTTP session (closed by ``stack``) and build every part.

    Raises ``StateInUse`` (another daemon holds the state file), ``StateError`` and
    ``CredentialsError``; nothing is polled or served yet.
    """
    log = structlog.get_logger("watcher.app")
    metrics = Metrics()
    store, claim = await _open_state(state_options(settings), stack)
    session, gate = await _session(claim, stack)
    limiters = build_limiters(settings)
    client = _observed_client(
        settings, session=session, environ=environ, limiters=limiters, metrics=metrics
    )
    notifiers = LiveNotifiers(NotifierSet.build(settings, session=session))
    statuses = status_vocabulary(settings)
    dispatcher = _build_dispatcher(store, notifiers, metrics, statuses, gate)
    # One sink for every producer: routed by the live notifier set, announced to the
    # roll-up tracker, the caller's hook and the dispatcher, counted in the metrics.
    sink = EventSink(
        store=store, route=notifiers.route, metrics=metrics, on_recorded=dispatcher.notify
    )
    rollups = RollupTracker(
        store=store,
        sink=sink,
        targets=notifiers.rollup_targets,
        clock=utc_now,
        statuses=statuses,
    )
    sink.subscribe(rollups.observe)
    sink.subscribe(wiring.on_event)
    limits = enrich_limits(settings)
    recorder = Recorder(
        store=store,
        sink=sink,
        terminal=settings.polling.terminal,
        wall_clock=utc_now,
        enricher=FailureEnricher(client=client, statuses=statuses, limits=limits),
        enrich_timeout=limits.timeout,
    )
    outages = Outages(host=client.host, timing=wiring.outages)  # what readiness reads
    parts = Collaborators(
        store=store, recorder=recorder, metrics=metrics, wall_clock=utc_now, outages=outages
    )
    poller = _build_poller(settings, client=client, limiters=limiters, parts=parts)
    health = _health(outages, claim, poller)
    return Daemon(
        settings=settings,
        store=store,
        session=session,
        metrics=metrics,
        health=health,
        notifiers=notifiers,
        dispatcher=dispatcher,
        rollups=rollups,
        stuck=StuckChecker(store=store, sink=sink, limits=stuck_limits(settings.stuck)),
        recorder=recorder,
        poller=poller,
        discovery=build_discovery(
            discovery_options(settings),
            store=store,
            source=client,
            on_tracked=poller.refresh,
            outages=outages,  # DescribeRuns failing is the same outage as polls failing
        ),
        server=_build_server(
            settings, store=store, metrics=metrics, health=health, poller=poller, live=notifiers
        ),
        log=log,
        pruner=Pruner(store=store, options=retention_options(settings)),
        claim=claim,
    )


def _health(outages: Outages, claim: LeaseClaim | None, poller: Poller) -> Health:
    """What ``/readyz``, the polling-state gauge and systemd's ``STATUS=`` say, from the
    pollers' and discovery's outages, the lease (standby) and the poller's run count."""
    standby = claim.standby if claim is not None else never
    return Health(polling=outages, standby=standby, tracked=lambda: poller.tracked)


async def _open_state(
    where: StateOptions, stack: contextlib.AsyncExitStack
) -> tuple[AsyncStore, LeaseClaim | None]:
    """The state (closed by ``stack``) and, on PostgreSQL, the lease claim that decides which
    replica is active (``watcher.replica``): the store's daemon writes are fenced with its
    grant, and it is released when the daemon exits."""
    if where.path is not None:
        # One daemon per state file: claimed before it is opened, released after it closes.
        stack.enter_context(claim_state(str(where.path)))
    store = await where.open()
    stack.push_async_callback(store.close)
    if where.url is None:
        return store, None
    claim = LeaseClaim(where.url, lease_seconds=where.lease_seconds)
    assert isinstance(store, PgStore)
    store.bind(claim.grant)
    stack.push_async_callback(claim.aclose)
    return store, claim


async def _session(
    claim: LeaseClaim | None, stack: contextlib.AsyncExitStack
) -> tuple[aiohttp.ClientSession, Gate | None]:
    """The one HTTP session (closed by ``stack``) and, on replicas, the lease's gate: every
    request of the session awaits it, and the dispatcher awaits it before every send (email
    over SMTP too), so nothing leaves a daemon without the lease by either way out."""
    gate = lease_gate(claim.holding) if claim is not None else None
    traces = [lease_trace(gate)] if gate is not None else []
    return await stack.enter_async_context(http_session(trace_configs=traces)), gate


def _build_dispatcher(
    store: AsyncStore,
    notifiers: LiveNotifiers,
    metrics: Metrics,
    statuses: Statuses,
    gate: Gate | None,
    /,
) -> Dispatcher:
    """Delivery: one worker per notifier in force, silences applied at its planning step,
    digests counted with the status vocabulary, rows held in mute windows exported, each
    send behind the lease's gate on replicas."""
    dispatcher = Dispatcher(
        store=store,
        notifiers=notifiers.current.notifiers,
        policies=notifiers.current.policies,
        logger=structlog.get_logger("watcher.dispatch"),
        metrics=DeliveryMetrics(metrics),
        progress=lambda run_group: group_progress(store, run_group, statuses=statuses),
        statuses=statuses,
        silences=LiveSilences(store, logger=structlog.get_logger("watcher.silences")),
        gate=gate,
    )
    metrics.watch_muted(dispatcher.muted)  # rows held in mute windows, at scrape time
    return dispatcher


def _observed_client(
    settings: Settings,
    *,
    session: aiohttp.ClientSession,
    environ: Mapping[str, str],
    limiters: Mapping[str, PacingLimiter],
    metrics: Metrics,
) -> OmicsClient:
    """The Omics client, its request timings and clock skew exported as metrics."""
    client = build_client(
        settings,
        session=session,
        environ=environ,
        limiters=limiters,
        observer=ApiRequestMetrics(metrics, actions=[a for a in limiters if a != "default"]),
    )
    # The client's estimate after SignatureExpire answers, read at scrape time.
    metrics.clock_skew_seconds.set_function(lambda: client.clock_skew_seconds)
    return client


def _build_poller(
    settings: Settings,
    *,
    client: OmicsClient,
    limiters: Mapping[str, PacingLimiter],
    parts: Collaborators,
) -> Poller:
    """The [polling] strategy (per-run, batch, auto) around the per-run scheduler."""
    status_limiter = limiters[STATUS_ACTION]
    scheduler = Scheduler(
        source=client,
        options=scheduler_options(settings),
        backlog=lambda: status_limiter.waiting,
        when_drained=status_limiter.when_drained,
        **parts,
    )
    return build_poller(
        strategy_options(settings), scheduler=scheduler, source=client, limiters=limiters, **parts
    )


def _build_server(
    settings: Settings,
    *,
    store: AsyncStore,
    metrics: Metrics,
    health: Health,
    poller: Poller,
    live: LiveNotifiers,
) -> HttpServer:
    """Probes, metrics and the admin API (runs it tracks are polled at once; the notifiers a
    silence names are checked against ``live``, the set in force)."""
    options = server_options(settings)
    StateGauges(store).install(metrics)  # runs by status, outbox, redeliveries: at each scrape
    metrics.registry.register(PollingStateGauge(health))  # what /readyz says, as a gauge
    split = options.admin_address is not None  # [server] admin_listen: the admin API apart
    page = _status_page(
        settings,
        store=store,
        metrics=metrics,
        health=health,
        notifier_names=lambda: live.current.notifiers.keys(),  # silences, redelivery
        on_untracked=poller.refresh,  # an untracked run leaves the scheduler at once
    )

    def app(parts: AppParts) -> web.Application:
        return build_app(
            store=store,
            metrics=metrics,
            health=health,
            admin_token=options.admin_token,
            default_project_id=options.default_project_id,
            on_tracked=poller.refresh,
            parts=parts,
            notifier_names=lambda: live.current.notifiers.keys(),  # those in force
            ui=page.install if page is not None else None,
        )

    return HttpServer(
        app("probes" if split else "all"),
        admin_app=app("admin") if split else None,
        metrics=metrics,  # shed connections, open connections
    )


def _status_page(
    settings: Settings,
    *,
    store: AsyncStore,
    metrics: Metrics,
    health: Health,
    notifier_names: Callable[[], Collection[str]],
    on_untracked: Callable[[], None],
) -> StatusPage | None:
    """The status page under /ui/ on the admin listener, when it is on."""
    options = ui_options(settings)
    if options is None:
        return None
    return StatusPage(
        options,
        store=store,
        metrics=metrics,
        statuses=status_vocabulary(settings),
        not_ready_reason=health.not_ready_reason,
        notifier_names=notifier_names,
        on_untracked=on_untracked,
    )


async def startup(
    daemon: Daemon, *, stack: contextlib.AsyncExitStack, environ: Mapping[str, str]
) -> tuple[int, SdNotifier]:
    """Listen (``ServerStartError`` if the port is taken), load the registry, greet systemd.

    Returns the port listened on and the sd_notify channel (READY comes after the first
    poll cycle, see :meth:`Serving.become_ready`).
    """
    options = server_options(daemon.settings)
    port = await daemon.server.start(options.host, options.port, admin=options.admin_address)
    stack.push_async_callback(daemon.server.stop)
    tracked = await daemon.poller.load()
    daemon.log.info("daemon_started", listen=f"{options.host}:{port}", tracked=tracked)
    sd = stack.enter_context(SdNotifier(environ=environ))
    return port, sd


class Reloader:
    """SIGHUP: re-read the settings and replace the notifier set as one, or keep the old one.

    The sd_notify protocol sees RELOADING then READY around each attempt; a settings file
    that fails to load or build is logged (``reload_failed``) and changes nothing. Keys that
    changed but only a restart applies are named in one ``reload_needs_restart`` warning.
    """

    def __init__(
        self,
        daemon: Daemon,
        *,
        signal: asyncio.Event,
        load: Callable[[], Settings],
        sd: SdNotifier,
    ) -> None:
        self._daemon = daemon
        self._signal = signal
        self._load = load
        self._sd = sd

    async def run(self) -> None:
        while True:
            await self._signal.wait()
            self._signal.clear()
            self._sd.reloading()
            await self.reload_once()
            self._sd.ready()

    async def reload_once(self) -> None:
        daemon = self._daemon
        try:
            loaded = self._load()
            fresh = NotifierSet.build(loaded, session=daemon.session)
        except Exception as exc:  # a bad edit must not take the daemon down
            daemon.log.error("reload_failed", error=str(exc), hint="keeping the old notifiers")
            return
        report_unapplied(daemon.settings, loaded, daemon.log)
        daemon.notifiers.replace(fresh)
        daemon.dispatcher.replace_notifiers(fresh.notifiers, fresh.policies)
        await forget_removed_notifiers(daemon.store, fresh, daemon.log)
        daemon.log.info("reloaded", notifiers=sorted(fresh.notifiers))


class ActiveTerm:
    """The active daemon's work, for one term: what only the daemon holding the state does.

    Polling, roll-ups and delivery own work in flight: each gets its own stop signal, given
    in :attr:`SHUTDOWN` order once ``drain`` is set. The helpers (stuck checks, discovery,
    retention, WAL checkpoints) hold nothing that must finish and are cancelled first (a
    retention step in flight is one short transaction; it commits or rolls back).

    The lease hook: every part runs in the term's own TaskGroup, so when one of them raises
    :class:`~watcher.store.pg.lease.LeaseLost` (a fenced write of a daemon that lost its
    lease) the group cancels polling, delivery and pruning at once and :meth:`run` raises it
    (in an ``ExceptionGroup``) to whoever runs the term; nothing is drained, since every
    write would be fenced out anyway. On SQLite the one term lasts the daemon's life. A
    PostgreSQL daemon runs one term per lease it is granted (``watcher.replica``): a later
    term passes ``reload=True`` so the poller reads the registry afresh.
    """

    def __init__(self, daemon: Daemon, *, deadline: Callable[[], float]) -> None:
        self._daemon = daemon
        self._deadline = deadline  # loop time by which delivery must stop (set at drain)
        self._polling_stop = asyncio.Event()
        self._rollup_stop = asyncio.Event()
        self._main: dict[str, asyncio.Task[None]] = {}
        self._helpers: list[asyncio.Task[None]] = []
        self.abandoned = 0

    async def run(self, drain: asyncio.Event, *, reload: bool = False) -> None:
        """Begin the term, work until ``drain`` is set, then stop in :attr:`SHUTDOWN` order."""
        d = self._daemon
        if reload:
            await d.poller.load()
        # Rows of notifiers no longer configured can never go; failures a dead predecessor
        # held get their details looked up again, then go.
        await forget_removed_notifiers(d.store, d.notifiers.current, d.log)
        await d.recorder.resume_held()
        async with asyncio.TaskGroup() as group:
            self._spawn(group, drain)
            await drain.wait()
            for _name, step in self.SHUTDOWN:
                await step(self)

    def _spawn(self, group: asyncio.TaskGroup, drain: asyncio.Event) -> None:
        d = self._daemon
        self._main = {
            "polling": group.create_task(d.poller.run(self._polling_stop)),
            "rollups": group.create_task(d.rollups.run(self._rollup_stop)),
            "delivery": group.create_task(d.dispatcher.run()),
        }
        helpers: list[Coroutine[Any, Any, None]] = []
        if d.stuck.enabled:
            helpers.append(d.stuck.run(drain))
        if d.settings.watch:
            helpers.append(d.discovery.run(drain))
        if d.pruner.enabled:
            helpers.append(d.pruner.run(drain))
        if isinstance(d.store, SqliteStore):  # WAL checkpoints off the loop (SQLite only)
            helpers.append(Checkpointer(d.store.sync).run(drain))
        self._helpers = [group.create_task(h) for h in helpers]

    async def _stop_helpers(self) -> None:
        for helper in self._helpers:
            helper.cancel()

    async def _stop_polling(self) -> None:
        """No new polls; in-flight ones finish (bounded by the pollers' drain time)."""
        self._polling_stop.set()
        await self._main["polling"]

    async def _stop_enrichment(self) -> None:
        """Failures recorded by the last polls get their details (half the grace left at
        most; then they are released as they are) so the dispatcher's last look sends them."""
        left = self._deadline() - asyncio.get_running_loop().time()
        await self._daemon.recorder.drain(max(0.0, left / 2))

    async def _stop_rollups(self) -> None:
        """The last roll-up check records what the last polls completed."""
        self._rollup_stop.set()
        await self._main["rollups"]

    async def _stop_delivery(self) -> None:
        """The dispatcher delivers until the grace deadline; the rest stays in the outbox."""
        self.abandoned = await self._daemon.dispatcher.stop(self._deadline())
        await self._main["delivery"]

    SHUTDOWN: tuple[tuple[str, Callable[[ActiveTerm], Awaitable[None]]], ...] = (
        ("helpers", _stop_helpers),
        ("polling", _stop_polling),
        ("enrichment", _stop_enrichment),
        ("rollups", _stop_rollups),
        ("delivery", _stop_delivery),
    )


class Serving:
    """The long-lived tasks of one daemon in one TaskGroup, and their ordered shutdown.

    The HTTP server and the process's helpers (readiness, reload, watchdog) run for the
    daemon's whole life; the active work runs as an :class:`ActiveTerm` (:meth:`active`).
    :attr:`SHUTDOWN`: readiness 503 → the term drains (polling, enrichment, roll-ups,
    delivery) → the server stops.
    """

    def __init__(self, daemon: Daemon, *, sd: SdNotifier, port: int, wiring: Wiring) -> None:
        self._daemon = daemon
        self._sd = sd
        self._port = port
        self._wiring = wiring
        self._server_stop = asyncio.Event()
        self._drain = asyncio.Event()  # set at shutdown: the active term drains
        self._server: asyncio.Task[None] | None = None
        self._active: asyncio.Task[None] | None = None
        self._helpers: list[asyncio.Task[None]] = []
        self._deadline = 0.0
        self.abandoned = 0

    def spawn(
        self, group: asyncio.TaskGroup, *, stop: asyncio.Event, reloader: Reloader | None
    ) -> None:
        """Start every task in ``group``; none of them waits for another to start."""
        d = self._daemon
        self._server = group.create_task(d.server.run(self._server_stop))
        self._active = group.create_task(self._terms())
        helpers: list[Coroutine[Any, Any, None]] = [self.become_ready()]
        if reloader is not None:
            helpers.append(reloader.run())
        helpers.append(self._sd.watchdog_loop(healthy=d.health.alive))
        helpers.append(self._sd.status_loop(d.health.status_line))  # STATUS= on changes
        self._helpers = [group.create_task(h) for h in helpers]

    async def active(self, drain: asyncio.Event, *, reload: bool = False) -> None:
        """One term of the active daemon's work until ``drain`` (see :class:`ActiveTerm`;
        raises ``LeaseLost`` in an ``ExceptionGroup`` when the lease is lost)."""
        term = ActiveTerm(self._daemon, deadline=lambda: self._deadline)
        try:
            await term.run(drain, reload=reload)
        finally:
            self.abandoned += term.abandoned

    async def _terms(self) -> None:
        """On a state file the one term of the daemon's life; on PostgreSQL one term per
        lease granted (a later one reads the registry afresh), until shutdown drains."""
        claim = self._daemon.claim
        if claim is None:
            await self.active(self._drain)
            return
        await serve_terms(
            claim,
            lambda drain: self.active(drain, reload=True),
            stop=self._drain,
            log=self._daemon.log,
        )

    async def become_ready(self) -> None:
        """Ready (``/readyz`` 200, sd_notify READY) once every run was polled once; a
        replica that starts as a standby tells systemd it is up at once.

        READY=1 means started (listening, state open, first poll cycle run), not healthy:
        it goes out even when that cycle was refused or got no answer, with a STATUS= that
        says so (``auth_paused: ...``). Withheld, a ``Type=notify`` unit would fail its
        start after ``TimeoutStartSec`` and be restarted until systemd gives up: restarts
        cannot fix credentials or reach the API, and probes, admin API and delivery would
        stop meanwhile, while the daemon resumes by itself once the API answers (a CAM
        policy fixed, the network back). ``/readyz`` stays 503 until then."""
        health = self._daemon.health
        claim = self._daemon.claim
        if claim is not None and await starts_as_standby(claim):
            self._sd.ready(health.status_line())
        await self._daemon.poller.first_cycle_done.wait()
        health.ready = True
        self._sd.ready(health.status_line())
        self._wiring.on_ready(self._port)

    async def shutdown(self) -> int:
        """Run :attr:`SHUTDOWN` in order; return the sends abandoned at the deadline."""
        self._deadline = asyncio.get_running_loop().time() + self._grace
        for _name, step in self.SHUTDOWN:
            await step(self)
        return self.abandoned

    @property
    def _grace(self) -> float:
        return self._daemon.settings.daemon.shutdown_grace_seconds

    async def _stop_readiness(self) -> None:
        """``/readyz`` 503 and STOPPING=1 first, so no balancer sends us new work."""
        self._daemon.health.draining = True
        self._sd.stopping(self._daemon.health.status_line())  # "draining"
        self._daemon.log.info("daemon_stopping", grace_seconds=self._grace)
        for helper in self._helpers:
            helper.cancel()

    async def _stop_active(self) -> None:
        """The active term drains: polling, enrichment, roll-ups, delivery, in order."""
        self._drain.set()
        if self._active is not None:
            await self._active

    async def _stop_server(self) -> None:
        """Probes and metrics answer until the very end."""
        self._server_stop.set()
        if self._server is not None:
            await self._server

    SHUTDOWN: tuple[tuple[str, Callable[[Serving], Awaitable[None]]], ...] = (
        ("readiness", _stop_readiness),
        ("active", _stop_active),
        ("server", _stop_server),
    )


async def run_daemon(
    settings: Settings,
    *,
    stop: asyncio.Event,
    reload: asyncio.Event | None = None,
    reload_settings: Callable[[], Settings] | None = None,
    environ: Mapping[str, str],
    wiring: Wiring | None = None,
) -> int:
    """``omics-watcher run``: build → startup → serve until ``stop`` → shutdown.

    Raises ``StateError`` (state file), ``ServerStartError`` (port) and
    ``CredentialsError`` before anything is polled; the CLI maps them to exit codes.
    """
    wiring = wiring or Wiring()
    async with contextlib.AsyncExitStack() as stack:
        daemon = await build(settings, stack=stack, environ=environ, wiring=wiring)
        port, sd = await startup(daemon, stack=stack, environ=environ)
        serving = Serving(daemon, sd=sd, port=port, wiring=wiring)
        reloader = None
        if reload is not None and reload_settings is not None:
            reloader = Reloader(daemon, signal=reload, load=reload_settings, sd=sd)
        async with asyncio.TaskGroup() as group:
            serving.spawn(group, stop=stop, reloader=reloader)
            await stop.wait()
            abandoned = await serving.shutdown()
        pending, _ = await daemon.store.outbox_stats(now=utc_now())
        daemon.log.info("daemon_stopped", undelivered=pending, abandoned_sends=abandoned)
    return 0
