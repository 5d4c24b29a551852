"""The notifier contract: the protocol every destination implements, its two failure classes,
and the rate each kind of destination accepts.

A notifier turns one :class:`~watcher.events.Event` into one delivery attempt and reports the
outcome by returning (delivered) or raising :class:`Retryable` / :class:`Permanent`. It never
sleeps, retries, paces or times itself out: :mod:`watcher.delivery.dispatcher` owns all of that,
so every
destination follows the same rules (Alertmanager's retry stage, not a loop in each plugin).

Invariant: a failure's ``reason`` is safe to log and to show; it never holds a URL's secret
parts, a signing secret, a password or a token (see :mod:`watcher.notifiers.http`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from watcher.events import Event


class NotifyError(Exception):
    """A delivery attempt failed; ``reason`` is redacted, one line, safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Retryable(NotifyError):
    """Worth another attempt later (408, 429, 5xx, network, timeout, a chat API's rate limit).

    ``retry_after`` is the destination's own wish in seconds (``Retry-After``, Discord's
    ``retry_after``), or ``None``; the dispatcher waits at least that long.
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Permanent(NotifyError):
    """Retrying the same request cannot help (other 4xx, redirects, a refused message)."""


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` requests in any ``period`` seconds, at most ``burst`` back to back.

    ``burst`` spreads a full period's worth out: after ``burst`` quick requests the next ones
    come every ``period / limit`` seconds. ``None`` means the whole ``limit`` may go at once.
    """

    limit: int
    period: float
    burst: int | None = None

    def __post_init__(self) -> None:
        if self.limit < 1 or self.period <= 0 or (self.burst is not None and self.burst < 1):
            raise ValueError("a rate needs limit >= 1, period > 0 and burst >= 1")

    def windows(self) -> tuple[tuple[int, float], ...]:
        """The sliding windows that enforce this rate: ``(count, seconds)`` pairs."""
        if self.burst is None or self.burst >= self.limit:
            return ((self.limit, self.period),)
        return ((self.limit, self.period), (self.burst, self.burst * self.period / self.limit))


def rate_per_minute(per_minute: float) -> tuple[Rate, ...]:
    """A user's ``rate_per_minute`` override: evenly spaced sends, no burst."""
    if per_minute <= 0:
        raise ValueError("rate_per_minute must be positive")
    return (Rate(limit=1, period=60.0 / per_minute),)


class Notifier(Protocol):
    """One configured destination."""

    name: str
    kind: str

    async def send(self, event: Event) -> None:
        """Deliver ``event`` once; raise :class:`Retryable` or :class:`Permanent` on failure."""
        ...
