"""The gateway embedded in other ASGI apps, in-process: mounted in Starlette, wrapping an app
as `GatewayMiddleware`, and its lifecycle (ASGI lifespan, lazy start, `async with`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import attrs
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount
from starlette.routing import Route as StarletteRoute
from starlette.types import Message, Receive, Scope, Send

import pygateway as gw
from pygateway.engines import ASGIEngine
from pygateway.testing import EchoUpstream, client


@attrs.frozen
class Recorder(gw.Plugin):
    """Records its lifecycle hooks (and the requests it sees) in a shared list."""

    name = "recorder"

    events: Any = attrs.field(factory=list, eq=False)
    fail_startup: bool = False

    async def startup(self, gateway: gw.Gateway) -> None:
        self.events.append("gateway startup")
        if self.fail_startup:
            raise RuntimeError("the plugin cannot start")

    async def shutdown(self, gateway: gw.Gateway) -> None:
        self.events.append("gateway shutdown")

    async def access(self, ctx: gw.Context) -> None:
        self.events.append(f"request {ctx.request.path}")


class ClosingEngine(ASGIEngine):
    """An echo upstream engine that records being closed."""

    def __init__(self, events: list[str], label: str = "engine") -> None:
        super().__init__(EchoUpstream())
        self.events = events
        self.label = label

    async def aclose(self) -> None:
        self.events.append(f"{self.label} closed")
        await super().aclose()


def make_gateway(
    events: list[str] | None = None, *, fail_startup: bool = False, **kwargs: Any
) -> gw.Gateway:
    events = [] if events is None else events
    return gw.Gateway(
        services=[
            gw.Service(
                name="users",
                url="http://users.internal/svc",
                routes=[
                    gw.Route(name="users", paths=["/users"]),
                    gw.Route(name="admin", paths=["/api/admin"]),
                ],
            )
        ],
        plugins=[Recorder(events=events, fail_startup=fail_startup)],
        engine=kwargs.pop("engine", None) or ClosingEngine(events),
        **kwargs,
    )


class LifespanDriver:
    """Plays the server's side of the ASGI lifespan protocol against one app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.to_app, self._app_receives = anyio.create_memory_object_stream[Message](4)
        self._app_sends, self.from_app = anyio.create_memory_object_stream[Message](4)
        self.returned = anyio.Event()
        self.error: BaseException | None = None

    async def run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.4"}}
        scope["state"] = {}
        try:
            await self.app(scope, self._app_receives.receive, self._app_sends.send)
        except Exception as exc:
            self.error = exc
        finally:
            self.returned.set()

    async def _exchange(self, message_type: str) -> Message:
        await self.to_app.send({"type": message_type})
        with anyio.fail_after(5):
            return await self.from_app.receive()

    async def startup(self) -> Message:
        return await self._exchange("lifespan.startup")

    async def shutdown(self) -> Message:
        message = await self._exchange("lifespan.shutdown")
        with anyio.fail_after(5):
            await self.returned.wait()
        return message

    def close(self) -> None:
        for stream in (self.to_app, self._app_receives, self._app_sends, self.from_app):
            stream.close()


@contextlib.asynccontextmanager
async def lifespan_of(app: Any) -> AsyncIterator[LifespanDriver]:
    driver = LifespanDriver(app)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.run)
            yield driver
            tg.cancel_scope.cancel()
    finally:
        driver.close()


