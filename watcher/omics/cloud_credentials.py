"""Temporary credentials for servers: the CVM instance role and TKE OIDC (web identity).

Role: two :class:`~watcher.omics.credentials.CredentialProvider` implementations that fetch
short-lived keys over HTTP with an injected :class:`aiohttp.ClientSession`, cache them and renew
them before they expire.

- :class:`CvmRoleProvider` asks the instance metadata service: ``GET
  {base}/latest/meta-data/cam/security-credentials/`` names the role bound to the instance, then
  ``GET .../<role>`` gives ``TmpSecretId``, ``TmpSecretKey``, ``Token`` and ``ExpiredTime``.
- :class:`TkeOidcProvider` calls STS ``AssumeRoleWithWebIdentity`` (unsigned, version
  2018-08-13) with the pod's service-account token, exactly as the official SDK's
  ``OIDCRoleArnCredential`` does; the token file is re-read on every refresh because the
  kubelet rotates it.

Invariants:

- A cached credential is used until fewer than ``refresh_margin`` seconds (5 min) remain;
  after that the next :meth:`get` renews it. :meth:`refresh` forces a renewal (after
  ``AuthFailure.TokenFailure``).
- At most one renewal runs at a time: concurrent callers wait on one lock and share the result
  of the renewal that was in progress when they arrived. A cancelled caller releases the lock and
  the next waiter renews instead, so a cancellation never poisons other callers.
- If a renewal fails while the cached credential has not expired yet, :meth:`get` keeps using
  it (logged) and tries again after ``retry_seconds``; without a usable credential it raises
  :class:`CloudCredentialsError`, and repeats that error for ``retry_seconds`` without new
  requests so that a broken metadata service is not hammered by every poll.
- Nothing blocks the event loop (aiohttp; the token file is read in a worker thread).
- Secrets never appear in logs, ``repr`` or error messages: errors name the provider, the step,
  the HTTP status or Tencent's error code, never a response body that could carry keys.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from structlog.typing import FilteringBoundLogger

from watcher.omics.credentials import Credential, CredentialsError

__all__ = [
    "DEFAULT_METADATA_URL",
    "DEFAULT_STS_URL",
    "REFRESH_MARGIN_SECONDS",
    "TKE_ENV_VARS",
    "CloudCredentialsError",
    "CvmRoleProvider",
    "TkeOidcProvider",
]

DEFAULT_METADATA_URL = "http://metadata.tencentyun.com"
DEFAULT_STS_URL = "https://sts.tencentcloudapi.com/"
REFRESH_MARGIN_SECONDS = 300.0
TKE_ENV_VARS = ("TKE_REGION", "TKE_PROVIDER_ID", "TKE_WEB_IDENTITY_TOKEN_FILE", "TKE_ROLE_ARN")

_ROLE_PATH = "/latest/meta-data/cam/security-credentials/"
_STS_VERSION = "2018-08-13"
_STS_ACTION = "AssumeRoleWithWebIdentity"
# When a fetched credential is already inside the margin, wait at least this long (or half
# its remaining life) before renewing again, so a short-lived answer cannot cause a loop.
_MIN_REUSE_SECONDS = 30.0


class CloudCredentialsError(CredentialsError):
    """A temporary credential could not be obtained; the message names provider and step."""


class _CachingProvider:
    """Cache, expiry and the single-renewal lock shared by both providers."""

    name: str

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        refresh_margin: float,
        retry_seconds: float,
        logger: FilteringBoundLogger | None,
    ) -> None:
        self._clock = clock
        self._margin = refresh_margin
        self._retry_seconds = retry_seconds
        self._log: FilteringBoundLogger = (
            logger if logger is not None else structlog.get_logger("watcher.cloud_credentials")
        )
        self._lock = asyncio.Lock()
        self._cached: Credential | None = None
        self._renew_at = 0.0  # wall-clock time after which get() renews
        self._failure: str | None = None  # message of the last failed renewal, while in cooldown
        self._failure_until = 0.0
        self._attempts = 0  # bumped by every finished renewal, successful or not

    async def _fetch(self) -> Credential:
        raise NotImplementedError

    def _fresh(self) -> Credential | None:
        cached = self._cached
        if cached is not None and self._clock() < self._renew_at:
            return cached
        return None

    async def get(self) -> Credential:
        """The cached credential, renewed first when fewer than the margin seconds remain."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        async with self._lock:
            # Another caller may have renewed while this one waited for the lock.
            fresh = self._fresh()
            if fresh is not None:
                return fresh
            now = self._clock()
            if self._failure is not None and now < self._failure_until:
                usable = self._usable(now)
                if usable is not None:
                    return usable
                raise CloudCredentialsError(self._failure)
            return await self._renew(force=False)

    async def refresh(self) -> Credential:
        """Renew now; callers that arrive during a renewal share its outcome instead."""
        attempts = self._attempts
        async with self._lock:
            if self._attempts != attempts:
                # A renewal finished while this caller waited: its result is as new as ours.
                if self._failure is None and self._cached is not None:
                    return self._cached
                raise CloudCredentialsError(self._failure or f"{self.name}: refresh failed")
            return await self._renew(force=True)

    def _usable(self, now: float) -> Credential | None:
        cached = self._cached
        if cached is None or cached.expires_at is None or cached.expires_at <= now:
            return None
        return cached

    async def _renew(self, *, force: bool) -> Credential:
        """Fetch a new credential; call with the lock held."""
        try:
            credential = await self._fetch()
        except CloudCredentialsError as exc:
            self._attempts += 1
            now = self._clock()
            self._failure = str(exc)
            self._failure_until = now + self._retry_seconds
            usable = None if force else self._usable(now)
            self._log.warning(
                "credentials_refresh_failed",
                provider=self.name,
                error=str(exc),
                using_cached=usable is not None,
            )
            if usable is not None:
                self._renew_at = self._failure_until
                return usable
            raise
        now = self._clock()
        expires_at = credential.expires_at if credential.expires_at is not None else now
        renew_at = expires_at - self._margin
        if renew_at <= now:
            # Already inside the margin (or expired by our clock: skew?). Renewing on every
            # call would hammer the server, so reuse it for a while and say so.
            remaining = expires_at - now
            renew_at = now + max(min(_MIN_REUSE_SECONDS, remaining / 2), self._retry_seconds)
            self._log.warning(
                "credentials_short_lived", provider=self.name, expires_in_seconds=round(remaining)
            )
        self._cached = credential
        self._renew_at = renew_at
        self._failure = None
        self._attempts += 1
        self._log.info(
            "credentials_refreshed",
            provider=self.name,
            expires_in_seconds=round(expires_at - now),
        )
        return credential

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"


