"""SIGHUP names the keys it cannot apply without a restart, and never their values."""

from __future__ import annotations

import signal
from pathlib import Path

from pydantic import SecretStr
from support import (
    Processes,
    clean_env,
    daemon_config,
    free_port,
    start_daemon,
    start_simulator,
    wait_for,
    write_config,
)

from watcher.config import Settings
from watcher.settings_diff import RELOADABLE, unapplied_keys

NEW_SECRET = "a-new-secret-key-never-logged-8f3a"


def test_only_keys_outside_the_reloadable_sections_are_named_by_path() -> None:
    running = Settings(
        tencentcloud={"secret_key": "old-secret-value-1234"},
        watch=[{"labels": {"team": "a"}}],
        notifiers=[{"name": "ops", "type": "log"}],
    )
    loaded = Settings(
        tencentcloud={"secret_key": NEW_SECRET},
        polling={"interval_seconds": 5},
        server={"listen": "127.0.0.1:9999"},
        watch=[{"labels": {"team": "b"}}],
        notifiers=[{"name": "ops", "type": "log"}, {"name": "audit", "type": "log"}],
        routes=[{"notifiers": ["audit"]}],
    )
    paths = unapplied_keys(running, loaded)
    assert paths == [
        "polling.interval_seconds",
        "server.listen",
        "tencentcloud.secret_key",
        "watch[0].labels.team",
    ]
    assert unapplied_keys(running, running) == []
    assert {"notifiers", "routes", "mute_intervals"} <= RELOADABLE
    # A secret compares by its value and is named by its path only.
    same = Settings(tencentcloud={"secret_key": SecretStr("old-secret-value-1234")})
    assert unapplied_keys(running.model_copy(update={"watch": [], "notifiers": []}), same) == []


def test_sighup_with_a_changed_polling_key_and_secret_warns_naming_them(
    tmp_path: Path, procs: Processes
) -> None:
    sim = start_simulator(procs, tmp_path / "sim", "--runs", "2", "--seed", "4")
    port = free_port()
    config = daemon_config(tmp_path, sim=sim, port=port)
    path = write_config(tmp_path / "watcher.toml", config)
    daemon = start_daemon(procs, path, port=port, env=clean_env(tmp_path))
    daemon.wait_ready(timeout=30)

    config["polling"] = {**config["polling"], "interval_seconds": 7}
    config["tencentcloud"] = {**config["tencentcloud"], "secret_key": NEW_SECRET}
    config["notifiers"] = [{"name": "audit", "type": "log"}]
    write_config(path, config)
    daemon.proc.send_signal(signal.SIGHUP)

    def warned() -> dict[str, object] | None:
        found = [r for r in daemon.logs() if r.get("event") == "reload_needs_restart"]
        return found[0] if found else None

    warning = wait_for(warned, timeout=20, what="reload_needs_restart")
    assert warning["level"] == "warning"
    assert warning["keys"] == ["polling.interval_seconds", "tencentcloud.secret_key"]
    reloaded = wait_for(
        lambda: [r for r in daemon.logs() if r.get("event") == "reloaded"] or None,
        timeout=20,
        what="reloaded",
    )
    assert reloaded[0]["notifiers"] == ["audit"]  # the reloadable part was applied
    assert NEW_SECRET not in daemon.log.read_text(errors="replace")
    assert daemon.probe("/readyz") is not None
