"""The plugin runtime: phases, priority order, Kong's scope precedence, errors, the context,
placement rules and the startup/shutdown lifecycle."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs
import pytest
from upstreams import wait_until

import pygateway as gw
from pygateway.engines import MockEngine, UpstreamRequest, UpstreamResponse
from pygateway.testing import client

# -- upstream fakes ----------------------------------------------------------------------


def upstream(
    content: bytes = b"upstream",
    *,
    chunks: tuple[bytes, ...] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> MockEngine:
    """A MockEngine answering 200 with `content` (or streaming `chunks`)."""

    def handler(request: UpstreamRequest) -> UpstreamResponse:
        raw = [(b"content-type", b"text/plain"), *(headers or [])]
        if chunks is None:
            raw.append((b"content-length", str(len(content)).encode()))
            return UpstreamResponse(200, raw, content=content)

        async def stream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        raw.append((b"content-length", str(sum(map(len, chunks))).encode()))
        return UpstreamResponse(200, raw, stream=stream())

    return MockEngine(handler)


def sent(engine: MockEngine) -> gw.Headers:
    """The headers of the last request the upstream received."""
    assert engine.requests, "the upstream was not called"
    return gw.Headers(list(engine.requests[-1].headers))


def service(
    *, plugins: Any = (), route_plugins: Any = (), paths: tuple[str, ...] = ("/r",)
) -> gw.Service:
    return gw.Service(
        name="svc",
        url="http://upstream.test",
        plugins=plugins,
        routes=[gw.Route(name="r", paths=paths, plugins=route_plugins)],
    )


# -- test plugins ------------------------------------------------------------------------


@attrs.frozen
class HeaderAuth(gw.Plugin):
    """Authenticates the consumer named by a header (its first credential, if any)."""

    name = "runtime-header-auth"
    priority = 1500

    header: str = "x-user"
    anonymous: str | None = None

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        username = ctx.request.headers.get(self.header)
        anonymous = username is None
        if anonymous:
            if self.anonymous is None:
                return None
            username = self.anonymous
        for consumer in ctx.gateway.config.consumers:
            if consumer.username == username:
                credential = consumer.credentials[0] if consumer.credentials else None
                ctx.authenticate(consumer, None if anonymous else credential, anonymous=anonymous)
                return None
        return gw.Response(401, json={"message": "Unauthorized"})


@attrs.frozen
class LateHeaderAuth(HeaderAuth):
    name = "runtime-late-header-auth"
    priority = 100


@attrs.frozen
class Label(gw.Plugin):
    """Writes its configured label into an upstream header."""

    name = "runtime-label"
    priority = 500

    label: str = "unset"
    header: str = "x-label"

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        assert ctx.upstream_request is not None
        ctx.upstream_request.headers[self.header] = self.label
        return None


@attrs.frozen
class LateLabel(Label):
    name = "runtime-late-label"
    priority = 50

    header: str = "x-late-label"


@attrs.frozen
class Recorder(gw.Plugin):
    """Appends (name, phase) to `trace` in every phase."""

    trace: Any = attrs.field(eq=False)

    async def rewrite(self, ctx: gw.Context) -> gw.Response | None:
        self.trace.append((self.name, "rewrite"))
        return None

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        self.trace.append((self.name, "access"))
        return None

    async def header_filter(self, ctx: gw.Context) -> None:
        self.trace.append((self.name, "header_filter"))

    async def body_filter(self, ctx: gw.Context, chunk: bytes, last: bool) -> bytes:
        self.trace.append((self.name, "body_filter"))
        return chunk

    async def log(self, ctx: gw.Context) -> None:
        self.trace.append((self.name, "log"))


@attrs.frozen
class RecordHigh(Recorder):
    name = "runtime-record-high"
    priority = 300


@attrs.frozen
class RecordMid(Recorder):
    name = "runtime-record-mid"
    priority = 200


@attrs.frozen
class RecordLow(Recorder):
    name = "runtime-record-low"
    priority = 100


def by_phase(trace: list[tuple[str, str]], phase: str) -> list[str]:
    return [name for name, p in trace if p == phase]


@attrs.frozen
class Deny(gw.Plugin):
    name = "runtime-deny"
    priority = 250

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        return gw.Response(403, json={"message": "denied"}, headers={"x-denied": "yes"})


@attrs.frozen
class Boom(gw.Plugin):
    """Raises in the phase it is configured for."""

    name = "runtime-boom"
    priority = 250

    phase: str = "access"

    def _maybe_fail(self, phase: str) -> None:
        if phase == self.phase:
            raise RuntimeError(f"boom in {phase}")

    async def rewrite(self, ctx: gw.Context) -> gw.Response | None:
        self._maybe_fail("rewrite")
        return None

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        self._maybe_fail("access")
        return None

    async def header_filter(self, ctx: gw.Context) -> None:
        self._maybe_fail("header_filter")

    async def body_filter(self, ctx: gw.Context, chunk: bytes, last: bool) -> bytes:
        self._maybe_fail("body_filter")
        return chunk

    async def log(self, ctx: gw.Context) -> None:
        self._maybe_fail("log")


@attrs.frozen
class StatusLog(gw.Plugin):
    """Records, in `log`, the status and source the client got."""

    name = "runtime-status-log"
    priority = 1

    seen: Any = attrs.field(eq=False)

    async def log(self, ctx: gw.Context) -> None:
        assert ctx.response is not None
        self.seen.append((ctx.response.status_code, ctx.response.source))


async def get(gateway: gw.Gateway, path: str = "/r", **kwargs: Any) -> Any:
    async with client(gateway) as c:
        return await c.get(path, **kwargs)


# -- priority order and phases -----------------------------------------------------------


async def test_plugins_run_in_descending_priority_in_every_phase() -> None:
    trace: list[tuple[str, str]] = []
    gateway = gw.Gateway(
        services=[service()],
        plugins=[RecordLow(trace), RecordHigh(trace), RecordMid(trace)],
        engine=upstream(),
    )
    response = await get(gateway)
    assert response.status_code == 200
    assert response.text == "upstream"
    order = ["runtime-record-high", "runtime-record-mid", "runtime-record-low"]
    for phase in ("rewrite", "access", "header_filter", "log"):
        assert by_phase(trace, phase) == order, phase
    # body_filter: once per chunk and once more with last=True, in the same order each time
    assert by_phase(trace, "body_filter") == order * 2
    phases = [phase for _, phase in trace]
    firsts = [phases.index(p) for p in ("rewrite", "access", "header_filter", "body_filter", "log")]
    assert firsts == sorted(firsts)


async def test_priority_order_holds_across_scopes_and_rewrite_runs_only_for_globals() -> None:
    trace: list[tuple[str, str]] = []
    gateway = gw.Gateway(
        services=[service(plugins=[RecordHigh(trace)], route_plugins=[RecordMid(trace)])],
        plugins=[RecordLow(trace)],
        engine=upstream(),
    )
    response = await get(gateway)
    assert response.status_code == 200
    assert by_phase(trace, "rewrite") == ["runtime-record-low"]
    order = ["runtime-record-high", "runtime-record-mid", "runtime-record-low"]
    for phase in ("access", "header_filter", "log"):
        assert by_phase(trace, phase) == order, phase


@attrs.frozen
class RewriteProbe(gw.Plugin):
    name = "runtime-rewrite-probe"
    priority = 10

    seen: Any = attrs.field(eq=False)
    answer: bool = False

    async def rewrite(self, ctx: gw.Context) -> gw.Response | None:
        self.seen.append(("rewrite", ctx.route, ctx.service, ctx.upstream_request))
        if self.answer:
            return gw.Response(200, b"answered in rewrite", headers={"content-type": "text/plain"})
        return None

    async def log(self, ctx: gw.Context) -> None:
        assert ctx.response is not None
        self.seen.append(("log", ctx.response.status_code))


async def test_rewrite_runs_before_routing() -> None:
    seen: list[Any] = []
    gateway = gw.Gateway(services=[service()], plugins=[RewriteProbe(seen)], engine=upstream())
    response = await get(gateway)
    assert response.status_code == 200
    assert seen == [("rewrite", None, None, None), ("log", 200)]


async def test_rewrite_and_log_of_global_plugins_run_when_no_route_matches() -> None:
    seen: list[Any] = []
    engine = upstream()
    gateway = gw.Gateway(services=[service()], plugins=[RewriteProbe(seen)], engine=engine)
    response = await get(gateway, "/nowhere")
    assert response.status_code == 404
    assert response.json()["message"] == "no Route matched with those values"
    assert seen == [("rewrite", None, None, None), ("log", 404)]
    assert engine.requests == []


async def test_a_rewrite_answer_skips_routing_and_the_upstream() -> None:
    seen: list[Any] = []
    engine = upstream()
    gateway = gw.Gateway(
        services=[service()], plugins=[RewriteProbe(seen, answer=True)], engine=engine
    )
    for path in ("/r", "/nowhere"):
        response = await get(gateway, path)
        assert response.status_code == 200
        assert response.text == "answered in rewrite"
    assert engine.requests == []
    assert [s[0] for s in seen] == ["rewrite", "log", "rewrite", "log"]


async def test_a_rewrite_phase_on_a_route_plugin_is_not_called() -> None:
    seen: list[Any] = []
    gateway = gw.Gateway(services=[service(route_plugins=[RewriteProbe(seen)])], engine=upstream())
    response = await get(gateway)
    assert response.status_code == 200
    assert seen == [("log", 200)]


# -- Kong's 8-level scope precedence ------------------------------------------------------

LEVELS = {
    1: "route+service+consumer",
    2: "route+consumer",
    3: "service+consumer",
    4: "route+service",
    5: "consumer",
    6: "route",
    7: "service",
    8: "global",
}


def precedence_gateway(levels: set[int], engine: MockEngine) -> gw.Gateway:
    """One `Label` per level in `levels`, each labelled with its level's name."""

    def label(level: int) -> Label:
        return Label(label=LEVELS[level])

    global_plugins: list[Any] = [HeaderAuth()]
    route_plugins: list[Any] = []
    service_plugins: list[Any] = []
    alice_plugins: list[Any] = []
    if 1 in levels:
        global_plugins.append(gw.Scoped(label(1), route="r", service="svc", consumer="alice"))
    if 2 in levels:
        route_plugins.append(gw.Scoped(label(2), consumer="alice"))
    if 3 in levels:
        alice_plugins.append(gw.Scoped(label(3), service="svc"))
    if 4 in levels:
        global_plugins.append(gw.Scoped(label(4), route="r", service="svc"))
    if 5 in levels:
        alice_plugins.append(label(5))
    if 6 in levels:
        route_plugins.append(label(6))
    if 7 in levels:
        service_plugins.append(label(7))
    if 8 in levels:
        global_plugins.append(label(8))
    return gw.Gateway(
        services=[service(plugins=service_plugins, route_plugins=route_plugins)],
        consumers=[
            gw.Consumer(username="alice", plugins=alice_plugins),
            gw.Consumer(username="bob"),
        ],
        plugins=global_plugins,
        engine=engine,
    )


