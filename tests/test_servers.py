"""The gateway served by real ASGI servers, in front of a real upstream, over real sockets.

Each server (uvicorn, hypercorn on asyncio, hypercorn on trio, granian) runs the same gateway
module as a subprocess on a free 127.0.0.1 port, started once for this module. The upstream
is `pygateway.testing.EchoUpstream` under uvicorn, also a subprocess.

What the gateway sees as the client address (its `client_ip`, which it forwards upstream as
X-Real-IP and appends to X-Forwarded-For), with a client on 127.0.0.1 that sends
`X-Forwarded-For: 203.0.113.7`:

- uvicorn --no-proxy-headers: 127.0.0.1, the socket peer (as `pygateway run` configures it);
- uvicorn with its defaults: 203.0.113.7. uvicorn trusts X-Forwarded-For from 127.0.0.1
  (`--forwarded-allow-ips`) and rewrites the ASGI `client` before the gateway sees it, so any
  local client can pick its IP. Run the gateway under uvicorn with --no-proxy-headers and let
  the gateway's own `trusted_ips` decide;
- hypercorn (asyncio and trio) and granian: 127.0.0.1, the socket peer.
"""

from __future__ import annotations

import hashlib
import os
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from serverutil import PYTHON, CannedUpstream, ServerProcess, echo_upstream, free_port

pytestmark = pytest.mark.servers

SPOOFED = "203.0.113.7"
MIB = 1024 * 1024

GATEWAY_MODULE = '''
"""The gateway the servers run (written by tests/test_servers.py)."""
import os
from pathlib import Path

import attrs

import pygateway as gw


@attrs.frozen
class LifespanMarker(gw.Plugin):
    """Writes a file at startup and at shutdown, so the tests can see the server's lifespan."""

    name = "lifespan-marker"

    async def startup(self, gateway):
        Path(os.environ["MARKER_DIR"], "started").write_text("1")

    async def shutdown(self, gateway):
        Path(os.environ["MARKER_DIR"], "stopped").write_text("1")


gateway = gw.Gateway(
    services=[
        gw.Service(
            name="echo",
            url="http://127.0.0.1:" + os.environ["UPSTREAM_PORT"] + "/base",
            routes=[gw.Route(name="echo", paths=["/echo"])],
        ),
        gw.Service(
            name="canned",
            url="http://127.0.0.1:" + os.environ["CANNED_PORT"],
            routes=[gw.Route(name="canned", paths=["/canned"])],
        ),
        gw.Service(
            name="refused",
            url="http://127.0.0.1:" + os.environ["REFUSED_PORT"],
            retries=1,
            routes=[gw.Route(name="refused", paths=["/refused"])],
        ),
    ],
    plugins=[LifespanMarker()],
)
'''


def _uvicorn(port: int, *extra: str) -> list[str]:
    return [
        *(PYTHON, "-m", "uvicorn", "gwapp:gateway", "--host", "127.0.0.1", "--port", str(port)),
        *("--log-level", "warning", *extra),
    ]


def _hypercorn(port: int, worker: str) -> list[str]:
    return [PYTHON, "-m", "hypercorn", "-k", worker, "-b", f"127.0.0.1:{port}", "gwapp:gateway"]


