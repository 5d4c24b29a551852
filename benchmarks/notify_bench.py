"""Outbox → webhook throughput and transition-to-delivery latency.

10,000 events (by default) are recorded in a fresh state file exactly as the poller records
them (one transaction each: event + outbox row), and the real
:class:`watcher.delivery.dispatcher.Dispatcher`
delivers them with the real webhook notifier (Standard Webhooks signing on) to a local aiohttp
receiver running in a *separate process*, so the receiver's CPU does not count against the
dispatcher's.

Two phases:

- ``backlog``: all events are in the outbox before the dispatcher starts; reports
  deliveries/s (first to last receipt);
- ``stream``: events are recorded at a steady ``--rate`` while the dispatcher runs, each
  followed by ``notify()`` as the poller does; reports latency from the event's timestamp
  (the transition being recorded) to its receipt at the receiver: p50, p99, max.

Usage::

    .venv/bin/python benchmarks/notify_bench.py [--events 10000] [--rate 500]
        [--phase backlog|stream|both] [--in-flight 8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from pydantic import TypeAdapter

from watcher.delivery.dispatcher import Dispatcher, Policy
from watcher.events import Event, new_event_id
from watcher.notifiers.registry import NotifierSettings, build_notifier
from watcher.store import Store
from watcher.store.api import SqliteStore

SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()

_RECEIVER = """
import asyncio, json, sys, time
from datetime import datetime
from aiohttp import web

received = {}

async def hook(request):
    body = json.loads(await request.read())
    now = time.time()
    sent = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).timestamp()
    received.setdefault(request.headers["webhook-id"], (now, now - sent))
    return web.Response(status=204)

async def stats(request):
    return web.json_response({"count": len(received), "items": list(received.values())})

async def reset(request):
    received.clear()
    return web.Response(status=204)

async def main():
    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def quiet_logs() -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(40),  # errors only
        cache_logger_on_first_use=True,
    )


def record(store: Store, index: int) -> None:
    now = datetime.now(UTC)
    event = Event(
        type="run.status_changed",
        id=new_event_id(now),
        timestamp=now,
        data={
            "run_uuid": f"run-{index:06d}",
            "project_id": "prj-bench",
            "previous_status": "RUNNING",
            "status": "SUCCESS",
            "terminal": True,
            "observed_at": now.isoformat(),
            "labels": {"bench": "notify"},
            "metadata": {"Status": "SUCCESS", "StartTime": "2026-01-01T00:00:00Z"},
        },
    )
    store.record_event(event, notifiers=["hook"])


async def stats(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/stats") as response:
        result: dict[str, Any] = await response.json()
        return result


async def wait_for(session: aiohttp.ClientSession, base: str, count: int) -> dict[str, Any]:
    while True:
        current = await stats(session, base)
        if current["count"] >= count:
            return current
        await asyncio.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def phase(
    name: str, *, events: int, rate: float, in_flight: int, base: str, folder: Path
) -> None:
    store = Store.open(folder / f"{name}.db")
    logger = structlog.get_logger()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/reset"):
            pass
        raw = {"name": "hook", "type": "webhook", "url": f"{base}/hook", "secret": SECRET}
        settings = TypeAdapter(NotifierSettings).validate_python(raw)
        notifier = build_notifier(settings, session=session, logger=logger)
        dispatcher = Dispatcher(
            store=SqliteStore(store),
            notifiers={"hook": notifier},
            policies={"hook": Policy(max_in_flight=in_flight)},
            logger=logger,
        )
        if name == "backlog":
            started = time.perf_counter()
            for index in range(events):
                record(store, index)
            print(f"[backlog] recorded {events} events in {time.perf_counter() - started:.2f} s")
            cpu = time.process_time()
            task = asyncio.create_task(dispatcher.run())
            result = await wait_for(session, base, events)
            cpu = time.process_time() - cpu
            times = [item[0] for item in result["items"]]
            span = max(times) - min(times)
            print(
                f"[backlog] delivered {result['count']} in {span:.2f} s: "
                f"{result['count'] / span:.0f} deliveries/s "
                f"(dispatcher process CPU {cpu:.2f} s, {1000 * cpu / events:.2f} ms/delivery)"
            )
        else:
            task = asyncio.create_task(dispatcher.run())
            interval = 1.0 / rate
            loop = asyncio.get_running_loop()
            started = loop.time()
            for index in range(events):
                target = started + index * interval
                delay = target - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                record(store, index)
                dispatcher.notify()
            offered = events / (loop.time() - started)
            result = await wait_for(session, base, events)
            latencies = [item[1] * 1000 for item in result["items"]]
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            print(
                f"[stream] {events} events at {offered:.0f}/s offered: transition-to-delivery "
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms, "
                f"mean {statistics.fmean(latencies):.1f} ms"
            )
        await dispatcher.stop(asyncio.get_running_loop().time() + 5)
        await task
        pending, _ = store.outbox_stats(now=datetime.now(UTC))
        print(f"[{name}] outbox pending afterwards: {pending}")
    store.close()


async def main(args: argparse.Namespace) -> None:
    quiet_logs()
    receiver = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as folder:
            phases = ["backlog", "stream"] if args.phase == "both" else [args.phase]
            for name in phases:
                await phase(
                    name,
                    events=args.events,
                    rate=args.rate,
                    in_flight=args.in_flight,
                    base=base,
                    folder=Path(folder),
                )
    finally:
        receiver.terminate()
        receiver.wait(5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0, help="stream phase: events/s")
    parser.add_argument("--phase", choices=["backlog", "stream", "both"], default="both")
    parser.add_argument(
        "--in-flight", type=int, default=Policy().max_in_flight, help="concurrent sends"
    )
    asyncio.run(main(parser.parse_args()))
