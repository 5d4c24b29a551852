"""Logins to the status page: token check, sessions in memory, failed-login throttling.

Why in memory: a session is a convenience over the token, not state worth a table; a restart
(or, with several replicas, a failover to another daemon) logs everyone out and they log in
again with the token. Bounded in number (the oldest session goes when a new one would exceed
the bound) and in lifetime (absolute, from login), so nothing grows without limit.

Invariants:
- Tokens are compared with :func:`hmac.compare_digest` on bytes, against every configured
  token whatever matched first, so the time taken says nothing about which one or how much of
  it matched. No token or session id is ever logged or rendered.
- A session id and its CSRF token are 256-bit random strings from :mod:`secrets`; the CSRF
  token is checked in constant time too.
- Failed logins are throttled per client address and in total (:class:`LoginThrottle`), so a
  token cannot be guessed at network speed; the per-address table is bounded.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "viewer"]
ID_BYTES = 32


@dataclass(frozen=True, slots=True)
class Session:
    """One logged-in browser: its role, its CSRF token and when it ends (monotonic)."""

    role: Role
    csrf: str
    expires: float

    def __repr__(self) -> str:
        return f"Session(role={self.role!r})"


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two texts (as UTF-8 bytes)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def role_for(token: str, *, admin: str, viewer: str | None) -> Role | None:
    """The role a login token grants, or ``None``. Both tokens are always compared."""
    is_admin = same_secret(token, admin) if token else False
    is_viewer = same_secret(token, viewer) if token and viewer else False
    if is_admin:
        return "admin"
    return "viewer" if is_viewer else None


class Sessions:
    """Sessions by id, oldest first; bounded in number and lifetime."""

    def __init__(
        self,
        *,
        lifetime: float,
        max_sessions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lifetime = lifetime
        self._max = max(1, max_sessions)
        self._clock = clock
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, role: Role) -> tuple[str, Session]:
        """A new session: ``(id for the cookie, session)``; the oldest goes when full."""
        self._expire()
        while len(self._by_id) >= self._max:
            self._by_id.popitem(last=False)
        session_id = secrets.token_urlsafe(ID_BYTES)
        session = Session(
            role=role, csrf=secrets.token_urlsafe(ID_BYTES), expires=self._clock() + self._lifetime
        )
        self._by_id[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of this id, or ``None`` (unknown, expired, malformed)."""
        if not session_id or len(session_id) > 128:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._by_id[session_id]
            return None
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(session_id, None)

    def _expire(self) -> None:
        now = self._clock()
        for session_id in [k for k, s in self._by_id.items() if s.expires <= now]:
            del self._by_id[session_id]


class LoginThrottle:
    """At most ``per_client`` failed logins per client address and ``total`` overall within
    ``window`` seconds; then logins from there (or at all) wait until the window moves on.

    Counted per fixed window start (the first failure), which is coarse but enough: guessing a
    256-bit or even a 20-character token at 5 tries a minute is hopeless.
    """

    def __init__(
        self,
        *,
        per_client: int = 5,
        total: int = 50,
        window: float = 60.0,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_client = per_client
        self._total = total
        self._window = window
        self._max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._overall: tuple[float, int] = (0.0, 0)

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        now = self._clock()
        waits = [0.0]
        start, count = self._overall
        if count >= self._total and now - start < self._window:
            waits.append(self._window - (now - start))
        start, count = self._clients.get(client, (0.0, 0))
        if count >= self._per_client and now - start < self._window:
            waits.append(self._window - (now - start))
        return max(waits)

    def failed(self, client: str) -> None:
        now = self._clock()
        self._overall = self._bump(self._overall, now)
        entry = self._bump(self._clients.pop(client, (0.0, 0)), now)
        self._clients[client] = entry
        while len(self._clients) > self._max_clients:
            self._clients.popitem(last=False)

    def _bump(self, entry: tuple[float, int], now: float) -> tuple[float, int]:
        start, count = entry
        if now - start >= self._window:
            return now, 1
        return start, count + 1
