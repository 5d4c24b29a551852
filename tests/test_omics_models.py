"""The API-edge models: the seed example, lenient parsing, JSON inside strings, UTC times."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from watcher.omics.errors import Transient
from watcher.omics.models import (
    RunMetadata,
    RunsFilter,
    RunSummary,
    parse_json_text,
    parse_time,
)

SEEDS = Path("/work/shared/seeds")

SEED_METADATA: dict[str, Any] = {
    "CallCached": False,
    "CallName": "main_workflow",
    "Command": "",
    "EndTime": "2022-10-31T14:11:23+08:00",
    "ErrorMessage": "{}",
    "Input": '{"main_workflow.base64_in": "cos://gene-1252949230/samples.csv"}',
    "JobId": "",
    "Output": '{"main_workflow.main_output": '
    '"cos://gene-1252949230/outputs/import/out/base64/samples.csv.base64"}',
    "ParentId": "84232c68-a016-4668-b2e3-168a175d6f29",
    "PostProcess": False,
    "Preprocess": True,
    "RunId": "84232c68-a016-4668-b2e3-168a175d6f29",
    "RunType": "Workflow",
    "Runtime": "{}",
    "ScatterIndex": "",
    "StartTime": "2022-10-31T14:10:13+08:00",
    "Status": "SUCCESS",
    "Stderr": "",
    "Stdout": "",
    "SubmitTime": "2022-10-31T14:10:12+08:00",
    "Meta": "",
}


def _seed_response() -> dict[str, Any]:
    """The response example of the seed page (shared, read-only); a copy when it is absent."""
    pages = sorted(SEEDS.glob("*.txt")) if SEEDS.is_dir() else []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        match = re.search(r'^\{\n"Response": \{.*?^\}\n\}$', text, re.S | re.M)
        if match:
            return dict(json.loads(match.group(0)))
    assert not pages, "the seed page changed shape: update this test"
    return {"Response": {"Metadata": SEED_METADATA, "RequestId": "b970585c"}}


def test_the_seed_example_parses() -> None:
    response = _seed_response()["Response"]
    meta = RunMetadata.from_api(response["Metadata"])
    assert response["Metadata"] == SEED_METADATA  # the page and this test agree
    assert meta.Status == "SUCCESS"
    assert meta.RunType == "Workflow"
    assert meta.RunId == "84232c68-a016-4668-b2e3-168a175d6f29"
    assert meta.Preprocess is True
    assert meta.PostProcess is False
    assert meta.CallCached is False
    assert meta.raw == SEED_METADATA
    assert meta.raw is response["Metadata"]
    assert meta.model_dump(exclude_none=True) == SEED_METADATA
    assert "raw" not in meta.model_dump()


def test_every_spec_field_is_a_model_field() -> None:
    spec = [
        "RunType",
        "RunId",
        "ParentId",
        "JobId",
        "CallName",
        "ScatterIndex",
        "Input",
        "Output",
        "Status",
        "ErrorMessage",
        "StartTime",
        "SubmitTime",
        "EndTime",
        "Command",
        "Runtime",
        "Preprocess",
        "PostProcess",
        "CallCached",
        "WorkDir",
        "Stdout",
        "Stderr",
        "Meta",
    ]
    assert set(spec) == set(RunMetadata.model_fields)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ("[1, 2]", [1, 2]),
        ("", ""),
        ("{}", {}),
        ("{broken", "{broken"),
        ("42", "42"),  # a JSON scalar is not what these fields hold: keep the text
        ('"quoted"', '"quoted"'),
        (None, None),
    ],
)
def test_parse_json_text(text: str | None, expected: object) -> None:
    assert parse_json_text(text) == expected


def test_times_are_aware_utc() -> None:
    meta = RunMetadata.from_api(SEED_METADATA)
    assert meta.end_time == datetime(2022, 10, 31, 6, 11, 23, tzinfo=UTC)
    assert meta.end_time is not None
    assert meta.end_time.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2022-10-31T14:11:23+08:00", datetime(2022, 10, 31, 6, 11, 23, tzinfo=UTC)),
        ("2022-10-31T06:11:23Z", datetime(2022, 10, 31, 6, 11, 23, tzinfo=UTC)),
        ("2022-10-31T00:30:00-05:00", datetime(2022, 10, 31, 5, 30, tzinfo=UTC)),
        ("2022-10-31T14:11:23.250+08:00", datetime(2022, 10, 31, 6, 11, 23, 250000, tzinfo=UTC)),
        ("", None),
        (None, None),
        ("yesterday", None),
        ("2022-13-45T99:00:00+08:00", None),
        ("2022-10-31T14:11:23", None),  # no offset: not RFC 3339, zone unknown
    ],
)
def test_parse_time(text: str | None, expected: datetime | None) -> None:
    assert parse_time(text) == expected


def test_empty_and_junk_times_are_none() -> None:
    assert RunMetadata.from_api({**SEED_METADATA, "EndTime": ""}).end_time is None
    meta = RunMetadata.from_api({**SEED_METADATA, "EndTime": "soon"})
    assert meta.end_time is None
    assert meta.EndTime == "soon"


def test_junk_types_survive() -> None:
    junk = {
        **SEED_METADATA,
        "ScatterIndex": 3,
        "CallCached": "true",
        "Preprocess": "perhaps",
        "Input": ["not", "a", "string"],
        "WorkDir": {"nested": True},
        "Stdout": None,
        "Command": 1.5,
        "BrandNewField": {"x": [1, 2]},
    }
    meta = RunMetadata.from_api(junk)
    assert meta.Status == "SUCCESS"
    assert meta.ScatterIndex == "3"
    assert meta.Command == "1.5"
    assert meta.CallCached is True
    assert meta.Preprocess is None
    assert meta.Input is None
    assert meta.WorkDir is None
    assert meta.Stdout is None
    assert meta.model_extra == {"BrandNewField": {"x": [1, 2]}}
    assert meta.raw is junk  # the original, junk included, is what events carry


def test_model_validate_follows_the_same_rules() -> None:
    junk = {**SEED_METADATA, "ScatterIndex": [1], "Extra": 1}
    assert RunMetadata.model_validate(junk) == RunMetadata.from_api(junk)
    assert RunMetadata.model_validate(junk).raw is junk


def test_missing_fields_default_to_none() -> None:
    meta = RunMetadata.from_api({"Status": "RUNNING"})
    assert meta.Status == "RUNNING"
    assert meta.RunId is None
    assert meta.end_time is None
    assert meta.ErrorMessage is None


@pytest.mark.parametrize(
    "metadata",
    [
        {k: v for k, v in SEED_METADATA.items() if k != "Status"},
        {**SEED_METADATA, "Status": None},
        {**SEED_METADATA, "Status": 3},
        {**SEED_METADATA, "Status": ["RUNNING"]},
        {**SEED_METADATA, "Status": {"Name": "RUNNING"}},
        {**SEED_METADATA, "Status": ""},
        {**SEED_METADATA, "Status": "  "},
        "SUCCESS",
        ["SUCCESS"],
        None,
    ],
)
def test_missing_or_non_string_status_is_malformed(metadata: object) -> None:
    with pytest.raises(Transient) as caught:
        RunMetadata.from_api(metadata)
    assert caught.value.code == "MalformedResponse"


def test_unknown_status_is_kept_as_is() -> None:
    assert RunMetadata.from_api({"Status": "HIBERNATING"}).Status == "HIBERNATING"


def test_models_are_frozen() -> None:
    meta = RunMetadata.from_api(SEED_METADATA)
    with pytest.raises(ValueError, match="frozen"):
        meta.Status = "RUNNING"  # type: ignore[misc]


RUN_ITEM: dict[str, Any] = {
    "RunUuid": "84232c68-a016-4668-b2e3-168a175d6f29",
    "ProjectId": "prj-peaceful-pink-bird-631828",
    "RunGroupId": "rg-1",
    "ApplicationId": "app-1",
    "EnvironmentId": "env-1",
    "UserDefinedId": "",
    "Status": "RUNNING",
    "Input": "{}",
    "Option": {"FailureMode": "RunToCompletion"},
    "ExecutionTime": {
        "SubmitTime": "2022-10-31T14:10:12+08:00",
        "StartTime": "2022-10-31T14:10:13+08:00",
        "EndTime": "",
    },
    "ErrorMessage": "",
    "CreateTime": "2022-10-31T14:10:12+08:00",
    "UpdateTime": "2022-10-31T14:11:00+08:00",
}


def test_run_summary_parses() -> None:
    run = RunSummary.from_api(RUN_ITEM)
    assert run.RunUuid == RUN_ITEM["RunUuid"]
    assert run.Status == "RUNNING"
    assert run.ExecutionTime is not None
    assert run.ExecutionTime.StartTime == "2022-10-31T14:10:13+08:00"
    assert run.update_time == datetime(2022, 10, 31, 6, 11, tzinfo=UTC)
    assert run.model_extra == {
        "EnvironmentId": "env-1",
        "Input": "{}",
        "Option": {"FailureMode": "RunToCompletion"},
    }
    assert run.raw is RUN_ITEM


def test_run_summary_is_lenient_below_the_top_level() -> None:
    item = {**RUN_ITEM, "ExecutionTime": {"SubmitTime": 5, "StartTime": [], "EndTime": ""}}
    run = RunSummary.from_api(item)
    assert run.ExecutionTime is not None
    assert run.ExecutionTime.SubmitTime == "5"
    assert run.ExecutionTime.StartTime is None
    assert RunSummary.from_api({**RUN_ITEM, "ExecutionTime": "junk"}).ExecutionTime is None
    assert RunSummary.from_api({**RUN_ITEM, "ProjectId": {"x": 1}}).ProjectId is None


@pytest.mark.parametrize("missing", ["RunUuid", "Status"])
def test_run_summary_needs_uuid_and_status(missing: str) -> None:
    with pytest.raises(Transient, match="MalformedResponse"):
        RunSummary.from_api({k: v for k, v in RUN_ITEM.items() if k != missing})


def test_runs_filter_to_api() -> None:
    assert RunsFilter("Status", ("RUNNING", "QUEUED")).to_api() == {
        "Name": "Status",
        "Values": ["RUNNING", "QUEUED"],
    }