async def call_raw(app: Any, raw_path: bytes, path: str) -> tuple[int, dict[str, Any]]:
    """One GET with a hand-built scope (httpx would normalize the path client-side)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"app.test")],
        "client": ("127.0.0.1", 50000),
        "server": ("app.test", 80),
    }
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


# -- mounted in Starlette -------------------------------------------------------------------


async def health(request: Request) -> Response:
    return PlainTextResponse("app ok")


def mounted(gateway: gw.Gateway, **kwargs: Any) -> Starlette:
    return Starlette(
        routes=[StarletteRoute("/health", health), Mount("/api", app=gateway)], **kwargs
    )


async def test_a_mounted_gateway_routes_below_the_mount_point_and_strips_it_upstream() -> None:
    async with client(mounted(make_gateway())) as http:
        response = await http.get("/api/users/42", params={"q": "1"})
    assert response.status_code == 200
    echo = response.json()
    assert echo["path"] == "/svc/42"
    assert echo["query"] == "q=1"
    assert echo["headers"]["x-forwarded-prefix"] == ["/api/users"]
    assert echo["headers"]["x-forwarded-path"] == ["/api/users/42"]


async def test_a_mounted_gateway_matches_the_path_below_the_mount_not_the_full_path() -> None:
    async with client(mounted(make_gateway())) as http:
        full_path = await http.get("/api/admin/x")
        below_mount = await http.get("/api/api/admin/x")
    # Route "/api/admin" is matched against what follows the mount point "/api".
    assert full_path.status_code == 404
    assert full_path.json()["message"] == "no Route matched with those values"
    assert below_mount.status_code == 200
    assert below_mount.json()["path"] == "/svc/x"
    assert below_mount.json()["headers"]["x-forwarded-prefix"] == ["/api/api/admin"]


async def test_the_app_around_a_mounted_gateway_keeps_its_own_routes() -> None:
    async with client(mounted(make_gateway())) as http:
        own = await http.get("/health")
        outside_mount = await http.get("/users/42")
    assert own.status_code == 200
    assert own.text == "app ok"
    assert "x-pygateway-request-id" not in own.headers
    assert outside_mount.status_code == 404
    assert outside_mount.text == "Not Found"  # Starlette's, not the gateway's
    assert "x-pygateway-request-id" not in outside_mount.headers


async def test_a_mounted_gateway_keeps_an_encoded_slash_below_the_mount_point() -> None:
    status, echo = await call_raw(mounted(make_gateway()), b"/api/users/a%2Fb", "/api/users/a/b")
    assert status == 200
    assert echo["raw_path"] == "/svc/a%2Fb"


async def test_a_percent_encoded_mount_prefix_is_stripped_from_the_raw_path() -> None:
    # Starlette matches the mount on the decoded path ("/api/..."); the gateway must cut
    # the same prefix from the raw path, however the client encoded it.
    status, echo = await call_raw(mounted(make_gateway()), b"/%61pi/users/7", "/api/users/7")
    assert status == 200, echo
    assert echo["path"] == "/svc/7"
    assert echo["headers"]["x-forwarded-prefix"] == ["/api/users"]


async def test_a_mounted_gateway_starts_lazily_as_starlette_sends_it_no_lifespan() -> None:
    events: list[str] = []
    app_events: list[str] = []

    @contextlib.asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        app_events.append("app startup")
        yield
        app_events.append("app shutdown")

    app = mounted(make_gateway(events), lifespan=app_lifespan)
    async with lifespan_of(app) as lifespan:
        assert (await lifespan.startup())["type"] == "lifespan.startup.complete"
        assert app_events == ["app startup"]
        assert events == []
        async with client(app) as http:
            assert (await http.get("/api/users/1")).status_code == 200
            assert (await http.get("/api/users/2")).status_code == 200
        assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
    assert app_events == ["app startup", "app shutdown"]
    assert events == ["gateway startup", "request /users/1", "request /users/2"]


# -- GatewayMiddleware ------------------------------------------------------------------------


async def app_echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "path": request.url.path,
            "body": body.decode(),
            "x-custom": request.headers.get("x-custom"),
        },
        status_code=201,
        headers={"x-app": "yes"},
    )


async def app_stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"chunk{i};".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


def wrapped_app(**kwargs: Any) -> Starlette:
    return Starlette(
        routes=[
            StarletteRoute("/app/echo", app_echo, methods=["POST"]),
            StarletteRoute("/app/stream", app_stream),
        ],
        **kwargs,
    )


async def test_middleware_sends_requests_that_match_a_route_through_the_gateway() -> None:
    events: list[str] = []
    app = gw.GatewayMiddleware(wrapped_app(), make_gateway(events))
    async with client(app) as http:
        response = await http.post("/users/5", content=b"to the upstream")
    assert response.status_code == 200
    assert response.json()["path"] == "/svc/5"
    assert response.json()["body"] == "to the upstream"
    assert "x-pygateway-request-id" in response.headers
    assert events == ["gateway startup", "request /users/5"]


async def test_middleware_passes_unmatched_requests_to_the_app_untouched() -> None:
    events: list[str] = []
    app = gw.GatewayMiddleware(wrapped_app(), make_gateway(events))
    body = b"x" * 100_000

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 30_000):
            yield body[start : start + 30_000]

    async with client(app) as http:
        sized = await http.post("/app/echo", content=body, headers={"x-custom": "kept"})
        streamed = await http.post("/app/echo", content=chunks())
        stream = await http.get("/app/stream")
        unknown = await http.get("/neither")
    for response in (sized, streamed):
        assert response.status_code == 201
        assert response.headers["x-app"] == "yes"
        assert response.json()["path"] == "/app/echo"
        assert response.json()["body"] == body.decode()
        assert "via" not in response.headers
        assert "x-pygateway-request-id" not in response.headers
    assert sized.json()["x-custom"] == "kept"
    assert stream.text == "chunk0;chunk1;chunk2;"
    assert unknown.status_code == 404
    assert unknown.text == "Not Found"  # the app's 404, not the gateway's
    assert [e for e in events if e.startswith("request")] == []


async def test_middleware_applies_global_plugins_to_gateway_routes_only() -> None:
    gateway = gw.Gateway(
        services=[gw.Service(url="http://users.internal", routes=[gw.Route(paths=["/users"])])],
        plugins=[gw.plugins.RequestTermination(status_code=403, message="closed")],
        engine=ASGIEngine(EchoUpstream()),
    )
    async with client(gw.GatewayMiddleware(wrapped_app(), gateway)) as http:
        gateway_route = await http.get("/users/1")
        app_route = await http.post("/app/echo", content=b"hi")
    assert gateway_route.status_code == 403
    assert gateway_route.json()["message"] == "closed"
    assert app_route.status_code == 201
    assert app_route.json()["body"] == "hi"


async def test_middleware_passes_websockets_no_route_matches_to_the_app() -> None:
    seen: list[Message] = []

    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())  # the handshake the gateway looked at, replayed
        await send({"type": "websocket.close", "code": 1000})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    app = gw.GatewayMiddleware(raw_app, make_gateway())
    await app({"type": "websocket", "path": "/app/ws", "headers": []}, receive, send)
    assert seen == [{"type": "websocket.connect"}]
    assert sent == [{"type": "websocket.close", "code": 1000}]


async def test_middleware_chains_the_lifespan_gateway_outside_the_app() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    app = gw.GatewayMiddleware(wrapped_app(lifespan=app_lifespan), make_gateway(events))
    async with lifespan_of(app) as lifespan:
        assert (await lifespan.startup())["type"] == "lifespan.startup.complete"
        assert events == ["gateway startup", "app startup"]
        async with client(app) as http:
            assert (await http.get("/users/1")).status_code == 200
        assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
    assert lifespan.error is None
    assert events == [
        "gateway startup",
        "app startup",
        "request /users/1",
        "app shutdown",
        "gateway shutdown",
        "engine closed",
    ]


async def test_middleware_runs_the_gateways_lifespan_when_the_app_has_none() -> None:
    events: list[str] = []

    async def http_only(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"

    app = gw.GatewayMiddleware(http_only, make_gateway(events))
    async with lifespan_of(app) as lifespan:
        assert (await lifespan.startup())["type"] == "lifespan.startup.complete"
        assert events == ["gateway startup"]
        assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
    assert lifespan.error is None
    assert events == ["gateway startup", "gateway shutdown", "engine closed"]


async def test_middleware_reports_a_gateway_startup_failure_to_the_server() -> None:
    events: list[str] = []
    app = gw.GatewayMiddleware(wrapped_app(), make_gateway(events, fail_startup=True))
    async with lifespan_of(app) as lifespan:
        message = await lifespan.startup()
    assert message["type"] == "lifespan.startup.failed"
    assert "the plugin cannot start" in message["message"]


# -- lifecycle of the Gateway itself -----------------------------------------------------------


@pytest.mark.parametrize("wrap", ["gateway", "middleware", "mounted"])
async def test_without_any_lifespan_the_gateway_starts_once_on_the_first_requests(
    wrap: str,
) -> None:
    events: list[str] = []
    gateway = make_gateway(events)
    app: Any = gateway
    prefix = ""
    if wrap == "middleware":
        app = gw.GatewayMiddleware(wrapped_app(), gateway)
    elif wrap == "mounted":
        app, prefix = mounted(gateway), "/api"
    assert events == []
    statuses: list[int] = []
    async with client(app) as http:

        async def get(i: int) -> None:
            statuses.append((await http.get(f"{prefix}/users/{i}")).status_code)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(get, i)
        statuses.append((await http.get(f"{prefix}/users/again")).status_code)
    assert statuses == [200] * 6
    assert events.count("gateway startup") == 1
    assert events[0] == "gateway startup"
    assert "gateway shutdown" not in events


async def test_async_with_starts_and_stops_the_gateway_and_closes_every_engine() -> None:
    events: list[str] = []
    shared = ClosingEngine(events, "shared engine")
    gateway = make_gateway(
        events,
        engine=ClosingEngine(events, "default engine"),
        engines={"users.internal": shared, "other.internal": shared},
    )
    async with gateway as entered:
        assert entered is gateway
        assert events == ["gateway startup"]
        async with client(gateway) as http:
            response = await http.get("/users/1")
        assert response.status_code == 200
        assert events == ["gateway startup", "request /users/1"]
    assert events[2:] == ["gateway shutdown", "default engine closed", "shared engine closed"]


async def test_a_stopped_gateway_starts_again_on_its_next_request() -> None:
    events: list[str] = []
    gateway = make_gateway(events)
    async with gateway:
        pass
    async with client(gateway) as http:
        assert (await http.get("/users/1")).status_code == 200
    assert events == [
        "gateway startup",
        "gateway shutdown",
        "engine closed",
        "gateway startup",
        "request /users/1",
    ]


async def test_a_lifespan_scope_sent_to_the_gateway_starts_and_stops_it() -> None:
    events: list[str] = []
    gateway = make_gateway(events)
    async with lifespan_of(gateway) as lifespan:
        assert (await lifespan.startup())["type"] == "lifespan.startup.complete"
        assert events == ["gateway startup"]
        async with client(gateway) as http:
            assert (await http.get("/users/1")).status_code == 200
        assert (await lifespan.shutdown())["type"] == "lifespan.shutdown.complete"
    assert lifespan.error is None
    assert events == ["gateway startup", "request /users/1", "gateway shutdown", "engine closed"]


async def test_a_gateway_that_fails_to_start_reports_lifespan_startup_failed() -> None:
    gateway = make_gateway(fail_startup=True)
    async with lifespan_of(gateway) as lifespan:
        message = await lifespan.startup()
        with anyio.fail_after(5):
            await lifespan.returned.wait()
    assert message["type"] == "lifespan.startup.failed"
    assert "the plugin cannot start" in message["message"]
    assert lifespan.error is None
