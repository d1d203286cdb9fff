"""Client cost of the engines alone: N GET requests at c=1 and c=50, in-process.

    python benchmarks/engine_bench.py [-n 20000] [--backend asyncio|uvloop|trio] [--rounds 1]

A tiny keep-alive HTTP/1.1 responder runs in a subprocess (asyncio, 100-byte answers);
this process sends N requests through each engine (`HttpxEngine`, `NativeEngine` with
httptools on its default transport, the asyncio.Protocol fast path on asyncio, and on anyio
streams, and with h11) from c concurrent tasks, and prints the client CPU per request
(`time.process_time`, so the upstream's CPU is not counted) and the requests per second.
The machine is whatever it is: run it several times, on a quiet machine, and compare
engines within one run.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import anyio

from pygateway.engines import Engine, HttpxEngine, NativeEngine, UpstreamRequest

UPSTREAM = r"""
import asyncio, sys

BODY = b"x" * 100
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n" + BODY


class Responder(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        count = self.buffer.count(b"\r\n\r\n")  # GETs only: no bodies to frame
        if count:
            self.buffer = self.buffer[self.buffer.rindex(b"\r\n\r\n") + 4 :]
            self.transport.write(ANSWER * count)


async def main():
    server = await asyncio.get_running_loop().create_server(Responder, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
"""

ENGINES: dict[str, Callable[[], Engine]] = {
    "HttpxEngine": HttpxEngine,
    "NativeEngine(httptools)": lambda: NativeEngine(parser="httptools"),
    "NativeEngine(httptools,anyio)": lambda: NativeEngine(parser="httptools", transport="anyio"),
    "NativeEngine(h11)": lambda: NativeEngine(parser="h11"),
}


def _request(port: int) -> UpstreamRequest:
    return UpstreamRequest(
        method="GET",
        scheme="http",
        host="127.0.0.1",
        port=port,
        target=b"/bench?x=1",
        headers=[(b"host", b"upstream.test"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
    )


async def _run(engine: Engine, port: int, total: int, concurrency: int) -> tuple[float, float]:
    """(client CPU seconds, wall seconds) for `total` requests over `concurrency` tasks."""
    per_task = total // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            response = await engine.send(_request(port))
            try:
                async for _chunk in response.stream:
                    pass
            finally:
                await response.aclose()

    cpu, wall = time.process_time(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return time.process_time() - cpu, time.perf_counter() - wall


async def _bench(port: int, total: int, rounds: int) -> None:
    print(f"{'engine':<32}{'c':>4}{'µs CPU/req':>12}{'req/s':>10}")
    for _ in range(rounds):
        for name, make in ENGINES.items():
            for concurrency in (1, 50):
                async with make() as engine:
                    await _run(engine, port, min(total, 2000), concurrency)  # warm-up
                    cpu, wall = await _run(engine, port, total, concurrency)
                done = total // concurrency * concurrency
                print(f"{name:<32}{concurrency:>4}{cpu / done * 1e6:>12.1f}{done / wall:>10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000, help="requests per engine and c")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE, text=True)
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        print(f"backend {args.backend}, {args.n} requests per line, upstream pid {upstream.pid}")
        backend = "trio" if args.backend == "trio" else "asyncio"
        options = {"use_uvloop": True} if args.backend == "uvloop" else {}
        anyio.run(_bench, port, args.n, args.rounds, backend=backend, backend_options=options)
    finally:
        upstream.terminate()
        upstream.wait(10)
        if upstream.stdout is not None:
            upstream.stdout.close()


if __name__ == "__main__":
    main()
