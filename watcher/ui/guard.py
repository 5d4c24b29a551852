"""What every status page answer goes through: security headers, the session, the CSRF check.

Rules (see the README's "Status page"):
- Every answer under ``/ui`` (and the ``/`` redirect), errors included, carries the strict
  :data:`CSP`, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and
  ``X-Frame-Options: DENY``; pages are ``Cache-Control: no-store``.
- Without a live session every ``/ui`` path but the login page and the static files redirects
  to ``/ui/login`` (303).
- Every POST under ``/ui`` carries the form field ``csrf``: the session's token, or for the
  login form the random value of its ``login`` cookie (double submit; the cookie is
  SameSite=Strict). A POST without a matching one gets 403 before anything else happens.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from watcher.ui.sessions import Session, Sessions, same_secret

PREFIX = "/ui"
LOGIN_PATH = "/ui/login"
STATIC_PREFIX = "/ui/static/"
SESSION_COOKIE = "omics_watcher_session"
LOGIN_COOKIE = "omics_watcher_login"
CSRF_FIELD = "csrf"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
SESSION_KEY = web.RequestKey("ui_session", Session)


def is_ui_path(path: str) -> bool:
    return path == "/" or path == PREFIX or path.startswith(PREFIX + "/")


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the headers every status page answer carries."""
    if not is_ui_path(request.path):
        return
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith(STATIC_PREFIX):
        response.headers.setdefault("Cache-Control", "no-store")


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=PREFIX,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=PREFIX)


def session_of(request: web.Request) -> Session:
    """The session the middleware found (only on pages that need one)."""
    session: Session | None = request.get(SESSION_KEY)
    if session is None:  # pragma: no cover - the middleware redirected
        raise web.HTTPSeeOther(LOGIN_PATH)
    return session


def _open_path(path: str) -> bool:
    return path == LOGIN_PATH or path.startswith(STATIC_PREFIX)


def guard_middleware(sessions: Sessions) -> Middleware:
    @web.middleware
    async def ui_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path == "/" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            return await handler(request)
        session = sessions.get(request.cookies.get(SESSION_COOKIE))
        if request.method == "POST":
            form = await request.post()
            given = form.get(CSRF_FIELD)
            if path == LOGIN_PATH:
                expected = request.cookies.get(LOGIN_COOKIE, "")
            else:
                expected = session.csrf if session is not None else ""
            if not isinstance(given, str) or not expected or not same_secret(given, expected):
                raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page")
        if session is None and not _open_path(path):
            raise web.HTTPSeeOther(LOGIN_PATH)
        if session is not None:
            request[SESSION_KEY] = session
        return await handler(request)

    return ui_guard
