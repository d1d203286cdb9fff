"""Proxy correctness: what the upstream receives and what the client gets back.

Kong 3.x is the reference (shared/reference/kong.md §2 "Upstream URI", "Host header", §5) and
DESIGN.md "Proxy correctness rules". Upstreams are a MockEngine capturing the request, real
servers on 127.0.0.1 (tests/upstreams.py) behind the default HttpxEngine, or ASGI apps.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import anyio
import attrs
import httpx
import pytest
from upstreams import (
    Fault,
    RawServer,
    Reply,
    Server,
    call_asgi,
    raw_http,
    serve_asgi,
    unaccepting_port,
    wait_until,
)

import pygateway as gw
from pygateway.engines import ASGIEngine, MockEngine, UpstreamRequest, UpstreamResponse
from pygateway.testing import EchoUpstream, client

pytestmark = pytest.mark.servers

MiB = 1024 * 1024
BAD_GATEWAY = "An invalid response was received from the upstream server"
TIMING_OUT = "The upstream server is timing out"


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_server() -> Iterator[Server]:
    with serve_asgi(EchoUpstream()) as server:
        yield server


def capturing(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> MockEngine:
    return MockEngine(lambda request: UpstreamResponse(status, headers, content=b"ok"))


def one_route(engine: Any = None, *, url: str = "http://upstream.test", **route: Any) -> gw.Gateway:
    route.setdefault("paths", ["/"])
    service_keys = ("retries", "read_timeout", "connect_timeout", "write_timeout")
    service = {k: route.pop(k) for k in service_keys if k in route}
    url += route.pop("path", None) or ""
    return gw.Gateway(
        services=[gw.Service(name="svc", url=url, routes=[gw.Route(**route)], **service)],
        engine=engine if engine is not None else capturing(),
    )


def sent_headers(engine: MockEngine, index: int = -1) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in engine.requests[index].headers:
        out.setdefault(k.decode(), []).append(v.decode("latin-1"))
    return out


def error_body(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert body["request_id"] == response.headers["x-pygateway-request-id"]
    return body


CONTEXTS: list[gw.Context] = []


@attrs.frozen
class Recorder(gw.Plugin):
    """Keeps every request's context (for ctx.tries, ctx.response...)."""

    name: ClassVar[str] = "proxy-test-recorder"

    async def log(self, ctx: gw.Context) -> None:
        CONTEXTS.append(ctx)


@pytest.fixture
def contexts() -> Iterator[list[gw.Context]]:
    CONTEXTS.clear()
    yield CONTEXTS
    CONTEXTS.clear()


# -- the upstream path ---------------------------------------------------------------------

# kong.md §2 "Upstream URI", row by row:
# (service.path, route path, strip_path, request, v0 upstream, v1 upstream)
KONG_PATH_TABLE = [
    ("/s", "/fv0", False, "/fv0req", "/s/fv0req", "/sfv0req"),
    ("/s", "/tv0", True, "/tv0req", "/s/req", "/sreq"),
    ("/s", "/tv0/", True, "/tv0/req", "/s/req", "/sreq"),
    ("/s", "/foo", True, "/foo", "/s", "/s"),
    ("/s", "/foo", True, "/foo/", "/s/", "/s/"),
    ("/s", "/foo", True, "/foo/bar", "/s/bar", "/s/bar"),
    ("/s/", "/foo", True, "/foo", "/s", "/s/"),
    ("/s/", "/foo", False, "/foo/bar", "/s/foo/bar", "/s/foo/bar"),
    (None, "/foo", True, "/foo", "/", "/"),
    (None, "/foo", True, "/foo/bar", "/bar", "/bar"),
    (None, "/foo", False, "/foo/bar", "/foo/bar", "/foo/bar"),
    ("/s", "/", True, "/x", "/s/x", "/sx"),
]


@pytest.mark.parametrize("handling", ["v0", "v1"])
@pytest.mark.parametrize(
    ("service_path", "route_path", "strip_path", "request_path", "v0", "v1"),
    KONG_PATH_TABLE,
    ids=[f"{r[0]}+{r[1]}-strip={r[2]}-{r[3]}" for r in KONG_PATH_TABLE],
)
async def test_the_upstream_path_follows_kongs_table(
    handling: str,
    service_path: str | None,
    route_path: str,
    strip_path: bool,
    request_path: str,
    v0: str,
    v1: str,
) -> None:
    engine = capturing()
    gateway = one_route(
        engine,
        path=service_path,
        paths=[route_path],
        strip_path=strip_path,
        path_handling=handling,
    )
    async with client(gateway) as c:
        response = await c.get(request_path)
    assert response.status_code == 200
    assert engine.requests[0].target == (v0 if handling == "v0" else v1).encode()


@pytest.mark.parametrize(
    "query",
    [
        b"a=1&b=2",
        b"a=%zz&b=%2F&c=1+2&d=%E2%82%AC&d=%e2%82%ac&e&&=x;y",
        b"q='\"<>{}|^`",
        b"x=%00%FF&x=%252F",
    ],
)
async def test_the_query_string_is_passed_through_unchanged(query: bytes) -> None:
    engine = capturing()
    gateway = one_route(engine, path="/s", paths=["/api"])
    result = await call_asgi(gateway, "/api/x", query=query)
    assert result.status == 200
    assert engine.requests[0].target == b"/s/x?" + query


async def test_no_question_mark_is_sent_without_a_query() -> None:
    engine = capturing()
    gateway = one_route(engine, paths=["/api"])
    await call_asgi(gateway, "/api/x")
    assert engine.requests[0].target == b"/x"


@pytest.mark.parametrize(
    ("service_path", "strip_path", "request_path", "expected"),
    [
        (None, True, "/users/42/profile", b"/profile"),
        ("/s", True, "/users/42/profile", b"/s/profile"),
        (None, True, "/users/42", b"/"),
        (None, False, "/users/42/profile", b"/users/42/profile"),
        ("/s", False, "/users/42", b"/s/users/42"),
    ],
)
async def test_a_regex_route_strips_the_text_it_matched(
    service_path: str | None, strip_path: bool, request_path: str, expected: bytes
) -> None:
    engine = capturing()
    gateway = one_route(
        engine, path=service_path, paths=[r"~/users/(?<id>\d+)"], strip_path=strip_path
    )
    async with client(gateway) as c:
        response = await c.get(request_path, params={"a": "1"})
    assert response.status_code == 200
    assert engine.requests[0].target == expected + b"?a=1"


