"""Micro-benchmarks of pygateway's own per-request work, without a server or a network.

    python benchmarks/micro.py [--quick] [--only router,dispatch,headers] [--json FILE]
    nox -s micro -- --quick

- router: `Router.match` with 1 / 100 / 10,000 routes of one kind (prefix, host, regex);
  the request matches the last route of the configuration, so a router that scanned the
  routes in order would pay for all of them;
- dispatch: one request through `Gateway` in process (MockEngine answering 200 with 100
  bytes, the ASGI app called directly) with 0 / 1 / 5 global no-op plugins (`access` and
  `log`): the difference between the rows is what plugin dispatch costs;
- headers: `request_headers` (the client's headers filtered), `forwarded_headers`
  (X-Forwarded-*, X-Real-IP, Via, the request id) and `response_headers` on a typical
  browser-like header set.

Each figure is the median over `--repeat` rounds of the mean time per call in a round of
about `--round-ms`; rounds of the configurations alternate, so load from other processes
weighs on them alike. Figures are µs per call on this interpreter: compare runs on one
machine. A table per group on stdout, and every figure as JSON in
`benchmarks/results/micro.json` (or `--json`).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, MutableMapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import attrs

import pygateway as gw
from pygateway import _proxy
from pygateway.engines import MockEngine, UpstreamRequest, UpstreamResponse
from pygateway.routing import Router

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (1, 100, 10_000)
KINDS = ("prefix", "host", "regex")
PLUGIN_COUNTS = (0, 1, 5)
BODY = b"0123456789" * 9 + b"abcdefghi\n"

# What a browser-ish client sends through a gateway: 12 headers, one of them hop-by-hop.
CLIENT_HEADERS: list[tuple[bytes, bytes]] = [
    (b"host", b"api.example.com"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    (b"accept", b"application/json, text/plain, */*"),
    (b"accept-language", b"en-GB,en;q=0.5"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"referer", b"https://app.example.com/orders"),
    (b"origin", b"https://app.example.com"),
    (b"authorization", b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl"),
    (b"cookie", b"session=4f2a9c; theme=dark"),
    (b"x-request-id", b"5b1e6a0c-3f7d-4d7e-9d6a-1f1f3c2b8e11"),
    (b"connection", b"keep-alive"),
    (b"sec-fetch-mode", b"cors"),
]
UPSTREAM_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"application/json"),
    (b"content-length", b"100"),
    (b"date", b"Thu, 26 Nov 2026 12:00:00 GMT"),
    (b"server", b"nginx"),
    (b"connection", b"keep-alive"),
    (b"keep-alive", b"timeout=60"),
    (b"cache-control", b"no-store"),
    (b"x-upstream-id", b"7"),
]


def log(*args: Any) -> None:
    print(*args, flush=True)


# -- timing ---------------------------------------------------------------------------------


def calibrate(call: Callable[[], object], round_ms: float) -> int:
    """How many calls fit in about `round_ms` (at least 100)."""
    start = time.perf_counter_ns()
    for _ in range(100):
        call()
    per_call = (time.perf_counter_ns() - start) / 100
    return max(100, int(round_ms * 1e6 / max(per_call, 1.0)))


def one_round(call: Callable[[], object], calls: int) -> float:
    """The mean µs per `call()` over `calls` calls."""
    start = time.perf_counter_ns()
    for _ in range(calls):
        call()
    return (time.perf_counter_ns() - start) / calls / 1000


def measure(
    cases: dict[str, Callable[[], object]], repeat: int, round_ms: float
) -> dict[str, float]:
    """Median µs per call of each case, its rounds alternating with the other cases'. The
    garbage collector is off while timing (as in timeit): a collection of the 10,000-route
    routers' objects would land on whichever case happened to run."""
    calls = {label: calibrate(call, round_ms) for label, call in cases.items()}
    samples: dict[str, list[float]] = {label: [] for label in cases}
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            for label, call in cases.items():
                samples[label].append(one_round(call, calls[label]))
    finally:
        gc.enable()
    return {label: statistics.median(values) for label, values in samples.items()}


# -- router ---------------------------------------------------------------------------------


def route(kind: str, i: int) -> gw.Route:
    if kind == "prefix":
        return gw.Route(name=f"r{i}", paths=[f"/svc{i}/v1"])
    if kind == "host":
        return gw.Route(name=f"r{i}", hosts=[f"api{i}.example.com"], paths=["/"])
    return gw.Route(name=f"r{i}", paths=[rf"~/svc{i}/items/(?<id>\d+)$"])


