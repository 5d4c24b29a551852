"""CPU per signed GetRunStatus call: omics-watcher's client vs the official Tencent Cloud SDK.

Both clients call the same simulator, which runs in a *separate process* with its rate limit
lifted, so only the client side is measured: ``time.process_time()`` of this process over N
calls (sign + send + receive + parse), after a warm-up. Rounds alternate between clients and
the median round is reported, to damp noise from the machine.

Peers:

- ``ours``: :class:`watcher.omics.client.OmicsClient` on one aiohttp session, with a
  pass-through limiter (the SDK has none), and again with the real ``PacingLimiter`` at a
  lifted rate, to show what the limiter itself costs;
- ``sdk-async``: ``tencentcloud.omics.v20221128.omics_client_async.OmicsClient`` (httpx),
  when ``httpx`` is importable (``tencentcloud-sdk-python-common[async]``); the reference;
- ``sdk-sync``: the SDK's requests-based client, in a worker thread (``asyncio.to_thread``),
  since that is how an asyncio program would otherwise use it.

Each SDK client runs twice: with ``HttpProfile(keepAlive=True)`` (connection reuse, like our
shared aiohttp session; the fair comparison) and with its default ``keepAlive=False`` (a new
TCP connection per call, what users get out of the box).

Usage::

    .venv/bin/python benchmarks/client_bench.py [--calls 2000] [--rounds 3] [--concurrency 1]
        [--no-sync] [--sdk-as-installed]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from watcher.omics.client import OmicsClient
from watcher.omics.credentials import Credential, StaticProvider
from watcher.omics.limiter import PacingLimiter

_CHILD = """
import asyncio, signal, sys
from watcher.simulator.config import SimulatorConfig
from watcher.simulator.running import serve

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    config = SimulatorConfig(runs=50, seed=7, rate_limit=1_000_000_000)
    await serve(config, stop=stop, out=sys.stdout)

