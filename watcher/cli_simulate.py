"""``omics-watcher simulate``: the local Omics API simulator as a command.

Kept apart from :mod:`watcher.cli` because its options are many and only about the simulator.
The defaults are for a person trying the watcher by hand: runs take up to five minutes
(``--run-seconds 300``), so there is time to write a configuration and track them before they
finish, and ``--arrivals`` keeps new runs coming for as long as the simulator lives. Tests and
benchmarks ask for short runs (``--run-seconds 14`` is the simulator's own default lifecycle).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

DEFAULT_RUN_SECONDS = 300.0


def simulator_config(args: argparse.Namespace) -> Any:
    """The :class:`~watcher.simulator.SimulatorConfig` the parsed ``simulate`` options ask for;
    ``ValueError`` naming what is wrong."""
    from watcher.simulator import SimulatorConfig
    from watcher.simulator.config import phase_ranges

    if args.duration is not None and args.duration <= 0:
        raise ValueError("--duration must be > 0 seconds")
    if args.arrivals < 0:
        raise ValueError("--arrivals must be >= 0")
    if args.run_seconds <= 0:
        raise ValueError("--run-seconds must be > 0")
    queued, initializing, running = phase_ranges(args.run_seconds)
    return SimulatorConfig(
        runs=args.runs,
        seed=args.seed,
        fault_rate=args.fault_rate,
        runs_per_group=args.runs_per_group,
        group_spread_seconds=args.group_spread,
        list_lag_seconds=args.list_lag,
        rtt_ms=args.rtt_ms,
        jitter_ms=args.jitter_ms,
        uplink_share=args.uplink_share,
        queued_seconds=queued,
        initializing_seconds=initializing,
        running_seconds=running,
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    from watcher.cli import EXIT_OK, EXIT_USAGE, Exit, _run_async
    from watcher.simulator import serve

    try:
        config = simulator_config(args)
    except ValueError as exc:
        raise Exit(EXIT_USAGE, f"simulate: {exc}") from None

    async def main(stop: asyncio.Event) -> int:
        await serve(
            config,
            host=args.host,
            port=args.port,
            stop=stop,
            out=sys.stdout,
            duration=args.duration,
            arrivals_per_minute=args.arrivals,
        )
        return EXIT_OK

    return _run_async(main)


_DESCRIPTION = """\
Serve a local, protocol-faithful Omics API (TC3-signed requests, GetRunStatus, DescribeRuns,
GetRunCalls, GetRunJobLog) with simulated runs. The first line on standard output is one JSON
object: {"endpoint": "http://HOST:PORT", "secret_id": "...", "secret_key": "...", "runs":
["uuid", ...]}; with --arrivals, each new run is announced on a line of its own, {"new_run":
"uuid", "project_id": "...", "run_group_id": "...", "created_at": "..."}. It serves until
SIGTERM/SIGINT or the end of --duration, then exits 0; nothing it simulated is kept."""


def add_parser(sub: Any, command: Callable[..., Any]) -> None:
    """Register ``simulate`` on the subparsers ``sub`` (``command`` is cli.build_parser's)."""
    p = command("simulate", cmd_simulate, "serve a local Omics API simulator")
    p.description = _DESCRIPTION
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    opt = p.add_argument
    opt("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    opt("--port", type=int, default=0, help="port; 0 = any free port (default: %(default)s)")
    opt(
        "--runs",
        type=int,
        default=10,
        metavar="N",
        help="runs created at the start (default: %(default)s)",
    )
    opt("--seed", type=int, default=1, help="seed of every random draw (default: %(default)s)")
    opt(
        "--run-seconds",
        type=float,
        default=DEFAULT_RUN_SECONDS,
        metavar="SECONDS",
        help="how long a run takes at most from QUEUED to its outcome; each takes between a "
        "fifth and all of it, QUEUED and INITIALIZING first (default: %(default)s)",
    )
    opt(
        "--arrivals",
        type=float,
        default=0.0,
        metavar="PER_MINUTE",
        help="submit this many new runs a minute, evenly spaced, for as long as the simulator "
        "lives; each appears in DescribeRuns and is announced on stdout "
        "(default: %(default)s, none)",
    )
    opt(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the simulator's lifetime: after SECONDS it stops serving and exits 0, as on "
        "SIGTERM, and its runs are gone (default: none, serve until SIGTERM/SIGINT)",
    )
    _api_options(p)


def _api_options(p: argparse.ArgumentParser) -> None:
    """How the simulated API behaves: faults, groups, lag and network."""
    opt = p.add_argument
    opt(
        "--fault-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="share of API requests (0-1) answered with a fault: InternalError, HTTP 502, a "
        "slow answer or a dropped connection (default: %(default)s)",
    )
    opt(
        "--runs-per-group",
        type=int,
        default=50,
        metavar="N",
        help="runs per run group (RunGroupId) among the initial runs (default: %(default)s)",
    )
    opt(
        "--group-spread",
        type=float,
        default=None,
        metavar="SECONDS",
        help="runs of one group share durations and change within SECONDS of each other "
        "(default: none, each run on its own)",
    )
    opt(
        "--list-lag",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="DescribeRuns shows runs as they were SECONDS ago (default: %(default)s)",
    )
    opt(
        "--rtt-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="simulated network round trip per API request (default: %(default)s)",
    )
    opt(
        "--jitter-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="± on the round trip (default: %(default)s)",
    )
    opt(
        "--uplink-share",
        type=float,
        default=0.5,
        metavar="F",
        help="part of the round trip before the server counts the request (0-1) "
        "(default: %(default)s)",
    )
