"""Streams through the gateway: server-sent events, chunked bodies, long-polls, slow uploads.

The gateway runs under real servers (uvicorn, hypercorn on asyncio and on trio), in front of
`sse_upstream()` under uvicorn, all on 127.0.0.1; the last tests drive the same upstream
in-process, through `pygateway.testing.client`.

"No buffering" is proven without a clock: the upstream writes event N+1 only once the client
acknowledged event N on a side channel (`POST /ack` straight to the upstream). A proxy that
held events back would deadlock; the upstream gives up after `ack_timeout` seconds and sends
an `unacknowledged` event instead, which fails the test.

Timeouts are Kong's: a Service's read_timeout is the longest wait between two successive
reads from the upstream (and write_timeout between two writes), never a limit on the whole
exchange.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest
from serverutil import PYTHON, ServerProcess, free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import pygateway as gw
from pygateway.engines import ASGIEngine
from pygateway.testing import StreamingASGITransport, client

TESTS = Path(__file__).parent
API_KEY = "streaming-key"

# -- the upstream ---------------------------------------------------------------------------


def _event(name: str, data: object) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


class _Acks:
    """Acknowledgements by (stream key, event number), each an Event made on first use."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, int], anyio.Event] = {}

    def event(self, key: str, number: int) -> anyio.Event:
        found = self._events.get((key, number))
        if found is None:
            found = self._events[key, number] = anyio.Event()
        return found

    def forget(self, key: str) -> None:
        for k in [k for k in self._events if k[0] == key]:
            del self._events[k]


def sse_upstream() -> Starlette:
    """The upstream of these tests (a factory: `uvicorn --factory test_streaming:sse_upstream`).

    - `GET /events?n=N&key=K&ack_timeout=S`: N `tick` events, each carrying its number and the
      upstream's `time.time()` when written; with a key, event i+1 is written only after
      `POST /ack?key=K&i=i`, else an `unacknowledged` event ends the stream; `end` last;
    - `GET /heartbeat?every=S&for=S`: SSE comments every S seconds, then an `end` event;
    - `GET /silent?before_head=MS` or `?after_head=MS`: silent that long before the response
      starts, or after a first event (then a `late` event);
    - `GET /longpoll?ms=MS`: answers 200 after MS milliseconds;
    - `POST /upload`: the body's length, sha256 and how many pieces it arrived in;
    - `GET /chunks?n=N`: N small chunks, with a short pause between them;
    - `POST /log`: a sink for http-log.
    """
    acks = _Acks()

    async def events(request: Request) -> Response:
        n = int(request.query_params.get("n", "5"))
        key = request.query_params.get("key", "")
        ack_timeout = float(request.query_params.get("ack_timeout", "10"))
        every = float(request.query_params.get("every", "0"))

        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 1000\n\n"
                for i in range(n):
                    yield _event("tick", {"i": i, "t": time.time()})
                    if key:
                        with anyio.move_on_after(ack_timeout):
                            await acks.event(key, i).wait()
                            continue
                        yield _event("unacknowledged", {"i": i})
                        return
                    elif every:
                        await anyio.sleep(every)
                yield _event("end", {"n": n})
            finally:
                acks.forget(key)

        return StreamingResponse(body(), media_type="text/event-stream")

    async def ack(request: Request) -> Response:
        acks.event(request.query_params["key"], int(request.query_params["i"])).set()
        return Response(status_code=204)

    async def heartbeat(request: Request) -> Response:
        every = float(request.query_params.get("every", "0.3"))
        duration = float(request.query_params.get("for", "4"))

        async def body() -> AsyncIterator[bytes]:
            yield b": open\n\n"
            deadline = time.monotonic() + duration
            beats = 0
            while time.monotonic() < deadline:
                await anyio.sleep(every)
                beats += 1
                yield f": heartbeat {beats}\n\n".encode()
            yield _event("end", {"beats": beats})

        return StreamingResponse(body(), media_type="text/event-stream")

    async def silent(request: Request) -> Response:
        before = int(request.query_params.get("before_head", "0"))
        after = int(request.query_params.get("after_head", "0"))
        await anyio.sleep(before / 1000)

        async def body() -> AsyncIterator[bytes]:
            yield _event("first", {})
            await anyio.sleep(after / 1000)
            yield _event("late", {})

        return StreamingResponse(body(), media_type="text/event-stream")

    async def longpoll(request: Request) -> Response:
        ms = int(request.query_params.get("ms", "1500"))
        await anyio.sleep(ms / 1000)
        return JSONResponse({"held_ms": ms})

    async def upload(request: Request) -> Response:
        digest = hashlib.sha256()
        length = pieces = 0
        async for chunk in request.stream():
            if chunk:
                pieces += 1
                length += len(chunk)
                digest.update(chunk)
        return JSONResponse({"length": length, "sha256": digest.hexdigest(), "pieces": pieces})

    async def chunks(request: Request) -> Response:
        n = int(request.query_params.get("n", "20"))

        async def body() -> AsyncIterator[bytes]:
            for i in range(n):
                yield b"chunk %03d\n" % i
                await anyio.sleep(0.01)

        return StreamingResponse(body(), media_type="text/plain")

    async def log_sink(request: Request) -> Response:
        await request.body()
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/events", events),
            Route("/ack", ack, methods=["POST"]),
            Route("/heartbeat", heartbeat),
            Route("/silent", silent),
            Route("/longpoll", longpoll),
            Route("/upload", upload, methods=["POST"]),
            Route("/chunks", chunks),
            Route("/log", log_sink, methods=["POST"]),
        ]
    )


