"""`pygateway run` and `pygateway demo` as a user runs them: real processes, real sockets."""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serverutil import PYTHON, ServerProcess, echo_upstream, free_port

import pygateway

pytestmark = pytest.mark.servers

MODULE = [PYTHON, "-m", "pygateway"]
#: The console script installed with the package, beside the interpreter running the tests.
SCRIPT = Path(sys.prefix, "bin", "pygateway")


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with echo_upstream() as server:
        yield server


def _config(directory: Path, upstream_port: int) -> Path:
    path = directory / "kong.json"
    config = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "echo",
                "url": f"http://127.0.0.1:{upstream_port}/v1",
                "routes": [{"name": "echo", "paths": ["/api"]}],
            }
        ],
    }
    path.write_text(json.dumps(config))
    return path


def _bad_config(directory: Path) -> Path:
    path = directory / "bad.yaml"
    path.write_text(
        "_format_version: '3.0'\n"
        "services:\n"
        "  - name: echo\n"
        "    url: http://127.0.0.1:9/\n"
        "    routes:\n"
        "      - name: ok\n"
        "        paths: [/ok]\n"
        "      - name: broken\n"
        "        paths: [no-leading-slash]\n"
    )
    return path


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, trust_env=False)


def test_run_serves_a_declarative_config_and_proxies_through_it(
    tmp_path: Path, upstream: ServerProcess
) -> None:
    config = _config(tmp_path, upstream.port)
    port = free_port()
    server = ServerProcess([*MODULE, "run", str(config), "--port", str(port)], port)
    with server, _client(server) as client:
        proxied = client.get("/api/users", params={"id": "7"}, headers={"x-real-ip": "1.2.3.4"})
        missing = client.get("/elsewhere")
        assert proxied.status_code == 200, server.describe()
        echo = proxied.json()
        assert echo["path"] == "/v1/users"
        assert echo["query"] == "id=7"
        # No --trusted-ips: the client cannot name its own IP, and uvicorn's proxy headers
        # are off, so the gateway sees the socket peer.
        assert echo["headers"]["x-real-ip"] == ["127.0.0.1"]
        # uvicorn adds no Server header of its own: the upstream's passes through alone, and
        # the gateway's own answers carry the gateway's.
        assert proxied.headers.get_list("server") == ["uvicorn"]  # the upstream's server
        assert missing.headers.get_list("server") == [f"pygateway/{pygateway.__version__}"]
        assert missing.status_code == 404
        assert missing.json()["message"] == "no Route matched with those values"
        # SIGTERM stops it gracefully (uvicorn re-raises the signal once it has shut down).
        assert server.stop() in (0, -signal.SIGTERM), server.describe()
        assert "Application shutdown complete" in server.output()


def test_run_proxies_websockets_to_a_real_websocket_client(
    tmp_path: Path, upstream: ServerProcess
) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    config = _config(tmp_path, upstream.port)
    port = free_port()
    server = ServerProcess([*MODULE, "run", str(config), "--port", str(port)], port)
    with server, connect(f"ws://127.0.0.1:{port}/api/chat", subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=10) == b"\x00\x01"
        ws.send("close:4001:bye")  # EchoUpstream closes with that code and reason
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")


def test_run_with_workers_and_trusted_ips_serves_the_config_and_believes_trusted_peers(
    tmp_path: Path, upstream: ServerProcess
) -> None:
    config = _config(tmp_path, upstream.port)
    port = free_port()
    argv = [*MODULE, "run", str(config), "--port", str(port), "--workers", "2"]
    argv += ["--trusted-ips", "127.0.0.1,::1", "--log-level", "warning"]
    server = ServerProcess(argv, port)
    with server, _client(server) as client:
        for _ in range(4):
            response = client.get("/api/x", headers={"x-real-ip": "198.51.100.9"})
            assert response.status_code == 200, server.describe()
            # 127.0.0.1 is trusted: its X-Real-IP names the client.
            assert response.json()["headers"]["x-real-ip"] == ["198.51.100.9"]


def test_run_with_an_invalid_config_exits_1_naming_the_field(tmp_path: Path) -> None:
    bad = _bad_config(tmp_path)
    result = _run([*MODULE, "run", str(bad), "--port", str(free_port())])
    assert result.returncode == 1
    assert "is invalid" in result.stderr
    assert "services[0].routes[1].paths[0]" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_a_missing_config_file_exits_1(tmp_path: Path) -> None:
    result = _run([*MODULE, "run", str(tmp_path / "nope.yaml"), "--port", str(free_port())])
    assert result.returncode == 1
    assert "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["run", "demo"])
