"""The live feed: new events pushed to browsers as server-sent events (``/ui/events``).

Why read the event log rather than hook the event sink: the log is the one record of what
happened, whoever wrote it (this daemon now, another replica later), and a browser that
reconnects with ``Last-Event-ID`` (the log's ``seq``) gets what it missed from the same place.
One task reads the log every :data:`POLL_SECONDS` while at least one browser listens (an
indexed range read past the last ``seq``, usually empty: microseconds on SQLite, one awaited
round trip on PostgreSQL, which a standby serves too) and hands each new event to every
subscriber.

Bounds: at most ``max_subscribers`` streams (503 beyond); a subscriber that falls
:data:`QUEUE_EVENTS` behind is dropped (its browser reconnects and catches up from the log);
a comment line every :data:`KEEPALIVE_SECONDS` finds dead clients. On shutdown every stream
ends at once, so open pages never hold up the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import structlog
from aiohttp import web

from watcher.statuses import Statuses
from watcher.store.api import AsyncStore
from watcher.ui.views import EventView, event_view

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
QUEUE_EVENTS = 256
STEP_EVENTS = 200  # events read per step (a burst is read over several steps)
REPLAY_EVENTS = 100  # at most this many missed events sent to a reconnecting browser
MAX_SUBSCRIBERS = 32

_Queue = asyncio.Queue[EventView | None]  # None: the feed is closing


def sse_message(view: EventView) -> bytes:
    data = json.dumps(view.to_json(), ensure_ascii=False, separators=(",", ":"))
    return f"id: {view.seq}\nevent: run-event\ndata: {data}\n\n".encode()


class LiveFeed:
    """Reads new events from the log and streams them to subscribed browsers."""

    def __init__(
        self,
        store: AsyncStore,
        statuses: Statuses,
        *,
        max_subscribers: int = MAX_SUBSCRIBERS,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._store = store
        self._statuses = statuses
        self._max = max_subscribers
        self._poll_seconds = poll_seconds
        self._subscribers: set[_Queue] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_seq = 0
        self._closed = False
        self._log = structlog.get_logger("watcher.ui")

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def _views(self, after: int, limit: int) -> list[EventView]:
        found = await self._store.events_after(after, limit=limit)
        return [event_view(seq, event, self._statuses) for seq, event in found]

    async def _poll(self) -> None:
        while self._subscribers and not self._closed:
            try:
                views = await self._views(self._last_seq, STEP_EVENTS)
            except Exception:
                self._log.exception("ui_feed_read_failed")
                views = []
            if views:
                self._last_seq = views[-1].seq
                for queue in list(self._subscribers):
                    for view in views:
                        if not _offer(queue, view):
                            self._subscribers.discard(queue)  # too far behind: it reconnects
                            break
            if len(views) < STEP_EVENTS:
                await asyncio.sleep(self._poll_seconds)
        self._task = None

    async def _subscribe(self) -> _Queue:
        if self._closed or len(self._subscribers) >= self._max:
            raise web.HTTPServiceUnavailable(text="too many live feeds open")
        if not self._subscribers:
            last_seq = await self._store.last_event_seq()
            if not self._subscribers:  # another browser may have subscribed meanwhile
                self._last_seq = last_seq
            if self._closed or len(self._subscribers) >= self._max:
                raise web.HTTPServiceUnavailable(text="too many live feeds open")
        queue: _Queue = asyncio.Queue(maxsize=QUEUE_EVENTS)
        self._subscribers.add(queue)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())
        return queue

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """The ``text/event-stream`` answer of one browser, until it leaves or we stop."""
        queue = await self._subscribe()
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        response.headers["Cache-Control"] = "no-store"
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")
            for missed in await self._missed(request.headers.get("Last-Event-ID", "")):
                await response.write(sse_message(missed))
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        view = await queue.get()
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if view is None or queue not in self._subscribers:
                    break
                await response.write(sse_message(view))
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        finally:
            self._subscribers.discard(queue)
        return response

    async def _missed(self, last_event_id: str) -> list[EventView]:
        if not last_event_id.isdigit() or len(last_event_id) > 19:
            return []
        after = int(last_event_id)
        return [v for v in await self._views(after, REPLAY_EVENTS) if v.seq <= self._last_seq]

    async def close(self) -> None:
        """End every stream and the reading task (application shutdown)."""
        self._closed = True
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._subscribers.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _offer(queue: _Queue, view: EventView) -> bool:
    try:
        queue.put_nowait(view)
    except asyncio.QueueFull:
        return False
    return True
