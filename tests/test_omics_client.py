"""The Omics client against real local HTTP servers on 127.0.0.1.

A small aiohttp server plays Tencent: it verifies every request's TC3 signature with
``watcher.omics.signing`` (recomputed from the bytes and headers it received) and answers from
a per-test script. Transport faults come from real sockets: a listener that closes connections
without answering, and a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from watcher.omics import signing
from watcher.omics.client import OmicsClient, interpret_answer
from watcher.omics.credentials import Credential, StaticProvider
from watcher.omics.errors import (
    AuthError,
    BadRequest,
    ClockSkew,
    OmicsError,
    RunNotFound,
    Throttled,
    TokenExpired,
    Transient,
)
from watcher.omics.models import RunsFilter
from watcher.simulator import Simulator, SimulatorConfig

SECRET_ID = "AKIDtestSECRETID0000000000000000"
SECRET_KEY = "sk-very-secret-key-0123456789abcdef"
TOKEN = "tok-temporary-token-value-abcdef"
NEW_TOKEN = "tok-renewed-token-value-123456"
RUN = "84232c68-a016-4668-b2e3-168a175d6f29"
METADATA = {
    "RunId": RUN,
    "RunType": "Workflow",
    "Status": "RUNNING",
    "StartTime": "2022-10-31T14:10:13+08:00",
    "EndTime": "",
    "ErrorMessage": "{}",
}

Behaviour = Callable[["Seen"], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """One request as the server received it."""

    request: web.Request
    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    params: Any = None

    @property
    def action(self) -> str:
        return self.headers.get("X-TC-Action", "")


def envelope(response: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(
        body=json.dumps({"Response": response}).encode(),
        content_type="application/json",
        headers=headers,
    )


def api_error(code: str, message: str = "refused", **headers: str) -> Behaviour:
    async def answer(seen: Seen) -> web.StreamResponse:
        return envelope(
            {"Error": {"Code": code, "Message": message}, "RequestId": "rid-err"}, **headers
        )

    return answer


def answer_with(response: dict[str, Any]) -> Behaviour:
    async def answer(seen: Seen) -> web.StreamResponse:
        return envelope(response)

    return answer


async def metadata_ok(seen: Seen) -> web.StreamResponse:
    return envelope({"Metadata": METADATA, "RequestId": "rid-ok"})


@dataclass
class FakeOmics:
    """Scripted answers (then ``default``) and a log of what was received."""

    secret_key: str = SECRET_KEY
    script: list[Behaviour] = field(default_factory=list)
    default: Behaviour = metadata_ok
    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        try:
            expected = signing.sign(
                secret_id=SECRET_ID,
                secret_key=self.secret_key,
                host=headers["Host"],
                body=body,
                timestamp=int(headers["X-TC-Timestamp"]),
                content_type=headers["Content-Type"],
            )
            ok = expected == headers.get("Authorization")
        except (KeyError, ValueError):
            ok = False
        params = json.loads(body) if body else None
        seen = Seen(request, headers=headers, body=body, signature_ok=ok, params=params)
        self.seen.append(seen)
        if not ok:
            return await api_error("AuthFailure.SignatureFailure", "bad signature")(seen)
        behaviour = self.script.pop(0) if self.script else self.default
        return await behaviour(seen)


class RecordingLimiter:
    """A limiter double: counts slots and throttling signals, times each slot."""

    def __init__(self) -> None:
        self.slots = 0
        self.active = 0
        self.throttles = 0
        self.durations: list[float] = []

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        self.slots += 1
        self.active += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self.active -= 1
            self.durations.append(time.monotonic() - started)

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._slot()

    def throttled(self) -> None:
        self.throttles += 1


class RotatingProvider:
    """Temporary credentials: ``refresh`` hands out the next token."""

    name = "test-rotating"

    def __init__(self, *tokens: str, fail_refresh: bool = False) -> None:
        self._tokens = list(tokens)
        self.current = Credential(SECRET_ID, SECRET_KEY, self._tokens.pop(0))
        self.refreshes = 0
        self.fail_refresh = fail_refresh

    async def get(self) -> Credential:
        return self.current

    async def refresh(self) -> Credential:
        self.refreshes += 1
        if self.fail_refresh:
            raise RuntimeError("metadata service unreachable")
        if self._tokens:
            self.current = Credential(SECRET_ID, SECRET_KEY, self._tokens.pop(0))
        return self.current


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOmics, str]]:
    omics = FakeOmics()
    app = web.Application()
    app.router.add_post("/", omics.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield omics, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest.fixture
def limiter() -> RecordingLimiter:
    return RecordingLimiter()


def make_client(
    session: aiohttp.ClientSession,
    endpoint: str,
    limiter: RecordingLimiter,
    *,
    provider: Any = None,
    timeout: float = 5.0,
    clock: Callable[[], float] = time.time,
    **limiters: RecordingLimiter,
) -> OmicsClient:
    return OmicsClient(
        session=session,
        endpoint=endpoint,
        region="ap-guangzhou",
        credentials=provider or StaticProvider(Credential(SECRET_ID, SECRET_KEY), name="test"),
        limiters={"default": limiter, **limiters},
        timeout=timeout,
        clock=clock,
    )


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    """Nothing secret in the exception or anything chained to it."""
    secrets = (SECRET_KEY, TOKEN, NEW_TOKEN, "Signature=", "TC3-HMAC-SHA256", *secrets)
    current: BaseException | None = exc
    while current is not None:
        texts = [str(current), repr(current), repr(current.args), repr(vars(current))]
        for text in texts:
            for secret in secrets:
                assert secret not in text, f"{secret!r} leaked in {type(current).__name__}"
        current = current.__cause__ or current.__context__


# --- the request on the wire -------------------------------------------------------------


async def test_get_run_status_request_and_answer(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake
    client = make_client(session, endpoint, limiter)
    before = int(time.time())
    meta = await client.get_run_status(RUN)
    assert meta.Status == "RUNNING"
    assert meta.raw == METADATA
    (seen,) = omics.seen
    assert seen.signature_ok
    assert seen.body == b'{"RunUuid":"84232c68-a016-4668-b2e3-168a175d6f29"}'  # no empty ProjectId
    h = seen.headers
    assert h["Host"] == endpoint.removeprefix("http://")  # netloc, port included
    assert h["Content-Type"] == "application/json"
    assert h["X-TC-Action"] == "GetRunStatus"
    assert h["X-TC-Version"] == "2022-11-28"
    assert h["X-TC-Region"] == "ap-guangzhou"
    assert before <= int(h["X-TC-Timestamp"]) <= int(time.time())
    assert "X-TC-Token" not in h
    assert "X-TC-Language" not in h
    assert h["Authorization"].startswith(f"TC3-HMAC-SHA256 Credential={SECRET_ID}/")
    assert limiter.slots == 1
    assert limiter.active == 0
    assert client.clock_skew_seconds == 0.0


async def test_project_id_token_and_language_are_sent(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake
    client = OmicsClient(
        session=session,
        endpoint=endpoint,
        region="",
        credentials=RotatingProvider(TOKEN),
        limiters={"default": limiter},
        timeout=5,
        language="en-US",
    )
    await client.get_run_status(RUN, project_id="prj-1")
    (seen,) = omics.seen
    assert seen.signature_ok
    assert seen.body == f'{{"RunUuid":"{RUN}","ProjectId":"prj-1"}}'.encode()
    assert seen.headers["X-TC-Token"] == TOKEN
    assert seen.headers["X-TC-Language"] == "en-US"
    assert "X-TC-Region" not in seen.headers


def test_host_is_the_endpoints_netloc() -> None:
    async def build(endpoint: str) -> str:
        async with aiohttp.ClientSession() as shared:
            return make_client(shared, endpoint, RecordingLimiter()).host

    assert asyncio.run(build("https://omics.tencentcloudapi.com")) == "omics.tencentcloudapi.com"
    assert asyncio.run(build("http://127.0.0.1:8080/")) == "127.0.0.1:8080"
    assert asyncio.run(build("https://u:p@example.org:8443")) == "example.org:8443"
    for bad in ("omics.tencentcloudapi.com", "ftp://x", "http://"):
        with pytest.raises(ValueError, match="endpoint"):
            asyncio.run(build(bad))


async def test_each_action_uses_its_own_limiter_or_default(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake
    status_limiter = RecordingLimiter()
    client = make_client(session, endpoint, limiter, GetRunStatus=status_limiter)
    await client.get_run_status(RUN)
    omics.default = answer_with({"Calls": None, "RequestId": "r"})
    assert await client.get_run_calls(RUN) == []
    assert status_limiter.slots == 1
    assert limiter.slots == 1


async def test_the_slot_covers_reading_the_body(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake
    release = asyncio.Event()

    async def slow_body(seen: Seen) -> web.StreamResponse:
        body = json.dumps({"Response": {"Metadata": METADATA, "RequestId": "r"}}).encode()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(seen.request)
        await resp.write(body[:10])
        await release.wait()
        await resp.write(body[10:])
        await resp.write_eof()
        return resp

    omics.script.append(slow_body)
    client = make_client(session, endpoint, limiter)
    task = asyncio.create_task(client.get_run_status(RUN))
    await asyncio.sleep(0.15)
    assert limiter.active == 1  # headers are in, the body is not: still inside the slot
    release.set()
    assert (await task).Status == "RUNNING"
    assert limiter.active == 0
    assert limiter.durations[0] >= 0.15


# --- API errors, decided from Error.Code ---------------------------------------------------

ERROR_TABLE = [
    ("RequestLimitExceeded", Throttled),
    ("RequestLimitExceeded.UinLimitExceeded", Throttled),
    ("RequestLimitExceeded.GlobalRegionUinLimitExceeded", Throttled),
    ("RequestLimitExceeded.IPLimitExceeded", Throttled),
    ("InternalError", Transient),
    ("ServiceUnavailable", Transient),
    ("ResourceUnavailable", Transient),
    ("AuthFailure.SignatureExpire", ClockSkew),
    ("AuthFailure.TokenFailure", TokenExpired),
    ("AuthFailure.SecretIdNotFound", AuthError),
    ("AuthFailure.SignatureFailure", AuthError),
    ("UnauthorizedOperation", AuthError),
    ("OperationDenied", AuthError),
    ("ResourceNotFound.RunNotExist", RunNotFound),
    ("InvalidParameter", BadRequest),
    ("InvalidParameterValue", BadRequest),
    ("MissingParameter", BadRequest),
    ("InvalidAction", BadRequest),
    ("SomethingNobodyDocumented", Transient),
]


@pytest.mark.parametrize(("code", "expected"), ERROR_TABLE)
async def test_error_codes_map_to_classes(
    fake: tuple[FakeOmics, str],
    session: aiohttp.ClientSession,
    limiter: RecordingLimiter,
    code: str,
    expected: type[OmicsError],
) -> None:
    omics, endpoint = fake
    omics.default = api_error(code, "the message")
    client = make_client(session, endpoint, limiter, provider=RotatingProvider(TOKEN, NEW_TOKEN))
    with pytest.raises(OmicsError) as caught:
        await client.get_run_status(RUN)
    assert type(caught.value) is expected
    assert caught.value.code == code
    assert caught.value.message == "the message"
    assert caught.value.request_id == "rid-err"
    retried = code in ("AuthFailure.SignatureExpire", "AuthFailure.TokenFailure")
    assert len(omics.seen) == (2 if retried else 1)  # bounded: at most one recovery each
    assert all(seen.signature_ok for seen in omics.seen)
    assert limiter.throttles == (1 if expected is Throttled else 0)
    assert_no_secret(caught.value)


# --- answers that are not API answers ------------------------------------------------------


def _raw(status: int, body: bytes, content_type: str) -> Behaviour:
    async def answer(seen: Seen) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    return answer


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        (_raw(502, b"<html><body>502 Bad Gateway</body></html>", "text/html"), "HTTP502"),
        (_raw(503, b"", "text/plain"), "HTTP503"),
        (_raw(404, b'{"Response": {"RequestId": "x"}}', "application/json"), "HTTP404"),
        (_raw(200, b"<html>maintenance</html>", "text/html"), "MalformedResponse"),
        (_raw(200, b"", "application/json"), "MalformedResponse"),
        (_raw(200, b"\xff\xfe\x00garbage", "application/json"), "MalformedResponse"),
        (_raw(200, b'{"Result": {}}', "application/json"), "MalformedResponse"),
        (_raw(200, b'{"Response": "fine"}', "application/json"), "MalformedResponse"),
        (_raw(200, b"[1, 2, 3]", "application/json"), "MalformedResponse"),
        (_raw(200, b'{"Response": {"Error": "x"}}', "application/json"), "MalformedResponse"),
        (_raw(200, b'{"Response": {"RequestId": "x"}}', "application/json"), "MalformedResponse"),
        (
            _raw(200, b'{"Response": {"Metadata": {"RunId": "x"}}}', "application/json"),
            "MalformedResponse",
        ),
        (
            _raw(200, b'{"Response": {"Metadata": {"Status": 7}}}', "application/json"),
            "MalformedResponse",
        ),
    ],
    ids=[
        "502-html",
        "503-empty",
        "404-json",
        "200-html",
        "200-empty",
        "200-binary",
        "no-Response",
        "Response-not-object",
        "top-level-array",
        "Error-not-object",
        "no-Metadata",
        "Metadata-without-Status",
        "Status-not-string",
    ],
)
async def test_unreadable_answers_are_transient(
    fake: tuple[FakeOmics, str],
    session: aiohttp.ClientSession,
    limiter: RecordingLimiter,
    behaviour: Behaviour,
    code: str,
) -> None:
    omics, endpoint = fake
    omics.default = behaviour
    client = make_client(session, endpoint, limiter)
    with pytest.raises(Transient) as caught:
        await client.get_run_status(RUN)
    assert caught.value.code == code
    assert "maintenance" not in str(caught.value)  # bodies are described, never quoted
    assert len(omics.seen) == 1
    assert limiter.active == 0
    assert_no_secret(caught.value)


@pytest.mark.parametrize(
    "metadata",
    [
        METADATA,
        {"Status": "FAILED", "ErrorMessage": 12, "Preprocess": "junk", "Extra": [1]},
        {"Status": "  "},
        {"Status": 7},
        {"RunId": "x"},
        [1, 2],
        "text",
        None,
    ],
    ids=["full", "bad-fields", "blank", "not-text", "no-Status", "list", "text", "null"],
)
async def test_run_status_answers_as_get_run_status_does(
    fake: tuple[FakeOmics, str],
    session: aiohttp.ClientSession,
    limiter: RecordingLimiter,
    metadata: object,
) -> None:
    """The pollers' quick GetRunStatus: the same Status and raw object, the same errors."""
    omics, endpoint = fake

    async def answer(seen: Seen) -> web.StreamResponse:
        return envelope({"Metadata": metadata, "RequestId": "rid-q"})

    omics.default = answer
    client = make_client(session, endpoint, limiter)
    outcomes: list[object] = []
    for ask in (client.get_run_status, client.run_status):
        try:
            got = await ask(RUN)
        except Transient as exc:
            outcomes.append((type(exc), exc.code, exc.message, exc.request_id))
        else:
            outcomes.append((got.Status, got.raw))
    assert outcomes[0] == outcomes[1]
    assert [seen.params for seen in omics.seen] == [{"RunUuid": RUN}] * 2


