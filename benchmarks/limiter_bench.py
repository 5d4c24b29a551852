"""How close to the 20/s budget the real client gets, and never over it, as the server sees it.

200 concurrent callers call GetRunStatus through one PacingLimiter(20) for --seconds against
the simulator (in this process; its counters are exact arrival times). Prints the sustained
rate over the steady part of the run and the largest number of requests the server saw in
any 1 s window.

    .venv/bin/python benchmarks/limiter_bench.py [--seconds 30] [--callers 200] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp

from watcher.omics.client import OmicsClient
from watcher.omics.credentials import Credential, StaticProvider
from watcher.omics.limiter import PacingLimiter
from watcher.simulator import SimulatorConfig, running_simulator


async def main(seconds: float, callers: int, rate: float) -> dict[str, float]:
    config = SimulatorConfig(runs=100, kinds={"forever": 1.0}, rate_limit=int(rate))
    async with running_simulator(config) as sim, aiohttp.ClientSession() as session:
        limiter = PacingLimiter(rate)
        client = OmicsClient(
            session=session,
            endpoint=sim.endpoint,
            region="ap-guangzhou",
            credentials=StaticProvider(Credential(sim.secret_id, sim.secret_key), name="bench"),
            limiters={"default": limiter},
            timeout=10,
        )
        runs = sim.run_uuids
        done = 0

        async def caller(i: int) -> None:
            nonlocal done
            while True:
                await client.get_run_status(runs[i % len(runs)])
                done += 1

        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(caller(i)) for i in range(callers)]
        await asyncio.sleep(2)  # warm-up: connections opened, queue full
        start_done, start = done, loop.time()
        await asyncio.sleep(seconds)
        sustained = (done - start_done) / (loop.time() - start)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stats = sim.stats(timeline=False)
    return {
        "rate_limit": rate,
        "callers": callers,
        "seconds": seconds,
        "sustained_per_second": round(sustained, 2),
        "fraction_of_budget": round(sustained / rate, 4),
        "max_in_any_1s_window": stats["max_window_arrivals"]["GetRunStatus"],
        "throttled": stats["throttled_total"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(main(args.seconds, args.callers, args.rate))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
