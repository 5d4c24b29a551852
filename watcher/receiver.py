"""A tiny Standard Webhooks receiver: ``python -m watcher.receiver [--port P] [--secret S]``.

Why: trying the webhook notifier (the demo, the README walkthrough) needs something that
receives the posts, checks their signatures the way a receiver would, and shows what arrived.
It prints ``listening on http://HOST:PORT/hook``, then one line per delivery: the time, the
event id, its type, the run and its status, and whether the signature is valid. It answers
204 to every post (it records, it does not judge), and stops on SIGINT/SIGTERM.
The demo uses :class:`Receiver` and :func:`serving` in-process; nothing else depends on it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TextIO

from aiohttp import web

from watcher.display import printable
from watcher.service.console import clock_time


class Receiver:
    """A webhook endpoint verifying Standard Webhooks signatures (when given a secret)."""

    def __init__(self, secret: str | None, *, on_post: Callable[[str], None] | None = None) -> None:
        self._key = base64.b64decode(secret.removeprefix("whsec_")) if secret else None
        self.received: dict[str, bool] = {}  # event id -> signature valid
        self.arrived = asyncio.Event()
        self._on_post = on_post

    def _valid(self, request: web.Request, body: bytes) -> bool:
        if self._key is None:
            return False
        msg_id = request.headers.get("webhook-id", "")
        stamp = request.headers.get("webhook-timestamp", "")
        signed = f"{msg_id}.{stamp}.".encode() + body
        expected = base64.b64encode(hmac.new(self._key, signed, hashlib.sha256).digest()).decode()
        offered = [
            s.partition(",")[2] for s in request.headers.get("webhook-signature", "").split()
        ]
        return any(hmac.compare_digest(expected, o) for o in offered)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        msg_id = request.headers.get("webhook-id", "")
        valid = self._valid(request, body)
        self.received[msg_id] = valid
        self.arrived.set()
        if self._on_post is not None:
            self._on_post(describe(msg_id, body, valid if self._key is not None else None))
        return web.Response(status=204)


def describe(msg_id: str, body: bytes, valid: bool | None) -> str:
    """``evt_…  run.status_changed  run 1e2e5bc8 RUNNING → SUCCESS  signature valid``."""
    try:
        event: Any = json.loads(body)
    except ValueError:
        event = {}
    data = event.get("data") if isinstance(event, dict) else None
    data = data if isinstance(data, dict) else {}
    what = str(event.get("type", "?")) if isinstance(event, dict) else "?"
    if data.get("run_uuid"):
        what += f"  run {str(data['run_uuid'])[:8]}"
    if data.get("status"):
        before = data.get("previous_status") or "·"
        what += f" {before} → {data['status']}"
    check = {None: "unsigned check", True: "signature valid", False: "SIGNATURE INVALID"}[valid]
    return printable(f"{msg_id}  {what}  {check}")


@contextlib.asynccontextmanager
async def serving(receiver: Receiver, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``receiver`` at ``POST /hook`` for the block; yields its URL."""
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield f"http://{host}:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


async def _main(args: argparse.Namespace, out: TextIO) -> None:
    def show(line: str) -> None:
        out.write(f"{clock_time()}  received {line}\n")
        out.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serving(Receiver(args.secret, on_post=show), args.host, args.port) as url:
        out.write(f"listening on {url}\n")
        out.flush()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m watcher.receiver",
        description="Receive webhook deliveries at POST /hook and print one line for each.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8321, help="port (default: %(default)s)")
    parser.add_argument(
        "--secret",
        default=None,
        metavar="WHSEC",
        help="the notifier's signing secret (whsec_...), to check each signature "
        "(default: none, signatures not checked)",
    )
    args = parser.parse_args(argv)
    if args.secret:
        try:
            base64.b64decode(args.secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            parser.error("--secret: not whsec_ followed by base64")
    try:
        asyncio.run(_main(args, sys.stdout))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