def _json_object(text: str, *, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        raise CloudCredentialsError(f"{what}: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise CloudCredentialsError(f"{what}: the answer is not a JSON object")
    return data


def _require_str(data: Mapping[str, Any], key: str, *, what: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise CloudCredentialsError(f"{what}: {key} is missing or empty")
    return value


def _require_time(data: Mapping[str, Any], key: str, *, what: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CloudCredentialsError(f"{what}: {key} is missing or not a number")
    return float(value)


def _transport_error(what: str, exc: BaseException) -> CloudCredentialsError:
    # aiohttp messages name host and path, which are not secret; never the body.
    detail = str(exc) or "no detail"
    return CloudCredentialsError(f"{what}: {type(exc).__name__}: {detail}")


class CvmRoleProvider(_CachingProvider):
    """Keys of the CAM role bound to this CVM instance, from the metadata service.

    ``role_name`` skips the role lookup; otherwise the role is looked up on every renewal, so a
    role swapped on the instance is picked up.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str = DEFAULT_METADATA_URL,
        role_name: str | None = None,
        timeout_seconds: float = 5.0,
        refresh_margin: float = REFRESH_MARGIN_SECONDS,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        logger: FilteringBoundLogger | None = None,
        name: str = "cvm-role",
    ) -> None:
        super().__init__(
            clock=clock, refresh_margin=refresh_margin, retry_seconds=retry_seconds, logger=logger
        )
        self.name = name
        self._session = session
        self._role_url = base_url.rstrip("/") + _ROLE_PATH
        self._role_name = role_name
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def _get_text(self, url: str, *, what: str) -> str:
        try:
            async with self._session.get(url, timeout=self._timeout, allow_redirects=False) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as exc:
            raise _transport_error(what, exc) from None
        if status == 404:
            raise CloudCredentialsError(
                f"{what}: the metadata service answered HTTP 404 "
                "(is a CAM role bound to this instance?)"
            )
        if status != 200:
            raise CloudCredentialsError(f"{what}: the metadata service answered HTTP {status}")
        return text

    async def _role(self) -> str:
        if self._role_name:
            return self._role_name
        what = f"{self.name}: role lookup"
        text = await self._get_text(self._role_url, what=what)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise CloudCredentialsError(f"{what}: no CAM role is bound to this instance")
        return lines[0]

    async def _fetch(self) -> Credential:
        role = await self._role()
        what = f"{self.name}: credentials of role {role!r}"
        text = await self._get_text(self._role_url + quote(role, safe=""), what=what)
        data = _json_object(text, what=what)
        code = data.get("Code")
        if code != "Success":
            shown = code if isinstance(code, str) else "missing"
            raise CloudCredentialsError(f"{what}: Code is {shown[:64]!r}, not 'Success'")
        return Credential(
            secret_id=_require_str(data, "TmpSecretId", what=what),
            secret_key=_require_str(data, "TmpSecretKey", what=what),
            token=_require_str(data, "Token", what=what),
            expires_at=_require_time(data, "ExpiredTime", what=what),
        )


class TkeOidcProvider(_CachingProvider):
    """Keys from STS ``AssumeRoleWithWebIdentity`` with a Kubernetes service-account token.

    The request mirrors the official SDK's (``OIDCRoleArnCredential.refresh`` with
    ``SkipSign``): ``POST /`` with a JSON body, ``Authorization: SKIP`` and the ``X-TC-*``
    headers; nothing is signed. Build it from the TKE pod identity webhook's variables with
    :meth:`from_environ`.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        region: str,
        provider_id: str,
        role_arn: str,
        token_file: Path,
        sts_url: str = DEFAULT_STS_URL,
        duration_seconds: int = 7200,
        session_name_prefix: str = "omics-watcher-",
        request_client: str = "omics-watcher",
        language: str | None = "zh-CN",
        timeout_seconds: float = 10.0,
        refresh_margin: float = REFRESH_MARGIN_SECONDS,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        logger: FilteringBoundLogger | None = None,
        name: str = "tke-oidc",
    ) -> None:
        super().__init__(
            clock=clock, refresh_margin=refresh_margin, retry_seconds=retry_seconds, logger=logger
        )
        if not 900 <= duration_seconds <= 43200:
            raise ValueError("duration_seconds must be between 900 and 43200")
        self.name = name
        self._session = session
        self._region = region
        self._provider_id = provider_id
        self._role_arn = role_arn
        self._token_file = token_file
        self._sts_url = sts_url
        self._duration = duration_seconds
        self._session_prefix = session_name_prefix
        self._request_client = request_client
        self._language = language
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], *, session: aiohttp.ClientSession, **kwargs: Any
    ) -> TkeOidcProvider | None:
        """The provider the TKE variables describe; ``None`` when none of them is set.

        Raises :class:`CloudCredentialsError` naming the missing variables when only some are
        set (a half-configured pod identity is a mistake worth stopping for).
        """
        values = {key: environ.get(key, "").strip() for key in TKE_ENV_VARS}
        if not any(values.values()):
            return None
        missing = [key for key, value in values.items() if not value]
        if missing:
            raise CloudCredentialsError(f"tke-oidc: missing environment {', '.join(missing)}")
        return cls(
            session=session,
            region=values["TKE_REGION"],
            provider_id=values["TKE_PROVIDER_ID"],
            role_arn=values["TKE_ROLE_ARN"],
            token_file=Path(values["TKE_WEB_IDENTITY_TOKEN_FILE"]),
            **kwargs,
        )

    async def _read_token(self) -> str:
        what = f"{self.name}: web identity token file {self._token_file}"
        try:
            raw = await asyncio.to_thread(self._token_file.read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CloudCredentialsError(f"{what} is unreadable: {type(exc).__name__}") from None
        # A JWT has no whitespace; a trailing newline from an editor would make STS refuse it.
        token = raw.strip()
        if not token:
            raise CloudCredentialsError(f"{what} is empty")
        return token

    async def _fetch(self) -> Credential:
        token = await self._read_token()
        what = f"{self.name}: {_STS_ACTION}"
        now = self._clock()
        # Same keys, order and encoding (json.dumps defaults) as the SDK's request body.
        body = json.dumps(
            {
                "ProviderId": self._provider_id,
                "WebIdentityToken": token,
                "RoleArn": self._role_arn,
                "RoleSessionName": f"{self._session_prefix}{int(now * 1e6)}",
                "DurationSeconds": self._duration,
            }
        )
        headers = {
            "Content-Type": "application/json",
            "X-TC-Action": _STS_ACTION,
            "X-TC-RequestClient": self._request_client,
            "X-TC-Timestamp": str(int(now)),
            "X-TC-Version": _STS_VERSION,
            "X-TC-Region": self._region,
            "X-TC-TraceId": str(uuid.uuid4()),
            "Authorization": "SKIP",
        }
        if self._language:
            # The SDK's ClientProfile sends zh-CN unless told otherwise; en-US is the other choice.
            headers["X-TC-Language"] = self._language
        try:
            async with self._session.post(
                self._sts_url,
                data=body.encode("utf-8"),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as exc:
            raise _transport_error(what, exc) from None
        if status != 200:
            raise CloudCredentialsError(f"{what}: STS answered HTTP {status}")
        data = _json_object(text, what=what)
        response = data.get("Response")
        if not isinstance(response, dict):
            raise CloudCredentialsError(f"{what}: the answer has no Response object")
        error = response.get("Error")
        if isinstance(error, dict):
            code = str(error.get("Code", "unknown"))[:128]
            message = str(error.get("Message", ""))[:300]
            request_id = response.get("RequestId")
            suffix = f" (RequestId {request_id})" if isinstance(request_id, str) else ""
            raise CloudCredentialsError(f"{what}: {code}: {message}{suffix}")
        credentials = response.get("Credentials")
        if not isinstance(credentials, dict):
            raise CloudCredentialsError(f"{what}: Response.Credentials is missing")
        return Credential(
            secret_id=_require_str(credentials, "TmpSecretId", what=what),
            secret_key=_require_str(credentials, "TmpSecretKey", what=what),
            token=_require_str(credentials, "Token", what=what),
            expires_at=_require_time(response, "ExpiredTime", what=what),
        )
