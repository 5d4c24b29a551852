"""``[state] url`` / ``url_file`` / ``lease_seconds`` (issue 15): where the state lives.

The URL is a secret (it may carry a password): ``check-config`` shows ``***``, the log masker
knows its password, and no error quotes it. ``path`` and ``url`` are exclusive.
"""

from __future__ import annotations

from pathlib import Path

from support import clean_env, run_cli

from watcher.config import load_settings
from watcher.options import state_options
from watcher.secrets import secret_values

URL = "postgresql://watcher:pa55-w0rd-xyz@db.example.org:5432/omics?sslmode=verify-full"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "omics-watcher.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_url_from_a_file_is_the_state_and_never_shown(tmp_path: Path) -> None:
    url_file = tmp_path / "state-url"
    url_file.write_text(URL + "\n", encoding="utf-8")
    path = write(tmp_path, f'[state]\nurl_file = "{url_file}"\nlease_seconds = 4.5\n')
    options = state_options(load_settings(path, environ={}))
    assert (options.url, options.path, options.lease_seconds) == (URL, None, 4.5)
    assert "pa55-w0rd-xyz" not in repr(options)
    assert "pa55-w0rd-xyz" in secret_values(load_settings(path, environ={}))

    done = run_cli("check-config", "-c", path, env=clean_env(tmp_path), cwd=tmp_path)
    assert "pa55-w0rd-xyz" not in done.stdout + done.stderr
    assert "db.example.org" not in done.stdout + done.stderr  # the whole URL is one secret


def test_the_file_is_the_default_and_lease_seconds_is_15(tmp_path: Path) -> None:
    options = state_options(load_settings(write(tmp_path, ""), environ={}))
    assert options.url is None
    assert options.lease_seconds == 15.0
    assert options.path == Path("omics-watcher.db")


def test_path_and_url_together_exit_2_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, f'[state]\npath = "x.db"\nurl = "{URL}"\n')
    done = run_cli("check-config", "-c", path, env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == "config error: state.url: give either [state] path or url, not both\n"


def test_bad_url_and_lease_are_refused_without_quoting_the_url(tmp_path: Path) -> None:
    path = write(tmp_path, '[state]\nurl = "mysql://root:t0p-s3cret-1@db/x"\nlease_seconds = 0\n')
    done = run_cli("check-config", "-c", path, env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "config error: state.url: must be a postgresql:// URL" in done.stderr
    assert "state.lease_seconds:" in done.stderr
    assert "t0p-s3cret-1" not in done.stdout + done.stderr


def test_check_config_names_the_state_backend_without_the_password(tmp_path: Path) -> None:
    """Which state ``run`` would use: the database's name, never its URL (the errors that
    name the database say it the same way), or the SQLite file."""
    url_file = tmp_path / "state-url"
    url_file.write_text(URL + "\n", encoding="utf-8")
    keys = '[tencentcloud]\nsecret_id = "AKIDtest"\nsecret_key = "k3y-t3st-v4lue"\n'
    path = write(tmp_path, f'{keys}[state]\nurl_file = "{url_file}"\n')
    done = run_cli("check-config", "-c", path, env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "state: PostgreSQL database omics (lease_seconds 15)\n" in done.stderr
    assert "pa55-w0rd-xyz" not in done.stdout + done.stderr
    assert "db.example.org" not in done.stdout + done.stderr

    path = write(tmp_path, f'{keys}[state]\npath = "here.db"\n')
    done = run_cli("check-config", "-c", path, env=clean_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "state: SQLite file " in done.stderr
    assert "here.db\n" in done.stderr


def test_an_unparsable_url_is_a_config_error(tmp_path: Path) -> None:
    """A URL urllib cannot split (a bad IPv6 host, a port that is not a number) exits 2
    naming the key, not with a traceback, and without quoting the URL."""
    for url in ("postgresql://u:t0p-s3cret-1@[::1/db", "postgresql://u:t0p-s3cret-1@h:port/db"):
        path = write(tmp_path, f'[state]\nurl = "{url}"\n')
        done = run_cli("list", "-c", path, env=clean_env(tmp_path), cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "config error: state.url: not a valid URL" in done.stderr
        assert "Traceback" not in done.stderr
        assert "t0p-s3cret-1" not in done.stdout + done.stderr
