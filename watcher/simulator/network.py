"""A simulated network between a client and the simulator: per-request delays with jitter.

Why: a client-side rate limiter that counts from *completions* pays one round trip per window
of requests, which only shows against a server that is far away. The simulator plays that
distance itself, so a benchmark can measure a limiter at 0, 40 or 150 ms RTT on loopback.

Model: each API request draws its own uplink and downlink delay. The round trip ``rtt_ms``
is split ``uplink_share`` / ``1 - uplink_share`` (0.5: symmetric; 1.0: all on the way in),
and each direction gets its share of ``jitter_ms`` as a uniform draw in ``[-share, +share]``,
so a round trip lies within ``rtt_ms ± jitter_ms`` and no delay is ever negative. The HTTP
layer sleeps the uplink delay *before* the request reaches the protocol core (so the rate limit
counts it at its arrival, as Tencent does) and the downlink delay after the answer is ready.
Draws come from a seeded RNG owned by the instance; only ``POST /`` is delayed, never the
``/_sim/`` hooks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from watcher.simulator.config import network_problems


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """Milliseconds; all zero means no delay at all (not even a zero-length sleep)."""

    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    uplink_share: float = 0.5

    def __post_init__(self) -> None:
        problems = network_problems(self.rtt_ms, self.jitter_ms, self.uplink_share)
        if problems:
            raise ValueError("; ".join(problems))

    def as_dict(self) -> dict[str, float]:
        return {
            "rtt_ms": self.rtt_ms,
            "jitter_ms": self.jitter_ms,
            "uplink_share": self.uplink_share,
        }


class Network:
    """Draws ``(uplink, downlink)`` delays in seconds for one request at a time."""

    def __init__(self, settings: NetworkSettings, *, seed: int) -> None:
        self.settings = settings
        self._rng = random.Random(f"network:{seed}")

    def delays(self) -> tuple[float, float]:
        s = self.settings
        if s.rtt_ms <= 0:
            return 0.0, 0.0
        up_share, down_share = s.uplink_share, 1.0 - s.uplink_share
        uniform = self._rng.uniform
        up = up_share * (s.rtt_ms + uniform(-s.jitter_ms, s.jitter_ms))
        down = down_share * (s.rtt_ms + uniform(-s.jitter_ms, s.jitter_ms))
        return max(0.0, up) / 1000.0, max(0.0, down) / 1000.0
