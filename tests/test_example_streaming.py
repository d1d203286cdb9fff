"""examples/streaming.py runs, in-process and as a script, and does what it says: the events
come through one by one, heartbeats included, and a silent upstream gets a 504."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import anyio
import pytest
from test_examples import ROOT, load_example

from pygateway.testing import client


async def test_the_streaming_example_streams_every_event_and_times_out_the_silent_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = await load_example("streaming").main()

    assert results == {
        "status": 200,
        "content_type": "text/event-stream",
        "events": ["tick 0", "tick 1", "tick 2", "tick 3", "tick 4", "bye"],
        "heartbeats": 5,
        "silent_status": 504,
    }
    assert "/ticker/silent -> 504" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:Async generator 'httpx.:ResourceWarning")
async def test_the_example_gateway_hands_over_the_first_event_before_the_stream_ends() -> None:
    example = load_example("streaming")
    async with client(example.gateway) as http:
        with anyio.fail_after(10):
            # 10,000 events take 500 s to write: the first arrives long before that.
            async with (
                http.stream("GET", "/ticker/ticks?n=10000") as response,
                contextlib.aclosing(response.aiter_lines()) as lines,
            ):
                assert [await anext(lines) for _ in range(3)] == [
                    "event: tick",
                    "id: 0",
                    "data: tick 0",
                ]


def test_the_streaming_example_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, "examples/streaming.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "tick 4" in done.stdout
    assert "/ticker/silent -> 504" in done.stdout
