"""One daemon per state: a second ``run`` exits 3 naming the first; a SIGKILL frees the state.

The process tests start real ``omics-watcher simulate`` and ``omics-watcher run`` processes
(through ``support.Processes``, killed in teardown) and look only at what a user sees: exit
codes, the one line on stderr, ``list --json``. The in-process tests pin the claim itself.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support import (
    Processes,
    clean_env,
    daemon_config,
    free_port,
    list_runs,
    run_cli,
    start_daemon,
    start_simulator,
    stop,
    write_config,
)

from watcher.store import StateError
from watcher.store.lock import StateInUse, claim_file, claim_state, lock_path


def in_use(state: Path, pid: int) -> str:
    return f"state {state} is in use by another omics-watcher (pid {pid})"


def test_second_run_exits_3_naming_the_first_and_a_sigkill_does_not_block_a_restart(
    tmp_path: Path, procs: Processes
) -> None:
    sim = start_simulator(procs, tmp_path / "sim", "--runs", "3", "--seed", "5")
    port = free_port()
    state = tmp_path / "state.db"
    config = write_config(tmp_path / "watcher.toml", daemon_config(tmp_path, sim=sim, port=port))
    env = clean_env(tmp_path / "home")
    first = start_daemon(procs, config, port=port, env=env, log_name="first.log")
    first.wait_listening()

    # A second daemon on the same state: refused at once, naming the first one's pid.
    second = run_cli("run", "-c", str(config), env=env, cwd=tmp_path, timeout=60)
    assert second.returncode == 3, second.stderr
    assert second.stderr.strip().splitlines()[-1] == in_use(state, first.proc.pid)
    assert first.proc.poll() is None, "the refused daemon must leave the first one running"

    # The one-shot commands keep working beside the running daemon.
    added = run_cli("track", "-c", str(config), *sim.runs, env=env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert sorted(row["run_uuid"] for row in list_runs(config, env=env)) == sorted(sim.runs)

    # SIGKILL: no clean-up runs, yet a restart gets the state at once.
    assert stop(first.proc, signal.SIGKILL, timeout=30) == -signal.SIGKILL
    restarted = start_daemon(procs, config, port=port, env=env, log_name="restarted.log")
    restarted.wait_listening()
    again = run_cli("run", "-c", str(config), env=env, cwd=tmp_path, timeout=60)
    assert again.returncode == 3, again.stderr
    assert again.stderr.strip().splitlines()[-1] == in_use(state, restarted.proc.pid)
    assert stop(restarted.proc, signal.SIGTERM, timeout=30) == 0
    # A clean stop frees it too.
    final = start_daemon(procs, config, port=port, env=env, log_name="final.log")
    final.wait_listening()
    assert stop(final.proc, signal.SIGTERM, timeout=30) == 0


def test_a_claim_names_its_holder_and_ends_when_released(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    claim = claim_file(state, pid=4242)
    with pytest.raises(StateInUse) as refused:
        claim_file(state)
    assert str(refused.value) == f"state {state} is in use by another omics-watcher (pid 4242)"
    assert refused.value.pid == 4242
    claim.release()
    claim.release()  # idempotent
    again = claim_file(state)
    assert Path(lock_path(state)).read_text().strip() == str(os.getpid())
    again.release()
    assert Path(lock_path(state)).read_text() == ""  # nobody's pid once released


def test_a_lock_file_removed_by_hand_is_not_shared_by_two_claimants(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    first = claim_file(state, pid=1)
    os.unlink(lock_path(state))  # the holder's lock now sits on an unnamed file
    second = claim_file(state, pid=2)  # a new file: the second claims it
    with pytest.raises(StateInUse, match=r"\(pid 2\)"):
        claim_file(state)
    first.release()
    second.release()


def test_no_claim_for_memory_and_a_missing_directory_is_a_state_error(tmp_path: Path) -> None:
    with claim_state(":memory:"), claim_state(":memory:"):
        pass
    missing = str(tmp_path / "nowhere" / "state.db")
    with pytest.raises(StateError, match="does not exist"), claim_state(missing):
        pass