async def test_the_upstream_receives_the_normalized_path_with_encoded_slashes_kept() -> None:
    engine = capturing()
    gateway = one_route(engine, paths=["/api"])
    raw = b"/api/a/./b/../c//d/%7Euser/%41%2f%2F%3f%20x"
    result = await call_asgi(gateway, "/api/a/b/../c//d/~user/A//?", raw_path=raw, query=b"k=v")
    assert result.status == 200
    assert engine.requests[0].target == b"/a/c/d/~user/A%2F%2F%3F%20x?k=v"


async def test_dot_segments_cannot_climb_above_the_route_prefix() -> None:
    engine = capturing()
    gateway = one_route(engine, path="/internal", paths=["/public"])
    result = await call_asgi(gateway, raw_path=b"/public/../../admin/secret")
    # Normalized first: /admin/secret, which the /public route does not match.
    assert result.status == 404
    assert engine.requests == []


async def test_a_real_server_forwards_the_normalized_path_and_keeps_encoded_slashes(
    raw_server: RawServer,
) -> None:
    raw_server.reset()
    gateway = one_route(gw.engines.HttpxEngine(), url=raw_server.url, paths=["/api"])
    with serve_asgi(gateway, lifespan=True) as front:
        answer = await raw_http(
            front.host,
            front.port,
            b"GET /api/x/../a%2Fb/./c//d%7e?q=%2F%zz HTTP/1.1\r\n"
            b"Host: front.test\r\nConnection: close\r\n\r\n",
        )
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert raw_server.received[-1].target == b"/a%2Fb/c/d~?q=%2F%zz"


# -- the Host header -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://upstream.test", "upstream.test"),
        ("http://upstream.test:80", "upstream.test"),
        ("http://upstream.test:8080", "upstream.test:8080"),
        ("https://upstream.test", "upstream.test"),
        ("https://upstream.test:8443", "upstream.test:8443"),
        ("https://upstream.test:80", "upstream.test:80"),
        ("http://10.0.0.1:81", "10.0.0.1:81"),
        ("http://[::1]:8080", "[::1]:8080"),
    ],
)
async def test_without_preserve_host_the_upstream_host_is_the_services(url: str, host: str) -> None:
    engine = capturing()
    async with client(one_route(engine, url=url)) as c:
        await c.get("/", headers={"host": "client.example:1234"})
    assert sent_headers(engine)["host"] == [host]


async def test_with_preserve_host_the_upstream_host_is_the_clients() -> None:
    engine = capturing()
    async with client(one_route(engine, url="http://upstream.test:8080", preserve_host=True)) as c:
        await c.get("/", headers={"host": "Client.Example:1234"})
    assert sent_headers(engine)["host"] == ["Client.Example:1234"]
    assert (engine.requests[0].host, engine.requests[0].port) == ("upstream.test", 8080)


async def test_an_upstream_host_header_replaces_the_target_address() -> None:
    engine = capturing()
    gateway = gw.Gateway(
        services=[gw.Service(host="pool", routes=[gw.Route(paths=["/"])])],
        upstreams=[
            gw.Upstream(name="pool", host_header="vhost.internal", targets=[gw.Target("10.0.0.1")])
        ],
        engine=engine,
    )
    async with client(gateway) as c:
        await c.get("/")
    request = engine.requests[0]
    assert (request.host, request.port) == ("10.0.0.1", 8000)
    assert sent_headers(engine)["host"] == ["vhost.internal"]
    assert request.server_name == "vhost.internal"


async def test_each_retry_sends_the_host_of_its_own_target() -> None:
    def handler(request: UpstreamRequest) -> UpstreamResponse:
        if request.port == 8001:
            raise gw.UpstreamConnectError("refused by the test")
        return UpstreamResponse(200, content=b"ok")

    engine = MockEngine(handler)
    gateway = gw.Gateway(
        services=[gw.Service(host="pool", retries=1, routes=[gw.Route(paths=["/"])])],
        upstreams=[
            gw.Upstream(
                name="pool", targets=[gw.Target("10.0.0.1:8001"), gw.Target("10.0.0.2:8002")]
            )
        ],
        engine=engine,
    )
    async with client(gateway) as c:
        response = await c.get("/")
    assert response.status_code == 200
    assert [sent_headers(engine, i)["host"] for i in (0, 1)] == [
        ["10.0.0.1:8001"],
        ["10.0.0.2:8002"],
    ]
    # Nothing is added twice on the second try.
    assert sent_headers(engine, 1)["x-forwarded-for"] == ["127.0.0.1"]


# -- hop-by-hop and identity headers -------------------------------------------------------

HOP_BY_HOP = [
    (b"connection", b"keep-alive, X-Private, x-other"),
    (b"keep-alive", b"timeout=5"),
    (b"proxy-connection", b"keep-alive"),
    (b"te", b"trailers"),
    (b"trailer", b"x-checksum"),
    (b"upgrade", b"h2c"),
    (b"x-private", b"secret"),
    (b"x-other", b"secret"),
]


async def test_hop_by_hop_request_headers_are_not_forwarded() -> None:
    engine = capturing()
    headers = [*HOP_BY_HOP, (b"x-kept", b"yes"), (b"x-kept", b"twice")]
    result = await call_asgi(one_route(engine), "/", headers=headers)
    assert result.status == 200
    sent = sent_headers(engine)
    for name, _ in HOP_BY_HOP:
        assert name.decode() not in sent
    assert sent["x-kept"] == ["yes", "twice"]


