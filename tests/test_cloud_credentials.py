"""CVM-role and TKE-OIDC providers against fake metadata and STS servers on 127.0.0.1.

The official SDK is the independent peer: its ``CVMRoleCredential`` reads the same fake
metadata service, and its ``OIDCRoleArnCredential`` sends its request to the same fake STS so
that the two requests can be compared header by header.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from watcher.omics.cloud_credentials import (
    CloudCredentialsError,
    CvmRoleProvider,
    TkeOidcProvider,
)
from watcher.omics.credentials import Credential, CredentialProvider, CredentialsError

T0 = 1_800_000_000.0
SECRET_MARK = "s3cr3t"  # every secret the fakes hand out contains this


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _json(data: Any, status: int = 200) -> web.Response:
    # Tencent answers exactly "application/json", without a charset (the SDK checks it).
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


# -- fake CVM metadata service -------------------------------------------------------------------


@dataclass
class Metadata:
    role: str = "omics-role"
    lifetime: float = 3600.0
    delay: float = 0.0
    clock: Clock = field(default_factory=Clock)
    role_status: int = 200
    cred_status: int = 200
    cred_body: str | None = None
    role_hits: int = 0
    cred_hits: int = 0
    issued: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/latest/meta-data/cam/security-credentials/", self.role_list)
        app.router.add_get("/latest/meta-data/cam/security-credentials/{role}", self.creds)
        return app

    async def role_list(self, request: web.Request) -> web.Response:
        self.role_hits += 1
        if self.role_status != 200:
            return web.Response(status=self.role_status, text="not found")
        return web.Response(text=self.role)

    async def creds(self, request: web.Request) -> web.Response:
        self.cred_hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.match_info["role"] != self.role:
            return web.Response(status=404, text="no such role")
        if self.cred_status != 200:
            return web.Response(status=self.cred_status, text=f"oops {SECRET_MARK}")
        if self.cred_body is not None:
            return web.Response(text=self.cred_body)
        self.issued += 1
        n = self.issued
        return _json(
            {
                "TmpSecretId": f"AKID-tmp-{n}",
                "TmpSecretKey": f"key-{SECRET_MARK}-{n}",
                "ExpiredTime": int(self.clock.now + self.lifetime),
                "Expiration": "2027-01-15T08:00:00Z",
                "Token": f"token-{SECRET_MARK}-{n}",
                "Code": "Success",
            }
        )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def metadata() -> AsyncIterator[tuple[Metadata, str]]:
    fake = Metadata()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("/"))
    await server.close()


def cvm(http: aiohttp.ClientSession, base: str, clock: Clock, **kwargs: Any) -> CvmRoleProvider:
    return CvmRoleProvider(session=http, base_url=base, clock=clock, **kwargs)


async def test_cvm_role_fetches_role_then_credentials_and_caches(
    http: aiohttp.ClientSession, metadata: tuple[Metadata, str]
) -> None:
    fake, base = metadata
    provider = cvm(http, base, fake.clock)
    checked: CredentialProvider = provider  # satisfies the protocol
    assert checked.name == "cvm-role"
    cred = await provider.get()
    assert cred == Credential(
        "AKID-tmp-1", f"key-{SECRET_MARK}-1", f"token-{SECRET_MARK}-1", T0 + 3600
    )
    assert await provider.get() is cred
    assert (fake.role_hits, fake.cred_hits) == (1, 1)
    assert SECRET_MARK not in repr(cred)
    assert SECRET_MARK not in repr(provider)


async def test_cvm_role_renews_when_under_five_minutes_remain(
    http: aiohttp.ClientSession, metadata: tuple[Metadata, str]
) -> None:
    fake, base = metadata
    provider = cvm(http, base, fake.clock)
    first = await provider.get()
    fake.clock.now = T0 + 3600 - 301
    assert await provider.get() is first
    fake.clock.now = T0 + 3600 - 299
    second = await provider.get()
    assert second.secret_id == "AKID-tmp-2"
    assert second.expires_at == fake.clock.now + 3600
    assert fake.cred_hits == 2


async def test_cvm_role_refresh_forces_a_renewal(
    http: aiohttp.ClientSession, metadata: tuple[Metadata, str]
) -> None:
    fake, base = metadata
    provider = cvm(http, base, fake.clock)
    await provider.get()
    renewed = await provider.refresh()
    assert renewed.secret_id == "AKID-tmp-2"
    assert await provider.get() is renewed


async def test_concurrent_callers_share_one_renewal(
    http: aiohttp.ClientSession, metadata: tuple[Metadata, str]
) -> None:
    fake, base = metadata
    fake.delay = 0.1
    provider = cvm(http, base, fake.clock)
    results = await asyncio.gather(*(provider.get() for _ in range(25)))
    assert {c.secret_id for c in results} == {"AKID-tmp-1"}
    assert fake.cred_hits == 1
    # Many callers told "token expired" at once renew once, too.
    refreshed = await asyncio.gather(*(provider.refresh() for _ in range(25)))
    assert {c.secret_id for c in refreshed} == {"AKID-tmp-2"}
    assert fake.cred_hits == 2


async def test_a_cancelled_caller_does_not_poison_the_others(
    http: aiohttp.ClientSession, metadata: tuple[Metadata, str]
) -> None:
    fake, base = metadata
    fake.delay = 0.2
    provider = cvm(http, base, fake.clock)
    first = asyncio.create_task(provider.get())
    await asyncio.sleep(0.05)
    second = asyncio.create_task(provider.get())
    await asyncio.sleep(0.05)
    first.cancel()
    cred = await asyncio.wait_for(second, timeout=5)
    assert cred.secret_id.startswith("AKID-tmp-")
    assert first.cancelled()


async def test_explicit_role_name_is_quoted_and_skips_the_lookup(
    http: aiohttp.ClientSession, metadata: tuple[Metadata, str]
) -> None:
    fake, base = metadata
    fake.role = "role with space/slash"
    provider = cvm(http, base, fake.clock, role_name="role with space/slash")
    assert (await provider.get()).secret_id == "AKID-tmp-1"
    assert fake.role_hits == 0


async def test_sdk_reads_the_fake_metadata_service_the_same_way(
    http: aiohttp.ClientSession, metadata: tuple[Metadata, str]
) -> None:
    from tencentcloud.common.credential import CVMRoleCredential

    fake, base = metadata
    sdk = CVMRoleCredential()
    sdk._role_endpoint = base.rstrip("/") + "/latest/meta-data/cam/security-credentials/"
    # The SDK compares ExpiredTime with the real clock: hand out a credential valid from now.
    fake.clock.now = time.time()
    sdk_id, sdk_key, sdk_token = await asyncio.to_thread(sdk.get_credential_info)
    ours = await cvm(http, base, fake.clock).get()
    assert (sdk_id, sdk_key, sdk_token) == (
        "AKID-tmp-1",
        f"key-{SECRET_MARK}-1",
        f"token-{SECRET_MARK}-1",
    )
    assert ours.secret_id == "AKID-tmp-2"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ({"role_status": 404}, "is a CAM role bound to this instance?"),
        ({"role": ""}, "no CAM role is bound"),
        ({"cred_status": 500}, "HTTP 500"),
        ({"cred_body": "<html>"}, "not JSON"),
        ({"cred_body": "[1, 2]"}, "not a JSON object"),
        ({"cred_body": json.dumps({"Code": "Failure", "TmpSecretKey": SECRET_MARK})}, "'Failure'"),
        (
            {
                "cred_body": json.dumps(
                    {"Code": "Success", "TmpSecretId": "x", "TmpSecretKey": SECRET_MARK}
                )
            },
            "Token is missing",
        ),
        (
            {
                "cred_body": json.dumps(
                    {
                        "Code": "Success",
                        "TmpSecretId": "x",
                        "TmpSecretKey": SECRET_MARK,
                        "Token": SECRET_MARK,
                        "ExpiredTime": "soon",
                    }
                )
            },
            "ExpiredTime is missing or not a number",
        ),
    ],
)
async def test_cvm_errors_are_clear_and_secret_free(
    http: aiohttp.ClientSession,
    metadata: tuple[Metadata, str],
    setup: dict[str, Any],
    expected: str,
) -> None:
    fake, base = metadata
    for key, value in setup.items():
        setattr(fake, key, value)
    provider = cvm(http, base, fake.clock)
    with capture_logs() as logs, pytest.raises(CloudCredentialsError) as info:
        await provider.get()
    assert isinstance(info.value, CredentialsError)
    message = str(info.value)
    assert message.startswith("cvm-role")
    assert expected in message
    assert SECRET_MARK not in message
    assert SECRET_MARK not in repr(logs)


async def test_unreachable_metadata_service(http: aiohttp.ClientSession) -> None:
    # A port nothing listens on: bind, note the port, close.
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("/"))
    await server.close()
    with capture_logs(), pytest.raises(CloudCredentialsError, match="ClientConnectorError"):
        await cvm(http, base, Clock()).get()


async def test_failed_renewal_keeps_the_unexpired_credential_and_backs_off(
    http: aiohttp.ClientSession, metadata: tuple[Metadata, str]
) -> None:
    fake, base = metadata
    provider = cvm(http, base, fake.clock, retry_seconds=10)
    first = await provider.get()
    fake.cred_status = 503
    fake.clock.now = T0 + 3600 - 100  # inside the margin, not expired
    with capture_logs() as logs:
        assert await provider.get() is first
        assert await provider.get() is first  # within the back-off: no new request
    assert fake.cred_hits == 2
    assert [e["event"] for e in logs] == ["credentials_refresh_failed"]
    assert logs[0]["using_cached"] is True
    # A forced refresh does not fall back: the caller asked for new keys.
    with capture_logs(), pytest.raises(CloudCredentialsError, match="HTTP 503"):
        await provider.refresh()
    fake.cred_status = 200
    fake.clock.now += 11
    renewed = await provider.get()
    assert renewed.secret_id == "AKID-tmp-2"


async def test_failure_without_credential_raises_and_backs_off(
    http: aiohttp.ClientSession, metadata: tuple[Metadata, str]
) -> None:
    fake, base = metadata
    fake.cred_status = 500
    provider = cvm(http, base, fake.clock, retry_seconds=10)
    with capture_logs():
        with pytest.raises(CloudCredentialsError, match="HTTP 500"):
            await provider.get()
        with pytest.raises(CloudCredentialsError, match="HTTP 500"):
            await provider.get()
        assert fake.cred_hits == 1
        fake.cred_status = 200
        fake.clock.now += 11
        assert (await provider.get()).secret_id == "AKID-tmp-1"
    assert fake.cred_hits == 2


async def test_short_lived_answer_does_not_cause_a_renewal_loop(
    http: aiohttp.ClientSession, metadata: tuple[Metadata, str]
) -> None:
    fake, base = metadata
    fake.lifetime = 120  # already inside the 5 min margin
    provider = cvm(http, base, fake.clock)
    with capture_logs() as logs:
        first = await provider.get()
        fake.clock.now += 20
        assert await provider.get() is first
        fake.clock.now += 45
        assert (await provider.get()).secret_id == "AKID-tmp-2"
    assert "credentials_short_lived" in {e["event"] for e in logs}


# -- fake STS ----------------------------------------------------------------------------------


@dataclass
class Sts:
    clock: Clock = field(default_factory=Clock)
    lifetime: int = 7200
    delay: float = 0.0
    status: int = 200
    error: tuple[str, str] | None = None
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="bad gateway")
        if self.error is not None:
            code, message = self.error
            return _json(
                {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": "req-1"}}
            )
        n = len(self.requests)
        expired = int(self.clock.now) + self.lifetime
        return _json(
            {
                "Response": {
                    "Credentials": {
                        "Token": f"token-{SECRET_MARK}-{n}",
                        "TmpSecretId": f"AKID-sts-{n}",
                        "TmpSecretKey": f"key-{SECRET_MARK}-{n}",
                    },
                    "ExpiredTime": expired,
                    "Expiration": "2027-01-15T08:00:00Z",
                    "RequestId": f"req-{n}",
                }
            }
        )


@pytest.fixture
async def sts() -> AsyncIterator[tuple[Sts, str]]:
    fake = Sts()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("/"))
    await server.close()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(f"jwt-{SECRET_MARK}-A")
    return path


def tke(
    http: aiohttp.ClientSession, url: str, token_file: Path, clock: Clock, **kwargs: Any
) -> TkeOidcProvider:
    return TkeOidcProvider(
        session=http,
        region="ap-guangzhou",
        provider_id="tke-provider",
        role_arn="qcs::cam::uin/100000000001:roleName/omics-watcher",
        token_file=token_file,
        sts_url=url,
        clock=clock,
        **kwargs,
    )


async def test_tke_oidc_fetches_caches_and_renews(
    http: aiohttp.ClientSession, sts: tuple[Sts, str], token_file: Path
) -> None:
    fake, url = sts
    provider = tke(http, url, token_file, fake.clock)
    checked: CredentialProvider = provider
    assert checked.name == "tke-oidc"
    with capture_logs() as logs:
        cred = await provider.get()
        assert cred == Credential(
            "AKID-sts-1", f"key-{SECRET_MARK}-1", f"token-{SECRET_MARK}-1", T0 + 7200
        )
        assert await provider.get() is cred
        fake.clock.now = T0 + 7200 - 299
        assert (await provider.get()).secret_id == "AKID-sts-2"
    assert len(fake.requests) == 2
    assert SECRET_MARK not in repr(logs)


async def test_tke_oidc_request_is_the_sdks_request(
    http: aiohttp.ClientSession,
    sts: tuple[Sts, str],
    token_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tencentcloud.common.credential as sdk_credential
    from tencentcloud.common.profile.http_profile import HttpProfile

    fake, url = sts
    fake.clock.now = time.time()
    host = url.removeprefix("http://").rstrip("/")

    class PlainHttpProfile(HttpProfile):  # type: ignore[misc]
        # The fake STS speaks plain HTTP; everything else is the SDK's own request.
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, protocol="http", **kwargs)

    monkeypatch.setattr(sdk_credential, "HttpProfile", PlainHttpProfile)
    sdk = sdk_credential.OIDCRoleArnCredential(
        "ap-guangzhou",
        "tke-provider",
        token_file.read_text(),
        "qcs::cam::uin/100000000001:roleName/omics-watcher",
        "tencentcloud-python-sdk-1",
        7200,
        endpoint=host,
    )
    sdk_info = await asyncio.to_thread(sdk.get_credential_info)
    assert sdk_info == ("AKID-sts-1", f"key-{SECRET_MARK}-1", f"token-{SECRET_MARK}-1")

    await tke(http, url, token_file, fake.clock).get()
    (sdk_headers, sdk_body), (our_headers, our_body) = fake.requests

    ignore = {"user-agent", "accept", "accept-encoding", "connection", "content-length"}
    sdk_h = {k.lower(): v for k, v in sdk_headers.items() if k.lower() not in ignore}
    our_h = {k.lower(): v for k, v in our_headers.items() if k.lower() not in ignore}
    assert sdk_h.keys() == our_h.keys()
    varying = {"x-tc-timestamp", "x-tc-traceid", "x-tc-requestclient"}
    for key in sdk_h.keys() - varying:
        assert our_h[key] == sdk_h[key], key
    assert our_h["authorization"] == "SKIP"
    assert abs(int(our_h["x-tc-timestamp"]) - int(sdk_h["x-tc-timestamp"])) < 60

    sdk_json = json.loads(sdk_body)
    our_json = json.loads(our_body)
    assert list(our_json) == list(sdk_json)
    assert our_body == json.dumps(our_json).encode()  # same encoding as the SDK's json.dumps
    assert our_json.pop("RoleSessionName").startswith("omics-watcher-")
    sdk_json.pop("RoleSessionName")
    assert our_json == sdk_json


async def test_tke_oidc_rereads_the_token_file_on_every_refresh(
    http: aiohttp.ClientSession, sts: tuple[Sts, str], token_file: Path
) -> None:
    fake, url = sts
    provider = tke(http, url, token_file, fake.clock)
    await provider.get()
    token_file.write_text(f"jwt-{SECRET_MARK}-B\n")  # rotated by the kubelet
    await provider.refresh()
    fake.clock.now = T0 + 7200
    token_file.write_text(f"jwt-{SECRET_MARK}-C")
    await provider.get()
    sent = [json.loads(body)["WebIdentityToken"] for _, body in fake.requests]
    assert sent == [f"jwt-{SECRET_MARK}-{x}" for x in "ABC"]


async def test_tke_oidc_concurrent_callers_share_one_call(
    http: aiohttp.ClientSession, sts: tuple[Sts, str], token_file: Path
) -> None:
    fake, url = sts
    fake.delay = 0.1
    provider = tke(http, url, token_file, fake.clock)
    results = await asyncio.gather(*(provider.get() for _ in range(20)))
    assert {c.secret_id for c in results} == {"AKID-sts-1"}
    assert len(fake.requests) == 1


async def test_tke_oidc_concurrent_refreshes_share_a_failure(
    http: aiohttp.ClientSession, sts: tuple[Sts, str], token_file: Path
) -> None:
    fake, url = sts
    fake.delay = 0.1
    fake.status = 502
    provider = tke(http, url, token_file, fake.clock)
    with capture_logs():
        results = await asyncio.gather(
            *(provider.refresh() for _ in range(10)), return_exceptions=True
        )
    assert all(isinstance(r, CloudCredentialsError) for r in results)
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ({"status": 502}, "AssumeRoleWithWebIdentity: STS answered HTTP 502"),
        (
            {"error": ("InvalidParameter.WebIdentityTokenError", "token is invalid")},
            "AssumeRoleWithWebIdentity: InvalidParameter.WebIdentityTokenError: "
            "token is invalid (RequestId req-1)",
        ),
    ],
)
async def test_tke_oidc_sts_errors(
    http: aiohttp.ClientSession,
    sts: tuple[Sts, str],
    token_file: Path,
    setup: dict[str, Any],
    expected: str,
) -> None:
    fake, url = sts
    for key, value in setup.items():
        setattr(fake, key, value)
    with capture_logs() as logs, pytest.raises(CloudCredentialsError) as info:
        await tke(http, url, token_file, fake.clock).get()
    assert str(info.value) == f"tke-oidc: {expected}"
    assert SECRET_MARK not in repr(logs)


@pytest.mark.parametrize("content", [None, "", "  \n"])
async def test_tke_oidc_token_file_problems(
    http: aiohttp.ClientSession, sts: tuple[Sts, str], tmp_path: Path, content: str | None
) -> None:
    fake, url = sts
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with capture_logs(), pytest.raises(CloudCredentialsError, match=str(path)) as info:
        await tke(http, url, path, fake.clock).get()
    assert ("unreadable: FileNotFoundError" if content is None else "is empty") in str(info.value)
    assert fake.requests == []


def test_tke_from_environ(tmp_path: Path) -> None:
    session: Any = object()  # never used: nothing is fetched
    assert TkeOidcProvider.from_environ({}, session=session) is None
    with pytest.raises(CloudCredentialsError) as info:
        TkeOidcProvider.from_environ({"TKE_REGION": "ap-guangzhou"}, session=session)
    assert str(info.value) == (
        "tke-oidc: missing environment TKE_PROVIDER_ID, TKE_WEB_IDENTITY_TOKEN_FILE, TKE_ROLE_ARN"
    )
    provider = TkeOidcProvider.from_environ(
        {
            "TKE_REGION": "ap-guangzhou",
            "TKE_PROVIDER_ID": "p",
            "TKE_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "t"),
            "TKE_ROLE_ARN": "qcs::cam::uin/1:roleName/r",
        },
        session=session,
        duration_seconds=3600,
    )
    assert isinstance(provider, TkeOidcProvider)
    assert provider.name == "tke-oidc"
    with pytest.raises(ValueError, match="duration_seconds"):
        TkeOidcProvider.from_environ(
            {
                k: "x"
                for k in (
                    "TKE_REGION",
                    "TKE_PROVIDER_ID",
                    "TKE_WEB_IDENTITY_TOKEN_FILE",
                    "TKE_ROLE_ARN",
                )
            },
            session=session,
            duration_seconds=60,
        )
