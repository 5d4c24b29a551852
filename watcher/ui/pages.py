"""The status page's routes: login, overview, runs, one run, the live feed, static files.

Role: :class:`StatusPage` is built once by the composition root and :meth:`StatusPage.install`
adds its routes, middleware and signals to the admin API's aiohttp app (the page lives on the
admin listener, beside ``/v1``). It holds only in-memory state of its own: sessions, the
login throttle, a short window of request-rate samples, the live feed's subscribers.

Every page is server-rendered with Jinja2 (autoescape on: a label, an error text or a
stderr tail is shown as text, never as markup) from a view awaited from the store
(:mod:`watcher.ui.views`, through :class:`~watcher.store.api.AsyncStore`: a SQLite file or
PostgreSQL, on any replica; heavy reads never hold the loop); the pages work without
JavaScript, which only adds the live feed.
Nothing rendered is a secret: tokens never reach a template, session ids only a cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
from collections.abc import Callable, Collection
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

from watcher.events import isoformat_z
from watcher.run_uuids import RUN_UUID
from watcher.service.auth_failures import AUTH_FAILURES, AuthFailureLog
from watcher.service.metrics import Metrics
from watcher.statuses import Statuses
from watcher.store.api import AsyncStore
from watcher.store.db import utc_now
from watcher.store.registry import decode_cursor
from watcher.ui import guard
from watcher.ui.actions import UiActions
from watcher.ui.feed import LiveFeed
from watcher.ui.health import SAMPLE_SECONDS, RateMeter, status_requests, watcher_health
from watcher.ui.options import UiOptions
from watcher.ui.sessions import LoginThrottle, Sessions, role_for
from watcher.ui.views import (
    RunsQuery,
    active_runs,
    duration,
    read_overview,
    read_run,
    read_runs,
    relative,
)

RUNS_PER_PAGE = 50
STATIC_FILES = ("app.css", "app.js")
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}
_PREFIX = re.compile(r"[0-9a-fA-F-]{1,36}")
_MAX_FILTER = 256


class _Static:
    """The CSS and JavaScript, read once from the package; URLs carry a content hash."""

    def __init__(self) -> None:
        folder = resources.files("watcher.ui").joinpath("static")
        self.files: dict[str, tuple[bytes, str]] = {}
        self.urls: dict[str, str] = {}
        for name in STATIC_FILES:
            body = folder.joinpath(name).read_bytes()
            digest = hashlib.sha256(body).hexdigest()[:12]
            self.files[name] = (body, digest)
            self.urls[name] = f"{guard.STATIC_PREFIX}{name}?v={digest}"

    async def serve(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="no such file")
        body, digest = found
        name = request.match_info["name"]
        content_type = _STATIC_TYPES[name[name.rfind(".") :]]
        return web.Response(
            body=body,
            content_type=content_type,
            charset="utf-8",
            headers={"Cache-Control": "public, max-age=86400", "ETag": f'"{digest}"'},
        )


def _text_filter(request: web.Request, name: str) -> str:
    value = request.query.get(name, "").strip()
    if len(value) > _MAX_FILTER or not value.isprintable():
        raise ValueError(f"{name}: at most {_MAX_FILTER} printable characters")
    return value


def runs_query(request: web.Request) -> RunsQuery:
    """The runs page's filters from its query string; ``ValueError`` naming a bad one."""
    label = _text_filter(request, "label")
    if label and ("=" not in label or not label.partition("=")[0].strip()):
        raise ValueError("label: expected KEY=VALUE")
    prefix = _text_filter(request, "prefix")
    if prefix and not _PREFIX.fullmatch(prefix):
        raise ValueError("prefix: the start of a run UUID (hex digits and dashes)")
    cursor = request.query.get("cursor") or None
    if cursor is not None:
        decode_cursor(cursor)  # ValueError for anything this server did not hand out
    return RunsQuery(
        status=_text_filter(request, "status"),
        label=label,
        run_group=_text_filter(request, "run_group"),
        project=_text_filter(request, "project"),
        prefix=prefix,
        cursor=cursor,
    )