asyncio.run(main())
"""


@dataclass
class Simulator:
    endpoint: str
    secret_id: str
    secret_key: str
    runs: list[str]


@contextlib.contextmanager
def simulator_process() -> Any:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        yield Simulator(line["endpoint"], line["secret_id"], line["secret_key"], line["runs"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class NullLimiter:
    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        yield

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._slot()

    def throttled(self) -> None:
        pass


Call = Callable[[str], Awaitable[str]]


@dataclass
class Result:
    name: str
    calls: int
    cpu: list[float]  # per round, seconds
    wall: list[float]

    @property
    def cpu_us(self) -> float:
        return statistics.median(self.cpu) / self.calls * 1e6

    @property
    def rate(self) -> float:
        return self.calls / statistics.median(self.wall)


async def run_calls(call: Call, runs: list[str], calls: int, concurrency: int) -> None:
    counter = iter(range(calls))

    async def worker() -> None:
        for index in counter:
            status = await call(runs[index % len(runs)])
            if not status:
                raise RuntimeError("empty status")

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())


@contextlib.asynccontextmanager
async def ours(sim: Simulator, *, pacing: bool) -> AsyncIterator[Call]:
    limiter: Any = PacingLimiter(1e6) if pacing else NullLimiter()
    async with aiohttp.ClientSession() as session:
        client = OmicsClient(
            session=session,
            endpoint=sim.endpoint,
            region="ap-guangzhou",
            credentials=StaticProvider(Credential(sim.secret_id, sim.secret_key), name="bench"),
            limiters={"default": limiter},
            timeout=10.0,
        )

        async def call(run_uuid: str) -> str:
            return (await client.get_run_status(run_uuid)).Status

        yield call


def _sdk_profile(sim: Simulator, *, keep_alive: bool) -> Any:
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile

    scheme, _, host = sim.endpoint.partition("://")
    http = HttpProfile(protocol=scheme, endpoint=host, reqTimeout=10, keepAlive=keep_alive)
    return ClientProfile(httpProfile=http)


@contextlib.asynccontextmanager
async def sdk_async(sim: Simulator, *, keep_alive: bool) -> AsyncIterator[Call]:
    from tencentcloud.common.credential import Credential as SdkCredential
    from tencentcloud.omics.v20221128 import models
    from tencentcloud.omics.v20221128.omics_client_async import OmicsClient as SdkAsync

    client = SdkAsync(
        SdkCredential(sim.secret_id, sim.secret_key),
        "ap-guangzhou",
        _sdk_profile(sim, keep_alive=keep_alive),
    )
    try:

        async def call(run_uuid: str) -> str:
            request = models.GetRunStatusRequest()
            request.RunUuid = run_uuid
            response = await client.GetRunStatus(request)
            return str(response.Metadata.Status)

        yield call
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def sdk_sync(sim: Simulator, *, keep_alive: bool) -> AsyncIterator[Call]:
    from tencentcloud.common.credential import Credential as SdkCredential
    from tencentcloud.omics.v20221128 import models
    from tencentcloud.omics.v20221128.omics_client import OmicsClient as SdkSync

    client = SdkSync(
        SdkCredential(sim.secret_id, sim.secret_key),
        "ap-guangzhou",
        _sdk_profile(sim, keep_alive=keep_alive),
    )

    def blocking(run_uuid: str) -> str:
        request = models.GetRunStatusRequest()
        request.RunUuid = run_uuid
        return str(client.GetRunStatus(request).Metadata.Status)

    async def call(run_uuid: str) -> str:
        return await asyncio.to_thread(blocking, run_uuid)

    yield call


def has_httpx() -> bool:
    try:
        import httpx  # noqa: F401
    except ImportError:
        return False
    return True


def spare_the_sdk_a_failed_import() -> bool:
    """Make ``import sniffio`` fail from the module cache instead of searching the disk.

    httpcore tries ``import sniffio`` on every request; anyio 4.x no longer installs it, and
    each failed import walks ``sys.path`` (several hundred µs per call here). That is what the
    SDK costs as installed, but it is an accident of packaging, not of the SDK's design, so by
    default the benchmark removes it (``--sdk-as-installed`` keeps it). Returns whether it did.
    """
    if importlib.util.find_spec("sniffio") is not None:
        return False
    sys.modules["sniffio"] = None  # type: ignore[assignment]
    return True


async def measure(
    name: str,
    factory: Callable[[], contextlib.AbstractAsyncContextManager[Call]],
    sim: Simulator,
    *,
    calls: int,
    warmup: int,
    concurrency: int,
    result: Result | None,
) -> Result:
    async with factory() as call:
        await run_calls(call, sim.runs, warmup, concurrency)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await run_calls(call, sim.runs, calls, concurrency)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    result = result or Result(name, calls, [], [])
    result.cpu.append(cpu)
    result.wall.append(wall)
    return result


async def bench(args: argparse.Namespace) -> None:
    with simulator_process() as sim:
        peers: list[tuple[str, Callable[[], contextlib.AbstractAsyncContextManager[Call]]]] = [
            ("ours", lambda: ours(sim, pacing=False)),
            ("ours+PacingLimiter", lambda: ours(sim, pacing=True)),
        ]
        if has_httpx() and not args.sdk_as_installed and spare_the_sdk_a_failed_import():
            print("sniffio is not installed: its failed import is cached for the SDK's sake")
        if has_httpx():
            peers.append(("sdk-async keep-alive", lambda: sdk_async(sim, keep_alive=True)))
            peers.append(("sdk-async default", lambda: sdk_async(sim, keep_alive=False)))
        else:
            print("httpx missing: the SDK's async client cannot run; sdk-sync only")
        if not args.no_sync:
            peers.append(("sdk-sync keep-alive", lambda: sdk_sync(sim, keep_alive=True)))
            peers.append(("sdk-sync default", lambda: sdk_sync(sim, keep_alive=False)))
        results: dict[str, Result] = {}
        for _ in range(args.rounds):
            for name, factory in peers:
                results[name] = await measure(
                    name,
                    factory,
                    sim,
                    calls=args.calls,
                    warmup=args.warmup,
                    concurrency=args.concurrency,
                    result=results.get(name),
                )
    print(
        f"GetRunStatus against the simulator (separate process), {args.calls} calls x "
        f"{args.rounds} rounds, concurrency {args.concurrency}, median round; "
        f"Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}"
    )
    # The reference is the SDK at its cheapest: its async client with connection reuse on.
    reference = results.get("sdk-async keep-alive") or results.get("sdk-sync keep-alive")
    header = f"vs {reference.name}" if reference else ""
    print(f"{'client':<22}{'CPU µs/call':>14}{'calls/s':>10}  {header}")
    for result in results.values():
        ratio = f"{result.cpu_us / reference.cpu_us:.2f}x" if reference else ""
        print(f"{result.name:<22}{result.cpu_us:>14.1f}{result.rate:>10.0f}  {ratio}")
    if reference is not None:
        print(
            f"ratio ours / {reference.name}: {results['ours'].cpu_us / reference.cpu_us:.2f} "
            f"(with PacingLimiter: {results['ours+PacingLimiter'].cpu_us / reference.cpu_us:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--no-sync", action="store_true", help="skip the SDK's sync client")
    parser.add_argument(
        "--sdk-as-installed",
        action="store_true",
        help="let httpcore search the disk for sniffio on every request, as installed",
    )
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
