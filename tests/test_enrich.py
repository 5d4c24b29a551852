"""Failure enrichment: pure helpers, then the daemon's pieces against the simulator.

The simulator's failed runs list their calls with GetRunCalls (root tasks, a nested,
scattered sub-workflow) and answer GetRunJobLog with a stderr ending in the error line; the
tests compare what the enricher found with the simulator's own plan of where the run failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import support
from support import daemon_task, now, serve_hook

from watcher.config import Settings
from watcher.connect import build_limiters
from watcher.enrich import EnrichLimits, FailureEnricher, error_text, tail
from watcher.events import Event
from watcher.notifiers.render import message_for, plain_text
from watcher.omics.client import OmicsClient
from watcher.omics.limiter import PacingLimiter
from watcher.omics.models import RunMetadata
from watcher.polling.per_run import Scheduler, SchedulerOptions
from watcher.recorder import Recorded, Recorder
from watcher.simulator import Simulator, SimulatorConfig, running_simulator
from watcher.simulator.calls import plan_of
from watcher.sink import EventSink
from watcher.statuses import Statuses, StatusOptions
from watcher.store import Store, TrackRequest
from watcher.store.api import SqliteStore

TERMINAL = frozenset(Settings().polling.terminal)
STATUSES = Statuses(StatusOptions(terminal=TERMINAL))
FAILING = STATUSES.failing
ERROR_LINE = "java.lang.OutOfMemoryError: Java heap space"


# -- pure helpers ---------------------------------------------------------------------------


def test_failing_statuses_are_the_terminal_failures() -> None:
    # PREEMPTED is a warning (watcher.statuses says why): not enriched, as it is not shown ❌.
    assert {"EXECUTOR_ERROR", "SYSTEM_ERROR", "COMPLETE_ERROR", "FAILED"} == FAILING


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ""),
        ("", ""),
        ("{}", ""),
        ("[]", ""),
        ('[{"message": "Task wf.a:1:1 failed", "causedBy": []}]', "Task wf.a:1:1 failed"),
        (
            '[{"message": "Workflow failed", "causedBy": '
            '[{"message": "\\n  Job wf.b:0:1 exited with code 137\\nmore", "causedBy": []}]}]',
            "Job wf.b:0:1 exited with code 137",
        ),
        ('[{"message": "Workflow failed", "causedBy": [{"causedBy": []}]}]', "Workflow failed"),
        ('{"message": "boom"}', "boom"),
        ("plain text error\nsecond line", "plain text error"),
        ("[not json", "[not json"),
    ],
)
def test_error_text(raw: str | None, expected: str) -> None:
    assert error_text(raw) == expected


def test_tail_keeps_whole_lines_within_the_budget() -> None:
    text = "".join(f"line {i:03d}\n" for i in range(100))  # 9 bytes a line
    out = tail(text, 50)
    assert len(out.encode()) <= 50
    assert out.endswith("line 099")
    assert out.startswith("line ")  # cut at a line boundary
    assert tail("short\n\n", 50) == "short"
    assert tail("x" * 100, 10) == "x" * 10  # one long line: its end
    assert tail("abc", 0) == ""
    # Never half a character: "é" is 2 bytes.
    assert tail("é" * 10, 5) == "éé"


# -- against the simulator --------------------------------------------------------------------


def make_client(
    sim: Simulator,
    session: aiohttp.ClientSession,
    *,
    limiters: Mapping[str, PacingLimiter] | None = None,
    timeout: float = 5.0,
) -> OmicsClient:
    """The shared client builder with the daemon's default limiters unless given."""
    if limiters is None:
        limiters = build_limiters(Settings())
    return support.make_client(sim, session, limiters=limiters, timeout=timeout)


def failing_runs(sim: Simulator, count: int, *, running: float = 1.0) -> list[str]:
    return [
        sim.submit_run(kind="finishing", outcome="EXECUTOR_ERROR", durations=(0.1, 0.1, running))
        for _ in range(count)
    ]


