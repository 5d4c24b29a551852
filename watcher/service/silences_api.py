"""The admin API's silences: ``GET``/``POST /v1/silences``, ``GET``/``DELETE /v1/silences/{id}``.

Kept apart from :mod:`watcher.service.server`, which mounts these routes behind its bearer
token and JSON error middlewares. The rules are the CLI's (``omics-watcher silence``), in
:mod:`watcher.delivery.silencing`: the same matcher keys, durations and times, and a notifier
must be one the daemon has. A silence written here is in the state at once (SQLite file or
PostgreSQL, through the awaited :class:`~watcher.store.api.AsyncStore`, from any replica);
the active daemon's dispatcher applies it within about a second
(:mod:`watcher.delivery.silencer`), like one added by the CLI.

``POST`` body: ``{"matchers": {"KEY": "VALUE", ...}, "duration": "2h" | "ends_at": TIME,
"notifiers": ["N", ...], "comment": "..."}``: 201 with the silence, 400 with the reason.
``DELETE`` ends a silence now (204; 404 for an id the state does not have). Error messages
are the CLI's (naming the bad key, duration or time) and never name an unknown notifier.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from watcher.delivery.silencing import (
    SilenceError,
    check_comment,
    check_matchers,
    parse_duration,
    parse_time,
)
from watcher.store.api import SilenceStore

_ID = re.compile(r"[0-9]{1,18}")
_FIELD = re.compile(r"[A-Za-z_]{1,32}")


class SilenceBody(BaseModel):
    """``POST /v1/silences``. Unknown keys are refused, nothing is coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    matchers: dict[str, str]
    duration: str | None = None
    ends_at: str | None = None
    notifiers: list[str] = []
    comment: str = ""


def _describe(exc: ValidationError) -> str:
    """Each bad field named (a key from the input only when it is a plain name)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        parts = [str(p) if _FIELD.fullmatch(str(p)) else "(key)" for p in error["loc"]]
        problems.append(f"{'.'.join(parts) or 'body'}: {error['msg']}")
    return "; ".join(problems)


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=message)


def _path_id(request: web.Request) -> int:
    raw = request.match_info["silence_id"]
    if not _ID.fullmatch(raw):
        raise web.HTTPNotFound(text="no such silence")
    return int(raw)


class SilencesApi:
    """The handlers; ``notifier_names`` answers the daemon's notifiers at each request
    (``None``: not checked)."""

    def __init__(
        self,
        *,
        store: SilenceStore,
        notifier_names: Callable[[], Collection[str]] | None,
        log: Any,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._notifier_names = notifier_names
        self._log = log
        self._clock = clock

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/silences", self.list_silences)
        router.add_post("/v1/silences", self.add)
        router.add_get("/v1/silences/{silence_id}", self.get_silence)
        router.add_delete("/v1/silences/{silence_id}", self.expire)

    async def list_silences(self, request: web.Request) -> web.Response:
        now = self._clock()
        return web.json_response([s.to_json_dict(now) for s in await self._store.silences()])

    async def get_silence(self, request: web.Request) -> web.Response:
        silence = await self._store.get_silence(_path_id(request))
        if silence is None:
            raise web.HTTPNotFound(text="no such silence")
        return web.json_response(silence.to_json_dict(self._clock()))

    async def add(self, request: web.Request) -> web.Response:
        raw = await request.read()  # raises 413 beyond client_max_size
        try:
            body = SilenceBody.model_validate_json(raw)
        except ValidationError as exc:
            raise _bad(_describe(exc)) from None
        now = self._clock()
        try:
            matchers = check_matchers(body.matchers.items())
            ends_at = self._ends_at(body, now)
            comment = check_comment(body.comment)
        except SilenceError as exc:
            raise _bad(str(exc)) from None
        notifiers = self._notifiers(body.notifiers)
        silence = await self._store.add_silence(
            matchers=matchers, starts_at=now, ends_at=ends_at, notifiers=notifiers, comment=comment
        )
        self._log.info(
            "admin_silence_added",
            silence_id=silence.id,
            ends_at=silence.to_json_dict(now)["ends_at"],
            remote=request.remote,
        )
        return web.json_response(
            silence.to_json_dict(now),
            status=201,
            headers={"Location": f"/v1/silences/{silence.id}"},
        )

    async def expire(self, request: web.Request) -> web.Response:
        silence_id = _path_id(request)
        if await self._store.get_silence(silence_id) is None or not (
            await self._store.expire_silence(silence_id)
        ):
            raise web.HTTPNotFound(text="no such silence")
        self._log.info("admin_silence_expired", silence_id=silence_id, remote=request.remote)
        return web.Response(status=204)

    @staticmethod
    def _ends_at(body: SilenceBody, now: datetime) -> datetime:
        if (body.duration is None) == (body.ends_at is None):
            raise SilenceError("give exactly one of duration and ends_at")
        if body.duration is not None:
            return now + parse_duration(body.duration)
        assert body.ends_at is not None
        ends_at = parse_time(body.ends_at)
        if ends_at <= now:
            raise SilenceError("ends_at: must be in the future")
        return ends_at

    def _notifiers(self, given: list[str]) -> list[str]:
        if self._notifier_names is None:
            return list(dict.fromkeys(given))
        known = set(self._notifier_names())
        unknown = [name for name in given if name not in known]
        if unknown:
            shown = ", ".join(sorted(known))
            raise _bad(f"notifiers: {len(unknown)} unknown (the daemon has: {shown})")
        return list(dict.fromkeys(given))