def _granian(port: int) -> list[str]:
    return [
        *(PYTHON, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"),
        *("--port", str(port), "--workers", "1", "--log-level", "warning", "gwapp:gateway"),
    ]


SERVERS: dict[str, Callable[[int], list[str]]] = {
    "uvicorn": lambda port: _uvicorn(port, "--no-proxy-headers"),
    "hypercorn-asyncio": lambda port: _hypercorn(port, "asyncio"),
    "hypercorn-trio": lambda port: _hypercorn(port, "trio"),
    "granian": _granian,
}


def _pattern_sha256(size: int) -> str:
    """The sha256 of EchoUpstream's `/bytes/<size>` body (bytes 0..255 repeated)."""
    digest = hashlib.sha256()
    block = bytes(range(256)) * 4096
    while size > 0:
        digest.update(block[: min(size, len(block))])
        size -= len(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with echo_upstream() as server:
        yield server


NOT_MODIFIED = (
    b"HTTP/1.1 304 Not Modified\r\n"
    b'ETag: "v1"\r\n'
    b"Content-Length: 1234\r\n"  # allowed on a 304: the size a 200 would have had
    b"Connection: close\r\n"
    b"\r\n"
)


@pytest.fixture(scope="module")
def canned() -> Iterator[CannedUpstream]:
    with CannedUpstream(NOT_MODIFIED) as server:
        yield server


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("gwapp")
    (directory / "gwapp.py").write_text(textwrap.dedent(GATEWAY_MODULE))
    return directory


def _start_gateway(
    argv_for: Callable[[int], list[str]],
    app_dir: Path,
    upstream: ServerProcess,
    name: str,
    canned_port: int = 9,
) -> tuple[ServerProcess, Path]:
    markers = app_dir / f"markers-{name}"
    markers.mkdir()
    port = free_port()
    env = {
        "PYTHONPATH": os.pathsep.join([str(app_dir), os.environ.get("PYTHONPATH", "")]),
        "UPSTREAM_PORT": str(upstream.port),
        "REFUSED_PORT": str(free_port()),  # nothing listens there
        "CANNED_PORT": str(canned_port),
        "MARKER_DIR": str(markers),
    }
    server = ServerProcess(argv_for(port), port, env=env, cwd=app_dir)
    server.start()
    return server, markers


def _appears(path: Path, timeout: float = 10.0) -> bool:
    """Wait for a marker file (servers may accept connections before their lifespan ran)."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


class Served:
    """A gateway under one server, and what its lifespan did before the first request."""

    def __init__(self, name: str, process: ServerProcess, started_before_requests: bool) -> None:
        self.name = name
        self.process = process
        self.url = process.url
        self.started_before_requests = started_before_requests

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, trust_env=False)


@pytest.fixture(scope="module", params=list(SERVERS))
def served(
    request: pytest.FixtureRequest,
    app_dir: Path,
    upstream: ServerProcess,
    canned: CannedUpstream,
) -> Iterator[Served]:
    name = str(request.param)
    process, markers = _start_gateway(SERVERS[name], app_dir, upstream, name, canned.port)
    try:
        # No request was sent yet: only the server's lifespan can have started the gateway.
        yield Served(name, process, _appears(markers / "started"))
    finally:
        process.close()


def _echo(response: httpx.Response, served: Served) -> dict[str, object]:
    assert response.status_code == 200, f"{response.text}\n{served.process.describe()}"
    payload: dict[str, object] = response.json()
    return payload


def test_a_get_with_a_query_reaches_the_upstream_below_the_service_path(
    served: Served, upstream: ServerProcess
) -> None:
    with served.client() as client:
        response = client.get("/echo/items/42", params={"q": "a b", "page": "2"})
    echo = _echo(response, served)
    assert echo["method"] == "GET"
    assert echo["path"] == "/base/items/42"
    assert echo["query"] == "q=a+b&page=2"
    headers = echo["headers"]
    assert isinstance(headers, dict)
    assert headers["x-forwarded-prefix"] == ["/echo"]
    assert headers["x-forwarded-path"] == ["/echo/items/42"]
    assert headers["host"] == [f"127.0.0.1:{upstream.port}"]  # preserve_host is off
    assert "via" in response.headers
    assert "x-pygateway-request-id" in response.headers


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_1_mib_request_body_reaches_the_upstream_intact(served: Served, framing: str) -> None:
    body = os.urandom(MIB)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]

    content = body if framing == "content-length" else chunks()
    with served.client() as client:
        response = client.post("/echo/upload", content=content)
    echo = _echo(response, served)
    assert echo["body_length"] == MIB
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_an_8_mib_upstream_response_streams_through_intact(served: Served) -> None:
    size = 8 * MIB
    digest = hashlib.sha256()
    received = 0
    with (
        served.client() as client,
        client.stream("GET", f"/echo/bytes/{size}", params={"chunk": 65536}) as response,
    ):
        assert response.status_code == 200, served.process.describe()
        for chunk in response.iter_raw():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == _pattern_sha256(size)


def test_a_client_leaving_mid_response_leaves_the_server_healthy(served: Served) -> None:
    with served.client() as client:
        with client.stream("GET", f"/echo/bytes/{64 * MIB}", params={"chunk": 65536}) as big:
            assert big.status_code == 200
            next(big.iter_raw())
        # Closing the stream early closes its connection; a new one works.
        assert client.get("/echo/after").status_code == 200
    assert "Traceback" not in served.process.output(), served.process.describe()


def test_a_path_no_route_matches_gets_kongs_404_json(served: Served) -> None:
    with served.client() as client:
        response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["message"] == "no Route matched with those values"
    assert body["request_id"] == response.headers["x-pygateway-request-id"]


def test_one_client_connection_serves_several_requests(served: Served) -> None:
    local_addresses = set()
    with served.client() as client:
        for i in range(5):
            response = client.get(f"/echo/{i}") if i % 2 else client.get("/nowhere")
            stream = response.extensions["network_stream"]
            local_addresses.add(stream.get_extra_info("client_addr"))
            assert response.status_code in (200, 404)
            assert response.headers.get("connection", "").lower() != "close"
    assert len(local_addresses) == 1


def test_a_304_with_a_content_length_is_relayed_without_breaking_the_connection(
    served: Served,
) -> None:
    addresses = set()
    with served.client() as client:
        for _ in range(2):
            response = client.get("/canned/file", headers={"if-none-match": '"v1"'})
            assert response.status_code == 304
            assert response.content == b""
            assert response.headers["etag"] == '"v1"'
            addresses.add(response.extensions["network_stream"].get_extra_info("client_addr"))
        # The connection is still good for another request.
        response = client.get("/nowhere")
        assert response.status_code == 404
        addresses.add(response.extensions["network_stream"].get_extra_info("client_addr"))
    assert len(addresses) == 1
    assert "Traceback" not in served.process.output(), served.process.describe()


def test_a_refused_upstream_connection_becomes_a_502(served: Served) -> None:
    with served.client() as client:
        response = client.get("/refused/anything")
    assert response.status_code == 502
    assert response.json()["message"] == (
        "An invalid response was received from the upstream server"
    )


def test_the_gateway_sees_the_socket_peer_not_the_clients_x_forwarded_for(
    served: Served,
) -> None:
    with served.client() as client:
        response = client.get("/echo/ip", headers={"x-forwarded-for": SPOOFED})
    headers = _echo(response, served)["headers"]
    assert isinstance(headers, dict)
    assert headers["x-real-ip"] == ["127.0.0.1"]
    assert headers["x-forwarded-for"] == [f"{SPOOFED}, 127.0.0.1"]


def test_the_servers_lifespan_starts_the_gateway_before_the_first_request(
    served: Served,
) -> None:
    assert served.started_before_requests, served.process.describe()


@pytest.mark.parametrize("name", list(SERVERS))
def test_stopping_the_server_runs_the_gateways_shutdown(
    name: str, app_dir: Path, upstream: ServerProcess
) -> None:
    process, markers = _start_gateway(SERVERS[name], app_dir, upstream, f"{name}-stop")
    try:
        with httpx.Client(base_url=process.url, timeout=30, trust_env=False) as client:
            assert client.get("/echo/").status_code == 200
        assert not (markers / "stopped").exists()
        process.stop()
    finally:
        process.close()
    assert (markers / "started").exists()
    assert (markers / "stopped").exists(), process.describe()


def test_uvicorn_by_default_takes_the_client_ip_from_a_local_clients_x_forwarded_for(
    app_dir: Path, upstream: ServerProcess
) -> None:
    # Documents the pitfall: without --no-proxy-headers, uvicorn rewrites the ASGI client
    # from X-Forwarded-For (it trusts 127.0.0.1), so the gateway never sees the real peer.
    process, _ = _start_gateway(_uvicorn, app_dir, upstream, "uvicorn-proxy-headers")
    try:
        with httpx.Client(base_url=process.url, timeout=30, trust_env=False) as client:
            response = client.get("/echo/ip", headers={"x-forwarded-for": SPOOFED})
    finally:
        process.close()
    assert response.status_code == 200, process.describe()
    headers = response.json()["headers"]
    assert headers["x-real-ip"] == [SPOOFED]
    assert headers["x-forwarded-for"] == [f"{SPOOFED}, {SPOOFED}"]


@pytest.mark.parametrize(
    "argv_for",
    [
        pytest.param(
            lambda port: _uvicorn(port, "--no-proxy-headers", "--root-path", "/gw"), id="uvicorn"
        ),
        pytest.param(
            lambda port: [*_hypercorn(port, "asyncio"), "--root-path", "/gw"], id="hypercorn"
        ),
    ],
)
def test_a_servers_root_path_is_below_the_routes_and_in_the_forwarded_prefix(
    argv_for: Callable[[int], list[str]],
    app_dir: Path,
    upstream: ServerProcess,
    request: pytest.FixtureRequest,
) -> None:
    # Behind a proxy that strips "/gw": uvicorn puts the root path in front of `path`,
    # hypercorn leaves `path` as received; the gateway routes the same either way.
    name = f"root-path-{request.node.callspec.id}"
    process, _ = _start_gateway(argv_for, app_dir, upstream, name)
    try:
        with httpx.Client(base_url=process.url, timeout=30, trust_env=False) as client:
            response = client.get("/echo/x")
    finally:
        process.close()
    assert response.status_code == 200, process.describe()
    headers = response.json()["headers"]
    assert response.json()["path"] == "/base/x"
    assert headers["x-forwarded-prefix"] == ["/gw/echo"]
    assert headers["x-forwarded-path"] == ["/gw/echo/x"]
