"""Router scaling: does `Router.match` cost the same with 10,000 routes as with 10?

    python benchmarks/router_bench.py [--rounds 9] [--budget-ms 30] [--large 10000]

Builds Routers with 10 and with 10,000 routes of a realistic mix (distinct prefixes like
`/svc1234/v1`; per block of 20 routes: 4 with methods, 2 with a host, 1 with a wildcard host,
1 regex path with a literal prefix, i.e. 5% regex), then times `Router.match` for requests
that hit each kind of route (the last one of its kind, so a scanning router would pay for all
the routes before it) and for a miss (404). Each figure is the median over several rounds
(alternating between the two sizes, so load from other processes weighs on both alike) of
the mean time per call.

A second mix (`+prefixless`) turns one more route per block into a regex whose literal prefix
is only `/` (`~/(?<version>v\\d+)/svcN/...`): such routes cannot be indexed by path, so it
shows what regexes without a literal prefix cost.

Prints one table per mix and, last, one JSON line with every figure (µs per match).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import pygateway as gw
from pygateway.routing import Router

Request = tuple[str, str, int, str, tuple[tuple[bytes, bytes], ...]]

# The kind of route i is BLOCK[i % 20]; the 10-route config uses SMALL, which has one route
# of each kind, so both configs can serve the same requests.
BLOCK = (
    "prefix", "methods", "prefix", "host", "prefix", "methods", "prefix", "regex", "prefix",
    "methods", "prefix", "host", "prefix", "prefixless", "prefix", "methods", "prefix",
    "wildcard", "prefix", "prefix",
)  # fmt: skip
SMALL = (
    "prefix", "methods", "prefix", "host", "prefix", "wildcard", "prefix", "regex",
    "prefixless", "prefix",
)  # fmt: skip


def build(count: int, *, prefixless: bool) -> tuple[list[tuple[gw.Route, None]], dict[str, int]]:
    """`count` routes, and the index of the last route of each kind."""
    kinds = SMALL if count < len(BLOCK) else BLOCK
    routes = []
    last: dict[str, int] = {}
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "prefixless" and not prefixless:
            kind = "prefix"
        last[kind] = i
        fields: dict[str, Any] = {"name": f"r{i}", "paths": [f"/svc{i}/v1"]}
        if kind == "regex":
            fields["paths"] = [rf"~/svc{i}/items/(?<id>\d+)$"]
        elif kind == "prefixless":
            fields["paths"] = [rf"~/(?<version>v\d+)/svc{i}/(?<rest>.*)"]
        elif kind == "host":
            fields["hosts"] = [f"api{i}.example.com"]
        elif kind == "wildcard":
            fields["hosts"] = [f"*.tenant{i}.example.com"]
        elif kind == "methods":
            fields["methods"] = ["GET", "POST"]
        routes.append((gw.Route(**fields), None))
    return routes, last


def requests_for(last: dict[str, int]) -> dict[str, tuple[Request, str | None]]:
    """The requests to time, each with the name of the route it must match."""
    none: tuple[tuple[bytes, bytes], ...] = ()
    p, m, h, w, r = (last[k] for k in ("prefix", "methods", "host", "wildcard", "regex"))
    out: dict[str, tuple[Request, str | None]] = {
        "prefix": (("GET", "gw.test", 80, f"/svc{p}/v1/users/42", none), f"r{p}"),
        "methods": (("POST", "gw.test", 80, f"/svc{m}/v1/orders", none), f"r{m}"),
        "host": (("GET", f"api{h}.example.com", 80, f"/svc{h}/v1/a", none), f"r{h}"),
        "wildcard host": (("GET", f"x.tenant{w}.example.com", 80, f"/svc{w}/v1", none), f"r{w}"),
        "regex": (("GET", "gw.test", 80, f"/svc{r}/items/1234", none), f"r{r}"),
    }
    if "prefixless" in last:
        n = last["prefixless"]
        out["prefixless regex"] = (("GET", "gw.test", 80, f"/v2/svc{n}/x", none), f"r{n}")
    out["miss (404)"] = (("GET", "gw.test", 80, "/nothing/here", none), None)
    return out


def calls_per_round(match: Callable[..., object], request: Request, budget_ms: float) -> int:
    """How many calls fit in about `budget_ms` (at least 1,000)."""
    start = time.perf_counter_ns()
    for _ in range(200):
        match(*request)
    return max(1_000, int(budget_ms * 1e6 * 200 / (time.perf_counter_ns() - start)))


def one_round(match: Callable[..., object], request: Request, calls: int) -> float:
    """The mean ns per `match(*request)` over `calls` calls."""
    method, host, port, path, headers = request
    start = time.perf_counter_ns()
    for _ in range(calls):
        match(method, host, port, path, headers)
    return (time.perf_counter_ns() - start) / calls


def measure(
    sizes: tuple[int, ...], *, prefixless: bool, budget_ms: float, rounds: int
) -> dict[str, dict[int, float]]:
    """Per request kind and size, the median µs per match. Rounds of the sizes alternate, so
    load from other processes weighs on both alike."""
    results: dict[str, dict[int, float]] = {"build (ms)": {}}
    cases: dict[int, tuple[Router, dict[str, tuple[Request, str | None]]]] = {}
    for size in sizes:
        routes, last = build(size, prefixless=prefixless)
        started = time.perf_counter()
        router = Router(routes)
        results["build (ms)"][size] = (time.perf_counter() - started) * 1000
        requests = requests_for(last)
        for label, (request, expected) in requests.items():
            found = router.match(*request)
            name = found.route.name if found is not None else None
            if name != expected:
                sys.exit(f"{size} routes, {label}: matched {name!r}, expected {expected!r}")
        cases[size] = (router, requests)
    for label in cases[sizes[0]][1]:
        calls = {
            size: calls_per_round(router.match, requests[label][0], budget_ms)
            for size, (router, requests) in cases.items()
        }
        samples: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(rounds):
            for size, (router, requests) in cases.items():
                samples[size].append(one_round(router.match, requests[label][0], calls[size]))
        results[label] = {size: statistics.median(samples[size]) / 1000 for size in sizes}
    return results


def print_table(title: str, results: dict[str, dict[int, float]], sizes: tuple[int, int]) -> None:
    small, large = sizes
    print(f"\n{title}")
    print(f"{'request':<18}{f'{small} routes':>14}{f'{large:,} routes':>16}{'ratio':>8}")
    for label, by_size in results.items():
        unit = "   " if label.startswith("build") else " µs"
        a, b = by_size[small], by_size[large]
        print(f"{label:<18}{a:>11.2f}{unit}{b:>13.2f}{unit}{b / a:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Router.match time, 10 vs 10,000 routes")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--budget-ms", type=float, default=30, help="time per round")
    parser.add_argument("--large", type=int, default=10_000)
    args = parser.parse_args()
    sizes = (10, args.large)
    report: dict[str, Any] = {"unit": "us_per_match", "sizes": list(sizes)}
    for prefixless in (False, True):
        title = "realistic mix" + (" +prefixless regexes" if prefixless else "")
        results = measure(
            sizes, prefixless=prefixless, budget_ms=args.budget_ms, rounds=args.rounds
        )
        print_table(title, results, sizes)
        report[title] = {
            label: {
                "small": by[sizes[0]],
                "large": by[sizes[1]],
                "ratio": by[sizes[1]] / by[sizes[0]],
            }
            for label, by in results.items()
        }
        ratios = [
            by[sizes[1]] / by[sizes[0]] for label, by in results.items() if "build" not in label
        ]
        report[title]["worst match ratio"] = max(ratios)
        print(f"worst match ratio (large/small): {max(ratios):.2f}")
    print(json.dumps(report, ensure_ascii=False))


if __name__ == "__main__":
    main()
