"""The bundled response-transformer plugin, after Kong's spec for it; JSON bodies are
buffered only when they change, everything else streams."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import attrs
import httpx
import pytest
from upstreams import serve_asgi

import pygateway as gw
from pygateway._config import dump, load
from pygateway._types import Receive, Scope, Send
from pygateway.engines import ASGIEngine
from pygateway.plugins._request_termination import RequestTermination
from pygateway.plugins._response_transformer import ResponseTransformer
from pygateway.testing import EchoUpstream, client, echo_engine


def json_upstream(
    *chunks: bytes, content_type: bytes = b"application/json", headers: Any = ()
) -> ASGIEngine:
    """An upstream answering with `chunks` as separate body messages."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(sum(map(len, chunks))).encode()),
                    *headers,
                ],
            }
        )
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return ASGIEngine(app)


def gateway_with(*plugins: Any, engine: Any = None) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://up.internal",
                routes=[gw.Route(name="r", paths=["/r"], plugins=plugins)],
            )
        ],
        engines={"up.internal": engine if engine is not None else echo_engine()},
    )


async def get(gateway: gw.Gateway, path: str = "/r", **kwargs: Any) -> httpx.Response:
    async with client(gateway) as http:
        return await http.get(path, **kwargs)


BODY = (b'{"id": 1, "name": "al', b'ice", "tags": ["a"], "secret": "s", "n": 0}')


# -- headers ----------------------------------------------------------------------------


async def test_headers_are_removed_renamed_replaced_added_and_appended_in_kongs_order() -> None:
    engine = json_upstream(
        b"{}", headers=[(b"x-old", b"1"), (b"x-drop", b"d"), (b"x-keep", b"k"), (b"x-set", b"a")]
    )
    plugin = ResponseTransformer(
        remove={"headers": ["X-Drop"]},
        rename={"headers": ["x-old:x-new"]},
        replace={"headers": ["x-set:b", "x-absent:no"]},
        add={"headers": ["x-keep:not-added", "x-added:yes"]},
        append={"headers": ["x-set:c", "x-new:2"]},
    )
    response = await get(gateway_with(plugin, engine=engine))
    headers = response.headers
    assert "x-drop" not in headers
    assert "x-old" not in headers
    assert headers.get_list("x-new") == ["1", "2"]
    assert headers.get_list("x-set") == ["b", "c"]
    assert "x-absent" not in headers
    assert headers["x-keep"] == "k"
    assert headers["x-added"] == "yes"
    # Headers only: the body is the upstream's, byte for byte.
    assert response.content == b"{}"


async def test_a_header_value_may_contain_colons() -> None:
    plugin = ResponseTransformer(add={"headers": ["link:<http://a.test/>; rel=next"]})
    response = await get(gateway_with(plugin))
    assert response.headers["link"] == "<http://a.test/>; rel=next"


async def test_headers_of_an_answer_a_plugin_made_are_transformed_too() -> None:
    plugin = ResponseTransformer(add={"headers": ["x-added:yes"]})
    response = await get(gateway_with(plugin, RequestTermination(status_code=403)))
    assert response.status_code == 403
    assert response.headers["x-added"] == "yes"


# -- JSON bodies -----------------------------------------------------------------------


async def test_a_json_body_is_transformed_in_kongs_order_with_json_types() -> None:
    plugin = ResponseTransformer(
        remove={"json": ["secret"]},
        rename={"json": ["name:username"]},
        replace={"json": ["n:7", "absent:x"], "json_types": ["number"]},
        add={
            "json": ["id:99", "active:true", "ratio:0.5"],
            "json_types": ["string", "boolean", "number"],
        },
        append={"json": ["tags:b", "new:z"]},
    )
    response = await get(gateway_with(plugin, engine=json_upstream(*BODY)))
    assert response.json() == {
        "id": 1,
        "username": "alice",
        "tags": ["a", "b"],
        "n": 7,
        "active": True,
        "ratio": 0.5,
        "new": ["z"],
    }
    # The upstream's Content-Length is stale: it is not sent (the body is framed anew).
    assert response.headers.get("content-length") in (None, str(len(response.content)))


async def test_a_json_value_without_a_type_is_a_string() -> None:
    plugin = ResponseTransformer(add={"json": ["count:3"]})
    response = await get(gateway_with(plugin, engine=json_upstream(b"{}")))
    assert response.json() == {"count": "3"}


async def test_a_json_entry_without_a_valid_value_does_nothing() -> None:
    plugin = ResponseTransformer(
        add={"json": ["empty:", "bad:x1", "good:1"], "json_types": ["string", "number", "number"]}
    )
    response = await get(gateway_with(plugin, engine=json_upstream(b"{}")))
    assert response.json() == {"good": 1}


async def test_a_body_that_is_not_json_is_left_alone() -> None:
    plugin = ResponseTransformer(add={"json": ["a:1"]})
    for engine in (
        json_upstream(b"not json {"),
        json_upstream(b"[1, 2]"),
        json_upstream(b'{"b": 2}', content_type=b"text/plain"),
    ):
        response = await get(gateway_with(plugin, engine=engine))
        assert response.status_code == 200
        assert "a" not in response.text


async def test_a_json_content_type_with_parameters_is_json() -> None:
    plugin = ResponseTransformer(add={"json": ["a:1"]})
    engine = json_upstream(b"{}", content_type=b"application/json; charset=utf-8")
    assert (await get(gateway_with(plugin, engine=engine))).json() == {"a": "1"}