async def test_hop_by_hop_response_headers_are_not_returned() -> None:
    upstream = [
        (b"Connection", b"close, X-Private"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"close"),
        (b"Trailer", b"x-checksum"),
        (b"Upgrade", b"h2c"),
        (b"TE", b"trailers"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"2"),
        (b"X-Private", b"secret"),
        (b"X-Kept", b"yes"),
    ]
    result = await call_asgi(one_route(capturing(headers=upstream)), "/")
    names = {k for k, _ in result.headers}
    for hop in (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"trailer",
        b"upgrade",
        b"te",
        b"transfer-encoding",
        b"content-length",
        b"x-private",
    ):
        assert hop not in names
    assert result.header("x-kept") == "yes"
    assert result.body == b"ok"


async def test_a_second_connection_header_still_drops_what_it_lists() -> None:
    # The first Connection header lists only hop-by-hop names; the second lists more.
    engine = capturing(headers=[(b"Connection", b"keep-alive"), (b"Connection", b"X-Private")])
    engine.handler = lambda request: UpstreamResponse(
        200,
        [(b"connection", b"keep-alive"), (b"connection", b"X-Private"), (b"x-private", b"s")],
        content=b"ok",
    )
    headers = [(b"connection", b"keep-alive"), (b"connection", b"x-secret"), (b"x-secret", b"s")]
    result = await call_asgi(one_route(engine), "/", headers=headers)
    assert "x-secret" not in sent_headers(engine)
    assert result.header("x-private") is None


@attrs.frozen
class PerRequestTimeout(gw.Plugin):
    """Replaces the request's Service with a copy whose read timeout the x-timeout header
    gives (a copy made for this request only)."""

    name: ClassVar[str] = "proxy-test-per-request-timeout"
    priority: ClassVar[int] = 900

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        assert ctx.service is not None
        seconds = int(ctx.request.headers.get("x-timeout", "60"))
        ctx.service = attrs.evolve(ctx.service, read_timeout=seconds * 1000)
        return None


async def test_a_service_a_plugin_made_for_one_request_is_sent_with_its_own_timeouts() -> None:
    engine = capturing()
    gateway = one_route(engine, plugins=[PerRequestTimeout()])
    for seconds in range(1, 30):
        result = await call_asgi(gateway, "/", headers=[(b"x-timeout", str(seconds).encode())])
        assert result.status == 200
    assert [r.read_timeout for r in engine.requests] == list(range(1, 30))


async def _body_messages_of(gateway: gw.Gateway, path: str = "/") -> list[dict[str, Any]]:
    """The `http.response.body` messages the gateway sends for one GET."""
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"gateway.test")],
        "client": ("127.0.0.1", 50000),
        "server": ("gateway.test", 80),
    }
    sent: list[dict[str, Any]] = []
    requested = False
    ended = anyio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await ended.wait()  # as servers do: the disconnect comes after the response
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            ended.set()

    async with gateway:
        await gateway(scope, receive, send)
    return [m for m in sent if m["type"] == "http.response.body"]


async def test_a_body_the_upstream_gave_whole_goes_out_in_one_last_message(
    echo_server: Server,
) -> None:
    for gateway in (one_route(), one_route(gw.engines.NativeEngine(), url=echo_server.url)):
        messages = await _body_messages_of(gateway, "/bytes/100")
        assert len(messages) == 1
        assert not messages[0].get("more_body", False)
        assert messages[0]["body"]


async def test_a_streamed_body_ends_with_an_empty_last_message() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield b"one "
        yield b"two"

    engine = MockEngine(lambda request: UpstreamResponse(200, stream=pieces()))
    messages = await _body_messages_of(one_route(engine))
    assert [m["body"] for m in messages] == [b"one ", b"two", b""]
    assert [m.get("more_body", False) for m in messages] == [True, True, False]


