"""Starting and stopping a simulator on a TCP port.

:func:`running_simulator` is for tests and benchmarks (an async context manager on a free
port); :func:`serve` is for the CLI (one JSON line on ``out``, then serve until ``stop`` is set
or ``duration`` elapses). Both bind before announcing, so the endpoint they give is already
accepting connections, and both close the listener and pending handlers on exit (within
``shutdown_timeout`` seconds; slow-answer faults are cut short).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TextIO

from aiohttp import web

from watcher.simulator.config import SimulatorConfig
from watcher.simulator.simulator import Simulator
from watcher.tasks import wait_set


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@contextlib.asynccontextmanager
async def running_simulator(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    monotonic: Callable[[], float] | None = None,
    wall: Callable[[], float] | None = None,
    shutdown_timeout: float = 1.0,
) -> AsyncIterator[Simulator]:
    """Serve a new :class:`Simulator` on ``host:port`` (0 = a free port) for the block."""
    clocks = {} if wall is None else {"wall": wall}
    sim = Simulator(config, monotonic=monotonic, **clocks)
    runner = web.AppRunner(
        sim.app(), access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        sim.bind(f"http://{_url_host(host)}:{bound_port}")
        yield sim
    finally:
        await runner.cleanup()


async def serve(
    config: SimulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    stop: asyncio.Event,
    out: TextIO,
    duration: float | None = None,
    arrivals_per_minute: float = 0.0,
) -> None:
    """Print ``{"endpoint", "secret_id", "secret_key", "runs"}`` as one JSON line on ``out``,
    then serve until ``stop`` is set or ``duration`` seconds passed.

    With ``arrivals_per_minute`` > 0 a new run is submitted every ``60 / arrivals_per_minute``
    seconds (the first one that long after the start) and announced as one JSON line
    ``{"new_run", "project_id", "run_group_id", "created_at"}``.
    Raises ``OSError`` when the address cannot be bound (before printing anything).
    """
    async with running_simulator(config, host, port) as sim:
        line = {
            "endpoint": sim.endpoint,
            "secret_id": sim.secret_id,
            "secret_key": sim.secret_key,
            "runs": sim.run_uuids,
        }
        if sim.token is not None:
            line["token"] = sim.token
        out.write(json.dumps(line) + "\n")
        out.flush()
        arrivals = None
        if arrivals_per_minute > 0:
            arrivals = asyncio.create_task(_arrive(sim, 60.0 / arrivals_per_minute, out))
        try:
            await wait_set(stop, duration)
        finally:
            if arrivals is not None:
                arrivals.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await arrivals


async def _arrive(sim: Simulator, every: float, out: TextIO) -> None:
    """Submit a run every ``every`` seconds and announce it on ``out``, until cancelled."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        due += every
        await asyncio.sleep(max(0.0, due - loop.time()))
        run_uuid = sim.submit_run()
        announced = {
            "new_run": run_uuid,
            "project_id": sim.project_of(run_uuid),
            "run_group_id": sim.group_of(run_uuid),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        out.write(json.dumps(announced) + "\n")
        out.flush()
