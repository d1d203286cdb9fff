"""`Headers`: UTF-8 text over raw bytes, checked names and values, copies versus `wrap`; and
`Response`, which owns (copies) the headers it is given."""

from __future__ import annotations

import logging

import attrs
import pytest

import pygateway as gw
from pygateway.engines import MockEngine, UpstreamRequest, UpstreamResponse
from pygateway.testing import client

# -- text and bytes ------------------------------------------------------------------------


def test_a_text_value_is_stored_as_utf8() -> None:
    headers = gw.Headers()
    headers["X-Consumer-Username"] = "Дмитрий"
    headers.add("x-city", "Zürich")
    assert headers.raw == [
        (b"x-consumer-username", "Дмитрий".encode()),
        (b"x-city", "Zürich".encode()),
    ]
    assert headers["x-consumer-username"] == "Дмитрий"
    assert headers.getlist("X-City") == ["Zürich"]


def test_bytes_that_are_not_utf8_read_as_text_and_are_written_back_unchanged() -> None:
    raw = [(b"x-legacy", b"caf\xe9 \xff\xfe"), (b"x-ok", b"plain")]
    headers = gw.Headers.wrap(raw)
    text = headers["x-legacy"]
    assert text.startswith("caf")
    copy = gw.Headers()
    copy["x-legacy"] = text
    copy.add("x-again", headers.getlist("x-legacy")[0])
    assert copy.raw == [(b"x-legacy", b"caf\xe9 \xff\xfe"), (b"x-again", b"caf\xe9 \xff\xfe")]
    assert headers.multi_items()[0] == ("x-legacy", text)


def test_a_name_no_header_can_have_is_simply_absent() -> None:
    headers = gw.Headers({"x-a": "1"})
    assert "x-ä" not in headers
    assert "Дмитрий" not in headers
    assert headers.get("Дмитрий") is None
    assert headers.getlist("Дмитрий") == []
    with pytest.raises(KeyError):
        del headers["Дмитрий"]


def test_names_are_case_insensitive_and_stored_lower_case() -> None:
    headers = gw.Headers([("X-Tenant", "a"), ("x-tenant", "b")])
    assert headers.raw == [(b"x-tenant", b"a"), (b"x-tenant", b"b")]
    assert headers["X-TENANT"] == "a"
    headers["X-Tenant"] = "c"
    assert headers.getlist("x-tenant") == ["c"]
    assert list(headers) == ["x-tenant"]


# -- checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x tenant", "x:tenant", "", "x-tenänt", "x\r\nevil", "(x)"])
def test_an_invalid_header_name_is_refused_naming_it(name: str) -> None:
    headers = gw.Headers()
    with pytest.raises(ValueError, match="invalid header name") as caught:
        headers[name] = "v"
    assert repr(name) in str(caught.value)
    with pytest.raises(ValueError, match="invalid header name"):
        headers.add(name, "v")
    with pytest.raises(ValueError, match="invalid header name"):
        gw.Headers({name: "v"})
    assert headers.raw == []


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\rb", "a\x00b"])
def test_a_value_with_cr_lf_or_nul_is_refused_naming_the_header(value: str) -> None:
    headers = gw.Headers({"x-keep": "1"})
    with pytest.raises(ValueError, match=r"'x-tenant'.*CR, LF or NUL"):
        headers["x-tenant"] = value
    with pytest.raises(ValueError, match=r"'x-tenant'.*CR, LF or NUL"):
        headers.add("x-tenant", value)
    with pytest.raises(ValueError, match=r"'x-tenant'.*CR, LF or NUL"):
        gw.Headers([(b"x-tenant", value.encode())])
    assert headers.raw == [(b"x-keep", b"1")]


def test_a_value_that_is_not_text_is_refused_naming_the_header() -> None:
    headers = gw.Headers()
    with pytest.raises(TypeError, match="'x-count'"):
        headers["x-count"] = 3  # type: ignore[assignment]
    with pytest.raises(ValueError, match="'x-bad'"):
        headers["x-bad"] = "\ud800"  # a lone surrogate no bytes stand for


def test_the_token_punctuation_is_allowed_in_names() -> None:
    headers = gw.Headers()
    headers["x!#$%&'*+-.^_`|~9"] = "v"
    assert headers.raw == [(b"x!#$%&'*+-.^_`|~9", b"v")]


# -- copies and wrap -------------------------------------------------------------------------


