"""The suite's own guard: an async test that leaves tasks behind fails (see ``conftest.py``).

Each case runs a small test file in a fresh pytest process, with this suite's ``conftest.py``
and ``support.py`` beside it and the same asyncio settings as ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).parent

PROBES = """
import asyncio
import gc

import pytest


async def forever() -> None:
    await asyncio.Event().wait()


async def test_leaves_a_task_pending() -> None:
    asyncio.create_task(forever(), name="left-behind")
    await asyncio.sleep(0)


async def test_drops_a_pending_task() -> None:
    never = asyncio.get_running_loop().create_future()

    async def waiter() -> None:
        await never

    asyncio.create_task(waiter())
    await asyncio.sleep(0)
    del never
    gc.collect()  # the task, waiting on nothing anyone holds, is collected while pending
    await asyncio.sleep(0)


async def test_cancels_without_awaiting() -> None:
    task = asyncio.create_task(forever())
    await asyncio.sleep(0)
    task.cancel()  # finishes on the loop's next turn: not a leak


async def test_awaits_its_tasks() -> None:
    task = asyncio.create_task(asyncio.sleep(0.01))
    await task


@pytest.fixture
async def background() -> object:
    return asyncio.create_task(forever(), name="from-a-fixture")


async def test_fixture_leaks(background: object) -> None:
    await asyncio.sleep(0)


def test_sync_tests_are_left_alone() -> None:
    assert asyncio.run(asyncio.sleep(0, "done")) == "done"


def test_zz_leaves_a_loop_marked_running() -> None:
    # What a sync Playwright does between its calls: a session-scoped browser fixture left
    # its loop so for every later test of the worker.
    asyncio._set_running_loop(asyncio.new_event_loop())


async def test_zz_async_after_a_loop_left_running() -> None:
    pass


def test_zzz_clears_it() -> None:
    asyncio._set_running_loop(None)
"""


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("guard")
    shutil.copy(HERE / "conftest.py", root / "conftest.py")
    shutil.copy(HERE / "support.py", root / "support.py")
    (root / "pytest.ini").write_text(
        textwrap.dedent(
            """\
            [pytest]
            asyncio_mode = auto
            asyncio_default_fixture_loop_scope = function
            """
        )
    )
    (root / "test_probes.py").write_text(PROBES)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-rA"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.stdout + done.stderr


def result_of(outcome: str, test: str) -> list[str]:
    """The short-summary words for ``test``: ``PASSED`` and/or ``ERROR``."""
    return sorted(
        line.split()[0] for line in outcome.splitlines() if line.split()[1:2] == [probe_id(test)]
    )


def probe_id(test: str) -> str:
    return f"test_probes.py::{test}"


def test_a_task_left_pending_fails_the_test_and_names_its_coroutine(outcome: str) -> None:
    assert result_of(outcome, "test_leaves_a_task_pending") == ["ERROR", "PASSED"], outcome
    assert "1 asyncio task(s) left pending: left-behind: forever" in outcome


def test_a_task_dropped_while_pending_fails_the_test(outcome: str) -> None:
    assert result_of(outcome, "test_drops_a_pending_task") == ["ERROR", "PASSED"], outcome
    assert "task dropped while pending" in outcome


def test_a_fixture_that_leaks_fails_the_test_using_it(outcome: str) -> None:
    assert result_of(outcome, "test_fixture_leaks") == ["ERROR", "PASSED"], outcome
    assert "from-a-fixture: forever" in outcome


def test_an_async_test_after_a_loop_left_running_fails_naming_the_cause(outcome: str) -> None:
    assert result_of(outcome, "test_zz_async_after_a_loop_left_running") == ["ERROR"], outcome
    assert "an event loop is marked running in this thread before this async test" in outcome


@pytest.mark.parametrize(
    "test",
    ["test_cancels_without_awaiting", "test_awaits_its_tasks", "test_sync_tests_are_left_alone"],
)
def test_clean_tests_pass(outcome: str, test: str) -> None:
    assert result_of(outcome, test) == ["PASSED"], outcome