def request_for(kind: str, i: int) -> tuple[str, str, int, str, tuple[tuple[bytes, bytes], ...]]:
    if kind == "prefix":
        return ("GET", "gw.test", 80, f"/svc{i}/v1/users/42", ())
    if kind == "host":
        return ("GET", f"api{i}.example.com", 80, "/orders/7", ())
    return ("GET", "gw.test", 80, f"/svc{i}/items/1234", ())


def bench_router(repeat: int, round_ms: float, sizes: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in KINDS:
        cases: dict[str, Callable[[], object]] = {}
        build_ms: dict[str, float] = {}
        for size in sizes:
            started = time.perf_counter()
            router = Router([(route(kind, i), None) for i in range(size)])
            build_ms[str(size)] = (time.perf_counter() - started) * 1000
            request = request_for(kind, size - 1)
            found = router.match(*request)
            if found is None or found.route.name != f"r{size - 1}":
                sys.exit(f"router: {kind} x {size} matched {found and found.route.name!r}")

            def call(match: Callable[..., object] = router.match, r: Any = request) -> object:
                return match(*r)

            cases[str(size)] = call
        out[kind] = {"match_us": measure(cases, repeat, round_ms), "build_ms": build_ms}
    return out


# -- plugin dispatch ------------------------------------------------------------------------


def noop_plugin(n: int) -> gw.Plugin:
    """A global plugin whose `access` and `log` do nothing, named `bench-noop-<n>`."""

    async def access(self: gw.Plugin, ctx: gw.Context) -> None:
        return None

    async def log(self: gw.Plugin, ctx: gw.Context) -> None:
        return None

    namespace = {"name": f"bench-noop-{n}", "priority": 1000 + n, "access": access, "log": log}
    cls = attrs.frozen(type(f"Noop{n}", (gw.Plugin,), namespace))
    return cls()  # type: ignore[no-any-return]


def answer(request: UpstreamRequest) -> UpstreamResponse:
    return UpstreamResponse(200, [(b"content-type", b"text/plain")], content=BODY)


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/orders/7",
        "raw_path": b"/orders/7",
        "query_string": b"",
        "root_path": "",
        "headers": CLIENT_HEADERS,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: MutableMapping[str, Any]) -> None:
    return None