async def test_a_request_with_both_content_length_and_chunked_goes_up_chunked_only(
    raw_server: RawServer,
) -> None:
    raw_server.reset()
    gateway = one_route(gw.engines.HttpxEngine(), url=raw_server.url)
    async with gateway:
        result = await call_asgi(
            gateway,
            "/",
            method="POST",
            headers=[(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
            body=[b"hel", b"lo"],
        )
    assert result.status == 200
    received = raw_server.received[-1]
    assert received.framing == "chunked"
    assert received.get(b"content-length") is None
    assert received.body == b"hello"


CONSUMER_HEADERS = [
    (b"x-consumer-id", b"0f0e0d0c-0000-0000-0000-000000000000"),
    (b"x-consumer-custom-id", b"admin"),
    (b"x-consumer-username", b"admin"),
    (b"x-consumer-groups", b"admins"),
    (b"x-credential-identifier", b"stolen"),
    (b"x-anonymous-consumer", b"false"),
]


async def test_consumer_identity_headers_from_the_client_are_always_removed() -> None:
    engine = capturing()
    gateway = gw.Gateway(
        services=[gw.Service(host="upstream.test", routes=[gw.Route(paths=["/"])])],
        engine=engine,
        trusted_ips=["0.0.0.0/0"],
    )
    headers = [(k.upper(), v) for k, v in CONSUMER_HEADERS]
    await call_asgi(gateway, "/", headers=headers)
    sent = sent_headers(engine)
    for name, _ in CONSUMER_HEADERS:
        assert name.decode() not in sent


# -- bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_5_mib_request_body_is_streamed_upstream_intact(
    raw_server: RawServer, framing: str
) -> None:
    raw_server.reset()
    data = os.urandom(5 * MiB)
    pieces = [data[i : i + 256 * 1024] for i in range(0, len(data), 256 * 1024)]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces[:4]:
            yield piece
        # The rest comes only once the upstream holds data: a gateway that buffered the
        # whole body first would never get there.
        await wait_until(lambda: sum(map(len, raw_server.partial)) >= 512 * 1024)
        for piece in pieces[4:]:
            yield piece

    headers = (
        [(b"content-length", str(len(data)).encode())]
        if framing == "content-length"
        else [(b"transfer-encoding", b"chunked")]
    )
    gateway = one_route(gw.engines.HttpxEngine(), url=raw_server.url, paths=["/up"])
    async with gateway:
        with anyio.fail_after(20):
            result = await call_asgi(gateway, "/up", method="POST", headers=headers, body=body())
    assert result.status == 200
    received = raw_server.received[-1]
    assert received.framing == framing
    assert len(received.body) == len(data)
    assert hashlib.sha256(received.body).digest() == hashlib.sha256(data).digest()
    if framing == "chunked":
        assert received.get(b"content-length") is None
    else:
        assert received.get(b"transfer-encoding") is None


def _pattern_sha256(size: int) -> str:
    # EchoUpstream's /bytes/<n> repeats bytes 0..255; hash it without holding it.
    digest = hashlib.sha256()
    block = bytes(range(256)) * 256
    for _ in range(size // len(block)):
        digest.update(block)
    return digest.hexdigest()


@pytest.mark.parametrize("engine_kind", ["httpx", "asgi"])
async def test_a_64_mib_response_streams_through_intact(
    echo_server: Server, engine_kind: str
) -> None:
    size = 64 * MiB
    if engine_kind == "httpx":
        gateway = one_route(gw.engines.HttpxEngine(), url=echo_server.url)
    else:
        gateway = one_route(ASGIEngine(EchoUpstream()))
    digest = hashlib.sha256()
    async with gateway:
        tracemalloc.start()
        try:
            with anyio.fail_after(60):
                result = await call_asgi(
                    gateway, f"/bytes/{size}", query=b"chunk=65536", sink=digest.update
                )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # Python allocations (every thread, the upstream's included) stay far below the body.
    assert peak < 24 * MiB
    assert result.status == 200
    assert result.complete
    assert result.header("content-length") == str(size)
    assert digest.hexdigest() == _pattern_sha256(size)
    # Relayed piece by piece as it came, never gathered up.
    assert result.largest <= MiB
    assert result.pieces >= 64


async def test_a_response_reaches_the_client_while_the_upstream_is_still_sending() -> None:
    proceed = anyio.Event()

    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await proceed.wait()
        await send({"type": "http.response.body", "body": b"last"})

    def sink(chunk: bytes) -> None:
        received.append(chunk)
        proceed.set()

    received: list[bytes] = []
    with anyio.fail_after(5):
        result = await call_asgi(one_route(ASGIEngine(upstream)), "/", sink=sink)
    assert result.complete
    assert received == [b"first", b"last"]


async def test_head_requests_get_the_headers_and_no_body(echo_server: Server) -> None:
    gateway = one_route(gw.engines.HttpxEngine(), url=echo_server.url)
    async with gateway:
        result = await call_asgi(gateway, "/bytes/5000", method="HEAD")
    assert result.status == 200
    assert result.header("content-length") == "5000"
    assert result.body == b""
    assert result.complete


@pytest.mark.parametrize("status", [204, 304])
async def test_no_content_and_not_modified_pass_through_without_a_body(
    raw_server: RawServer, status: int
) -> None:
    raw_server.reset()
    raw_server.reply(Reply(status, [(b"etag", b'"v2"')]))
    gateway = one_route(gw.engines.HttpxEngine(), url=raw_server.url)
    async with gateway:
        result = await call_asgi(gateway, "/", headers=[(b"if-none-match", b'"v1"')])
    assert (result.status, result.body, result.complete) == (status, b"", True)
    assert result.header("etag") == '"v2"'
    assert raw_server.received[-1].get(b"if-none-match") == b'"v1"'


async def test_compressed_bodies_and_redirects_pass_through_untouched(
    raw_server: RawServer,
) -> None:
    raw_server.reset()
    compressed = gzip.compress(b"compressible " * 1000)
    raw_server.reply(
        Reply(headers=[(b"content-encoding", b"gzip")], chunks=[compressed]),
        Reply(302, [(b"location", b"http://upstream.internal/next")], [b""]),
    )
    gateway = one_route(gw.engines.HttpxEngine(), url=raw_server.url)
    async with gateway:
        zipped = await call_asgi(gateway, "/", headers=[(b"accept-encoding", b"gzip")])
        moved = await call_asgi(gateway, "/old")
    assert zipped.body == compressed
    assert zipped.header("content-encoding") == "gzip"
    assert zipped.header("content-length") == str(len(compressed))
    assert raw_server.received[0].get(b"accept-encoding") == b"gzip"
    assert (moved.status, moved.header("location")) == (302, "http://upstream.internal/next")
    assert len(raw_server.received) == 2


# -- upstream faults -----------------------------------------------------------------------


async def _get(gateway: gw.Gateway, path: str = "/", **kwargs: Any) -> httpx.Response:
    async with gateway, client(gateway) as c:
        with anyio.fail_after(10):
            return await c.get(path, **kwargs)


async def test_a_refused_connection_is_a_502(closed_port: int) -> None:
    response = await _get(
        one_route(gw.engines.HttpxEngine(), url=f"http://127.0.0.1:{closed_port}")
    )
    assert response.status_code == 502
    assert error_body(response)["message"] == BAD_GATEWAY


async def test_an_upstream_that_never_answers_is_a_504() -> None:
    with RawServer(default=Fault.SILENT) as server:
        gateway = one_route(gw.engines.HttpxEngine(), url=server.url, read_timeout=200)
        response = await _get(gateway)
    assert response.status_code == 504
    assert error_body(response)["message"] == TIMING_OUT


async def test_an_in_process_upstream_that_never_answers_is_a_504() -> None:
    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        await anyio.sleep_forever()

    response = await _get(one_route(ASGIEngine(upstream), read_timeout=100))
    assert response.status_code == 504
    assert error_body(response)["message"] == TIMING_OUT


async def test_a_connect_that_never_completes_is_a_504() -> None:
    with unaccepting_port() as port:
        if port is None:
            pytest.skip("this platform completes connects to a full accept queue")
        gateway = one_route(
            gw.engines.HttpxEngine(),
            url=f"http://127.0.0.1:{port}",
            connect_timeout=100,
            retries=0,
        )
        response = await _get(gateway)
    assert response.status_code == 504
    assert error_body(response)["message"] == TIMING_OUT


@pytest.mark.parametrize("fault", [Fault.RESET, Fault.MALFORMED])
async def test_a_reset_or_malformed_answer_is_a_502(fault: Fault) -> None:
    with RawServer(default=fault) as server:
        response = await _get(one_route(gw.engines.HttpxEngine(), url=server.url, retries=0))
    assert response.status_code == 502
    assert error_body(response)["message"] == BAD_GATEWAY


async def test_a_failure_mid_body_leaves_the_response_unfinished() -> None:
    with RawServer(default=Fault.TRUNCATED) as server:
        gateway = one_route(gw.engines.HttpxEngine(), url=server.url)
        async with gateway:
            with anyio.fail_after(10):
                result = await call_asgi(gateway, "/")
    assert result.status == 200
    assert result.header("content-length") == "100000"
    assert len(result.body) < 100000
    assert not result.complete


async def test_a_failure_mid_body_aborts_the_clients_connection() -> None:
    with RawServer(default=Fault.TRUNCATED) as server:
        gateway = one_route(gw.engines.HttpxEngine(), url=server.url)
        with serve_asgi(gateway, lifespan=True) as front:
            async with httpx.AsyncClient(base_url=front.url) as c:
                with anyio.fail_after(10), pytest.raises(httpx.RemoteProtocolError):
                    await c.get("/")


async def test_retries_move_to_the_next_target_after_a_refused_connection(
    raw_server: RawServer, closed_port: int, contexts: list[gw.Context]
) -> None:
    raw_server.reset()
    refused = f"127.0.0.1:{closed_port}"
    gateway = gw.Gateway(
        services=[gw.Service(host="pool", retries=1, routes=[gw.Route(paths=["/"])])],
        upstreams=[
            gw.Upstream(
                name="pool", targets=[gw.Target(refused), gw.Target(f"127.0.0.1:{raw_server.port}")]
            )
        ],
        plugins=[Recorder()],
    )
    async with gateway, client(gateway) as c:
        with anyio.fail_after(10):
            response = await c.post("/", content=b"payload")
    assert response.status_code == 200
    tries = contexts[0].tries
    assert [(t["ip"], t["port"]) for t in tries] == [
        ("127.0.0.1", closed_port),
        ("127.0.0.1", raw_server.port),
    ]
    assert "error" in tries[0]
    assert "error" not in tries[1]
    # The body was not consumed by the failed try: the next target got all of it.
    assert raw_server.received[-1].body == b"payload"


async def test_without_retries_a_refused_connection_is_final(
    raw_server: RawServer, closed_port: int, contexts: list[gw.Context]
) -> None:
    gateway = gw.Gateway(
        services=[gw.Service(host="pool", retries=0, routes=[gw.Route(paths=["/"])])],
        upstreams=[
            gw.Upstream(
                name="pool",
                targets=[
                    gw.Target(f"127.0.0.1:{closed_port}"),
                    gw.Target(f"127.0.0.1:{raw_server.port}"),
                ],
            )
        ],
        plugins=[Recorder()],
    )
    response = await _get(gateway)
    assert response.status_code == 502
    assert len(contexts[0].tries) == 1


async def test_a_streamed_body_that_already_started_is_not_retried() -> None:
    def handler(request: UpstreamRequest) -> UpstreamResponse:
        # MockEngine has read the body: as if the connection broke while it was sent.
        raise gw.UpstreamConnectError("failed after the body was sent")

    engine = MockEngine(handler)
    gateway = one_route(engine, retries=3)
    result = await call_asgi(
        gateway, "/", method="POST", headers=[(b"content-length", b"4")], body=[b"da", b"ta"]
    )
    assert result.status == 502
    assert len(engine.requests) == 1
    assert engine.requests[0].content == b"data"


async def test_a_body_a_plugin_buffered_is_sent_again_on_retry() -> None:
    @attrs.frozen
    class ReadsBody(gw.Plugin):
        name: ClassVar[str] = "proxy-test-reads-body"

        async def access(self, ctx: gw.Context) -> None:
            await ctx.request.body()

    calls: list[bytes | None] = []

    def handler(request: UpstreamRequest) -> UpstreamResponse:
        calls.append(request.content)
        if len(calls) == 1:
            raise gw.UpstreamConnectError("refused by the test")
        return UpstreamResponse(200, content=b"ok")

    gateway = gw.Gateway(
        services=[gw.Service(host="upstream.test", retries=2, routes=[gw.Route(paths=["/"])])],
        plugins=[ReadsBody()],
        engine=MockEngine(handler),
    )
    async with client(gateway) as c:
        response = await c.post("/", content=b"data")
    assert response.status_code == 200
    assert calls == [b"data", b"data"]


# -- the gateway's own answers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, "application/json; charset=utf-8"),
        ("*/*", "application/json; charset=utf-8"),
        ("application/json", "application/json; charset=utf-8"),
        ("text/html", "text/html; charset=utf-8"),
        ("application/xml", "application/xml; charset=utf-8"),
        ("text/plain", "text/plain; charset=utf-8"),
        ("text/plain;q=0.5, text/html;q=0.9", "text/html; charset=utf-8"),
    ],
)
async def test_error_bodies_are_negotiated_by_accept(accept: str | None, content_type: str) -> None:
    headers = {"accept": accept} if accept else {}
    async with client(one_route(paths=["/only"])) as c:
        response = await c.get("/elsewhere", headers=headers)
    assert response.status_code == 404
    assert response.headers["content-type"] == content_type
    request_id = response.headers["x-pygateway-request-id"]
    assert len(request_id) == 32
    text = response.text
    if content_type.startswith("application/json"):
        assert json.loads(text) == {
            "message": "no Route matched with those values",
            "request_id": request_id,
        }
    else:
        assert "no Route matched with those values" in text
        assert request_id in text
    assert response.headers["content-length"] == str(len(response.content))


