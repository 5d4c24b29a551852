"""TC3 signing: the published vectors, then the official SDK as an independent peer.

The property tests drive the SDK's own request builder (``_build_req_with_tc3_signature`` of the
sync ``OmicsClient``: its ``json.dumps``, its UTC date, its canonical request, ``Sign.sign_tc3``
and its Authorization format) and compare the header with ours byte for byte. The process runs
in a zone 14 hours ahead of UTC, so near UTC midnight the local date differs from the UTC date
the scope must use.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import types
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tencentcloud.common import abstract_client
from tencentcloud.common.credential import Credential as SdkCredential
from tencentcloud.common.http.request import RequestInternal
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.common.sign import Sign
from tencentcloud.omics.v20221128.omics_client import OmicsClient as SdkOmicsClient

from watcher.omics import signing

SECRET_ID = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
SECRET_KEY = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE"
TIMESTAMP = 1551113065

BODY_A = (
    b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
)
BODY_C = (
    b'{"RunUuid": "84232c68-a016-4668-b2e3-168a175d6f29", '
    b'"ProjectId": "prj-peaceful-pink-bird-631828"}'
)
VECTORS = [
    pytest.param(
        "cvm",
        "cvm.tencentcloudapi.com",
        "application/json; charset=utf-8",
        BODY_A,
        "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064",
        "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031",
        "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168",
        id="A-tencent-published",
    ),
    pytest.param(
        "omics",
        "omics.tencentcloudapi.com",
        "application/json",
        BODY_C,
        "4d565996d2c0788dc40cc2aa7d209a25b9e0c942552230569ad5639aa470ad01",
        "6e0e3d5f424964ae28af07ea1950f07c650e8c25506ab144b1e7507e2c367a7f",
        "d99467b1750af7d4aa43230c1a10771ef00485891e01ec426c24beef7b81c926",
        id="C-GetRunStatus",
    ),
]


@pytest.mark.parametrize(
    ("service", "host", "content_type", "body", "payload_hash", "canonical_hash", "sig"), VECTORS
)
def test_published_vectors(
    service: str,
    host: str,
    content_type: str,
    body: bytes,
    payload_hash: str,
    canonical_hash: str,
    sig: str,
) -> None:
    assert hashlib.sha256(body).hexdigest() == payload_hash
    canonical = signing.canonical_request(host=host, body=body, content_type=content_type)
    assert canonical.endswith("\n" + payload_hash)
    assert hashlib.sha256(canonical.encode()).hexdigest() == canonical_hash
    kwargs: dict[str, Any] = {
        "secret_key": SECRET_KEY,
        "host": host,
        "body": body,
        "timestamp": TIMESTAMP,
        "service": service,
        "content_type": content_type,
    }
    assert signing.signature(**kwargs) == sig
    assert signing.sign(secret_id=SECRET_ID, **kwargs) == (
        f"TC3-HMAC-SHA256 Credential={SECRET_ID}/2019-02-25/{service}/tc3_request, "
        f"SignedHeaders=content-type;host, Signature={sig}"
    )


def test_vector_c_body_is_what_the_sdk_sends() -> None:
    params = {
        "RunUuid": "84232c68-a016-4668-b2e3-168a175d6f29",
        "ProjectId": "prj-peaceful-pink-bird-631828",
    }
    assert json.dumps(params).encode() == BODY_C


@pytest.fixture(scope="module", autouse=True)
def _far_east_local_zone() -> Iterator[None]:
    """Local date != UTC date for 14 h of each day: a scope built from local time would fail."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Pacific/Kiritimati"  # UTC+14
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def _sdk_request(
    *,
    secret_id: str,
    secret_key: str,
    host: str,
    timestamp: int,
    params: Any,
    token: str | None = None,
    octet_body: bytes | None = None,
) -> RequestInternal:
    """A request built and signed entirely by the SDK, with its clock pinned to ``timestamp``."""
    profile = ClientProfile(httpProfile=HttpProfile(endpoint=host))
    profile.disable_region_breaker = True
    client = SdkOmicsClient(SdkCredential(secret_id, secret_key, token), "ap-guangzhou", profile)
    req = RequestInternal(host, "POST", "/", header={})
    options: dict[str, Any] = {}
    if octet_body is not None:
        req.data = octet_body
        options["IsOctetStream"] = True
    frozen = types.SimpleNamespace(time=lambda: timestamp + 0.999)
    with mock.patch.object(abstract_client, "time", frozen):
        client._build_req_with_tc3_signature("GetRunStatus", params, req, options)
    return req


_midnight = st.builds(
    lambda day, delta: day * 86400 + delta,
    st.integers(min_value=1, max_value=40_000),
    st.integers(min_value=-3, max_value=3),
)
timestamps = st.one_of(st.integers(min_value=0, max_value=2**32), _midnight)
_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
hosts = st.builds(
    lambda labels, port: ".".join(labels) + (f":{port}" if port is not None else ""),
    st.lists(_label, min_size=1, max_size=4),
    st.one_of(st.none(), st.integers(min_value=1, max_value=65535)),
) | st.builds(lambda port: f"127.0.0.1:{port}", st.integers(min_value=1, max_value=65535))
# The SDK refuses empty keys and keys with outer whitespace; anything else is fair game.
keys = st.text(min_size=1, max_size=60).filter(lambda s: s.strip() == s and s.strip() != "")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
params = st.dictionaries(st.text(), json_values, max_size=6)

