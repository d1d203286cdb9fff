"""examples/websocket_chat.py runs, in-process and as a script, and does what it says."""

from __future__ import annotations

import subprocess
import sys

import httpx
from test_examples import ROOT, load_example

from pygateway.testing import client


async def test_the_chat_example_relays_between_consumers_and_refuses_what_it_should() -> None:
    results = await load_example("websocket_chat").main()
    assert results == {
        "bob heard": "ada: hello, bob",
        "ada heard": "ada: hello, bob",
        "too big": 1009,
        "foreign origin": 403,
        "no key": 401,
    }


async def test_the_chat_route_answers_plain_http_with_426() -> None:
    example = load_example("websocket_chat")
    async with client(example.gateway) as http:
        response: httpx.Response = await http.get("/chat")
    assert response.status_code == 426


def test_the_chat_example_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, "examples/websocket_chat.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "bob heard: ada: hello, bob" in done.stdout
