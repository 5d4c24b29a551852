"""How close to the 20/s budget the real client gets at real latency, and never over it, as the
server sees it: the old window rule beside the new one, in the same run.

200 concurrent callers call GetRunStatus through one PacingLimiter(20) for --seconds against
the simulator (in this process; its counters are exact arrival times) behind its simulated
network: round trip 0, 40 and 150 ms (± 10 ms of jitter where the round trip allows it), and
at 150 ms the asymmetric routes (uplink share 0.1 and 0.9). Each network is measured with
the old rule ("the request ``rate`` grants earlier completed more than 1 s ago",
``latency_credit=False``) and the new one (that completion less the fastest round trip seen
plus a margin; the argument is in watcher/omics/limiter.py), in alternating order. Per row:
the sustained rate over the steady part (after a warm-up that also covers the new rule's
samples), the largest number of requests the server saw arrive in any 1 s window, and how
many it throttled. The load average is printed before each row: the machine is shared.
``--group`` is the limiter's group (default: the daemon's GetRunStatus limiter's,
``watcher.polling.common.STATUS_GROUP``; ``--group 1`` grants one request per wake-up).

    .venv/bin/python benchmarks/limiter_bench.py [--seconds 20] [--callers 200] [--sim-process]
        [--group N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # benchmarks/ is not a package: found through the path above

from watcher.omics.client import OmicsClient
from watcher.omics.credentials import Credential, StaticProvider
from watcher.omics.limiter import PacingLimiter
from watcher.polling.common import STATUS_GROUP
from watcher.simulator import Simulator, SimulatorConfig, running_simulator

WARMUP_SECONDS = 5.0  # connections open, queue full, the new rule's 20 + 50 samples taken


@dataclass(frozen=True)
class Network:
    rtt_ms: float
    jitter_ms: float
    uplink_share: float = 0.5

    @property
    def label(self) -> str:
        text = f"{self.rtt_ms:g} ± {self.jitter_ms:g} ms"
        return text if self.uplink_share == 0.5 else f"{text}, uplink {self.uplink_share:g}"


NETWORKS = (
    Network(0, 0),
    Network(40, 10),
    Network(150, 10),
    Network(150, 10, 0.1),
    Network(150, 10, 0.9),
)
RULES = {"old": False, "new": True}  # rule name -> latency_credit


class Server(Protocol):
    endpoint: str
    secret_id: str
    secret_key: str
    runs: list[str]

    def stats(self) -> dict[str, Any]: ...


class InProcess:
    def __init__(self, sim: Simulator) -> None:
        self.endpoint, self.secret_id, self.secret_key = sim.endpoint, sim.secret_id, sim.secret_key
        self.runs = sim.run_uuids
        self._sim = sim

    def stats(self) -> dict[str, Any]:
        return self._sim.stats(timeline=False)


class ChildServer:
    def __init__(self, sim: common.Sim) -> None:
        self.endpoint, self.secret_id, self.secret_key = sim.endpoint, sim.secret_id, sim.secret_key
        self.runs = sim.runs
        self._sim = sim

    def stats(self) -> dict[str, Any]:
        return self._sim.stats()


async def measure(
    network: Network,
    *,
    new_rule: bool,
    seconds: float,
    callers: int,
    rate: float,
    apart: bool,
    group: int,
) -> dict[str, Any]:
    config = SimulatorConfig(
        runs=100,
        kinds={"forever": 1.0},
        rate_limit=int(rate),
        rtt_ms=network.rtt_ms,
        jitter_ms=network.jitter_ms,
        uplink_share=network.uplink_share,
    )
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        if apart:  # the simulator in its own process: the client's loop serves nobody else
            child = stack.enter_context(common.simulator(dataclasses.asdict(config)))
            server: Server = ChildServer(child)
        else:
            server = InProcess(await stack.enter_async_context(running_simulator(config)))
        limiter = PacingLimiter(rate, latency_credit=new_rule, group=group)
        client = OmicsClient(
            session=session,
            endpoint=server.endpoint,
            region="ap-guangzhou",
            credentials=StaticProvider(
                Credential(server.secret_id, server.secret_key), name="bench"
            ),
            limiters={"default": limiter},
            timeout=10,
        )
        runs = server.runs
        done = 0

        async def caller(i: int) -> None:
            nonlocal done
            while True:
                await client.get_run_status(runs[i % len(runs)])
                done += 1

        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(caller(i)) for i in range(callers)]
        await asyncio.sleep(WARMUP_SECONDS)
        start_done, start = done, loop.time()
        await asyncio.sleep(seconds)
        sustained = (done - start_done) / (loop.time() - start)
        credit = limiter.credit
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stats = server.stats()
    return {
        "network": network.label,
        "rtt_ms": network.rtt_ms,
        "jitter_ms": network.jitter_ms,
        "uplink_share": network.uplink_share,
        "rule": "new" if new_rule else "old",
        "group": group,
        "sustained_per_second": round(sustained, 2),
        "fraction_of_budget": round(sustained / rate, 4),
        "max_in_any_1s_window": stats["max_window_arrivals"]["GetRunStatus"],
        "throttled": stats["throttled_total"],
        "credit_ms": round(credit * 1000, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


async def main(
    seconds: float, callers: int, rate: float, *, apart: bool, quiet: bool, group: int
) -> dict[str, Any]:
    rows = []
    for index, network in enumerate(NETWORKS):
        order = list(RULES.items()) if index % 2 == 0 else list(reversed(RULES.items()))
        for _name, credit in order:
            row = await measure(
                network,
                new_rule=credit,
                seconds=seconds,
                callers=callers,
                rate=rate,
                apart=apart,
                group=group,
            )
            rows.append(row)
            if not quiet:
                print(
                    f"{row['network']:>28} {row['rule']:>3}: "
                    f"{row['sustained_per_second']:6.2f}/s, worst 1 s window "
                    f"{row['max_in_any_1s_window']}, throttled {row['throttled']}, "
                    f"credit {row['credit_ms']} ms, load {row['loadavg_1m']}",
                    flush=True,
                )
    return {
        "rate_limit": rate,
        "callers": callers,
        "group": group,
        "seconds": seconds,
        "simulator": "own process" if apart else "in process",
        "rows": rows,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument(
        "--sim-process",
        action="store_true",
        help="serve the simulator from its own process (default: in this one, as the tests do)",
    )
    parser.add_argument("--group", type=int, default=STATUS_GROUP, help="requests per grant")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(
        main(
            args.seconds,
            args.callers,
            args.rate,
            apart=args.sim_process,
            quiet=args.json,
            group=args.group,
        )
    )
    if args.json:
        print(json.dumps(result))
