"""The async Omics API client: signed POSTs over one shared aiohttp session, errors mapped once.

Invariants:

- Every HTTP attempt is signed afresh (TC3, over the exact bytes sent, ``Host`` = the endpoint's
  netloc) inside its action's limiter slot, by a :class:`~watcher.omics.signing.Signer` kept
  while the credential stays the same object (it keeps the day's derived key); the slot
  covers the POST *and* reading the body, because the limiter counts completion times. The
  wait for that slot and the time it is held go to the :class:`RequestObserver` under the
  request's own action (a limiter may be shared).
- Every outcome goes through :func:`interpret_answer`, the one place that turns HTTP status,
  body bytes or a transport exception into a ``Response`` dict or an :class:`OmicsError`.
- Recovery inside :meth:`OmicsClient.call` is bounded, at most once each:
  ``AuthFailure.TokenFailure`` refreshes the credential and retries; ``AuthFailure.SignatureExpire``
  re-estimates the server clock from the ``Date`` header, keeps that offset for later calls
  (:attr:`OmicsClient.clock_skew_seconds`) and retries. ``RequestLimitExceeded*`` tells the
  limiter to slow down and raises :class:`Throttled`. Nothing else is retried here: backoff
  belongs to the scheduler.
- No secret key, token, ``Authorization`` value or signature ever goes into an exception or a
  log line: transport errors are re-raised ``from None`` (aiohttp keeps request headers on its
  exceptions) and server messages are scrubbed of the credential before they are used (with
  :class:`watcher.secrets.Scrubber`, the rules every other place uses).
- The client owns no session and no global state; it never sleeps.
"""

from __future__ import annotations

import errno
import json
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp
import structlog

from watcher import __version__
from watcher.omics.credentials import Credential, CredentialProvider
from watcher.omics.errors import (
    ClockSkew,
    OmicsError,
    Throttled,
    TokenExpired,
    Transient,
    classify,
)
from watcher.omics.limiter import Limiter
from watcher.omics.models import RunMetadata, RunsFilter, RunSummary, required_text
from watcher.omics.signing import Signer
from watcher.secrets import Scrubber

API_VERSION = "2022-11-28"
SERVICE = "omics"
CONTENT_TYPE = "application/json"
MAX_PAGE = 100

_M = TypeVar("_M", RunMetadata, RunSummary)

# json.dumps with separators builds a new encoder per call; this one is stateless and reused.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
# The string encoder that encoder uses (ensure_ascii): a GetRunStatus body is built with it
# directly, the same bytes without walking a dict through the encoder on every poll.
_JSON_STRING: Callable[[str], str] = json.encoder.encode_basestring_ascii


def status_body(run_uuid: str, project_id: str = "") -> bytes:
    """The GetRunStatus body :meth:`OmicsClient.call` would send (an empty ProjectId left out)."""
    text = '{"RunUuid":' + _JSON_STRING(run_uuid)
    if project_id:
        text += ',"ProjectId":' + _JSON_STRING(project_id)
    return (text + "}").encode()


def _describe_body(content_type: str, payload: bytes) -> str:
    # Shape only, never the text: an error page from a proxy may echo our request headers.
    return f"{content_type or 'no content type'}, {len(payload)} bytes"


def interpret_answer(
    *,
    status: int,
    reason: str,
    content_type: str,
    payload: bytes,
    failure: BaseException | None,
    secrets: Sequence[str] = (),
) -> dict[str, Any] | OmicsError:
    """One attempt's outcome: the ``Response`` object, or the :class:`OmicsError` it amounts to.

    ``failure`` is the transport exception when there was no answer (``status`` is then
    ignored). Tencent reports API errors with HTTP 200 and ``Response.Error``; anything the
    client cannot read is :class:`Transient`. ``secrets`` are scrubbed from server messages.
    """
    if failure is not None:
        if isinstance(failure, TimeoutError):
            return Transient("Timeout", "no complete answer within the request timeout")
        cause = transport_cause(failure)
        if isinstance(failure, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            return Transient("ConnectionError", f"{type(failure).__name__}: {failure}", cause=cause)
        return Transient("ClientError", f"{type(failure).__name__}: {failure}", cause=cause)
    if status != 200:
        return Transient(
            f"HTTP{status}", f"HTTP {status} {reason} ({_describe_body(content_type, payload)})"
        )
    if not payload:
        return Transient("MalformedResponse", "empty body with HTTP 200")
    try:
        document = json.loads(payload)
    except ValueError:  # includes UnicodeDecodeError
        return Transient(
            "MalformedResponse", f"body is not JSON ({_describe_body(content_type, payload)})"
        )
    response = document.get("Response") if isinstance(document, dict) else None
    if not isinstance(response, dict):
        return Transient("MalformedResponse", "JSON body without a Response object")
    raw_request_id = response.get("RequestId")
    request_id = raw_request_id if isinstance(raw_request_id, str) else None
    error = response.get("Error")
    if error is None:
        return response
    if not isinstance(error, dict) or not isinstance(error.get("Code"), str):
        return Transient(
            "MalformedResponse", "Response.Error without a Code", request_id=request_id
        )
    message = error.get("Message")
    # Built only here, on the error path: a successful answer costs no scrubber.
    text = Scrubber(secrets)(message) if isinstance(message, str) else ""
    return classify(error["Code"], text, request_id=request_id)


_JSON_DECODER = json.JSONDecoder()


def _plain_answer(payload: bytes) -> dict[str, Any] | None:
    """The ``Response`` object of an HTTP 200 answer that :func:`interpret_answer` would
    return as it is (UTF-8 JSON, a ``Response`` object without ``Error``), else ``None``
    (then it decides). The poll path's shortcut: decoded as ``json.loads`` decodes UTF-8
    bytes (``surrogatepass``), without the encoding sniffing and the error-path setup."""
    # json.loads sniffs the encoding from the first bytes: '{' then a non-NUL is UTF-8.
    if payload[:1] != b"{" or payload[1:2] == b"\x00":
        return None
    try:
        document = _JSON_DECODER.decode(payload.decode("utf-8", "surrogatepass"))
    except ValueError:
        return None
    response = document.get("Response") if type(document) is dict else None
    if type(response) is not dict or response.get("Error") is not None:
        return None
    return response


_ERRNO_CAUSES = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "timeout",
}


