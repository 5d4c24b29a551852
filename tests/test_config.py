"""Configuration loading: file, environment overrides, *_file secrets, error key paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import clean_env, run_cli

from watcher.config import ConfigError, load_settings
from watcher.secrets import redacted, secret_values


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "omics-watcher.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), environ=environ or {})
    return caught.value.problems


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./omics-watcher.toml here
    settings = load_settings(None, environ={})
    assert settings.polling.rate_per_second == 20.0
    assert settings.polling.interval_seconds == 30.0
    assert "EXECUTOR_ERROR" in settings.polling.terminal
    assert settings.server.listen == "127.0.0.1:9477"
    assert settings.notifiers == []


def test_file_found_from_the_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[polling]\ninterval_seconds = 5\n")
    settings = load_settings(None, environ={"OMICS_WATCHER_CONFIG": path})
    assert settings.polling.interval_seconds == 5.0  # an integer where a float is expected


def test_environment_overrides_nested_keys_and_list_items(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[polling]
rate_per_second = 20
[[notifiers]]
name = "ops"
type = "webhook"
url = "https://example.org/a"
""",
    )
    settings = load_settings(
        path,
        environ={
            "OMICS_WATCHER_POLLING__RATE_PER_SECOND": "15",
            "OMICS_WATCHER_NOTIFIERS__0__URL": "https://example.org/b",
            "OMICS_WATCHER_POLLING__TERMINAL_STATUSES": '["DONE"]',
        },
    )
    assert settings.polling.rate_per_second == 15.0
    assert str(settings.notifiers[0].url) == "https://example.org/b"  # type: ignore[attr-defined]
    assert settings.polling.terminal == frozenset({"DONE"})


def test_section_names_match_in_any_case_and_the_environment_still_overrides(
    tmp_path: Path,
) -> None:
    # Accepted before through pydantic-settings' case-insensitive init source, which then
    # ignored the environment's override of such a section; now both layers meet.
    path = write(tmp_path, "[POLLING]\nrate_per_second = 3\n[polling]\ninterval_seconds = 7\n")
    assert load_settings(path, environ={}).polling.rate_per_second == 3.0
    settings = load_settings(path, environ={"OMICS_WATCHER_POLLING__RATE_PER_SECOND": "9"})
    assert (settings.polling.rate_per_second, settings.polling.interval_seconds) == (9.0, 7.0)


