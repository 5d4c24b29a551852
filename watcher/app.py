"""Composition root: builds every component for ``run`` and runs them in one TaskGroup.

Resources are opened in an :class:`~contextlib.AsyncExitStack` (state file, HTTP session,
HTTP server) and closed in reverse order. Long-lived tasks (scheduler, dispatcher, HTTP
server, reload watcher) share one :class:`asyncio.TaskGroup`: if one dies, all stop and
the process exits non-zero so systemd or Kubernetes restarts it.

Shutdown order on ``stop``: readiness turns 503, the scheduler stops taking new polls and
lets in-flight ones finish, then the dispatcher gets what is left of the grace period to
deliver; anything undelivered stays in the outbox for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import structlog
from pydantic import AnyUrl, BaseModel, SecretStr

from watcher import __version__
from watcher.config import Settings
from watcher.delivery.digest import group_progress
from watcher.delivery.dispatcher import Dispatcher, Policy
from watcher.enrich import FailureEnricher, failing_statuses
from watcher.events import Event
from watcher.notifiers.base import Notifier
from watcher.notifiers.common import NotifierBase
from watcher.notifiers.log import LogSettings
from watcher.notifiers.registry import build_notifier
from watcher.omics.client import OmicsClient
from watcher.omics.credentials import (
    CredentialProvider,
    CredentialsError,
    default_profile_paths,
    static_provider,
)
from watcher.omics.limiter import PacingLimiter
from watcher.options import stuck_limits
from watcher.polling.discovery import build_discovery
from watcher.polling.per_run import Scheduler, SchedulerOptions
from watcher.polling.strategy import build_poller
from watcher.recorder import Recorder
from watcher.rollup import RollupTracker
from watcher.routing import RouteSettings, select
from watcher.service.metrics import Metrics, StateSnapshot
from watcher.service.sdnotify import SdNotifier
from watcher.service.server import Health, HttpServer, build_app
from watcher.sink import EventSink
from watcher.store import Store
from watcher.stuck import StuckChecker

STATUS_ACTION = "GetRunStatus"


def utc_now() -> datetime:
    return datetime.now(UTC)


def secret_values(settings: Settings) -> list[str]:
    """Every secret string in the configuration, for the log masker."""
    found: list[str] = []

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, AnyUrl) or (key == "url" and isinstance(value, str)):
            # A plain URL may still carry a password or a token in its query string.
            found.extend(_url_secrets(str(value)))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name), name)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(settings)
    return [s for s in found if s]


def _url_secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    values = [v for _, v in parse_qsl(parts.query)]
    return [v for v in [parts.password or "", *values] if v]


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def credential_provider(
    settings: Settings, *, environ: Mapping[str, str], session: aiohttp.ClientSession
) -> CredentialProvider:
    """The configured credential source; ``auto`` = static chain, then TKE OIDC if set up."""
    from watcher.omics.cloud_credentials import CvmRoleProvider, TkeOidcProvider

    tc = settings.tencentcloud
    source = tc.credential_source
    if source == "cvm-role":
        return CvmRoleProvider(session=session)
    if source == "tke-oidc":
        tke = TkeOidcProvider.from_environ(environ, session=session)
        if tke is None:
            raise CredentialsError("credential_source = tke-oidc but TKE_* variables are not set")
        return tke
    home = Path(environ.get("HOME") or Path.home())
    try:
        return static_provider(
            secret_id=_secret(tc.secret_id),
            secret_key=_secret(tc.secret_key),
            token=_secret(tc.token),
            environ=environ,
            profile_paths=default_profile_paths(home),
        )
    except CredentialsError as exc:
        if source == "auto":
            tke = TkeOidcProvider.from_environ(environ, session=session)
            if tke is not None:
                return tke
            raise CredentialsError(
                f"{exc}; TKE OIDC (TKE_* variables). On a CVM instance with a role, "
                'set [tencentcloud] credential_source = "cvm-role"'
            ) from None
        raise


def build_limiters(settings: Settings, metrics: Metrics | None = None) -> dict[str, PacingLimiter]:
    """One limiter per action: Tencent's 20/s budget is counted per action."""
    polling = settings.polling
    calls = PacingLimiter(polling.calls_rate_per_second)
    limiters = {
        STATUS_ACTION: PacingLimiter(polling.rate_per_second),
        "DescribeRuns": PacingLimiter(polling.describe_rate_per_second),
        "GetRunCalls": calls,
        "GetRunJobLog": calls,
        "default": PacingLimiter(polling.calls_rate_per_second),
    }
    if metrics is not None:
        for action, limiter in limiters.items():
            limiter.observe(
                latency=metrics.api_request_seconds.labels(action=action).observe,
                waited=metrics.limiter_wait_seconds.labels(action=action).inc,
            )
    return limiters


