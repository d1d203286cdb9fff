"""Helpers for testing gateways (and apps behind them) in-process, with no sockets.

    async with gw.testing.client(gateway) as client:
        response = await client.get("/users/1", headers={"apikey": "s3cret"})

`EchoUpstream` is an ASGI app that answers with a JSON description of the request it got;
`echo_engine()` puts it behind a gateway so no upstream server is needed.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import anyio

from ._types import Receive, Scope, Send
from .engines import ASGIEngine
from .engines._httpx import asgi_client

if TYPE_CHECKING:
    import httpx

__all__ = ["EchoUpstream", "client", "echo_engine"]

_ECHO_BODY_LIMIT = 64 * 1024


def client(
    app: Any,
    *,
    base_url: str = "http://gateway.test",
    client_addr: tuple[str, int] = ("127.0.0.1", 50000),
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` bound to an ASGI app (a Gateway, or an app around one).

    httpx's ASGI transport buffers whole responses: fine for ordinary requests; streams
    that never end need a real server (see the docs' testing guide).
    """
    return asgi_client(app, base_url=base_url, client=client_addr, headers=headers)


class EchoUpstream:
    """An ASGI upstream that describes the request it received, as JSON.

    Special paths (anywhere after the route prefix is stripped):

    - `/status/<code>`: answer with that status (204 and 304 with no body);
    - `/bytes/<n>`: a body of n bytes (`?chunk=<size>` streams it in chunks of that size);
    - `/delay/<ms>`: wait before answering.

    The JSON has `method`, `path`, `raw_path`, `query`, `headers` (name -> list of values),
    `body` (text, up to 64 KiB), `body_length`, `body_sha256` and `client`.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        digest = hashlib.sha256()
        length = 0
        head = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            length += len(chunk)
            if len(head) < _ECHO_BODY_LIMIT:
                head.extend(chunk[: _ECHO_BODY_LIMIT - len(head)])
            if not message.get("more_body", False):
                break
        path: str = scope["path"]
        parts = path.rstrip("/").split("/")
        status = 200
        if len(parts) >= 2 and parts[-2] == "delay" and parts[-1].isdigit():
            await anyio.sleep(int(parts[-1]) / 1000)
        if len(parts) >= 2 and parts[-2] == "status" and parts[-1].isdigit():
            status = int(parts[-1])
        query = scope.get("query_string", b"").decode("latin-1")
        if len(parts) >= 2 and parts[-2] == "bytes" and parts[-1].isdigit():
            size = int(parts[-1])
            chunk_size = int(dict(parse_qsl(query)).get("chunk", 0) or size or 1)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/octet-stream"),
                        (b"content-length", str(size).encode()),
                    ],
                }
            )
            block = bytes(range(256)) * (chunk_size // 256 + 1)
            sent = 0
            while sent < size:
                n = min(chunk_size, size - sent)
                await send({"type": "http.response.body", "body": block[:n], "more_body": True})
                sent += n
            await send({"type": "http.response.body", "body": b""})
            return
        headers: dict[str, list[str]] = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.decode("latin-1"), []).append(v.decode("latin-1"))
        raw_path = scope.get("raw_path") or path.encode()
        payload = {
            "method": scope["method"],
            "path": path,
            "raw_path": raw_path.decode("latin-1"),
            "query": query,
            "headers": headers,
            "body": bytes(head).decode("utf-8", "replace"),
            "body_length": length,
            "body_sha256": digest.hexdigest(),
            "client": list(scope["client"]) if scope.get("client") else None,
        }
        if status in (204, 304):
            # These have no body (and a 204 no Content-Length): a real server would break
            # the connection sending one.
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})


def echo_engine() -> ASGIEngine:
    """An engine whose every upstream is an `EchoUpstream`."""
    return ASGIEngine(EchoUpstream())
