"""Where Tencent Cloud credentials come from, in the order the official tools use.

Sources, first match wins: the configuration (``[tencentcloud] secret_id/secret_key/token``,
whose ``*_file`` forms config.py has already read), the environment
(``TENCENTCLOUD_SECRET_ID``, ``TENCENTCLOUD_SECRET_KEY``, ``TENCENTCLOUD_TOKEN``), then the
profile file (``~/.tencentcloud/credentials``, else ``/etc/tencentcloud/credentials``, INI
section ``[default]``). Servers may use instance-role or OIDC providers
(:mod:`watcher.omics.cloud_credentials`), which share the :class:`CredentialProvider` protocol.

Secrets never appear in ``repr`` or in error messages; errors name the sources tried.
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class CredentialsError(Exception):
    """No usable credential was found; the message lists every source tried."""


@dataclass(frozen=True, slots=True)
class Credential:
    """One SecretId/SecretKey pair, with a token when it is temporary."""

    secret_id: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # unix seconds; None for static keys


class CredentialProvider(Protocol):
    """Gives the credential to sign the next request with; may refresh temporary ones."""

    name: str

    async def get(self) -> Credential: ...

    async def refresh(self) -> Credential: ...


class StaticProvider:
    """A credential that never changes (config, environment or profile file)."""

    def __init__(self, credential: Credential, *, name: str) -> None:
        self._credential = credential
        self.name = name

    async def get(self) -> Credential:
        return self._credential

    async def refresh(self) -> Credential:
        # Static keys cannot be renewed: the caller then treats the failure as an auth error.
        return self._credential


def _from_profile(path: Path) -> Credential | None:
    parser = configparser.ConfigParser()
    try:
        if not parser.read(path, encoding="utf-8"):
            return None
    except (configparser.Error, OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"profile file {path} is unreadable: {type(exc).__name__}") from None
    if not parser.has_section("default"):
        return None
    section = parser["default"]
    secret_id = section.get("secret_id", "").strip()
    secret_key = section.get("secret_key", "").strip()
    if not secret_id or not secret_key:
        return None
    token = section.get("token", "").strip() or None
    return Credential(secret_id, secret_key, token)


def static_provider(
    *,
    secret_id: str | None,
    secret_key: str | None,
    token: str | None,
    environ: Mapping[str, str],
    profile_paths: Sequence[Path],
) -> StaticProvider:
    """The first complete credential among config, environment and profile files.

    Raises :class:`CredentialsError` naming every source tried when none is complete.
    """
    tried: list[str] = []
    if secret_id and secret_key:
        return StaticProvider(Credential(secret_id, secret_key, token or None), name="config")
    tried.append("config [tencentcloud] secret_id/secret_key (or *_file)")
    env_id = environ.get("TENCENTCLOUD_SECRET_ID", "").strip()
    env_key = environ.get("TENCENTCLOUD_SECRET_KEY", "").strip()
    if env_id and env_key:
        env_token = environ.get("TENCENTCLOUD_TOKEN", "").strip() or None
        return StaticProvider(Credential(env_id, env_key, env_token), name="environment")
    tried.append("environment TENCENTCLOUD_SECRET_ID/TENCENTCLOUD_SECRET_KEY")
    for path in profile_paths:
        found = _from_profile(path)
        if found is not None:
            return StaticProvider(found, name=f"profile {path}")
        tried.append(f"profile file {path}")
    raise CredentialsError("no Tencent Cloud credentials found; tried: " + "; ".join(tried))


def default_profile_paths(home: Path) -> list[Path]:
    return [home / ".tencentcloud" / "credentials", Path("/etc/tencentcloud/credentials")]