@contextlib.asynccontextmanager
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """The one shared client session: TLS verification on, bounded connection pool."""
    connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300)
    async with aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": f"omics-watcher/{__version__}"}
    ) as session:
        yield session


def build_client(
    settings: Settings,
    *,
    session: aiohttp.ClientSession,
    environ: Mapping[str, str],
    limiters: Mapping[str, PacingLimiter],
) -> OmicsClient:
    tc = settings.tencentcloud
    return OmicsClient(
        session=session,
        endpoint=tc.endpoint,
        region=tc.region,
        credentials=credential_provider(settings, environ=environ, session=session),
        limiters=limiters,
        timeout=settings.polling.request_timeout_seconds,
        language=tc.language,
    )


async def one_status(
    settings: Settings, run_uuid: str, project_id: str, *, environ: Mapping[str, str]
) -> dict[str, Any]:
    """``omics-watcher status``: one GetRunStatus, the Metadata object as returned."""
    async with http_session() as session:
        client = build_client(
            settings, session=session, environ=environ, limiters=build_limiters(settings)
        )
        metadata = await client.get_run_status(run_uuid, project_id)
        return dict(metadata.raw)


@dataclass
class Wiring:
    """Hooks a caller (the demo, tests) may attach to a running daemon."""

    on_event: Callable[[Event], None] = lambda event: None
    on_ready: Callable[[int], None] = lambda port: None


def _state_snapshot(store: Store) -> Callable[[], StateSnapshot]:
    def snapshot() -> StateSnapshot:
        counts = store.count_by_status()
        pending, oldest = store.outbox_stats(now=utc_now())
        return StateSnapshot(
            runs_by_status={(k if k is not None else "unknown"): v for k, v in counts.items()},
            outbox_pending=pending,
            oldest_pending_seconds=oldest,
        )

    return snapshot


