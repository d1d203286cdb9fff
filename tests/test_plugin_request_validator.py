"""The bundled request-validator plugin, after Kong's spec for it (JSON Schema versions)."""

from __future__ import annotations

import json
import re._parser as sre_parse
import sys
from re._constants import (  # type: ignore[attr-defined]
    BRANCH,
    MAX_REPEAT,
    MAXREPEAT,
    MIN_REPEAT,
    SUBPATTERN,
)
from typing import Any

import httpx
import pytest

import pygateway as gw
from pygateway.plugins import _request_validator
from pygateway.plugins._request_validator import RequestValidator, parse_media_type
from pygateway.testing import client, echo_engine

DENY_BODY = "request body doesn't conform to schema"
DENY_PARAM = "request param doesn't conform to schema"
DENY_CONTENT_TYPE = "specified Content-Type is not allowed"

F1_R1 = json.dumps(
    {
        "properties": {
            "f1": {"type": "string"},
            "r1": {
                "type": "object",
                "properties": {"rf1": {"type": "boolean"}},
                "required": ["rf1"],
            },
        },
        "required": ["f1", "r1"],
    }
)


def gateway_with(*plugins: Any, paths: tuple[str, ...] = ("/r",)) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=list(paths), plugins=plugins)],
            )
        ],
        engines={"echo.internal": echo_engine()},
    )


def body_validator(schema: str | dict[str, Any], **config: Any) -> gw.Gateway:
    return gateway_with(RequestValidator(version="draft4", body_schema=schema, **config))


def param_validator(*params: dict[str, Any], verbose: bool = True, **route: Any) -> gw.Gateway:
    plugin = RequestValidator(parameter_schema=list(params), verbose_response=verbose)
    return gateway_with(plugin, **route)


async def post(
    gateway: gw.Gateway,
    body: Any = None,
    *,
    content: bytes | None = None,
    content_type: str | None = "application/json",
    path: str = "/r",
    headers: Any = None,
    params: Any = None,
) -> httpx.Response:
    sent: list[tuple[str, str]] = list(headers or [])
    if content_type is not None:
        sent.append(("content-type", content_type))
    if content is None and body is not None:
        content = json.dumps(body).encode()
    async with client(gateway) as http:
        return await http.post(path, content=content, headers=sent, params=params)


def param(name: str, where: str, schema: Any = None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "in": where, "required": True, **extra}
    if schema is not None:
        entry.setdefault("style", {"query": "form", "path": "simple"}.get(where, "simple"))
        entry.setdefault("explode", False)
        entry["schema"] = schema if isinstance(schema, str) else json.dumps(schema)
    return entry


# -- body ----------------------------------------------------------------------------------


async def test_a_conforming_body_is_proxied_unchanged() -> None:
    body = {"f1": "value!", "r1": {"rf1": False}}

    response = await post(body_validator(F1_R1), body)

    assert response.status_code == 200
    assert json.loads(response.json()["body"]) == body


@pytest.mark.parametrize("body", [{"f1": "value"}, {"f1": 1, "r1": {"rf1": True}}, {}])
async def test_a_body_that_does_not_conform_is_refused(body: Any) -> None:
    response = await post(body_validator(F1_R1), body)

    assert response.status_code == 400
    assert response.json() == {"message": DENY_BODY}


async def test_an_empty_body_is_validated_as_an_empty_object() -> None:
    requires_f1 = await post(body_validator(F1_R1), content=b"")
    accepts_all = await post(body_validator("{}"), content=b"")

    assert requires_f1.status_code == 400
    assert accepts_all.status_code == 200


@pytest.mark.parametrize("content", [b"{", b"not json", b"NaN", b'{"a": Infinity}', b"\xff\xfe{"])
async def test_a_body_that_is_not_json_is_refused(content: bytes) -> None:
    response = await post(body_validator("{}"), content=content)

    assert response.status_code == 400
    assert response.json() == {"message": "request body is not valid JSON"}


async def test_a_deeply_nested_body_is_refused_not_a_crash() -> None:
    response = await post(body_validator("{}"), content=b"[" * 100_000 + b"]" * 100_000)

    assert response.status_code == 400


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        ({"type": "boolean"}, "true", '"a string value"'),
        ({"type": "string"}, '"hello world"', "true"),
        ({"type": "number"}, "123", "true"),
        ({"type": "array", "items": {"type": "integer"}}, "[1, 2]", "[1, 2.5]"),
    ],
)
async def test_a_body_may_be_any_json_value(schema: Any, good: str, bad: str) -> None:
    gateway = body_validator(json.dumps(schema))

    assert (await post(gateway, content=good.encode())).status_code == 200
    assert (await post(gateway, content=bad.encode())).status_code == 400