async def test_slow_answer_times_out(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake

    async def slow(seen: Seen) -> web.StreamResponse:
        await asyncio.sleep(2)
        return await metadata_ok(seen)

    omics.default = slow
    client = make_client(session, endpoint, limiter, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(Transient) as caught:
        await client.get_run_status(RUN)
    assert caught.value.code == "Timeout"
    assert time.monotonic() - started < 1.5
    assert limiter.active == 0
    assert_no_secret(caught.value)


@pytest.fixture
async def hangup_endpoint() -> AsyncIterator[str]:
    """A listener that reads a request and closes the connection without a word."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_dropped_connection_is_transient(
    hangup_endpoint: str, session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    client = make_client(session, hangup_endpoint, limiter)
    with pytest.raises(Transient) as caught:
        await client.get_run_status(RUN)
    assert caught.value.code == "ConnectionError"
    assert limiter.active == 0
    assert_no_secret(caught.value)


async def test_refused_connection_is_transient(
    session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(session, f"http://127.0.0.1:{port}", limiter)
    with pytest.raises(Transient) as caught:
        await client.get_run_status(RUN)
    assert caught.value.code == "ConnectionError"
    assert_no_secret(caught.value)


# --- bounded recovery ----------------------------------------------------------------------


async def test_token_failure_refreshes_once_and_succeeds(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake

    async def needs_new_token(seen: Seen) -> web.StreamResponse:
        if seen.headers.get("X-TC-Token") != NEW_TOKEN:
            return await api_error("AuthFailure.TokenFailure", "token expired")(seen)
        return await metadata_ok(seen)

    omics.default = needs_new_token
    provider = RotatingProvider(TOKEN, NEW_TOKEN)
    client = make_client(session, endpoint, limiter, provider=provider)
    assert (await client.get_run_status(RUN)).Status == "RUNNING"
    assert provider.refreshes == 1
    assert [s.headers.get("X-TC-Token") for s in omics.seen] == [TOKEN, NEW_TOKEN]
    assert all(s.signature_ok for s in omics.seen)  # re-signed for the second attempt
    assert limiter.slots == 2  # each attempt goes through the limiter
    # a later call uses the refreshed credential straight away
    await client.get_run_status(RUN)
    assert provider.refreshes == 1
    assert len(omics.seen) == 3


async def test_token_failure_with_failing_refresh_is_an_auth_error(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake
    omics.default = api_error("AuthFailure.TokenFailure", "token expired")
    provider = RotatingProvider(TOKEN, fail_refresh=True)
    client = make_client(session, endpoint, limiter, provider=provider)
    with pytest.raises(TokenExpired) as caught:
        await client.get_run_status(RUN)
    assert provider.refreshes == 1
    assert len(omics.seen) == 1
    assert "RuntimeError" in caught.value.message
    assert_no_secret(caught.value)


async def test_signature_expire_resyncs_from_the_server_date(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake
    skew = 3600.0  # our clock is an hour behind the server's

    async def checks_time(seen: Seen) -> web.StreamResponse:
        server_now = time.time()
        if abs(int(seen.headers["X-TC-Timestamp"]) - server_now) > 300:
            return await api_error(
                "AuthFailure.SignatureExpire",
                "signature expired",
                Date=formatdate(server_now, usegmt=True),
            )(seen)
        return await metadata_ok(seen)

    omics.default = checks_time
    client = make_client(session, endpoint, limiter, clock=lambda: time.time() - skew)
    assert (await client.get_run_status(RUN)).Status == "RUNNING"
    assert len(omics.seen) == 2
    assert all(s.signature_ok for s in omics.seen)
    first, second = (int(s.headers["X-TC-Timestamp"]) for s in omics.seen)
    assert abs(second - first - skew) <= 2
    assert abs(client.clock_skew_seconds - skew) <= 2
    # the offset is kept: the next call is right the first time
    await client.get_run_status(RUN)
    assert len(omics.seen) == 3


async def test_persistent_signature_expire_is_clock_skew(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake
    omics.default = api_error("AuthFailure.SignatureExpire", "signature expired")
    client = make_client(session, endpoint, limiter)
    with pytest.raises(ClockSkew):
        await client.get_run_status(RUN)
    assert len(omics.seen) == 2


# --- no secret in errors -------------------------------------------------------------------


async def test_server_messages_echoing_secrets_are_scrubbed(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake

    async def echo(seen: Seen) -> web.StreamResponse:
        leak = f"bad request {seen.headers['Authorization']} key={SECRET_KEY} token={TOKEN}"
        return await api_error("InvalidParameter", leak)(seen)

    omics.default = echo
    client = make_client(session, endpoint, limiter, provider=RotatingProvider(TOKEN))
    with pytest.raises(BadRequest) as caught:
        await client.get_run_status(RUN)
    assert "***" in caught.value.message
    signature = omics.seen[0].headers["Authorization"].rsplit("=", 1)[1]
    assert_no_secret(caught.value, signature)


async def test_credential_source_failure_is_transient(
    session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    class Broken:
        name = "broken"

        async def get(self) -> Credential:
            raise OSError("profile unreadable")

        async def refresh(self) -> Credential:
            raise OSError("profile unreadable")

    client = make_client(session, "http://127.0.0.1:9", limiter, provider=Broken())
    with pytest.raises(Transient, match="CredentialsUnavailable"):
        await client.get_run_status(RUN)
    assert limiter.slots == 0


def test_interpret_answer_prefers_transport_failures() -> None:
    result = interpret_answer(
        status=200, reason="OK", content_type="", payload=b"", failure=TimeoutError()
    )
    assert isinstance(result, Transient)
    assert result.code == "Timeout"


# --- the other actions ---------------------------------------------------------------------


def _run_item(index: int) -> dict[str, Any]:
    return {
        "RunUuid": f"00000000-0000-4000-8000-{index:012d}",
        "ProjectId": "prj-1",
        "Status": "RUNNING" if index % 2 else "SUCCESS",
        "ExecutionTime": {
            "SubmitTime": "2022-10-31T14:10:12+08:00",
            "StartTime": "",
            "EndTime": "",
        },
    }


async def test_describe_runs_sends_paging_and_filters(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake
    runs = [_run_item(i) for i in range(250)]

    async def pages(seen: Seen) -> web.StreamResponse:
        start, limit = seen.params["Offset"], seen.params["Limit"]
        return envelope(
            {"TotalCount": len(runs), "Runs": runs[start : start + limit], "RequestId": "r"}
        )

    omics.default = pages
    client = make_client(session, endpoint, limiter)
    filters = [RunsFilter("Status", ["RUNNING", "QUEUED"]), RunsFilter("RunGroupId", ["rg-1"])]
    total, first = await client.describe_runs(project_id="prj-1", filters=filters, limit=10)
    assert total == 250
    assert [r.RunUuid for r in first] == [r["RunUuid"] for r in runs[:10]]
    assert first[0].ExecutionTime is not None
    assert omics.seen[0].params == {
        "Limit": 10,
        "Offset": 0,
        "Filters": [
            {"Name": "Status", "Values": ["RUNNING", "QUEUED"]},
            {"Name": "RunGroupId", "Values": ["rg-1"]},
        ],
        "ProjectId": "prj-1",
    }
    total, last = await client.describe_runs(filters=filters, offset=200)
    assert [r.RunUuid for r in last] == [r["RunUuid"] for r in runs[200:]]
    assert omics.seen[1].params["Offset"] == 200
    assert omics.seen[1].params["Limit"] == 100
    assert "ProjectId" not in omics.seen[1].params
    with pytest.raises(ValueError, match="limit"):
        await client.describe_runs(limit=101)


async def test_describe_runs_reads_null_runs_as_an_empty_page(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake
    # Tencent answers null, not [], past the end of the list.
    omics.script = [answer_with({"TotalCount": 5, "Runs": None, "RequestId": "r"})]
    client = make_client(session, endpoint, limiter)
    assert await client.describe_runs(offset=5) == (5, [])


async def test_get_run_calls_and_job_log(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake
    calls = [
        {**METADATA, "RunType": "Task", "JobId": "job-1", "Status": "EXECUTOR_ERROR"},
        {**METADATA, "RunType": "Task", "JobId": "job-2", "Status": "COMPLETE", "Extra": 1},
    ]

    async def answer(seen: Seen) -> web.StreamResponse:
        if seen.action == "GetRunCalls":
            return envelope({"Calls": calls, "RequestId": "r"})
        return envelope({"Content": "line 1\nboom\n", "RequestId": "r"})

    omics.default = answer
    client = make_client(session, endpoint, limiter)
    found = await client.get_run_calls(RUN, project_id="prj-1")
    assert [c.JobId for c in found] == ["job-1", "job-2"]
    assert found[1].model_extra == {"Extra": 1}
    assert omics.seen[0].params == {"RunUuid": RUN, "Path": "/", "ProjectId": "prj-1"}
    assert await client.get_run_job_log(RUN, "job-1") == "line 1\nboom\n"
    assert omics.seen[1].params == {"RunUuid": RUN, "JobId": "job-1", "LogType": "stderr"}
    assert omics.seen[1].action == "GetRunJobLog"
    await client.get_run_job_log(RUN, "job-1", log_type="stdout", path="/sub", project_id="p")
    assert omics.seen[2].params == {
        "RunUuid": RUN,
        "JobId": "job-1",
        "LogType": "stdout",
        "Path": "/sub",
        "ProjectId": "p",
    }


async def test_call_returns_the_response_object(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    omics, endpoint = fake
    omics.default = answer_with({"RunGroups": [], "TotalCount": 0, "RequestId": "rid"})
    client = make_client(session, endpoint, limiter)
    answer = await client.call("DescribeRunGroups", {"Limit": 1, "ProjectId": ""})
    assert answer == {"RunGroups": [], "TotalCount": 0, "RequestId": "rid"}
    assert omics.seen[0].body == b'{"Limit":1}'
    assert omics.seen[0].action == "DescribeRunGroups"


# --- against the simulator -----------------------------------------------------------------


@pytest.mark.parametrize(
    "simulator", [SimulatorConfig(runs=23, seed=3, rate_limit=1000)], indirect=True
)
async def test_against_the_simulator(simulator: Simulator, client: OmicsClient) -> None:
    for run_uuid in simulator.run_uuids[:3]:
        meta = await client.get_run_status(run_uuid)
        assert meta.Status == simulator.status(run_uuid)
        assert meta.raw["Status"] == meta.Status
    found = []
    for offset in (0, 10, 20):
        total, page = await client.describe_runs(limit=10, offset=offset)
        found += page
    assert total == len(found)
    assert sorted(run.RunUuid for run in found) == sorted(simulator.run_uuids)
    running = [RunsFilter("Status", ["QUEUED", "INITIALIZING", "RUNNING"])]
    total, page = await client.describe_runs(filters=running, limit=100)
    assert total == len(page)
    assert all(run.Status in ("QUEUED", "INITIALIZING", "RUNNING") for run in page)
    with pytest.raises(RunNotFound) as caught:
        await client.get_run_status("00000000-0000-4000-8000-000000000000")
    assert caught.value.code == "ResourceNotFound.RunNotExist"
    assert caught.value.request_id
    assert_no_secret(caught.value, simulator.secret_key)
    stats = simulator.stats(timeline=False)
    assert stats["signature_failures"] == 0
    assert stats["auth_failures"] == 0
    assert stats["throttled_total"] == 0
    assert stats["requests_total"] == 3 + 3 + 1 + 1  # status x3, three pages, filter, unknown
    assert client.clock_skew_seconds == 0.0


async def test_a_new_key_signs_from_its_first_request_and_the_day_rolls_over(
    fake: tuple[FakeOmics, str], session: aiohttp.ClientSession, limiter: RecordingLimiter
) -> None:
    # The client keeps its signer (and the day's derived key) while the credential stays the
    # same object: a rotated key must sign the very next request, and a request after UTC
    # midnight must use the new day's key (the server here checks both).
    omics, endpoint = fake

    class Rotated:
        name = "test-rotated"
        current = Credential(SECRET_ID, SECRET_KEY)

        async def get(self) -> Credential:
            return self.current

        async def refresh(self) -> Credential:
            return self.current

    provider = Rotated()
    midnight = 1_700_006_400  # a UTC midnight
    now = [midnight - 1.5]
    client = make_client(session, endpoint, limiter, provider=provider, clock=lambda: now[0])
    assert (await client.get_run_status(RUN)).Status == "RUNNING"
    now[0] = midnight + 0.5
    assert (await client.get_run_status(RUN)).Status == "RUNNING"
    provider.current = Credential(SECRET_ID, "a-rotated-secret-key")
    omics.secret_key = "a-rotated-secret-key"
    assert (await client.get_run_status(RUN)).Status == "RUNNING"
    assert [s.signature_ok for s in omics.seen] == [True, True, True]
    days = [s.headers["Authorization"].split("/")[1] for s in omics.seen]
    assert days == ["2023-11-14", "2023-11-15", "2023-11-15"]


@pytest.mark.parametrize(
    ("run_uuid", "project_id"),
    [(RUN, ""), (RUN, "prj-1"), ('a"b\\c\n\t\x00', "项目 ü"), ("run-\U0001f600\u2028", "")],
    ids=["plain", "project", "escapes", "non-bmp"],
)
async def test_run_status_sends_the_bytes_get_run_status_sends(
    fake: tuple[FakeOmics, str],
    session: aiohttp.ClientSession,
    limiter: RecordingLimiter,
    run_uuid: str,
    project_id: str,
) -> None:
    """The pollers' GetRunStatus body is built without the JSON encoder: the same bytes, signed."""
    omics, endpoint = fake
    client = make_client(session, endpoint, limiter)
    await client.get_run_status(run_uuid, project_id)
    await client.run_status(run_uuid, project_id)
    first, second = omics.seen
    assert first.signature_ok
    assert second.signature_ok
    assert second.body == first.body
    assert json.loads(second.body) == (
        {"RunUuid": run_uuid, "ProjectId": project_id} if project_id else {"RunUuid": run_uuid}
    )