def sse_upstream_server() -> ServerProcess:
    """`sse_upstream()` under uvicorn on a free port (start it with `with`)."""
    port = free_port()
    argv = [
        *(PYTHON, "-m", "uvicorn", "--factory", "test_streaming:sse_upstream"),
        *("--app-dir", str(TESTS), "--host", "127.0.0.1", "--port", str(port)),
        *("--log-level", "warning"),
    ]
    return ServerProcess(argv, port)


# -- the gateway under real servers ---------------------------------------------------------

GATEWAY_MODULE = '''
"""The gateway the servers run (written by tests/test_streaming.py)."""
import os

import pygateway as gw

UPSTREAM = "http://127.0.0.1:" + os.environ["UPSTREAM_PORT"]


def service(name, read_timeout, plugins=()):
    return gw.Service(
        name=name,
        url=UPSTREAM,
        retries=0,
        read_timeout=read_timeout,
        write_timeout=read_timeout,
        routes=[gw.Route(name=name, paths=["/" + name])],
        plugins=list(plugins),
    )


gateway = gw.Gateway(
    services=[
        service("plain", 1000),
        service("patient", 3000),
        service("impatient", 500),
        service("soak", 60000),
        service(
            "plugged",
            10000,
            plugins=[
                gw.plugins.KeyAuth(),
                gw.plugins.RateLimiting(minute=100000, limit_by="ip"),
                gw.plugins.CorrelationId(echo_downstream=True),
                gw.plugins.Prometheus(),
                gw.plugins.HttpLog(http_endpoint=UPSTREAM + "/log"),
                gw.plugins.ResponseTransformer(add={"headers": ["x-streamed:yes"]}),
            ],
        ),
    ],
    consumers=[
        gw.Consumer(username="streamer", credentials=[gw.KeyAuthCredential(key="API_KEY")]),
    ],
)
'''.replace("API_KEY", API_KEY)


def _uvicorn(port: int) -> list[str]:
    return [
        *(PYTHON, "-m", "uvicorn", "gwstreams:gateway", "--host", "127.0.0.1"),
        *("--port", str(port), "--log-level", "warning", "--no-proxy-headers"),
    ]


def _hypercorn(worker: str) -> Any:
    def argv(port: int) -> list[str]:
        bind = f"127.0.0.1:{port}"
        return [PYTHON, "-m", "hypercorn", "-k", worker, "-b", bind, "gwstreams:gateway"]

    return argv


SERVERS = {
    "uvicorn": _uvicorn,
    "hypercorn-asyncio": _hypercorn("asyncio"),
    "hypercorn-trio": _hypercorn("trio"),
}


def gateway_server(server: str, directory: Path, upstream: ServerProcess) -> ServerProcess:
    """The gateway of GATEWAY_MODULE under `server` (a SERVERS key); start it with `with`."""
    module = directory / "gwstreams.py"
    if not module.exists():
        module.write_text(textwrap.dedent(GATEWAY_MODULE))
    port = free_port()
    env = {
        "PYTHONPATH": os.pathsep.join([str(directory), os.environ.get("PYTHONPATH", "")]),
        "UPSTREAM_PORT": str(upstream.port),
    }
    return ServerProcess(SERVERS[server](port), port, env=env, cwd=directory)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with sse_upstream_server() as server:
        yield server


@pytest.fixture(scope="module", params=list(SERVERS))
def gateway_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: ServerProcess,
) -> Iterator[str]:
    with gateway_server(str(request.param), tmp_path_factory.mktemp("gw"), upstream) as server:
        yield server.url


# -- reading SSE ----------------------------------------------------------------------------


