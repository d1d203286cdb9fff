"""The bundled request-size-limiting plugin, after Kong's spec for it
(spec/03-plugins/12-request-size-limiting), plus bodies counted while they stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import httpx
import pytest
from upstreams import RawServer, call_asgi, serve_asgi, wait_until

import pygateway as gw
from pygateway.engines import MockEngine, UpstreamResponse
from pygateway.plugins._request_size_limiting import RequestSizeLimiting
from pygateway.testing import client, echo_engine

MB = 1024 * 1024
KB = 1024
EXCEEDED = "Request size limit exceeded"
FACTORS = {"bytes": 1, "kilobytes": KB, "megabytes": MB}


def recording() -> MockEngine:
    return MockEngine(lambda request: UpstreamResponse(200, content=b"proxied"))


def gateway_with(
    plugin: RequestSizeLimiting, *extra: gw.Plugin, url: str = "", **kw: Any
) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url=url or "http://upstream.internal",
                routes=[gw.Route(name="r", paths=["/"], plugins=[plugin, *extra])],
            )
        ],
        **kw,
    )


async def post(gateway: gw.Gateway, body: bytes, **headers: str) -> httpx.Response:
    async with client(gateway) as http:
        return await http.post("/request", content=body, headers=headers)


def refused(response: Any, status: int, message: str = EXCEEDED) -> None:
    status_code = getattr(response, "status_code", None) or response.status
    assert status_code == status
    body = response.json() if hasattr(response, "json") else json.loads(response.body)
    assert body["message"] == message
    assert "request_id" in body


# -- with a Content-Length ------------------------------------------------------------------


async def test_a_body_up_to_the_limit_passes() -> None:
    engine = recording()
    gateway = gateway_with(RequestSizeLimiting(allowed_payload_size=2), engine=engine)
    response = await post(gateway, b"a" * (2 * MB))
    assert response.status_code == 200
    assert len(engine.requests[0].content) == 2 * MB


async def test_a_body_over_the_limit_gets_413_and_the_upstream_is_not_called() -> None:
    engine = recording()
    gateway = gateway_with(RequestSizeLimiting(allowed_payload_size=2), engine=engine)
    refused(await post(gateway, b"a" * (2 * MB + 1)), 413)
    assert engine.requests == []


async def test_with_expect_100_continue_an_oversized_body_gets_417() -> None:
    gateway = gateway_with(RequestSizeLimiting(allowed_payload_size=2), engine=recording())
    refused(await post(gateway, b"a" * (2 * MB + 1), expect="100-continue"), 417)
    response = await post(gateway, b"a" * (2 * MB), expect="100-continue")
    assert response.status_code == 200


async def test_the_content_length_decides_before_the_body_is_read() -> None:
    engine = recording()
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=10, size_unit="bytes"), engine=engine
    )
    read: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(b"x" * 11)
        yield b"x" * 11

    result = await call_asgi(
        gateway, "/", method="POST", headers=[(b"content-length", b"11")], body=body()
    )
    refused(result, 413)
    assert read == []  # not a byte was asked of the client
    assert engine.requests == []


@pytest.mark.parametrize("unit", ["bytes", "kilobytes", "megabytes"])
async def test_each_unit_is_1024_based(unit: str) -> None:
    limit = 2 * FACTORS[unit]
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=2, size_unit=unit), engine=recording()
    )
    assert (await post(gateway, b"a" * (limit - 1))).status_code == 200
    assert (await post(gateway, b"a" * limit)).status_code == 200
    refused(await post(gateway, b"a" * (limit + 1)), 413)


# -- without a Content-Length: counted while it streams -------------------------------------


@pytest.fixture
def upstream() -> Iterator[RawServer]:
    """A real upstream of its own: what one test aborted cannot show up in another's."""
    with RawServer() as server:
        yield server


def chunked(*chunks: bytes, expect: bool = False) -> dict[str, Any]:
    headers = [(b"transfer-encoding", b"chunked")]
    if expect:
        headers.append((b"expect", b"100-continue"))
    return {"method": "POST", "headers": headers, "body": list(chunks)}