async def test_a_plugin_answer_in_json_is_transformed() -> None:
    plugin = ResponseTransformer(add={"json": ["hint:try later"]})
    response = await get(gateway_with(plugin, RequestTermination(status_code=503)))
    assert response.json() == {"message": "Service unavailable", "hint": "try later"}


async def test_a_head_request_gets_no_body() -> None:
    plugin = ResponseTransformer(add={"json": ["a:1"]})
    async with client(gateway_with(plugin, engine=json_upstream(b"{}"))) as http:
        response = await http.head("/r")
    assert response.status_code == 200
    assert response.content == b""


# -- streaming ---------------------------------------------------------------------------


PASSED: list[int] = []


@attrs.frozen(kw_only=True)
class MeasuredTransformer(ResponseTransformer):
    """Records the size of every piece its body_filter lets through."""

    async def body_filter(self, ctx: Any, chunk: bytes, last: bool) -> bytes:
        out = await super().body_filter(ctx, chunk, last)
        PASSED.append(len(out))
        return out


async def test_a_large_streamed_body_is_not_buffered_when_only_headers_change() -> None:
    size = 16 * 1024 * 1024
    # Headers and JSON changes: the JSON ones do not apply to an octet-stream.
    plugin = MeasuredTransformer(add={"headers": ["x-seen:yes"], "json": ["a:1"]})
    PASSED.clear()
    with serve_asgi(EchoUpstream()) as upstream:
        gateway = gw.Gateway(
            services=[
                gw.Service(
                    name="s",
                    url=upstream.url,
                    routes=[gw.Route(name="r", paths=["/r"], plugins=[plugin])],
                )
            ]
        )
        with serve_asgi(gateway, lifespan=True) as front:
            digest = hashlib.sha256()
            chunks = 0
            received = 0
            async with (
                httpx.AsyncClient(base_url=front.url, trust_env=False) as http,
                http.stream("GET", f"/r/bytes/{size}?chunk=65536") as response,
            ):
                assert response.headers["x-seen"] == "yes"
                async for chunk in response.aiter_raw():
                    chunks += 1
                    received += len(chunk)
                    digest.update(chunk)
    block = bytes(range(256)) * 256
    expected = hashlib.sha256(block * (size // len(block))).hexdigest()
    assert received == size
    assert digest.hexdigest() == expected
    # Streamed: the client got it in many pieces, not one 16 MiB buffer.
    assert chunks > 16
    # And the plugin passed each upstream piece on as it came, holding none back.
    assert len(PASSED) >= size // 65536
    assert max(PASSED) <= 65536
    assert sum(PASSED) == size


async def test_a_json_body_sent_in_pieces_through_a_real_server_is_transformed() -> None:
    plugin = ResponseTransformer(remove={"json": ["body_sha256"]})
    with serve_asgi(EchoUpstream()) as upstream:
        gateway = gw.Gateway(
            services=[
                gw.Service(
                    name="s",
                    url=upstream.url,
                    routes=[gw.Route(name="r", paths=["/r"], plugins=[plugin])],
                )
            ]
        )
        with serve_asgi(gateway, lifespan=True) as front:
            async with httpx.AsyncClient(base_url=front.url, trust_env=False) as http:
                response = await http.get("/r/x")
    data = response.json()
    assert "body_sha256" not in data
    assert data["path"] == "/x"


# -- configuration -------------------------------------------------------------------------


def test_the_priority_and_defaults_are_kongs() -> None:
    assert (ResponseTransformer.name, ResponseTransformer.priority) == (
        "response-transformer",
        800,
    )
    empty = {"headers": [], "json": [], "json_types": []}
    assert ResponseTransformer().to_config() == {
        "remove": {"headers": [], "json": []},
        "rename": {"headers": [], "json": []},
        "replace": empty,
        "add": empty,
        "append": empty,
    }


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"add": {"headers": ["x-nocolon"]}}, "add.headers: key 'x-nocolon' has no value"),
        (
            {"add": {"headers": ["bad name:1"]}},
            "add.headers: 'bad name' is not a valid header name",
        ),
        ({"remove": {"headers": ["a:b"]}}, "remove.headers: 'a:b' is not a valid header name"),
        ({"rename": {"json": ["a"]}}, "rename.json: key 'a' has no value"),
        (
            {"append": {"json": ["a:1"], "json_types": ["int"]}},
            "append.json_types[0]: expected one of: boolean, number, string",
        ),
        ({"remove": {"body": ["a"]}}, "remove.body: unknown field"),
        ({"add": {"json": "a:1"}}, "add.json: expected an array"),
    ],
)
def test_invalid_configs_are_refused_naming_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(gw.ConfigurationError, match=re.escape(message)):
        ResponseTransformer.from_config(config)


async def test_a_declarative_config_works_and_round_trips() -> None:
    data = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "s",
                "url": "http://up.internal",
                "routes": [
                    {
                        "name": "r",
                        "paths": ["/r"],
                        "plugins": [
                            {
                                "name": "response-transformer",
                                "config": {
                                    "remove": {"json": ["body"]},
                                    "add": {"headers": ["x-v:2"]},
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    gateway = gw.Gateway.from_config(data, engines={"up.internal": echo_engine()})
    response = await get(gateway)
    assert response.headers["x-v"] == "2"
    assert "body" not in response.json()
    assert load(dump(gateway.config)) == gateway.config
    plugin = gateway.config.services[0].routes[0].plugins[0]
    assert plugin == ResponseTransformer(remove={"json": ["body"]}, add={"headers": ["x-v:2"]})
    assert json.loads(json.dumps(plugin.to_config())) == plugin.to_config()