@pytest.mark.parametrize("body", ['"hello"', "true", "123", '{"a": "b"}', '["a", "b"]'])
async def test_an_empty_schema_allows_anything(body: str) -> None:
    assert (await post(body_validator("{}"), content=body.encode())).status_code == 200


async def test_the_verbose_answer_says_what_is_wrong() -> None:
    schema = {
        "properties": {
            "f1": {"type": "string"},
            "arr": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["f1", "arr"],
    }
    gateway = body_validator(json.dumps(schema), verbose_response=True)

    wrong_type = await post(gateway, {"f1": True, "arr": ["a"]})
    wrong_item = await post(gateway, {"f1": "a", "arr": ["a", True]})
    missing = await post(gateway, {"f1": "a"})

    assert wrong_type.json() == {
        "message": "property f1 validation failed: True is not of type 'string'"
    }
    assert wrong_item.json() == {
        "message": "property arr[1] validation failed: True is not of type 'string'"
    }
    assert missing.json() == {"message": "'arr' is a required property"}


async def test_a_verbose_answer_stays_short_for_a_huge_body() -> None:
    gateway = body_validator('{"type": "array"}', verbose_response=True)

    response = await post(gateway, {"k": "v" * 100_000})

    assert response.status_code == 400
    assert len(response.json()["message"]) <= 500


async def test_formats_are_checked_as_kongs_draft4_validator_does() -> None:
    schema = {
        "properties": {
            "at": {"type": "string", "format": "date-time"},
            "on": {"type": "string", "format": "date"},
            "mail": {"type": "string", "format": "email"},  # not checked, as Kong
        }
    }
    gateway = body_validator(json.dumps(schema))

    async def status(body: Any) -> int:
        return (await post(gateway, body)).status_code

    assert await status({"at": "2020-06-05T14:48:00.000Z"}) == 200
    assert await status({"at": "2020-06-05T14:48:00+02:00", "on": "2024-02-29"}) == 200
    assert await status({"at": "20200-06-05T14:48:00.000Z"}) == 400
    assert await status({"at": "2020-06-05T14:48:00"}) == 400  # no offset
    assert await status({"at": "2020-06-05T25:48:00Z"}) == 400
    assert await status({"on": "2023-02-29"}) == 400
    assert await status({"mail": "not an address"}) == 200


async def test_the_version_selects_the_json_schema_draft() -> None:
    schema = json.dumps({"properties": {"kind": {"const": "a"}}})  # `const` is draft 6+

    draft4 = await post(body_validator(schema), {"kind": "b"})
    draft7 = await post(
        gateway_with(RequestValidator(version="draft7", body_schema=schema)), {"kind": "b"}
    )

    assert draft4.status_code == 200
    assert draft7.status_code == 400


async def test_a_schema_may_be_given_as_a_mapping() -> None:
    gateway = body_validator({"type": "object", "required": ["name"]})

    assert (await post(gateway, {"name": "x"})).status_code == 200
    assert (await post(gateway, {"other": "x"})).status_code == 400


async def test_local_references_are_followed() -> None:
    schema = {
        "definitions": {"name": {"type": "string", "minLength": 2}},
        "properties": {"name": {"$ref": "#/definitions/name"}},
    }
    gateway = body_validator(json.dumps(schema))

    assert (await post(gateway, {"name": "ok"})).status_code == 200
    assert (await post(gateway, {"name": "x"})).status_code == 400


# -- content types -------------------------------------------------------------------------


async def test_a_content_type_that_is_not_allowed_is_refused() -> None:
    quiet = body_validator("{}")
    verbose = body_validator("{}", verbose_response=True)

    response = await post(quiet, content=b"<?xml?>", content_type="application/xml")
    explained = await post(verbose, content=b"<?xml?>", content_type="application/xml")

    assert (response.status_code, response.json()) == (400, {"message": DENY_BODY})
    assert (explained.status_code, explained.json()) == (400, {"message": DENY_CONTENT_TYPE})


async def test_a_request_without_content_type_is_refused_when_a_body_schema_is_set() -> None:
    response = await post(body_validator("{}", verbose_response=True), content_type=None)

    assert response.json() == {"message": DENY_CONTENT_TYPE}


@pytest.mark.parametrize(
    ("allowed", "sent", "ok"),
    [
        (["application/json"], "application/json", True),
        (["application/json"], "Application/JSON", True),
        (["application/json"], "application/json; charset=utf-8", False),
        (["application/json; charset=UTF-8"], "application/json; charset=utf-8", True),
        (["application/json; charset=UTF-8"], "application/json;Charset=UTF-8", True),
        (["application/json; charset=UTF-8"], "application/json", False),
        (["application/json; charset=UTF-8"], "application/json; charset=latin-1", False),
        (["application/json; version=1"], "application/json; version=1", True),
        (["application/json; version=1"], "application/json; version=V1", False),
        (["application/json; charset=utf-8"], 'application/json; charset="utf-8"', True),
        (["application/*"], "application/merge-patch+json", True),
        (["*/*"], "text/plain", True),
        (["*"], "application/json", True),
        (["text/plain", "application/json"], "text/html", False),
    ],
)
async def test_content_types_are_compared_strictly_with_their_parameter(
    allowed: list[str], sent: str, ok: bool
) -> None:
    gateway = body_validator("{}", allowed_content_types=allowed, verbose_response=True)

    response = await post(gateway, {}, content_type=sent)

    assert response.status_code == (200 if ok else 400)


async def test_parameters_may_be_ignored_when_comparing_content_types() -> None:
    gateway = body_validator("{}", content_type_parameter_validation=False)

    response = await post(gateway, {}, content_type="application/json; charset=utf-8")

    assert response.status_code == 200


async def test_an_allowed_type_that_is_not_json_is_proxied_unvalidated() -> None:
    gateway = body_validator(F1_R1, allowed_content_types=["application/json", "text/plain"])

    response = await post(gateway, content=b"anything at all", content_type="text/plain")

    assert response.status_code == 200
    assert response.json()["body"] == "anything at all"


async def test_a_json_suffix_type_is_validated() -> None:
    gateway = body_validator(F1_R1, allowed_content_types=["application/merge-patch+json"])

    response = await post(gateway, {"f1": "x"}, content_type="application/merge-patch+json")

    assert (response.status_code, response.json()) == (400, {"message": DENY_BODY})


def test_media_types_parse_as_kongs_grammar() -> None:
    assert parse_media_type("Application/JSON; Charset=UTF-8") == (
        "application",
        "json",
        (("charset", "UTF-8"),),
    )
    assert parse_media_type('text/plain;a="b;c\\"d"') == ("text", "plain", (("a", 'b;c"d'),))
    assert parse_media_type("*") == ("*", "*", ())
    for invalid in ("application/ json", "json", "a/b; c", "a/b;c=", "a/b c", "", "a/b;"):
        assert parse_media_type(invalid) is None, invalid


def _nested_unbounded(items: Any, inside: bool = False) -> bool:
    """Does this parsed regex repeat, without bound, something that itself holds an
    unbounded repeat? (Such a pattern backtracks exponentially when it fails.)"""
    for op, av in items:
        if op in (MAX_REPEAT, MIN_REPEAT):
            unbounded = av[1] == MAXREPEAT
            if unbounded and inside:
                return True
            children = [(av[2], inside or unbounded)]
        elif op is SUBPATTERN:
            children = [(av[3], inside)]
        elif op is BRANCH:
            children = [(branch, inside) for branch in av[1]]
        else:
            children = []
        if any(_nested_unbounded(child, nested) for child, nested in children):
            return True
    return False


def test_the_media_type_grammar_cannot_backtrack_exponentially() -> None:
    assert _nested_unbounded(sre_parse.parse(r"(?:a;[a-z]+=.*?)*"))  # the shape it had
    assert not _nested_unbounded(sre_parse.parse(_request_validator._MEDIA_TYPE.pattern))
    assert not _nested_unbounded(sre_parse.parse(_request_validator._PARAM.pattern))


@pytest.mark.parametrize("tail", ["\n", "\r\n", "\nx=y", ';a="b\nc"'])
def test_a_media_type_with_a_line_break_is_not_one(tail: str) -> None:
    assert parse_media_type("application/json" + ";a=b" * 12 + tail) is None
    assert parse_media_type("application/json" + ";a=b" * 12) is not None


# -- parameters ----------------------------------------------------------------------------

INTEGERS = {"type": "array", "items": {"type": "integer"}}


async def test_a_header_parameter_is_validated_with_coercion() -> None:
    gateway = param_validator(param("x-kong-name", "header", INTEGERS), verbose=False)

    good = await post(gateway, {}, headers=[("x-kong-name", "1,2,3")])
    bad = await post(gateway, {}, headers=[("x-kong-name", "a,b,c")])

    assert good.status_code == 200
    assert (bad.status_code, bad.json()) == (400, {"message": DENY_PARAM})


async def test_the_verbose_answer_names_the_parameter_and_shows_its_value() -> None:
    gateway = param_validator(param("x-kong-name", "header", INTEGERS))

    response = await post(gateway, {}, headers=[("x-kong-name", "1,b,3")])

    assert response.status_code == 400
    assert response.json() == {
        "message": "header 'x-kong-name' validation failed, [error] "
        "item [1] validation failed: 'b' is not of type 'integer'",
        "data": ["1", "b", "3"],
    }


async def test_a_missing_required_parameter_is_refused() -> None:
    gateway = param_validator(param("x-kong-name", "header", INTEGERS))

    response = await post(gateway, {})

    assert response.json() == {
        "message": "header 'x-kong-name' validation failed, [error] required parameter missing"
    }


async def test_a_missing_optional_parameter_is_fine() -> None:
    gateway = param_validator(param("x-kong-name", "header", INTEGERS, required=False))

    assert (await post(gateway, {})).status_code == 200


async def test_without_style_and_schema_only_presence_is_checked() -> None:
    gateway = param_validator({"name": "x-tenant", "in": "header", "required": True})

    assert (await post(gateway, {}, headers=[("x-tenant", "anything")])).status_code == 200
    assert (await post(gateway, {})).status_code == 400


OBJECT = {
    "type": "object",
    "properties": {
        "role": {"type": "string", "enum": ["admin", "user"]},
        "firstName": {"type": "string"},
    },
    "additionalProperties": False,
}


@pytest.mark.parametrize(("explode", "eq"), [(True, "="), (False, ",")])
async def test_a_header_object_is_read_with_or_without_explode(explode: bool, eq: str) -> None:
    gateway = param_validator(param("x-kong-name", "header", OBJECT, explode=explode))

    async def status(*values: str) -> int:
        headers = [("x-kong-name", v) for v in values]
        return (await post(gateway, {}, headers=headers)).status_code

    assert await status(f"role{eq}admin,firstName{eq}Alex") == 200
    assert await status(f"   role{eq}admin   ,   firstName{eq}Alex") == 200
    assert await status(f"   role{eq}admin   ", f"   firstName{eq}Alex") == 200
    assert await status(f"role{eq}admin,firstName{eq}Alex,lastName{eq}no") == 400
    assert await status(f"role{eq}root") == 400
    assert await status(f"role{eq}admin,role{eq}user") == 400  # duplicate key


@pytest.mark.parametrize("explode", [True, False])
async def test_a_primitive_header_keeps_whitespace_and_each_copy_is_checked(
    explode: bool,
) -> None:
    schema = {"type": "string", "enum": ["hello", "bye   ,   triple-whitespace"]}
    gateway = param_validator(param("x-kong-name", "header", schema, explode=explode))

    async def status(*values: str) -> int:
        headers = [("x-kong-name", v) for v in values]
        return (await post(gateway, {}, headers=headers)).status_code

    assert await status("hello") == 200
    assert await status("bye   ,   triple-whitespace") == 200
    assert await status("hello", "bye   ,   triple-whitespace") == 200
    assert await status("hello", "bye, triple-whitespace") == 400


@pytest.mark.parametrize("explode", [True, False])
async def test_copies_of_an_array_header_are_combined(explode: bool) -> None:
    schema = {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c", "d"]}}
    gateway = param_validator(param("kong-name", "header", schema, explode=explode))

    good = await post(gateway, {}, headers=[("kong-name", " a , b "), ("kong-name", " c , d ")])
    bad = await post(gateway, {}, headers=[("kong-name", " a , b "), ("kong-name", " c , e ")])

    assert good.status_code == 200
    assert bad.status_code == 400
    assert bad.json()["data"] == ["a", "b", "c", "e"]


async def test_a_query_parameter_is_coerced_and_each_copy_is_checked() -> None:
    gateway = param_validator(param("limit", "query", {"type": "integer", "maximum": 100}))

    async def status(query: Any) -> int:
        return (await post(gateway, {}, params=query)).status_code

    assert await status({"limit": "10"}) == 200
    assert await status({"limit": "ten"}) == 400
    assert await status({"limit": "1000"}) == 400
    assert await status([("limit", "10"), ("limit", "1000")]) == 400
    assert await status({}) == 400


@pytest.mark.parametrize(
    ("style", "explode", "query"),
    [
        ("form", True, [("id", "3"), ("id", "4"), ("id", "5")]),
        ("form", False, [("id", "3,4,5")]),
        ("spaceDelimited", False, [("id", "3 4 5")]),
        ("pipeDelimited", False, [("id", "3|4|5")]),
        ("pipeDelimited", True, [("id", "3"), ("id", "4"), ("id", "5")]),
    ],
)
async def test_a_query_array_is_read_in_every_style(
    style: str, explode: bool, query: list[tuple[str, str]]
) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 3}
    gateway = param_validator(param("id", "query", schema, style=style, explode=explode))

    good = await post(gateway, {}, params=query)
    bad = await post(gateway, {}, params=[(k, v.replace("4", "four")) for k, v in query])

    assert good.status_code == 200
    assert bad.status_code == 400
    assert "four" in json.dumps(bad.json()["data"])


async def test_an_exploded_form_object_is_the_whole_query() -> None:
    gateway = param_validator(param("filter", "query", OBJECT, explode=True))

    good = await post(gateway, {}, params={"role": "admin", "firstName": "Alex"})
    bad = await post(gateway, {}, params={"role": "admin", "other": "x"})

    assert good.status_code == 200
    assert bad.status_code == 400


async def test_a_deep_object_is_read_from_bracketed_arguments() -> None:
    gateway = param_validator(param("filter", "query", OBJECT, style="deepObject", explode=True))

    good = await post(gateway, {}, params={"filter[role]": "admin", "filter[firstName]": "A"})
    bad = await post(gateway, {}, params={"filter[role]": "root"})
    missing = await post(gateway, {}, params={"role": "admin"})

    assert good.status_code == 200
    assert bad.status_code == 400
    assert bad.json()["data"] == {"role": "root"}
    assert missing.json()["message"].endswith("required parameter missing")


async def test_a_path_parameter_comes_from_the_routes_named_capture() -> None:
    gateway = param_validator(
        param("status_code", "path", {"type": "number"}),
        verbose=False,
        paths=(r"~/status/(?<status_code>[^/]+)$",),
    )

    good = await post(gateway, {"name": "foo"}, path="/status/123")
    bad = await post(gateway, {"name": "foo"}, path="/status/abc")

    assert good.status_code == 200
    assert (bad.status_code, bad.json()) == (400, {"message": DENY_PARAM})


@pytest.mark.parametrize(
    ("style", "explode", "value", "expected"),
    [
        ("simple", False, "3,4,5", [3, 4, 5]),
        ("label", False, ".3,4,5", [3, 4, 5]),
        ("label", True, ".3.4.5", [3, 4, 5]),
        ("matrix", False, ";ids=3,4,5", [3, 4, 5]),
        ("matrix", True, ";ids=3;ids=4;ids=5", [3, 4, 5]),
    ],
)
async def test_a_path_array_is_read_in_every_style(
    style: str, explode: bool, value: str, expected: list[int]
) -> None:
    entry = param("ids", "path", INTEGERS, style=style, explode=explode)
    gateway = param_validator(entry, paths=(r"~/items/(?<ids>[^/]+)$",))

    good = await post(gateway, {}, path=f"/items/{value}")
    bad = await post(gateway, {}, path=f"/items/{value.replace('4', 'x')}")

    assert good.status_code == 200
    assert bad.status_code == 400
    assert bad.json()["data"] == [str(v).replace("4", "x") for v in expected]


@pytest.mark.parametrize(
    ("style", "explode", "value"),
    [
        ("simple", False, "role,admin,firstName,Alex"),
        ("simple", True, "role=admin,firstName=Alex"),
        ("label", False, ".role,admin,firstName,Alex"),
        ("label", True, ".role=admin.firstName=Alex"),
        ("matrix", False, ";who=role,admin,firstName,Alex"),
        ("matrix", True, ";role=admin;firstName=Alex"),
    ],
)
async def test_a_path_object_is_read_in_every_style(style: str, explode: bool, value: str) -> None:
    entry = param("who", "path", OBJECT, style=style, explode=explode)
    gateway = param_validator(entry, paths=(r"~/people/(?<who>[^/]+)$",))

    good = await post(gateway, {}, path=f"/people/{value}")
    bad = await post(gateway, {}, path=f"/people/{value.replace('admin', 'root')}")

    assert good.status_code == 200
    assert bad.json()["data"] == {"role": "root", "firstName": "Alex"}


@pytest.mark.parametrize(
    ("style", "value", "reason"),
    [
        ("label", "3,4", "a label-style value starts with '.'"),
        ("matrix", "3,4", "a matrix-style value starts with ';'"),
        ("matrix", ";other=3", "expected ';ids=...' (got ';other=3')"),
    ],
)
async def test_a_badly_serialized_path_value_is_refused(
    style: str, value: str, reason: str
) -> None:
    entry = param("ids", "path", INTEGERS, style=style)
    gateway = param_validator(entry, paths=(r"~/items/(?<ids>[^/]+)$",))

    response = await post(gateway, {}, path=f"/items/{value}")

    assert response.json() == {"message": f"path 'ids' validation failed, [error] {reason}"}


async def test_parameters_are_checked_before_the_body() -> None:
    plugin = RequestValidator(
        version="draft4",
        body_schema=F1_R1,
        parameter_schema=[param("x-kong-name", "header", INTEGERS)],
    )

    response = await post(gateway_with(plugin), {"f1": "abc"}, headers=[("x-kong-name", "a")])

    assert response.json() == {"message": DENY_PARAM}


async def test_only_parameters_leave_the_content_type_alone() -> None:
    gateway = param_validator(param("x-n", "header", INTEGERS))

    response = await post(
        gateway, content=b"<xml/>", content_type="application/xml", headers=[("x-n", "1")]
    )

    assert response.status_code == 200


# -- configuration -------------------------------------------------------------------------


def errors_of(**config: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(gw.ConfigurationError) as info:
        RequestValidator(**config)
    return info.value.errors


def test_one_of_body_schema_and_parameter_schema_is_required() -> None:
    expected = [
        ((), "at least one of these fields must be non-empty: 'body_schema', 'parameter_schema'")
    ]
    assert errors_of() == expected
    assert errors_of(body_schema="", parameter_schema=[]) == expected


def test_kongs_own_schema_format_is_refused_clearly() -> None:
    [(path, reason)] = errors_of(body_schema='[{"name": {"type": "string"}}]')

    assert path == ("version",)
    assert reason.startswith("Kong's own schema format (version 'kong', Kong's default)")
    assert "draft4" in reason


def test_kongs_schema_format_under_a_draft_version_gets_a_hint() -> None:
    [(path, reason)] = errors_of(version="draft4", body_schema='[{"name": {"type": "string"}}]')

    assert path == ("body_schema",)
    assert reason.startswith("not a valid JSONschema draft 4 schema: ")
    assert reason.endswith("(Kong's own schema format, version 'kong', is not supported)")


def test_the_default_version_is_fine_for_parameters_only() -> None:
    plugin = RequestValidator(parameter_schema=[param("x", "header", {"type": "string"})])

    assert plugin.version == "kong"


@pytest.mark.parametrize(
    ("schema", "start"),
    [
        ("[\n}", "failed decoding schema: "),
        ('"f": {}', "failed decoding schema: "),
        ('{"type": 123}', "not a valid JSONschema draft 4 schema: 123 is not valid under"),
        (
            '{"type": "object", "definitions": ["should have been an object"]}',
            "not a valid JSONschema draft 4 schema: ",
        ),
        ('{"$ref": "https://example.com/schema.json"}', "remote references are not supported"),
        ('{"$ref": "#/definitions/missing"}', "unresolvable reference: '#/definitions/missing'"),
    ],
)
def test_an_invalid_body_schema_is_refused_with_its_path(schema: str, start: str) -> None:
    [(path, reason)] = errors_of(version="draft4", body_schema=schema)

    assert path == ("body_schema",)
    assert reason.startswith(start), reason


@pytest.mark.parametrize(
    ("version", "schema", "start"),
    [
        ("draft202012", {"$dynamicRef": "https://example.com/s.json#meta"}, "remote references"),
        ("draft202012", {"items": {"$dynamicRef": "other.json#meta"}}, "remote references"),
        ("draft202012", {"$dynamicRef": "#nowhere"}, "unresolvable reference: '#nowhere'"),
        ("draft201909", {"$recursiveRef": "https://example.com/s.json"}, "remote references"),
        ("draft202012", {"$ref": "#nowhere"}, "unresolvable reference: '#nowhere'"),
        (
            "draft202012",
            {"$id": "https://example.com/root.json", "items": {"$ref": "#/$defs/none"}},
            "unresolvable reference: '#/$defs/none'",
        ),
    ],
)
def test_a_reference_the_schema_cannot_resolve_itself_is_refused_when_built(
    version: str, schema: dict[str, Any], start: str
) -> None:
    [(path, reason)] = errors_of(version=version, body_schema=json.dumps(schema))

    assert path == ("body_schema",)
    assert reason.startswith(start), reason


def test_no_reference_is_ever_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    fetched: list[Any] = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **kw: fetched.append(a))
    schema = {"$dynamicRef": "https://example.com/s.json#meta"}
    errors_of(version="draft202012", body_schema=json.dumps(schema))
    assert fetched == []


TREE = {
    "$id": "https://example.com/tree.json",
    "$dynamicAnchor": "node",
    "$defs": {"leaf": {"type": "integer"}},
    "type": "object",
    "properties": {
        "value": {"$ref": "#/$defs/leaf"},
        "children": {"type": "array", "items": {"$dynamicRef": "#node"}},
    },
}


async def test_local_dynamic_references_validate_without_fetching_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import urllib.request

    fetched: list[Any] = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **kw: fetched.append(a))
    plugin = RequestValidator(version="draft202012", body_schema=json.dumps(TREE))
    gateway = gateway_with(plugin)

    good = {"value": 1, "children": [{"value": 2, "children": []}]}
    assert (await post(gateway, good)).status_code == 200
    bad = {"value": 1, "children": [{"value": "two"}]}
    assert (await post(gateway, bad)).status_code == 400
    assert fetched == []


