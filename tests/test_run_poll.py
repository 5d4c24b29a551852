"""One poll of one run, shared by both pollers: the classifier every Omics outcome goes
through (the whole table, class by class), and a crashed batch follow-up's retry."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence

import pytest
import structlog
from support import now

from watcher.omics import errors
from watcher.omics.client import OmicsClient
from watcher.omics.errors import (
    AuthError,
    BadRequest,
    ClockSkew,
    OmicsError,
    RunNotFound,
    Throttled,
    TokenExpired,
    Transient,
    classify,
    is_permission_refusal,
)
from watcher.omics.models import RunMetadata, RunsFilter, RunSummary
from watcher.polling.batch import BatchOptions, BatchPoller
from watcher.polling.run_poll import Action, action_for, pause_reason
from watcher.recorder import Recorder
from watcher.simulator import Simulator, SimulatorConfig
from watcher.sink import EventSink
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore

TERMINAL = frozenset({"SUCCESS", "EXECUTOR_ERROR", "CANCELED"})

TABLE: dict[type[OmicsError], Action] = {
    OmicsError: Action.BACK_OFF,  # a code nobody placed: never fatal
    Transient: Action.BACK_OFF,
    Throttled: Action.RETRY_NOW,
    AuthError: Action.PAUSE,
    ClockSkew: Action.PAUSE,
    TokenExpired: Action.PAUSE,
    RunNotFound: Action.NOT_FOUND,
    BadRequest: Action.BAD_REQUEST,
}


def test_the_table_covers_every_error_class_the_client_raises() -> None:
    declared = {
        cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, OmicsError)
    }
    assert declared == set(TABLE)


@pytest.mark.parametrize(("cls", "action"), TABLE.items(), ids=lambda v: getattr(v, "__name__", v))
def test_each_error_class_maps_to_its_action(cls: type[OmicsError], action: Action) -> None:
    assert action_for(cls("Some.Code", "message")) is action


def test_success_is_answered() -> None:
    assert action_for(None) is Action.ANSWERED


@pytest.mark.parametrize(
    ("code", "action"),
    [
        ("RequestLimitExceeded", Action.RETRY_NOW),
        ("RequestLimitExceeded.UinLimitExceeded", Action.RETRY_NOW),
        ("AuthFailure.SignatureExpire", Action.PAUSE),
        ("AuthFailure.TokenFailure", Action.PAUSE),
        ("AuthFailure.SecretIdNotFound", Action.PAUSE),
        ("UnauthorizedOperation", Action.PAUSE),
        ("OperationDenied.AccountIsolated", Action.PAUSE),
        ("ResourceNotFound.RunNotExist", Action.NOT_FOUND),
        ("InvalidParameterValue.ProjectId", Action.BAD_REQUEST),
        ("MissingParameter", Action.BAD_REQUEST),
        ("InternalError", Action.BACK_OFF),
        ("ResourceUnavailable", Action.BACK_OFF),
        ("Never.HeardOfIt", Action.BACK_OFF),
    ],
)
def test_tencent_codes_end_in_the_action_the_api_table_gives(code: str, action: Action) -> None:
    assert action_for(classify(code)) is action


def test_pause_reason_names_clock_skew() -> None:
    assert pause_reason(classify("AuthFailure.SignatureExpire")) == (
        "clock skew: AuthFailure.SignatureExpire"
    )
    assert pause_reason(classify("AuthFailure.SecretIdNotFound")) == "AuthFailure.SecretIdNotFound"


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        ("UnauthorizedOperation", True),
        ("UnauthorizedOperation.NoPermission", True),
        ("OperationDenied", True),
        ("AuthFailure.UnauthorizedOperation", True),
        ("AuthFailure.SignatureFailure", False),
        ("AuthFailure.TokenFailure", False),
        ("InternalError", False),
    ],
)
def test_permission_refusals_are_told_from_bad_credentials(code: str, refused: bool) -> None:
    assert is_permission_refusal(code) is refused


class BuggyAfterAnswer:
    """The real client, except that a bug of ours strikes each time GetRunStatus has answered
    for one run (so the simulator counts every request the poller sends for it), and
    DescribeRuns leaves that run out (the batch poller records listed runs from the list, so
    only a missing one is asked with a GetRunStatus follow-up)."""

    def __init__(self, client: OmicsClient, run_uuid: str) -> None:
        self._client = client
        self._run_uuid = run_uuid

    async def get_run_status(self, run_uuid: str, project_id: str = "") -> RunMetadata:
        metadata = await self._client.get_run_status(run_uuid, project_id)
        if run_uuid == self._run_uuid:
            raise RuntimeError("a bug, not an API error")
        return metadata

    async def describe_runs(
        self,
        *,
        project_id: str = "",
        filters: Sequence[RunsFilter] = (),
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[RunSummary]]:
        total, runs = await self._client.describe_runs(
            project_id=project_id, filters=filters, limit=limit, offset=offset
        )
        return total, [run for run in runs if run.RunUuid != self._run_uuid]


async def poll_for(poller: BatchPoller, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 10)


@pytest.mark.parametrize(
    "simulator", [SimulatorConfig(runs=3, seed=1, kinds={"forever": 1.0})], indirect=True
)
async def test_a_batch_follow_up_that_crashes_retries_its_run_after_crash_retry(
    simulator: Simulator, client: OmicsClient, store: Store
) -> None:
    # As the per-run scheduler does: the run stays watched, retried every crash_retry_seconds,
    # neither dropped nor asked again at every DescribeRuns cycle (4 a second here).
    buggy, *others = simulator.run_uuids
    store.track(TrackRequest(u, simulator.project_id) for u in simulator.run_uuids)
    recorder = Recorder(
        store=SqliteStore(store),
        sink=EventSink(store=SqliteStore(store), route=lambda e: []),
        terminal=TERMINAL,
        wall_clock=now,
    )
    poller = BatchPoller(
        store=SqliteStore(store),
        source=BuggyAfterAnswer(client, buggy),
        recorder=recorder,
        options=BatchOptions(interval_seconds=0.25, terminal=TERMINAL, crash_retry_seconds=1.0),
        wall_clock=now,
    )
    with structlog.testing.capture_logs() as logs:
        await poll_for(poller, 3.2)
    asked = simulator.stats(timeline=False)["polls"].get(buggy, 0)
    # Retried (at ~0 s, ~1 s, ~2 s, perhaps ~3 s; a busy machine may fit fewer), never more
    # often than crash_retry_seconds allows: with no pause it was asked 13 times here.
    assert 2 <= asked <= 4, asked
    crashed = [e for e in logs if e["event"] == "poll_crashed"]
    assert len(crashed) == asked
    assert {e["run_uuid"] for e in crashed} == {buggy}
    for run_uuid in others:  # the others were observed as usual
        run = store.get_run(run_uuid)
        assert run is not None
        assert run.status == simulator.status(run_uuid)