def expected_task(sim: Simulator, run_uuid: str) -> tuple[str, bool]:
    """``(".short[shard]" or ".short", nested)`` for where the simulator made the run fail."""
    plan = plan_of(sim.snapshot(run_uuid))
    assert plan.fail_call is not None
    suffix = f".{plan.fail_call.short}"
    if plan.fail_shard >= 0:
        suffix += f"[{plan.fail_shard}]"
    return suffix, plan.fail_call.nested


async def run_daemon_pieces(
    store: Store,
    client: OmicsClient,
    recorder: Recorder,
    runs: list[str],
    *,
    deadline: float = 20.0,
    terminal: frozenset[str] = TERMINAL,
) -> None:
    """Scheduler + recorder + client until every run reached a terminal status and every
    failure's details were looked up (its held deliveries released)."""
    scheduler = Scheduler(
        store=SqliteStore(store),
        source=client,
        recorder=recorder,
        options=SchedulerOptions(
            interval_seconds=0.3,
            rate_per_second=20,
            request_timeout_seconds=5,
            terminal=terminal,
            drain_seconds=1,
        ),
        wall_clock=now,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        async with asyncio.timeout(deadline):
            while True:
                stored = [store.get_run(u) for u in runs]
                if all(r is not None and r.terminal for r in stored):
                    break
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task
        await recorder.drain()


class TimedRecorder(Recorder):
    """The real recorder, noting how long each ``status_changed`` took."""

    durations: list[float]

    async def status_changed(
        self,
        run_uuid: str,
        project_id: str,
        previous_status: str | None,
        status: str,
        metadata: Mapping[str, Any],
    ) -> Recorded:
        started = time.monotonic()
        try:
            return await super().status_changed(
                run_uuid, project_id, previous_status, status, metadata
            )
        finally:
            self.durations.append(time.monotonic() - started)


def make_recorder(
    store: Store,
    enricher: FailureEnricher | None,
    sink: list[Event],
    durations: list[float],
    *,
    terminal: frozenset[str] = TERMINAL,
) -> Recorder:
    recorder = TimedRecorder(
        store=SqliteStore(store),
        sink=EventSink(
            store=SqliteStore(store), route=lambda event: ["hook"], on_event=[sink.append]
        ),
        terminal=terminal,
        wall_clock=now,
        enricher=enricher,
    )
    recorder.durations = durations
    return recorder


async def test_failed_runs_carry_task_message_and_stderr_tail(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with running_simulator(SimulatorConfig(runs=0, seed=7)) as sim:
        runs = failing_runs(sim, 8)
        store = Store.open(tmp_path / "state.db")
        store.track([TrackRequest(u) for u in runs])
        client = make_client(sim, session)
        enricher = FailureEnricher(client=client, statuses=STATUSES)
        events: list[Event] = []
        durations: list[float] = []
        recorder = make_recorder(store, enricher, events, durations)
        await run_daemon_pieces(store, client, recorder, runs)

        nested = 0
        for run_uuid in runs:
            (final,) = [
                e
                for e in store.events(run_uuid=run_uuid)
                if e.status == "EXECUTOR_ERROR" and e.type == "run.status_changed"
            ]
            failure = final.data["failure"]
            suffix, is_nested = expected_task(sim, run_uuid)
            nested += is_nested
            assert failure["task"].endswith(suffix), (failure, suffix)
            assert "exited with return code 137" in failure["message"]
            assert "\n" not in failure["message"]
            assert failure["stderr_tail"], failure
            assert failure["stderr_tail"].splitlines()[-1].endswith(ERROR_LINE)
            assert len(failure["stderr_tail"].encode()) <= 4096
            assert "metadata_file_note" not in failure
            # What the webhook notifier will post is the stored outbox event, byte for byte.
            pending = {d.event.id: d.event for d in store.pending_deliveries("hook", limit=1000)}
            assert pending[final.id].data["failure"] == failure
            # And what chat/email renderers show.
            text = plain_text(message_for(final))
            assert failure["message"] in text
            assert ERROR_LINE in text
        # The walk went into the scattered sub-workflow at least once (seeded: 6 of 8 runs).
        assert nested >= 1
        # Non-failing transitions carry failure: null.
        others = [e for e in events if e.status != "EXECUTOR_ERROR"]
        assert others
        assert all(e.data["failure"] is None for e in others)
        stats = sim.stats(timeline=False)
        assert stats["requests"]["GetRunCalls"] >= len(runs)
        assert stats["requests"]["GetRunJobLog"] == len(runs)
        store.close()


async def test_enrichment_failing_still_records_promptly(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """GetRunCalls throttled every time: the event goes out at once, without details."""
    async with running_simulator(SimulatorConfig(runs=0, seed=3)) as sim:
        sim.set_rate_limit(0, action="GetRunCalls")  # every GetRunCalls is refused
        runs = failing_runs(sim, 3)
        store = Store.open(tmp_path / "state.db")
        store.track([TrackRequest(u) for u in runs])
        client = make_client(sim, session)
        enricher = FailureEnricher(client=client, statuses=STATUSES)
        events: list[Event] = []
        durations: list[float] = []
        recorder = make_recorder(store, enricher, events, durations)
        await run_daemon_pieces(store, client, recorder, runs)

        for run_uuid in runs:
            (final,) = [e for e in store.events(run_uuid=run_uuid) if e.status == "EXECUTOR_ERROR"]
            failure = final.data["failure"]
            assert failure["task"] == ""
            assert failure["stderr_tail"] == ""
            # The run-level ErrorMessage still gives the reason.
            assert "exited with return code 137" in failure["message"]
        assert max(durations) < 2.0, durations
        stats = sim.stats(timeline=False)
        assert stats["throttled"]["GetRunCalls"] >= len(runs)
        assert stats["requests"]["GetRunJobLog"] == 0
        store.close()


async def test_slow_calls_limiter_is_cut_by_the_timeout(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """A calls budget of one request per 30 s: enrichment gives up after its timeout."""
    async with running_simulator(SimulatorConfig(runs=0, seed=3)) as sim:
        runs = failing_runs(sim, 2)
        store = Store.open(tmp_path / "state.db")
        store.track([TrackRequest(u) for u in runs])
        limiters = build_limiters(Settings())
        calls = PacingLimiter(1 / 30)
        limiters.update({"GetRunCalls": calls, "GetRunJobLog": calls})
        client = make_client(sim, session, limiters=limiters)
        enricher = FailureEnricher(
            client=client, statuses=STATUSES, limits=EnrichLimits(timeout=0.5)
        )
        events: list[Event] = []
        durations: list[float] = []
        recorder = make_recorder(store, enricher, events, durations)
        started = time.monotonic()
        await run_daemon_pieces(store, client, recorder, runs)
        # Status polling was never held up by the starved calls limiter.
        assert time.monotonic() - started < 8

        for run_uuid in runs:
            (final,) = [e for e in store.events(run_uuid=run_uuid) if e.status == "EXECUTOR_ERROR"]
            failure = final.data["failure"]
            assert set(failure) >= {"task", "message", "stderr_tail"}
            assert failure["stderr_tail"] == ""
        assert max(durations) < 0.5 + 0.5, durations
        assert sim.stats(timeline=False)["requests"]["GetRunJobLog"] == 0
        store.close()


async def test_enricher_direct_and_no_calls_note(session: aiohttp.ClientSession) -> None:
    async with running_simulator(SimulatorConfig(runs=0, seed=11)) as sim:
        (run_uuid,) = failing_runs(sim, 1, running=0.3)
        await asyncio.sleep(1.0)
        client = make_client(sim, session)
        metadata = (await client.get_run_status(run_uuid)).raw
        assert metadata["Status"] == "EXECUTOR_ERROR"
        enricher = FailureEnricher(
            client=client, statuses=STATUSES, limits=EnrichLimits(tail_bytes=60)
        )
        failure = await enricher.failure(run_uuid, "", metadata)
        suffix, _ = expected_task(sim, run_uuid)
        assert failure["task"].endswith(suffix)
        assert failure["stderr_tail"].endswith(ERROR_LINE[-20:])
        assert len(failure["stderr_tail"].encode()) <= 60

    class NoCalls:
        async def get_run_calls(
            self, run_uuid: str, project_id: str = "", path: str = "/"
        ) -> list[RunMetadata]:
            return []

        async def get_run_job_log(
            self,
            run_uuid: str,
            job_id: str,
            log_type: str = "stderr",
            project_id: str = "",
            path: str = "",
        ) -> str:
            raise AssertionError("no job to read")

    failure = await FailureEnricher(client=NoCalls(), statuses=STATUSES).failure(
        "r", "", {"ErrorMessage": "nextflow exited with 1"}
    )
    assert failure["task"] == ""
    assert failure["message"] == "nextflow exited with 1"
    assert "GetRunMetadataFile" in failure["metadata_file_note"]


class Exploding:
    """A fault no server produces: the client itself raising something unexpected."""

    calls = 0

    async def get_run_calls(
        self, run_uuid: str, project_id: str = "", path: str = "/"
    ) -> list[RunMetadata]:
        self.calls += 1
        raise RuntimeError("bug")

    async def get_run_job_log(
        self,
        run_uuid: str,
        job_id: str,
        log_type: str = "stderr",
        project_id: str = "",
        path: str = "",
    ) -> str:
        raise RuntimeError("bug")


async def test_unexpected_errors_never_reach_the_recorder(tmp_path: Path) -> None:
    source = Exploding()
    enricher = FailureEnricher(client=source, statuses=STATUSES)
    store = Store.open(tmp_path / "state.db")
    store.track([TrackRequest("11111111-1111-4111-8111-111111111111")])
    events: list[Event] = []
    recorder = Recorder(
        store=SqliteStore(store),
        sink=EventSink(store=SqliteStore(store), route=lambda e: [], on_event=[events.append]),
        terminal=TERMINAL,
        wall_clock=now,
        enricher=enricher,
    )
    run = "11111111-1111-4111-8111-111111111111"
    await recorder.status_changed(run, "", None, "RUNNING", {"Status": "RUNNING"})
    assert source.calls == 0  # not failing: no enrichment at all
    recorded = await recorder.status_changed(
        run, "", "RUNNING", "SYSTEM_ERROR", {"Status": "SYSTEM_ERROR", "ErrorMessage": "{}"}
    )
    assert recorded.event is not None
    await recorder.drain()  # the details are added to the stored event, same id
    (stored_event,) = store.events(limit=1, run_uuid=run)
    assert stored_event.id == recorded.event.id
    assert stored_event.data["failure"] == {"task": "", "message": "", "stderr_tail": ""}
    assert source.calls == 1
    assert [e.status for e in events] == ["RUNNING", "SYSTEM_ERROR"]
    stored = store.get_run(run)
    assert stored is not None
    assert stored.status == "SYSTEM_ERROR"
    store.close()


async def test_the_daemon_posts_failure_details_and_stuck_alerts(tmp_path: Path) -> None:
    """``run_daemon`` as ``omics-watcher run`` wires it: the webhook body carries both."""
    from aiohttp import web

    bodies: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        arrived.set()
        return web.Response(status=204)

    async with (
        serve_hook(hook) as hook_url,
        running_simulator(SimulatorConfig(runs=0, seed=7)) as sim,
    ):
        (failed,) = failing_runs(sim, 1)
        hung = sim.submit_run(kind="hung", durations=(0.1, 0.1, 1.0))
        state = tmp_path / "state.db"
        with Store.open(state) as store:
            store.track([TrackRequest(failed), TrackRequest(hung)])
        settings = Settings(
            tencentcloud={
                "endpoint": sim.endpoint,
                "secret_id": sim.secret_id,
                "secret_key": sim.secret_key,
            },
            polling={"interval_seconds": 0.3},
            state={"path": state},
            server={"listen": "127.0.0.1:0"},
            stuck={"after_seconds": 1},
            notifiers=[{"name": "hook", "type": "webhook", "url": hook_url}],
        )

        def seen() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            fail = next((b for b in bodies if b["data"].get("status") == "EXECUTOR_ERROR"), None)
            stuck_bodies = (b for b in bodies if b["type"] == "run.stuck")
            stuck = next((b for b in stuck_bodies if b["data"]["run_uuid"] == hung), None)
            return fail, stuck

        async with daemon_task(settings), asyncio.timeout(20):
            while None in seen():
                arrived.clear()
                await arrived.wait()
        fail, stuck = seen()
        assert fail is not None
        assert stuck is not None
        suffix, _ = expected_task(sim, failed)
        assert fail["data"]["failure"]["task"].endswith(suffix)
        assert fail["data"]["failure"]["stderr_tail"].endswith(ERROR_LINE)
        assert stuck["data"]["status"] == "INITIALIZING"
        # Once per run and status: a slow machine may see the failed run stuck too.
        stuck_pairs = [
            (b["data"]["run_uuid"], b["data"]["status"]) for b in bodies if b["type"] == "run.stuck"
        ]
        assert len(stuck_pairs) == len(set(stuck_pairs))


# -- one vocabulary: what is enriched is what renders as a failure ----------------------------


async def test_enrichment_and_rendering_agree_on_every_terminal_status(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """SUCCEEDED/COMPLETED configured as terminal: no failure lookup, rendered ✅.

    PREEMPTED: a warning both ways (no lookup, ⚠️, "other" in digests); EXECUTOR_ERROR: a
    failure both ways (looked up, ❌ with the failing task).
    """
    terminal = TERMINAL | {"SUCCEEDED", "COMPLETED"}
    statuses = Statuses(StatusOptions(terminal=terminal))
    expected = {
        "SUCCEEDED": ("success", "✅", "succeeded"),
        "COMPLETED": ("success", "✅", "succeeded"),
        "PREEMPTED": ("warning", "⚠️", "other"),
        "EXECUTOR_ERROR": ("failure", "❌", "failed"),
    }
    async with running_simulator(SimulatorConfig(runs=0, seed=11)) as sim:
        runs = {
            sim.submit_run(kind="finishing", outcome=outcome, durations=(0.1, 0.1, 0.5)): outcome
            for outcome in expected
        }
        store = Store.open(tmp_path / "state.db")
        store.track([TrackRequest(u) for u in runs])
        client = make_client(sim, session)
        enricher = FailureEnricher(client=client, statuses=statuses)
        events: list[Event] = []
        recorder = make_recorder(store, enricher, events, [], terminal=terminal)
        await run_daemon_pieces(store, client, recorder, list(runs), terminal=terminal)

        for run_uuid, outcome in runs.items():
            (final,) = [e for e in store.events(run_uuid=run_uuid) if e.status == outcome]
            severity, emoji, category = expected[outcome]
            assert final.terminal
            assert statuses.is_failing(outcome) is (severity == "failure")
            message = message_for(final, statuses)
            assert (message.severity, message.title.split()[0]) == (severity, emoji), outcome
            assert statuses.category(outcome, terminal=True) == category
            if severity == "failure":
                assert final.data["failure"]["task"], final.data
                assert message.failure is not None
            else:
                assert final.data["failure"] is None, outcome
                assert message.failure is None
        stats = sim.stats(timeline=False)
        # One failing run: its calls were listed and one stderr fetched, nothing for the rest.
        assert stats["requests"]["GetRunJobLog"] == 1
        listed = stats["requests"]["GetRunCalls"]
        assert 1 <= listed <= 4, listed  # the failing run's walk only (root + sub-workflow)
        store.close()


# -- Tencent's Path convention ("/" + RunId of a Workflow or Scatter call) ---------------------


async def failed_and_settled(sim: Simulator, count: int) -> list[str]:
    """``count`` runs failed by now (seed 0 with 12 runs: every step fails at least once)."""
    runs = failing_runs(sim, count, running=0.3)
    await asyncio.sleep(1.0)
    assert all(sim.status(u) == "EXECUTOR_ERROR" for u in runs)
    return runs


async def test_paths_by_run_id_reach_sub_workflows_and_scatter_shards(
    session: aiohttp.ClientSession,
) -> None:
    async with running_simulator(SimulatorConfig(runs=0, seed=0)) as sim:
        runs = await failed_and_settled(sim, 12)
        client = make_client(sim, session)
        enricher = FailureEnricher(client=client, statuses=STATUSES)
        reached: set[str] = set()
        for run_uuid in runs:
            metadata = (await client.get_run_status(run_uuid)).raw
            failure = await enricher.failure(run_uuid, "", metadata)
            suffix, _ = expected_task(sim, run_uuid)
            assert failure["task"].endswith(suffix), (failure, suffix)
            assert "exited with return code 137" in failure["message"]
            assert failure["stderr_tail"].splitlines()[-1].endswith(ERROR_LINE)
            plan = plan_of(sim.snapshot(run_uuid))
            assert plan.fail_call is not None
            reached.add(plan.fail_call.short)
        # A shard of the scatter inside the sub-workflow (three levels), a task of the
        # sub-workflow, a shard of a root scatter and root tasks: all explained.
        assert reached == {"haplotype_caller", "merge_vcfs", "fastqc", "align", "report"}
        stats = sim.stats(timeline=False)
        # Every Path it sent named something (GetRunJobLog's too): no refusal, no retry.
        assert "InvalidParameterValue" not in stats["errors"]
        assert stats["requests"]["GetRunJobLog"] == len(runs)


class RefusedPaths:
    """The real client, but the Paths below the root are ones the server does not know
    (``calls``) or GetRunJobLog gets a Path it refuses (``log``): the simulator itself answers
    ``InvalidParameterValue``, as a server with another convention would."""

    def __init__(self, client: OmicsClient, *, calls: bool, log: bool) -> None:
        self._client, self._calls, self._log = client, calls, log
        self.log_paths: list[str] = []

    async def get_run_calls(
        self, run_uuid: str, project_id: str = "", path: str = "/"
    ) -> list[RunMetadata]:
        if self._calls and path != "/":
            path = "/by-name" + path
        return await self._client.get_run_calls(run_uuid, project_id, path)

    async def get_run_job_log(
        self,
        run_uuid: str,
        job_id: str,
        log_type: str = "stderr",
        project_id: str = "",
        path: str = "",
    ) -> str:
        self.log_paths.append(path)
        if self._log and path not in ("", "/"):
            path = "/by-name" + path
        return await self._client.get_run_job_log(run_uuid, job_id, log_type, project_id, path)


async def test_a_level_refused_as_invalid_path_keeps_what_was_found(
    session: aiohttp.ClientSession,
) -> None:
    async with running_simulator(SimulatorConfig(runs=0, seed=0)) as sim:
        runs = await failed_and_settled(sim, 12)
        client = make_client(sim, session)
        source = RefusedPaths(client, calls=True, log=False)
        enricher = FailureEnricher(client=source, statuses=STATUSES)
        for run_uuid in runs:
            metadata = (await client.get_run_status(run_uuid)).raw
            failure = await enricher.failure(run_uuid, "", metadata)
            plan = plan_of(sim.snapshot(run_uuid))
            assert plan.fail_call is not None
            # The reason is always there: from the failing container when its level is
            # refused, from the task itself at the root.
            assert "exited with return code 137" in failure["message"]
            if plan.fail_call.nested or plan.fail_call.shards:
                container = "variant_calling" if plan.fail_call.nested else "fastqc"
                assert failure["task"].endswith("." + container), failure
                assert failure["stderr_tail"] == ""
            else:
                assert failure["task"].endswith("." + plan.fail_call.short)
                assert failure["stderr_tail"].endswith(ERROR_LINE)
        assert sim.stats(timeline=False)["errors"]["InvalidParameterValue"] >= 1


async def test_a_job_log_path_refused_is_asked_again_without_it(
    session: aiohttp.ClientSession,
) -> None:
    async with running_simulator(SimulatorConfig(runs=0, seed=0)) as sim:
        runs = await failed_and_settled(sim, 12)
        client = make_client(sim, session)
        source = RefusedPaths(client, calls=False, log=True)
        enricher = FailureEnricher(client=source, statuses=STATUSES)
        for run_uuid in runs:
            metadata = (await client.get_run_status(run_uuid)).raw
            failure = await enricher.failure(run_uuid, "", metadata)
            suffix, _ = expected_task(sim, run_uuid)
            assert failure["task"].endswith(suffix)
            assert failure["stderr_tail"].endswith(ERROR_LINE)
        # Sub-tasks were asked with their level's Path ("/" + RunId), then without it.
        deeper = [p for p in source.log_paths if p not in ("", "/")]
        assert deeper
        assert all(p.startswith("/") and len(p) == 37 for p in deeper)
        assert source.log_paths.count("") == len(deeper)
        assert sim.stats(timeline=False)["errors"]["InvalidParameterValue"] == len(deeper)


# -- bursts: one queue of steps, oldest failure first ---------------------------------------


async def test_step_queue_lets_the_smallest_key_in_first_and_survives_cancellation() -> None:
    from watcher.enrich import StepQueue

    queue = StepQueue(lanes=1)
    order: list[str] = []
    gate = asyncio.Event()

    async def step(name: str, key: tuple[float, ...]) -> None:
        async with queue.turn(key):
            order.append(name)
            await gate.wait()

    first = asyncio.create_task(step("holder", (9.0,)))
    await asyncio.sleep(0)
    late = asyncio.create_task(step("late run, root", (3.0, 0)))
    early = asyncio.create_task(step("early run, deep", (1.0, 2)))
    gone = asyncio.create_task(step("timed out", (0.5, 0)))
    await asyncio.sleep(0)
    assert queue.waiting == 3
    gone.cancel()  # its walk hit the timeout while waiting
    await asyncio.sleep(0)
    assert queue.waiting == 2
    gate.set()
    await asyncio.gather(first, late, early)
    assert order == ["holder", "early run, deep", "late run, root"]
    with pytest.raises(asyncio.CancelledError):
        await gone
    # Nothing leaked: all lanes free again.
    async with asyncio.timeout(1), queue.turn((0.0,)):
        assert queue.waiting == 0


async def test_fifty_failures_in_sixteen_seconds_all_carry_their_reason(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """Must show (issue 12): one run group, 50 runs failing within 16 s, watched with the
    daemon's own limiters (GetRunCalls and GetRunJobLog each at 20/s) and options: every
    failure event carries the failing task, its message and its stderr tail. How fast they
    arrive is measured by benchmarks/enrich_bench.py."""
    from watcher.options import enrich_limits

    async with running_simulator(SimulatorConfig(runs=0, seed=21)) as sim:
        runs = sim.submit_group(
            50, spread_seconds=16.0, durations=(0.5, 0.5, 1.0), outcome="EXECUTOR_ERROR"
        )
        store = Store.open(tmp_path / "state.db")
        store.track([TrackRequest(u) for u in runs])
        client = make_client(sim, session)
        settings = Settings()
        enricher = FailureEnricher(client=client, statuses=STATUSES, limits=enrich_limits(settings))
        events: list[Event] = []
        durations: list[float] = []
        recorder = make_recorder(store, enricher, events, durations)
        await run_daemon_pieces(store, client, recorder, runs, deadline=60.0)

        # What receivers get: the stored bodies (the hooks saw each event as first recorded).
        failed = [e for u in runs for e in store.events(run_uuid=u) if e.status == "EXECUTOR_ERROR"]
        assert store.held_runs(runs) == set()
        assert sorted(e.run_uuid for e in failed) == sorted(runs)
        for event in failed:
            failure = event.data["failure"]
            suffix, _ = expected_task(sim, event.run_uuid)
            assert failure["task"].endswith(suffix), failure
            assert "exited with return code 137" in failure["message"]
            assert failure["stderr_tail"].splitlines()[-1].endswith(ERROR_LINE)
        stats = sim.stats(timeline=False)
        assert stats["requests"]["GetRunJobLog"] == len(runs)
        assert not stats["throttled"].get("GetRunCalls")
        assert not stats["throttled"].get("GetRunJobLog")
        store.close()
