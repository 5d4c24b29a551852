"""Tracking an already tracked run with other labels (or another project) is never silent:
``track`` says on stderr what changed and ``POST /v1/runs`` answers 200 (as before) with the
changed fields' former values under ``previous``. The semantics stay what they were: given
labels are merged into the run's own, a given key replacing its value.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import write_config

from watcher.cli import main
from watcher.service.metrics import Metrics
from watcher.service.server import Health, build_app
from watcher.store import Store
from watcher.store.api import SqliteStore

RUN_A = "84232c68-a016-4668-b2e3-168a175d6f29"
RUN_B = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
TOKEN = "retrack-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith(("OMICS_WATCHER_", "TENCENTCLOUD_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return write_config(
        tmp_path / "c.toml",
        {"tencentcloud": {"project_id": "prj-a"}, "state": {"path": str(tmp_path / "s.db")}},
    )


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_track_says_what_a_retrack_changed(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    c = str(config)
    code, out, err = cli(capsys, "track", "-c", c, "--label", "a=1", "--label", "b=x", RUN_A)
    assert (code, err) == (0, "")
    assert out == "tracked 1 new, 0 already tracked\n"

    code, out, err = cli(capsys, "track", "-c", c, "--label", "a=2", RUN_A, RUN_B)
    assert code == 0
    assert out == "tracked 1 new, 1 already tracked\n"
    # Merged: a replaced, b kept (as before this release); said, for the run that had labels.
    assert err == f"run {RUN_A}: labels changed {{a=1, b=x}} → {{a=2, b=x}}\n"

    code, _, err = cli(capsys, "track", "-c", c, "--label", "a=2", RUN_A)  # no change: quiet
    assert (code, err) == (0, "")
    code, _, err = cli(capsys, "track", "-c", c, RUN_A)  # nothing given: quiet
    assert (code, err) == (0, "")

    code, _, err = cli(capsys, "track", "-c", c, "--project-id", "prj-b", RUN_A)
    assert (code, err) == (0, f"run {RUN_A}: project changed prj-a → prj-b\n")

    with Store.open(config.parent / "s.db") as store:
        run = store.get_run(RUN_A)
        assert run is not None
        assert (run.labels, run.project_id) == ({"a": "2", "b": "x"}, "prj-b")


async def test_post_runs_answers_200_with_the_previous_values_of_what_changed(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path / "s.db") as store:
        app = build_app(
            store=SqliteStore(store),
            metrics=Metrics(),
            health=Health(),
            admin_token=TOKEN,
            default_project_id="prj-a",
        )
        async with TestClient(TestServer(app)) as client:
            body = {"run_uuid": RUN_A, "labels": {"a": "1"}}
            resp = await client.post("/v1/runs", json=body, headers=AUTH)
            assert resp.status == 201
            assert "previous" not in await resp.json()

            body = {"run_uuid": RUN_A, "labels": {"a": "2", "c": "3"}, "project_id": "prj-b"}
            resp = await client.post("/v1/runs", json=body, headers=AUTH)
            assert resp.status == 200
            answer = await resp.json()
            assert answer["labels"] == {"a": "2", "c": "3"}
            assert answer["project_id"] == "prj-b"
            assert answer["previous"] == {"labels": {"a": "1"}, "project_id": "prj-a"}

            resp = await client.post("/v1/runs", json=body, headers=AUTH)  # the same again
            assert resp.status == 200
            assert "previous" not in await resp.json()