def test_an_unknown_version_is_refused() -> None:
    [(path, reason)] = errors_of(version="draft3", body_schema="{}")

    assert path == ("version",)
    assert reason == ("expected one of: kong, draft4, draft6, draft7, draft201909, draft202012")


@pytest.mark.parametrize(
    ("content_type", "reason"),
    [
        ("", "content type cannot be empty"),
        ("application/ xml", "invalid value: application/ xml"),
        (
            "application/json; charset=utf-8; q=1",
            "does not support multiple parameters: application/json; charset=utf-8; q=1",
        ),
    ],
)
def test_an_invalid_allowed_content_type_is_refused(content_type: str, reason: str) -> None:
    errors = errors_of(
        version="draft4", body_schema="{}", allowed_content_types=["text/plain", content_type]
    )

    assert errors == [(("allowed_content_types", 1), reason)]


STRING = '{"type": "string"}'


@pytest.mark.parametrize(
    ("entry", "errors"),
    [
        (
            {"name": "x"},
            [
                (("parameter_schema", 0, "in"), "required field missing"),
                (("parameter_schema", 0, "required"), "required field missing"),
            ],
        ),
        (
            {"name": "x", "in": "cookie", "required": True},
            [(("parameter_schema", 0, "in"), "expected one of: query, header, path")],
        ),
        (
            {"name": 1, "in": "query", "required": "yes"},
            [
                (("parameter_schema", 0, "name"), "expected a string"),
                (("parameter_schema", 0, "required"), "expected a boolean"),
            ],
        ),
        (
            {"name": "x", "in": "query", "required": True, "where": "?"},
            [(("parameter_schema", 0, "where"), "unknown field")],
        ),
        (
            {"name": "x", "in": "query", "required": True, "style": "form", "schema": STRING},
            [
                (
                    ("parameter_schema", 0),
                    "all or none of these fields must be set: 'style', 'explode', 'schema'",
                )
            ],
        ),
        (
            {
                "name": "x",
                "in": "header",
                "required": True,
                "style": "form",
                "explode": False,
                "schema": STRING,
            },
            [(("parameter_schema", 0), "style 'form' not supported 'header' parameter")],
        ),
        (
            {
                "name": "x",
                "in": "query",
                "required": True,
                "style": "fancy",
                "explode": False,
                "schema": STRING,
            },
            [
                (
                    ("parameter_schema", 0, "style"),
                    "expected one of: label, form, matrix, simple, spaceDelimited, "
                    "pipeDelimited, deepObject",
                )
            ],
        ),
        (
            {
                "name": "x",
                "in": "query",
                "required": True,
                "style": "form",
                "explode": False,
                "schema": '{"minLength": 1}',
            },
            [
                (
                    ("parameter_schema", 0, "schema"),
                    "the JSONschema is missing a top-level 'type' property",
                )
            ],
        ),
        (
            {
                "name": "x",
                "in": "query",
                "required": True,
                "style": "form",
                "explode": False,
                "schema": "{",
            },
            [
                (
                    ("parameter_schema", 0, "schema"),
                    "failed decoding schema: Expecting property name enclosed in double "
                    "quotes: line 1 column 2 (char 1)",
                )
            ],
        ),
    ],
)
def test_an_invalid_parameter_entry_is_refused_with_its_path(
    entry: dict[str, Any], errors: list[tuple[tuple[Any, ...], str]]
) -> None:
    assert errors_of(parameter_schema=[entry]) == errors


