"""HTTP server: liveness, readiness, Prometheus metrics and the admin API, on one aiohttp app.

Role: the only network listener of the daemon. :func:`build_app` wires the routes to
collaborators passed in explicitly (store, metrics, health, token); :class:`HttpServer` binds,
serves and stops the app. Nothing here polls, detects or delivers.

Invariants:
- Every answer the app itself produces is JSON (``/metrics`` aside): aiohttp's own 404, 405
  and 413 are rewritten, and an unexpected error becomes ``500 {"error": "internal error"}``
  with the traceback in the log only, never in the response.
- The admin API (``/v1/*``) exists only with a non-empty ``admin_token``; without one every
  ``/v1`` path answers 404. With one, every ``/v1`` path (known or not) needs
  ``Authorization: Bearer <token>``, checked before the body is read and compared in constant
  time. The token is never logged, echoed or put in an error message.
- Request bodies are capped at :data:`MAX_BODY_BYTES` (413 beyond).
- Run UUIDs are accepted only in canonical 8-4-4-4-12 form and stored lower-case, like
  ``omics-watcher track``; ``GET /v1/runs`` is paged (``{"runs", "next_cursor"}``, the
  objects of ``list --json``).
- Every store call is awaited through the :class:`~watcher.store.api.AsyncStore` interface,
  so the same handlers serve a SQLite file or PostgreSQL (any replica, active or standby).
  Reads that may take more than a few milliseconds never hold the loop: the SQLite adapter
  runs them on its own reader connection off the loop, PostgreSQL does the work in the
  server. ``/metrics`` awaits the store-backed values before rendering
  (:meth:`~watcher.service.metrics.Metrics.scrape`). The server holds no state of its own:
  ``/readyz`` says what :class:`~watcher.service.health.Health` decides.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from watcher.events import Event
from watcher.limits import LabelError, label_problems
from watcher.retrack import change_lines, previous_values
from watcher.run_uuids import RUN_UUID_HINT, canonical_run_uuid
from watcher.service.auth_failures import AUTH_FAILURES, AuthFailureLog
from watcher.service.connections import (
    ConnectionGuard,
    ConnectionLimits,
    Listener,
    bind,
    body_timeout_middleware,
)
from watcher.service.health import Health as Health  # the probes' state, decided there
from watcher.service.history_api import HistoryApi, limit_param
from watcher.service.metrics import HttpMetrics, Metrics
from watcher.service.reads import json_body
from watcher.service.silences_api import SilencesApi
from watcher.store import RunFilter, TrackedRun, TrackRequest, TrackResult
from watcher.store.api import HistoryStore, SilenceStore
from watcher.store.registry import RunPageJson, decode_cursor

MAX_BODY_BYTES = 64 * 1024
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,63}")  # a key an error message may repeat
# What one aiohttp app serves: everything, or the two halves of a split (admin_listen).
AppParts = Literal["all", "probes", "admin"]
_ADMIN_PREFIX = "/v1"
_MAX_FILTER_CHARS = 256


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Where to listen and what the admin API needs (from ``[server]``, ``[tencentcloud]``)."""

    host: str = "127.0.0.1"
    port: int = 9477
    admin_token: str | None = None  # None or "": no admin API (only probes and metrics)
    default_project_id: str = ""  # the project of a run tracked without one
    # ``[server] admin_listen`` when it differs from ``listen``: the admin API's own address
    # (and then absent from the main one). None: the admin API shares the main listener.
    admin_address: tuple[str, int] | None = None


class ServerStartError(Exception):
    """The listener cannot be opened (port taken, address unknown). The CLI exits with 3."""


class AdminStore(SilenceStore, HistoryStore, Protocol):
    """The part of :class:`~watcher.store.api.AsyncStore` the admin API uses (either backend)."""

    async def track(self, requests: Iterable[TrackRequest]) -> TrackResult: ...

    async def untrack(self, run_uuids: Iterable[str]) -> list[str]: ...

    async def get_run(self, run_uuid: str) -> TrackedRun | None: ...

    async def page_runs_json(
        self, *, limit: int, cursor: str | None = None, where: RunFilter | None = None
    ) -> RunPageJson: ...

    async def events(
        self, *, limit: int = 100, run_uuid: str | None = None, event_type: str | None = None
    ) -> list[Event]: ...


