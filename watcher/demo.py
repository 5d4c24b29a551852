"""``omics-watcher demo``: the whole pipeline on one machine, in under a minute.

A simulated Omics account (the project's simulator, speaking the real signed protocol),
the daemon polling it at one poll per run per second, and a local webhook receiver that
checks each delivery's Standard Webhooks signature. Transitions print as they are
recorded, deliveries as they arrive; the demo stops by itself once every run has finished
and every event reached the receiver (or after a minute). Everything listens on 127.0.0.1
and lives in a temporary directory.
"""

from __future__ import annotations

import asyncio
import base64
import os
import tempfile
from pathlib import Path
from typing import TextIO

from watcher.app import Wiring, run_daemon
from watcher.config import Settings
from watcher.events import Event
from watcher.receiver import Receiver, serving
from watcher.service.console import event_line
from watcher.simulator import SimulatorConfig, running_simulator
from watcher.store import TrackRequest
from watcher.store.api import open_async_store

DEMO_LIMIT_SECONDS = 60.0
GHOST_RUN = "00000000-0000-4000-8000-00000000dead"  # tracked, but unknown to the API


async def run_demo(*, stop: asyncio.Event, out: TextIO) -> int:
    """Run the demo; returns 0 when every transition was recorded and delivered."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    receiver = Receiver(secret)
    recorded: list[Event] = []
    finished: set[str] = set()
    config = SimulatorConfig(
        runs=6,
        seed=2026,
        outcomes={"SUCCESS": 3, "EXECUTOR_ERROR": 1, "CANCELED": 1},
        unknown_status="PAUSED_BY_ADMIN",
        unknown_fraction=0.4,
    )
    daemon_stop = asyncio.Event()

    def on_event(event: Event) -> None:
        recorded.append(event)
        out.write(event_line(event, f"{loop.time() - started:5.1f}s") + "\n")
        out.flush()
        if event.terminal or event.type == "run.not_found":
            finished.add(event.run_uuid)

    with tempfile.TemporaryDirectory(prefix="omics-watcher-demo-") as tmp:
        async with running_simulator(config) as sim, serving(receiver) as hook_url:
            runs = [*sim.run_uuids, GHOST_RUN]
            state = Path(tmp) / "demo.db"
            store = await open_async_store(path=state)
            try:
                await store.track(TrackRequest(u, sim.project_id, {"demo": "yes"}) for u in runs)
            finally:
                await store.close()
            settings = Settings(
                tencentcloud={
                    "endpoint": sim.endpoint,
                    "secret_id": sim.secret_id,
                    "secret_key": sim.secret_key,
                    "project_id": sim.project_id,
                },
                polling={"interval_seconds": 1.0},
                state={"path": state},
                server={"listen": "127.0.0.1:0"},
                notifiers=[
                    {"name": "demo-hook", "type": "webhook", "url": hook_url, "secret": secret}
                ],
            )
            out.write(
                f"omics-watcher demo: {len(runs)} runs on a simulated Omics API at {sim.endpoint}\n"
                f"(one of them, {GHOST_RUN[:8]}, does not exist); events go to a signed webhook "
                f"at {hook_url}\n\n"
            )
            out.flush()
            daemon = asyncio.create_task(
                run_daemon(settings, stop=daemon_stop, environ={}, wiring=Wiring(on_event=on_event))
            )

            def all_delivered() -> bool:
                return len(finished) == len(runs) and all(
                    e.id in receiver.received for e in recorded
                )

            while not all_delivered() and not stop.is_set() and not daemon.done():
                if loop.time() - started > DEMO_LIMIT_SECONDS:
                    break
                receiver.arrived.clear()
                await asyncio.wait([asyncio.ensure_future(receiver.arrived.wait())], timeout=0.5)
            daemon_stop.set()
            await daemon
    valid = sum(receiver.received.values())
    out.write(
        f"\n{len(recorded)} events recorded; {len(receiver.received)} delivered to the webhook, "
        f"{valid} with a valid signature. Done in {loop.time() - started:.0f} s.\n"
    )
    ok = all_delivered() and valid == len(receiver.received)
    if not ok:
        out.write("The demo did not complete; see the log lines above.\n")
    return 0 if ok else 1