@pytest.mark.parametrize("level", sorted(LEVELS), ids=[LEVELS[k] for k in sorted(LEVELS)])
async def test_the_highest_scope_level_present_wins_over_every_lower_one(level: int) -> None:
    levels = set(range(level, 9))
    engine = upstream()
    gateway = precedence_gateway(levels, engine)
    async with client(gateway) as c:
        response = await c.get("/r", headers={"x-user": "alice"})
        assert response.status_code == 200
        assert sent(engine)["x-label"] == LEVELS[level]
        assert sent(engine)["x-consumer-username"] == "alice"
        # Other callers only see the configurations that are not consumer-scoped.
        expected = LEVELS[min(levels & {4, 6, 7, 8})]
        for headers in ({"x-user": "bob"}, {}):
            response = await c.get("/r", headers=headers)
            assert response.status_code == 200
            assert sent(engine)["x-label"] == expected


async def test_configurations_for_another_route_service_or_consumer_do_not_apply() -> None:
    engine = upstream()
    other = gw.Service(
        name="other", url="http://other.test", routes=[gw.Route(name="o", paths=["/o"])]
    )
    gateway = gw.Gateway(
        services=[service(), other],
        consumers=[gw.Consumer(username="alice"), gw.Consumer(username="bob")],
        plugins=[
            HeaderAuth(),
            Label(label="global"),
            gw.Scoped(Label(label="other-route"), route="o"),
            gw.Scoped(Label(label="other-service"), service="other"),
            gw.Scoped(Label(label="bob"), consumer="bob"),
            gw.Scoped(Label(label="bob-on-r"), route="r", consumer="bob"),
        ],
        engine=engine,
    )
    async with client(gateway) as c:
        assert (await c.get("/r", headers={"x-user": "alice"})).status_code == 200
        assert sent(engine)["x-label"] == "global"
        assert (await c.get("/o", headers={"x-user": "alice"})).status_code == 200
        assert sent(engine)["x-label"] == "other-route"
        assert (await c.get("/o", headers={"x-user": "bob"})).status_code == 200
        assert sent(engine)["x-label"] == "bob"  # consumer (5) beats route (6)
        assert (await c.get("/r", headers={"x-user": "bob"})).status_code == 200
        assert sent(engine)["x-label"] == "bob-on-r"