def test_a_port_in_use_exits_1_with_a_clear_message(command: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run([*MODULE, command, "--port", str(port)])
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: the address is in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (["--port", "70000"], "cannot listen on 127.0.0.1:70000: the port must be 0-65535"),
        (["--host", "256.0.0.1", "--port", "8080"], "cannot listen on 256.0.0.1:8080: "),
    ],
    ids=["port-out-of-range", "bad-host"],
)
def test_an_address_that_cannot_be_listened_on_exits_1_with_the_reason(
    where: list[str], reason: str
) -> None:
    result = _run([*MODULE, "run", *where])
    assert result.returncode == 1
    assert reason in result.stderr
    assert "in use" not in result.stderr
    assert "Traceback" not in result.stderr


def _curl_to_httpx(line: str) -> tuple[str, str, dict[str, str], bytes | None]:
    """(method, url, headers, body) of one of the demo's `curl` lines."""
    words = shlex.split(line, comments=True)
    assert words[0] == "curl"
    method, headers, body, url = "GET", {}, None, ""
    args = iter(words[1:])
    for word in args:
        if word == "-X":
            method = next(args)
        elif word == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-d":
            body = next(args).encode()
            method = "POST" if method == "GET" else method
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif word.startswith("http"):
            url = word
        else:
            assert word == "-i", f"unexpected curl option {word!r} in {line!r}"
    return method, url, headers, body


def test_demo_prints_curl_commands_that_it_answers() -> None:
    port = free_port()
    server = ServerProcess([*MODULE, "demo", "--port", str(port)], port)
    with server, httpx.Client(timeout=30, trust_env=False) as client:
        lines = [ln.strip() for ln in server.output().splitlines() if "curl " in ln]
        assert lines, server.describe()
        answers: dict[str, httpx.Response] = {}
        for line in lines:
            method, url, headers, body = _curl_to_httpx(line)
            assert url.startswith(f"http://127.0.0.1:{port}/")
            answers[line] = client.request(method, url, headers=headers, content=body)

    by_path = {
        (r.request.method, r.request.url.path, r.request.headers.get("accept", "")): r
        for r in answers.values()
    }
    echoed = by_path["GET", "/echo/hello", "*/*"]
    assert echoed.status_code == 200
    assert echoed.json()["path"] == "/hello"
    assert echoed.json()["query"] == "x=1"
    posted = by_path["POST", "/echo", "*/*"]
    assert posted.status_code == 200
    assert posted.json()["body"] == "hi"
    user = by_path["GET", "/users/42", "*/*"]
    assert user.status_code == 200
    assert user.json()["path"] == "/users/42"
    blocked = by_path["GET", "/blocked", "*/*"]
    assert blocked.status_code == 403
    assert blocked.json()["message"] == "Blocked by the demo"
    missing = by_path["GET", "/nowhere", "*/*"]
    assert missing.status_code == 404
    assert missing.json()["message"] == "no Route matched with those values"
    html = by_path["GET", "/nowhere", "text/html"]
    assert html.status_code == 404
    assert html.headers["content-type"].startswith("text/html")
    assert len(answers) == len(lines) == 6


def test_version_prints_the_package_version() -> None:
    result = _run([*MODULE, "--version"])
    assert result.returncode == 0
    assert result.stdout.strip() == f"pygateway {pygateway.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", pygateway.__version__)


def test_the_console_script_is_installed_beside_the_interpreter() -> None:
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: is the package installed in this venv?"


@pytest.mark.parametrize(
    "args",
    [["--version"], ["--help"], ["run", "--help"], ["run", "BAD"], ["frobnicate"]],
    ids=["version", "help", "run-help", "bad-config", "unknown-command"],
)
def test_the_console_script_behaves_as_python_dash_m(args: list[str], tmp_path: Path) -> None:
    if args == ["run", "BAD"]:
        args = ["run", str(_bad_config(tmp_path)), "--port", str(free_port())]
    module = _run([*MODULE, *args])
    script = _run([str(SCRIPT), *args])
    assert (script.returncode, script.stdout, script.stderr) == (
        module.returncode,
        module.stdout,
        module.stderr,
    )
    assert module.stdout or module.stderr
