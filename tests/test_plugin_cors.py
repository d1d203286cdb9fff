"""The bundled cors plugin, after Kong's spec for it (plus the cases where it is stricter)."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import httpx
import pytest

import pygateway as gw
from pygateway.engines import MockEngine, UpstreamResponse
from pygateway.plugins._cors import Cors
from pygateway.testing import client, echo_engine

DEFAULT_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
CORS_HEADERS = (
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
    "access-control-allow-private-network",
)


def gateway_with(*plugins: Any, engine: Any = None) -> gw.Gateway:
    """One service with the route `/r` carrying `plugins`, echoing upstream by default."""
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=["/r"], plugins=plugins)],
            )
        ],
        engines={"echo.internal": engine if engine is not None else echo_engine()},
    )


async def send(
    gateway: gw.Gateway, method: str = "GET", path: str = "/r", **headers: str
) -> httpx.Response:
    async with client(gateway) as http:
        return await http.request(method, path, headers=_headers(headers))


async def preflight(gateway: gw.Gateway, origin: str, **headers: str) -> httpx.Response:
    return await send(
        gateway,
        "OPTIONS",
        origin=origin,
        access_control_request_method="GET",
        **headers,
    )


def _headers(kwargs: dict[str, str]) -> dict[str, str]:
    return {k.replace("_", "-"): v for k, v in kwargs.items()}


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: response.headers[k] for k in CORS_HEADERS if k in response.headers}


# -- preflight requests --------------------------------------------------------------------


async def test_a_preflight_gets_the_defaults_from_the_gateway_itself() -> None:
    response = await preflight(gateway_with(Cors()), "https://app.example")

    assert response.status_code == 200
    assert response.content == b""  # the gateway's answer, not the upstream's echo
    assert response.headers["content-length"] == "0"
    assert cors_headers(response) == {
        "access-control-allow-origin": "*",
        "access-control-allow-methods": DEFAULT_METHODS,
    }
    assert "vary" not in response.headers


async def test_empty_origins_allow_every_origin_like_no_origins() -> None:
    response = await preflight(gateway_with(Cors(origins=[])), "https://app.example")

    assert response.headers["access-control-allow-origin"] == "*"
    assert "vary" not in response.headers


async def test_a_preflight_answer_carries_every_configured_option() -> None:
    plugin = Cors(
        origins=["app.example"],
        methods=["GET"],
        headers=["origin", "type", "accepts"],
        exposed_headers=["x-auth-token"],
        max_age=23,
        credentials=True,
    )

    response = await preflight(gateway_with(plugin), "https://other.example")

    assert response.status_code == 200
    assert response.content == b""
    assert cors_headers(response) == {
        "access-control-allow-origin": "app.example",
        "access-control-allow-credentials": "true",
        "access-control-allow-methods": "GET",
        "access-control-allow-headers": "origin,type,accepts",
        "access-control-max-age": "23",
    }
    assert response.headers["vary"] == "Origin"


async def test_without_configured_headers_the_requested_ones_are_allowed() -> None:
    response = await preflight(
        gateway_with(Cors()),
        "https://app.example",
        access_control_request_headers="origin,accepts",
    )

    assert response.headers["access-control-allow-headers"] == "origin,accepts"


@pytest.mark.parametrize(("max_age", "sent"), [(3600.0, "3600"), (1.5, "1.5"), (0, "0")])
async def test_max_age_is_sent_as_kong_prints_numbers(max_age: float, sent: str) -> None:
    response = await preflight(gateway_with(Cors(max_age=max_age)), "https://app.example")

    assert response.headers["access-control-max-age"] == sent


async def test_with_preflight_continue_the_upstream_answers_the_preflight() -> None:
    plugin = Cors(origins=["https://app.example"], max_age=23, preflight_continue=True)

    response = await preflight(gateway_with(plugin), "https://app.example")

    assert response.status_code == 200
    assert response.json()["method"] == "OPTIONS"  # the echo upstream answered
    assert cors_headers(response) == {}  # the upstream's answer is left as it is


async def test_an_options_request_that_is_no_preflight_is_proxied() -> None:
    response = await send(gateway_with(Cors()), "OPTIONS", origin="https://app.example")

    assert response.json()["method"] == "OPTIONS"
    assert cors_headers(response) == {"access-control-allow-origin": "*"}


async def test_an_options_request_without_origin_is_no_preflight() -> None:
    response = await send(gateway_with(Cors()), "OPTIONS", access_control_request_method="GET")

    assert response.json()["method"] == "OPTIONS"


async def test_private_network_access_is_allowed_when_asked_and_configured() -> None:
    gateway = gateway_with(Cors(origins=["https://app.example"], private_network=True))

    asked = await preflight(
        gateway, "https://app.example", access_control_request_private_network="true"
    )
    not_asked = await preflight(gateway, "https://app.example")

    assert asked.headers["access-control-allow-private-network"] == "true"
    assert "access-control-allow-private-network" not in not_asked.headers


async def test_private_network_access_is_not_allowed_by_default() -> None:
    response = await preflight(
        gateway_with(Cors()), "https://app.example", access_control_request_private_network="true"
    )

    assert "access-control-allow-private-network" not in response.headers


async def test_a_star_among_other_origins_allows_every_origin() -> None:
    gateway = gateway_with(Cors(origins=["https://app.example", "*"]))

    answered = await preflight(gateway, "https://elsewhere.example")
    proxied = await send(gateway, origin="https://elsewhere.example")

    assert answered.headers["access-control-allow-origin"] == "*"
    assert proxied.headers["access-control-allow-origin"] == "*"


# -- which origins match ---------------------------------------------------------------------

ORIGINS = [
    "http://evil.example",
    "http://shop.example",
    "http://shop.example.evil.example",
    "http://api.shop.example",
    "http://evilshop.example",
    "http://shop.example:80",
    "http://shop.example:8000",
    "https://shop.example:8000",
    "http://shop.example:90",
    "http://shopxexample",
    "https://other.example:1234",
]

# For each configuration: the origins allowed, and what Access-Control-Allow-Origin then is
# (None: the origin itself). Origins not listed are refused.
MATCHES: list[tuple[list[str], dict[str, str | None]]] = [
    # one plain entry: sent as is, whatever the Origin (Kong)
    (["shop.example"], dict.fromkeys(ORIGINS, "shop.example")),
    (["https://other.example:1234"], dict.fromkeys(ORIGINS, "https://other.example:1234")),
    # a regex without ':' matches the host, whole
    (
        [r"shop\.example"],
        {
            "http://shop.example": None,
            "http://shop.example:80": "http://shop.example",
            "http://shop.example:8000": None,
            "https://shop.example:8000": None,
            "http://shop.example:90": None,
        },
    ),
    (
        [r"(.*[./])?shop\.example"],
        {
            "http://shop.example": None,
            "http://api.shop.example": None,
            "http://shop.example:80": "http://shop.example",
            "http://shop.example:8000": None,
            "https://shop.example:8000": None,
            "http://shop.example:90": None,
        },
    ),
    # a regex with ':' matches scheme://host[:port], whole
    (
        [r"(.*[./])?shop\.example:8000"],
        {"http://shop.example:8000": None, "https://shop.example:8000": None},
    ),
    ([r"https://(.*[.])?shop\.example:8000"], {"https://shop.example:8000": None}),
    (
        [r"^http://(.*[.])?shop\.example(:(80|90))?$"],  # anchors written by the user
        {
            "http://shop.example": None,
            "http://api.shop.example": None,
            "http://shop.example:80": "http://shop.example",
            "http://shop.example:90": None,
        },
    ),
    # several plain entries: compared as normalized origins
    (["shop.example", "other.example"], {}),
    (
        ["http://shop.example", "https://other.example:1234"],
        {
            "http://shop.example": None,
            "http://shop.example:80": "http://shop.example",
            "https://other.example:1234": None,
        },
    ),
    (
        ["other.example", r"(.*\.)?shop\.example"],
        {
            "http://shop.example": None,
            "http://api.shop.example": None,
            "http://shop.example:80": "http://shop.example",
            "http://shop.example:8000": None,
            "https://shop.example:8000": None,
            "http://shop.example:90": None,
        },
    ),
]


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        (origins, origin, allowed.get(origin, origin) if origin in allowed else False)
        for origins, allowed in MATCHES
        for origin in ORIGINS
    ],
)
async def test_an_origin_is_allowed_as_kong_matches_it(
    origins: list[str], origin: str, allowed: str | bool | None
) -> None:
    response = await preflight(gateway_with(Cors(origins=origins)), origin)

    assert response.status_code == 200
    assert response.headers["access-control-allow-methods"] == DEFAULT_METHODS
    if allowed is False:
        assert "access-control-allow-origin" not in response.headers
    else:
        assert response.headers["access-control-allow-origin"] == (allowed or origin)
    assert response.headers["vary"] == "Origin"


async def test_plain_entries_are_compared_with_scheme_and_port() -> None:
    gateway = gateway_with(Cors(origins=["http://my.example", "https://other.example:9000"]))

    async def allowed(origin: str) -> str | None:
        return (await send(gateway, origin=origin)).headers.get("access-control-allow-origin")

    assert await allowed("http://my.example") == "http://my.example"
    assert await allowed("http://my.example:80") == "http://my.example"
    assert await allowed("http://my.example:8000") is None
    assert await allowed("https://my.example") is None
    assert await allowed("https://other.example:9000") == "https://other.example:9000"
    assert await allowed("https://other.example:9001") is None


async def test_a_bare_host_origin_is_compared_verbatim() -> None:
    gateway = gateway_with(Cors(origins=["app.example", "app.test"]))

    bare = await send(gateway, origin="app.example")
    with_scheme = await send(gateway, origin="http://app.example")

    assert bare.headers["access-control-allow-origin"] == "app.example"
    assert "access-control-allow-origin" not in with_scheme.headers


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("example.test", True),
        ("www.example.test", True),
        ("example-foo.test", True),
        ("www.example-foo.test", True),
        ("www.example-fo0.test", False),
    ],
)
async def test_a_regex_matches_bare_host_origins(origin: str, allowed: bool) -> None:
    gateway = gateway_with(Cors(origins=[r".*\.?example(?:-foo)?.test"]))

    response = await send(gateway, origin=origin)

    assert response.headers.get("access-control-allow-origin") == (origin if allowed else None)
    assert response.headers["vary"] == "Origin"


async def test_scheme_and_host_are_compared_case_insensitively() -> None:
    gateway = gateway_with(Cors(origins=["https://App.Example", "https://other.example"]))

    response = await send(gateway, origin="HTTPS://APP.EXAMPLE")

    assert response.headers["access-control-allow-origin"] == "https://app.example"


# -- actual requests -----------------------------------------------------------------------


async def test_a_response_gets_allow_origin_star_by_default() -> None:
    response = await send(gateway_with(Cors()))

    assert response.status_code == 200
    assert response.json()["method"] == "GET"
    assert cors_headers(response) == {"access-control-allow-origin": "*"}
    assert "vary" not in response.headers


async def test_a_response_gets_the_configured_headers() -> None:
    plugin = Cors(
        origins=["app.example"],
        methods=["GET"],
        headers=["origin", "type", "accepts"],
        exposed_headers=["x-auth-token"],
        max_age=23,
        credentials=True,
    )

    response = await send(gateway_with(plugin))

    assert cors_headers(response) == {
        "access-control-allow-origin": "app.example",
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "x-auth-token",
    }
    assert response.headers["vary"] == "Origin"


def failing_upstream(request: Any) -> UpstreamResponse:
    raise gw.UpstreamConnectError("connection refused")


async def test_a_gateway_error_answer_gets_the_headers_too() -> None:
    plugin = Cors(origins=["app.example"], exposed_headers=["x-auth-token"])

    response = await send(gateway_with(plugin, engine=MockEngine(failing_upstream)))

    assert response.status_code == 502
    assert cors_headers(response) == {
        "access-control-allow-origin": "app.example",
        "access-control-expose-headers": "x-auth-token",
    }
    assert response.headers["vary"] == "Origin"


@attrs.frozen
class Explodes(gw.Plugin):
    name = "cors-test-explodes"
    priority = 10

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        raise RuntimeError("boom")


@attrs.frozen
class Refuses(gw.Plugin):
    name = "cors-test-refuses"
    priority = 1250

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        return gw.Response(401, json={"message": "Unauthorized"})


async def test_the_500_of_a_failing_plugin_gets_the_headers_too() -> None:
    plugin = Cors(origins=["app.example"], exposed_headers=["x-auth-token"])

    response = await send(gateway_with(plugin, Explodes()))

    assert response.status_code == 500
    assert response.headers["access-control-allow-origin"] == "app.example"
    assert response.headers["access-control-expose-headers"] == "x-auth-token"


async def test_another_plugins_refusal_gets_the_headers_too() -> None:
    response = await send(gateway_with(Cors(), Refuses()))

    assert response.status_code == 401
    assert cors_headers(response) == {"access-control-allow-origin": "*"}


async def test_a_preflight_is_answered_before_authentication() -> None:
    response = await preflight(gateway_with(Cors(), Refuses()), "https://app.example")

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"


async def test_an_upstream_error_status_gets_the_headers_too() -> None:
    response = await send(gateway_with(Cors()), path="/r/status/404")

    assert response.status_code == 404
    assert response.headers["access-control-allow-origin"] == "*"


def upstream_with(*headers: tuple[bytes, bytes]) -> MockEngine:
    return MockEngine(lambda request: UpstreamResponse(200, list(headers), content=b"ok"))


async def test_origin_is_added_to_the_upstreams_vary() -> None:
    engine = upstream_with((b"vary", b"Accept-Encoding"))

    response = await send(
        gateway_with(Cors(origins=["app.example"]), engine=engine), origin="app.example"
    )

    assert response.headers.get_list("vary") == ["Accept-Encoding", "Origin"]


async def test_origin_is_not_added_twice_to_vary() -> None:
    engine = upstream_with((b"vary", b"Accept-Encoding, origin"))

    response = await send(
        gateway_with(Cors(origins=["app.example"]), engine=engine), origin="app.example"
    )

    assert response.headers.get_list("vary") == ["Accept-Encoding, origin"]


async def test_the_upstreams_allow_origin_is_removed_when_no_origin_matches() -> None:
    engine = upstream_with(
        (b"access-control-allow-origin", b"*"), (b"response-header", b"is-added")
    )
    plugin = Cors(origins=["a.example", "allowed.example"], credentials=True)
    gateway = gateway_with(plugin, engine=engine)

    allowed = await send(gateway, origin="allowed.example")
    refused = await send(gateway, origin="refused.example")

    assert allowed.headers["response-header"] == "is-added"
    assert allowed.headers["access-control-allow-origin"] == "allowed.example"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert refused.headers["response-header"] == "is-added"
    assert "access-control-allow-origin" not in refused.headers
    # As Kong: harmless without Allow-Origin.
    assert refused.headers["access-control-allow-credentials"] == "true"


async def test_the_origin_still_reaches_the_upstream() -> None:
    response = await send(gateway_with(Cors(origins=["app.example"])), origin="app.example")

    assert response.json()["headers"]["origin"] == ["app.example"]


@pytest.mark.parametrize("origin", [None, ""])
async def test_without_origin_nothing_is_added_when_allow_origin_absent_is_off(
    origin: str | None,
) -> None:
    plugin = Cors(
        origins=["app.example"],
        exposed_headers=["x-auth-token"],
        credentials=True,
        allow_origin_absent=False,
    )
    headers = {} if origin is None else {"origin": origin}

    response = await send(gateway_with(plugin), **headers)

    assert cors_headers(response) == {}


@pytest.mark.parametrize("origin", [None, ""])
async def test_without_origin_the_headers_are_added_by_default(origin: str | None) -> None:
    plugin = Cors(origins=["app.example"], exposed_headers=["x-auth-token"], credentials=True)
    headers = {} if origin is None else {"origin": origin}

    response = await send(gateway_with(plugin), **headers)

    assert cors_headers(response) == {
        "access-control-allow-origin": "app.example",
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "x-auth-token",
    }


# -- stricter than Kong ----------------------------------------------------------------------


async def test_all_origins_with_credentials_never_reflects_the_origin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Kong reflects any Origin with Allow-Credentials: true here, so that every website
    # could read credentialed responses.
    with caplog.at_level(logging.WARNING, logger="pygateway.plugins.cors"):
        plugin = Cors(origins=["*"], credentials=True)
    gateway = gateway_with(plugin)

    answered = await preflight(gateway, "https://attacker.example")
    proxied = await send(gateway, origin="https://attacker.example:3000")

    for response in (answered, proxied):
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
        assert "vary" not in response.headers
    assert "credentials=true with all origins allowed" in caplog.text


@pytest.mark.parametrize("origins", [None, [], ["https://app.example", "*"]])
async def test_every_way_of_allowing_all_origins_drops_credentials(
    origins: list[str] | None,
) -> None:
    gateway = gateway_with(Cors(origins=origins, credentials=True))

    response = await send(gateway, origin="https://attacker.example")

    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


HOSTILE = [
    "https://example.com.attacker.net",
    "https://attackerexample.com",
    "https://example.com@attacker.net",
    "https://attacker.net@example.com",
    "https://attacker.net/.example.com",
    "https://attacker.net/https://example.com",
    "https://attacker.net#.example.com",
    "https://attacker.net?.example.com",
    "https://attacker.net\\.example.com",
    "https://attacker.net%2f.example.com",
    " https://example.com",
    "https://example.com ",
    "https://example.com:99999",
    "https://example.com:",
    "https://example.com/",
    "https://example.com/path",
    "null",
    "*",
    "https://*.example.com",
]


@pytest.mark.parametrize("origin", HOSTILE)
@pytest.mark.parametrize(
    "origins",
    [
        [r"https://(.*\.)?example\.com"],
        [r"(.*\.)?example\.com"],
        ["https://example.com", "https://api.example.com"],
        [r"example\.com|api\.example\.com"],
        [r".*\.example\.com", "https://example.com"],
    ],
)
async def test_a_hostile_origin_is_never_allowed_with_credentials(
    origins: list[str], origin: str
) -> None:
    gateway = gateway_with(Cors(origins=origins, credentials=True))

    answered = await preflight(gateway, origin)
    proxied = await send(gateway, origin=origin)

    for response in (answered, proxied):
        assert "access-control-allow-origin" not in response.headers
        assert response.headers["vary"] == "Origin"


async def test_an_alternation_is_anchored_as_a_whole() -> None:
    # Kong anchors only the ends of the pattern: its first branch would match.
    gateway = gateway_with(Cors(origins=[r"a\.example|b\.example"], credentials=True))

    hostile = await send(gateway, origin="https://a.example.attacker.net")
    fine = await send(gateway, origin="https://b.example")

    assert "access-control-allow-origin" not in hostile.headers
    assert fine.headers["access-control-allow-origin"] == "https://b.example"


@pytest.mark.parametrize("origins", [[".*"], [r"[a-z]+"], ["(.*)", "https://app.example"]])
async def test_the_null_origin_never_matches_a_regex(origins: list[str]) -> None:
    gateway = gateway_with(Cors(origins=origins, credentials=True))

    response = await send(gateway, origin="null")

    assert "access-control-allow-origin" not in response.headers


async def test_the_null_origin_matches_an_explicit_null_entry() -> None:
    gateway = gateway_with(Cors(origins=["https://app.example", "null"]))

    response = await preflight(gateway, "null")

    assert response.headers["access-control-allow-origin"] == "null"


async def test_an_allowed_origin_is_echoed_normalized_not_as_sent() -> None:
    gateway = gateway_with(Cors(origins=[r"(.*\.)?example\.com"], credentials=True))

    response = await send(gateway, origin="https://API.example.com:443")

    assert response.headers["access-control-allow-origin"] == "https://api.example.com"
    assert response.headers["access-control-allow-credentials"] == "true"


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "errors"),
    [
        (
            {"origins": ["https://ok.example", "(unclosed"]},
            [(("origins", 1), "'(unclosed' is not a valid regex")],
        ),
        ({"origins": ["[z-a]"]}, [(("origins", 0), "'[z-a]' is not a valid regex")]),
        (
            {"methods": ["GET", "FETCH"]},
            [(("methods", 1), "expected one of: " + DEFAULT_METHODS.replace(",", ", "))],
        ),
        ({"credentials": "yes"}, [(("credentials",), "expected a boolean")]),
        ({"max_age": "1h"}, [(("max_age",), "expected a number")]),
        ({"origins": "https://app.example"}, [(("origins",), "expected an array")]),
        (
            {"headers": ["x-a\r\nset-cookie: a=b"]},
            [
                (
                    ("headers",),
                    "invalid value 'x-a\r\nset-cookie: a=b': must not contain CR, LF or NUL",
                )
            ],
        ),
    ],
)
def test_invalid_configurations_name_the_field(
    config: dict[str, Any], errors: list[tuple[tuple[Any, ...], str]]
) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        Cors(**config)

    assert info.value.errors == errors


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"origins": ["*"]},
        {"origins": ["https://app.example", r"(.*\.)?example\.com"], "credentials": True},
        {"methods": None, "max_age": 1728000, "headers": ["DNT", "X-CustomHeader"]},
        {"exposed_headers": ["x-auth-token"], "preflight_continue": True},
        {"private_network": True, "allow_origin_absent": False},
    ],
)
def test_a_configuration_survives_a_round_trip(config: dict[str, Any]) -> None:
    plugin = Cors(**config)

    assert Cors.from_config(plugin.to_config()) == plugin
    assert "_compiled" not in plugin.to_config()


async def test_methods_null_means_every_method() -> None:
    response = await preflight(gateway_with(Cors(methods=None)), "https://app.example")

    assert response.headers["access-control-allow-methods"] == DEFAULT_METHODS


def declarative(config: dict[str, Any], **where: Any) -> dict[str, Any]:
    return {
        "_format_version": "3.0",
        "services": [
            {"name": "s", "url": "http://echo.internal", "routes": [{"name": "r", "paths": ["/r"]}]}
        ],
        "consumers": [{"username": "ada"}],
        "plugins": [{"name": "cors", "config": config, **where}],
    }


async def test_it_is_usable_by_name_from_declarative_config() -> None:
    config = {"origins": ["https://app.example"], "credentials": True, "max_age": 60}
    gateway = gw.Gateway.from_config(
        declarative(config, route="r"), engines={"echo.internal": echo_engine()}
    )

    response = await preflight(gateway, "https://app.example")

    assert gw.plugins.get("cors") is Cors
    assert Cors.priority == 2000
    assert cors_headers(response) == {
        "access-control-allow-origin": "https://app.example",
        "access-control-allow-credentials": "true",
        "access-control-allow-methods": DEFAULT_METHODS,
        "access-control-max-age": "60",
    }
    exported = gateway.to_config()["plugins"][0]
    assert exported["name"] == "cors"
    assert exported["config"] == Cors(**config).to_config()


def test_declarative_errors_carry_the_field_path() -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        gw.Gateway.from_config(declarative({"origins": ["ok.example", "(bad"]}))

    assert str(info.value) == "plugins[0].config.origins[1]: '(bad' is not a valid regex"


def test_it_cannot_be_applied_to_a_consumer() -> None:
    with pytest.raises(gw.ConfigurationError, match="cors"):
        gw.Gateway.from_config(declarative({}, consumer="ada"))
