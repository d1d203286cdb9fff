"""examples/observability.py runs, in-process and as a script, and does what it says: every
request is in the access log, in the metrics and at the collector, under one request id."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "observability.py"


def load_example() -> Any:
    """Import the example once per test session (as tests/test_examples.py does)."""
    module_name = "_example_observability"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


async def test_the_observability_example_logs_counts_and_ships_every_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = await load_example().main()
    output = capsys.readouterr().out

    statuses = [status for _, status, _ in results["responses"]]
    ids = [request_id for _, _, request_id in results["responses"]]
    assert statuses == [200, 200, 401, 200, 404]
    assert len(set(ids)) == 5
    # The access log: one JSON line per request, on stdout, in order.
    access = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [(a["request_id"], a["status"]) for a in access] == list(zip(ids, statuses, strict=True))
    assert [a["consumer"] for a in access] == [None, None, None, "alice", None]
    # Prometheus counted each one.
    assert results["requests by code"] == {"200": 3.0, "401": 1.0, "404": 1.0}
    # The collector got http-log's entry of each one.
    assert sorted(results["collected"]) == sorted(zip(ids, statuses, strict=True))
    assert "pygateway_http_requests_total{" in output
    # The example cleans up after itself: the access log is off again.
    assert not logging.getLogger("pygateway.access").handlers


def test_the_observability_example_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    access = [json.loads(line) for line in lines if line.startswith("{")]
    assert [a["status"] for a in access] == [200, 200, 401, 200, 404]
    assert "the collector received 5 http-log entries" in result.stdout
    assert result.stderr == ""
