"""TC3-HMAC-SHA256 verification and the simulator's credential store.

A request is accepted when, in this order (the first failed check decides the code):

1. ``Authorization`` parses as ``TC3-HMAC-SHA256 Credential=ID/DATE/SERVICE/tc3_request,
   SignedHeaders=..., Signature=HEX`` and ``X-TC-Timestamp`` is an integer
   (else ``AuthFailure.InvalidAuthorization``);
2. the timestamp is within ``max_skew`` seconds of the server clock (else
   ``AuthFailure.SignatureExpire``);
3. the SecretId is known (else ``AuthFailure.SecretIdNotFound``);
4. scope (UTC date of the timestamp, service ``omics``), signed headers (``content-type;host``)
   and the signature recomputed over the raw body, the Host header and the Content-Type
   *exactly as sent* all match (else ``AuthFailure.SignatureFailure``);
   ``X-TC-Content-SHA256: UNSIGNED-PAYLOAD`` is honoured as the SDK sends it;
5. the credential has not expired and, if it carries a token, ``X-TC-Token`` equals it (else
   ``AuthFailure.TokenFailure``; an expired key without a token is ``SecretIdNotFound``).

Credentials are immutable values; the store swaps them whole, so a check never sees half an
update. The store never logs or returns secrets in error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import replace

from watcher.omics.signing import ALGORITHM, canonical_request, utc_date
from watcher.simulator.config import SERVICE, Credential
from watcher.simulator.protocol import ApiError

SIGNATURE_FAILURE = "AuthFailure.SignatureFailure"
SIGNATURE_EXPIRE = "AuthFailure.SignatureExpire"
SECRET_ID_NOT_FOUND = "AuthFailure.SecretIdNotFound"  # noqa: S105 (an error code)
TOKEN_FAILURE = "AuthFailure.TokenFailure"  # noqa: S105 (an error code)
INVALID_AUTHORIZATION = "AuthFailure.InvalidAuthorization"


def new_credential(*, token: bool = False, expires_at: float | None = None) -> Credential:
    """A fresh random SecretId/SecretKey (and token), shaped like Tencent's."""
    return Credential(
        secret_id="AKID" + secrets.token_hex(16),
        secret_key=secrets.token_urlsafe(24),
        token=secrets.token_urlsafe(32) if token else None,
        expires_at=expires_at,
    )


