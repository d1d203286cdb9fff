"""WebSocket proxying in-process: `gw.testing.websocket_connect` drives the gateway, and
ASGIEngine upstreams are WebSocket apps called in the same process. No sockets."""

from __future__ import annotations

from typing import Any

import anyio
import attrs
import pytest

import pygateway as gw
from pygateway.engines import ASGIEngine
from pygateway.testing import (
    EchoUpstream,
    WebSocketClosed,
    WebSocketRejected,
    client,
    websocket_connect,
)

LOGGED: list[dict[str, Any]] = []


@attrs.frozen
class RecordLog(gw.Plugin):
    """Keeps what the log phase saw."""

    name = "record-log"

    async def log(self, ctx: gw.Context) -> None:
        assert ctx.response is not None
        LOGGED.append(
            {
                "status": ctx.response.status_code,
                "websocket": ctx.request.websocket,
                "request_size": ctx.request_size,
                "stats": dict(ctx.shared.get("websocket", {})),
            }
        )


def make_gateway(*plugins: gw.Plugin, read_timeout: int = 60_000, **route: Any) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="chat",
                url="http://chat.internal",
                read_timeout=read_timeout,
                routes=[gw.Route(name="chat", paths=["/chat"], plugins=list(plugins), **route)],
            )
        ],
        consumers=[gw.Consumer(username="alice", credentials=[gw.KeyAuthCredential(key="k1")])],
        engines={"chat.internal": ASGIEngine(EchoUpstream())},
        plugins=[RecordLog()],
    )


async def test_messages_echo_through_a_gateway_with_no_sockets() -> None:
    async with make_gateway() as gateway, websocket_connect(gateway, "/chat/room") as ws:
        await ws.send("hello")
        assert await ws.receive() == "hello"
        await ws.send(b"\x00\xff")
        assert await ws.receive() == b"\x00\xff"


async def test_the_first_offered_subprotocol_the_upstream_accepts_reaches_the_client() -> None:
    async with (
        make_gateway() as gateway,
        websocket_connect(gateway, "/chat", subprotocols=["v2", "v1"]) as ws,
    ):
        assert ws.subprotocol == "v2"
        assert any(k == b"x-pygateway-request-id" for k, _ in ws.headers)


async def test_the_upstreams_close_code_and_reason_reach_the_client() -> None:
    async with make_gateway() as gateway, websocket_connect(gateway, "/chat") as ws:
        await ws.send("close:4100:finished")
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
    assert (closed.value.code, closed.value.reason) == (4100, "finished")


async def test_a_key_auth_refusal_is_an_http_401_before_the_upgrade() -> None:
    async with make_gateway(gw.plugins.KeyAuth()) as gateway:
        with pytest.raises(WebSocketRejected) as refused:
            async with websocket_connect(gateway, "/chat"):
                pass
        assert refused.value.response.status_code == 401
        assert refused.value.response.json()["message"] == "No API key found in request"
        async with websocket_connect(gateway, "/chat", headers={"apikey": "k1"}) as ws:
            await ws.send("in")
            assert await ws.receive() == "in"


async def test_no_matching_route_refuses_the_handshake_with_kongs_404() -> None:
    async with make_gateway() as gateway:
        with pytest.raises(WebSocketRejected) as refused:
            async with websocket_connect(gateway, "/elsewhere"):
                pass
    assert refused.value.response.status_code == 404
    assert refused.value.response.json()["message"] == "no Route matched with those values"


async def test_an_upstream_that_refuses_the_handshake_is_relayed_as_http() -> None:
    async def refusing(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1000})

    gateway = make_gateway()
    gateway.engines["chat.internal"] = ASGIEngine(refusing)
    async with gateway:
        with pytest.raises(WebSocketRejected) as refused:
            async with websocket_connect(gateway, "/chat"):
                pass
    assert refused.value.response.status_code == 403


async def test_a_websocket_only_route_answers_plain_http_with_426() -> None:
    async with make_gateway(protocols=["ws", "wss"]) as gateway:
        async with websocket_connect(gateway, "/chat") as ws:
            await ws.send("ok")
            assert await ws.receive() == "ok"
        async with client(gateway) as http:
            response = await http.get("/chat")
    assert response.status_code == 426
    assert response.json()["message"] == "Upgrade Required"


async def test_an_https_only_route_refuses_a_plain_ws_handshake_with_426() -> None:
    async with make_gateway(protocols=["https"]) as gateway:
        with pytest.raises(WebSocketRejected) as refused:
            async with websocket_connect(gateway, "/chat"):
                pass
        assert refused.value.response.status_code == 426
        secure = websocket_connect(gateway, "/chat", base_url="wss://gateway.test")
        async with secure as ws:
            await ws.send("tls")
            assert await ws.receive() == "tls"


