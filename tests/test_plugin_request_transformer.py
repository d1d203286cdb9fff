"""The bundled request-transformer plugin, after Kong's spec for it (plus templates that are
lookups only, never code)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs

import pytest

import pygateway as gw
from pygateway._config import dump, load
from pygateway.engines import MockEngine, UpstreamResponse
from pygateway.plugins._request_transformer import RequestTransformer
from pygateway.plugins._templates import TemplateError, compile_template
from pygateway.testing import client, echo_engine


def gateway_with(*plugins: Any, paths: tuple[str, ...] = ("/r",), engine: Any = None) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=list(paths), plugins=plugins)],
            )
        ],
        engines={"echo.internal": engine if engine is not None else echo_engine()},
    )


async def upstream(
    plugin: RequestTransformer, method: str = "GET", path: str = "/r", **kwargs: Any
) -> dict[str, Any]:
    """What the upstream received."""
    async with client(gateway_with(plugin)) as http:
        response = await http.request(method, path, **kwargs)
    assert response.status_code == 200, response.text
    seen: dict[str, Any] = response.json()
    return seen


# -- headers ----------------------------------------------------------------------------


async def test_headers_are_removed_renamed_replaced_added_and_appended_in_kongs_order() -> None:
    plugin = RequestTransformer(
        remove={"headers": ["X-Drop"]},
        rename={"headers": ["x-old:x-new"]},
        replace={"headers": ["x-set:replaced", "x-absent:no"]},
        add={"headers": ["x-set:not-added", "x-added:yes"]},
        append={"headers": ["x-set:appended", "x-list:one"]},
    )
    seen = await upstream(plugin, headers={"x-drop": "d", "x-old": "o", "x-set": "original"})
    headers = seen["headers"]
    assert "x-drop" not in headers
    assert "x-old" not in headers
    assert headers["x-new"] == ["o"]
    assert headers["x-set"] == ["replaced", "appended"]
    assert "x-absent" not in headers
    assert headers["x-added"] == ["yes"]
    assert headers["x-list"] == ["one"]


async def test_the_host_header_can_be_replaced_but_not_added_or_removed() -> None:
    seen = await upstream(RequestTransformer(replace={"headers": ["host:api.example"]}))
    assert seen["headers"]["host"] == ["api.example"]
    seen = await upstream(
        RequestTransformer(remove={"headers": ["host"]}, add={"headers": ["host:x.example"]})
    )
    assert seen["headers"]["host"] == ["echo.internal"]


async def test_header_values_can_be_templates_of_the_clients_request() -> None:
    plugin = RequestTransformer(
        add={
            "headers": [
                "x-from-header:$(headers.x_user)",
                'x-quoted:$(headers["x-user"])',
                "x-from-query:id=$(query_params.id)",
                "x-capture:$(uri_captures.version)-$(uri_captures[2])",
                'x-default:$(headers.x_missing or "none")',
                "x-missing:[$(headers.x_missing)]",
            ]
        }
    )
    gateway = gateway_with(plugin, paths=(r"~/api/(?<version>v\d+)/(\w+)$",))
    async with client(gateway) as http:
        response = await http.get("/api/v2/items?id=7", headers={"X-User": "ann"})
    headers = response.json()["headers"]
    assert headers["x-from-header"] == ["ann"]
    assert headers["x-quoted"] == ["ann"]
    assert headers["x-from-query"] == ["id=7"]
    assert headers["x-capture"] == ["v2-items"]
    assert headers["x-default"] == ["none"]
    assert headers["x-missing"] == ["[]"]


async def test_templates_read_the_clients_request_not_the_changed_one() -> None:
    plugin = RequestTransformer(
        remove={"headers": ["x-token"]},
        add={"headers": ["authorization:Bearer $(headers.x_token)"]},
    )
    seen = await upstream(plugin, headers={"x-token": "t0k"})
    assert "x-token" not in seen["headers"]
    assert seen["headers"]["authorization"] == ["Bearer t0k"]


async def test_a_template_value_with_a_line_break_cannot_inject_a_header() -> None:
    engine = MockEngine(lambda request: UpstreamResponse(200, content=b"proxied"))
    plugin = RequestTransformer(add={"headers": ["x-name:$(query_params.name)"]})
    async with client(gateway_with(plugin, engine=engine)) as http:
        response = await http.get("/r", params={"name": "a\r\nx-admin: true"})
    assert response.status_code == 500
    assert engine.requests == []


# -- query string -----------------------------------------------------------------------


async def test_the_query_string_is_transformed_in_kongs_order() -> None:
    plugin = RequestTransformer(
        remove={"querystring": ["drop"]},
        rename={"querystring": ["old:new"]},
        replace={"querystring": ["set:replaced", "absent:no"]},
        add={"querystring": ["set:not-added", "added:$(headers.x_v)"]},
        append={"querystring": ["set:appended"]},
    )
    seen = await upstream(plugin, path="/r?drop=1&old=o&set=s&keep=k", headers={"x-v": "hv"})
    assert parse_qs(seen["query"]) == {
        "new": ["o"],
        "set": ["replaced", "appended"],
        "keep": ["k"],
        "added": ["hv"],
    }


async def test_a_query_value_with_special_characters_is_encoded() -> None:
    seen = await upstream(RequestTransformer(add={"querystring": ["q:a b&c=d"]}))
    assert parse_qs(seen["query"]) == {"q": ["a b&c=d"]}


# -- body ---------------------------------------------------------------------------------


async def test_a_json_body_is_transformed_and_its_length_fixed() -> None:
    plugin = RequestTransformer(
        remove={"body": ["secret"]},
        rename={"body": ["name:username"]},
        replace={"body": ["role:user", "absent:no"]},
        add={"body": ["role:admin", "source:$(headers.x_src)"]},
        append={"body": ["tags:b", "new:z"]},
    )
    seen = await upstream(
        plugin,
        "POST",
        json={"secret": "s", "name": "al", "role": "root", "tags": ["a"]},
        headers={"x-src": "web"},
    )
    body = json.loads(seen["body"])
    assert body == {
        "username": "al",
        "role": "user",
        "tags": ["a", "b"],
        "source": "web",
        "new": ["z"],
    }
    assert seen["headers"]["content-length"] == [str(len(seen["body"].encode()))]


async def test_an_empty_json_body_gets_added_fields_only() -> None:
    plugin = RequestTransformer(add={"body": ["a:1"]}, remove={"body": ["b"]})
    seen = await upstream(plugin, "POST", content=b"", headers={"content-type": "application/json"})
    assert json.loads(seen["body"]) == {"a": "1"}


async def test_a_body_that_is_not_a_json_object_is_sent_unchanged() -> None:
    plugin = RequestTransformer(add={"body": ["a:1"]})
    for content in (b"not json", b"[1, 2]"):
        seen = await upstream(
            plugin, "POST", content=content, headers={"content-type": "application/json"}
        )
        assert seen["body"] == content.decode()


async def test_a_form_body_is_transformed() -> None:
    plugin = RequestTransformer(
        remove={"body": ["password"]},
        rename={"body": ["user:username"]},
        add={"body": ["grant:x y"]},
        append={"body": ["scope:write"]},
    )
    seen = await upstream(plugin, "POST", data={"user": "al", "password": "p", "scope": "read"})
    assert parse_qs(seen["body"]) == {
        "username": ["al"],
        "scope": ["read", "write"],
        "grant": ["x y"],
    }


async def test_another_content_type_is_streamed_unchanged() -> None:
    plugin = RequestTransformer(add={"body": ["a:1"]})
    seen = await upstream(
        plugin, "POST", content=b"raw bytes", headers={"content-type": "text/plain"}
    )
    assert seen["body"] == "raw bytes"


# -- method and uri ------------------------------------------------------------------------


async def test_http_method_changes_the_upstream_method() -> None:
    seen = await upstream(RequestTransformer(http_method="POST"))
    assert seen["method"] == "POST"


async def test_a_form_body_moves_to_the_query_string_when_the_method_becomes_get() -> None:
    seen = await upstream(
        RequestTransformer(http_method="GET"), "POST", path="/r?a=1", data={"a": "2", "b": "3"}
    )
    assert seen["method"] == "GET"
    assert parse_qs(seen["query"]) == {"a": ["1", "2"], "b": ["3"]}


async def test_replace_uri_sets_the_upstream_path_from_a_template() -> None:
    plugin = RequestTransformer(replace={"uri": "/v2/users/$(uri_captures.id)"})
    gateway = gateway_with(plugin, paths=(r"~/users/(?<id>\d+)$",))
    async with client(gateway) as http:
        response = await http.get("/users/42?x=1")
    seen = response.json()
    assert seen["path"] == "/v2/users/42"
    assert seen["query"] == "x=1"


# -- templates and configuration -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "$(os.execute('id'))",
        "$(headers.x .. 'a')",
        "$(require('os'))",
        "$(headers)",
        "$(unknown.x)",
        "$(headers.x",
    ],
)
def test_a_template_that_is_not_a_lookup_is_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        compile_template(text)


def test_the_priority_and_defaults_are_kongs() -> None:
    assert (RequestTransformer.name, RequestTransformer.priority) == ("request-transformer", 801)
    three = {"headers": [], "querystring": [], "body": []}
    assert RequestTransformer().to_config() == {
        "http_method": None,
        "remove": three,
        "rename": three,
        "replace": {**three, "uri": None},
        "add": three,
        "append": three,
    }


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"http_method": "get"}, "http_method: invalid value: get"),
        ({"add": {"headers": ["x-nocolon"]}}, "add.headers: key 'x-nocolon' has no value"),
        (
            {"add": {"headers": ["bad name:1"]}},
            "add.headers: 'bad name' is not a valid header name",
        ),
        ({"remove": {"headers": ["a b"]}}, "remove.headers: 'a b' is not a valid header name"),
        (
            {"append": {"querystring": ["a:$(os.exit())"]}},
            "append.querystring: invalid template in 'a:$(os.exit())'",
        ),
        ({"replace": {"uri": "/$(ngx.var.x)"}}, "replace.uri: invalid template in '/$(ngx.var.x)'"),
        ({"remove": {"json": ["a"]}}, "remove.json: unknown field"),
        ({"rename": {"body": "a:b"}}, "rename.body: expected an array"),
    ],
)
def test_invalid_configs_are_refused_naming_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(gw.ConfigurationError, match=re.escape(message)):
        RequestTransformer.from_config(config)


async def test_a_declarative_config_works_and_round_trips() -> None:
    data = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "s",
                "url": "http://echo.internal",
                "routes": [
                    {
                        "name": "r",
                        "paths": ["/r"],
                        "plugins": [
                            {
                                "name": "request-transformer",
                                "config": {
                                    "http_method": "PUT",
                                    "add": {"headers": ["x-v:2"]},
                                    "replace": {"uri": "/other"},
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    gateway = gw.Gateway.from_config(data, engines={"echo.internal": echo_engine()})
    async with client(gateway) as http:
        seen = (await http.get("/r")).json()
    assert (seen["method"], seen["path"], seen["headers"]["x-v"]) == ("PUT", "/other", ["2"])
    assert load(dump(gateway.config)) == gateway.config
    plugin = gateway.config.services[0].routes[0].plugins[0]
    assert plugin == RequestTransformer(
        http_method="PUT", add={"headers": ["x-v:2"]}, replace={"uri": "/other"}
    )


# -- multipart ------------------------------------------------------------------------------


async def test_a_multipart_body_is_transformed_keeping_files() -> None:
    plugin = RequestTransformer(
        rename={"body": ["user:username"]},
        remove={"body": ["password"]},
        replace={"body": ["role:user"]},
        add={"body": ["source:$(headers.x_src)", "role:admin"]},
    )
    seen = await upstream(
        plugin,
        "POST",
        data={"user": "al", "password": "p", "role": "root"},
        files={"doc": ("a.txt", b"file content", "text/plain")},
        headers={"x-src": "web"},
    )
    body = seen["body"]
    assert seen["headers"]["content-length"] == [str(len(body.encode()))]
    boundary = seen["headers"]["content-type"][0].split("boundary=")[1]
    parts = {}
    for piece in body.split("--" + boundary)[1:-1]:
        head, _, value = piece.strip("\r\n").partition("\r\n\r\n")
        name = re.search(r'name="([^"]*)"', head)
        assert name is not None
        parts[name[1]] = (head, value)
    assert {k: v[1] for k, v in parts.items()} == {
        "username": "al",
        "role": "user",
        "doc": "file content",
        "source": "web",
    }
    assert 'filename="a.txt"' in parts["doc"][0]
    assert body.endswith("--" + boundary + "--\r\n")


async def test_a_multipart_field_name_from_a_template_cannot_break_the_part() -> None:
    plugin = RequestTransformer(rename={"body": ["a:$(query_params.n)"]})
    seen = await upstream(plugin, "POST", path="/r?n=x%22%0D%0Ainjected", files={"a": ("f", b"v")})
    assert "\r\ninjected" not in seen["body"]
    assert 'name="x%22%0D%0Ainjected"' in seen["body"]


async def test_a_multipart_body_that_does_not_parse_is_sent_unchanged() -> None:
    plugin = RequestTransformer(add={"body": ["a:1"]})
    seen = await upstream(
        plugin,
        "POST",
        content=b"--b\r\nno closing delimiter",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert seen["body"] == "--b\r\nno closing delimiter"


async def test_a_multipart_value_from_a_template_cannot_smuggle_a_removed_field() -> None:
    engine = MockEngine(lambda request: UpstreamResponse(200, content=b"proxied"))
    plugin = RequestTransformer(remove={"body": ["admin"]}, add={"body": ["note:$(headers.x_n)"]})
    smuggled = '\r\n--b\r\nContent-Disposition: form-data; name="admin"\r\n\r\ntrue'
    async with client(gateway_with(plugin, engine=engine)) as http:
        response = await http.post(
            "/r",
            content=b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b--\r\n',
            headers={"content-type": "multipart/form-data; boundary=b", "x-n": smuggled},
        )
    assert response.status_code == 500
    assert engine.requests == []
