"""The small set of API failures the rest of the watcher reasons about, decided in one place.

Tencent answers errors with HTTP 200 and ``Response.Error.Code``; :func:`classify` maps a code
to one of these classes, following the table in ``shared/omics-api.md``. Anything the client
cannot even read (non-200, non-JSON, timeouts, resets) is :class:`Transient`.
Messages carry Tencent's code and message, never credentials or signed headers.
"""

from __future__ import annotations

import re


class OmicsError(Exception):
    """An Omics API call failed. ``code`` is Tencent's error code (or a local one).

    ``cause`` says in a few words why, for the operator's log: what went wrong with the
    connection (``connection refused``, ``DNS failure``, ``timeout``, ``TLS error``, ...),
    the HTTP status, or the Tencent error code. Never a secret: it is built from the error's
    type and code, never from a message.
    """

    def __init__(
        self,
        code: str,
        message: str = "",
        *,
        request_id: str | None = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.request_id = request_id
        self._cause = cause

    @property
    def cause(self) -> str:
        return self._cause or cause_of_code(self.code)


class Throttled(OmicsError):
    """RequestLimitExceeded*: the account's budget is spent; slow the whole client down."""


class Transient(OmicsError):
    """Worth retrying later with backoff: internal errors, bad gateways, timeouts, garbage."""


class AuthError(OmicsError):
    """Credentials or permissions are wrong; polling pauses until they work again."""


class ClockSkew(AuthError):
    """AuthFailure.SignatureExpire: our clock is more than 5 minutes off the server's."""


class TokenExpired(AuthError):
    """AuthFailure.TokenFailure: temporary credentials expired; refresh once and retry."""


class RunNotFound(OmicsError):
    """ResourceNotFound.RunNotExist: wrong run, project or region; stop polling that run."""


class BadRequest(OmicsError):
    """The request's shape is wrong (a bug of ours): log it, do not retry in a loop."""


_AUTH_PREFIXES = ("AuthFailure", "UnauthorizedOperation", "OperationDenied")
_PERMISSION_HEADS = ("UnauthorizedOperation", "OperationDenied")
_BAD_REQUEST_PREFIXES = (
    "InvalidParameter",
    "MissingParameter",
    "InvalidAction",
    "UnknownParameter",
)


def classify(code: str, message: str = "", *, request_id: str | None = None) -> OmicsError:
    """The exception for a Tencent error code. Unknown codes are transient, never fatal."""
    cls: type[OmicsError]
    head = code.split(".", 1)[0]
    if head == "RequestLimitExceeded":
        cls = Throttled
    elif code == "AuthFailure.SignatureExpire":
        cls = ClockSkew
    elif code == "AuthFailure.TokenFailure":
        cls = TokenExpired
    elif code.startswith(_AUTH_PREFIXES):
        cls = AuthError
    elif code == "ResourceNotFound.RunNotExist":
        cls = RunNotFound
    elif code.startswith(_BAD_REQUEST_PREFIXES):
        cls = BadRequest
    else:
        # InternalError, ServiceUnavailable, ResourceUnavailable and any code we do not
        # know: retry later. An unknown code must never end the watch of a run.
        cls = Transient
    return cls(code, message, request_id=request_id)


def is_permission_refusal(code: str) -> bool:
    """True for the auth codes that mean "this identity may not call this action" (as opposed
    to credentials that are wrong, expired or signed with a skewed clock).

    The batch poller gives up DescribeRuns on such a code (per-run polling needs only
    GetRunStatus); discovery says so once instead of retrying as if credentials were wrong.
    """
    return code == "AuthFailure.UnauthorizedOperation" or code.split(".", 1)[0] in _PERMISSION_HEADS


# Local codes (set by the client, not by Tencent) and what they mean in a log line.
_LOCAL_CAUSES = {
    "Timeout": "timeout",
    "ConnectionError": "connection error",
    "ClientError": "client error",
    "MalformedResponse": "malformed answer",
    "CredentialsUnavailable": "credentials unavailable",
}
_HTTP_CODE = re.compile(r"HTTP([0-9]{3})")


def cause_of_code(code: str) -> str:
    """The ``cause`` of an error the client gave no more precise one: ``HTTP 502`` for an
    HTTP status, a phrase for the client's own codes, ``Tencent <code>`` for the rest."""
    local = _LOCAL_CAUSES.get(code)
    if local is not None:
        return local
    http = _HTTP_CODE.fullmatch(code)
    if http is not None:
        return f"HTTP {http.group(1)}"
    return f"Tencent {code}"
