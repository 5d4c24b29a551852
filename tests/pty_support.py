"""A process on a pseudo-terminal, for tests of what people see on a terminal.

``omics-watcher run`` prints lines for people only when standard error is a TTY; a pipe or a
file gets JSON. :class:`PtyProcess` gives the child a real pseudo-terminal (``pty.openpty``)
as stdin, stdout and stderr, reads what it writes, and is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class PtyProcess:
    """``args`` on a new pseudo-terminal of ``columns`` columns, in its own session."""

    def __init__(
        self, args: Sequence[str], *, env: Mapping[str, str], cwd: Path, columns: int = 200
    ) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        self._master = master
        self._text = ""
        try:
            self.proc = subprocess.Popen(
                list(args),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            os.close(slave)

    def _pump(self, wait: float) -> bool:
        """Read what is there (waiting at most ``wait`` s); False once the terminal closed."""
        ready, _, _ = select.select([self._master], [], [], wait)
        if not ready:
            return True
        try:
            chunk = os.read(self._master, 65536)
        except OSError:  # EIO: every writer closed its side
            return False
        if not chunk:
            return False
        self._text += chunk.decode("utf-8", "replace").replace("\r\n", "\n")
        return True

    @property
    def text(self) -> str:
        """Everything read so far, line ends as ``\\n``."""
        return self._text

    def read_until(self, done: Callable[[str], bool], *, timeout: float, what: str) -> str:
        """Read until ``done(text)`` holds; fails with the output after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not done(self._text):
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out waiting for {what}; output:\n{self._text}")
            if not self._pump(0.2) and not done(self._text):
                raise AssertionError(f"ended before {what}; output:\n{self._text}")
        return self._text

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 30.0, group: bool = False) -> int:
        """Signal the process (by pid; ``group``: its process group, as Ctrl-C does), read its
        output until every process writing to the terminal has closed it, return its exit code.
        """
        if self.proc.poll() is None or group:
            with contextlib.suppress(ProcessLookupError):
                if group:
                    os.killpg(self.proc.pid, sig)
                else:
                    self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self._pump(0.1):
            if time.monotonic() >= deadline:
                self.kill()
                raise AssertionError(f"pid {self.proc.pid} still writing {timeout} s after {sig!r}")
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(OSError):
            os.close(self._master)
