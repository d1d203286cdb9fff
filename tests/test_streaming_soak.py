"""Soak: a 10-minute server-sent-events stream that carries only heartbeats is not cut.

Excluded from the default run (`-m "not soak"`); run it with `nox -s soak` or
`pytest -m soak tests/test_streaming_soak.py`. The gateway runs under uvicorn in front of
test_streaming's upstream, through a Service with read_timeout 60000 ms: the upstream sends
an SSE comment every 15 s and no event for 10 minutes, then an `end` event.
"""

from __future__ import annotations

import time

import httpx
import pytest
from test_streaming import gateway_server, parse_events, sse_upstream_server

pytestmark = [pytest.mark.soak, pytest.mark.servers]

MINUTES = 10
EVERY = 15.0


def test_an_idle_but_alive_stream_lasts_ten_minutes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    duration = MINUTES * 60
    with (
        sse_upstream_server() as upstream,
        gateway_server("uvicorn", tmp_path_factory.mktemp("soak"), upstream) as gateway,
        httpx.Client(timeout=httpx.Timeout(10, read=EVERY * 4), trust_env=False) as http,
    ):
        started = time.monotonic()
        url = f"{gateway.url}/soak/heartbeat?every={EVERY}&for={duration}"
        with http.stream("GET", url) as response:
            assert response.status_code == 200
            events = list(parse_events(response.iter_lines()))
        lasted = time.monotonic() - started
    beats = [data for name, data in events if name == "comment" and data.startswith("heartbeat")]
    assert events[-1][0] == "end", events[-3:]
    assert len(beats) >= duration // EVERY
    assert lasted >= duration