class TrackBody(BaseModel):
    """``POST /v1/runs``: what to track. Unknown keys are refused, nothing is coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    run_uuid: str
    project_id: str | None = None
    labels: dict[str, str] = {}

    @field_validator("run_uuid")
    @classmethod
    def _canonical_uuid(cls, value: str) -> str:
        canonical = canonical_run_uuid(value)
        if canonical is None:
            raise PydanticCustomError("run_uuid", RUN_UUID_HINT)
        return canonical

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        problems = label_problems(value, name_keys=False)
        if problems:
            raise PydanticCustomError("labels", "{reason}", {"reason": "; ".join(problems)})
        return value


def _describe(exc: ValidationError) -> str:
    """One line naming each bad field, without echoing the input (which could be anything):
    values never appear, and a key from the input (an unknown field, a label's name) only
    when it is a short plain name, else as ``(key)``."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        parts = [p if _PLAIN_KEY.fullmatch(str(p)) else "(key)" for p in error["loc"]]
        where = ".".join(str(part) for part in parts) or "body"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=message)


def _text_param(request: web.Request, name: str) -> str | None:
    """A free-text filter: absent, or 1 to 256 characters without control characters."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if not 1 <= len(raw) <= _MAX_FILTER_CHARS or not raw.isprintable():
        raise _bad_request(f"{name}: must be 1 to {_MAX_FILTER_CHARS} printable characters")
    return raw


def _runs_filter(request: web.Request) -> RunFilter:
    """``status``, ``label`` (repeatable, all must hold) and ``active`` of ``GET /v1/runs``."""
    labels: dict[str, str] = {}
    for pair in request.query.getall("label", []):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or len(pair) > 2 * _MAX_FILTER_CHARS:
            raise _bad_request("label: expected KEY=VALUE")
        labels[key.strip()] = value
    active = request.query.get("active", "false").lower()
    if active not in ("true", "false"):
        raise _bad_request("active: must be true or false")
    return RunFilter(status=_text_param(request, "status"), labels=labels, active=active == "true")


def _cursor(request: web.Request) -> str | None:
    raw = request.query.get("cursor")
    if raw is None:
        return None
    try:
        decode_cursor(raw)
    except ValueError:
        raise _bad_request("cursor: not a cursor this server returned") from None
    return raw


def _json_bytes(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def _path_uuid(request: web.Request) -> str:
    canonical = canonical_run_uuid(request.match_info["run_uuid"])
    if canonical is None:
        raise _bad_request(f"run_uuid: {RUN_UUID_HINT}")
    return canonical


def _is_admin_path(request: web.Request) -> bool:
    # Both spellings: the router matches on the raw path, humans think in the decoded one.
    return any(
        path == _ADMIN_PREFIX or path.startswith(_ADMIN_PREFIX + "/")
        for path in (request.path, request.raw_path.partition("?")[0])
    )


def _error_middleware(log: Any) -> Middleware:
    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            text = exc.text or ""
            message = exc.reason if text in ("", f"{exc.status}: {exc.reason}") else text
            headers = {
                k: v
                for k, v in exc.headers.items()
                if k.lower() not in ("content-type", "content-length")
            }
            return web.json_response({"error": message}, status=exc.status, headers=headers)
        except Exception:
            log.exception("http_handler_failed", method=request.method, path=request.path)
            return web.json_response({"error": "internal error"}, status=500)

    return json_errors


def _auth_middleware(token: str, failures: AuthFailureLog) -> Middleware:
    expected = token.encode("utf-8")

    @web.middleware
    async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _is_admin_path(request):
            scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
            given = given.strip()
            if scheme.lower() != "bearer" or not given:
                reason, challenge = "missing bearer token", 'Bearer realm="omics-watcher"'
            elif not hmac.compare_digest(given.encode("utf-8", "replace"), expected):
                reason = "invalid bearer token"
                challenge = 'Bearer realm="omics-watcher", error="invalid_token"'
            else:
                return await handler(request)
            failures.failed(  # counted; logged bounded (watcher.service.auth_failures)
                request.remote,
                "api",
                "admin_auth_failed",
                method=request.method,
                path=request.path,
                reason=reason,
            )
            raise web.HTTPUnauthorized(text=reason, headers={"WWW-Authenticate": challenge})
        return await handler(request)

    return bearer_auth


class _Probes:
    def __init__(self, *, health: Health, metrics: Metrics) -> None:
        self._health = health
        self._metrics = metrics

    async def healthz(self, request: web.Request) -> web.Response:
        if self._health.alive():
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "unhealthy"}, status=503)

    async def readyz(self, request: web.Request) -> web.Response:
        reason = self._health.not_ready_reason()
        if reason is None:
            return web.json_response({"status": "ready", "reason": None})
        return web.json_response({"status": "not_ready", "reason": reason}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        # Store-backed families are read (awaited) first, then everything is rendered.
        return web.Response(
            body=await self._metrics.scrape(), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )


class _AdminApi:
    def __init__(
        self,
        *,
        store: AdminStore,
        default_project_id: str,
        on_tracked: Callable[[], None],
        log: Any,
    ) -> None:
        self._store = store
        self._default_project_id = default_project_id
        self._on_tracked = on_tracked
        self._log = log

    async def list_runs(self, request: web.Request) -> web.Response:
        """One page of the registry (each run's JSON comes rendered by the store: only
        joined here)."""
        limit, cursor, where = limit_param(request), _cursor(request), _runs_filter(request)
        page = await self._store.page_runs_json(limit=limit, cursor=cursor, where=where)
        runs = ",".join(page.runs)
        cursor_json = json_body(page.next_cursor).decode("ascii")
        return _json_bytes(f'{{"runs":[{runs}],"next_cursor":{cursor_json}}}'.encode())

    async def get_run(self, request: web.Request) -> web.Response:
        run = await self._store.get_run(_path_uuid(request))
        if run is None:
            raise web.HTTPNotFound(text="run not tracked")
        return web.json_response(run.to_json_dict())

    async def track(self, request: web.Request) -> web.Response:
        raw = await request.read()  # raises 413 beyond client_max_size
        try:
            body = TrackBody.model_validate_json(raw)
        except ValidationError as exc:
            raise _bad_request(_describe(exc)) from None
        uuid = body.run_uuid
        project = body.project_id
        before = await self._store.get_run(uuid)
        if project is None:
            # Without a project_id a new run gets the configured default, and an already
            # tracked run keeps its own ("" leaves the stored project unchanged).
            project = "" if before else self._default_project_id
        try:
            result = await self._store.track([TrackRequest(uuid, project, dict(body.labels))])
        except LabelError as exc:  # too many once merged with the run's labels (no key named)
            raise _bad_request(f"labels: {'; '.join(exc.problems)}") from None
        added = uuid in result.added
        run = await self._store.get_run(uuid)
        if run is None:  # pragma: no cover - the store just committed it
            raise RuntimeError("tracked run not found after track()")
        # Re-tracking is never silent: what changed, with its former value (watcher.retrack).
        previous = previous_values(before, run) if before is not None and not added else {}
        self._log.info(
            "admin_run_tracked",
            run_uuid=uuid,
            project_id=run.project_id,
            added=added,
            remote=request.remote,
            changed=change_lines(before, run) if before is not None and previous else [],
        )
        # Also after a re-track: labels, project or a "stopped" flag may have changed.
        try:
            self._on_tracked()
        except Exception:
            # The run is committed; the scheduler's change feed still finds it.
            self._log.exception("admin_wakeup_failed", run_uuid=uuid)
        answer = run.to_json_dict()
        if previous:  # 200 as before; "previous" holds the changed fields' former values
            answer["previous"] = previous
        return web.json_response(
            answer,
            status=201 if added else 200,
            headers={"Location": f"{_ADMIN_PREFIX}/runs/{uuid}"},
        )

    async def untrack(self, request: web.Request) -> web.Response:
        uuid = _path_uuid(request)
        if not await self._store.untrack([uuid]):
            raise web.HTTPNotFound(text="run not tracked")
        self._log.info("admin_run_untracked", run_uuid=uuid, remote=request.remote)
        try:
            self._on_tracked()  # the registry changed: the scheduler drops the run at once
        except Exception:
            self._log.exception("admin_wakeup_failed", run_uuid=uuid)
        return web.Response(status=204)

    async def events(self, request: web.Request) -> web.Response:
        """The newest events (of one run, of one type)."""
        limit, event_type = limit_param(request), _text_param(request, "type")
        run_uuid = request.query.get("run_uuid")
        if run_uuid is not None:
            run_uuid = canonical_run_uuid(run_uuid)
            if run_uuid is None:
                raise _bad_request(f"run_uuid: {RUN_UUID_HINT}")
        found = await self._store.events(limit=limit, run_uuid=run_uuid, event_type=event_type)
        return _json_bytes(json_body([event.to_dict() for event in found]))


async def _admin_off(request: web.Request) -> web.Response:
    raise web.HTTPNotFound(text="admin API off (server.admin_token is empty)")


def build_app(
    *,
    store: AdminStore,
    metrics: Metrics,
    health: Health,
    admin_token: str | None,
    default_project_id: str,
    on_tracked: Callable[[], None] = lambda: None,
    parts: AppParts = "all",
    notifier_names: Callable[[], Collection[str]] | None = None,
    ui: Callable[[web.Application], None] | None = None,
) -> web.Application:
    """The aiohttp application; see the module docstring for its rules.

    ``ui``: adds the status page (:mod:`watcher.ui`) beside the admin API, when it is on.

    ``parts``: ``"all"`` serves probes, ``/metrics`` and the admin API on one listener;
    with ``[server] admin_listen`` the main listener gets ``"probes"`` (no ``/v1`` routes
    at all: 404) and the admin listener ``"admin"`` (the admin API only).
    """
    log = structlog.get_logger("watcher.server")
    middlewares = [_error_middleware(log)]
    failures = None
    if admin_token and parts != "probes":
        failures = AuthFailureLog(
            log=log, count=lambda via: metrics.admin_auth_failures.labels(via=via).inc()
        )
        middlewares.append(_auth_middleware(admin_token, failures))
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    if failures is not None:  # the status page reports its failed logins here too
        app[AUTH_FAILURES] = failures
        app.on_cleanup.append(failures.on_cleanup)
    if parts != "admin":
        probes = _Probes(health=health, metrics=metrics)
        app.router.add_get("/healthz", probes.healthz, allow_head=True)
        app.router.add_get("/readyz", probes.readyz, allow_head=True)
        app.router.add_get("/metrics", probes.metrics)
    if parts == "probes":
        return app
    if not admin_token:
        app.router.add_route("*", _ADMIN_PREFIX, _admin_off)
        app.router.add_route("*", _ADMIN_PREFIX + "/{tail:.*}", _admin_off)
        return app
    api = _AdminApi(
        store=store, default_project_id=default_project_id, on_tracked=on_tracked, log=log
    )
    app.router.add_get("/v1/runs", api.list_runs)
    app.router.add_post("/v1/runs", api.track)
    app.router.add_get("/v1/runs/{run_uuid}", api.get_run)
    app.router.add_delete("/v1/runs/{run_uuid}", api.untrack)
    app.router.add_get("/v1/events", api.events)
    HistoryApi(store=store, notifier_names=notifier_names, log=log).add_routes(app.router)
    SilencesApi(store=store, notifier_names=notifier_names, log=log).add_routes(app.router)
    if ui is not None:
        ui(app)
    return app


@dataclass(slots=True)
class _Served:
    """One listener: an aiohttp runner and the accept loop feeding it."""

    runner: web.AppRunner
    listener: Listener
    host: str

    @property
    def port(self) -> int:
        return int(self.listener.sockets[0].getsockname()[1])


def _start_error(host: str, port: int, exc: OSError) -> ServerStartError:
    shown = f"[{host}]" if ":" in host else host
    reason = exc.strerror or str(exc) or type(exc).__name__
    return ServerStartError(f"cannot listen on {shown}:{port}: {reason}")


class HttpServer:
    """Binds an app (and optionally the admin app) to TCP addresses, serves, stops gracefully.

    Call :meth:`start` early (so a taken port fails the startup), then run :meth:`run` as a
    long-lived task. Give :meth:`run` the event that marks the *end* of the drain so probes
    and ``/metrics`` keep answering while the rest of the daemon shuts down.

    Every listener shares one :class:`~watcher.service.connections.ConnectionGuard`: open
    connections are bounded (the oldest idle one makes room for a new one), request heads,
    bodies and idle connections time out (:class:`ConnectionLimits`).
    """

    def __init__(
        self,
        app: web.Application,
        *,
        admin_app: web.Application | None = None,
        limits: ConnectionLimits | None = None,
        shutdown_timeout: float = 5.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._app = app
        self._metrics = metrics  # shed connections and the open count, when given
        self._guard: ConnectionGuard | None = None
        self._admin_app = admin_app
        self._limits = limits or ConnectionLimits()
        self._shutdown_timeout = shutdown_timeout
        self._served: list[_Served] = []
        self._log = structlog.get_logger("watcher.server")

    @property
    def port(self) -> int | None:
        """The bound port, ``None`` before :meth:`start`."""
        return self._served[0].port if self._served else None

    @property
    def admin_port(self) -> int | None:
        """The admin listener's port; ``None`` when the admin API shares the main one."""
        return self._served[1].port if len(self._served) > 1 else None

    async def start(self, host: str, port: int, *, admin: tuple[str, int] | None = None) -> int:
        """Listen on ``host:port`` (``port`` 0: any free port); returns the bound port.

        ``admin``: the admin app's own ``(host, port)``, needed when an ``admin_app`` was
        given. ``host`` "" means every interface. Raises :class:`ServerStartError` when an
        address cannot be bound.
        """
        if self._served:
            raise RuntimeError("HttpServer already started")
        if (admin is None) != (self._admin_app is None):
            raise ValueError("an admin address goes with an admin app, and only with one")
        limits = self._limits
        observer = HttpMetrics(self._metrics) if self._metrics is not None else None
        guard = ConnectionGuard(
            limits.resolved_max(), log=self._log, log_every=limits.log_every, observer=observer
        )
        self._guard = guard
        targets = [(self._app, host, port)]
        if self._admin_app is not None and admin is not None:
            targets.append((self._admin_app, *admin))
        try:
            for app, where, number in targets:
                self._served.append(await self._listen(app, where, number, guard))
        except BaseException:
            await self.stop()
            raise
        names = ("http_listening", "http_admin_listening")[: len(self._served)]
        for served, name in zip(self._served, names, strict=True):
            self._log.info(name, host=served.host, port=served.port, max_connections=guard.limit)
        return self._served[0].port

    async def _listen(
        self, app: web.Application, host: str, port: int, guard: ConnectionGuard
    ) -> _Served:
        limits = self._limits
        app.middlewares.append(body_timeout_middleware(guard, limits.body_timeout))
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=self._shutdown_timeout, **limits.handler_args()
        )
        await runner.setup()
        try:
            sockets = await bind(host, port, backlog=limits.backlog)
        except OSError as exc:
            await runner.cleanup()
            raise _start_error(host, port, exc) from exc
        if runner.server is None:  # pragma: no cover - setup() made it
            raise RuntimeError("aiohttp runner has no server after setup()")
        listener = Listener(sockets, runner.server, guard, limits)
        listener.start()
        return _Served(runner=runner, listener=listener, host=host)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close. Idempotent."""
        served, self._served = self._served, []
        if self._guard is not None:
            self._guard.stopping = True  # connections closed from here on are not shed
        for one in served:
            await one.listener.close()
        for one in served:
            await one.runner.cleanup()
        if served:
            self._log.info("http_stopped")

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (or the task is cancelled), then :meth:`stop`."""
        if not self._served:
            raise RuntimeError("HttpServer.run() needs start() first")
        try:
            await stop.wait()
        finally:
            await self.stop()
