"""A tiny systemd ``sd_notify`` client: readiness, stopping, status and watchdog pings.

Role: tell the service manager what the daemon is doing when it runs under ``Type=notify``
(``READY=1`` once serving, ``STATUS=...``, ``RELOADING=1`` around SIGHUP, ``STOPPING=1`` on
drain, ``WATCHDOG=1`` every half ``WatchdogSec``). The protocol is one datagram per message on
the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace); see ``sd_notify(3)``.

Invariants:

- The environment is injected (a mapping), never read from ``os.environ`` here, and never
  modified, so tests and the daemon decide what the notifier sees.
- Without ``NOTIFY_SOCKET`` every call is a no-op returning ``False``: the same code runs in a
  terminal, a container or under systemd.
- Nothing here raises into the daemon: a failing send is logged (warning once, then debug until
  a send succeeds again) and reported as ``False``.
- Sending never blocks the event loop: the socket is non-blocking; a full receive queue drops the
  datagram, which is what ``sd_notify(3)`` itself does. No method needs to be awaited except
  the long-lived tasks :meth:`SdNotifier.watchdog_loop` (pings the watchdog) and
  :meth:`SdNotifier.status_loop` (keeps ``STATUS=`` up to date).
- ``STATUS=`` is one line the caller words (the daemon: ``Health.status_line``); the last
  line handed over is remembered, so the status loop sends only changes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog
from structlog.typing import FilteringBoundLogger

__all__ = ["STATUS_CHECK_SECONDS", "SdNotifier"]

STATUS_CHECK_SECONDS = 1.0  # how often status_loop looks for a changed line


def _one_line(text: str) -> str:
    """An assignment on one line: a value can never smuggle in a second assignment."""
    return text.replace("\r", " ").replace("\n", " ")


class SdNotifier:
    """Sends ``sd_notify`` datagrams to the socket named in ``environ["NOTIFY_SOCKET"]``.

    ``pid`` is the process that the watchdog settings must be meant for (``WATCHDOG_PID``);
    it defaults to this process. Call :meth:`close` (or use it as a context manager) to release
    the socket.
    """

    def __init__(
        self,
        *,
        environ: Mapping[str, str],
        pid: int | None = None,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._log: FilteringBoundLogger = (
            logger if logger is not None else structlog.get_logger("watcher.sdnotify")
        )
        self._environ = environ
        self._pid = os.getpid() if pid is None else pid
        self._address = self._parse_address(environ.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        self._failing = False
        self._status: str | None = None  # the last STATUS= value handed over

    # -- configuration -------------------------------------------------------------------------

    def _parse_address(self, raw: str) -> str | None:
        if not raw:
            return None
        if raw.startswith("@"):
            # Abstract namespace: a leading NUL byte instead of the '@'.
            return "\0" + raw[1:]
        if raw.startswith("/"):
            return raw
        # vsock:... and relative paths are not supported; say so once and stay quiet.
        self._log.warning("sd_notify_unsupported_socket", notify_socket=raw)
        return None

    @property
    def enabled(self) -> bool:
        """Whether a usable ``NOTIFY_SOCKET`` was given."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or ``None``.

        ``None`` when the watchdog is off: no ``WATCHDOG_USEC``, an invalid or zero value, or a
        ``WATCHDOG_PID`` naming another process (the settings were inherited, not meant for us).
        """
        raw_usec = self._environ.get("WATCHDOG_USEC", "").strip()
        if not raw_usec:
            return None
        raw_pid = self._environ.get("WATCHDOG_PID", "").strip()
        if raw_pid:
            try:
                if int(raw_pid) != self._pid:
                    return None
            except ValueError:
                self._log.warning("sd_notify_bad_watchdog_pid", watchdog_pid=raw_pid)
                return None
        try:
            usec = int(raw_usec)
        except ValueError:
            self._log.warning("sd_notify_bad_watchdog_usec", watchdog_usec=raw_usec)
            return None
        if usec <= 0:
            return None
        return usec / 2_000_000

    # -- sending -------------------------------------------------------------------------------

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; ``True`` if it was handed over.

        Newlines inside an assignment are replaced by spaces so that a value can never smuggle
        in a second assignment.
        """
        if self._address is None or not assignments:
            return False
        clean = [_one_line(line) for line in assignments]
        payload = "\n".join(clean).encode("utf-8", errors="replace")
        try:
            sock = self._socket()
            sock.sendto(payload, self._address)
        except OSError as exc:
            # BlockingIOError (queue full), ECONNREFUSED (manager gone), ENOENT...: never fatal.
            log = self._log.debug if self._failing else self._log.warning
            log("sd_notify_failed", error=f"{type(exc).__name__}: {exc.strerror or exc}")
            self._failing = True
            return False
        if self._failing:
            self._log.info("sd_notify_recovered")
            self._failing = False
        for line in clean:
            if line.startswith("STATUS="):
                self._status = line.removeprefix("STATUS=")
        return True

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            self._sock = sock
        return self._sock

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup finished; systemd considers the unit started."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd ≥ 253 wants it); follow with ready()."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the daemon has begun its drain."""
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """``STATUS=...``: a one-line free-form state shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: keep-alive; systemd kills the unit when these stop coming."""
        return self.notify("WATCHDOG=1")

    async def status_loop(
        self, describe: Callable[[], str], *, every: float = STATUS_CHECK_SECONDS
    ) -> None:
        """Send ``STATUS=describe()`` whenever it differs from the last status handed over
        (by this loop, :meth:`ready` or :meth:`stopping`), looking every ``every`` seconds,
        until cancelled. Returns at once without ``NOTIFY_SOCKET``: nothing to wake for.

        Why look instead of being told: the daemon's state is computed from clocks and
        flags (``api_unreachable`` begins a minute after the first failure with no event to
        hook, a replica's lease expires on its own), so a look at the one function that
        decides it can never drift from ``/readyz``; it costs one wake-up a second, and only
        under systemd. A send that failed is tried again at the next look.
        """
        if not self.enabled:
            return
        while True:
            line = _one_line(describe())
            if line != self._status:
                self.status(line)
            await asyncio.sleep(every)

    async def watchdog_loop(self, *, healthy: Callable[[], bool] | None = None) -> None:
        """Ping the watchdog every :meth:`watchdog_interval` seconds until cancelled.

        Returns at once when the watchdog is off. A ping is skipped while ``healthy()`` answers
        ``False`` (e.g. a stalled scheduler), so that systemd restarts a wedged daemon; a
        blocked event loop stops the pings by itself.
        """
        interval = self.watchdog_interval()
        if interval is None or not self.enabled:
            return
        while True:
            if healthy is None or healthy():
                self.watchdog()
            else:
                self._log.warning("sd_notify_watchdog_skipped", reason="unhealthy")
            await asyncio.sleep(interval)

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the socket; later sends open a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SdNotifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
