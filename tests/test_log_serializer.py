"""The log entry the logging plugins send: Kong's basic serializer, with secrets redacted."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

import pygateway as gw
from pygateway._headers import Headers
from pygateway.plugins import _log_serializer
from pygateway.plugins._base import Plugin
from pygateway.plugins._key_auth import KeyAuth
from pygateway.plugins._log_serializer import headers_dict, headers_json, serialize, serialize_json
from pygateway.plugins._request_termination import RequestTermination
from pygateway.testing import client, echo_engine

KEY = gw.KeyAuthCredential(key="top-secret-key")
BOB = gw.Consumer(username="bob", custom_id="b-1", credentials=[KEY])


class Sink:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []


@attrs.frozen
class Capture(Plugin):
    """Keeps the entries it serializes in its log phase."""

    name = "capture-log"
    sink: Any = attrs.field(init=False, factory=Sink, eq=False)

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self.sink.entries  # type: ignore[no-any-return]

    async def log(self, ctx: Any) -> None:
        self.entries.append(serialize(ctx))


def gateway_with(*plugins: Plugin, route_plugins: Any = ()) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="echo",
                url="http://echo.internal/base",
                routes=[
                    gw.Route(name="r", paths=["/r"], plugins=list(route_plugins)),
                    gw.Route(name="stop", paths=["/stop"], plugins=[RequestTermination()]),
                ],
            )
        ],
        consumers=[BOB],
        plugins=list(plugins),
        engines={"echo.internal": echo_engine()},
    )


async def logged(
    route_plugins: Any = (), path: str = "/r/x?a=1&a=2&b=", **kwargs: Any
) -> tuple[Any, dict[str, Any]]:
    capture = Capture()
    gateway = gateway_with(capture, route_plugins=route_plugins)
    async with client(gateway) as http:
        response = await http.get(path, **kwargs)
    assert len(capture.entries) == 1
    return response, capture.entries[0]


async def test_the_request_is_described_as_kong_does() -> None:
    response, entry = await logged(headers={"x-test": "1"})
    request = entry["request"]
    assert request["id"] == response.headers["x-pygateway-request-id"]
    assert request["uri"] == "/r/x?a=1&a=2&b="
    assert request["url"] == "http://gateway.test:80/r/x?a=1&a=2&b="
    assert request["querystring"] == {"a": ["1", "2"], "b": ""}
    assert request["method"] == "GET"
    assert request["headers"]["x-test"] == "1"
    assert request["headers"]["host"] == "gateway.test"
    assert request["size"] > 0
    assert "tls" not in request
    assert entry["client_ip"] == "127.0.0.1"


async def test_the_response_and_upstream_are_described() -> None:
    response, entry = await logged()
    assert entry["response"]["status"] == 200
    assert entry["response"]["headers"]["content-type"] == response.headers["content-type"]
    assert entry["response"]["size"] >= len(response.content)
    assert entry["upstream_uri"] == "/base/x?a=1&a=2&b="
    assert entry["upstream_status"] == "200"
    assert entry["source"] == "service"
    assert len(entry["tries"]) == 1
    assert entry["route"]["name"] == "r"
    assert entry["service"]["name"] == "echo"
    assert "plugins" not in entry["route"]


async def test_latencies_use_kongs_key_names() -> None:
    _, entry = await logged()
    latencies = entry["latencies"]
    assert set(latencies) == {"kong", "proxy", "request"}
    assert latencies["request"] >= latencies["proxy"] >= 0
    assert latencies["kong"] == latencies["request"] - latencies["proxy"]


async def test_started_at_is_in_epoch_milliseconds() -> None:
    import time

    before = int(time.time() * 1000)
    _, entry = await logged()
    after = int(time.time() * 1000)
    assert before <= entry["started_at"] <= after


async def test_an_answer_from_a_plugin_is_logged_with_source_exit_and_no_upstream() -> None:
    capture = Capture()
    async with client(gateway_with(capture)) as http:
        response = await http.get("/stop")
    assert response.status_code == 503
    entry = capture.entries[0]
    assert entry["source"] == "exit"
    assert entry["response"]["status"] == 503
    assert entry["upstream_status"] == ""
    assert entry["tries"] == []
    assert entry["latencies"]["proxy"] == -1


async def test_a_request_no_route_matches_is_logged_by_a_global_plugin() -> None:
    capture = Capture()
    async with client(gateway_with(capture)) as http:
        response = await http.get("/nowhere")
    assert response.status_code == 404
    entry = capture.entries[0]
    assert entry["response"]["status"] == 404
    assert "route" not in entry
    assert "service" not in entry
    assert entry["upstream_uri"] == ""


@pytest.mark.parametrize("name", ["Authorization", "Proxy-Authorization", "Cookie"])
async def test_credential_request_headers_are_redacted(name: str) -> None:
    _, entry = await logged(headers={name: "secret-value"})
    assert entry["request"]["headers"][name.lower()] == "REDACTED"
    assert "secret-value" not in repr(entry)


def test_set_cookie_is_redacted_and_a_repeated_header_becomes_a_list() -> None:
    raw = Headers([("set-cookie", "a=1"), ("Set-Cookie", "b=2"), ("x-a", "1"), ("x-a", "2")])
    assert headers_dict(raw) == {"set-cookie": ["REDACTED", "REDACTED"], "x-a": ["1", "2"]}


async def test_the_consumer_is_logged_without_its_credentials() -> None:
    _, entry = await logged(
        route_plugins=[KeyAuth()], path="/r/x", headers={"apikey": "top-secret-key"}
    )
    assert entry["consumer"]["username"] == "bob"
    assert entry["consumer"]["id"] == BOB.id
    assert "credentials" not in entry["consumer"]
    assert entry["authenticated_entity"] == {"id": KEY.id, "consumer_id": BOB.id}
    assert entry["request"]["headers"]["apikey"] == "top-secret-key"  # as Kong: not a known name
    assert "top-secret-key" not in repr({k: v for k, v in entry.items() if k != "request"})


@attrs.frozen
class CaptureJson(Plugin):
    """Keeps the JSON the loggers would send for each request; with `extra_try`, first
    records that try as the balancer would."""

    name = "capture-json-log"
    sink: Any = attrs.field(init=False, factory=Sink, eq=False)
    extra_try: Any = None

    async def log(self, ctx: Any) -> None:
        if self.extra_try is not None:
            ctx.tries.append(dict(self.extra_try))
        self.sink.entries.append(serialize_json(ctx))


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def test_the_json_sent_is_what_the_json_encoder_writes_for_the_entry() -> None:
    odd_try = {"ip": "::1", "port": 8, "error": 'boom "x" \\ é', "balancer_latency": 1.5}
    capture = CaptureJson(extra_try=odd_try)
    gateway = gateway_with(capture, route_plugins=[KeyAuth()])
    headers: dict[str, str | bytes] = {
        "apikey": "top-secret-key",
        "Authorization": "Basic c2VjcmV0",
        "x-quote": 'say "hi" \\ back',
        "x-tab": "a\tb",
        "x-latin": b"caf\xe9",
    }
    async with client(gateway, base_url="https://gateway.test") as http:
        await http.get("/r/a%22b?q=%C3%A9&q=2&flag", headers=headers)
    sent = capture.sink.entries[0]
    entry = json.loads(sent)
    assert sent == compact(entry)  # the bytes, not only the data, are the encoder's
    assert entry["request"]["headers"]["x-quote"] == 'say "hi" \\ back'
    assert entry["request"]["headers"]["x-tab"] == "a\tb"
    assert entry["request"]["headers"]["x-latin"] == "caf\xe9"
    assert entry["request"]["headers"]["authorization"] == "REDACTED"
    assert entry["request"]["querystring"] == {"q": ["é", "2"], "flag": ""}
    assert entry["request"]["uri"] == "/r/a%22b?q=%C3%A9&q=2&flag"
    assert entry["request"]["tls"] == {"version": None, "cipher": None, "client_verify": "NONE"}
    assert entry["tries"][-1] == odd_try
    assert entry["authenticated_entity"] == {"id": KEY.id, "consumer_id": BOB.id}
    assert list(entry)[-4:] == ["route", "service", "consumer", "authenticated_entity"]


@pytest.mark.parametrize(
    "raw",
    [
        [],
        [(b"host", b"a"), (b"accept", b"*/*"), (b"x-n", b"12")],
        [(b"x-a", b"1"), (b"x-a", b"2"), (b"x-b", b"3")],
        [(b"cookie", b"c=1"), (b"x-a", b"1"), (b"authorization", b"Bearer t")],
        [(b"X-Upper", b"1"), (b"x-a", b"2")],
        [(b"x-a", b'a"b')],
        [(b"x-a", b"a\\b")],
        [(b"x-a", b"a\x01b")],
        [(b"x-a", b"a\x7fb")],
        [(b"x-a", b"caf\xc3\xa9")],
        [(b"x-a", b"")],
    ],
    ids=[
        "none",
        "plain",
        "repeated",
        "redacted",
        "upper-case name",
        "quote",
        "backslash",
        "control",
        "del",
        "non-ascii",
        "empty value",
    ],
)
def test_headers_are_written_as_the_encoder_writes_their_dict(
    raw: list[tuple[bytes, bytes]],
) -> None:
    headers = Headers.wrap(list(raw))
    assert headers_json(headers) == compact(headers_dict(headers)).decode()


def routes_gateway(capture: Plugin, names: list[str]) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="echo",
                url="http://echo.internal",
                routes=[gw.Route(name=n, paths=[f"/{n}"]) for n in names],
            )
        ],
        plugins=[capture],
        engines={"echo.internal": echo_engine()},
    )


async def test_a_reconfigured_route_is_logged_as_it_now_is() -> None:
    capture = CaptureJson()
    gateway = routes_gateway(capture, ["a"])
    async with client(gateway) as http:
        await http.get("/a")
        service = gateway.config.services[0]
        route = attrs.evolve(service.routes[0], tags=["v2"])
        gateway.configure(
            attrs.evolve(gateway.config, services=[attrs.evolve(service, routes=[route])])
        )
        await http.get("/a")
    first, second = (json.loads(e) for e in capture.sink.entries)
    assert first["route"]["tags"] == []
    assert second["route"]["tags"] == ["v2"]


async def test_the_encoded_entities_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_log_serializer, "MAX_CACHED_ENTITIES", 2)
    monkeypatch.setattr(_log_serializer, "_entity_members", {})
    capture = CaptureJson()
    gateway = routes_gateway(capture, ["a", "b", "c"])
    async with client(gateway) as http:
        for name in ["a", "b", "c", "a", "c", "b"]:
            await http.get(f"/{name}")
    assert [json.loads(e)["route"]["name"] for e in capture.sink.entries] == list("abcacb")
    assert len(_log_serializer._entity_members) <= 2