async def test_consumer_configurations_apply_only_to_plugins_running_after_authentication() -> None:
    engine = upstream()
    gateway = gw.Gateway(
        services=[service()],
        consumers=[
            gw.Consumer(username="alice", plugins=[Label(label="alice"), LateLabel(label="alice")])
        ],
        plugins=[LateHeaderAuth(), Label(label="global"), LateLabel(label="global")],
        engine=engine,
    )
    response = await get(gateway, headers={"x-user": "alice"})
    assert response.status_code == 200
    headers = sent(engine)
    assert headers["x-consumer-username"] == "alice"
    # Label (priority 500) ran before the consumer was known: the global config applied.
    assert headers["x-label"] == "global"
    # LateLabel (priority 50) ran after LateHeaderAuth (priority 100): alice's config applied.
    assert headers["x-late-label"] == "alice"


async def test_a_consumer_scoped_plugin_alone_runs_only_for_that_consumer() -> None:
    engine = upstream()
    gateway = gw.Gateway(
        services=[service()],
        consumers=[gw.Consumer(username="alice", plugins=[Deny()]), gw.Consumer(username="bob")],
        plugins=[HeaderAuth()],
        engine=engine,
    )
    async with client(gateway) as c:
        assert (await c.get("/r", headers={"x-user": "alice"})).status_code == 403
        assert (await c.get("/r", headers={"x-user": "bob"})).status_code == 200
        assert (await c.get("/r")).status_code == 200
    assert len(engine.requests) == 2


# -- early answers and errors -------------------------------------------------------------


async def test_an_early_answer_skips_later_access_but_every_plugin_filters_and_logs() -> None:
    trace: list[tuple[str, str]] = []
    engine = upstream()
    gateway = gw.Gateway(
        services=[service(plugins=[RecordMid(trace)], route_plugins=[Deny()])],
        plugins=[RecordHigh(trace), RecordLow(trace)],
        engine=engine,
    )
    response = await get(gateway)
    assert response.status_code == 403
    assert response.json() == {"message": "denied"}
    assert response.headers["x-denied"] == "yes"
    assert engine.requests == []
    assert by_phase(trace, "access") == ["runtime-record-high"]
    order = ["runtime-record-high", "runtime-record-mid", "runtime-record-low"]
    for phase in ("header_filter", "body_filter", "log"):
        assert by_phase(trace, phase) == order, phase


async def test_an_exception_in_access_is_a_500_and_the_log_phase_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Any] = []
    trace: list[tuple[str, str]] = []
    engine = upstream()
    gateway = gw.Gateway(
        services=[service(route_plugins=[Boom(phase="access")])],
        plugins=[StatusLog(seen), RecordLow(trace)],
        engine=engine,
    )
    with caplog.at_level(logging.ERROR, logger="pygateway"):
        response = await get(gateway)
    assert response.status_code == 500
    body = response.json()
    assert body["message"] == "An unexpected error occurred"
    assert body["request_id"] == response.headers["x-pygateway-request-id"]
    assert engine.requests == []
    assert seen == [(500, "error")]
    assert by_phase(trace, "access") == []  # RecordLow runs after Boom: skipped
    assert by_phase(trace, "log") == ["runtime-record-low"]
    assert "runtime-boom" in caplog.text
    assert "boom in access" in caplog.text


async def test_an_exception_in_rewrite_is_a_500_before_routing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Any] = []
    engine = upstream()
    gateway = gw.Gateway(
        services=[service()], plugins=[Boom(phase="rewrite"), StatusLog(seen)], engine=engine
    )
    with caplog.at_level(logging.ERROR, logger="pygateway"):
        response = await get(gateway)
    assert response.status_code == 500
    assert response.json()["message"] == "An unexpected error occurred"
    assert engine.requests == []
    assert seen == [(500, "error")]
    assert "boom in rewrite" in caplog.text


