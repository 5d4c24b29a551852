"""One daemon per state: an exclusive claim that ends with the process holding it.

Why: two daemons on one state file both poll every run, so the API sees twice the budget
and every transition races to be recorded twice. A second ``run`` must refuse to start,
naming the first; the one-shot commands (``track``, ``list``, ...) never claim and keep
working beside a daemon.

Why ``flock`` on a file beside the state (``PATH.lock``, holding the owner's pid): the kernel
drops the lock when the last descriptor of the holder closes, which includes the process
dying by SIGKILL or OOM, so a crashed daemon never blocks its restart and nothing stale has
to be cleaned up (a pid file alone would need "is that pid still alive, and still us?"
guesses). The pid in the file is only for the message. The descriptor is opened
non-inheritable (Python's default), so a child process cannot keep a dead daemon's claim
alive. The lock file is never deleted: removing it while another process waits on the old
inode would let two claimants each hold "the" lock; instead a claimant checks, once it
holds the lock, that the path still names the file it locked (someone may have removed it
by hand) and starts over if not.

Not for ``:memory:`` (nothing to share). ``flock`` is per open file description, so two
claims in one process conflict too (what the in-process tests rely on). On network file
systems ``flock`` is only as good as the NFS/SMB client's lock support; a shared state for
several replicas is the PostgreSQL backend's job (issue 15), where the same
:class:`StateClaim` interface would be a lease row renewed by the daemon and taken over when
it expires: the composition root only calls :func:`claim_state` and releases on exit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from watcher.store.db import MEMORY, StateError

_PID_READ_ATTEMPTS = 20  # the holder writes its pid just after locking; wait ~1 s for it
_PID_READ_PAUSE = 0.05


class StateInUse(Exception):
    """Another live process holds the state; the message is interface.md's exact wording."""

    def __init__(self, path: str, pid: int | None) -> None:
        holder = str(pid) if pid is not None else "unknown"
        super().__init__(f"state {path} is in use by another omics-watcher (pid {holder})")
        self.path = path
        self.pid = pid


class StateClaim(Protocol):
    """What the composition root holds while a daemon runs on a state."""

    def release(self) -> None: ...


def lock_path(state_path: str) -> str:
    return f"{state_path}.lock"


class FileClaim:
    """An ``flock`` held on ``PATH.lock``; :meth:`release` (or process death) ends it."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd: int | None = fd
        self.path = path

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # nobody's pid while the file sits unlocked
        os.close(fd)  # closing the last descriptor drops the lock


class _NoClaim:
    def release(self) -> None:
        return None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _holder(fd: int, sleep: Callable[[float], None]) -> int | None:
    """The pid written by the current holder (which may not have written it yet)."""
    for _ in range(_PID_READ_ATTEMPTS):
        pid = _read_pid(fd)
        if pid is not None:
            return pid
        sleep(_PID_READ_PAUSE)
    return None


def _same_file(fd: int, path: str) -> bool:
    try:
        held, named = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _open(path: str, state_path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # the same words as the store's own check
            parent = os.path.dirname(state_path) or "."
            raise StateError(
                f"state file {state_path} cannot be created: directory {parent} does not exist"
            ) from None
        reason = exc.strerror or str(exc)
        raise StateError(f"state file {state_path} cannot be claimed: {path}: {reason}") from None


def claim_file(
    state_path: str, *, pid: int | None = None, sleep: Callable[[float], None] = time.sleep
) -> FileClaim:
    """Take the lock beside ``state_path`` or raise :class:`StateInUse` naming its holder.

    Raises :class:`StateError` when the lock file cannot be created (missing directory,
    permissions).
    """
    path = lock_path(state_path)
    while True:
        fd = _open(path, state_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd, sleep)
            os.close(fd)
            raise StateInUse(state_path, holder) from None
        except OSError as exc:
            os.close(fd)
            reason = exc.strerror or str(exc)
            raise StateError(f"state file {state_path} cannot be claimed: {reason}") from None
        if not _same_file(fd, path):
            os.close(fd)  # the file was removed or replaced after we opened it: retry
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid if pid is not None else os.getpid()}\n".encode(), 0)
        return FileClaim(fd, path)


@contextlib.contextmanager
def claim_state(state_path: str) -> Iterator[StateClaim]:
    """Hold the state for the block; the one call the composition root makes."""
    claim: StateClaim = _NoClaim() if state_path == MEMORY else claim_file(state_path)
    try:
        yield claim
    finally:
        claim.release()
