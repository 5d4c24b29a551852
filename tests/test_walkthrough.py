"""The README's "Watch simulated runs in five minutes", run verbatim.

The ``sh`` blocks of that section are read from README.md and run as a newcomer would: the
blocks of the first terminal one after the other in ONE bash process (so ``&`` and ``kill %1``
behave as they do for a person), the blocks marked ``# in a second terminal`` / ``# in a
third terminal`` on pseudo-terminals of their own, in the background. Between blocks the test
waits for what the section tells the reader to wait for (the daemon's first event lines, its
dead-letter line, the receiver's ``listening on``), then checks what the reader would see.
The environment is the virtualenv's ``PATH`` and an empty ``HOME`` (no credentials, no
configuration of the developer's).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pty_support import PtyProcess
from support import clean_env, run_cli, wait_for

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Watch simulated runs in five minutes"
BLOCK = re.compile(r"^```sh\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
DONE = "__walkthrough_block_done__"
EVENT = re.compile(r"^\d\d:\d\d:\d\d  run ([0-9a-f]{8})  +\S+ → \S+", re.MULTILINE)


def section_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION + "\n")
    end = text.find("\n## ", start + len(SECTION))
    return BLOCK.findall(text[start : end if end >= 0 else len(text)])


class Shell:
    """One bash process fed block after block, as a person types them into one terminal."""

    def __init__(self, *, env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self._buffer = b""
        self.run("set -e")

    def run(self, block: str, *, timeout: float = 60.0) -> str:
        """Run ``block``; its output (stdout and stderr). Fails if a command of it failed."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{block}\necho {DONE}\n".encode())
        self.proc.stdin.flush()
        marker = f"{DONE}\n".encode()
        fd, deadline = self.proc.stdout.fileno(), time.monotonic() + timeout
        while marker not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"block did not finish in {timeout} s:\n{block}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    text = self._buffer.decode(errors="replace")
                    code = self.proc.wait(timeout=10)
                    raise AssertionError(f"block failed (exit {code}):\n{block}\noutput:\n{text}")
                self._buffer += chunk
        done, _, self._buffer = self._buffer.partition(marker)
        return done.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            # The section's last block stops the simulator; if the test failed before it, the
            # shell's session (the simulator in it) goes with the shell.
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)


def _newcomer_env(home: Path) -> dict[str, str]:
    env = clean_env(home)
    env.pop("OMICS_WATCHER_LOGGING__FORMAT")  # a newcomer has none: "auto"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextmanager
def _terminal(block: str, *, env: dict[str, str], cwd: Path) -> Iterator[PtyProcess]:
    """``block`` in a terminal of its own; Ctrl-C (SIGINT to its process group) at the end."""
    term = PtyProcess(["bash", "--norc", "--noprofile", "-c", block], env=env, cwd=cwd)
    try:
        yield term
    finally:
        term.stop(signal.SIGINT, group=True, timeout=30)
        term.close()


def _other_terminal(block: str) -> bool:
    return block.startswith(("# in a second terminal", "# in a third terminal"))


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    blocks = section_blocks()
    assert [b.split("\n", 1)[0] for b in blocks] == [
        "omics-watcher simulate --runs 4 --arrivals 2 --run-seconds 180 > sim.jsonl &",
        "python3 - <<'PY'",
        "grep -oE '[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}' sim.jsonl | head -4 > runs.txt",
        'omics-watcher silence add --match label.team=rnaseq --for 2h --comment "rnaseq rerun"',
        "# in a second terminal:",
        "omics-watcher list",
        "omics-watcher dead-letters",
        "# in a third terminal:",
        "omics-watcher redeliver --all",
        "omics-watcher history $(head -1 runs.txt)",
        "kill %1",
    ], "the walkthrough changed: update this test's steps with it"
    assert [i for i, b in enumerate(blocks) if _other_terminal(b)] == [4, 7]
    # The README's receiver port: anything listening there (a receiver left running after
    # following the README by hand) takes the deliveries the walkthrough shows failing.
    with socket.socket() as probe:
        taken = probe.connect_ex(("127.0.0.1", 8321)) == 0
    assert not taken, "127.0.0.1:8321, the README's receiver port, is in use: stop what listens"
    env = _newcomer_env(tmp_path)
    shell = Shell(env=env, cwd=tmp_path)
    try:
        _walk(shell, blocks, env=env, cwd=tmp_path)
    finally:
        shell.close()