async def test_an_exception_in_header_filter_is_logged_and_the_response_still_goes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace: list[tuple[str, str]] = []
    gateway = gw.Gateway(
        services=[service()],
        plugins=[Boom(phase="header_filter"), RecordLow(trace)],
        engine=upstream(b"hello"),
    )
    with caplog.at_level(logging.ERROR, logger="pygateway"):
        response = await get(gateway)
    assert response.status_code == 200
    assert response.text == "hello"
    # the other plugins' header_filter and the later phases still ran
    assert by_phase(trace, "header_filter") == ["runtime-record-low"]
    assert by_phase(trace, "log") == ["runtime-record-low"]
    assert "boom in header_filter" in caplog.text


async def test_an_exception_in_body_filter_is_logged_and_the_chunk_passes_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = gw.Gateway(
        services=[service()], plugins=[Boom(phase="body_filter")], engine=upstream(b"hello")
    )
    with caplog.at_level(logging.ERROR, logger="pygateway"):
        response = await get(gateway)
    assert response.status_code == 200
    assert response.text == "hello"
    assert "boom in body_filter" in caplog.text


async def test_an_exception_in_log_is_logged_and_does_not_affect_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace: list[tuple[str, str]] = []
    gateway = gw.Gateway(
        services=[service()],
        plugins=[Boom(phase="log"), RecordLow(trace)],
        engine=upstream(b"hello"),
    )
    with caplog.at_level(logging.ERROR, logger="pygateway"):
        response = await get(gateway)
    assert response.status_code == 200
    assert response.text == "hello"
    assert by_phase(trace, "log") == ["runtime-record-low"]
    assert "boom in log" in caplog.text


# -- header_filter, body_filter, response --------------------------------------------------


@attrs.frozen
class Teapot(gw.Plugin):
    name = "runtime-teapot"
    priority = 10

    async def header_filter(self, ctx: gw.Context) -> None:
        assert ctx.response is not None
        ctx.response.status_code = 418
        ctx.response.headers["x-filtered"] = ctx.response.source
        if "x-upstream" in ctx.response.headers:
            del ctx.response.headers["x-upstream"]


async def test_header_filter_changes_the_status_and_headers_of_a_proxied_response() -> None:
    gateway = gw.Gateway(
        services=[service()],
        plugins=[Teapot()],
        engine=upstream(headers=[(b"x-upstream", b"secret")]),
    )
    response = await get(gateway)
    assert response.status_code == 418
    assert response.headers["x-filtered"] == "service"
    assert "x-upstream" not in response.headers
    assert response.text == "upstream"


async def test_header_filter_changes_the_status_and_headers_of_a_plugin_answer() -> None:
    gateway = gw.Gateway(services=[service(route_plugins=[Deny()])], plugins=[Teapot()])
    response = await get(gateway)
    assert response.status_code == 418
    assert response.headers["x-filtered"] == "exit"
    assert response.json() == {"message": "denied"}


@attrs.frozen
class Shout(gw.Plugin):
    """Upper-cases every chunk and appends `suffix` on the last call."""

    name = "runtime-shout"
    priority = 10

    calls: Any = attrs.field(eq=False)
    suffix: str = ""

    async def body_filter(self, ctx: gw.Context, chunk: bytes, last: bool) -> bytes:
        self.calls.append((chunk, last))
        return chunk.upper() + (self.suffix.encode() if last else b"")


async def test_body_filter_sees_every_streamed_chunk_and_a_last_call() -> None:
    calls: list[tuple[bytes, bool]] = []
    gateway = gw.Gateway(
        services=[service()],
        plugins=[Shout(calls)],
        engine=upstream(chunks=(b"ab", b"cd", b"ef")),
    )
    response = await get(gateway)
    assert response.status_code == 200
    assert response.content == b"ABCDEF"
    assert calls == [(b"ab", False), (b"cd", False), (b"ef", False), (b"", True)]
    assert "content-length" not in response.headers


async def test_body_filter_can_change_the_body_length_and_framing_stays_correct() -> None:
    calls: list[tuple[bytes, bool]] = []
    gateway = gw.Gateway(
        services=[service()],
        plugins=[Shout(calls, suffix="!!!")],
        engine=upstream(b"hello"),
    )
    response = await get(gateway)
    assert response.status_code == 200
    assert response.content == b"HELLO!!!"
    assert "content-length" not in response.headers


async def test_body_filter_rewrites_a_plugin_answer() -> None:
    calls: list[tuple[bytes, bool]] = []
    gateway = gw.Gateway(
        services=[service(route_plugins=[Deny()])], plugins=[Shout(calls, suffix="!")]
    )
    response = await get(gateway)
    assert response.status_code == 403
    assert response.content == b'{"MESSAGE":"DENIED"}!'
    assert calls == [(b'{"message":"denied"}', True)]
    assert response.headers["content-length"] == str(len(response.content))


@attrs.frozen
class Wrap(gw.Plugin):
    """Buffers the upstream body (`response` phase) and wraps it in JSON."""

    name = "runtime-wrap"
    priority = 20

    async def response(self, ctx: gw.Context) -> None:
        assert ctx.response is not None
        assert ctx.response.body is not None
        ctx.response.body = json.dumps({"wrapped": ctx.response.body.decode()}).encode()
        ctx.response.headers["content-type"] = "application/json"


async def test_the_response_phase_sees_the_whole_upstream_body_and_can_replace_it() -> None:
    gateway = gw.Gateway(
        services=[service()], plugins=[Wrap()], engine=upstream(chunks=(b"ab", b"cd", b"ef"))
    )
    response = await get(gateway)
    assert response.status_code == 200
    assert response.json() == {"wrapped": "abcdef"}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))


