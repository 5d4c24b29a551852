"""What the JSON chat notifiers (Slack, Teams, Discord, WeCom, DingTalk, Feishu/Lark) share:
render the event, fit it into the destination's limits, POST it once.

A kind subclasses :class:`JsonChatNotifier` and supplies only what differs: :meth:`build`
(the JSON body for a message) and :meth:`fits` (its size check), and where needed the URL to
post to (DingTalk signs it), fields added to every body (Feishu's signature) and the reader of
errors a chat API reports in a 200 answer (:func:`code_reader`).

Invariant: the webhook URL's secret parts and the signing secret, if any, are scrubbed from
every reason raised (see :mod:`watcher.notifiers.http`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from pydantic import SecretStr

from watcher.events import Event
from watcher.notifiers.common import Deps, NotifierBase, SecretUrl, json_bytes, renderer
from watcher.notifiers.fitting import fit
from watcher.notifiers.http import ApiError, ApiErrorReader, post
from watcher.notifiers.render import Message
from watcher.secrets import Scrubber, secret_parts, url_secrets


class ChatSettings(NotifierBase):
    """Keys every chat kind has: the webhook URL, which is itself a credential."""

    url: SecretUrl


C = TypeVar("C", bound=ChatSettings)


def code_reader(retryable: frozenset[int], *keys: tuple[str, str]) -> ApiErrorReader:
    """Reads ``{code_key: int, message_key: str}`` answers (the first ``keys`` pair present);
    code 0 is success, a code in ``retryable`` is worth another attempt."""

    def read(body: Any) -> ApiError | None:
        if not isinstance(body, dict):
            return None
        for code_key, message_key in keys:
            code = body.get(code_key)
            if isinstance(code, int):
                if code == 0:
                    return None
                message = str(body.get(message_key, ""))
                return ApiError(str(code), message, retryable=code in retryable)
        return None

    return read


class JsonChatNotifier(Generic[C]):
    """One chat destination: one JSON POST per event, rendered to fit its limits."""

    kind: str
    # Read through the class, so the reader a kind assigns is never bound as a method.
    read_api_error: ClassVar[ApiErrorReader | None] = None

    def __init__(self, settings: C, deps: Deps, *, secret: SecretStr | None = None) -> None:
        self.name = settings.name
        self._settings = settings
        self._url = settings.url.get_secret_value()
        self._secret = secret.get_secret_value() if secret else None
        self._deps = deps
        self._scrub = Scrubber(
            [*url_secrets(self._url), *(secret_parts(self._secret) if self._secret else [])]
        )
        self._renderer = renderer(settings, deps)

    def build(self, message: Message) -> dict[str, Any]:
        """The body for ``message``; may exceed the limits, :meth:`fits` says."""
        raise NotImplementedError

    def fits(self, body: dict[str, Any]) -> bool:
        """Whether ``body`` is within the destination's limits."""
        raise NotImplementedError

    def extra_fields(self) -> dict[str, str]:
        """Fields put first in every body of one delivery (and counted by :meth:`fits`)."""
        return {}

    def url(self) -> str:
        """Where this delivery goes."""
        return self._url

    def payload(self, event: Event) -> dict[str, Any]:
        """The exact JSON body sent for ``event``."""
        extra = self.extra_fields()
        return fit(self._renderer.render(event), lambda m: {**extra, **self.build(m)}, self.fits)

    async def send(self, event: Event) -> None:
        await post(
            self._deps.session,
            self.url(),
            body=json_bytes(self.payload(event)),
            headers={},
            now=self._deps.clock,
            scrub=self._scrub,
            api_error=type(self).read_api_error,
        )
