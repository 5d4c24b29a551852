"""Connections the server closes to protect itself are counted, and the open ones shown.

Real stalled sockets against the real listener (``HttpServer`` with its connection guard):
half-sent request heads beyond the connection bound (closed to make room: ``capacity``), a
half-sent head left to time out (``head_timeout``), a body that never completes
(``body_timeout``); an idle keep-alive connection closing and a malformed request are not
shed. ``/metrics`` shows ``omics_watcher_http_connections_shed_total{reason}`` and
``omics_watcher_http_connections_open``.
"""

from __future__ import annotations

import asyncio

from support import admin_server, sample_value

from watcher.service.connections import ConnectionLimits
from watcher.store import Store

TOKEN = "adm-0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d"
HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"


async def _exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def _scrape(port: int) -> str:
    answer = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return answer.partition(b"\r\n\r\n")[2].decode()


def _shed(text: str, reason: str) -> float:
    return sample_value(text, f'omics_watcher_http_connections_shed_total{{reason="{reason}"}}')


async def test_shed_connections_are_counted_by_reason(store: Store) -> None:
    limits = ConnectionLimits(max_connections=8, header_timeout=1.0, body_timeout=0.5)
    stalled: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    async with admin_server(store, TOKEN, limits=limits) as port:
        try:
            for _ in range(20):  # beyond the bound of 8, each with half a request head
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(HALF_HEAD)
                await writer.drain()
                stalled.append((reader, writer))
            # Every stalled connection ends: closed for room now, or by the head timeout later.
            for reader, _ in stalled:
                assert await asyncio.wait_for(reader.read(), 30) == b""
            body_head = (
                "POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n"
            )
            answer = await _exchange(port, body_head.encode() + b'{"run_uuid": ')
            assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
            malformed = await _exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
            assert b" 400 " in malformed.partition(b"\r\n")[0], malformed[:100]
            idle = await _exchange(port, b"")  # connected, never sent a byte: idle, not shed
            assert idle == b""
            text = await _scrape(port)
        finally:
            for _, writer in stalled:
                writer.close()
    capacity, heads = _shed(text, "capacity"), _shed(text, "head_timeout")
    assert capacity >= 20 - 8
    assert capacity + heads == 20  # every stalled connection, once, under one reason
    assert _shed(text, "body_timeout") == 1
    assert _shed(text, "descriptors") == 0
    # The scrape's own connection is open while /metrics renders.
    assert sample_value(text, "omics_watcher_http_connections_open") >= 1
