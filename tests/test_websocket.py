"""WebSocket proxying through real servers: uvicorn (wsproto and websockets), hypercorn on
asyncio and on trio, granian.

The upstream is a raw ASGI WebSocket app under uvicorn (wsproto), a subprocess; the gateway
runs under each server, also a subprocess. The client is pygateway's own network WebSocket
client (wsproto on anyio streams), so every test runs on asyncio and on trio.
"""

from __future__ import annotations

import json
import os
import secrets
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import httpx
import pytest
from serverutil import PYTHON, ServerProcess, free_port
from upstreams import wait_until

from pygateway import UpstreamError
from pygateway.engines import UpstreamRequest, UpstreamResponse
from pygateway.engines._base import TLSContexts
from pygateway.engines._websocket import (
    UpstreamWebSocket,
    WebSocketClosed,
    connect_network_websocket,
)

pytestmark = pytest.mark.servers

MIB = 1024 * 1024

UPSTREAM_MODULE = '''
"""A WebSocket upstream for tests/test_websocket.py."""
import json
from urllib.parse import parse_qs

#: How each connection (by its ?key=) was closed by the client: [code, reason].
CLOSES = {}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    query = parse_qs(scope["query_string"].decode())
    key = query.get("key", [""])[0]
    if scope["type"] == "http":
        body = json.dumps(CLOSES.get(key)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    path = scope["path"]
    await receive()  # websocket.connect
    if path == "/refuse":
        await send({
            "type": "websocket.http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"text/plain"), (b"x-why", b"upstream")],
        })
        await send({"type": "websocket.http.response.body", "body": b"go away"})
        return
    offered = scope.get("subprotocols") or []
    accept = {"type": "websocket.accept", "headers": [(b"x-upstream", b"ws")]}
    if offered:
        accept["subprotocol"] = offered[-1]  # the upstream's choice, not the first offer
    await send(accept)
    if path == "/headers":
        headers = [[k.decode(), v.decode()] for k, v in scope["headers"]]
        await send({"type": "websocket.send", "text": json.dumps(headers)})
    elif path.startswith("/flood/"):
        for i in range(int(path.rsplit("/", 1)[1])):
            await send({"type": "websocket.send", "text": str(i)})
        await send({"type": "websocket.close", "code": 1000, "reason": "done"})
        return
    elif path.startswith("/big/"):
        await send({"type": "websocket.send", "bytes": b"x" * int(path.rsplit("/", 1)[1])})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            CLOSES[key] = [message.get("code"), message.get("reason") or ""]
            return
        text = message.get("text")
        if text is not None and text.startswith("close:"):
            _, code, reason = text.split(":", 2)
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
            return
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes")})
'''

GATEWAY_MODULE = '''
"""The gateway the servers run (written by tests/test_websocket.py)."""
import os

import pygateway as gw

upstream = "http://127.0.0.1:" + os.environ["UPSTREAM_PORT"]
gateway = gw.Gateway(
    services=[
        gw.Service(name="ws", url=upstream, routes=[gw.Route(name="ws", paths=["/ws"])]),
        gw.Service(
            name="ws-only", url=upstream, routes=[gw.Route(paths=["/only"], protocols=["ws"])]
        ),
        gw.Service(
            name="idle", url=upstream, read_timeout=500, routes=[gw.Route(paths=["/idle"])]
        ),
        gw.Service(
            name="pinged",
            url="http://127.0.0.1:" + os.environ["PINGING_PORT"],
            read_timeout=1000,
            routes=[gw.Route(paths=["/pinged"])],
        ),
        gw.Service(
            name="limited",
            url=upstream,
            routes=[
                gw.Route(
                    paths=["/limited"],
                    plugins=[
                        gw.plugins.WebSocketSizeLimit(
                            client_max_payload=1024, upstream_max_payload=1024
                        )
                    ],
                )
            ],
        ),
        gw.Service(
            name="keyed",
            url=upstream,
            routes=[gw.Route(paths=["/keyed"], plugins=[gw.plugins.KeyAuth()])],
        ),
        gw.Service(
            name="counted",
            url=upstream,
            routes=[
                gw.Route(
                    paths=["/counted"],
                    plugins=[
                        gw.plugins.RateLimiting(
                            minute=2, limit_by="header", header_name="x-client"
                        )
                    ],
                )
            ],
        ),
        gw.Service(
            name="refused",
            url="http://127.0.0.1:" + os.environ["REFUSED_PORT"],
            routes=[gw.Route(paths=["/refused"])],
        ),
    ],
    consumers=[gw.Consumer(username="alice", credentials=[gw.KeyAuthCredential(key="k1")])],
)
'''