async def test_after_the_response_phase_body_filter_gets_the_whole_body_once() -> None:
    calls: list[tuple[bytes, bool]] = []
    gateway = gw.Gateway(
        services=[service()],
        plugins=[Wrap(), Shout(calls)],
        engine=upstream(chunks=(b"ab", b"cd")),
    )
    response = await get(gateway)
    assert response.status_code == 200
    assert response.content == b'{"WRAPPED": "ABCD"}'
    assert calls == [(b'{"wrapped": "abcd"}', True)]


# -- the context ---------------------------------------------------------------------------


@attrs.frozen
class StateA(gw.Plugin):
    """Counts its phases in plugin_state and reports what it saw in a response header."""

    name = "runtime-state-a"
    priority = 300

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        ctx.plugin_state["count"] = ctx.plugin_state.get("count", 0) + 1
        ctx.plugin_state["owner"] = self.name
        return None

    async def header_filter(self, ctx: gw.Context) -> None:
        assert ctx.response is not None
        state = ctx.plugin_state
        state["count"] = state.get("count", 0) + 1
        ctx.response.headers[f"x-{self.name}"] = f"{state['owner']}:{state['count']}:{len(state)}"


@attrs.frozen
class StateB(StateA):
    name = "runtime-state-b"
    priority = 200


async def test_plugin_state_is_private_to_each_plugin_and_fresh_for_each_request() -> None:
    gateway = gw.Gateway(services=[service()], plugins=[StateA(), StateB()], engine=upstream())
    async with client(gateway) as c:
        for _ in range(2):
            response = await c.get("/r")
            assert response.status_code == 200
            assert response.headers["x-runtime-state-a"] == "runtime-state-a:2:2"
            assert response.headers["x-runtime-state-b"] == "runtime-state-b:2:2"


@attrs.frozen
class SharedWriter(gw.Plugin):
    name = "runtime-shared-writer"
    priority = 300

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        if "x-tenant" in ctx.request.headers:
            ctx.shared["tenant"] = ctx.request.headers["x-tenant"]
        return None


@attrs.frozen
class SharedReader(gw.Plugin):
    name = "runtime-shared-reader"
    priority = 200

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        assert ctx.upstream_request is not None
        ctx.upstream_request.headers["x-seen-tenant"] = ctx.shared.get("tenant", "none")
        return None


async def test_shared_is_shared_between_plugins_and_fresh_for_each_request() -> None:
    engine = upstream()
    gateway = gw.Gateway(
        services=[service()], plugins=[SharedReader(), SharedWriter()], engine=engine
    )
    async with client(gateway) as c:
        await c.get("/r", headers={"x-tenant": "acme"})
        assert sent(engine)["x-seen-tenant"] == "acme"
        await c.get("/r")
        assert sent(engine)["x-seen-tenant"] == "none"


@attrs.frozen
class Interleave(gw.Plugin):
    """Keeps a per-request value across phases while other requests run concurrently."""

    name = "runtime-interleave"
    priority = 10

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        ctx.plugin_state["n"] = ctx.request.headers["x-n"]
        await anyio.lowlevel.checkpoint()
        return None

    async def header_filter(self, ctx: gw.Context) -> None:
        assert ctx.response is not None
        await anyio.lowlevel.checkpoint()
        ctx.response.headers["x-n-back"] = ctx.plugin_state["n"]


async def test_concurrent_requests_through_one_plugin_instance_do_not_mix_state() -> None:
    gateway = gw.Gateway(services=[service()], plugins=[Interleave()], engine=upstream())
    results: dict[str, str] = {}

    async with client(gateway) as c:

        async def one(n: str) -> None:
            response = await c.get("/r", headers={"x-n": n})
            results[n] = response.headers["x-n-back"]

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(one, str(i))
    assert results == {str(i): str(i) for i in range(10)}


def test_plugin_instances_are_immutable() -> None:
    plugin = Label(label="a")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        plugin.label = "b"  # type: ignore[misc]


@attrs.frozen
class Rewriter(gw.Plugin):
    name = "runtime-rewriter"
    priority = 10

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        state = ctx.upstream_request
        assert state is not None
        state.method = "PUT"
        state.path = "/changed/path"
        state.query_string = "x=1&y=2"
        state.headers["x-added"] = "added"
        del state.headers["x-remove-me"]
        state.body = b"replaced body"
        return None


async def test_upstream_request_changes_reach_the_upstream() -> None:
    engine = upstream()
    gateway = gw.Gateway(services=[service()], plugins=[Rewriter()], engine=engine)
    async with client(gateway) as c:
        response = await c.post(
            "/r/original?a=b", content=b"original", headers={"x-remove-me": "1", "x-keep": "2"}
        )
    assert response.status_code == 200
    request = engine.requests[-1]
    assert request.method == "PUT"
    assert request.target == b"/changed/path?x=1&y=2"
    assert request.content == b"replaced body"
    headers = sent(engine)
    assert headers["x-added"] == "added"
    assert headers["x-keep"] == "2"
    assert "x-remove-me" not in headers
    assert headers.getlist("content-length") == [str(len(b"replaced body"))]


@attrs.frozen
class Inspect(gw.Plugin):
    """Records what `ctx` shows in `access`, reading the request body."""

    name = "runtime-inspect"
    priority = 10

    seen: Any = attrs.field(eq=False)

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        assert ctx.route is not None
        assert ctx.service is not None
        assert ctx.upstream_request is not None
        request = ctx.request
        self.seen.update(
            route=ctx.route.name,
            service=ctx.service.name,
            captures=dict(ctx.uri_captures),
            method=request.method,
            path=request.path,
            query=request.query_params,
            header=request.headers.get("x-probe"),
            body=await request.body(),
            upstream_path=ctx.upstream_request.path,
            consumer=ctx.consumer,
        )
        return None


