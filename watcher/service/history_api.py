"""The admin API's history and dead letters: ``GET /v1/runs/{run_uuid}/events``,
``GET /v1/dead-letters`` and ``POST /v1/dead-letters/redeliver``.

Kept apart from :mod:`watcher.service.server`, which mounts these routes behind its bearer
token and JSON error middlewares. The JSON is the CLI's (``history --json``,
``dead-letters --json``, rendered by :mod:`watcher.history_view`); every store call is
awaited (:class:`~watcher.store.api.AsyncStore`: the SQLite adapter reads histories and dead
letters off the loop, PostgreSQL in the server), so these routes work on any replica. A
redelivery is one short write; the active daemon's dispatcher finds the rows at its next
outbox scan (every second), as it finds those the CLI re-queues.

``POST /v1/dead-letters/redeliver`` body: exactly one of ``{"all": true}``,
``{"notifier": "N"}`` or ``{"ids": [1, 2]}``; 400 for anything else (and for a notifier the
daemon does not have). Answer: ``{"redelivered": N, "ids": [...]}``. Only rows of notifiers
the daemon has go back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from watcher.history_view import dead_letter_json, history_json
from watcher.run_uuids import RUN_UUID_HINT, canonical_run_uuid
from watcher.service.reads import json_body
from watcher.store.api import HistoryStore
from watcher.store.history import Redelivery

_LIMIT = re.compile(r"[0-9]{1,7}")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_IDS = 10_000
_MAX_NAME = 256


class RedeliverBody(BaseModel):
    """``POST /v1/dead-letters/redeliver``. Unknown keys are refused, nothing is coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    all: bool | None = None
    notifier: str | None = Field(default=None, min_length=1, max_length=_MAX_NAME)
    ids: list[int] | None = Field(default=None, min_length=1, max_length=MAX_IDS)


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=message)


def _describe(exc: ValidationError) -> str:
    """Each bad field named, never the input (an unknown key shows as ``(key)``)."""
    fields = set(RedeliverBody.model_fields)
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        parts = [
            str(p) if str(p) in fields or isinstance(p, int) else "(key)" for p in error["loc"]
        ]
        problems.append(f"{'.'.join(parts) or 'body'}: {error['msg']}")
    return "; ".join(problems)


def limit_param(request: web.Request) -> int:
    """``?limit=`` of a listing route (the admin API's every one): 1 to 1000, default 100."""
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    value = int(raw) if _LIMIT.fullmatch(raw) else 0
    if not 1 <= value <= MAX_LIMIT:
        raise _bad(f"limit: must be an integer from 1 to {MAX_LIMIT}")
    return value


def _notifier_param(request: web.Request) -> str | None:
    raw = request.query.get("notifier")
    if raw is not None and not (1 <= len(raw) <= _MAX_NAME and raw.isprintable()):
        raise _bad(f"notifier: must be 1 to {_MAX_NAME} printable characters")
    return raw


class HistoryApi:
    """The handlers; ``notifier_names`` answers the daemon's notifiers at each request
    (``None``: every notifier counts as configured)."""

    def __init__(
        self,
        *,
        store: HistoryStore,
        notifier_names: Callable[[], Collection[str]] | None,
        log: Any,
    ) -> None:
        self._store = store
        self._notifier_names = notifier_names
        self._log = log

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/runs/{run_uuid}/events", self.history)
        router.add_get("/v1/dead-letters", self.dead_letters)
        router.add_post("/v1/dead-letters/redeliver", self.redeliver)

    async def history(self, request: web.Request) -> web.Response:
        run_uuid = canonical_run_uuid(request.match_info["run_uuid"])
        if run_uuid is None:
            raise _bad(f"run_uuid: {RUN_UUID_HINT}")
        entries = await self._store.run_history(run_uuid)
        if entries is None:
            raise web.HTTPNotFound(text="run not in the registry")
        return web.Response(body=json_body(history_json(entries)), content_type="application/json")

    async def dead_letters(self, request: web.Request) -> web.Response:
        """Dead letters, most recent first: ``?notifier=``, ``?limit=`` (default 100)."""
        limit, notifier = limit_param(request), _notifier_param(request)
        found = await self._store.list_dead_letters(notifier=notifier, limit=limit)
        body = json_body([dead_letter_json(letter) for letter in found])
        return web.Response(body=body, content_type="application/json")

    async def redeliver(self, request: web.Request) -> web.Response:
        raw = await request.read()  # raises 413 beyond client_max_size
        try:
            body = RedeliverBody.model_validate_json(raw)
        except ValidationError as exc:
            raise _bad(_describe(exc)) from None
        which = self._which(body)
        done = await self._store.redeliver(which)
        self._log.info(
            "admin_redelivered",
            count=len(done),
            notifier=which.notifier,
            all=which.all,
            remote=request.remote,
        )
        return web.json_response({"redelivered": len(done), "ids": done})

    def _which(self, body: RedeliverBody) -> Redelivery:
        given = [body.all is not None, body.notifier is not None, body.ids is not None]
        if sum(given) != 1 or body.all is False:
            raise _bad('body: give exactly one of {"all": true}, {"notifier": N}, {"ids": [...]}')
        if body.ids is not None and any(i <= 0 for i in body.ids):
            raise _bad("ids: delivery ids are positive integers")
        known = None if self._notifier_names is None else frozenset(self._notifier_names())
        if known is not None and body.notifier is not None and body.notifier not in known:
            raise _bad(f"notifier: not one the daemon has ({', '.join(sorted(known))})")
        return Redelivery(
            all=bool(body.all),
            notifier=body.notifier,
            ids=tuple(body.ids or ()),
            configured=known,
        )