def _uvicorn(port: int, ws: str) -> list[str]:
    return [
        *(PYTHON, "-m", "uvicorn", "wsgw:gateway", "--host", "127.0.0.1", "--port", str(port)),
        *("--log-level", "warning", "--no-proxy-headers", "--ws", ws),
        *("--ws-max-size", str(17 * MIB)),
    ]


def _hypercorn(port: int, worker: str) -> list[str]:
    return [PYTHON, "-m", "hypercorn", "-k", worker, "-b", f"127.0.0.1:{port}", "wsgw:gateway"]


def _granian(port: int) -> list[str]:
    return [
        *(PYTHON, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"),
        *("--port", str(port), "--workers", "1", "--log-level", "warning", "wsgw:gateway"),
    ]


SERVERS = {
    "uvicorn": lambda port: _uvicorn(port, "wsproto"),
    "uvicorn-websockets": lambda port: _uvicorn(port, "websockets"),
    "granian": _granian,
    "hypercorn-asyncio": lambda port: _hypercorn(port, "asyncio"),
    "hypercorn-trio": lambda port: _hypercorn(port, "trio"),
}


#: What each server cannot pass to or from the gateway (documented in docs/streaming.md):
#: hypercorn tells the app 1006 whatever close the client sent; granian drops the client's
#: close reason and the headers of `websocket.accept`.
NO_CLIENT_CLOSE_CODE = {"hypercorn-asyncio", "hypercorn-trio"}
NO_CLIENT_CLOSE_REASON = NO_CLIENT_CLOSE_CODE | {"granian"}
NO_ACCEPT_HEADERS = {"granian"}


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wsapp")
    (directory / "wsupstream.py").write_text(textwrap.dedent(UPSTREAM_MODULE))
    (directory / "wsgw.py").write_text(textwrap.dedent(GATEWAY_MODULE))
    return directory


@pytest.fixture(scope="module")
def upstream(app_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    argv = [PYTHON, "-m", "uvicorn", "wsupstream:app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning", "--ws", "wsproto"]
    argv += ["--ws-max-size", str(17 * MIB)]
    with ServerProcess(argv, port, cwd=app_dir) as server:
        yield server


@pytest.fixture(scope="module")
def pinging(app_dir: Path) -> Iterator[ServerProcess]:
    """The same upstream, under a uvicorn that pings each WebSocket every 0.2 s."""
    port = free_port()
    argv = [PYTHON, "-m", "uvicorn", "wsupstream:app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning", "--ws", "wsproto"]
    argv += ["--ws-ping-interval", "0.2", "--ws-ping-timeout", "5"]
    with ServerProcess(argv, port, cwd=app_dir) as server:
        yield server


@pytest.fixture(scope="module", params=list(SERVERS))
def gateway(
    request: pytest.FixtureRequest,
    app_dir: Path,
    upstream: ServerProcess,
    pinging: ServerProcess,
) -> Iterator[ServerProcess]:
    port = free_port()
    env = {
        "PYTHONPATH": os.pathsep.join([str(app_dir), os.environ.get("PYTHONPATH", "")]),
        "UPSTREAM_PORT": str(upstream.port),
        "PINGING_PORT": str(pinging.port),
        "REFUSED_PORT": str(free_port()),
    }
    with ServerProcess(SERVERS[request.param](port), port, env=env, cwd=app_dir) as server:
        server.kind = request.param  # type: ignore[attr-defined]
        yield server


async def connect(
    server: ServerProcess,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    subprotocols: Sequence[str] = (),
) -> UpstreamWebSocket | UpstreamResponse:
    raw = [(b"host", f"127.0.0.1:{server.port}".encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers]
    if subprotocols:
        raw.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode()))
    request = UpstreamRequest(
        "GET", "http", "127.0.0.1", server.port, path.encode(), raw, read_timeout=30
    )
    return await connect_network_websocket(request, TLSContexts())


async def accepted(server: ServerProcess, path: str, **kwargs: object) -> UpstreamWebSocket:
    answer = await connect(server, path, **kwargs)  # type: ignore[arg-type]
    if isinstance(answer, UpstreamResponse):
        body = await answer.read()
        pytest.fail(f"handshake refused: {answer.status_code} {body!r}\n{server.output()}")
    return answer


async def refused(server: ServerProcess, path: str, **kwargs: object) -> UpstreamResponse:
    answer = await connect(server, path, **kwargs)  # type: ignore[arg-type]
    if not isinstance(answer, UpstreamResponse):
        await answer.aclose()
        pytest.fail("the handshake was accepted")
    return answer


async def closed_by_upstream(ws: UpstreamWebSocket) -> WebSocketClosed:
    with anyio.fail_after(10):
        while True:
            try:
                await ws.receive()
            except WebSocketClosed as closed:
                return closed


def upstream_saw_close(upstream: ServerProcess, key: str) -> list[object] | None:
    result: list[object] | None = httpx.get(f"{upstream.url}/closes?key={key}").json()
    return result


@pytest.mark.parametrize("size", [1, 1000, MIB, 16 * MIB])
async def test_text_and_binary_messages_echo_through_the_gateway_whole(
    gateway: ServerProcess, size: int
) -> None:
    ws = await accepted(gateway, "/ws/echo")
    try:
        text = "é" * (size // 2) + "a" * (size % 2)  # `size` bytes of UTF-8
        binary = os.urandom(size)
        await ws.send(text)
        await ws.send(binary)
        with anyio.fail_after(30):
            assert await ws.receive(17 * MIB) == text
            assert await ws.receive(17 * MIB) == binary
    finally:
        await ws.close()
        await ws.aclose()


async def test_a_thousand_messages_arrive_in_order_both_ways(gateway: ServerProcess) -> None:
    ws = await accepted(gateway, "/ws/flood/1000")
    try:
        with anyio.fail_after(30):
            received = [await ws.receive() for _ in range(1000)]
            assert received == [str(i) for i in range(1000)]
            closed = await closed_by_upstream(ws)
        assert (closed.code, closed.reason) == (1000, "done")
    finally:
        await ws.aclose()
    ws = await accepted(gateway, "/ws/echo")
    try:
        for i in range(1000):
            await ws.send(f"m{i}")
        with anyio.fail_after(30):
            assert [await ws.receive() for _ in range(1000)] == [f"m{i}" for i in range(1000)]
    finally:
        await ws.close()
        await ws.aclose()


async def test_the_upstreams_close_code_and_reason_reach_the_client(
    gateway: ServerProcess,
) -> None:
    ws = await accepted(gateway, "/ws/echo")
    try:
        await ws.send("close:4001:see you")
        closed = await closed_by_upstream(ws)
        assert (closed.code, closed.reason) == (4001, "see you")
    finally:
        await ws.aclose()


async def test_the_clients_close_code_and_reason_reach_the_upstream(
    gateway: ServerProcess, upstream: ServerProcess
) -> None:
    key = secrets.token_hex(4)
    ws = await accepted(gateway, f"/ws/echo?key={key}")
    await ws.send("ping")
    with anyio.fail_after(10):
        assert await ws.receive() == "ping"
    await ws.close(4002, "bye now")
    await closed_by_upstream(ws)  # the close handshake completes through the gateway
    await ws.aclose()
    await wait_until(lambda: upstream_saw_close(upstream, key) is not None)
    kind = gateway.kind  # type: ignore[attr-defined]
    if kind in NO_CLIENT_CLOSE_CODE:
        # The server told the gateway 1006 (the connection was lost): going away.
        assert upstream_saw_close(upstream, key) == [1001, ""]
    elif kind in NO_CLIENT_CLOSE_REASON:
        assert upstream_saw_close(upstream, key) == [4002, ""]
    else:
        assert upstream_saw_close(upstream, key) == [4002, "bye now"]


async def test_a_client_that_vanishes_closes_the_upstream_as_going_away(
    gateway: ServerProcess, upstream: ServerProcess
) -> None:
    key = secrets.token_hex(4)
    ws = await accepted(gateway, f"/ws/echo?key={key}")
    await ws.send("ping")
    with anyio.fail_after(10):
        assert await ws.receive() == "ping"
    await ws.aclose()  # the TCP connection drops, no close frame
    await wait_until(lambda: upstream_saw_close(upstream, key) is not None)
    # hypercorn reports the loss as 1006 (relayed as 1001, going away); uvicorn as 1005
    # (relayed as a close frame without a code, which the upstream's uvicorn reports as 1000).
    assert upstream_saw_close(upstream, key) in ([1001, ""], [1000, ""])


async def test_the_subprotocol_the_upstream_chose_is_the_one_the_client_gets(
    gateway: ServerProcess,
) -> None:
    ws = await accepted(gateway, "/ws/echo", subprotocols=["chat.v1", "chat.v2"])
    try:
        assert ws.subprotocol == "chat.v2"
        if gateway.kind not in NO_ACCEPT_HEADERS:  # type: ignore[attr-defined]
            assert dict(ws.headers)[b"x-upstream"] == b"ws"
            assert b"x-pygateway-request-id" in dict(ws.headers)
    finally:
        await ws.close()
        await ws.aclose()


async def test_the_upstream_gets_the_forwarded_headers_and_one_set_of_handshake_headers(
    gateway: ServerProcess, upstream: ServerProcess
) -> None:
    sent = [("X-Custom", "yes"), ("Keep-Alive", "timeout=5"), ("Sec-WebSocket-Extensions", "x")]
    ws = await accepted(gateway, "/ws/headers", headers=sent)
    try:
        with anyio.fail_after(10):
            pairs = json.loads(await ws.receive())
    finally:
        await ws.close()
        await ws.aclose()
    names = [name for name, _ in pairs]
    headers = dict(pairs)
    for name in ("host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version"):
        assert names.count(name) == 1, pairs
    assert "keep-alive" not in names  # hop-by-hop
    assert "sec-websocket-extensions" not in names  # negotiated by each side on its own
    assert headers["x-custom"] == "yes"
    assert headers["x-forwarded-prefix"] == "/ws"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["host"] == f"127.0.0.1:{upstream.port}"
    assert headers["upgrade"].lower() == "websocket"


async def test_the_upstreams_close_reaches_the_client_while_the_client_keeps_sending(
    gateway: ServerProcess,
) -> None:
    ws = await accepted(gateway, "/ws/echo")
    try:
        await ws.send("close:4001:while busy")
        try:
            for i in range(200):
                await ws.send(f"more {i}")
        except UpstreamError:
            pass  # the server closed the connection under our feet
        closed = await closed_by_upstream(ws)
        # The server may close its socket right after its close frame: what the client still
        # sends then resets the connection, and the reset can discard that frame (1006).
        assert closed.code in (4001, 1006)
        if closed.code == 4001:
            assert closed.reason == "while busy"
    finally:
        await ws.aclose()
    # What this guards against: the gateway relaying a client message after the upstream's
    # close failed with an error instead of passing the close on.
    assert "Traceback" not in gateway.output()


async def test_the_upstreams_pings_keep_a_quiet_websocket_open(gateway: ServerProcess) -> None:
    ws = await accepted(gateway, "/pinged/echo")  # read_timeout 1000 ms, pings every 0.2 s
    try:
        await anyio.sleep(2.5)
        await ws.send("still open")
        with anyio.fail_after(10):
            assert await ws.receive() == "still open"
    finally:
        await ws.close()
        await ws.aclose()


async def test_an_auth_plugin_refuses_the_handshake_with_its_status_before_the_upgrade(
    gateway: ServerProcess,
) -> None:
    answer = await refused(gateway, "/keyed/echo")
    assert answer.status_code == 401
    assert json.loads(await answer.read())["message"] == "No API key found in request"
    await answer.aclose()
    ws = await accepted(gateway, "/keyed/echo", headers=[("apikey", "k1")])
    await ws.close()
    await ws.aclose()


async def test_rate_limiting_counts_websocket_connections(gateway: ServerProcess) -> None:
    client = [("x-client", secrets.token_hex(4))]
    for _ in range(2):
        ws = await accepted(gateway, "/counted/echo", headers=client)
        await ws.close()
        await ws.aclose()
    answer = await refused(gateway, "/counted/echo", headers=client)
    assert answer.status_code == 429
    await answer.aclose()


async def test_the_upstreams_own_refusal_reaches_the_client_with_its_status_and_body(
    gateway: ServerProcess,
) -> None:
    answer = await refused(gateway, "/ws/refuse")
    assert answer.status_code == 401
    assert dict(answer.headers)[b"x-why"] == b"upstream"
    assert await answer.read() == b"go away"
    await answer.aclose()


async def test_an_unreachable_upstream_refuses_the_handshake_with_502(
    gateway: ServerProcess,
) -> None:
    answer = await refused(gateway, "/refused/echo")
    assert answer.status_code == 502
    await answer.aclose()


async def test_a_websocket_only_route_takes_handshakes_and_answers_plain_http_with_426(
    gateway: ServerProcess,
) -> None:
    ws = await accepted(gateway, "/only/echo")
    await ws.close()
    await ws.aclose()
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False) as client:
        response = await client.get("/only/echo")
    assert response.status_code == 426
    assert response.headers["upgrade"] == "websocket"


async def test_an_idle_websocket_is_closed_after_the_services_read_timeout(
    gateway: ServerProcess,
) -> None:
    ws = await accepted(gateway, "/idle/echo")
    try:
        await ws.send("one")
        with anyio.fail_after(10):
            assert await ws.receive() == "one"
        closed = await closed_by_upstream(ws)  # read_timeout is 500 ms
        assert (closed.code, closed.reason) == (1001, "idle timeout")
    finally:
        await ws.aclose()


async def test_the_size_limit_counts_the_utf8_bytes_of_text(gateway: ServerProcess) -> None:
    ws = await accepted(gateway, "/limited/echo")  # 1024 bytes each way
    try:
        await ws.send("€" * 341)  # 1023 bytes
        with anyio.fail_after(10):
            assert await ws.receive() == "€" * 341
        await ws.send("€" * 400)  # 400 characters, 1200 bytes
        closed = await closed_by_upstream(ws)
        assert closed.code == 1009
    finally:
        await ws.aclose()


@pytest.mark.parametrize("direction", ["from the client", "from the upstream"])
async def test_a_message_over_the_size_limit_closes_the_connection_with_1009(
    gateway: ServerProcess, direction: str
) -> None:
    path = "/limited/echo" if direction == "from the client" else "/limited/big/2048"
    ws = await accepted(gateway, path)
    try:
        if direction == "from the client":
            await ws.send("small")
            with anyio.fail_after(10):
                assert await ws.receive() == "small"
            await ws.send(b"x" * 2048)
        closed = await closed_by_upstream(ws)
        assert (closed.code, closed.reason) == (1009, "message too big")
    finally:
        await ws.aclose()


def _rss_kib(server: ServerProcess) -> int:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


HELD = 200
HOLD_SECONDS = 30


@pytest.mark.parametrize("gateway", ["uvicorn"], indirect=True)
async def test_200_connections_held_for_30_seconds_all_still_echo_and_close_cleanly(
    gateway: ServerProcess, upstream: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _rss_kib(gateway)
    sockets: list[UpstreamWebSocket] = []
    keys = [secrets.token_hex(4) for _ in range(HELD)]
    try:
        for key in keys:
            sockets.append(await accepted(gateway, f"/ws/echo?key={key}"))
        opened = _rss_kib(gateway)
        await anyio.sleep(HOLD_SECONDS)
        with anyio.fail_after(30):
            for i, ws in enumerate(sockets):
                await ws.send(f"still here {i}")
            for i, ws in enumerate(sockets):
                assert await ws.receive() == f"still here {i}"
        held = _rss_kib(gateway)
        for ws in sockets:
            await ws.close(1000, "done")
        with anyio.fail_after(30):
            for ws in sockets:
                await closed_by_upstream(ws)
    finally:
        for ws in sockets:
            await ws.aclose()
    await wait_until(lambda: all(upstream_saw_close(upstream, k) is not None for k in keys[-5:]))
    assert all(upstream_saw_close(upstream, key) == [1000, "done"] for key in keys)
    after = _rss_kib(gateway)
    with capsys.disabled():
        print(
            f"\n{HELD} WebSockets through the gateway (uvicorn): RSS {before} KiB before, "
            f"{opened} KiB opened (+{(opened - before) / HELD:.1f} KiB each), {held} KiB after "
            f"{HOLD_SECONDS} s, {after} KiB after closing"
        )
    # Loose: a leak of a whole connection's buffers each would show; noise would not.
    assert after - before < HELD * 512
