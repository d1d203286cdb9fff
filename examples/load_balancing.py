"""Balancing over three real upstream servers: weights, sticky clients, a target that dies.

    python examples/load_balancing.py

Starts three small HTTP servers on 127.0.0.1 (each answers with its own name), puts a
gateway in front of them, and prints what happens:

1. weighted round-robin: 60 requests over weights 3:2:1;
2. consistent hashing on a header: each user always lands on the same server;
3. one server dies: retries hide it from clients, passive checks take it out, and when it
   comes back, active checks (GET /health every 0.2 s) bring it back into rotation.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Any

import anyio
import uvicorn

import pygateway as gw
from pygateway.testing import client


class Server:
    """A tiny upstream: answers every request with its name (uvicorn in a thread)."""

    def __init__(self, name: str) -> None:
        self.name = name
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = self.name.encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    def start(self) -> None:
        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_level="error", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join()
            self._server = self._thread = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def build_gateway(servers: list[Server]) -> gw.Gateway:
    a, b, c = (s.address for s in servers)
    return gw.Gateway(
        upstreams=[
            gw.Upstream(
                name="weighted",
                targets=[gw.Target(a, weight=3), gw.Target(b, weight=2), gw.Target(c, weight=1)],
            ),
            gw.Upstream(
                name="sticky",
                hash_on="header",
                hash_on_header="x-user",
                targets=[gw.Target(a), gw.Target(b), gw.Target(c)],
            ),
            gw.Upstream(
                name="checked",
                targets=[gw.Target(a), gw.Target(b), gw.Target(c)],
                healthchecks={
                    "passive": {"unhealthy": {"tcp_failures": 1}},
                    "active": {
                        "http_path": "/health",
                        "healthy": {"successes": 1},
                        "unhealthy": {"interval": 0.2, "tcp_failures": 1},
                    },
                },
            ),
        ],
        services=[
            gw.Service(name="weighted", host="weighted", routes=[gw.Route(paths=["/weighted"])]),
            gw.Service(name="sticky", host="sticky", routes=[gw.Route(paths=["/sticky"])]),
            gw.Service(name="checked", host="checked", routes=[gw.Route(paths=["/checked"])]),
        ],
    )


async def main() -> dict[str, Any]:
    servers = [Server(name) for name in ("a", "b", "c")]
    for server in servers:
        server.start()
    gateway = build_gateway(servers)
    results: dict[str, Any] = {}
    try:
        async with gateway, client(gateway) as http:
            weighted = collections.Counter([(await http.get("/weighted")).text for _ in range(60)])
            results["weighted"] = dict(sorted(weighted.items()))
            print("weights 3:2:1 over 60 requests:", results["weighted"])

            sticky = {}
            for user in ("alice", "bob", "carol", "dave"):
                answers = [await http.get("/sticky", headers={"x-user": user}) for _ in range(5)]
                sticky[user] = {response.text for response in answers}
            results["sticky"] = sticky
            print("each user's server, over 5 requests each:", sticky)

            servers[1].stop()
            answers = [await http.get("/checked") for _ in range(12)]
            statuses = collections.Counter(response.status_code for response in answers)
            health = gateway.upstream_health("checked")["data"]
            results["while b is down"] = {
                "statuses": dict(statuses),
                "health": {t["target"]: t["health"] for t in health},
            }
            print("b stopped; statuses:", dict(statuses), "health:", [t["health"] for t in health])

            servers[1].start()
            with anyio.fail_after(10):
                # Active checks probe it every 0.2 s; poll the health API meanwhile.
                while gateway.upstream_health("checked")["data"][1]["health"] != "HEALTHY":  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            after = collections.Counter([(await http.get("/checked")).text for _ in range(12)])
            results["after b came back"] = dict(sorted(after.items()))
            print("b restarted and found healthy; 12 requests:", results["after b came back"])
    finally:
        for server in servers:
            server.stop()
    return results


if __name__ == "__main__":
    anyio.run(main)
