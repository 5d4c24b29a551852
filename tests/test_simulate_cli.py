"""``omics-watcher simulate`` as a newcomer meets it: help on every option with its default,
``--duration`` ending the simulator, ``--arrivals`` adding runs that DescribeRuns lists and
stdout announces, and default runs slow enough to write a configuration before they finish."""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import time
from pathlib import Path

import aiohttp
from support import WATCHER, Processes, Simulator, clean_env, make_client, processes, stop

from watcher.cli import build_parser
from watcher.cli_simulate import simulator_config
from watcher.simulator import Simulator as SimCore
from watcher.simulator.config import SimulatorConfig


def _simulate_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = sub.choices["simulate"]
    return found


def test_every_simulate_option_has_help_with_its_default() -> None:
    parser = _simulate_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} >= {"duration", "arrivals", "run_seconds", "runs", "seed"}
    for action in options:
        assert action.help, action.option_strings
        assert "(default:" in action.help, action.option_strings
    text = parser.format_help()
    assert "the simulator's lifetime" in text
    assert "exits 0" in text
    assert "--arrivals PER_MINUTE" in text
    assert "(default: 300.0)" in text  # --run-seconds


def test_default_runs_leave_a_minute_before_the_first_finishes() -> None:
    args = _simulate_parser().parse_args([])
    config = simulator_config(args)
    now = [0.0]
    sim = SimCore(config, monotonic=lambda: now[0])
    assert len(sim.run_uuids) == 10
    now[0] = 60.0
    assert not [u for u in sim.run_uuids if sim.snapshot(u).terminal]
    now[0] = args.run_seconds + 0.1
    assert all(sim.snapshot(u).terminal for u in sim.run_uuids)
    # --run-seconds 14 is the simulator's own lifecycle (what the other tests use).
    short = simulator_config(_simulate_parser().parse_args(["--run-seconds", "14"]))
    base = SimulatorConfig()
    assert (short.queued_seconds, short.initializing_seconds, short.running_seconds) == (
        base.queued_seconds,
        base.initializing_seconds,
        base.running_seconds,
    )


def _spawn(tmp_path: Path, procs: Processes, *args: str) -> subprocess.Popen[bytes]:
    return procs.spawn(
        [*WATCHER, "simulate", "--host", "127.0.0.1", *args],
        env=clean_env(tmp_path),
        cwd=tmp_path,
        log=tmp_path / "simulator.log",
        stdout_pipe=True,
    )


def _lines(proc: subprocess.Popen[bytes], count: int, timeout: float) -> list[str]:
    """The first ``count`` lines of ``proc``'s stdout (fewer if it ends first)."""
    assert proc.stdout is not None
    fd, buffer = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while buffer.count(b"\n") < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
    return buffer.decode().splitlines()[:count]


def test_duration_is_the_lifetime_then_exit_0(tmp_path: Path) -> None:
    with processes() as procs:
        proc = _spawn(tmp_path, procs, "--runs", "2", "--duration", "2")
        first = json.loads(_lines(proc, 1, timeout=30)[0])
        assert set(first) == {"endpoint", "secret_id", "secret_key", "runs"}
        assert proc.wait(timeout=30) == 0  # by itself, no signal
        assert proc.stdout is not None
        assert proc.stdout.read() == b""


async def test_arrivals_add_runs_that_describe_runs_lists_and_stdout_announces(
    tmp_path: Path,
) -> None:
    with processes() as procs:
        proc = _spawn(tmp_path, procs, "--runs", "1", "--arrivals", "120", "--run-seconds", "600")
        lines = _lines(proc, 4, timeout=60)
        assert len(lines) == 4, lines
        first = json.loads(lines[0])
        assert set(first) == {"endpoint", "secret_id", "secret_key", "runs"}
        announced = [json.loads(line) for line in lines[1:]]
        for item in announced:
            assert set(item) == {"new_run", "project_id", "run_group_id", "created_at"}
        new = [item["new_run"] for item in announced]
        assert len(set(new)) == 3
        assert not set(new) & set(first["runs"])
        sim = Simulator(proc=proc, announced=first, log=tmp_path / "simulator.log")
        async with aiohttp.ClientSession() as session:
            client = make_client(sim, session)
            total, runs = await client.describe_runs()
        listed = {r.RunUuid: r for r in runs}
        assert total >= 4
        assert set(new) <= set(listed)
        assert all(listed[u].Status == "QUEUED" for u in new[:1])
        assert stop(proc, timeout=15) == 0