async def test_the_context_exposes_the_request_route_service_and_captures() -> None:
    seen: dict[str, Any] = {}
    engine = upstream()
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="items",
                url="http://items.test/base",
                routes=[gw.Route(name="item", paths=[r"~/items/(?<id>\d+)$"])],
            )
        ],
        plugins=[Inspect(seen)],
        engine=engine,
    )
    async with client(gateway) as c:
        response = await c.post(
            "/items/42?q=1&q=2&flag", content=b"payload", headers={"x-probe": "yes"}
        )
    assert response.status_code == 200
    assert seen == {
        "route": "item",
        "service": "items",
        "captures": {"1": "42", "id": "42"},
        "method": "POST",
        "path": "/items/42",
        "query": {"q": ["1", "2"], "flag": ""},
        "header": "yes",
        "body": b"payload",
        "upstream_path": "/base",
        "consumer": None,
    }
    # Reading the body in a plugin does not consume it: the upstream still gets it.
    assert engine.requests[-1].content == b"payload"


async def test_authenticate_sets_the_consumer_headers_upstream_and_forged_ones_never_pass() -> None:
    engine = upstream()
    alice = gw.Consumer(
        username="alice", custom_id="alice-cid", credentials=[gw.KeyAuthCredential(key="k1")]
    )
    bob = gw.Consumer(username="bob")
    guest = gw.Consumer(username="guest")
    gateway = gw.Gateway(
        services=[service()],
        consumers=[alice, bob, guest],
        plugins=[HeaderAuth(anonymous="guest")],
        engine=engine,
    )
    forged = {
        "x-consumer-id": "forged",
        "x-consumer-username": "forged",
        "x-consumer-custom-id": "forged",
        "x-credential-identifier": "forged",
        "x-anonymous-consumer": "true",
        "x-consumer-groups": "admins",
    }
    async with client(gateway) as c:
        assert (await c.get("/r", headers={**forged, "x-user": "alice"})).status_code == 200
        headers = sent(engine)
        assert headers.getlist("x-consumer-id") == [alice.id]
        assert headers.getlist("x-consumer-username") == ["alice"]
        assert headers.getlist("x-consumer-custom-id") == ["alice-cid"]
        assert headers.getlist("x-credential-identifier") == [alice.credentials[0].identifier]
        assert "x-anonymous-consumer" not in headers
        assert "x-consumer-groups" not in headers

        assert (await c.get("/r", headers={**forged, "x-user": "bob"})).status_code == 200
        headers = sent(engine)
        assert headers.getlist("x-consumer-id") == [bob.id]
        assert headers.getlist("x-consumer-username") == ["bob"]
        for name in ("x-consumer-custom-id", "x-credential-identifier", "x-anonymous-consumer"):
            assert name not in headers, name

        assert (await c.get("/r", headers=forged)).status_code == 200
        headers = sent(engine)
        assert headers.getlist("x-consumer-id") == [guest.id]
        assert headers.getlist("x-consumer-username") == ["guest"]
        assert headers.getlist("x-anonymous-consumer") == ["true"]
        assert "x-credential-identifier" not in headers


async def test_forged_consumer_headers_never_pass_without_authentication() -> None:
    engine = upstream()
    gateway = gw.Gateway(services=[service()], engine=engine)
    response = await get(
        gateway,
        headers={
            "x-consumer-id": "forged",
            "x-consumer-username": "forged",
            "x-consumer-custom-id": "forged",
            "x-credential-identifier": "forged",
            "x-anonymous-consumer": "true",
            "x-consumer-groups": "admins",
        },
    )
    assert response.status_code == 200
    leaked = [name for name in sent(engine) if name.startswith(("x-consumer", "x-credential"))]
    assert leaked == []
    assert "x-anonymous-consumer" not in sent(engine)


@attrs.frozen
class WhoAmI(gw.Plugin):
    name = "runtime-whoami"
    priority = 10

    seen: Any = attrs.field(eq=False)

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        self.seen.append((ctx.consumer, ctx.credential))
        return None


async def test_plugins_after_authentication_see_the_consumer_and_credential() -> None:
    seen: list[Any] = []
    alice = gw.Consumer(username="alice", credentials=[gw.KeyAuthCredential(key="k1")])
    gateway = gw.Gateway(
        services=[service()],
        consumers=[alice],
        plugins=[HeaderAuth(), WhoAmI(seen)],
        engine=upstream(),
    )
    await get(gateway, headers={"x-user": "alice"})
    await get(gateway)
    assert seen == [(alice, alice.credentials[0]), (None, None)]


# -- placement rules ---------------------------------------------------------------------


async def test_disabled_plugins_do_not_run_and_do_not_take_precedence() -> None:
    engine = upstream()
    gateway = gw.Gateway(
        services=[
            service(
                plugins=[Label(label="service")],
                route_plugins=[gw.Scoped(Label(label="route"), enabled=False)],
            )
        ],
        plugins=[gw.Scoped(Deny(), enabled=False)],
        engine=engine,
    )
    response = await get(gateway)
    assert response.status_code == 200
    assert sent(engine)["x-label"] == "service"


@attrs.frozen
class NoConsumers(gw.Plugin):
    name = "runtime-no-consumers"
    scopes = frozenset({"global", "route", "service"})

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        return None


@attrs.frozen
class RouteOnly(gw.Plugin):
    name = "runtime-route-only"
    scopes = frozenset({"route"})

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        return None


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda: gw.Gateway(consumers=[gw.Consumer(username="alice", plugins=[NoConsumers()])]),
            id="in-consumer",
        ),
        pytest.param(
            lambda: gw.Gateway(
                consumers=[gw.Consumer(username="alice")],
                plugins=[gw.Scoped(NoConsumers(), consumer="alice")],
            ),
            id="scoped-to-consumer",
        ),
        pytest.param(
            lambda: gw.Gateway(
                services=[service()],
                consumers=[gw.Consumer(username="alice")],
                plugins=[gw.Scoped(NoConsumers(), route="r", consumer="alice")],
            ),
            id="scoped-to-route-and-consumer",
        ),
    ],
)
def test_a_plugin_on_a_scope_it_forbids_fails_at_construction_naming_it(
    build: Callable[[], gw.Gateway],
) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        build()
    message = str(info.value)
    assert "runtime-no-consumers" in message
    assert "cannot be applied to a consumer" in message