async def answer_of(g: gw.Gateway) -> tuple[int, bytes]:
    """The status and body `g` answers `scope()` with."""
    sent: list[MutableMapping[str, Any]] = []

    async def keep(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await g(scope(), _receive, keep)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def gateway_with(plugins: int) -> gw.Gateway:
    engine = MockEngine(answer)
    service = gw.Service(name="s", url="http://upstream.test", routes=[gw.Route(paths=["/"])])
    return gw.Gateway(
        services=[service], plugins=[noop_plugin(n) for n in range(plugins)], engine=engine
    )


async def dispatch_rounds(repeat: int, round_ms: float) -> dict[str, float]:
    """µs per request through a started Gateway with 0/1/5 no-op plugins (async calls, so
    the rounds are timed here rather than by `measure`)."""
    gateways = {str(n): gateway_with(n) for n in PLUGIN_COUNTS}
    async with AsyncExitStack() as stack:  # closed in reverse order, as their task groups nest
        for g in gateways.values():
            await stack.enter_async_context(g)

        async def run(g: gw.Gateway, calls: int) -> float:
            start = time.perf_counter_ns()
            for _ in range(calls):
                await g(scope(), _receive, _send)
            return (time.perf_counter_ns() - start) / calls / 1000

        for label, g in gateways.items():
            status, body = await answer_of(g)
            if status != 200 or body != BODY:
                sys.exit(f"dispatch: {label} plugins: the gateway answered {status} {body!r}")
        calls = {}
        for label, g in gateways.items():
            per_call = await run(g, 50)
            calls[label] = max(50, int(round_ms * 1000 / max(per_call, 0.1)))
        samples: dict[str, list[float]] = {label: [] for label in gateways}
        for _ in range(repeat):
            for label, g in gateways.items():
                samples[label].append(await run(g, calls[label]))
                assert isinstance(g.engine, MockEngine)
                g.engine.requests.clear()  # MockEngine keeps every request
        return {label: statistics.median(values) for label, values in samples.items()}


def bench_dispatch(repeat: int, round_ms: float) -> dict[str, Any]:
    result: dict[str, float] = anyio.run(dispatch_rounds, repeat, round_ms)
    base = result["0"]
    return {
        "request_us": result,
        "per_plugin_us": {n: (result[n] - base) / int(n) for n in result if n != "0"},
    }


# -- headers --------------------------------------------------------------------------------


def captured_context() -> gw.Context:
    """A real Context, as the runloop builds it for one request, taken from a plugin."""
    seen: list[gw.Context] = []

    async def access(self: gw.Plugin, ctx: gw.Context) -> None:
        seen.append(ctx)

    cls = attrs.frozen(type("Capture", (gw.Plugin,), {"name": "bench-capture", "access": access}))
    g = gw.Gateway(
        services=[gw.Service(name="s", url="http://upstream.test", routes=[gw.Route(paths=["/"])])],
        plugins=[cls()],
        engine=MockEngine(answer),
    )

    async def one() -> None:
        async with g:
            await g(scope(), _receive, _send)

    anyio.run(one)
    return seen[0]


def bench_headers(repeat: int, round_ms: float) -> dict[str, Any]:
    ctx = captured_context()
    host = "api.example.com"
    cases: dict[str, Callable[[], object]] = {
        "request_headers": lambda: _proxy.request_headers(CLIENT_HEADERS),
        "forwarded_headers": lambda: _proxy.forwarded_headers(ctx, host, ""),
        "response_headers": lambda: _proxy.response_headers(UPSTREAM_HEADERS),
    }
    return {"us": measure(cases, repeat, round_ms)}


# -- output ---------------------------------------------------------------------------------


def print_router(result: dict[str, Any], sizes: tuple[int, ...]) -> None:
    print("\nRouter.match, µs per call (the request matches the last route)")
    print(f"{'kind':<8}" + "".join(f"{f'{s:,} routes':>15}" for s in sizes) + f"{'ratio':>8}")
    for kind, figures in result.items():
        us = figures["match_us"]
        ratio = us[str(sizes[-1])] / us[str(sizes[0])]
        print(f"{kind:<8}" + "".join(f"{us[str(s)]:>15.2f}" for s in sizes) + f"{ratio:>8.2f}")
    print(f"{'build ms':<8}" + "".join(f"{'':>15}" for _ in sizes))
    for kind, figures in result.items():
        ms = figures["build_ms"]
        print(f"  {kind:<6}" + "".join(f"{ms[str(s)]:>15.1f}" for s in sizes))


def print_dispatch(result: dict[str, Any]) -> None:
    print("\nOne request through Gateway in process (MockEngine), µs per request")
    for n, us in result["request_us"].items():
        extra = f"  (+{result['per_plugin_us'][n]:.2f} µs per plugin)" if n != "0" else ""
        print(f"  {n} no-op plugins {us:>10.2f}{extra}")


def print_headers(result: dict[str, Any]) -> None:
    print(f"\nHeader building, µs per call ({len(CLIENT_HEADERS)} client headers)")
    for name, us in result["us"].items():
        print(f"  {name:<20}{us:>8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 short rounds (a smoke test)")
    parser.add_argument("--repeat", type=int, default=9, help="rounds per figure (median)")
    parser.add_argument("--round-ms", type=float, default=50, help="time per round")
    parser.add_argument("--only", default="router,dispatch,headers", metavar="GROUPS")
    parser.add_argument("--json", type=Path, default=RESULTS / "micro.json")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.round_ms = 3, 10
    groups = {g.strip() for g in args.only.split(",") if g.strip()}
    unknown = groups - {"router", "dispatch", "headers"}
    if unknown:
        parser.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    report: dict[str, Any] = {
        "unit": "us",
        "python": sys.version.split()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "repeat": args.repeat,
        "round_ms": args.round_ms,
    }
    steps: list[tuple[str, Callable[[], Any], Callable[[Any], None]]] = [
        ("router", lambda: bench_router(args.repeat, args.round_ms, SIZES),
         lambda r: print_router(r, SIZES)),
        ("dispatch", lambda: bench_dispatch(args.repeat, args.round_ms), print_dispatch),
        ("headers", lambda: bench_headers(args.repeat, args.round_ms), print_headers),
    ]  # fmt: skip
    for name, run, show in steps:
        if name in groups:
            log(f"== {name}")
            report[name] = run()
            show(report[name])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