@pytest.mark.servers
@pytest.mark.parametrize("unit", ["bytes", "kilobytes"])
async def test_a_streamed_body_up_to_the_limit_reaches_the_upstream_whole(
    upstream: RawServer, unit: str
) -> None:
    limit = 2 * FACTORS[unit]
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=2, size_unit=unit), url=upstream.url
    )
    async with gateway:
        result = await call_asgi(gateway, "/", **chunked(b"a" * (limit - 1), b"b"))
    assert result.status == 200
    assert upstream.received[-1].framing == "chunked"
    assert upstream.received[-1].body == b"a" * (limit - 1) + b"b"


@pytest.mark.servers
@pytest.mark.parametrize("expect", [False, True])
async def test_a_streamed_body_over_the_limit_aborts_the_upstream_request_with_413(
    upstream: RawServer, expect: bool
) -> None:
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=2, size_unit="kilobytes"), url=upstream.url
    )
    async with gateway:
        result = await call_asgi(gateway, "/", **chunked(b"a" * KB, b"b" * KB, b"c", expect=expect))
    refused(result, 417 if expect else 413)
    assert upstream.received == []  # the upstream never got a complete request
    assert b"c" not in b"".join(upstream.partial)


@pytest.mark.servers
async def test_a_streamed_body_is_not_buffered_while_it_is_counted(upstream: RawServer) -> None:
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=10, size_unit="bytes"), url=upstream.url
    )

    class Body:
        """Sends its second chunk once the upstream has the first one. (An iterator, not
        a generator: the gateway stops reading it half-way, with nothing left to finalize.)"""

        def __init__(self) -> None:
            self.chunks = [b"123456", b"789012"]

        def __aiter__(self) -> Body:
            return self

        async def __anext__(self) -> bytes:
            if not self.chunks:
                raise StopAsyncIteration
            if len(self.chunks) == 1:
                await wait_until(lambda: bool(upstream.partial))
            return self.chunks.pop(0)

    async with gateway:
        result = await call_asgi(
            gateway,
            "/",
            method="POST",
            headers=[(b"transfer-encoding", b"chunked")],
            body=Body(),
        )
    refused(result, 413)
    assert upstream.partial == [b"123456"]
    assert upstream.received == []


@pytest.mark.servers
async def test_an_oversized_chunked_upload_through_a_real_server_gets_413(
    upstream: RawServer,
) -> None:
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=1, size_unit="kilobytes"), url=upstream.url
    )

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"z" * 512

    with serve_asgi(gateway) as server:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False) as http:
            response = await http.post("/", content=upload())
    refused(response, 413)
    assert upstream.received == []


async def test_a_streamed_body_over_the_limit_gets_413_through_an_asgi_upstream() -> None:
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=10, size_unit="bytes"),
        url="http://echo.internal",
        engines={"echo.internal": echo_engine()},
    )
    result = await call_asgi(gateway, "/", **chunked(b"a" * 6, b"b" * 6))
    refused(result, 413)


async def test_a_streamed_body_under_the_limit_passes_through_an_asgi_upstream() -> None:
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=12, size_unit="bytes"),
        url="http://echo.internal",
        engines={"echo.internal": echo_engine()},
    )
    result = await call_asgi(gateway, "/", **chunked(b"a" * 6, b"b" * 6))
    assert result.status == 200
    assert json.loads(result.body)["body"] == "aaaaaabbbbbb"


@pytest.mark.parametrize("content_length", [b"1", b"0"])
async def test_a_chunked_body_is_counted_whatever_content_length_comes_with_it(
    content_length: bytes,
) -> None:
    engine = recording()
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=10, size_unit="bytes"), engine=engine
    )
    request = chunked(b"a" * 5000, b"b" * 5000)
    request["headers"].append((b"content-length", content_length))
    refused(await call_asgi(gateway, "/", **request), 413)
    assert engine.requests == []


async def test_a_chunked_body_under_the_limit_passes_whatever_content_length_comes_with_it() -> (
    None
):
    engine = recording()
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=10, size_unit="bytes"), engine=engine
    )
    request = chunked(b"a" * 3, b"b" * 3)
    request["headers"].append((b"content-length", b"1000"))
    assert (await call_asgi(gateway, "/", **request)).status == 200
    assert engine.requests[0].content == b"aaabbb"