def test_a_plugin_on_the_scopes_it_allows_is_accepted() -> None:
    gateway = gw.Gateway(
        services=[service(plugins=[NoConsumers()], route_plugins=[RouteOnly()])],
        plugins=[NoConsumers()],
    )
    assert len(gateway.snapshot.plugins) == 3


def test_a_plugin_that_forbids_global_scope_fails_when_placed_globally() -> None:
    with pytest.raises(gw.ConfigurationError, match="'runtime-route-only' cannot be applied"):
        gw.Gateway(plugins=[RouteOnly()])
    with pytest.raises(gw.ConfigurationError, match="'runtime-route-only' cannot be applied"):
        gw.Gateway(services=[service(plugins=[RouteOnly()])])


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda: gw.Gateway(services=[service(route_plugins=[Label(), Label(label="b")])]),
            id="twice-on-the-route",
        ),
        pytest.param(
            lambda: gw.Gateway(
                services=[service(route_plugins=[Label()])],
                plugins=[gw.Scoped(Label(label="b"), route="r")],
            ),
            id="route-and-scoped-to-route",
        ),
        pytest.param(lambda: gw.Gateway(plugins=[Label(), Label(label="b")]), id="twice-globally"),
    ],
)
def test_the_same_plugin_twice_on_the_same_scope_is_a_unique_violation(
    build: Callable[[], gw.Gateway],
) -> None:
    with pytest.raises(gw.ConfigurationError, match="UNIQUE violation") as info:
        build()
    assert "runtime-label" in str(info.value)


def test_the_same_plugin_on_different_scopes_is_accepted() -> None:
    gateway = gw.Gateway(
        services=[service(plugins=[Label()], route_plugins=[Label()])],
        consumers=[gw.Consumer(username="alice", plugins=[Label()])],
        plugins=[Label(), gw.Scoped(Label(), route="r", consumer="alice")],
    )
    assert len(gateway.snapshot.plugins) == 5


# -- startup and shutdown ------------------------------------------------------------------


@attrs.frozen
class Lifecycle(gw.Plugin):
    name = "runtime-lifecycle"

    events: Any = attrs.field(eq=False)

    async def startup(self, gateway: gw.Gateway) -> None:
        await anyio.lowlevel.checkpoint()
        self.events.append(("startup", gateway))

    async def shutdown(self, gateway: gw.Gateway) -> None:
        self.events.append(("shutdown", gateway))


@attrs.frozen
class Labelled(gw.Plugin):
    """Records its startup and shutdown by label; one global instance per label."""

    name = "runtime-labelled-lifecycle"

    events: Any = attrs.field(eq=False)
    label: str

    async def startup(self, gateway: gw.Gateway) -> None:
        await anyio.lowlevel.checkpoint()
        self.events.append(("startup", self.label))

    async def shutdown(self, gateway: gw.Gateway) -> None:
        self.events.append(("shutdown", self.label))


async def test_startup_and_shutdown_run_once_per_start_and_stop() -> None:
    events: list[Any] = []
    gateway = gw.Gateway(services=[service()], plugins=[Lifecycle(events)], engine=upstream())
    for round_ in range(2):
        async with gateway:
            assert events[-1] == ("startup", gateway)
            await gateway.start()  # idempotent
            async with client(gateway) as c:
                for _ in range(3):
                    assert (await c.get("/r")).status_code == 200
            assert [e for e, _ in events].count("startup") == round_ + 1
        assert events[-1] == ("shutdown", gateway)
    assert [e for e, _ in events] == ["startup", "shutdown", "startup", "shutdown"]


