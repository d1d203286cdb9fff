"""The bundled redirect plugin, after Kong's spec for it (spec/03-plugins/45-redirect)."""

from __future__ import annotations

from typing import Any

import pytest
from upstreams import call_asgi

import pygateway as gw
from pygateway.engines import MockEngine, UpstreamResponse
from pygateway.plugins._redirect import Redirect
from pygateway.testing import client


def recording() -> MockEngine:
    return MockEngine(lambda request: UpstreamResponse(200, content=b"proxied"))


def gateway_with(plugin: Redirect, engine: MockEngine | None = None) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://upstream.internal",
                routes=[gw.Route(name="r", paths=["/"], plugins=[plugin])],
            )
        ],
        engine=engine or recording(),
    )


async def get(gateway: gw.Gateway, path: str = "/status/200", **kwargs: Any) -> Any:
    async with client(gateway) as http:
        return await http.get(path, **kwargs)


async def test_the_default_status_is_301_with_the_location_and_the_upstream_is_not_called() -> None:
    engine = recording()
    response = await get(gateway_with(Redirect(location="https://example.com"), engine))
    assert response.status_code == 301
    assert response.headers["location"] == "https://example.com"
    assert response.text == "redirecting"
    assert engine.requests == []


@pytest.mark.parametrize("status", [302, 307, 308, 404])
async def test_a_custom_status_code(status: int) -> None:
    gateway = gateway_with(Redirect(status_code=status, location="https://example.com"))
    response = await get(gateway)
    assert response.status_code == status
    assert response.headers["location"] == "https://example.com"


async def test_the_location_keeps_its_own_path_and_query_by_default() -> None:
    gateway = gateway_with(Redirect(location="https://example.com/path?foo=bar"))
    response = await get(gateway, "/status/200?keep=this")
    assert response.headers["location"] == "https://example.com/path?foo=bar"


async def test_keep_incoming_path_replaces_the_path_and_query_with_the_requests() -> None:
    gateway = gateway_with(
        Redirect(location="https://example.com/some_path?foo=bar", keep_incoming_path=True)
    )
    response = await get(gateway, "/status/200?keep=this")
    assert response.headers["location"] == "https://example.com/status/200?keep=this"
    # No query in the request: none in the location either.
    response = await get(gateway, "/other")
    assert response.headers["location"] == "https://example.com/other"


async def test_keep_incoming_path_keeps_the_locations_port_and_fragment() -> None:
    gateway = gateway_with(
        Redirect(location="http://new.example:8080/x#top", keep_incoming_path=True)
    )
    response = await get(gateway, "/a/b", params={"q": "1"})
    assert response.headers["location"] == "http://new.example:8080/a/b?q=1#top"


async def test_keep_incoming_path_sends_the_normalized_path_and_a_safe_query() -> None:
    gateway = gateway_with(Redirect(location="https://example.com", keep_incoming_path=True))
    result = await call_asgi(
        gateway,
        "/a/../b c",
        raw_path=b"/a/../b%20c/%7Euser",
        query=b"x=1 2&y=\xff",
    )
    assert result.status == 301
    assert result.header("location") == "https://example.com/b%20c/~user?x=1%202&y=%FF"


async def test_a_head_request_gets_the_redirect_without_a_body() -> None:
    gateway = gateway_with(Redirect(location="https://example.com"))
    async with client(gateway) as http:
        response = await http.head("/")
    assert response.status_code == 301
    assert response.headers["location"] == "https://example.com"
    assert response.content == b""


# -- configuration -------------------------------------------------------------------------------


def test_its_kong_name_priority_defaults_and_round_trip() -> None:
    assert gw.plugins.get("redirect") is Redirect
    assert Redirect.priority == 779
    plugin = Redirect(location="https://example.com")
    assert plugin.to_config() == {
        "status_code": 301,
        "location": "https://example.com",
        "keep_incoming_path": False,
    }
    assert Redirect.from_config(plugin.to_config()) == plugin


URL = "https://example.com"


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"status_code": "abcd", "location": URL}, "status_code: expected an integer"),
        ({"status_code": None, "location": URL}, "status_code: required field missing"),
        ({"status_code": 99, "location": URL}, "status_code: value should be between 100 and 599"),
        ({"status_code": 600, "location": URL}, "status_code: value should be between 100 and 599"),
        ({"status_code": 301}, "location: required field missing"),
        ({"location": "definitely_not_a_url"}, "location: missing host in url"),
        ({"location": "//example.com/x"}, "location: missing scheme in url"),
        (
            {"location": URL + ":99999"},
            "location: could not parse url. Port out of range 0-65535",
        ),
        (
            {"location": URL + "/\r\nSet-Cookie: x=1"},
            "location: could not parse url. control characters are not allowed",
        ),
        (
            {"location": URL, "keep_incoming_path": "invalid"},
            "keep_incoming_path: expected a boolean",
        ),
    ],
)
def test_invalid_configurations_fail_with_kongs_messages(
    config: dict[str, Any], error: str
) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        Redirect(**config)
    assert str(info.value) == error


async def test_it_works_from_a_declarative_file() -> None:
    config = {
        "_format_version": "3.0",
        "services": [
            {"name": "s", "url": "http://upstream.internal", "routes": [{"paths": ["/"]}]}
        ],
        "plugins": [
            {"name": "redirect", "config": {"status_code": 302, "location": "https://example.com"}}
        ],
    }
    gateway = gw.Gateway.from_config(config, engine=recording())
    response = await get(gateway)
    assert response.status_code == 302
    assert response.headers["location"] == "https://example.com"
    again = gw.Gateway.from_config(gateway.to_config())
    assert again.config == gateway.config


def test_declarative_errors_carry_the_field_path() -> None:
    config = {"_format_version": "3.0", "plugins": [{"name": "redirect", "config": {}}]}
    with pytest.raises(gw.ConfigurationError) as info:
        gw.Gateway.from_config(config)
    assert str(info.value) == "plugins[0].config.location: required field missing"
