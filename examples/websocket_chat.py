"""A WebSocket chat behind a gateway: key-auth on the handshake, an Origin check written as
a plugin, a message size limit, and every message relayed both ways.

    python examples/websocket_chat.py            # run main(): two clients chat in-process
    python examples/websocket_chat.py --serve    # the same gateway under uvicorn on :8000

The upstream (`chat_room`) is a small ASGI app that sends every message it receives to
everyone in the room, prefixed with the sender's consumer name (the gateway tells it, in the
X-Consumer-Username header). The gateway proxies `/chat` to it through `ASGIEngine`, so
`main()` needs no sockets: `pygateway.testing.websocket_connect` drives the gateway as a
browser would.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import anyio
import attrs

import pygateway as gw
from pygateway.engines import ASGIEngine
from pygateway.testing import WebSocketClosed, WebSocketRejected, websocket_connect

#: The send functions of everyone in the room.
ROOM: set[Any] = set()


async def chat_room(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The upstream: a room where every message goes to everyone."""
    if scope["type"] != "websocket":
        return
    headers = dict(scope["headers"])
    who = headers.get(b"x-consumer-username", b"anonymous").decode()
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    ROOM.add(send)
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = f"{who}: {message.get('text') or '(binary)'}"
            for member in list(ROOM):
                await member({"type": "websocket.send", "text": text})
    finally:
        ROOM.discard(send)


@attrs.frozen
class AllowedOrigins(gw.Plugin):
    """Refuse WebSocket handshakes from pages of other sites (browsers send their Origin)."""

    name = "allowed-origins"
    priority = 2000  # before authentication: a foreign page learns nothing else

    origins: Sequence[str] = ()

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        if ctx.request.websocket and ctx.request.headers.get("origin") not in self.origins:
            return gw.Response(403, json={"message": "origin not allowed"})
        return None


gateway = gw.Gateway(
    services=[
        gw.Service(
            name="chat",
            url="http://chat.internal",
            read_timeout=300_000,  # a WebSocket silent both ways for 5 minutes is closed
            routes=[
                gw.Route(
                    name="chat",
                    paths=["/chat"],
                    protocols=["ws", "wss"],  # only WebSockets: plain HTTP gets 426
                    plugins=[
                        AllowedOrigins(origins=["https://chat.example"]),
                        gw.plugins.KeyAuth(),
                        gw.plugins.WebSocketSizeLimit(client_max_payload=4096),
                    ],
                )
            ],
        )
    ],
    consumers=[
        gw.Consumer(username="ada", credentials=[gw.KeyAuthCredential(key="ada-key")]),
        gw.Consumer(username="bob", credentials=[gw.KeyAuthCredential(key="bob-key")]),
    ],
    engines={"chat.internal": ASGIEngine(chat_room)},
)

ORIGIN = {"origin": "https://chat.example"}


async def main() -> dict[str, Any]:
    """Two consumers chat; a foreign origin, a missing key and a huge message are refused."""
    results: dict[str, Any] = {}
    async with gateway:
        ada_headers = {**ORIGIN, "apikey": "ada-key"}
        bob_headers = {**ORIGIN, "apikey": "bob-key"}
        async with (
            websocket_connect(gateway, "/chat", headers=ada_headers) as ada,
            websocket_connect(gateway, "/chat", headers=bob_headers) as bob,
        ):
            await anyio.sleep(0.05)  # both are in the room
            await ada.send("hello, bob")
            results["bob heard"] = await bob.receive()
            results["ada heard"] = await ada.receive()
            await ada.send("x" * 5000)
            try:
                await ada.receive()
            except WebSocketClosed as closed:
                results["too big"] = closed.code
        for name, headers in [
            ("foreign origin", {"origin": "https://evil.example", "apikey": "ada-key"}),
            ("no key", ORIGIN),
        ]:
            try:
                async with websocket_connect(gateway, "/chat", headers=headers):
                    pass
            except WebSocketRejected as refused:
                results[name] = refused.response.status_code
    for key, value in results.items():
        print(f"{key}: {value}")
    return results


if __name__ == "__main__":
    if "--serve" in sys.argv:
        import uvicorn

        # Try it: a browser page on https://chat.example, or
        #   python -m websockets ws://127.0.0.1:8000/chat  (sends no Origin: refused)
        uvicorn.run(gateway, host="127.0.0.1", port=8000, log_level="warning")
    else:
        anyio.run(main)