async def test_every_request_gets_its_own_request_id() -> None:
    async with client(one_route(paths=["/only"])) as c:
        ids = {(await c.get("/nope")).headers["x-pygateway-request-id"] for _ in range(5)}
    assert len(ids) == 5


async def test_an_https_only_route_over_http_answers_426() -> None:
    engine = capturing()
    async with client(one_route(engine, protocols=["https"])) as c:
        response = await c.get("/x")
    assert response.status_code == 426
    assert error_body(response)["message"] == "Please use HTTPS protocol"
    assert response.headers["connection"] == "Upgrade"
    assert response.headers["upgrade"] == "TLS/1.2, HTTP/1.1"
    assert engine.requests == []


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_an_https_only_route_can_redirect_instead(status: int) -> None:
    gateway = one_route(protocols=["https"], https_redirect_status_code=status)
    async with client(gateway) as c:
        response = await c.get("/path/x", params={"a": "1"}, headers={"host": "shop.example:8000"})
    assert response.status_code == status
    assert response.headers["location"] == "https://shop.example/path/x?a=1"


async def test_an_https_only_route_is_proxied_over_https() -> None:
    engine = capturing()
    gateway = one_route(engine, protocols=["https"])
    async with client(gateway, base_url="https://gateway.test") as c:
        response = await c.get("/x")
    assert response.status_code == 200
    assert sent_headers(engine)["x-forwarded-proto"] == ["https"]