def parse_authorization(value: str) -> tuple[str, str, str, str, str]:
    """``(secret_id, date, service, signed_headers, signature)``; raises on any other shape."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise ApiError(INVALID_AUTHORIZATION, "Authorization must use TC3-HMAC-SHA256.")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            fields[key] = val
    try:
        secret_id, date, service, terminator = fields["Credential"].split("/")
        signed, sig = fields["SignedHeaders"], fields["Signature"]
    except (KeyError, ValueError):
        raise ApiError(
            INVALID_AUTHORIZATION,
            "Authorization needs Credential=ID/DATE/SERVICE/tc3_request, "
            "SignedHeaders=... and Signature=...",
        ) from None
    if terminator != "tc3_request" or not secret_id:
        raise ApiError(INVALID_AUTHORIZATION, "The credential scope is malformed.")
    return secret_id, date, service, signed, sig


class CredentialStore:
    """The credentials the simulator accepts, by SecretId."""

    def __init__(self, credentials: list[Credential], *, max_skew: float) -> None:
        self._by_id = {c.secret_id: c for c in credentials}
        self.max_skew = max_skew
        # Derived TC3 signing keys by (secret key, date): three HMACs saved per request.
        self._keys: dict[tuple[str, str], bytes] = {}
        self._dates: dict[int, str] = {}

    def _date(self, timestamp: int) -> str:
        date = self._dates.get(timestamp)
        if date is None:
            if len(self._dates) > 64:
                self._dates.clear()
            date = self._dates[timestamp] = utc_date(timestamp)
        return date

    def _signing_key(self, secret_key: str, date: str) -> bytes:
        key = self._keys.get((secret_key, date))
        if key is None:
            if len(self._keys) > 256:
                self._keys.clear()
            k_date = hmac.digest(("TC3" + secret_key).encode(), date.encode(), "sha256")
            k_service = hmac.digest(k_date, SERVICE.encode(), "sha256")
            key = hmac.digest(k_service, b"tc3_request", "sha256")
            self._keys[(secret_key, date)] = key
        return key

    def get(self, secret_id: str) -> Credential | None:
        return self._by_id.get(secret_id)

    def add(self, credential: Credential) -> None:
        self._by_id[credential.secret_id] = credential

    def expire(self, secret_id: str, at: float) -> None:
        self._by_id[secret_id] = replace(self._require(secret_id), expires_at=at)

    def rotate_token(self, secret_id: str, token: str, expires_at: float | None) -> None:
        self._by_id[secret_id] = replace(
            self._require(secret_id), token=token, expires_at=expires_at
        )

    def _require(self, secret_id: str) -> Credential:
        found = self._by_id.get(secret_id)
        if found is None:
            raise KeyError(f"no credential with SecretId {secret_id!r}")
        return found

    def verify(
        self, headers: Mapping[str, str], *, host: str, body: bytes, server_time: float
    ) -> str:
        """The SecretId of a correctly signed request; raises :class:`ApiError` otherwise."""
        auth = headers.get("Authorization")
        if not auth:
            raise ApiError(INVALID_AUTHORIZATION, "The Authorization header is missing.")
        secret_id, date, service, signed, sig = parse_authorization(auth)
        try:
            timestamp = int(headers.get("X-TC-Timestamp", ""))
        except ValueError:
            raise ApiError(
                INVALID_AUTHORIZATION, "X-TC-Timestamp is missing or not an integer."
            ) from None
        if abs(timestamp - server_time) > self.max_skew:
            raise ApiError(
                SIGNATURE_EXPIRE,
                f"Signature expired. Timestamp {timestamp} is more than "
                f"{int(self.max_skew)} seconds from the server time {int(server_time)}.",
            )
        cred = self._by_id.get(secret_id)
        if cred is None:
            raise ApiError(SECRET_ID_NOT_FOUND, "The SecretId is not found.")
        expected_date = self._date(timestamp)
        if service != SERVICE or date != expected_date or signed != "content-type;host":
            raise ApiError(
                SIGNATURE_FAILURE,
                "The credential scope or signed headers do not match the request "
                f"(expected {expected_date}/{SERVICE}/tc3_request, content-type;host).",
            )
        payload = body
        if headers.get("X-TC-Content-SHA256") == "UNSIGNED-PAYLOAD":
            payload = b"UNSIGNED-PAYLOAD"
        canonical = canonical_request(
            host=host, body=payload, content_type=headers.get("Content-Type", "")
        )
        # signing.string_to_sign, with the date already known (strftime is the slow part).
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"{ALGORITHM}\n{timestamp}\n{date}/{SERVICE}/tc3_request\n{digest}"
        key = self._signing_key(cred.secret_key, date)
        expected = hmac.digest(key, to_sign.encode(), "sha256").hex()
        if not hmac.compare_digest(expected, sig):
            raise ApiError(
                SIGNATURE_FAILURE,
                "The provided credentials could not be validated. "
                "Please check your signature is correct.",
            )
        if cred.expires_at is not None and server_time >= cred.expires_at:
            if cred.token is None:
                raise ApiError(SECRET_ID_NOT_FOUND, "The SecretId has expired.")
            raise ApiError(TOKEN_FAILURE, "The token has expired.")
        if cred.token is not None and headers.get("X-TC-Token") != cred.token:
            raise ApiError(TOKEN_FAILURE, "The token is missing or invalid.")
        return secret_id
