"""The bundled opentelemetry plugin: W3C Trace Context in, a server and an upstream span, and
the upstream's traceparent, checked with the SDK's in-memory exporter."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import pygateway as gw
from pygateway.engines import MockEngine, UpstreamResponse
from pygateway.plugins._opentelemetry import Opentelemetry
from pygateway.plugins._request_termination import RequestTermination
from pygateway.testing import client, echo_engine

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def gateway_with(*plugins: Any, engine: Any = None, global_plugins: Any = ()) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=["/r"], plugins=plugins)],
            )
        ],
        plugins=global_plugins,
        engines={"echo.internal": engine if engine is not None else echo_engine()},
    )


async def send(gateway: gw.Gateway, path: str = "/r", **headers: str) -> httpx.Response:
    async with client(gateway) as http:
        return await http.get(path, headers={k.replace("_", "-"): v for k, v in headers.items()})


def spans(exporter: InMemorySpanExporter) -> dict[SpanKind, ReadableSpan]:
    finished = exporter.get_finished_spans()
    by_kind = {s.kind: s for s in finished}
    assert len(by_kind) == len(finished), finished
    return by_kind


def upstream_traceparent(response: httpx.Response) -> list[str]:
    values: list[str] = response.json()["headers"].get("traceparent", [])
    return values


def trace_and_parent(traceparent: str) -> tuple[str, str]:
    """The trace id and parent span id of a traceparent (its flags may carry more than the
    sampled bit: newer SDKs set W3C level 2's random-trace-id flag)."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00"
    assert int(flags, 16) & 1 == 1
    return trace_id, span_id


def ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


async def test_one_trace_runs_from_the_client_through_the_gateway_to_the_upstream(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    gateway = gateway_with(Opentelemetry(tracer_provider=provider))

    response = await send(gateway, traceparent=TRACEPARENT, tracestate="vendor=abc")

    assert response.status_code == 200
    found = spans(exporter)
    server, upstream = found[SpanKind.SERVER], found[SpanKind.CLIENT]
    assert server.parent is not None
    assert upstream.parent is not None
    assert f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.parent.is_remote
    assert upstream.parent.span_id == server.context.span_id
    assert ids(server)[0] == ids(upstream)[0] == TRACE_ID
    # The upstream got the client span's context, once, and the client's tracestate.
    assert upstream_traceparent(response) == [f"00-{TRACE_ID}-{ids(upstream)[1]}-01"]
    assert response.json()["headers"]["tracestate"] == ["vendor=abc"]


async def test_a_request_without_traceparent_starts_a_new_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    gateway = gateway_with(Opentelemetry(tracer_provider=provider))

    response = await send(gateway)

    found = spans(exporter)
    server, upstream = found[SpanKind.SERVER], found[SpanKind.CLIENT]
    assert server.parent is None
    trace_id, _ = ids(server)
    assert trace_id != TRACE_ID
    assert ids(upstream)[0] == trace_id
    (sent,) = upstream_traceparent(response)
    assert trace_and_parent(sent) == ids(upstream)


async def test_an_invalid_traceparent_starts_a_new_trace_and_is_not_sent_upstream(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    gateway = gateway_with(Opentelemetry(tracer_provider=provider))

    response = await send(gateway, traceparent="00-zz-not-a-trace")

    server = spans(exporter)[SpanKind.SERVER]
    assert server.parent is None
    (sent,) = upstream_traceparent(response)
    assert trace_and_parent(sent) == ids(spans(exporter)[SpanKind.CLIENT])
    assert ids(server)[0] == trace_and_parent(sent)[0]


async def test_header_type_ignore_starts_a_new_trace_despite_the_clients_traceparent(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    gateway = gateway_with(Opentelemetry(header_type="ignore", tracer_provider=provider))

    response = await send(gateway, traceparent=TRACEPARENT, tracestate="vendor=abc")

    server = spans(exporter)[SpanKind.SERVER]
    assert server.parent is None
    assert ids(server)[0] != TRACE_ID
    assert TRACE_ID not in upstream_traceparent(response)[0]
    assert "tracestate" not in response.json()["headers"]


async def test_the_spans_describe_the_request_and_nest_in_time(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    gateway = gateway_with(Opentelemetry(tracer_provider=provider))

    await send(gateway, "/r/items", user_agent="probe/1")

    found = spans(exporter)
    server, upstream = found[SpanKind.SERVER], found[SpanKind.CLIENT]
    assert server.name == "GET r"
    attributes = dict(server.attributes or {})
    assert attributes["http.method"] == attributes["http.request.method"] == "GET"
    assert attributes["http.route"] == "/r"
    assert attributes["url.path"] == "/r/items"
    assert attributes["http.status_code"] == attributes["http.response.status_code"] == 200
    assert attributes["client.address"] == attributes["http.client_ip"] == "127.0.0.1"
    assert attributes["net.peer.ip"] == "127.0.0.1"
    assert attributes["user_agent.original"] == "probe/1"
    assert attributes["pygateway.route.name"] == "r"
    assert attributes["pygateway.service.name"] == "s"
    assert server.status.status_code is StatusCode.UNSET
    assert upstream.name == "GET"
    client_attributes = dict(upstream.attributes or {})
    assert client_attributes["server.address"] == "echo.internal"
    assert client_attributes["url.path"] == "/items"
    assert client_attributes["http.status_code"] == 200
    assert upstream.status.status_code is StatusCode.UNSET
    assert server.start_time is not None
    assert upstream.start_time is not None
    assert server.end_time is not None
    assert upstream.end_time is not None
    assert server.start_time <= upstream.start_time <= upstream.end_time <= server.end_time


async def test_an_upstream_5xx_marks_both_spans_as_errors(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    gateway = gateway_with(Opentelemetry(tracer_provider=provider))

    response = await send(gateway, "/r/status/503")

    assert response.status_code == 503
    found = spans(exporter)
    assert found[SpanKind.SERVER].status.status_code is StatusCode.ERROR
    assert found[SpanKind.CLIENT].status.status_code is StatusCode.ERROR
    assert dict(found[SpanKind.CLIENT].attributes or {})["http.status_code"] == 503


async def test_an_upstream_4xx_is_an_error_of_the_upstream_call_only(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    gateway = gateway_with(Opentelemetry(tracer_provider=provider))

    await send(gateway, "/r/status/404")

    found = spans(exporter)
    assert found[SpanKind.SERVER].status.status_code is StatusCode.UNSET
    assert found[SpanKind.CLIENT].status.status_code is StatusCode.ERROR


async def test_an_unreachable_upstream_is_recorded_on_both_spans(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    def refuse(request: Any) -> UpstreamResponse:
        raise gw.UpstreamConnectError("connection refused")

    gateway = gateway_with(Opentelemetry(tracer_provider=provider), engine=MockEngine(refuse))

    response = await send(gateway)

    assert response.status_code == 502
    found = spans(exporter)
    server, upstream = found[SpanKind.SERVER], found[SpanKind.CLIENT]
    assert server.status.status_code is StatusCode.ERROR
    assert dict(server.attributes or {})["http.status_code"] == 502
    assert upstream.status.status_code is StatusCode.ERROR
    assert upstream.status.description is not None
    assert "connection refused" in upstream.status.description
    # The service's default retries=5: six tries, each recorded.
    assert [e.name for e in upstream.events] == ["pygateway.upstream.try_failed"] * 6
    assert dict(upstream.attributes or {})["http.request.resend_count"] == 5


async def test_a_request_answered_by_a_later_plugin_has_no_upstream_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    gateway = gateway_with(
        Opentelemetry(tracer_provider=provider), RequestTermination(status_code=503)
    )

    response = await send(gateway)

    assert response.status_code == 503
    found = spans(exporter)
    assert list(found) == [SpanKind.SERVER]
    assert found[SpanKind.SERVER].status.status_code is StatusCode.ERROR


async def test_a_global_plugin_traces_a_request_no_route_matched(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    gateway = gateway_with(global_plugins=[Opentelemetry(tracer_provider=provider)])

    response = await send(gateway, "/nowhere", traceparent=TRACEPARENT)

    assert response.status_code == 404
    found = spans(exporter)
    assert list(found) == [SpanKind.SERVER]
    server = found[SpanKind.SERVER]
    assert server.name == "GET"
    assert ids(server)[0] == TRACE_ID
    assert dict(server.attributes or {})["http.status_code"] == 404


async def test_the_trace_id_can_be_returned_in_a_response_header(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    plugin = Opentelemetry(http_response_header_for_traceid="x-trace-id", tracer_provider=provider)

    response = await send(gateway_with(plugin), traceparent=TRACEPARENT)

    assert response.headers["x-trace-id"] == TRACE_ID


async def test_an_unsampled_parent_is_propagated_without_recording(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    gateway = gateway_with(Opentelemetry(tracer_provider=provider))

    response = await send(gateway, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00")

    assert exporter.get_finished_spans() == ()
    (sent,) = upstream_traceparent(response)
    assert sent.startswith(f"00-{TRACE_ID}-")
    assert sent.endswith("-00")


async def test_without_an_sdk_the_clients_trace_context_goes_upstream_unchanged() -> None:
    noop = trace.NoOpTracerProvider()
    gateway = gateway_with(Opentelemetry(tracer_provider=noop))

    with_parent = await send(gateway, traceparent=TRACEPARENT)
    without = await send(gateway)

    assert upstream_traceparent(with_parent) == [TRACEPARENT]
    assert upstream_traceparent(without) == []


def declarative(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "_format_version": "3.0",
        "services": [
            {"name": "s", "url": "http://echo.internal", "routes": [{"name": "r", "paths": ["/r"]}]}
        ],
        "plugins": [{"name": "opentelemetry", "config": config}],
    }


async def test_it_is_usable_by_name_from_declarative_config_with_the_global_provider(
    exporter: InMemorySpanExporter,
) -> None:
    # The global provider can be set once per process: add our exporter to whichever SDK
    # provider is (or becomes) the global one.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    global_provider = trace.get_tracer_provider()
    assert isinstance(global_provider, TracerProvider)
    global_provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = {"http_response_header_for_traceid": "x-trace-id"}
    gateway = gw.Gateway.from_config(declarative(config), engines={"echo.internal": echo_engine()})

    response = await send(gateway, traceparent=TRACEPARENT)

    assert gw.plugins.get("opentelemetry") is Opentelemetry
    assert Opentelemetry.priority == 14
    mine = [s for s in exporter.get_finished_spans() if ids(s)[0] == TRACE_ID]
    assert sorted(s.kind.name for s in mine) == ["CLIENT", "SERVER"]
    assert response.headers["x-trace-id"] == TRACE_ID
    exported = gateway.to_config()["plugins"][0]
    assert exported["name"] == "opentelemetry"
    assert exported["config"] == {
        "header_type": "preserve",
        "http_response_header_for_traceid": "x-trace-id",
    }
    assert gw.Gateway.from_config(gateway.to_config()).config == gateway.config


def test_the_tracer_provider_is_python_only() -> None:
    plugin = Opentelemetry(tracer_provider=trace.NoOpTracerProvider())

    assert "tracer_provider" not in plugin.to_config()
    assert plugin == Opentelemetry()
    with pytest.raises(gw.ConfigurationError, match="tracer_provider: unknown field"):
        Opentelemetry.from_config({"tracer_provider": "x"})
    with pytest.raises(gw.ConfigurationError, match="expected an OpenTelemetry TracerProvider"):
        Opentelemetry(tracer_provider="x")


@pytest.mark.parametrize(
    "header_type", ["b3", "b3-single", "jaeger", "ot", "aws", "gcp", "datadog"]
)
def test_other_propagation_formats_are_refused_clearly(header_type: str) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        Opentelemetry(header_type=header_type)

    assert str(info.value) == (
        f"header_type: header_type '{header_type}' is not supported by pygateway: "
        "only W3C Trace Context is (use 'preserve', 'w3c' or 'ignore')"
    )


def test_an_unknown_header_type_lists_kongs_values() -> None:
    with pytest.raises(gw.ConfigurationError, match="header_type: expected one of: preserve,"):
        gw.Gateway.from_config(declarative({"header_type": "zipkin"}))


def test_a_missing_opentelemetry_api_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)

    with pytest.raises(gw.ConfigurationError, match=r"pygateway\[opentelemetry\]"):
        Opentelemetry()


async def test_concurrent_requests_keep_their_own_traces(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    gateway = gateway_with(Opentelemetry(tracer_provider=provider))
    trace_ids = [f"{n:032x}" for n in range(1, 9)]
    seen: dict[str, str] = {}

    async def one(trace_id: str) -> None:
        response = await http.get(
            "/r/delay/5", headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"}
        )
        (sent,) = upstream_traceparent(response)
        seen[trace_id] = trace_and_parent(sent)[0]

    async with client(gateway) as http, anyio.create_task_group() as tg:
        for trace_id in trace_ids:
            tg.start_soon(one, trace_id)

    assert seen == {t: t for t in trace_ids}
    finished = exporter.get_finished_spans()
    assert sorted(ids(s)[0] for s in finished) == sorted(trace_ids * 2)
