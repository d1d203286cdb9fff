"""The bundled request-termination plugin, after Kong's spec for it."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import pygateway as gw
from pygateway.engines import MockEngine, UpstreamResponse
from pygateway.plugins import RequestTermination
from pygateway.testing import client


def upstream() -> MockEngine:
    return MockEngine(lambda request: UpstreamResponse(200, content=b"proxied"))


def gateway_with(*plugins: Any, engine: MockEngine | None = None, **kwargs: Any) -> gw.Gateway:
    """One service with one prefix route `/r`, `plugins` on the route."""
    return gw.Gateway(
        services=[
            gw.Service(
                name="svc",
                url="http://upstream.test",
                routes=[gw.Route(name="r", paths=["/r"], plugins=plugins)],
            )
        ],
        engine=engine if engine is not None else upstream(),
        **kwargs,
    )


async def get(gateway: gw.Gateway, path: str = "/r", **kwargs: Any) -> Any:
    async with client(gateway) as c:
        return await c.get(path, **kwargs)


# -- status code, message and body --------------------------------------------------------


async def test_the_default_is_503_service_unavailable_and_the_upstream_is_not_called() -> None:
    engine = upstream()
    response = await get(gateway_with(RequestTermination(), engine=engine))
    assert response.status_code == 503
    assert response.json() == {"message": "Service unavailable"}
    assert response.headers["content-type"].startswith("application/json")
    assert engine.requests == []


async def test_the_default_answer_also_works_on_a_serviceless_route() -> None:
    gateway = gw.Gateway(routes=[gw.Route(paths=["/r"], plugins=[RequestTermination()])])
    response = await get(gateway)
    assert response.status_code == 503
    assert response.json() == {"message": "Service unavailable"}


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "Unauthorized"),
        (404, "Not found"),
        (405, "Method not allowed"),
        (500, "An unexpected error occurred"),
        (502, "Bad Gateway"),
        (503, "Service unavailable"),
    ],
)
async def test_a_status_code_gets_its_default_message(status: int, message: str) -> None:
    response = await get(gateway_with(RequestTermination(status_code=status)))
    assert response.status_code == status
    assert response.json() == {"message": message}


async def test_a_status_code_with_a_custom_message() -> None:
    response = await get(gateway_with(RequestTermination(status_code=406, message="Invalid")))
    assert response.status_code == 406
    assert response.json() == {"message": "Invalid"}


@pytest.mark.parametrize("status", [403, 418, 451, 200])
async def test_a_status_without_a_default_message_gives_an_empty_body(status: int) -> None:
    response = await get(gateway_with(RequestTermination(status_code=status)))
    assert response.status_code == status
    assert response.content == b""
    assert response.headers["content-length"] == "0"


async def test_a_204_has_no_body_and_no_content_length() -> None:
    response = await get(gateway_with(RequestTermination(status_code=204)))
    assert response.status_code == 204
    assert response.content == b""
    assert "content-length" not in response.headers


async def test_a_body_is_sent_verbatim_with_the_default_status() -> None:
    body = "<html><body><h1>Service is down for maintenance</h1></body></html>"
    response = await get(gateway_with(RequestTermination(body=body)))
    assert response.status_code == 503
    assert response.text == body
    assert response.headers["content-length"] == str(len(body))


async def test_a_body_with_a_status_code_and_a_content_type() -> None:
    body = "<html><body><h1>Service is down due to content infringement</h1></body></html>"
    response = await get(
        gateway_with(RequestTermination(status_code=451, content_type="text/html", body=body))
    )
    assert response.status_code == 451
    assert response.text == body
    assert response.headers["content-type"] == "text/html"


async def test_a_json_body_is_sent_as_configured() -> None:
    response = await get(
        gateway_with(
            RequestTermination(
                status_code=503, body='{"code": 1, "message": "Service unavailable"}'
            )
        )
    )
    assert response.status_code == 503
    assert response.json() == {"code": 1, "message": "Service unavailable"}


async def test_the_answer_carries_the_server_header() -> None:
    response = await get(gateway_with(RequestTermination()))
    assert response.headers["server"] == f"pygateway/{gw.__version__}"


# -- echo --------------------------------------------------------------------------------


def echo_gateway(plugin: RequestTermination, engine: MockEngine | None = None) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="svc",
                url="http://upstream.test:8080/base",
                routes=[
                    gw.Route(
                        name="echo-route",
                        paths=[r"~/echo/(?<thing>\w+)$"],
                        strip_path=False,
                        plugins=[plugin],
                    )
                ],
            )
        ],
        engine=engine if engine is not None else upstream(),
    )


async def test_echo_describes_the_request_route_and_service() -> None:
    gateway = echo_gateway(RequestTermination(echo=True, status_code=404))
    async with client(gateway) as c:
        response = await c.post(
            "/echo/abc?hello=there&hello=again&flag",
            content=b'{"cool": "body"}',
            headers=[
                ("x-probe", "yes"),
                ("content-type", "application/json"),
                ("x-multi", "1"),
                ("x-multi", "2"),
            ],
        )
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    echo = response.json()
    assert echo["message"] == "Not found"
    request = echo["request"]
    headers = request.pop("headers")
    # as the client sent them (the client adds a few of its own: user-agent, accept, ...)
    mine = ("host", "content-length", "content-type", "x-probe", "x-multi")
    assert {k: headers[k] for k in mine} == {
        "host": "gateway.test",
        "content-length": "16",
        "content-type": "application/json",
        "x-probe": "yes",
        "x-multi": "1, 2",
    }
    assert request == {
        "scheme": "http",
        "host": "gateway.test",
        "port": 80,
        "query": {"hello": ["there", "again"], "flag": ""},
        "body": {"cool": "body"},
        "raw_body": '{"cool": "body"}',
        "method": "POST",
        "path": "/echo/abc",
        "uri_captures": {"1": "abc", "thing": "abc"},
    }
    route = echo["matched_route"]
    assert route["name"] == "echo-route"
    assert route["paths"] == [r"~/echo/(?<thing>\w+)$"]
    assert route["id"] == gateway.config.services[0].routes[0].id
    assert route["strip_path"] is False
    service = echo["matched_service"]
    assert {k: service[k] for k in ("name", "protocol", "host", "port", "path")} == {
        "name": "svc",
        "protocol": "http",
        "host": "upstream.test",
        "port": 8080,
        "path": "/base",
    }
    assert service["id"] == gateway.config.services[0].id
    assert "routes" not in service
    assert "plugins" not in service


async def test_echo_keeps_a_body_that_is_not_json_raw() -> None:
    gateway = echo_gateway(RequestTermination(echo=True, message="inspected", status_code=200))
    async with client(gateway) as c:
        response = await c.put("/echo/x", content=b"cool body")
    assert response.status_code == 200
    echo = response.json()
    assert echo["message"] == "inspected"
    assert echo["request"]["body"] is None
    assert echo["request"]["raw_body"] == "cool body"
    assert echo["request"]["method"] == "PUT"


async def test_echo_on_a_serviceless_route_has_no_matched_service() -> None:
    gateway = gw.Gateway(
        routes=[gw.Route(name="alone", paths=["/r"], plugins=[RequestTermination(echo=True)])]
    )
    response = await get(gateway)
    assert response.status_code == 503
    echo = response.json()
    assert echo["message"] == "Service unavailable"
    assert echo["matched_route"]["name"] == "alone"
    assert echo["matched_service"] is None


# -- trigger -----------------------------------------------------------------------------


async def test_with_a_trigger_a_request_without_it_is_proxied() -> None:
    engine = upstream()
    gateway = echo_gateway(
        RequestTermination(echo=True, trigger="gimme-an-echo", status_code=404), engine
    )
    async with client(gateway) as c:
        response = await c.get("/echo/abc", headers={"x-other": "1"})
    assert response.status_code == 200
    assert response.text == "proxied"
    assert len(engine.requests) == 1


async def test_a_trigger_header_terminates_whatever_its_value_and_case() -> None:
    engine = upstream()
    gateway = echo_gateway(
        RequestTermination(echo=True, trigger="gimme-an-echo", status_code=404), engine
    )
    async with client(gateway) as c:
        response = await c.get("/echo/abc", headers={"Gimme-An-Echo": "anything will do"})
    assert response.status_code == 404
    assert response.json()["request"]["headers"]["gimme-an-echo"] == "anything will do"
    assert engine.requests == []


@pytest.mark.parametrize("query", ["gimme-an-echo=anything", "gimme-an-echo", "a=1&gimme-an-echo="])
async def test_a_trigger_query_argument_terminates(query: str) -> None:
    engine = upstream()
    gateway = echo_gateway(
        RequestTermination(echo=True, trigger="gimme-an-echo", status_code=404), engine
    )
    async with client(gateway) as c:
        response = await c.get(f"/echo/abc?{query}")
    assert response.status_code == 404
    assert "gimme-an-echo" in response.json()["request"]["query"]
    assert engine.requests == []


async def test_a_trigger_works_without_echo() -> None:
    engine = upstream()
    gateway = gateway_with(RequestTermination(trigger="x-maintenance"), engine=engine)
    async with client(gateway) as c:
        assert (await c.get("/r")).status_code == 200
        response = await c.get("/r", headers={"x-maintenance": "1"})
        assert response.status_code == 503
        assert response.json() == {"message": "Service unavailable"}
        response = await c.get("/r?x-maintenance=1")
        assert response.status_code == 503
    assert len(engine.requests) == 1


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"status_code": 404},
        {"message": "Not found"},
        {"content_type": "text/html", "body": "<body><h1>Not found</h1>"},
        {"body": "<body><h1>Not found</h1>"},
        {"echo": True, "trigger": "header_name"},
        {"trigger": "header_name"},
        {"status_code": 100},
        {"status_code": 599},
    ],
)
def test_valid_configurations_are_accepted(config: dict[str, Any]) -> None:
    plugin = RequestTermination(**config)
    assert RequestTermination.from_config(plugin.to_config()) == plugin


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"message": "error", "body": "test"}, "message cannot be used with content_type or body"),
        (
            {"message": "error", "content_type": "text/html", "body": "test"},
            "message cannot be used with content_type or body",
        ),
        (
            {"message": "error", "content_type": "text/html"},
            "message cannot be used with content_type or body",
        ),
        ({"content_type": "text/html"}, "content_type requires a body"),
        (
            {"echo": True, "content_type": "text/html", "body": "<body><h1>Not found</h1>"},
            "echo cannot be used with content_type and body",
        ),
        ({"echo": True, "body": "test"}, "echo cannot be used with content_type and body"),
    ],
)
def test_conflicting_options_fail_with_kongs_messages(config: dict[str, Any], error: str) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        RequestTermination(**config)
    assert info.value.errors == [((), error)]


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"status_code": 99}, "value should be between 100 and 599"),
        ({"status_code": 600}, "value should be between 100 and 599"),
        ({"status_code": "abcd"}, "expected an integer"),
        ({"message": 5}, "expected a string"),
        ({"echo": "yes"}, "expected a boolean"),
    ],
)
def test_field_errors_name_the_field(config: dict[str, Any], error: str) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        RequestTermination(**config)
    assert info.value.errors == [((next(iter(config)),), error)]


def declarative(**plugin: Any) -> dict[str, Any]:
    return {
        "_format_version": "3.0",
        "services": [{"name": "svc", "url": "http://upstream.test", "routes": [{"paths": ["/r"]}]}],
        "plugins": [{"name": "request-termination", **plugin}],
    }


async def test_it_is_usable_from_declarative_config_by_name() -> None:
    assert gw.plugins.get("request-termination") is RequestTermination
    gateway = gw.Gateway.from_config(
        declarative(config={"status_code": 403, "message": "So long and thanks for all the fish!"}),
        engine=upstream(),
    )
    response = await get(gateway)
    assert response.status_code == 403
    assert response.json() == {"message": "So long and thanks for all the fish!"}


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            {"message": "error", "body": "test"},
            "plugins[0].config: message cannot be used with content_type or body",
        ),
        ({"content_type": "text/html"}, "plugins[0].config: content_type requires a body"),
        (
            {"status_code": 600},
            "plugins[0].config.status_code: value should be between 100 and 599",
        ),
        ({"status_code": "abcd"}, "plugins[0].config.status_code: expected an integer"),
        ({"echo_trigger": "x"}, "plugins[0].config.echo_trigger: unknown field"),
    ],
)
def test_declarative_config_errors_carry_the_field_path(config: dict[str, Any], error: str) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        gw.Gateway.from_config(declarative(config=config))
    assert str(info.value) == error


# -- scopes ------------------------------------------------------------------------------


@attrs.frozen
class HeaderAuth(gw.Plugin):
    """Authenticates the consumer named by the `x-user` header."""

    name = "rt-test-header-auth"
    priority = 1500

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        username = ctx.request.headers.get("x-user")
        for consumer in ctx.gateway.config.consumers:
            if consumer.username == username:
                ctx.authenticate(consumer)
        return None


gw.plugins.register(HeaderAuth)


def scoped_gateway(scope: str, engine: MockEngine) -> gw.Gateway:
    """Services a (route /a) and b (route /b), consumers alice and bob; the plugin at `scope`
    targets service a, route a or alice."""
    plugin = RequestTermination(status_code=403, message=f"terminated at {scope}")
    in_scope = {scope: [plugin]}
    return gw.Gateway(
        services=[
            gw.Service(
                name="a",
                url="http://a.test",
                plugins=in_scope.get("service", []),
                routes=[gw.Route(name="ra", paths=["/a"], plugins=in_scope.get("route", []))],
            ),
            gw.Service(name="b", url="http://b.test", routes=[gw.Route(name="rb", paths=["/b"])]),
        ],
        consumers=[
            gw.Consumer(username="alice", plugins=in_scope.get("consumer", [])),
            gw.Consumer(username="bob"),
        ],
        plugins=[HeaderAuth(), *in_scope.get("global", [])],
        engine=engine,
    )


@pytest.mark.parametrize(
    ("scope", "terminated"),
    [
        ("global", {("/a", "alice"), ("/a", "bob"), ("/b", "alice"), ("/b", "bob")}),
        ("service", {("/a", "alice"), ("/a", "bob")}),
        ("route", {("/a", "alice"), ("/a", "bob")}),
        ("consumer", {("/a", "alice"), ("/b", "alice")}),
    ],
)
async def test_it_terminates_exactly_the_requests_in_its_scope(
    scope: str, terminated: set[tuple[str, str]]
) -> None:
    engine = upstream()
    gateway = scoped_gateway(scope, engine)
    async with client(gateway) as c:
        for path in ("/a", "/b"):
            for user in ("alice", "bob"):
                response = await c.get(path, headers={"x-user": user})
                if (path, user) in terminated:
                    assert response.status_code == 403, (path, user)
                    assert response.json() == {"message": f"terminated at {scope}"}
                else:
                    assert response.status_code == 200, (path, user)
                    assert response.text == "proxied"
    assert len(engine.requests) == 4 - len(terminated)


async def test_a_consumer_scoped_termination_from_declarative_config() -> None:
    engine = upstream()
    gateway = gw.Gateway.from_config(
        {
            "_format_version": "3.0",
            "services": [
                {"name": "svc", "url": "http://upstream.test", "routes": [{"paths": ["/r"]}]}
            ],
            "consumers": [
                {
                    "username": "alice",
                    "plugins": [{"name": "request-termination", "config": {"status_code": 429}}],
                },
                {"username": "bob"},
            ],
            "plugins": [{"name": "rt-test-header-auth"}],
        },
        engine=engine,
    )
    async with client(gateway) as c:
        blocked = await c.get("/r", headers={"x-user": "alice"})
        assert blocked.status_code == 429
        assert blocked.content == b""
        assert (await c.get("/r", headers={"x-user": "bob"})).status_code == 200
        assert (await c.get("/r")).status_code == 200
    assert len(engine.requests) == 2