@pytest.mark.parametrize(("peer", "proxied"), [("10.0.0.7", True), ("192.0.2.1", False)])
async def test_x_forwarded_proto_https_counts_only_from_a_trusted_peer(
    peer: str, proxied: bool
) -> None:
    engine = capturing()
    gateway = gw.Gateway(
        services=[
            gw.Service(host="upstream.test", routes=[gw.Route(paths=["/"], protocols=["https"])])
        ],
        engine=engine,
        trusted_ips=["10.0.0.0/8"],
    )
    async with client(gateway, client_addr=(peer, 4000)) as c:
        response = await c.get("/x", headers={"x-forwarded-proto": "https"})
    assert response.status_code == (200 if proxied else 426)
    assert len(engine.requests) == (1 if proxied else 0)


async def test_a_route_without_a_service_answers_503() -> None:
    gateway = gw.Gateway(routes=[gw.Route(paths=["/lonely"])], engine=capturing())
    async with client(gateway) as c:
        response = await c.get("/lonely")
    assert response.status_code == 503
    assert error_body(response)["message"] == "no Service found with those values"
    assert response.headers["server"].startswith("pygateway/")


# -- the client going away -----------------------------------------------------------------


async def test_a_client_disconnect_cancels_the_upstream_call(
    contexts: list[gw.Context],
) -> None:
    started = anyio.Event()
    cancelled = anyio.Event()

    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    gateway = gw.Gateway(
        services=[gw.Service(host="upstream.test", routes=[gw.Route(paths=["/"])])],
        engine=ASGIEngine(upstream),
        plugins=[Recorder()],
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: call_asgi(gateway, "/", disconnect=True))
            await started.wait()
            await cancelled.wait()
    assert contexts[0].response is not None
    assert contexts[0].response.status_code == 499


async def test_a_client_leaving_mid_response_cancels_the_upstream(
    contexts: list[gw.Context],
) -> None:
    cancelled = anyio.Event()
    gone = anyio.Event()

    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
                await anyio.sleep(0.001)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    gateway = one_route(ASGIEngine(upstream), plugins=[Recorder()])
    with anyio.fail_after(5):
        result = await call_asgi(gateway, "/", disconnect=gone, sink=lambda _: gone.set())
        await cancelled.wait()
    assert result.status == 200
    assert not result.complete
    assert contexts[0].response is not None
    assert contexts[0].response.status_code == 200


async def test_a_client_leaving_mid_body_stops_the_upload(
    raw_server: RawServer, contexts: list[gw.Context]
) -> None:
    raw_server.reset()
    gateway = one_route(gw.engines.HttpxEngine(), url=raw_server.url, plugins=[Recorder()])
    async with gateway:
        with anyio.fail_after(5):
            result = await call_asgi(
                gateway,
                "/",
                method="POST",
                headers=[(b"content-length", b"100000")],
                body=[b"a" * 1000],
                body_ends=False,
                disconnect=True,
            )
    assert result.status == 0  # nobody left to answer
    assert contexts[0].response is not None
    assert contexts[0].response.status_code == 499
    assert raw_server.received == []  # the upstream never got a whole request


# -- HTTP/2 and HTTP/3 request bodies ------------------------------------------------------


class BodyRecorder(gw.engines.Engine):
    """Records, per request, whether a body was given, the headers and the body's bytes."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, list[tuple[bytes, bytes]], bytes]] = []

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        had_body = request.body is not None
        content = await request.read()
        self.seen.append((had_body, list(request.headers), content))
        return UpstreamResponse(200, content=b"ok")


async def call_h2(
    app: Any,
    method: str,
    messages: list[dict[str, Any]],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> int:
    """One HTTP/2 request as a server hands it over (no Content-Length needed)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "2",
        "method": method,
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gateway.test"), *(headers or [])],
        "client": ("127.0.0.1", 5000),
        "server": ("gateway.test", 80),
    }
    pending = list(messages)
    done = anyio.Event()
    status = 0

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body", False):
            done.set()

    with anyio.fail_after(5):
        await app(scope, receive, send)
    return status


def _framing(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k in (b"content-length", b"transfer-encoding")]


async def test_an_http2_request_body_without_content_length_reaches_the_upstream() -> None:
    engine = BodyRecorder()
    status = await call_h2(
        one_route(engine),
        "POST",
        [
            {"type": "http.request", "body": b'{"a":', "more_body": True},
            {"type": "http.request", "body": b"1}", "more_body": True},
            {"type": "http.request", "body": b"", "more_body": False},
        ],
    )
    assert status == 200
    [(had_body, headers, content)] = engine.seen
    assert had_body
    assert content == b'{"a":1}'
    assert _framing(headers) == []  # streamed: the engine sends it chunked


async def test_an_http2_request_without_a_body_goes_upstream_without_one() -> None:
    engine = BodyRecorder()
    status = await call_h2(
        one_route(engine), "GET", [{"type": "http.request", "body": b"", "more_body": False}]
    )
    assert status == 200
    [(had_body, headers, content)] = engine.seen
    assert not had_body
    assert _framing(headers) == []
    assert content == b""


