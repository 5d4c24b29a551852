"""Shared test switches and fixtures.

- ``--run-slow`` runs the long fault and end-to-end tests too;
- ``session``, ``clock``, ``store``, ``simulator`` and ``client``: the pieces most tests
  build on (plain helpers such as :func:`support.make_client` are in ``support.py``);
- ``procs``: the child processes (simulators, daemons) an end-to-end test starts;
- ``pg_cluster``, ``pg_url`` and ``pg_empty_url``: a real PostgreSQL 15 for the PostgreSQL
  backend, a fresh database per test (``pg.py``);
- ``browser`` and ``context``: Chromium for the UI tests, one per module, and a fresh profile
  per test (``ui_support.py``);
- every async test fails when it leaves asyncio tasks pending on its loop: a task nobody
  awaits or cancels hides errors and outlives the thing it was working for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import pytest_asyncio
from pytest_asyncio import is_async_test
from support import FakeClock, Processes, make_client, processes

from watcher.omics.client import OmicsClient
from watcher.simulator import Simulator, SimulatorConfig, running_simulator
from watcher.store import Store
from watcher.store.api import SqliteStore

if TYPE_CHECKING:  # imported when first needed: test_conftest copies this file alone
    from pg import Cluster
    from playwright.sync_api import Browser, BrowserContext


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run tests marked slow (the full fault-injection suite)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# -- shared fixtures ------------------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client session for the test, closed at its end."""
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture
def procs() -> Iterator[Processes]:
    """The test's child processes (simulators, daemons): any still alive at its end are
    killed by pid, so a failing test leaves none behind."""
    with processes() as registry:
        yield registry


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says so."""
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh state file in ``tmp_path``, on the real clock."""
    with Store.open(tmp_path / "state.db") as opened:
        yield opened


@pytest.fixture
def state(store: Store) -> SqliteStore:
    """The ``store`` fixture's file as the daemon's components see it: the
    :class:`~watcher.store.api.AsyncStore` adapter over it (the test may still read and
    write ``store`` directly; both are the same connection)."""
    return SqliteStore(store)


@pytest.fixture
async def simulator(request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    """The in-process simulator on 127.0.0.1: an empty account unless the test passes a
    :class:`SimulatorConfig` with ``@pytest.mark.parametrize("simulator", [...],
    indirect=True)``."""
    config = getattr(request, "param", None) or SimulatorConfig(runs=0)
    async with running_simulator(config) as running:
        yield running


@pytest.fixture
def client(simulator: Simulator, session: aiohttp.ClientSession) -> OmicsClient:
    """The real Omics client against :func:`simulator` (one 20/s limiter)."""
    return make_client(simulator, session)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL 15 cluster for this pytest process (one per xdist worker),
    started when a test first needs it and removed at the end (see ``pg.py``)."""
    from pg import Cluster

    cluster = Cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh database with the PostgreSQL state's schema, as a URL; dropped afterwards."""
    with pg_cluster.database(pg_cluster.migrated_template()) as url:
        yield url


@pytest.fixture
def pg_empty_url(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh, empty database (no schema), as a URL; dropped afterwards."""
    with pg_cluster.database() as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium under Playwright, one per test module (see ``ui_support.chromium``);
    Playwright is imported only by the modules that ask for it."""
    from ui_support import chromium

    with chromium() as launched:
        yield launched


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies, no storage) for one test."""
    from ui_support import fresh_context

    with fresh_context(browser) as opened:
        yield opened


# -- no task left behind --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_task_left_behind(request: pytest.FixtureRequest) -> None:
    """Every async test on its own (function-scoped) loop ends with no task of its own left.

    Sync tests have no loop to leak on; a test on a wider loop shares it with other tests.
    An async test finding an event loop marked running in its thread fails at once, naming
    the usual cause: pytest-asyncio could neither run it nor close its loop ("Cannot run the
    event loop while another loop is running" at teardown).
    """
    if not is_async_test(request.node):
        return
    if asyncio._get_running_loop() is not None:
        pytest.fail(
            "an event loop is marked running in this thread before this async test: a sync "
            "Playwright still alive (it marks its loop running between calls; a browser "
            "fixture must end with its module) or a loop an earlier test left running",
            pytrace=False,
        )
    marker = request.node.get_closest_marker("asyncio")
    scope = marker.kwargs.get("loop_scope") if marker is not None else None
    scope = scope or request.config.getini("asyncio_default_test_loop_scope") or "function"
    if scope == "function":
        request.getfixturevalue(_tasks_checked.__name__)


# A task cancelled but not yet awaited gets this many loop turns to finish its cleanup.
_SETTLE_TURNS = 5


@pytest_asyncio.fixture(loop_scope="function")
async def _tasks_checked() -> AsyncIterator[None]:
    """Fails the test when tasks are still pending on its loop once everything else (the
    test and its other fixtures) has finished; the teardown's own task is pytest-asyncio's.
    The leftovers are then cancelled, so one leak does not spill into later output. A task
    dropped while still pending (garbage-collected, never finished) fails the test too."""
    loop = asyncio.get_running_loop()
    dropped: list[str] = []

    def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        task = context.get("task")
        if isinstance(task, asyncio.Task) and "destroyed but it is pending" in str(
            context.get("message")
        ):
            dropped.append(describe_task(task))
        loop.default_exception_handler(context)

    loop.set_exception_handler(on_error)
    yield
    for _ in range(_SETTLE_TURNS):
        await asyncio.sleep(0)
    loop.set_exception_handler(None)
    mine = asyncio.current_task()
    leaked = [task for task in asyncio.all_tasks() if task is not mine and not task.done()]
    described = sorted(describe_task(task) for task in leaked)
    for task in leaked:
        task.cancel()
    await asyncio.gather(*leaked, return_exceptions=True)
    problems = [f"task dropped while pending: {task}" for task in dropped]
    if leaked:
        problems.insert(0, f"{len(leaked)} asyncio task(s) left pending: " + "; ".join(described))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def describe_task(task: asyncio.Task[Any]) -> str:
    """``name: coroutine (where it is suspended)``."""
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", repr(coro))
    frame = getattr(coro, "cr_frame", None)
    where = f" at {frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else ""
    return f"{task.get_name()}: {name}{where}"