_settings = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(
    secret_id=keys,
    secret_key=keys,
    host=hosts,
    timestamp=timestamps,
    params=params,
    token=st.none() | keys,
)
def test_json_requests_match_the_sdk(
    secret_id: str, secret_key: str, host: str, timestamp: int, params: Any, token: str | None
) -> None:
    req = _sdk_request(
        secret_id=secret_id,
        secret_key=secret_key,
        host=host,
        timestamp=timestamp,
        params=params,
        token=token,
    )
    assert req.header["X-TC-Timestamp"] == str(timestamp)
    assert req.header["Content-Type"] == "application/json"
    ours = signing.sign(
        secret_id=secret_id,
        secret_key=secret_key,
        host=req.header["Host"],
        body=req.data.encode("utf-8"),
        timestamp=timestamp,
    )
    assert ours == req.header["Authorization"]


@_settings
@given(
    secret_id=keys,
    secret_key=keys,
    host=hosts,
    timestamp=timestamps,
    body=st.binary(max_size=512),
)
def test_arbitrary_bytes_match_the_sdk(
    secret_id: str, secret_key: str, host: str, timestamp: int, body: bytes
) -> None:
    # The SDK sends raw bytes only as application/octet-stream; the rest of the path is shared.
    req = _sdk_request(
        secret_id=secret_id,
        secret_key=secret_key,
        host=host,
        timestamp=timestamp,
        params=body,
        octet_body=body,
    )
    ours = signing.sign(
        secret_id=secret_id,
        secret_key=secret_key,
        host=host,
        body=body,
        timestamp=timestamp,
        content_type=req.header["Content-Type"],
    )
    assert ours == req.header["Authorization"]


@_settings
@given(
    secret_key=keys,
    host=hosts,
    timestamp=timestamps,
    text=st.text(max_size=200),
    ensure_ascii=st.booleans(),
)
def test_unicode_json_bodies_match_the_sdk_signature(
    secret_key: str, host: str, timestamp: int, text: str, ensure_ascii: bool
) -> None:
    # Bodies the SDK itself would not produce (non-ASCII UTF-8 JSON), as application/json:
    # compared with the SDK's signature function (its canonical request and sign_tc3).
    body = json.dumps({"RunUuid": text}, ensure_ascii=ensure_ascii).encode("utf-8")
    sdk_req = RequestInternal(host, "POST", "/", header={}, data=body)
    sdk_req.header.update(
        {"Content-Type": "application/json", "Host": host, "X-TC-Timestamp": str(timestamp)}
    )
    date = time.strftime("%Y-%m-%d", time.gmtime(timestamp))  # independent of ours
    client = object.__new__(SdkOmicsClient)  # only its pure signature method is used
    expected = client._get_tc3_signature(None, sdk_req, date, "omics", secret_key)
    assert (
        signing.signature(secret_key=secret_key, host=host, body=body, timestamp=timestamp)
        == expected
    )


def test_utc_date_is_not_the_local_date() -> None:
    ts = 1_700_000_000 - 1_700_000_000 % 86400 - 60  # 23:59 UTC; already tomorrow in UTC+14
    assert time.strftime("%Y-%m-%d", time.localtime(ts)) != signing.utc_date(ts)
    assert signing.utc_date(ts) == time.strftime("%Y-%m-%d", time.gmtime(ts))


def test_sdk_sign_tc3_agrees_on_the_published_vector() -> None:
    canonical = signing.canonical_request(host="omics.tencentcloudapi.com", body=BODY_C)
    to_sign = signing.string_to_sign(canonical=canonical, timestamp=TIMESTAMP, service="omics")
    assert (
        Sign.sign_tc3(SECRET_KEY, "2019-02-25", "omics", to_sign)
        == "d99467b1750af7d4aa43230c1a10771ef00485891e01ec426c24beef7b81c926"
    )


@_settings
@given(
    secret_id=keys,
    secret_key=keys,
    host=hosts,
    start=_midnight,
    steps=st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=6),
    params=params,
)
def test_one_signer_across_midnight_matches_the_sdk(
    secret_id: str, secret_key: str, host: str, start: int, steps: list[int], params: Any
) -> None:
    # The client keeps one Signer (and its derived key of the day) for many requests: each
    # header must still be the SDK's, the requests just before and after UTC midnight too.
    signer = signing.Signer(secret_id=secret_id, secret_key=secret_key, host=host)
    timestamp = start
    for step in steps:
        timestamp += step
        req = _sdk_request(
            secret_id=secret_id,
            secret_key=secret_key,
            host=host,
            timestamp=timestamp,
            params=params,
        )
        body = req.data.encode("utf-8")
        assert signer.authorization(body, timestamp) == req.header["Authorization"]


def test_a_signer_keeps_its_key_out_of_its_repr() -> None:
    signer = signing.Signer(secret_id=SECRET_ID, secret_key=SECRET_KEY, host="h")
    signer.authorization(BODY_C, TIMESTAMP)
    assert SECRET_KEY not in repr(signer)
    assert signer.signature(BODY_C, TIMESTAMP) == (
        "2019-02-25/omics/tc3_request",
        signing.signature(secret_key=SECRET_KEY, host="h", body=BODY_C, timestamp=TIMESTAMP),
    )


def test_a_signer_kept_digests_never_change_a_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Signer keeps each body's canonical-request digest (a poller resends the same bodies);
    # bodies seen again, new ones, and more than it keeps all sign as the stateless function.
    monkeypatch.setattr(signing, "_DIGESTS_KEPT", 2)
    signer = signing.Signer(secret_id=SECRET_ID, secret_key=SECRET_KEY, host="h")
    bodies = [b'{"RunUuid":"a"}', b'{"RunUuid":"b"}', b'{"RunUuid":"c"}', b""]
    for i, body in enumerate(bodies * 3):
        timestamp = TIMESTAMP + i * 40_000  # crossing days too
        expected = signing.signature(
            secret_key=SECRET_KEY, host="h", body=body, timestamp=timestamp
        )
        assert signer.signature(body, timestamp)[1] == expected