async def test_an_http2_request_with_a_content_length_keeps_it() -> None:
    engine = BodyRecorder()
    status = await call_h2(
        one_route(engine),
        "PUT",
        [{"type": "http.request", "body": b"data", "more_body": False}],
        headers=[(b"content-length", b"4")],
    )
    assert status == 200
    [(had_body, headers, content)] = engine.seen
    assert had_body
    assert _framing(headers) == [(b"content-length", b"4")]
    assert content == b"data"


# -- what plugins set on the upstream request ----------------------------------------------


@attrs.frozen
class SetsUpstream(gw.Plugin):
    """Sets upstream headers, path, query or body, as a request-transformer would."""

    name: ClassVar[str] = "proxy-test-sets-upstream"
    headers: tuple[tuple[str, str], ...] = ()
    path: str | None = None
    query: str | None = None
    body: bytes | None = None

    async def access(self, ctx: gw.Context) -> None:
        state = ctx.upstream_request
        assert state is not None
        for name, value in self.headers:
            state.headers[name] = value
        if self.path is not None:
            state.path = self.path
        if self.query is not None:
            state.query_string = self.query
        if self.body is not None:
            state.body = self.body


async def test_a_host_header_a_plugin_sets_is_the_upstream_host() -> None:
    engine = capturing()
    plugin = SetsUpstream(headers=(("Host", "internal.example"),))
    result = await call_asgi(one_route(engine, plugins=[plugin]), "/")
    assert result.status == 200
    assert sent_headers(engine)["host"] == ["internal.example"]


@pytest.mark.parametrize(
    ("method", "client_headers", "body", "replaced", "expected"),
    [
        ("GET", [], None, None, []),
        ("POST", [(b"content-length", b"4")], [b"data"], None, [(b"content-length", b"4")]),
        ("POST", [(b"content-length", b"4")], [b"data"], b"other", [(b"content-length", b"5")]),
        ("POST", [(b"transfer-encoding", b"chunked")], [b"da", b"ta"], None, []),
    ],
    ids=["no-body", "client-length", "replaced-body", "client-chunked"],
)
async def test_upstream_framing_comes_from_the_body_not_from_headers_plugins_set(
    method: str,
    client_headers: list[tuple[bytes, bytes]],
    body: list[bytes] | None,
    replaced: bytes | None,
    expected: list[tuple[bytes, bytes]],
) -> None:
    engine = capturing()
    plugin = SetsUpstream(
        headers=(("Content-Length", "3"), ("Transfer-Encoding", "gzip")), body=replaced
    )
    gateway = one_route(engine, plugins=[plugin])
    result = await call_asgi(gateway, "/", method=method, headers=client_headers, body=body)
    assert result.status == 200
    assert _framing(list(engine.requests[0].headers)) == expected


async def test_a_chunked_body_a_plugin_read_goes_upstream_with_its_length() -> None:
    @attrs.frozen
    class ReadsBody(gw.Plugin):
        name: ClassVar[str] = "proxy-test-reads-chunked-body"

        async def access(self, ctx: gw.Context) -> None:
            await ctx.request.body()

    engine = capturing()
    result = await call_asgi(
        one_route(engine, plugins=[ReadsBody()]),
        "/",
        method="POST",
        headers=[(b"transfer-encoding", b"chunked")],
        body=[b"hel", b"lo"],
    )
    assert result.status == 200
    assert _framing(list(engine.requests[0].headers)) == [(b"content-length", b"5")]
    assert engine.requests[0].content == b"hello"


async def test_a_plugin_answer_loses_its_hop_by_hop_and_framing_headers() -> None:
    @attrs.frozen
    class Answers(gw.Plugin):
        name: ClassVar[str] = "proxy-test-answers-with-hop-by-hop"

        async def access(self, ctx: gw.Context) -> gw.Response:
            return gw.Response(
                200,
                b"hi",
                headers={
                    "Transfer-Encoding": "chunked",
                    "Connection": "close, X-Private",
                    "Keep-Alive": "timeout=5",
                    "X-Private": "secret",
                    "X-Kept": "yes",
                },
            )

    result = await call_asgi(one_route(plugins=[Answers()]), "/")
    assert result.status == 200
    names = [k for k, _ in result.headers]
    for name in (b"transfer-encoding", b"connection", b"keep-alive", b"x-private"):
        assert name not in names
    assert result.header_list("content-length") == ["2"]
    assert result.header("x-kept") == "yes"
    assert result.body == b"hi"


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/café/é", b"/caf%C3%A9/%C3%A9"),
        ("/名前", b"/%E5%90%8D%E5%89%8D"),
        ("/a b?admin=1#x", b"/a%20b%3Fadmin=1%23x"),
        ("/line\r\nbreak", b"/line%0D%0Abreak"),
        ("/kept%2Fescape", b"/kept%2Fescape"),
        ("/100%", b"/100%25"),
        ("relative", b"/relative"),
    ],
)
async def test_a_path_a_plugin_sets_is_percent_encoded(path: str, target: bytes) -> None:
    engine = capturing()
    result = await call_asgi(one_route(engine, plugins=[SetsUpstream(path=path)]), "/")
    assert result.status == 200
    assert engine.requests[0].target == target


@pytest.mark.parametrize(
    ("query", "sent"),
    [
        ("q=é b#frag", b"q=%C3%A9%20b%23frag"),
        ("a=1\r\nX-Injected: 1", b"a=1%0D%0AX-Injected:%201"),
        ("a=%2F&b=c=d&e", b"a=%2F&b=c=d&e"),
    ],
)
async def test_a_query_a_plugin_sets_is_percent_encoded(query: str, sent: bytes) -> None:
    engine = capturing()
    result = await call_asgi(one_route(engine, plugins=[SetsUpstream(query=query)]), "/")
    assert result.status == 200
    assert engine.requests[0].target == b"/?" + sent


# -- configuration swaps -------------------------------------------------------------------