def _walk(shell: Shell, blocks: list[str], *, env: dict[str, str], cwd: Path) -> None:
    (
        simulate,
        config,
        track,
        silence,
        daemon_block,
        look,
        dead,
        receiver_block,
        redeliver,
        history,
        stop,
    ) = blocks

    first = shell.run(simulate)
    assert re.match(r'\{"endpoint": "http://127\.0\.0\.1:\d+", "secret_id": ', first), first

    out = shell.run(config)
    assert '"secret_key": "***"' in out, out
    assert "omics-watcher.toml" in out, out

    out = shell.run(track)
    assert out.count("tracked 2 new, 0 already tracked") == 2, out
    runs = (cwd / "runs.txt").read_text().split()
    assert len(runs) == 4
    genomics, rnaseq = runs[0], runs[3]

    out = shell.run(silence)
    assert "label.team=rnaseq" in out, out
    assert "rnaseq rerun" in out, out

    with _terminal(daemon_block, env=env, cwd=cwd) as daemon:
        daemon.read_until(
            lambda text: {m for m in EVENT.findall(text)} >= {r[:8] for r in runs},
            timeout=60,
            what="an event line for each tracked run",
        )
        out = shell.run(look)
        for run in runs:
            assert run in out, out
        assert "team=genomics" in out, out
        assert "team=rnaseq" in out, out
        assert re.search(r"hook (pending|dead)", out), out  # the genomics run's history
        assert "hook silenced" in out, out  # the RNA-seq run's

        daemon.read_until(
            lambda text: "delivery to hook: " in text and "dead-lettered" in text,
            timeout=60,
            what="the daemon's dead-letter line",
        )
        out = shell.run(dead)
        assert "hook" in out, out
        assert genomics in out or runs[1] in out, out
        letters = run_cli("dead-letters", "--json", env=env, cwd=cwd)
        assert letters.returncode == 0, letters.stderr
        dead_ids = set(re.findall(r'"event_id": "(evt_\w+)"', letters.stdout))
        assert dead_ids

        with _terminal(receiver_block, env=env, cwd=cwd) as receiver:
            receiver.read_until(
                lambda text: "listening on http://127.0.0.1:8321/hook" in text,
                timeout=30,
                what="the receiver to listen",
            )
            out = shell.run(redeliver)
            count = re.search(r"redelivered (\d+)", out)
            assert count is not None, out
            assert int(count.group(1)) >= len(dead_ids), out
            receiver.read_until(
                lambda text: all(i in text for i in dead_ids),
                timeout=60,
                what="every dead letter at the receiver, with its original event id",
            )
            received = [line for line in receiver.text.splitlines() if "received" in line]
            assert all(line.endswith("signature valid") for line in received), receiver.text
            assert not [line for line in received if rnaseq[:8] in line], receiver.text
            # As the reader does, wait for the daemon's next retries to reach the receiver.
            wait_for(
                lambda: _all_delivered(genomics, env=env, cwd=cwd),
                timeout=90,
                what=f"every delivery of {genomics} delivered",
            )
            out = shell.run(history)
            states = re.findall(r"hook (\w+)", out)
            assert states, out
            assert set(states) == {"delivered"}, out
        daemon.read_until(
            lambda text: "delivery to hook recovered" in text,
            timeout=30,
            what="the daemon's recovery line",
        )
    text = daemon.text
    assert text.count("delivery to hook failing:") == 1, text  # a line per problem, not per retry
    assert not [line for line in text.splitlines() if line.startswith("{")], text
    assert "daemon_stopped" in text, text  # Ctrl-C: a clean stop
    assert "Traceback" not in text, text
    assert text.count("silence 1 applies") == 1, text

    shell.run(stop)


def _all_delivered(run: str, *, env: dict[str, str], cwd: Path) -> bool:
    done = run_cli("history", "--json", run, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    states = [d["state"] for e in json.loads(done.stdout) for d in e["deliveries"]]
    return bool(states) and set(states) == {"delivered"}


@pytest.mark.parametrize("block", section_blocks(), ids=lambda b: b.split("\n", 1)[0][:40])
def test_every_block_of_the_walkthrough_is_shell_syntax(block: str) -> None:
    done = subprocess.run(["bash", "-n"], input=block, text=True, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
