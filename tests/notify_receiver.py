"""A Standard Webhooks receiver for end-to-end tests, serving from its own thread.

The tests that drive the real daemon as a subprocess are synchronous (they poll, sleep and
send signals), so the receiver cannot share their thread: :class:`WebhookReceiver` runs an
aiohttp server on 127.0.0.1 (a free port) in a background thread with its own event loop.

Every request is verified with the independent ``standardwebhooks`` package
(``Webhook(secret).verify(body, headers)``) and recorded as a :class:`Hit`, whatever the
answer. What it answers is scripted:

- ``outage_seconds``: answer ``outage_status`` (503) until that long after :meth:`start`;
- ``fail_first``: answer ``outage_status`` to the first N requests;
- :meth:`set_status`: from now on answer this status (e.g. 400, or 204 to end an outage);
- otherwise ``status`` (204).

A request whose signature does not verify is answered 401 and recorded with the error, so a
test can assert that none happened. Use it as a context manager, or call :meth:`start` and
:meth:`close`; :meth:`close` is idempotent and bounded.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Hit:
    """One request as the receiver saw it."""

    webhook_id: str
    body: bytes
    headers: Mapping[str, str]
    answered: int
    verified: bool
    error: str | None
    at: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival

    @property
    def ok(self) -> bool:
        return 200 <= self.answered < 300

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(
        self,
        secret: str | None,
        *,
        outage_seconds: float = 0.0,
        fail_first: int = 0,
        outage_status: int = 503,
        status: int = 204,
        path: str = "/hook",
    ) -> None:
        self._webhook = Webhook(secret) if secret is not None else None
        self._outage_seconds = outage_seconds
        self._fail_first = fail_first
        self._outage_status = outage_status
        self._status = status
        self._forced: int | None = None
        self._path = path
        self._lock = threading.Lock()
        self._hits: list[Hit] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.started_at: float | None = None  # monotonic

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> WebhookReceiver:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), loop)
        self.port = future.result(timeout=timeout)
        self.started_at = time.monotonic()
        return self

    async def _serve(self) -> int:
        app = web.Application()
        app.router.add_post(self._path, self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        return int(runner.addresses[0][1])

    def close(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            future = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
            try:
                future.result(timeout=timeout)
            except Exception:  # teardown must go on: the thread is a daemon anyway
                future.cancel()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=timeout)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        assert self.port is not None, "start() the receiver first"
        return f"http://127.0.0.1:{self.port}{self._path}"

    @property
    def outage_ends_at(self) -> float:
        """Monotonic time at which the scripted outage ends (its start when there is none)."""
        assert self.started_at is not None
        return self.started_at + self._outage_seconds

    # -- scripting ------------------------------------------------------------------------

    def set_status(self, status: int | None) -> None:
        """Answer ``status`` from now on (``None``: back to the constructor's script)."""
        with self._lock:
            self._forced = status

    def _answer(self, now: float) -> int:
        if self._forced is not None:
            return self._forced
        if len(self._hits) < self._fail_first:
            return self._outage_status
        if self.started_at is not None and now < self.started_at + self._outage_seconds:
            return self._outage_status
        return self._status

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified, error = True, None
        if self._webhook is not None:
            try:
                self._webhook.verify(body, headers)
            except WebhookVerificationError as exc:
                verified, error = False, f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a malformed header: still a failed verification
                verified, error = False, f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        with self._lock:
            answered = self._answer(now) if verified else 401
            self._hits.append(
                Hit(
                    webhook_id=headers.get("webhook-id", ""),
                    body=body,
                    headers=headers,
                    answered=answered,
                    verified=verified,
                    error=error,
                    at=now,
                    wall=time.time(),
                )
            )
        return web.Response(status=answered)

    # -- what arrived ---------------------------------------------------------------------

    def hits(self) -> list[Hit]:
        """Every request so far, in arrival order."""
        with self._lock:
            return list(self._hits)

    def accepted(self) -> list[Hit]:
        """Requests answered 2xx (deliveries, as the daemon sees them), in arrival order."""
        return [hit for hit in self.hits() if hit.ok]