def transport_cause(failure: BaseException) -> str:
    """Why a request got no answer, in the words an operator looks for (never a secret:
    from the exception's type and errno only)."""
    if isinstance(failure, TimeoutError):
        return "timeout"
    if isinstance(failure, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return "DNS failure"
    if isinstance(failure, aiohttp.ClientSSLError | ssl.SSLError):
        return "TLS error"
    if isinstance(failure, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(failure, aiohttp.ClientPayloadError):
        return "incomplete answer"
    os_error = failure.os_error if isinstance(failure, aiohttp.ClientConnectorError) else failure
    if isinstance(os_error, OSError) and os_error.errno in _ERRNO_CAUSES:
        return _ERRNO_CAUSES[os_error.errno]
    if isinstance(failure, aiohttp.ClientConnectorError):
        return "cannot connect"
    if isinstance(failure, aiohttp.ClientConnectionError):
        return "connection error"
    return "client error"


def _server_time(date_header: str | None) -> float | None:
    if not date_header:
        return None
    try:
        return parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


class RequestObserver(Protocol):
    """Where each request's limiter wait and duration go, labelled with its own action.

    Not the limiter's business: one limiter may pace several actions (GetRunCalls and
    GetRunJobLog share a budget), and only the client knows which action a request is.
    """

    def waited(self, action: str, seconds: float) -> None: ...

    def completed(self, action: str, seconds: float) -> None: ...


class _Unobserved:
    def waited(self, action: str, seconds: float) -> None:
        pass

    def completed(self, action: str, seconds: float) -> None:
        pass


class _Answer:
    """What one attempt produced, plus what clock-skew recovery needs from it."""

    __slots__ = ("date_header", "received_at", "result")

    def __init__(
        self, result: dict[str, Any] | OmicsError, date_header: str | None, received_at: float
    ) -> None:
        self.result = result
        self.date_header = date_header
        self.received_at = received_at


class StatusAnswer:
    """A GetRunStatus answer as a poller reads it: ``Status`` (checked) and ``raw`` (as sent)."""

    __slots__ = ("Status", "raw")

    def __init__(self, status: str, raw: dict[str, Any]) -> None:
        self.Status = status
        self.raw = raw


class OmicsClient:
    """Calls the Omics API (version 2022-11-28) through per-action limiters."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        endpoint: str,
        region: str,
        credentials: CredentialProvider,
        limiters: Mapping[str, Limiter],
        timeout: float,
        clock: Callable[[], float] = time.time,
        language: str | None = None,
        observer: RequestObserver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint must be an http(s) URL with a host, not {endpoint!r}")
        if "default" not in limiters:
            raise ValueError('limiters needs a "default" entry for actions without their own')
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._host = parts.netloc.rpartition("@")[2]  # never sign or send userinfo
        self._url = f"{parts.scheme}://{self._host}/"
        self._session = session
        self._credentials = credentials
        self._limiters = dict(limiters)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._observer = observer or _Unobserved()
        self._monotonic = monotonic
        self._offset = 0.0
        self._signer: tuple[Credential, Signer] | None = None
        self._log = structlog.get_logger("watcher.omics.client")
        base = {
            "Host": self._host,
            "Content-Type": CONTENT_TYPE,
            "User-Agent": f"omics-watcher/{__version__}",
            "X-TC-Version": API_VERSION,
        }
        if region:
            base["X-TC-Region"] = region
        if language:
            base["X-TC-Language"] = language
        self._base_headers = base

    @property
    def host(self) -> str:
        """The ``Host`` header sent and signed (netloc of the endpoint, port included)."""
        return self._host

    @property
    def clock_skew_seconds(self) -> float:
        """Server clock minus ours, as last estimated after SignatureExpire (0.0 before)."""
        return self._offset

    async def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """POST one action; its ``Response`` object (``RequestId`` included) or an OmicsError."""
        if params.get("ProjectId") == "":
            params = {k: v for k, v in params.items() if k != "ProjectId"}
        return await self._send(action, _COMPACT_JSON.encode(params).encode())

    async def _send(self, action: str, body: bytes) -> dict[str, Any]:
        """:meth:`call` for a body already encoded."""
        limiter = self._limiters.get(action)
        if limiter is None:
            limiter = self._limiters["default"]
        refreshed = resynced = False
        while True:
            credential = await self._credential()
            answer = await self._attempt(action, body, credential, limiter)
            if type(answer) is dict:
                return answer
            assert isinstance(answer, _Answer)
            result = answer.result
            if not isinstance(result, OmicsError):
                return result
            if isinstance(result, Throttled):
                limiter.throttled()
            elif isinstance(result, TokenExpired) and not refreshed:
                refreshed = True
                await self._refresh(result)
                continue
            elif isinstance(result, ClockSkew) and not resynced:
                resynced = True
                self._resync(answer)
                continue
            raise result

    async def _credential(self) -> Credential:
        try:
            return await self._credentials.get()
        except OmicsError:
            raise
        except Exception as exc:
            # The provider's own message names sources, never secrets (its contract).
            raise Transient(
                "CredentialsUnavailable", f"{self._credentials.name}: {type(exc).__name__}: {exc}"
            ) from None

    async def _refresh(self, error: TokenExpired) -> None:
        try:
            await self._credentials.refresh()
        except Exception as exc:
            raise TokenExpired(
                error.code,
                f"{error.message}; refreshing from {self._credentials.name} failed: "
                f"{type(exc).__name__}",
                request_id=error.request_id,
            ) from None
        self._log.info("credentials_refreshed", provider=self._credentials.name)

    def _resync(self, answer: _Answer) -> None:
        server = _server_time(answer.date_header)
        if server is None:
            return  # nothing to estimate from: the retry still signs with a fresh time
        # Date has 1 s resolution and is truncated: the server was in [Date, Date + 1).
        self._offset = server + 0.5 - answer.received_at
        self._log.warning("clock_skew_detected", skew_seconds=round(self._offset, 1))

    async def _attempt(
        self, action: str, body: bytes, credential: Credential, limiter: Limiter
    ) -> dict[str, Any] | _Answer:
        """The ``Response`` object of a plain answer; else what it amounts to, in an _Answer."""
        status, reason, content_type, payload = 0, "", "", b""
        answered: aiohttp.ClientResponse | None = None
        date_header: str | None = None
        failure: BaseException | None = None
        asked = self._monotonic()
        async with limiter.slot():
            granted = self._monotonic()
            self._observer.waited(action, granted - asked)
            # Signed inside the slot so the timestamp is as fresh as the send.
            timestamp = int(self._clock() + self._offset)
            headers = dict(self._base_headers)
            headers["X-TC-Action"] = action
            headers["X-TC-Timestamp"] = str(timestamp)
            headers["Authorization"] = self._signer_for(credential).authorization(body, timestamp)
            if credential.token:
                headers["X-TC-Token"] = credential.token
            try:
                async with self._session.post(
                    self._url,
                    data=body,
                    headers=headers,
                    timeout=self._timeout,
                    allow_redirects=False,  # never replay a signed request to another host
                ) as resp:
                    payload = await resp.read()
                    status = resp.status
                    answered = resp
            except (TimeoutError, aiohttp.ClientError) as exc:
                failure = exc
            finally:  # cancelled or not, the request held its permit this long
                self._observer.completed(action, self._monotonic() - granted)
        if failure is None:
            assert answered is not None
            if status == 200:
                response = _plain_answer(payload)
                if response is not None:
                    return response  # the common case: no error to classify or scrub
            reason = answered.reason or ""
            content_type = answered.headers.get("Content-Type", "")
            date_header = answered.headers.get("Date")
        authorization = headers["Authorization"]
        secrets = (
            credential.secret_key,
            credential.token or "",
            authorization,  # before the signature alone, so the whole header goes at once
            authorization.rpartition("=")[2],
        )
        result = interpret_answer(
            status=status,
            reason=reason,
            content_type=content_type,
            payload=payload,
            failure=failure,
            secrets=secrets,
        )
        return _Answer(result, date_header, self._clock())

    def _signer_for(self, credential: Credential) -> Signer:
        kept = self._signer
        if kept is not None and kept[0] is credential:
            return kept[1]
        signer = Signer(
            secret_id=credential.secret_id,
            secret_key=credential.secret_key,
            host=self._host,
            service=SERVICE,
            content_type=CONTENT_TYPE,
        )
        self._signer = (credential, signer)
        return signer

    async def get_run_status(self, run_uuid: str, project_id: str = "") -> RunMetadata:
        """GetRunStatus: the run's RunMetadata."""
        response = await self.call("GetRunStatus", {"RunUuid": run_uuid, "ProjectId": project_id})
        return _parse(RunMetadata, response.get("Metadata"), response, "Metadata")

    async def run_status(self, run_uuid: str, project_id: str = "") -> StatusAnswer:
        """GetRunStatus for a poller: the Status and the raw Metadata, no :class:`RunMetadata`.

        A poll mostly finds the status unchanged, and a poller reads nothing but ``Status``
        and ``raw`` (the event carries ``raw``), so this checks only what ``get_run_status``
        would refuse (a Metadata that is no object, a missing or blank Status) with the same
        :class:`Transient` errors, and skips building the model: the same outcome, less CPU.
        """
        # The body built directly (the bytes call() would send): no dict, no encoder walk.
        response = await self._send("GetRunStatus", status_body(run_uuid, project_id))
        metadata = response.get("Metadata")
        if metadata is None:
            raise _malformed(response, "answer without Metadata")
        if not isinstance(metadata, dict):
            raise _malformed(response, "RunMetadata: not an object")
        try:
            status = required_text(metadata, "Status", "RunMetadata")
        except Transient as exc:
            raise _malformed(response, exc.message) from None
        return StatusAnswer(status, metadata)

    async def describe_runs(
        self,
        *,
        project_id: str = "",
        filters: Sequence[RunsFilter] = (),
        limit: int = MAX_PAGE,
        offset: int = 0,
    ) -> tuple[int, list[RunSummary]]:
        """One DescribeRuns page: ``(TotalCount, runs)``."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be within 1..{MAX_PAGE}")
        if offset < 0:
            raise ValueError("offset must not be negative")
        params: dict[str, Any] = {"Limit": limit, "Offset": offset}
        if filters:
            params["Filters"] = [item.to_api() for item in filters]
        if project_id:
            params["ProjectId"] = project_id
        response = await self.call("DescribeRuns", params)
        total = response.get("TotalCount")
        if not isinstance(total, int) or isinstance(total, bool):
            raise _malformed(response, "DescribeRuns answer without an integer TotalCount")
        items = _items(response, "Runs")
        return total, [_parse(RunSummary, item, response, "Runs[]") for item in items]

    async def get_run_calls(
        self, run_uuid: str, project_id: str = "", path: str = "/"
    ) -> list[RunMetadata]:
        """GetRunCalls: the tasks and sub-workflows under ``path`` (``/`` = the root)."""
        response = await self.call(
            "GetRunCalls", {"RunUuid": run_uuid, "Path": path, "ProjectId": project_id}
        )
        return [
            _parse(RunMetadata, item, response, "Calls[]") for item in _items(response, "Calls")
        ]

    async def get_run_job_log(
        self,
        run_uuid: str,
        job_id: str,
        log_type: str = "stderr",
        project_id: str = "",
        path: str = "",
    ) -> str:
        """GetRunJobLog: the text of one task's stdout or stderr."""
        params: dict[str, Any] = {"RunUuid": run_uuid, "JobId": job_id, "LogType": log_type}
        if path:
            params["Path"] = path
        params["ProjectId"] = project_id
        response = await self.call("GetRunJobLog", params)
        content = response.get("Content")
        if content is None:
            return ""
        if not isinstance(content, str):
            raise _malformed(response, "GetRunJobLog Content is not text")
        return content


def _request_id(response: Mapping[str, Any]) -> str | None:
    value = response.get("RequestId")
    return value if isinstance(value, str) else None


def _malformed(response: Mapping[str, Any], message: str) -> Transient:
    return Transient("MalformedResponse", message, request_id=_request_id(response))


def _items(response: Mapping[str, Any], key: str) -> list[Any]:
    items = response.get(key)
    if items is None:  # Tencent answers null for an empty list
        return []
    if not isinstance(items, list):
        raise _malformed(response, f"{key} is not a list")
    return items


def _parse(model: type[_M], obj: object, response: Mapping[str, Any], where: str) -> _M:
    if obj is None:
        raise _malformed(response, f"answer without {where}")
    try:
        return model.from_api(obj)
    except Transient as exc:
        raise Transient(exc.code, exc.message, request_id=_request_id(response)) from None