def test_secret_files_are_read_and_never_shown(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cr3t-value-123\n", encoding="utf-8")
    path = write(
        tmp_path, f'[tencentcloud]\nsecret_id = "AKIDabc"\nsecret_key_file = "{key_file}"\n'
    )
    settings = load_settings(path, environ={})
    assert settings.tencentcloud.secret_key is not None
    assert settings.tencentcloud.secret_key.get_secret_value() == "s3cr3t-value-123"
    shown = redacted(settings)
    assert shown["tencentcloud"]["secret_key"] == "***"
    assert "s3cr3t-value-123" not in repr(settings)
    assert "s3cr3t-value-123" not in str(shown)


def test_every_problem_is_one_line_naming_its_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
[polling]
rate_per_second = "fast"
interval_seconds = -1
[server]
listen = "nowhere"
[[notifiers]]
name = "a"
type = "log"
[[notifiers]]
name = "b"
type = "carrier-pigeon"
""",
    )
    joined = "\n".join(found)
    assert any(p.startswith("polling.rate_per_second:") for p in found), joined
    assert any(p.startswith("polling.interval_seconds:") for p in found), joined
    assert any(p.startswith("server.listen:") for p in found), joined
    assert "notifiers[1].type: unknown type 'carrier-pigeon'" in joined, joined


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, "[polling]\nrate_per_secnd = 5\n")
    assert found == [p for p in found if p.startswith("polling.rate_per_secnd:")]
    assert found


def test_a_route_must_name_a_configured_notifier(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[[notifiers]]\nname = "a"\ntype = "log"\n[[routes]]\nnotifiers = ["nope"]\n',
    )
    assert found == ["routes[0].notifiers: unknown notifier 'nope'"]


def test_duplicate_notifier_names_are_refused(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[[notifiers]]\nname = "a"\ntype = "log"\n[[notifiers]]\nname = "a"\ntype = "log"\n',
    )
    assert found == ["notifiers[1].name: duplicate notifier name 'a'"]


def test_missing_secret_file_names_the_key_and_not_the_content(tmp_path: Path) -> None:
    found = problems(tmp_path, '[server]\nadmin_token_file = "/nonexistent/token"\n')
    assert len(found) == 1
    assert found[0].startswith("server.admin_token_file: cannot read /nonexistent/token")


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    found = problems(tmp_path, "[polling\n")
    assert found[0].startswith("config:")


def test_a_named_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(str(tmp_path / "missing.toml"), environ={})


def test_broken_template_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[[notifiers]]\nname = "a"\ntype = "slack"\nurl = "https://hooks.example.org/x"\n'
        'body_template = "{{ run_uuid "\n',
    )
    assert len(found) == 1
    assert found[0].startswith("notifiers[0].body_template:")


def test_route_problems_are_reported_with_other_problems(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[polling]\nrate_per_second = "fast"\n'
        '[[notifiers]]\nname = "a"\ntype = "log"\n[[routes]]\nnotifiers = ["nope"]\n',
    )
    assert "routes[0].notifiers: unknown notifier 'nope'" in found
    assert any(p.startswith("polling.rate_per_second:") for p in found)


def test_every_name_problem_is_reported_in_one_pass(tmp_path: Path) -> None:
    """Duplicate and unknown names (notifiers, routes, mute intervals) come with the other
    problems, all at once, not one per attempt at fixing the file."""
    names = (
        '[[notifiers]]\nname = "a"\ntype = "log"\nmute_intervals = ["nite"]\n'
        '[[notifiers]]\nname = "a"\ntype = "log"\n'
        '[[routes]]\nnotifiers = ["nope"]\n'
        '[[mute_intervals]]\nname = "nights"\n[[mute_intervals]]\nname = "nights"\n'
    )
    expected = [
        "notifiers[1].name: duplicate notifier name 'a'",
        "routes[0].notifiers: unknown notifier 'nope'",
        "mute_intervals[1].name: duplicate name 'nights'",
        'notifiers[0].mute_intervals: unknown interval "nite"',
    ]
    assert problems(tmp_path, names) == expected  # every field valid: only these
    found = problems(tmp_path, '[polling]\nrate_per_second = "fast"\n' + names)
    assert found[: len(expected)] == expected
    assert [p.split(":")[0] for p in found[len(expected) :]] == ["polling.rate_per_second"]


def test_keys_inside_urls_are_redacted_and_masked_in_logs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[notifiers]]\nname = "a"\ntype = "webhook"\n'
        'url = "https://ops:hunter2-pass@hooks.example.org/in?token=abc123xyz&v=2"\n',
    )
    settings = load_settings(path, environ={})
    shown = redacted(settings)["notifiers"][0]["url"]
    assert shown == "https://ops:***@hooks.example.org/in?token=***&v=***"
    assert {"hunter2-pass", "abc123xyz"} <= set(secret_values(settings))


# -- nesting limits (a deep value is exit 2 naming the key, never a RecursionError) --------------


def test_deeply_nested_toml_names_the_key(tmp_path: Path) -> None:
    deep = "[" * 5000 + "]" * 5000  # beyond what the TOML parser's recursion survives
    assert problems(tmp_path, f"[polling]\nterminal_statuses = {deep}\n") == [
        "polling.terminal_statuses (line 2): nested more than 16 levels deep"
    ]
    medium = "{a = " * 40 + "1" + "}" * 40  # parsed, then refused by the depth check
    (line,) = problems(tmp_path, f"[stuck]\nper_status = {medium}\n")
    assert line.startswith("stuck.per_status.a.a.a")
    assert line.endswith(": nested more than 16 levels deep")


def test_deep_dotted_keys_and_headers_name_the_key(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "[routes" + ".x" * 3000 + "]\n")
    assert line.startswith("routes.x.x.x")
    assert line.endswith("nested more than 16 levels deep")


def test_deeply_nested_environment_json_names_the_variable(tmp_path: Path) -> None:
    env = {"OMICS_WATCHER_STUCK__PER_STATUS": '{"a": ' * 5000 + "1" + "}" * 5000}
    assert problems(tmp_path, "", env) == [
        "OMICS_WATCHER_STUCK__PER_STATUS: nested more than 16 levels deep"
    ]
    env = {"OMICS_WATCHER_STUCK__PER_STATUS": "[" * 20 + "]" * 20}
    (line,) = problems(tmp_path, "", env)
    assert line.startswith("OMICS_WATCHER_STUCK__PER_STATUS: stuck.per_status[0][0]")
    env = {"OMICS_WATCHER_" + "__".join(["A"] * 40): "1"}
    (line,) = problems(tmp_path, "", env)
    assert line == "OMICS_WATCHER_" + "__".join(["A"] * 40) + ": nested more than 16 levels deep"


def test_deep_nesting_exits_2_through_the_console_script(tmp_path: Path) -> None:
    path = write(tmp_path, "[polling]\nterminal_statuses = " + "[" * 3000 + "]" * 3000 + "\n")
    done = run_cli("check-config", "-c", path, env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "config error: polling.terminal_statuses (line 2): nested more than 16 levels deep\n"
    )


def test_watch_labels_are_bounded(tmp_path: Path) -> None:
    many = ", ".join(f"k{i} = 'v'" for i in range(33))
    assert problems(tmp_path, f"[[watch]]\nproject_id = 'p'\nlabels = {{{many}}}\n") == [
        "watch[0].labels: 33 labels; at most 32 per run"
    ]
    long_key = "k" * 64
    assert problems(tmp_path, f"[[watch]]\nlabels = {{{long_key} = 'v'}}\n") == [
        f"watch[0].labels: key '{'k' * 20}...' is 64 characters; at most 63"
    ]
    assert problems(tmp_path, f"[[watch]]\nlabels = {{team = '{'v' * 257}'}}\n") == [
        "watch[0].labels: value of 'team' is 257 characters; at most 256"
    ]