class StatusPage:
    """The status page of one daemon; see the module docstring."""

    def __init__(
        self,
        options: UiOptions,
        *,
        store: AsyncStore,
        metrics: Metrics,
        statuses: Statuses,
        not_ready_reason: Callable[[], str | None],
        notifier_names: Callable[[], Collection[str]] | None = None,
        on_untracked: Callable[[], None] = lambda: None,
    ) -> None:
        self._options = options
        self._store = store
        self._metrics = metrics
        self._statuses = statuses
        self._not_ready_reason = not_ready_reason
        self.sessions = Sessions(
            lifetime=options.session_seconds, max_sessions=options.max_sessions
        )
        self.throttle = LoginThrottle()
        self._meter = RateMeter(lambda: status_requests(metrics))
        self.feed = LiveFeed(store, statuses)
        self.actions = UiActions(  # dead letters, silences, a run's actions (watcher.ui.actions)
            store=store,
            render=self._render,
            notifier_names=notifier_names,
            on_untracked=on_untracked,
        )
        self._static = _Static()
        self._sampler: asyncio.Task[None] | None = None
        self._log = structlog.get_logger("watcher.ui")
        self._failures: AuthFailureLog | None = None
        self._env = Environment(
            loader=PackageLoader("watcher.ui", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def install(self, app: web.Application) -> None:
        """Add the pages, the guard and the lifecycle hooks to the admin app."""
        app.middlewares.append(guard.guard_middleware(self.sessions))
        self._failures = app.get(AUTH_FAILURES)  # build_app's: counted, logged bounded
        app.on_response_prepare.append(guard.add_security_headers)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)
        r = app.router
        r.add_get("/", self._to_ui)
        r.add_get("/ui", self._to_ui)
        r.add_get("/ui/", self.overview)
        r.add_get("/ui/login", self.login_form)
        r.add_post("/ui/login", self.login)
        r.add_post("/ui/logout", self.logout)
        r.add_get("/ui/runs", self.runs)
        r.add_get("/ui/runs/{run_uuid}", self.run)
        r.add_get("/ui/events", self.events)
        r.add_get("/ui/static/{name}", self._static.serve)
        self.actions.add_routes(r)

    async def _start(self, app: web.Application) -> None:
        self._sampler = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self._meter.sample()
            await asyncio.sleep(SAMPLE_SECONDS)

    async def _shutdown(self, app: web.Application) -> None:
        await self.feed.close()

    async def _cleanup(self, app: web.Application) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    def _render(
        self, name: str, request: web.Request, *, status: int = 200, **context: Any
    ) -> web.Response:
        now = utc_now()
        session = request.get(guard.SESSION_KEY)

        def ago(moment: datetime | None) -> str:
            return relative(moment, now)

        body = self._env.get_template(name).render(
            session=session,
            csrf=session.csrf if session is not None else "",
            static=self._static.urls,
            ago=ago,
            duration=duration,
            severity=self._statuses.severity,
            now_ts=now.timestamp(),
            flash=self.actions.flashes.take(request),
            iso=lambda moment: "" if moment is None else isoformat_z(moment),
            **context,
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    async def _to_ui(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def login_form(self, request: web.Request) -> web.Response:
        if self.sessions.get(request.cookies.get(guard.SESSION_COOKIE)) is not None:
            raise web.HTTPSeeOther("/ui/")
        return self._login_page(request)

    def _login_page(
        self, request: web.Request, *, error: str = "", status: int = 200
    ) -> web.Response:
        nonce = secrets.token_urlsafe(32)
        response = self._render("login.html", request, status=status, login_csrf=nonce, error=error)
        guard.set_cookie(request, response, guard.LOGIN_COOKIE, nonce)
        return response

    async def login(self, request: web.Request) -> web.Response:
        client = request.remote or "?"
        wait = self.throttle.retry_after(client)
        if wait > 0:
            self._login_failed(client, "too many failed logins")
            return self._login_page(
                request,
                error=f"Too many failed logins: try again in {int(wait) + 1} s.",
                status=429,
            )
        form = await request.post()
        token = form.get("token")
        role = None
        if isinstance(token, str):
            role = role_for(
                token, admin=self._options.admin_token, viewer=self._options.viewer_token
            )
        if role is None:
            self.throttle.failed(client)
            self._login_failed(client, "invalid token")
            return self._login_page(request, error="That token is not valid here.", status=401)
        session_id, _ = self.sessions.create(role)
        self._log.info("ui_login", remote=client, role=role)
        response = _see_other("/ui/")
        guard.set_cookie(request, response, guard.SESSION_COOKIE, session_id)
        guard.clear_cookie(response, guard.LOGIN_COOKIE)
        return response

    def _login_failed(self, client: str, reason: str) -> None:
        if self._failures is not None:
            self._failures.failed(client, "ui_login", "ui_login_failed", reason=reason)
        else:  # installed on an app without the admin token's middleware (tests)
            self._log.warning("ui_login_failed", remote=client, reason=reason)

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.end(request.cookies.get(guard.SESSION_COOKIE))
        response = _see_other(guard.LOGIN_PATH)
        guard.clear_cookie(response, guard.SESSION_COOKIE)
        return response

    async def overview(self, request: web.Request) -> web.Response:
        now = utc_now()
        statuses = self._statuses
        view = await read_overview(self._store, statuses, now)
        counts = {(s if s != "unknown" else None): n for s, n, _ in view.counts}
        health = watcher_health(
            metrics=self._metrics,
            meter=self._meter,
            not_ready_reason=self._not_ready_reason(),
            active_runs=active_runs(counts, statuses),
            budget=self._options.rate_per_second,
            interval=self._options.interval_seconds,
        )
        return self._render("overview.html", request, view=view, health=health, page="overview")

    async def runs(self, request: web.Request) -> web.Response:
        try:
            query = runs_query(request)
        except ValueError as exc:
            return self._render(
                "runs.html",
                request,
                status=400,
                query=RunsQuery(),
                page_runs=None,
                error=str(exc),
                page="runs",
                next_url=None,
            )
        found = await read_runs(self._store, query, RUNS_PER_PAGE)
        next_url = None
        if found.next_cursor is not None:
            next_url = "/ui/runs?" + urlencode({**query.params(), "cursor": found.next_cursor})
        return self._render(
            "runs.html",
            request,
            query=query,
            page_runs=found,
            error="",
            page="runs",
            next_url=next_url,
        )

    async def run(self, request: web.Request) -> web.Response:
        raw = request.match_info["run_uuid"]
        if not RUN_UUID.fullmatch(raw):
            return self._render("missing.html", request, status=404, what="run", page="runs")
        uuid, statuses = raw.lower(), self._statuses
        detail = await read_run(self._store, uuid, statuses)
        if detail is None:
            return self._render("missing.html", request, status=404, what="run", page="runs")
        return self._render("run.html", request, detail=detail, page="runs")

    async def events(self, request: web.Request) -> web.StreamResponse:
        return await self.feed.stream(request)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})
