"""`pygateway run --status-port`: /metrics on 127.0.0.1, apart from the proxy port."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serverutil import PYTHON, ServerProcess, free_port, port_accepts

pytestmark = pytest.mark.servers

MODULE = [PYTHON, "-m", "pygateway"]


def _config(directory: Path) -> Path:
    """A gateway that needs no upstream: request-termination answers, prometheus counts."""
    path = directory / "kong.json"
    config = {
        "_format_version": "3.0",
        "routes": [
            {
                "name": "hello",
                "paths": ["/hello"],
                "plugins": [
                    {
                        "name": "request-termination",
                        "config": {"status_code": 200, "message": "hi"},
                    }
                ],
            },
            {
                "name": "gone",
                "paths": ["/gone"],
                "plugins": [{"name": "request-termination", "config": {"status_code": 410}}],
            },
        ],
        "plugins": [
            {"name": "prometheus", "config": {"status_code_metrics": True, "prefix": "kong"}}
        ],
    }
    path.write_text(json.dumps(config))
    return path


def _wait_for(port: int, server: ServerProcess) -> None:
    deadline = time.monotonic() + 20
    while not port_accepts(port):
        assert time.monotonic() < deadline, server.describe()
        time.sleep(0.05)


def _requests_total(text: str) -> dict[tuple[str, str, str], float]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return {
        (s.labels["route"], s.labels["code"], s.labels["source"]): s.value
        for s in families["kong_http_requests"].samples
        if s.name == "kong_http_requests_total"
    }


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, env=env
    )


def _env_without_multiproc() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}


def test_the_status_port_serves_metrics_that_count_the_proxied_requests(
    tmp_path: Path,
) -> None:
    port, status_port = free_port(), free_port()
    argv = [*MODULE, "run", str(_config(tmp_path)), "--port", str(port)]
    argv += ["--status-port", str(status_port), "--log-level", "warning"]
    server = ServerProcess(argv, port, env=None)
    # Single-process mode: not even an empty value (prometheus-client would then write its
    # files to the working directory).
    server.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with server, httpx.Client(timeout=30, trust_env=False) as http:
        _wait_for(status_port, server)
        for _ in range(3):
            assert http.get(f"{server.url}/hello").status_code == 200, server.describe()
        assert http.get(f"{server.url}/gone").status_code == 410
        # The proxy port does not serve the metrics: they are not for clients.
        assert http.get(f"{server.url}/metrics").status_code == 404
        scraped = http.get(f"http://127.0.0.1:{status_port}/metrics")
        assert scraped.status_code == 200, server.describe()
        assert scraped.headers["content-type"].startswith("text/plain")
        counts = _requests_total(scraped.text)
        assert counts[("hello", "200", "kong")] == 3.0
        assert counts[("gone", "410", "kong")] == 1.0
        assert http.get(f"http://127.0.0.1:{status_port}/other").status_code == 404


def test_the_status_port_with_workers_adds_up_every_workers_counts(tmp_path: Path) -> None:
    multiproc = tmp_path / "metrics"
    multiproc.mkdir()
    port, status_port = free_port(), free_port()
    argv = [*MODULE, "run", str(_config(tmp_path)), "--port", str(port), "--workers", "2"]
    argv += ["--status-port", str(status_port), "--log-level", "warning"]
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    server = ServerProcess(argv, port, env=env)
    with server:
        _wait_for(status_port, server)
        # A new connection per request, so both workers are likely to answer some.
        for _ in range(10):
            with httpx.Client(timeout=30, trust_env=False) as http:
                assert http.get(f"{server.url}/hello").status_code == 200, server.describe()
        with httpx.Client(timeout=30, trust_env=False) as http:
            scraped = http.get(f"http://127.0.0.1:{status_port}/metrics")
        assert scraped.status_code == 200, server.describe()
        assert _requests_total(scraped.text)[("hello", "200", "kong")] == 10.0


def test_workers_without_a_multiprocess_dir_are_refused_naming_the_variable(
    tmp_path: Path,
) -> None:
    argv = [*MODULE, "run", str(_config(tmp_path)), "--port", str(free_port())]
    argv += ["--workers", "2", "--status-port", str(free_port())]
    result = _run(argv, _env_without_multiproc())
    assert result.returncode == 1
    assert "PROMETHEUS_MULTIPROC_DIR" in result.stderr


@pytest.mark.parametrize("same", [True, False])
def test_a_status_port_that_cannot_be_listened_on_is_refused(tmp_path: Path, same: bool) -> None:
    import socket

    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        status_port = port if same else taken.getsockname()[1]
        argv = [*MODULE, "run", str(_config(tmp_path)), "--port", str(port)]
        argv += ["--status-port", str(status_port)]
        result: Any = _run(argv, _env_without_multiproc())
    assert result.returncode == 1
    assert f"--status-port {status_port}" in result.stderr
    assert ("same port" if same else "in use") in result.stderr