def test_a_parameter_schema_type_may_come_through_a_reference() -> None:
    schema = {"definitions": {"n": {"type": "integer"}}, "$ref": "#/definitions/n"}

    RequestValidator(parameter_schema=[param("n", "query", schema)])


def test_a_missing_jsonschema_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema", None)

    assert errors_of(version="draft4", body_schema="{}") == [
        (
            (),
            "request-validator needs the jsonschema library: "
            "install it with `pip install pygateway[validation]`",
        )
    ]


@pytest.mark.parametrize(
    "config",
    [
        {"version": "draft4", "body_schema": F1_R1},
        {"version": "draft202012", "body_schema": {"type": "object"}, "verbose_response": True},
        {
            "version": "draft4",
            "body_schema": "{}",
            "allowed_content_types": ["application/json; charset=utf-8", "text/plain"],
            "content_type_parameter_validation": False,
        },
        {
            "parameter_schema": [
                param("x-n", "header", INTEGERS),
                {"name": "q", "in": "query", "required": False},
            ]
        },
    ],
)
def test_a_configuration_survives_a_round_trip(config: dict[str, Any]) -> None:
    plugin = RequestValidator(**config)

    exported = plugin.to_config()

    assert RequestValidator.from_config(exported) == plugin
    assert "_compiled" not in exported
    assert json.loads(json.dumps(exported)) == exported