async def test_a_request_keeps_the_configuration_it_started_with() -> None:
    def configuration(*upstreams: gw.Upstream) -> gw.Configuration:
        return gw.Configuration(
            services=[
                gw.Service(name="svc", host="pool", retries=1, routes=[gw.Route(paths=["/"])])
            ],
            upstreams=list(upstreams),
        )

    def handler(request: UpstreamRequest) -> UpstreamResponse:
        if len(engine.requests) == 1:
            # Mid-request, the upstream is removed; the retry still uses the old one.
            gateway.configure(configuration())
            raise gw.UpstreamConnectError("refused by the test")
        return UpstreamResponse(200, content=b"ok")

    engine = MockEngine(handler)
    first = configuration(gw.Upstream(name="pool", targets=[gw.Target("10.0.0.5:8080")]))
    gateway = gw.Gateway(services=first.services, upstreams=first.upstreams, engine=engine)
    result = await call_asgi(gateway, "/")
    assert result.status == 200
    assert [(r.host, r.port) for r in engine.requests] == [("10.0.0.5", 8080)] * 2


# -- falling through GatewayMiddleware -----------------------------------------------------


async def test_the_app_behind_the_middleware_gets_a_body_a_rewrite_plugin_read() -> None:
    @attrs.frozen
    class ChecksBody(gw.Plugin):
        name: ClassVar[str] = "proxy-test-checks-body"

        async def rewrite(self, ctx: gw.Context) -> None:
            await ctx.request.body()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body += b"<disconnect>"
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app got " + body})

    gateway = gw.Gateway(
        services=[gw.Service(host="upstream.test", routes=[gw.Route(paths=["/api"])])],
        engine=capturing(),
        plugins=[ChecksBody()],
    )
    with anyio.fail_after(5):
        result = await call_asgi(
            gw.GatewayMiddleware(app, gateway),
            "/elsewhere",
            method="POST",
            headers=[(b"content-length", b"5")],
            body=[b"hello"],
        )
    assert result.status == 200
    assert result.body == b"app got hello"


# -- framing of bodyless responses ---------------------------------------------------------


@attrs.frozen
class BuffersResponse(gw.Plugin):
    name: ClassVar[str] = "proxy-test-buffers-response"

    async def response(self, ctx: gw.Context) -> None:
        pass


def _bodyless_upstream(request: UpstreamRequest) -> UpstreamResponse:
    target = request.target.decode()
    if target.startswith("/204"):
        return UpstreamResponse(204, [])
    if target.startswith("/304"):
        # A 304 may carry the length of the 200 it stands for.
        return UpstreamResponse(304, [(b"content-length", b"1234"), (b"etag", b'"x"')])
    return UpstreamResponse(
        200,
        [(b"content-length", b"5")],
        content=b"" if request.method == "HEAD" else b"hello",
    )


@pytest.mark.parametrize("buffered", [False, True], ids=["streamed", "response-phase"])
@pytest.mark.parametrize(
    ("method", "path", "status", "length"),
    [("GET", "/204", 204, None), ("GET", "/304", 304, None), ("HEAD", "/x", 200, "5")],
)
async def test_bodyless_responses_are_framed_alike_streamed_or_buffered(
    buffered: bool, method: str, path: str, status: int, length: str | None
) -> None:
    plugins = [BuffersResponse()] if buffered else []
    gateway = one_route(MockEngine(_bodyless_upstream), strip_path=False, plugins=plugins)
    result = await call_asgi(gateway, path, method=method)
    assert result.status == status
    assert result.header_list("content-length") == ([length] if length else [])
    assert result.body == b""
    assert result.complete


@pytest.mark.parametrize("buffered", [False, True], ids=["streamed", "response-phase"])
async def test_a_status_a_header_filter_makes_bodyless_sends_no_body(buffered: bool) -> None:
    @attrs.frozen
    class NoContent(gw.Plugin):
        name: ClassVar[str] = "proxy-test-no-content"

        async def header_filter(self, ctx: gw.Context) -> None:
            assert ctx.response is not None
            ctx.response.status_code = 204

    plugins: list[gw.Plugin] = [NoContent()]
    if buffered:
        plugins.append(BuffersResponse())
    gateway = one_route(MockEngine(_bodyless_upstream), strip_path=False, plugins=plugins)
    result = await call_asgi(gateway, "/x")
    assert result.status == 204
    assert result.header("content-length") is None
    assert result.body == b""
    assert result.complete


async def test_a_head_answer_from_a_plugin_states_its_length_without_a_body() -> None:
    @attrs.frozen
    class Answers(gw.Plugin):
        name: ClassVar[str] = "proxy-test-answers-head"

        async def access(self, ctx: gw.Context) -> gw.Response:
            return gw.Response(200, b"twelve bytes")

    result = await call_asgi(one_route(plugins=[Answers()]), "/", method="HEAD")
    assert result.status == 200
    assert result.header_list("content-length") == ["12"]
    assert result.body == b""


# -- https-only routes ---------------------------------------------------------------------


async def test_an_https_redirect_keeps_the_mount_point() -> None:
    gateway = one_route(paths=["/users"], protocols=["https"], https_redirect_status_code=301)
    result = await call_asgi(
        gateway, "/api/users/1", root_path="/api", query=b"a=1", headers=[(b"host", b"gw.test")]
    )
    assert result.status == 301
    assert result.header("location") == "https://gw.test/api/users/1?a=1"


async def test_an_https_only_route_over_http_runs_only_the_global_plugins() -> None:
    ran: list[str] = []

    @attrs.frozen
    class Notes(gw.Plugin):
        name: ClassVar[str] = "proxy-test-notes"
        where: str = ""

        async def header_filter(self, ctx: gw.Context) -> None:
            ran.append(f"{self.where} header_filter")

        async def log(self, ctx: gw.Context) -> None:
            ran.append(f"{self.where} log")

    gateway = gw.Gateway(
        services=[
            gw.Service(
                host="upstream.test",
                routes=[gw.Route(paths=["/"], protocols=["https"], plugins=[Notes("route")])],
            )
        ],
        plugins=[Notes("global")],
        engine=capturing(),
    )
    result = await call_asgi(gateway, "/x")
    assert result.status == 426
    assert ran == ["global header_filter", "global log"]
