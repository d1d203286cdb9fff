"""Testing your own gateway with `pygateway.testing`: a pytest module to copy from.

    pytest examples/testing_your_gateway.py

Every test runs in-process, with no sockets and no upstream servers: the client calls the
gateway as an ASGI app, and the upstream is faked at the engine seam (an echo app, or a
function). Each async test runs twice, on asyncio and on trio.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import pygateway as gw
from pygateway.engines import MockEngine, UpstreamRequest, UpstreamResponse
from pygateway.testing import client, echo_engine

# Async tests are run by anyio's pytest plugin (installed with anyio).
pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every async test on asyncio and on trio (needs `trio` installed).

    In a real project this fixture lives in conftest.py.
    """
    return str(request.param)


def make_gateway(engine: gw.engines.Engine | None = None) -> gw.Gateway:
    """The gateway under test. In your project, import your own instead."""
    return gw.Gateway(
        services=[
            gw.Service(
                name="users",
                url="http://users.internal/v1",
                retries=2,
                routes=[
                    gw.Route(name="users", paths=["/users"]),
                    gw.Route(
                        name="admin",
                        paths=["/admin"],
                        plugins=[
                            gw.plugins.RequestTermination(status_code=403, message="Internal only")
                        ],
                    ),
                ],
            )
        ],
        engines={"users.internal": engine or echo_engine()},
    )


async def test_a_users_request_is_proxied_below_the_service_path() -> None:
    async with client(make_gateway()) as http:
        response = await http.get("/users/42", params={"expand": "1"})

    assert response.status_code == 200
    echoed = response.json()  # EchoUpstream describes the request it received
    assert echoed["path"] == "/v1/42"
    assert echoed["query"] == "expand=1"
    assert echoed["headers"]["x-forwarded-prefix"] == ["/users"]


async def test_the_admin_route_is_answered_by_the_gateway() -> None:
    async with client(make_gateway()) as http:
        response = await http.get("/admin/settings")

    assert response.status_code == 403
    assert response.json() == {"message": "Internal only"}


async def test_an_unknown_path_gets_the_gateway_404() -> None:
    async with client(make_gateway()) as http:
        response = await http.get("/nothing/here")

    assert response.status_code == 404
    assert response.json()["message"] == "no Route matched with those values"


async def test_a_request_body_reaches_the_upstream_intact() -> None:
    payload = bytes(range(256)) * 1000
    async with client(make_gateway()) as http:
        response = await http.post("/users", content=payload)

    assert response.json()["body_length"] == len(payload)


async def test_the_upstream_request_can_be_inspected_with_a_mock_engine() -> None:
    def upstream(request: UpstreamRequest) -> UpstreamResponse:
        return UpstreamResponse(201, [(b"content-type", b"text/plain")], content=b"created")

    engine = MockEngine(upstream)
    async with client(make_gateway(engine)) as http:
        response = await http.post("/users", json={"name": "ada"}, headers={"X-Trace": "t1"})

    assert response.status_code == 201
    assert response.text == "created"
    (sent,) = engine.requests  # every request the engine got, in order
    headers = dict(sent.headers)
    assert (sent.method, sent.host, sent.target) == ("POST", "users.internal", b"/v1")
    assert headers[b"x-trace"] == b"t1"
    assert headers[b"host"] == b"users.internal"
    assert sent.content == b'{"name":"ada"}'


async def test_an_unreachable_upstream_is_retried_then_answered_with_502() -> None:
    def refuse(request: UpstreamRequest) -> UpstreamResponse:
        raise gw.UpstreamConnectError("connection refused")

    engine = MockEngine(refuse)
    async with client(make_gateway(engine)) as http:
        response = await http.get("/users/1")

    assert response.status_code == 502
    assert len(engine.requests) == 3  # the first try and `retries=2` more


async def test_a_slow_upstream_is_answered_with_504() -> None:
    def too_slow(request: UpstreamRequest) -> UpstreamResponse:
        raise gw.UpstreamTimeout("read timeout")

    async with client(make_gateway(MockEngine(too_slow))) as http:
        response = await http.get("/users/1")

    assert response.status_code == 504
    assert response.json()["message"] == "The upstream server is timing out"


async def call_raw(app: Any, raw_path: bytes) -> tuple[int, bytes]:
    """Call an ASGI app with a path exactly as given (httpx would normalize `..` itself)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gateway.test")],
        "client": ("127.0.0.1", 50000),
        "server": ("gateway.test", 80),
    }
    messages: list[dict[str, Any]] = []
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()  # as a server does: nothing more until the client leaves
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    status = messages[0]["status"]
    body = b"".join(m.get("body", b"") for m in messages[1:])
    return status, body


async def test_dot_segments_are_resolved_before_routing() -> None:
    # /users/../admin/x is /admin/x once normalized: the admin route answers.
    status, _ = await call_raw(make_gateway(), b"/users/../admin/x")

    assert status == 403