async def test_startup_runs_lazily_once_on_the_first_requests() -> None:
    events: list[Any] = []
    lifecycle = Lifecycle(events)
    gateway = gw.Gateway(
        services=[service(plugins=[lifecycle], route_plugins=[lifecycle])], engine=upstream()
    )
    assert events == []
    statuses: list[int] = []
    async with client(gateway) as c:

        async def one() -> None:
            statuses.append((await c.get("/r")).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
    assert statuses == [200] * 5
    assert events == [("startup", gateway)]
    await gateway.aclose()
    await gateway.aclose()
    assert events == [("startup", gateway), ("shutdown", gateway)]


async def test_a_plugin_added_by_a_configuration_change_starts_before_the_next_request() -> None:
    events: list[Any] = []
    first = Labelled(events, "first")
    second = gw.Scoped(Labelled(events, "second"), route="r")
    gateway = gw.Gateway(services=[service()], plugins=[first], engine=upstream())
    async with gateway, client(gateway) as c:
        assert (await c.get("/r")).status_code == 200
        gateway.configure(attrs.evolve(gateway.config, plugins=(first, second)))
        assert events == [("startup", "first")]  # nothing runs inside configure
        assert (await c.get("/r")).status_code == 200
        assert events == [("startup", "first"), ("startup", "second")]
        gateway.configure(attrs.evolve(gateway.config, plugins=(second,)))
        assert (await c.get("/r")).status_code == 200
        assert events[-1] == ("shutdown", "first")
    assert events == [
        ("startup", "first"),
        ("startup", "second"),
        ("shutdown", "first"),
        ("shutdown", "second"),
    ]


async def test_a_plugin_kept_by_a_configuration_change_is_not_restarted() -> None:
    events: list[Any] = []
    gateway = gw.Gateway(services=[service()], plugins=[Lifecycle(events)], engine=upstream())
    async with gateway, client(gateway) as c:
        for path in ("/r", "/s"):
            config = gateway.config
            gateway.configure(
                attrs.evolve(
                    config,
                    plugins=(Lifecycle(events),),  # equal, not the same object
                    services=(
                        gw.Service(
                            name="s",
                            url="http://up.test",
                            routes=[gw.Route(name="r", paths=["/r", path])],
                        ),
                    ),
                )
            )
            assert (await c.get(path)).status_code == 200
    assert [e for e, _ in events] == ["startup", "shutdown"]


@attrs.frozen
class SlowStart(gw.Plugin):
    """Starts slowly (until `release` is set), fails its first `fail` startups, and
    answers 599 to requests it sees before it is started."""

    name = "runtime-slow-start"

    state: Any = attrs.field(eq=False)
    settings: dict[str, Any] = attrs.field(factory=dict)  # unhashable on purpose

    async def startup(self, gateway: gw.Gateway) -> None:
        self.state["startups"] += 1
        await self.state["release"].wait()
        if self.state["fail"] > 0:
            self.state["fail"] -= 1
            raise RuntimeError("cannot start")
        self.state["started"] = True

    async def access(self, ctx: Any) -> gw.Response | None:
        return None if self.state.get("started") else gw.Response(599)


def slow_start_state(fail: int = 0) -> dict[str, Any]:
    return {"startups": 0, "release": anyio.Event(), "fail": fail}


async def test_requests_wait_for_a_plugin_added_by_configure_to_finish_starting() -> None:
    state = slow_start_state()
    gateway = gw.Gateway(services=[service()], engine=upstream())
    statuses: list[int] = []
    async with gateway, client(gateway) as c:
        gateway.configure(attrs.evolve(gateway.config, plugins=(SlowStart(state),)))

        async def one() -> None:
            statuses.append((await c.get("/r")).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
            await wait_until(lambda: state["startups"] == 1)
            await anyio.sleep(0.05)
            assert statuses == []  # all waiting, none served by the unstarted plugin
            state["release"].set()
    assert statuses == [200, 200, 200]
    assert state["startups"] == 1


async def test_a_plugin_whose_startup_fails_gets_a_500_and_is_started_again_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = slow_start_state(fail=1)
    state["release"].set()
    gateway = gw.Gateway(services=[service()], engine=upstream())
    async with gateway, client(gateway) as c:
        gateway.configure(attrs.evolve(gateway.config, plugins=(SlowStart(state),)))
        failed = await c.get("/r")
        assert failed.status_code == 500
        assert failed.json()["message"] == "An unexpected error occurred"
        assert (await c.get("/r")).status_code == 200
    assert state["startups"] == 2
    assert "the gateway could not start" in caplog.text


async def test_a_configuration_change_during_start_up_is_not_lost() -> None:
    events: list[Any] = []
    state = slow_start_state()
    gateway = gw.Gateway(services=[service()], plugins=[SlowStart(state)], engine=upstream())
    statuses: list[int] = []
    async with client(gateway) as c:

        async def first() -> None:  # starts the gateway
            statuses.append((await c.get("/r")).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await wait_until(lambda: state["startups"] == 1)
            gateway.configure(
                attrs.evolve(gateway.config, plugins=(SlowStart(state), Labelled(events, "late")))
            )
            state["release"].set()
        assert events == [("startup", "late")]  # before the first request was served
    assert statuses == [200]
    await gateway.aclose()


async def test_gateway_spawn_runs_a_task_until_the_gateway_closes() -> None:
    gateway = gw.Gateway(services=[service()], engine=upstream())
    ran = anyio.Event()
    cancelled: list[bool] = []

    async def forever() -> None:
        ran.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise

    assert gateway.spawn(forever) is False  # not started: nothing to run it in
    async with gateway:
        assert gateway.spawn(forever, same_loop=True) is True
        await ran.wait()
    assert cancelled == [True]


async def test_a_lazily_started_gateway_spawns_only_tasks_that_may_run_in_a_thread() -> None:
    gateway = gw.Gateway(services=[service()], engine=upstream())
    async with client(gateway) as c:
        assert (await c.get("/r")).status_code == 200
    done = threading.Event()

    async def task() -> None:
        done.set()

    try:
        assert gateway.spawn(task, same_loop=True) is False
        assert gateway.spawn(task) is True
        assert await anyio.to_thread.run_sync(done.wait, 10)
    finally:
        await gateway.aclose()


async def test_closing_the_gateway_closes_what_plugins_keep_in_shared() -> None:
    closed: list[str] = []

    class Resource:
        async def aclose(self) -> None:
            closed.append("closed")

    gateway = gw.Gateway(services=[service()], engine=upstream())
    async with gateway:
        gateway.shared["a resource"] = Resource()
        gateway.shared["plain state"] = {"count": 1}
    assert closed == ["closed"]
    assert gateway.shared["plain state"] == {"count": 1}  # kept for a restart


async def test_a_plugin_scoped_to_https_does_not_run_on_plain_http_requests() -> None:
    terminate = gw.plugins.RequestTermination(status_code=418, message="https only")
    gateway = gw.Gateway(
        services=[
            gw.Service(name="s", url="http://up.test", routes=[gw.Route(name="r", paths=["/"])])
        ],
        plugins=[gw.Scoped(terminate, protocols=["https"])],
        engine=gw.testing.echo_engine(),
    )
    async with gw.testing.client(gateway, base_url="http://gw.test") as http:
        assert (await http.get("/x")).status_code == 200
    async with gw.testing.client(gateway, base_url="https://gw.test") as https:
        response = await https.get("/x")
    assert response.status_code == 418
    assert response.json() == {"message": "https only"}