def declarative(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "_format_version": "3.0",
        "services": [
            {"name": "s", "url": "http://echo.internal", "routes": [{"name": "r", "paths": ["/r"]}]}
        ],
        "plugins": [{"name": "request-validator", "config": config}],
    }


async def test_it_is_usable_by_name_from_declarative_config() -> None:
    config = {
        "version": "draft4",
        "body_schema": F1_R1,
        "parameter_schema": [param("x-n", "header", INTEGERS)],
        "verbose_response": True,
    }
    gateway = gw.Gateway.from_config(declarative(config), engines={"echo.internal": echo_engine()})

    good = await post(gateway, {"f1": "a", "r1": {"rf1": True}}, headers=[("x-n", "1")])
    bad = await post(gateway, {"f1": "a"}, headers=[("x-n", "1")])

    assert gw.plugins.get("request-validator") is RequestValidator
    assert RequestValidator.priority == 999
    assert good.status_code == 200
    assert bad.json() == {"message": "'r1' is a required property"}
    assert gateway.to_config()["plugins"][0]["config"] == RequestValidator(**config).to_config()


def test_declarative_errors_carry_the_field_path() -> None:
    config = {"parameter_schema": [{"name": "x", "in": "body", "required": True}]}

    with pytest.raises(gw.ConfigurationError) as info:
        gw.Gateway.from_config(declarative(config))

    assert str(info.value) == (
        "plugins[0].config.parameter_schema[0].in: expected one of: query, header, path"
    )