def test_headers_built_from_a_list_copy_it() -> None:
    given = [(b"content-type", b"text/plain")]
    headers = gw.Headers(given)
    headers["x-added"] = "1"
    assert given == [(b"content-type", b"text/plain")]
    again = gw.Headers(headers)
    again.add("x-more", "2")
    assert "x-more" not in headers


def test_wrapped_headers_change_the_list_they_wrap() -> None:
    raw = [(b"content-type", b"text/plain")]
    headers = gw.Headers.wrap(raw)
    headers["x-added"] = "1"
    del headers["content-type"]
    assert raw == [(b"x-added", b"1")]
    assert headers.raw is raw


@pytest.mark.parametrize(
    "given",
    [
        [(b"content-type", b"text/plain")],
        {"content-type": "text/plain"},
        gw.Headers({"content-type": "text/plain"}),
    ],
    ids=["raw-list", "dict", "headers"],
)
def test_a_response_copies_the_headers_it_is_given(given: object) -> None:
    before = repr(given)
    response = gw.Response(403, b"no", headers=given)  # type: ignore[arg-type]
    response.headers["x-request-id"] = "abc"
    assert response.headers.raw == [(b"content-type", b"text/plain"), (b"x-request-id", b"abc")]
    assert repr(given) == before


# -- through a gateway -------------------------------------------------------------------------

SHARED_HEADERS = [(b"content-type", b"text/plain")]


@attrs.frozen
class Deny(gw.Plugin):
    name = "headers-test-deny"
    priority = 10

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        return gw.Response(403, b"no", headers=SHARED_HEADERS)


@attrs.frozen
class Authenticate(gw.Plugin):
    name = "headers-test-auth"
    priority = 1000

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        ctx.authenticate(gw.Consumer(username="Дмитрий", custom_id="Zürich-7"))
        return None


@attrs.frozen
class Inject(gw.Plugin):
    name = "headers-test-inject"
    priority = 900

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        assert ctx.upstream_request is not None
        ctx.upstream_request.headers["x-note"] = ctx.request.headers.get("x-note", "") + "\r\n"
        return None


def _gateway(plugin: gw.Plugin, engine: MockEngine) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(url="http://upstream.test", routes=[gw.Route(paths=["/"], plugins=[plugin])])
        ],
        engine=engine,
    )


def _ok(request: UpstreamRequest) -> UpstreamResponse:
    return UpstreamResponse(200, [(b"content-length", b"2")], content=b"ok")


async def test_a_plugin_response_built_from_a_shared_list_leaves_the_list_alone() -> None:
    gateway = _gateway(Deny(), MockEngine(_ok))
    async with client(gateway) as http:
        for _ in range(2):
            response = await http.get("/")
            assert response.status_code == 403
            assert response.headers["x-pygateway-request-id"]
    assert SHARED_HEADERS == [(b"content-type", b"text/plain")]


async def test_a_consumer_with_a_non_latin1_username_reaches_the_upstream_in_utf8() -> None:
    engine = MockEngine(_ok)
    async with client(_gateway(Authenticate(), engine)) as http:
        response = await http.get("/")
    assert response.status_code == 200
    sent = engine.requests[-1].headers
    assert (b"x-consumer-username", "Дмитрий".encode()) in sent
    assert (b"x-consumer-custom-id", "Zürich-7".encode()) in sent


@attrs.frozen
class AuthenticateFromHeader(gw.Plugin):
    """Authenticates as a consumer made for this request, named by the x-user header."""

    name = "headers-test-auth-per-request"
    priority = 1000

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        ctx.authenticate(gw.Consumer(username=ctx.request.headers.get("x-user", "")))
        return None


async def test_consumers_made_per_request_each_reach_the_upstream_as_themselves() -> None:
    # The identity headers are cached per consumer: a consumer made for one request (and
    # gone after it) must never lend its headers to the next one.
    engine = MockEngine(_ok)
    async with client(_gateway(AuthenticateFromHeader(), engine)) as http:
        for i in range(50):
            response = await http.get("/", headers={"x-user": f"user-{i}"})
            assert response.status_code == 200
            sent = engine.requests[-1].headers
            assert [v for k, v in sent if k == b"x-consumer-username"] == [f"user-{i}".encode()]


async def test_a_plugin_setting_a_header_with_a_newline_fails_at_its_own_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = MockEngine(_ok)
    with caplog.at_level(logging.ERROR, logger="pygateway"):
        async with client(_gateway(Inject(), engine)) as http:
            response = await http.get("/")
    assert response.status_code == 500
    assert engine.requests == []
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None
    error = record.exc_info[1]
    assert isinstance(error, ValueError)
    assert "'x-note'" in str(error)