class _DeliveryMetrics:
    """Adapts the dispatcher's observer hook to the Prometheus counters."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def delivery(self, *, notifier: str, outcome: str, latency: float | None) -> None:
        self._metrics.deliveries.labels(notifier=notifier, outcome=outcome).inc()


def notifier_settings(settings: Settings) -> list[NotifierBase]:
    """The configured notifiers; with none, an implied ``log`` notifier."""
    if settings.notifiers:
        return list(settings.notifiers)
    return [LogSettings(name="log", type="log")]


@dataclass
class NotifierSet:
    """Notifiers, their delivery policies and the routes: what SIGHUP replaces as one."""

    notifiers: dict[str, Notifier]
    policies: dict[str, Policy]
    routes: list[RouteSettings]
    rollups: frozenset[str] = frozenset()  # notifiers with rollup = true

    @classmethod
    def build(cls, settings: Settings, *, session: aiohttp.ClientSession) -> NotifierSet:
        logger = structlog.get_logger("watcher.notify")
        configured = notifier_settings(settings)
        return cls(
            notifiers={
                n.name: build_notifier(n, session=session, logger=logger.bind(notifier=n.name))
                for n in configured
            },
            policies={n.name: Policy.from_settings(n) for n in configured},
            routes=list(settings.routes),
            rollups=frozenset(n.name for n in configured if n.rollup),
        )

    def route(self, event: Event) -> list[str]:
        return select(event, self.routes, self.notifiers)


async def run_daemon(
    settings: Settings,
    *,
    stop: asyncio.Event,
    reload: asyncio.Event | None = None,
    reload_settings: Callable[[], Settings] | None = None,
    environ: Mapping[str, str],
    wiring: Wiring | None = None,
) -> int:
    """``omics-watcher run``: poll, record, deliver and serve until ``stop`` is set.

    Raises ``StateError`` (state file), ``ServerStartError`` (port) and
    ``CredentialsError`` before anything is polled; the CLI maps them to exit codes.
    """
    wiring = wiring or Wiring()
    log = structlog.get_logger("watcher.app")
    loop = asyncio.get_running_loop()
    grace = settings.daemon.shutdown_grace_seconds
    metrics = Metrics()
    health = Health()
    async with contextlib.AsyncExitStack() as stack:
        store = stack.enter_context(Store.open(settings.state.path))
        session = await stack.enter_async_context(http_session())
        limiters = build_limiters(settings, metrics)
        client = build_client(settings, session=session, environ=environ, limiters=limiters)
        # The client's estimate after SignatureExpire answers, read at scrape time.
        metrics.clock_skew_seconds.set_function(lambda: client.clock_skew_seconds)
        current = NotifierSet.build(settings, session=session)
        _forget_removed_notifiers(store, current, log)
        dispatcher = Dispatcher(
            store=store,
            notifiers=current.notifiers,
            policies=current.policies,
            logger=structlog.get_logger("watcher.dispatch"),
            metrics=_DeliveryMetrics(metrics),
            progress=lambda run_group: group_progress(store, run_group),
        )
        sink = EventSink(
            store=store,
            route=lambda event: current.route(event),
            metrics=metrics,
            on_recorded=dispatcher.notify,
        )
        rollups = RollupTracker(
            store=store, sink=sink, targets=lambda: current.rollups, clock=utc_now
        )
        sink.subscribe(rollups.observe)
        sink.subscribe(wiring.on_event)
        status_limiter = limiters[STATUS_ACTION]
        recorder = Recorder(
            store=store,
            sink=sink,
            terminal=settings.polling.terminal,
            wall_clock=utc_now,
            enricher=FailureEnricher(
                client=client, failing=failing_statuses(settings.polling.terminal)
            ),
        )
        stuck = StuckChecker(
            store=store, sink=sink, limits=stuck_limits(settings.stuck), wall_clock=utc_now
        )
        scheduler = Scheduler(
            store=store,
            source=client,
            recorder=recorder,
            options=SchedulerOptions(
                interval_seconds=settings.polling.interval_seconds,
                rate_per_second=settings.polling.rate_per_second,
                request_timeout_seconds=settings.polling.request_timeout_seconds,
                terminal=settings.polling.terminal,
                default_project_id=settings.tencentcloud.project_id,
                drain_seconds=min(settings.polling.request_timeout_seconds + 1, grace / 2),
            ),
            backlog=lambda: status_limiter.waiting,
            metrics=metrics,
            wall_clock=utc_now,
        )
        # [polling] strategy (per-run, batch, auto) around the scheduler; [[watch]] discovery.
        poller = build_poller(
            settings,
            scheduler=scheduler,
            store=store,
            source=client,
            recorder=recorder,
            limiters=limiters,
            metrics=metrics,
            wall_clock=utc_now,
        )
        discovery = build_discovery(settings, store=store, source=client, on_tracked=poller.refresh)
        metrics.watch_state(_state_snapshot(store))
        token = settings.server.admin_token
        server = HttpServer(
            build_app(
                store=store,
                metrics=metrics,
                health=health,
                admin_token=token.get_secret_value() if token else None,
                default_project_id=settings.tencentcloud.project_id,
                on_tracked=poller.refresh,
            )
        )
        port = await server.start(settings.server.host, settings.server.port)
        stack.push_async_callback(server.stop)
        tracked = poller.load()
        log.info("daemon_started", listen=f"{settings.server.host}:{port}", tracked=tracked)
        sd = stack.enter_context(SdNotifier(environ=environ))

        async def become_ready() -> None:
            await poller.first_cycle_done.wait()
            health.ready = True
            sd.ready(f"watching {poller.tracked} runs")
            wiring.on_ready(port)

        async def reloader() -> None:
            nonlocal current
            while reload is not None and reload_settings is not None:
                await reload.wait()
                reload.clear()
                sd.reloading()
                try:
                    fresh = reload_settings()
                    replacement = NotifierSet.build(fresh, session=session)
                except Exception as exc:  # a bad edit must not take the daemon down
                    log.error("reload_failed", error=str(exc), hint="keeping the old notifiers")
                else:
                    current = replacement
                    dispatcher.replace_notifiers(current.notifiers, current.policies)
                    _forget_removed_notifiers(store, current, log)
                    log.info("reloaded", notifiers=sorted(current.notifiers))
                sd.ready()

        server_stop, dispatch_stop, rollup_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(server.run(server_stop))
            polling = group.create_task(poller.run(stop))
            rolling = group.create_task(rollups.run(rollup_stop))
            delivering = group.create_task(dispatcher.run(dispatch_stop))
            helpers = [
                group.create_task(become_ready()),
                group.create_task(reloader()),
                group.create_task(sd.watchdog_loop(healthy=health.alive)),
            ]
            if stuck.enabled:
                helpers.append(group.create_task(stuck.run(stop)))
            if settings.watch:
                helpers.append(group.create_task(discovery.run(stop)))
            await stop.wait()
            deadline = loop.time() + grace
            health.draining = True
            sd.stopping("draining")
            log.info("daemon_stopping", grace_seconds=grace)
            for helper in helpers:
                helper.cancel()
            await polling  # bounded: the scheduler gives in-flight polls drain_seconds
            rollup_stop.set()  # its last check records what the last polls completed
            await rolling
            dispatch_stop.set()
            abandoned = await dispatcher.drain(deadline)
            await delivering
            server_stop.set()
        pending, _ = store.outbox_stats(now=utc_now())
        log.info("daemon_stopped", undelivered=pending, abandoned_sends=abandoned)
    return 0


def _forget_removed_notifiers(store: Store, current: NotifierSet, log: Any) -> None:
    """Rows for notifiers no longer configured can never be sent: dead-letter them, loudly."""
    dropped = store.reassign_pending(known_notifiers=set(current.notifiers))
    if dropped:
        log.warning("deliveries_dead_lettered", count=len(dropped), reason="notifier removed")


def sample_event(now: datetime) -> Event:
    """A realistic failed-run event for ``test-notify``: every field a template may use."""
    from watcher.events import isoformat_z, new_event_id

    run_uuid = "84232c68-a016-4668-b2e3-168a175d6f29"
    return Event(
        type="run.status_changed",
        id=new_event_id(now),
        timestamp=now,
        data={
            "run_uuid": run_uuid,
            "project_id": "prj-peaceful-pink-bird-631828",
            "previous_status": "RUNNING",
            "status": "EXECUTOR_ERROR",
            "terminal": True,
            "observed_at": isoformat_z(now),
            "labels": {"source": "omics-watcher test-notify"},
            "metadata": {
                "RunId": run_uuid,
                "RunType": "Workflow",
                "CallName": "main_workflow",
                "Status": "EXECUTOR_ERROR",
                "SubmitTime": "2026-11-27T10:00:00+08:00",
                "StartTime": "2026-11-27T10:00:05+08:00",
                "EndTime": "2026-11-27T11:42:10+08:00",
                "ErrorMessage": '[{"message": "Task main_workflow.align:0:1 failed"}]',
            },
            "failure": {
                "task": "main_workflow.align",
                "message": "Task main_workflow.align:0:1 failed: exit code 137",
                "stderr_tail": "bwa mem: out of memory\nKilled",
            },
        },
    )


async def send_test_notification(settings: Settings, name: str, *, stop: asyncio.Event) -> int:
    """``omics-watcher test-notify NAME``: one sample event through one notifier, with retries.

    Returns 0 once delivered, 1 when the notifier refused it or retries ran out (the reason
    is logged as ``test_notify_failed``).
    """
    from watcher.delivery.dispatcher import send_now
    from watcher.notifiers.base import NotifyError

    log = structlog.get_logger("watcher.test_notify")
    chosen = next(n for n in notifier_settings(settings) if n.name == name)
    loop = asyncio.get_running_loop()
    async with http_session() as session:
        notifier = build_notifier(chosen, session=session, logger=log.bind(notifier=name))
        event = sample_event(utc_now())
        sending = asyncio.ensure_future(
            send_now(
                notifier,
                event,
                deadline=loop.time() + 60,
                time_limit=chosen.timeout_seconds,
            )
        )
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({sending, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not sending.done():
            sending.cancel()
            return 1
        try:
            attempts = sending.result()
        except NotifyError as exc:
            log.error("test_notify_failed", notifier=name, reason=str(exc))
            return 1
    log.info("test_notify_delivered", notifier=name, event_id=event.id, attempts=attempts)
    return 0