def parse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) for each event in an SSE stream; comments are yielded as
    ("comment", text), so heartbeats can be counted."""
    name, data = "message", ""
    for line in lines:
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif not line and data:
            yield name, data
            name, data = "message", ""


def acknowledged_stream(gateway: str, upstream: str, path: str, n: int, **headers: str) -> None:
    """Read `n` tick events from `gateway` + path, acknowledging each one to the upstream
    only after it arrived; fail if the stream deadlocks."""
    key = os.urandom(8).hex()
    seen: list[int] = []
    with (
        httpx.Client(timeout=30, trust_env=False) as sse,
        httpx.Client(timeout=10, trust_env=False) as side,
        sse.stream(
            "GET", f"{gateway}{path}?n={n}&key={key}&ack_timeout=10", headers=headers
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for name, data in parse_events(response.iter_lines()):
            assert name in ("tick", "end"), f"after events {seen}: {name} {data}"
            if name == "end":
                break
            i = json.loads(data)["i"]
            seen.append(i)
            side.post(f"{upstream}/ack", params={"key": key, "i": i}).raise_for_status()
    assert seen == list(range(n))


# -- through real servers -------------------------------------------------------------------

pytestmark_servers = pytest.mark.servers


@pytestmark_servers
def test_each_event_reaches_the_client_before_the_upstream_writes_the_next(
    gateway_url: str, upstream: ServerProcess
) -> None:
    acknowledged_stream(gateway_url, upstream.url, "/plain/events", 20)


@pytestmark_servers
def test_auth_limits_logs_metrics_and_header_transforms_do_not_buffer_events(
    gateway_url: str, upstream: ServerProcess
) -> None:
    acknowledged_stream(gateway_url, upstream.url, "/plugged/events", 10, apikey=API_KEY)
    with httpx.Client(timeout=10, trust_env=False) as http:
        response = http.get(f"{gateway_url}/plugged/events?n=1", headers={"apikey": API_KEY})
    assert response.headers["x-streamed"] == "yes"
    assert response.headers["kong-request-id"]
    assert "x-ratelimit-limit-minute" in response.headers


@pytestmark_servers
def test_heartbeats_keep_a_stream_longer_than_the_read_timeout_alive(gateway_url: str) -> None:
    with (
        httpx.Client(timeout=30, trust_env=False) as http,
        http.stream("GET", f"{gateway_url}/plain/heartbeat?every=0.3&for=4") as response,
    ):
        assert response.status_code == 200
        events = list(parse_events(response.iter_lines()))
    beats = [data for name, data in events if name == "comment" and data.startswith("heartbeat")]
    assert len(beats) >= 10
    assert events[-1][0] == "end"


@pytestmark_servers
def test_an_upstream_silent_past_the_read_timeout_before_its_head_gets_504(
    gateway_url: str,
) -> None:
    with httpx.Client(timeout=30, trust_env=False) as http:
        response = http.get(f"{gateway_url}/plain/silent?before_head=2500")
    assert response.status_code == 504


@pytestmark_servers
def test_an_upstream_silent_past_the_read_timeout_mid_stream_has_its_stream_ended(
    gateway_url: str,
) -> None:
    names: list[str] = []
    with (
        httpx.Client(timeout=30, trust_env=False) as http,
        http.stream("GET", f"{gateway_url}/plain/silent?after_head=2500") as response,
    ):
        assert response.status_code == 200
        # The gateway ends the response unfinished: httpx sees the chunked body cut short.
        with pytest.raises(httpx.RemoteProtocolError):
            names.extend(name for name, _ in parse_events(response.iter_lines()))
    assert names == ["first"]


@pytestmark_servers
@pytest.mark.parametrize(("service", "status"), [("patient", 200), ("impatient", 504)])
def test_a_long_poll_is_held_as_long_as_the_read_timeout_allows(
    gateway_url: str, service: str, status: int
) -> None:
    with httpx.Client(timeout=30, trust_env=False) as http:
        response = http.get(f"{gateway_url}/{service}/longpoll?ms=1500")
    assert response.status_code == status


@pytestmark_servers
def test_a_slow_upload_reaches_the_upstream_whole(gateway_url: str) -> None:
    pieces = [os.urandom(1000) for _ in range(10)]

    def slowly() -> Iterator[bytes]:
        for piece in pieces:
            time.sleep(0.3)
            yield piece

    with httpx.Client(timeout=30, trust_env=False) as http:
        response = http.post(f"{gateway_url}/plain/upload", content=slowly())
    assert response.status_code == 200
    got = response.json()
    assert got["length"] == 10_000
    assert got["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert got["pieces"] > 1


@pytestmark_servers
def test_a_chunked_response_arrives_in_chunks(gateway_url: str) -> None:
    received: list[bytes] = []
    with (
        httpx.Client(timeout=30, trust_env=False) as http,
        http.stream("GET", f"{gateway_url}/plain/chunks?n=20") as response,
    ):
        assert response.headers.get("transfer-encoding") == "chunked"
        received.extend(response.iter_raw())
    assert len(received) > 1
    assert b"".join(received) == b"".join(b"chunk %03d\n" % i for i in range(20))


# -- in-process, no sockets -----------------------------------------------------------------


def in_process_gateway(upstream: Any, plugins: list[gw.Plugin] | None = None) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(name="sse", url="http://sse.internal", routes=[gw.Route(paths=["/sse"])])
        ],
        plugins=plugins or [],
        engine=ASGIEngine(upstream),
    )


def header_only_plugins() -> list[gw.Plugin]:
    return [
        gw.plugins.RateLimiting(minute=100000, limit_by="ip"),
        gw.plugins.CorrelationId(echo_downstream=True),
        gw.plugins.Prometheus(),
        gw.plugins.ResponseTransformer(add={"headers": ["x-streamed:yes"]}),
    ]


@pytest.mark.parametrize("plugins", [[], header_only_plugins()], ids=["bare", "plugins"])
async def test_the_testing_client_hands_each_event_over_before_the_next_is_written(
    plugins: list[gw.Plugin],
) -> None:
    upstream = sse_upstream()
    key = "in-process"
    seen: list[int] = []
    gateway = in_process_gateway(upstream, plugins)
    async with client(gateway) as http, client(upstream) as side:
        with anyio.fail_after(30):
            url = f"/sse/events?n=10&key={key}&ack_timeout=5"
            async with http.stream("GET", url) as response:
                assert response.status_code == 200
                name = ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        name = line[6:].strip()
                        assert name in ("tick", "end"), f"after events {seen}: {line}"
                    elif line.startswith("data:") and name == "tick":
                        i = json.loads(line[5:])["i"]
                        seen.append(i)
                        acked = await side.post("/ack", params={"key": key, "i": i})
                        assert acked.status_code == 204
    assert seen == list(range(10))


# On trio, reading a stream only partly leaves httpx's own async generators (the response's
# iterators) to the garbage collector, which trio reports: that is httpx's, not the gateway's.
partial_reads = pytest.mark.filterwarnings("ignore:Async generator 'httpx.:ResourceWarning")


@partial_reads
async def test_the_testing_client_reads_the_start_of_an_endless_stream() -> None:
    async with client(in_process_gateway(sse_upstream())) as http:
        with anyio.fail_after(10):
            async with (
                http.stream("GET", "/sse/heartbeat?every=0.01&for=3600") as response,
                contextlib.aclosing(response.aiter_lines()) as lines,
            ):
                assert [await anext(lines) for _ in range(3)] == [": open", "", ": heartbeat 1"]


class Endless:
    """An ASGI app that sends numbered chunks until its send fails, counting them."""

    def __init__(self) -> None:
        self.sent = 0
        self.ended_by: BaseException | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send(
                    {"type": "http.response.body", "body": b"%d;" % self.sent, "more_body": True}
                )
                self.sent += 1
        except OSError as exc:
            self.ended_by = exc


@partial_reads
async def test_the_app_sends_its_next_chunk_only_once_the_client_read_the_last() -> None:
    app = Endless()
    transport = StreamingASGITransport(app, grace=0.1)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
        http.stream("GET", "/") as response,
        contextlib.aclosing(response.aiter_raw()) as chunks,
    ):
        for i in range(5):
            assert await anext(chunks) == b"%d;" % i
            assert app.sent <= i + 1
    assert isinstance(app.ended_by, OSError)


@partial_reads
async def test_closing_a_response_early_tells_the_gateway_its_client_left() -> None:
    logged: list[tuple[int, object]] = []

    @attrs.frozen
    class Recorder(gw.Plugin):
        name = "recorder"

        async def log(self, ctx: Any) -> None:
            logged.append((ctx.response.status_code, ctx.shared.get("client_disconnected")))

    gateway = in_process_gateway(sse_upstream(), [Recorder()])
    async with client(gateway) as http:
        async with (
            http.stream("GET", "/sse/heartbeat?every=0.01&for=3600") as response,
            contextlib.aclosing(response.aiter_lines()) as lines,
        ):
            assert await anext(lines) == ": open"
        # Closed: the gateway saw its client leave, and its request ended (the log phase ran)
        # before the block was left.
        assert logged == [(200, True)]


async def test_work_after_the_response_is_done_when_the_client_has_it() -> None:
    finished: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        await anyio.sleep(0.05)
        finished.append("background")

    async with client(app) as http:
        response = await http.get("/")
        assert response.content == b"done"
        assert finished == ["background"]


async def test_an_app_that_fails_before_answering_raises_in_the_test() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise LookupError("no answer")

    async with client(app) as http:
        with pytest.raises(LookupError, match="no answer"):
            await http.get("/")


async def test_a_client_used_without_async_with_gets_whole_responses() -> None:
    http = client(in_process_gateway(sse_upstream()))
    try:
        response = await http.get("/sse/events?n=3")
    finally:
        await http.aclose()
    assert response.status_code == 200
    assert response.text.count("event: tick") == 3
