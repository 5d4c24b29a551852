"""The status page's dead letters and silences pages and every action it offers (issue 16).

Actions: redeliver dead letters (ticked ones or all, from ``/ui/dead-letters``; a run's own
from its page), add a silence (the match builder on ``/ui/silences``, prefilled from the run
page for the run or its run group), expire one, untrack a run. Each is the same operation the
CLI and the admin API perform (:meth:`AsyncStore.redeliver`, :meth:`AsyncStore.add_silence`,
:meth:`AsyncStore.expire_silence`, :meth:`AsyncStore.untrack`), with the same rules: only
rows of notifiers the daemon has go back, a silence's notifiers must be the daemon's, an
untracked run leaves the scheduler at once (``on_untracked``).

Rules every action keeps:
- a plain HTML form POST (works without JavaScript) carrying the session's CSRF token: the
  guard (:mod:`watcher.ui.guard`) answers 403 without it before any handler runs;
- the admin session only: a viewer session gets 403 and is shown no action button;
- answered with a 303 redirect to a page (POST/redirect/GET) that shows a one-line flash
  message, kept in memory per session (:class:`Flashes`) until that page is rendered; a form
  that cannot be used as given is shown again with the reason (400), values kept.

Reads go through :class:`~watcher.store.api.AsyncStore` (the dead letters are read off the
loop by the SQLite adapter); writes are one short transaction each.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, Protocol

import structlog
from aiohttp import web

from watcher.delivery.silencing import SilenceError
from watcher.events import isoformat_z
from watcher.run_uuids import RUN_UUID
from watcher.store.api import AsyncStore
from watcher.store.db import utc_now
from watcher.store.history import Redelivery
from watcher.ui import guard
from watcher.ui.lists import (
    DEAD_PER_PAGE,
    SilenceForm,
    dead_letters_view,
    delivery_ids,
    silences_view,
)

MAX_IDS = 10_000  # as POST /v1/dead-letters/redeliver
MAX_FLASHES = 1024
_ID = re.compile(r"[0-9]{1,18}")


class Render(Protocol):
    """:meth:`watcher.ui.pages.StatusPage._render`."""

    def __call__(
        self, name: str, request: web.Request, *, status: int = 200, **context: Any
    ) -> web.Response: ...


class Flashes:
    """One message per session for the next page it renders; bounded (oldest dropped)."""

    def __init__(self, bound: int = MAX_FLASHES) -> None:
        self._bound = bound
        self._by_session: OrderedDict[str, str] = OrderedDict()

    def put(self, request: web.Request, message: str) -> None:
        key = request.cookies.get(guard.SESSION_COOKIE)
        if not key:
            return
        self._by_session.pop(key, None)
        self._by_session[key] = message
        while len(self._by_session) > self._bound:
            self._by_session.popitem(last=False)

    def take(self, request: web.Request) -> str:
        key = request.cookies.get(guard.SESSION_COOKIE)
        return self._by_session.pop(key, "") if key else ""


def _plural(n: int, one: str) -> str:
    return f"{n} {one}" if n == 1 else f"{n} {one}s"


def _admin(request: web.Request) -> None:
    if guard.session_of(request).role != "admin":
        raise web.HTTPForbidden(text="read-only session: log in with the admin token to act")


def _see_other(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


def _run_uuid(request: web.Request) -> str:
    raw = request.match_info["run_uuid"]
    if not RUN_UUID.fullmatch(raw):
        raise web.HTTPNotFound(text="no such run")
    return raw.lower()


class UiActions:
    """The pages and actions of the module docstring, on one daemon's store."""

    def __init__(
        self,
        *,
        store: AsyncStore,
        render: Render,
        notifier_names: Callable[[], Collection[str]] | None = None,
        on_untracked: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._render = render
        self._notifier_names = notifier_names
        self._on_untracked = on_untracked
        self._clock = clock
        self.flashes = Flashes()
        self._log = structlog.get_logger("watcher.ui")

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/ui/dead-letters", self.dead_letters)
        router.add_post("/ui/dead-letters/redeliver", self.redeliver)
        router.add_get("/ui/silences", self.silences)
        router.add_post("/ui/silences", self.add_silence)
        router.add_post("/ui/silences/{silence_id}/expire", self.expire_silence)
        router.add_post("/ui/runs/{run_uuid}/redeliver", self.redeliver_run)
        router.add_post("/ui/runs/{run_uuid}/untrack", self.untrack_run)

    def _known(self) -> frozenset[str] | None:
        return None if self._notifier_names is None else frozenset(self._notifier_names())

    # -- dead letters ----------------------------------------------------------------------
    async def dead_letters(self, request: web.Request) -> web.Response:
        """Most recent first, :data:`DEAD_PER_PAGE` a page (``?before=ID`` for the next)."""
        raw = request.query.get("before", "")
        before = int(raw) if _ID.fullmatch(raw) else None
        found = await self._store.list_dead_letters(limit=DEAD_PER_PAGE + 1, before_id=before)
        view = dead_letters_view(found, await self._store.dead_letter_count())
        return self._render(
            "dead_letters.html", request, view=view, first=before is None, page="dead-letters"
        )

    async def redeliver(self, request: web.Request) -> web.Response:
        """Ticked dead letters (``id`` fields), or every one (``all``)."""
        _admin(request)
        form = await request.post()
        if form.get("all") == "1":
            which = Redelivery(all=True, configured=self._known())
        else:
            try:
                ids = delivery_ids(form, limit=MAX_IDS)
            except ValueError as exc:
                raise web.HTTPBadRequest(text=str(exc)) from None
            if not ids:
                self.flashes.put(request, "Nothing redelivered: tick the dead letters to send.")
                raise _see_other("/ui/dead-letters")
            which = Redelivery(ids=tuple(ids), configured=self._known())
        done = await self._store.redeliver(which)
        self._log.info("ui_redelivered", count=len(done), all=which.all, remote=request.remote)
        self.flashes.put(request, _redelivered(len(done)))
        raise _see_other("/ui/dead-letters")

    async def redeliver_run(self, request: web.Request) -> web.Response:
        """The run's dead letters, every one of them (read alone: not the run's history)."""
        _admin(request)
        run_uuid = _run_uuid(request)
        letters = await self._store.run_dead_letters(run_uuid)
        if letters is None:
            raise web.HTTPNotFound(text="no such run")
        ids = [letter.id for letter in letters]
        done: list[int] = []
        if ids:
            done = await self._store.redeliver(Redelivery(ids=tuple(ids), configured=self._known()))
        self._log.info("ui_redelivered", count=len(done), run_uuid=run_uuid, remote=request.remote)
        self.flashes.put(request, _redelivered(len(done)))
        raise _see_other(f"/ui/runs/{run_uuid}")

    # -- silences --------------------------------------------------------------------------
    async def silences(self, request: web.Request) -> web.Response:
        """Current and recently ended silences, and the form (prefilled from the query)."""
        form = SilenceForm.from_fields(request.query, defaults=True)
        return await self._silences_page(request, form)

    async def _silences_page(
        self, request: web.Request, form: SilenceForm, *, error: str = "", status: int = 200
    ) -> web.Response:
        known = self._known()
        view = silences_view(
            await self._store.silences(), self._clock(), sorted(known or form.notifiers)
        )
        return self._render(
            "silences.html",
            request,
            status=status,
            view=view,
            form=form,
            error=error,
            page="silences",
        )

    async def add_silence(self, request: web.Request) -> web.Response:
        _admin(request)
        form = SilenceForm.from_fields(await request.post())
        now = self._clock()
        try:
            matchers = form.matchers()
            ends_at = form.ends_at(now)
            notifiers = form.checked_notifiers(self._known())
            comment = form.checked_comment()
        except SilenceError as exc:
            return await self._silences_page(request, form, error=str(exc), status=400)
        silence = await self._store.add_silence(
            matchers=matchers, starts_at=now, ends_at=ends_at, notifiers=notifiers, comment=comment
        )
        self._log.info(
            "ui_silence_added",
            silence_id=silence.id,
            ends_at=isoformat_z(silence.ends_at),
            remote=request.remote,
        )
        shown = ", ".join(f"{k}={v}" for k, v in sorted(matchers.items()))
        self.flashes.put(
            request, f"Silence {silence.id} added: {shown} until {isoformat_z(ends_at)}."
        )
        raise _see_other("/ui/silences")

    async def expire_silence(self, request: web.Request) -> web.Response:
        _admin(request)
        raw = request.match_info["silence_id"]
        ended = await self._store.expire_silence(int(raw)) if _ID.fullmatch(raw) else None
        if ended is None:
            self.flashes.put(request, "No such silence (it may have been deleted).")
        else:
            self._log.info("ui_silence_expired", silence_id=ended.id, remote=request.remote)
            self.flashes.put(request, f"Silence {ended.id} expired: its deliveries go out again.")
        raise _see_other("/ui/silences")

    # -- untrack ---------------------------------------------------------------------------
    async def untrack_run(self, request: web.Request) -> web.Response:
        _admin(request)
        run_uuid = _run_uuid(request)
        if not await self._store.untrack([run_uuid]):
            self.flashes.put(request, f"Run {run_uuid} was not tracked.")
            raise _see_other("/ui/runs")
        self._log.info("ui_run_untracked", run_uuid=run_uuid, remote=request.remote)
        try:
            self._on_untracked()  # the scheduler drops the run at once
        except Exception:
            self._log.exception("ui_wakeup_failed", run_uuid=run_uuid)
        self.flashes.put(request, f"Run {run_uuid} untracked: it is no longer polled.")
        raise _see_other("/ui/runs")


def _redelivered(count: int) -> str:
    if not count:
        return "Nothing redelivered: no dead letter of a notifier the daemon has was chosen."
    return f"{_plural(count, 'dead letter')} back in the outbox: sent again within seconds."
