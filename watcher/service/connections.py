"""Listeners whose connections are bounded, so stalled clients cannot take the server down.

Why this exists: with aiohttp's own ``TCPSite`` every accepted connection stays open until
the client finishes its request, and asyncio's accept loop logs a full traceback for each
failed ``accept()``. 1,100 clients that each sent half a request, against the usual 1,024
descriptor limit, kept ``/healthz`` from answering at all (the listen queue never drained)
and wrote megabytes of ``EMFILE`` tracebacks a second.

What aiohttp already does, and is used as is (see :meth:`ConnectionLimits.handler_args`):
``keepalive_timeout`` is armed when a connection opens and closes it if no complete request
head has arrived by then, so it is both the header timeout and the idle keep-alive timeout;
``max_line_size``/``max_field_size``/``max_headers`` bound a request head; ``lingering_time``
bounds reading the rest of a body after an early answer.

What it does not, and this module adds:

- a bound on open connections (:class:`ConnectionGuard`): when full, the oldest connection
  that is not inside a handler (still sending its request head or body, or idle between
  requests) is closed to make room, so a new client (a probe) always gets in;
- its own accept loop (:class:`Listener`) that handles ``EMFILE`` and friends by closing
  such a connection and trying again, with no traceback;
- a body timeout (:func:`body_timeout_middleware`): the whole body must arrive within
  ``body_timeout`` seconds, else 408 (the handler then reads the cached body);
- error answers of its own (malformed requests) that never quote the request
  (:class:`_QuietHandler`); aiohttp's quote the offending bytes;
- one rate-limited log line for all of the above (``http_connections_shed``), never one per
  connection.

The guard keys connections by their transport and holds no state beyond the open ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal, Protocol, cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

# accept() failures that mean "out of descriptors or memory": make room, try again.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() failures about one connection that went away before it was taken: skip it.
_TRANSIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
MAX_CONNECTIONS_CEILING = 4096
# Why the server closed a connection itself: full (``capacity``), out of descriptors at
# accept() (``descriptors``), no complete request head in time (``head_timeout``: bytes of a
# request had arrived; an idle keep-alive connection closing is not shed), no body in time.
ShedReason = Literal["capacity", "descriptors", "head_timeout", "body_timeout"]


class ConnectionObserver(Protocol):
    """Told of every shed connection and of the open count (the daemon's metrics)."""

    def shed(self, reason: ShedReason) -> None: ...

    def open_connections(self, count: int) -> None: ...


def default_max_connections() -> int:
    """Half the soft descriptor limit (the rest for SQLite, the API client, notifiers)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CEILING
    return max(8, min(MAX_CONNECTIONS_CEILING, soft // 2))


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many connections, how long each may take, how large a request head may be."""

    max_connections: int = 0  # 0: default_max_connections()
    header_timeout: float = 15.0  # a complete request head within this; also the idle timeout
    body_timeout: float = 15.0  # the whole request body within this, else 408
    lingering_time: float = 2.0  # reading the rest of an unread body after answering
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 64
    backlog: int = 1024  # the kernel's queue of connections waiting for accept()
    log_every: float = 10.0  # at most one http_connections_shed line per this many seconds

    def resolved_max(self) -> int:
        return self.max_connections if self.max_connections > 0 else default_max_connections()

    def handler_args(self) -> dict[str, Any]:
        """aiohttp's own per-connection knobs (``web.AppRunner`` keyword arguments)."""
        return {
            "keepalive_timeout": self.header_timeout,
            "lingering_time": self.lingering_time,
            "max_line_size": self.max_line_size,
            "max_field_size": self.max_field_size,
            "max_headers": self.max_headers,
        }


class ConnectionGuard:
    """The open connections of every listener, oldest first; makes room when full."""

    def __init__(
        self,
        limit: int,
        *,
        log: Any,
        log_every: float,
        clock: Callable[[], float] = time.monotonic,
        observer: ConnectionObserver | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._open: dict[asyncio.Transport, None] = {}  # insertion order: oldest first
        self._busy: dict[asyncio.Transport, int] = {}  # requests inside a handler
        self._log = log
        self._log_every = log_every
        self._clock = clock
        self._last_log = -float("inf")
        self._shed = 0  # since the last log line
        self._accept_failures = 0
        self._last_error = ""
        self._observer = observer
        self._partial: set[asyncio.Transport] = set()  # request bytes, no complete head yet
        self.stopping = False  # closes while the server stops are not shed

    @property
    def open_count(self) -> int:
        return len(self._open)

    def opened(self, transport: asyncio.Transport) -> None:
        while len(self._open) >= self.limit and self._close_one("capacity"):
            pass
        self._open[transport] = None
        self._tell_open()

    def closed(self, transport: asyncio.Transport, *, by_server: bool = False) -> None:
        """Forget ``transport``; ``by_server``: we closed it (not the client, not an error),
        so with a request head still incomplete it was a header timeout."""
        if self._open.pop(transport, False) is not False:
            if by_server and transport in self._partial and not self.stopping:
                self._count("head_timeout")
            self._tell_open()
        self._busy.pop(transport, None)
        self._partial.discard(transport)

    def received(self, transport: asyncio.Transport) -> None:
        """Request bytes arrived; :meth:`head_done` (or a refusal) clears the mark."""
        self._partial.add(transport)

    def head_done(self, transport: asyncio.Transport | None) -> None:
        if transport is not None:
            self._partial.discard(transport)

    def body_timed_out(self, transport: asyncio.Transport | None) -> None:
        self._count("body_timeout")
        self.head_done(transport)

    def _count(self, reason: ShedReason) -> None:
        if self._observer is not None:
            self._observer.shed(reason)

    def _tell_open(self) -> None:
        if self._observer is not None:
            self._observer.open_connections(len(self._open))

    @contextlib.contextmanager
    def busy(self, transport: asyncio.Transport | None) -> Any:
        """While a handler runs for this connection, it is closed only as a last resort."""
        if transport is None or transport not in self._open:
            yield
            return
        self._busy[transport] = self._busy.get(transport, 0) + 1
        try:
            yield
        finally:
            left = self._busy.get(transport, 0) - 1
            if left > 0:
                self._busy[transport] = left
            else:
                self._busy.pop(transport, None)

    def accept_failed(self, exc: OSError, *, make_room: bool) -> bool:
        """Count a failed ``accept()``; with ``make_room`` (out of descriptors or memory)
        close one connection. True when one was closed (so trying again at once may work)."""
        self._accept_failures += 1
        self._last_error = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        freed = make_room and self._close_one("descriptors")
        self._maybe_log()
        return freed

    def _close_one(self, reason: ShedReason) -> bool:
        victim = next((t for t in self._open if t not in self._busy), None)
        if victim is None:
            victim = next(iter(self._open), None)  # all inside handlers: the oldest anyway
        if victim is None:
            return False
        self.closed(victim)
        victim.abort()  # at once, without waiting for a client that reads nothing
        self._shed += 1
        self._count(reason)
        self._maybe_log()
        return True

    def _maybe_log(self) -> None:
        now = self._clock()
        if now - self._last_log < self._log_every:
            return
        self._last_log = now
        self._log.warning(
            "http_connections_shed",
            closed=self._shed,
            accept_failures=self._accept_failures,
            last_accept_error=self._last_error or None,
            open=len(self._open),
            limit=self.limit,
            period_seconds=self._log_every,
        )
        self._shed = self._accept_failures = 0
        self._last_error = ""


class _QuietHandler(web.RequestHandler):
    """aiohttp's connection handler, but its own error answers name the status only.

    For a malformed request (bad request line, header, length) aiohttp answers with the
    parser's message, which quotes the offending bytes, and logs a traceback each time.
    Here the body is ``{"error": "<reason phrase>"}`` and only server errors are logged.
    """

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            self.logger.error("http_protocol_error status=%s", status, exc_info=exc)
        self._guard.head_done(request.transport)  # refused, not timed out: not shed
        if request.writer.output_size > 0:  # an answer had started: the connection is broken
            raise ConnectionError("the response had started before the error")
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "error"
        response = web.json_response({"error": reason}, status=status)
        response.force_close()
        return response


class _Tracked(asyncio.Protocol):
    """Forwards every protocol call to aiohttp's handler; tells the guard of open and close."""

    __slots__ = ("_eof", "_guard", "_inner", "_transport")

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TCP stream transport
        self._guard.opened(self._transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.closed(self._transport, by_server=exc is None and not self._eof)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None and data:
            self._guard.received(self._transport)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        self._eof = True
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def body_timeout_middleware(guard: ConnectionGuard, seconds: float) -> Middleware:
    """Read the whole body within ``seconds`` (408 otherwise), then mark the connection busy.

    aiohttp caches a body once read, so handlers calling ``request.read()`` get it at once;
    ``client_max_size`` still applies (413).
    """

    @web.middleware
    async def bounded_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        guard.head_done(request.transport)
        try:
            return await _read_then_handle(request, handler)
        finally:
            guard.head_done(request.transport)  # the body's bytes were not a head

    async def _read_then_handle(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            try:
                async with asyncio.timeout(seconds):
                    await request.read()
            except TimeoutError:
                guard.body_timed_out(request.transport)
                raise web.HTTPRequestTimeout(
                    text=f"request body not received within {seconds:g} s",
                    headers={"Connection": "close"},
                ) from None
        with guard.busy(request.transport):
            return await handler(request)

    return bounded_body


async def bind(host: str, port: int, *, backlog: int) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (``host`` "": every interface), like asyncio's."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Listener:
    """Accepts on listening sockets and hands each connection to an aiohttp server."""

    def __init__(
        self,
        sockets: list[socket.socket],
        server: web.Server,
        guard: ConnectionGuard,
        limits: ConnectionLimits,
    ) -> None:
        self.sockets = sockets
        self._server = server
        self._guard = guard
        self._handler_args = {**limits.handler_args(), "access_log": None}  # no access log
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for sock in self.sockets:
            self._tasks.append(asyncio.get_running_loop().create_task(self._accept(sock)))

    async def close(self) -> None:
        """Stop accepting and close the listening sockets (open connections stay)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for sock in self.sockets:
            sock.close()

    def _protocol(self) -> asyncio.Protocol:
        loop = asyncio.get_running_loop()
        handler = _QuietHandler(self._server, loop=loop, guard=self._guard, **self._handler_args)
        return _Tracked(handler, self._guard)

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue
                if not self._guard.accept_failed(exc, make_room=exc.errno in _RESOURCE_ERRNOS):
                    await asyncio.sleep(0.1)  # nothing closed to retry with: wait a little
                continue
            try:
                await loop.connect_accepted_socket(self._protocol, conn)
            except OSError:
                conn.close()