@attrs.frozen
class ReadsBody(gw.Plugin):
    """Test-only: reads (buffers) the whole body before request-size-limiting runs."""

    name = "rsl-test-reads-body"
    priority = 2000

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        await ctx.request.body()
        return None


async def test_a_body_an_earlier_plugin_buffered_is_judged_by_its_size() -> None:
    engine = recording()
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=10, size_unit="bytes"), ReadsBody(), engine=engine
    )
    refused(await call_asgi(gateway, "/", **chunked(b"a" * 6, b"b" * 6)), 413)
    assert engine.requests == []
    result = await call_asgi(gateway, "/", **chunked(b"a" * 6, b"b" * 4))
    assert result.status == 200
    assert engine.requests[0].content == b"a" * 6 + b"b" * 4


@attrs.frozen
class ReadsBodyLater(gw.Plugin):
    """Test-only: reads (buffers) the whole body after request-size-limiting ran."""

    name = "rsl-test-reads-body-later"
    priority = 800

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        await ctx.request.body()
        return None


async def test_a_streamed_body_a_later_plugin_reads_over_the_limit_gets_413() -> None:
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=10, size_unit="bytes"),
        ReadsBodyLater(),
        engine=recording(),
    )
    refused(await call_asgi(gateway, "/", **chunked(b"a" * 6, b"b" * 6)), 413)


# -- require_content_length ----------------------------------------------------------------------


async def test_require_content_length_refuses_a_request_without_one_with_411() -> None:
    engine = recording()
    gateway = gateway_with(
        RequestSizeLimiting(allowed_payload_size=2, require_content_length=True), engine=engine
    )
    refused(await call_asgi(gateway, "/"), 411, "A valid Content-Length header is required")
    assert engine.requests == []
    # A Content-Length, or a chunked body, will do.
    assert (await post(gateway, b"abc")).status_code == 200
    assert (await call_asgi(gateway, "/", **chunked(b"abc"))).status == 200


async def test_without_require_content_length_a_bodyless_request_passes() -> None:
    gateway = gateway_with(RequestSizeLimiting(allowed_payload_size=0), engine=recording())
    assert (await call_asgi(gateway, "/")).status == 200
    refused(await post(gateway, b"a"), 413)


# -- configuration ------------------------------------------------------------------------------


def test_its_kong_name_priority_defaults_and_round_trip() -> None:
    assert gw.plugins.get("request-size-limiting") is RequestSizeLimiting
    assert RequestSizeLimiting.priority == 951
    plugin = RequestSizeLimiting()
    assert plugin.to_config() == {
        "allowed_payload_size": 128,
        "size_unit": "megabytes",
        "require_content_length": False,
    }
    assert plugin.limit == 128 * MB
    custom = RequestSizeLimiting(allowed_payload_size=3, size_unit="kilobytes")
    assert RequestSizeLimiting.from_config(custom.to_config()) == custom


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"size_unit": "gigabytes"}, "size_unit: expected one of: megabytes, kilobytes, bytes"),
        ({"allowed_payload_size": "10"}, "allowed_payload_size: expected an integer"),
        ({"allowed_payload_size": None}, "allowed_payload_size: required field missing"),
        ({"require_content_length": "yes"}, "require_content_length: expected a boolean"),
    ],
)
def test_invalid_configurations_fail_with_kongs_messages(
    config: dict[str, Any], error: str
) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        RequestSizeLimiting(**config)
    assert str(info.value) == error


async def test_it_works_from_a_declarative_file() -> None:
    config = {
        "_format_version": "3.0",
        "services": [
            {"name": "s", "url": "http://upstream.internal", "routes": [{"paths": ["/"]}]}
        ],
        "plugins": [
            {
                "name": "request-size-limiting",
                "config": {"allowed_payload_size": 1, "size_unit": "kilobytes"},
            }
        ],
    }
    gateway = gw.Gateway.from_config(config, engine=recording())
    assert (await post(gateway, b"a" * KB)).status_code == 200
    refused(await post(gateway, b"a" * (KB + 1)), 413)
    again = gw.Gateway.from_config(gateway.to_config())
    assert again.config == gateway.config