async def test_a_message_over_the_size_limit_closes_with_1009() -> None:
    limit = gw.plugins.WebSocketSizeLimit(client_max_payload=10)
    async with make_gateway(limit) as gateway, websocket_connect(gateway, "/chat") as ws:
        await ws.send("0123456789")
        assert await ws.receive() == "0123456789"
        await ws.send("01234567890")
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
    assert closed.value.code == 1009


def test_the_size_limit_needs_at_least_one_limit() -> None:
    with pytest.raises(gw.ConfigurationError, match="at least one of these fields"):
        gw.plugins.WebSocketSizeLimit()
    with pytest.raises(gw.ConfigurationError, match="between 1 and"):
        gw.plugins.WebSocketSizeLimit(client_max_payload=0)


async def test_a_silent_websocket_is_closed_after_the_read_timeout() -> None:
    async with (
        make_gateway(read_timeout=200) as gateway,
        websocket_connect(gateway, "/chat") as ws,
    ):
        with anyio.fail_after(10), pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
    assert (closed.value.code, closed.value.reason) == (1001, "idle timeout")


async def test_the_log_phase_runs_after_the_close_with_101_and_message_counts() -> None:
    LOGGED.clear()
    async with make_gateway() as gateway:
        async with websocket_connect(gateway, "/chat") as ws:
            for text in ("a", "bb", "ccc"):
                await ws.send(text)
                await ws.receive()
            await ws.close(1000)
        # Leaving the block waited for the gateway's handler, log phase included.
        assert len(LOGGED) == 1
    [entry] = LOGGED
    assert entry["status"] == 101
    assert entry["websocket"] is True
    assert entry["stats"]["client_messages"] == 3
    assert entry["stats"]["upstream_messages"] == 3
    assert entry["stats"]["closed_by"] == "client"


async def test_an_upstream_app_that_crashes_closes_the_client_with_1011() -> None:
    async def crashing(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise RuntimeError("boom")

    gateway = make_gateway()
    gateway.engines["chat.internal"] = ASGIEngine(crashing)
    async with gateway, websocket_connect(gateway, "/chat") as ws:
        await ws.send("trigger")
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
    assert closed.value.code == 1011


async def test_a_mounted_gateway_passes_other_websockets_to_the_app() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept", "subprotocol": None})
        await send({"type": "websocket.send", "text": "from the app"})
        await send({"type": "websocket.close", "code": 1000})

    gateway = make_gateway()
    async with gateway:
        mounted = gw.GatewayMiddleware(app, gateway)
        async with websocket_connect(mounted, "/chat") as ws:
            await ws.send("to the gateway")
            assert await ws.receive() == "to the gateway"
        async with websocket_connect(mounted, "/elsewhere") as ws:
            assert await ws.receive() == "from the app"


async def test_an_upstream_app_that_never_reads_is_closed_on_idle_without_hanging() -> None:
    async def deaf(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await anyio.sleep_forever()

    gateway = make_gateway(read_timeout=300)
    gateway.engines["chat.internal"] = ASGIEngine(deaf)
    async with gateway, websocket_connect(gateway, "/chat") as ws:
        with anyio.fail_after(5):
            try:
                for i in range(40):  # more than any buffer between the gateway and the app
                    await ws.send(f"unheard {i}")
            except WebSocketClosed:
                pass  # the gateway closed while we were still sending
            with pytest.raises(WebSocketClosed) as closed:
                await ws.receive()
    assert (closed.value.code, closed.value.reason) == (1001, "idle timeout")


async def test_a_cancelled_client_leaves_no_task_running() -> None:
    async with make_gateway() as gateway:
        with anyio.move_on_after(0.2):
            async with websocket_connect(gateway, "/chat") as ws:
                await ws.send("hello")
                assert await ws.receive() == "hello"
                await anyio.sleep_forever()
        async with websocket_connect(gateway, "/chat") as ws:  # still usable
            await ws.send("again")
            assert await ws.receive() == "again"


async def test_without_the_http_response_extension_a_refusal_is_a_close_before_accepting() -> None:
    async with make_gateway(gw.plugins.KeyAuth()) as gateway:
        scope = {
            "type": "websocket",
            "path": "/chat",
            "raw_path": b"/chat",
            "query_string": b"",
            "headers": [(b"host", b"gateway.test")],
            "scheme": "ws",
            "client": ("127.0.0.1", 1),
            "server": ("gateway.test", 80),
            "subprotocols": [],
            "extensions": {},  # a server without websocket.http.response
        }
        sent: list[dict[str, Any]] = []
        messages = iter([{"type": "websocket.connect"}])

        async def receive() -> dict[str, Any]:
            return next(messages, {"type": "websocket.disconnect", "code": 1000})

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await gateway(scope, receive, send)
    assert [m["type"] for m in sent] == ["websocket.close"]
