"""Fault under load: one of three Targets dies mid-run and comes back. Do clients notice?

    python benchmarks/fault_under_load.py                        # 20 s, 50 concurrent clients
    python benchmarks/fault_under_load.py --seconds 60 --concurrency 100
    python benchmarks/fault_under_load.py --no-healthchecks      # the same Upstream without them
    python benchmarks/fault_under_load.py --delay 0.05           # requests in flight at the stop

Three targets (tests/targets.py, t0 t1 t2) sit behind one Upstream with passive and active
health checks and a Service with 5 retries; pygateway runs under uvicorn in a subprocess
(`--in-thread`: in this process). httpx clients send GET / for the whole run; at 25% of it
t1 stops (its port refuses connections, its open connections are dropped), at 60% it starts
again on the same port.

A request belongs to the phase in which it was sent: `before` t1 stops, `down` (sent after
t1's stop completed) or `after` (sent after its restart completed). Counted per phase: which
target answered (the x-target header), and errors (non-200 answers and exceptions, by kind).
The run fails (exit 1) if any request failed, if t1 served nothing after its restart (active
checks must bring it back), or if health checks are configured but no /health probe ever
reached a target. Exit 2: the gateway could not be set up (e.g. this pygateway does not
accept the health checks config yet).

Output: a summary on stdout, and benchmarks/results/fault_under_load.json (`--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import ssl
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
# One implementation of the targets (and of server start-up): the test kit's.
sys.path.insert(0, str(ROOT / "tests"))

from serverutil import PYTHON, ServerProcess, free_port  # noqa: E402
from targets import TargetServer, target_servers  # noqa: E402

HEALTHCHECKS: dict[str, Any] = {
    "passive": {"unhealthy": {"tcp_failures": 1, "timeouts": 1, "http_failures": 3}},
    "active": {
        "type": "http",
        "http_path": "/health",
        "timeout": 1,
        "healthy": {"interval": 1, "successes": 1},
        "unhealthy": {"interval": 1, "tcp_failures": 1, "http_failures": 1},
    },
}
RETRIES = 5
STOP_AT, RESTART_AT = 0.25, 0.60
VICTIM = 1  # which target dies: t1
PHASES = ("before", "down", "after")
CLIENT_TIMEOUT = 10.0
SAMPLES = 20


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# -- the gateway ---------------------------------------------------------------------------


def build_gateway(addresses: list[str], healthchecks: dict[str, Any] | None) -> Any:
    """One Upstream over `addresses` behind one Service; SystemExit(2) naming the problem if
    this pygateway refuses the configuration."""
    import pygateway as gw

    upstream: dict[str, Any] = {"name": "backend", "targets": [gw.Target(a) for a in addresses]}
    if healthchecks is not None:
        upstream["healthchecks"] = healthchecks
    try:
        return gw.Gateway(
            upstreams=[gw.Upstream(**upstream)],
            services=[
                gw.Service(
                    name="api",
                    url="http://backend:8000",
                    retries=RETRIES,
                    routes=[gw.Route(paths=["/"])],
                )
            ],
        )
    except (TypeError, ValueError, gw.PygatewayError) as exc:
        what = "the health checks config" if healthchecks is not None else "the Upstream"
        hint = " (run with --no-healthchecks to measure without them)" if healthchecks else ""
        raise SystemExit(
            f"error: this pygateway does not accept {what}: {type(exc).__name__}: {exc}{hint}"
        ) from exc


def serve_child(spec: str, port: int) -> None:
    """The `--serve` mode: the gateway of `spec` under uvicorn, as `pygateway run` serves."""
    import uvicorn

    config = json.loads(spec)
    gateway = build_gateway(config["addresses"], config["healthchecks"])
    uvicorn.run(
        gateway,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )


@contextlib.contextmanager
def running_gateway(
    targets: list[TargetServer], healthchecks: dict[str, Any] | None, in_thread: bool
) -> Iterator[str]:
    """Serve the gateway; yields its URL. SystemExit(2) if it does not come up."""
    addresses = [t.address for t in targets]
    if in_thread:
        from upstreams import serve_asgi

        with serve_asgi(build_gateway(addresses, healthchecks), lifespan=True) as server:
            yield server.url
        return
    port = free_port()
    spec = json.dumps({"addresses": addresses, "healthchecks": healthchecks})
    argv = [PYTHON, str(Path(__file__).resolve()), "--serve", spec, "--port", str(port)]
    process = ServerProcess(argv, port, cwd=ROOT)
    try:
        process.start()
    except RuntimeError as exc:
        raise SystemExit(f"error: the gateway did not start: {exc}") from exc
    try:
        yield process.url
    finally:
        process.close()
        # Anything it logged (tracebacks of failed requests) belongs in the report.
        output = process.output().strip()
        if output:
            log("gateway output:\n" + output)


# -- the load ------------------------------------------------------------------------------


class Tally:
    """What the clients saw, by the phase each request was sent in."""

    def __init__(self, seconds: float) -> None:
        self.phase = "before"
        self.by_target = {p: Counter[str]() for p in PHASES}
        self.errors = {p: Counter[str]() for p in PHASES}
        self.requests = Counter[str]()
        self.latencies: dict[str, list[float]] = {p: [] for p in PHASES}
        self.timeline = [Counter[str]() for _ in range(math.ceil(seconds) + 1)]
        self.start = time.monotonic()
        self.phase_start = {"before": 0.0}
        self.first_after_restart: float | None = None
        self.elapsed = 0.0
        #: The first few failures in full, to tell one cause from another.
        self.samples: list[dict[str, Any]] = []

    def now(self) -> float:
        return time.monotonic() - self.start

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.phase_start[phase] = self.now()

    def record(
        self, phase: str, sent: float, target: str | None, error: str | None, detail: str = ""
    ) -> None:
        done = self.now()
        self.requests[phase] += 1
        second = self.timeline[min(int(done), len(self.timeline) - 1)]
        if error is not None:
            self.errors[phase][error] += 1
            second["errors"] += 1
            if len(self.samples) < SAMPLES:
                sample = {"sent_s": round(sent, 3), "done_s": round(done, 3), "phase": phase}
                self.samples.append({**sample, "error": error, "detail": detail})
            return
        assert target is not None
        self.by_target[phase][target] += 1
        self.latencies[phase].append(done - sent)
        second[target] += 1
        if phase == "after" and target == f"t{VICTIM}" and self.first_after_restart is None:
            self.first_after_restart = done - self.phase_start["after"]


def error_kind(response: httpx.Response) -> str:
    """'<status> <message>' from the gateway's JSON error body, or the body's start."""
    try:
        message = str(response.json().get("message", ""))
    except (ValueError, AttributeError):
        message = response.text[:60]
    return f"{response.status_code} {message}".strip()


async def client_loop(client: httpx.AsyncClient, tally: Tally, end: float) -> None:
    while tally.now() < end:
        await one_request(client, tally)


async def one_request(client: httpx.AsyncClient, tally: Tally) -> None:
    phase, sent = tally.phase, tally.now()
    try:
        response = await client.get("/")
    except httpx.HTTPError as exc:
        tally.record(phase, sent, None, type(exc).__name__, repr(exc.__context__ or exc))
        return
    if response.status_code != 200:
        detail = f"{dict(response.headers)} {response.text[:200]}"
        tally.record(phase, sent, None, error_kind(response), detail)
    elif "x-target" not in response.headers:
        tally.record(phase, sent, None, "200 without x-target")
    else:
        tally.record(phase, sent, response.headers["x-target"], None)


async def fault_script(victim: TargetServer, tally: Tally, seconds: float) -> None:
    await anyio.sleep(seconds * STOP_AT)
    log(f"{tally.now():5.1f}s  stopping {victim.name} ({victim.address})")
    await anyio.to_thread.run_sync(victim.stop)
    tally.enter("down")
    await anyio.sleep(max(0.0, seconds * RESTART_AT - tally.now()))
    log(f"{tally.now():5.1f}s  restarting {victim.name}")
    await anyio.to_thread.run_sync(victim.start)
    tally.enter("after")


async def drive(url: str, targets: list[TargetServer], seconds: float, concurrency: int) -> Tally:
    # A client each, on one keep-alive connection: one httpx pool shared by many connections
    # costs more per request the more it holds, and would measure itself, not the gateway.
    # One TLS context for all (unused over http, but costly to make 50 times).
    limits = httpx.Limits(max_connections=1)
    tls = ssl.create_default_context()
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, limits=limits, timeout=CLIENT_TIMEOUT, verify=tls)
            )
            for _ in range(concurrency)
        ]
        # Connections open (client to gateway, gateway to targets) before the clock starts.
        problems: list[str] = []
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(warm_up, client, problems)
        if problems:
            raise SystemExit(f"error: {problems[0]} ({len(problems)} of {concurrency} clients)")
        for target in targets:
            target.reset_hits()
        tally = Tally(seconds)
        async with anyio.create_task_group() as tg:
            tg.start_soon(fault_script, targets[VICTIM], tally, seconds)
            for client in clients:
                tg.start_soon(client_loop, client, tally, seconds)
        tally.elapsed = tally.now()
    return tally


async def warm_up(client: httpx.AsyncClient, problems: list[str]) -> None:
    try:
        response = await client.get("/")
    except httpx.HTTPError as exc:
        problems.append(f"the gateway does not answer: {exc!r}")
        return
    if response.status_code != 200 or "x-target" not in response.headers:
        problems.append(
            f"the gateway does not proxy to the targets: {response.status_code} "
            f"{dict(response.headers)} {response.text[:200]}"
        )


# -- the report ----------------------------------------------------------------------------


def latency_ms(seconds: list[float]) -> dict[str, float | None]:
    """p50 and p99 of successful requests, in ms."""
    ordered = sorted(seconds)
    return {
        name: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)
        if ordered
        else None
        for name, q in (("p50", 0.5), ("p99", 0.99))
    }


def report(
    tally: Tally,
    targets: list[TargetServer],
    opts: argparse.Namespace,
    healthchecks: dict[str, Any] | None,
) -> dict[str, Any]:
    import pygateway

    elapsed = tally.elapsed
    total = sum(tally.requests.values())
    errors: Counter[str] = sum(tally.errors.values(), Counter())
    victim = targets[VICTIM].name
    after = tally.by_target["after"][victim]
    bounds = [*(tally.phase_start.get(p, elapsed) for p in PHASES), elapsed]
    phases = {
        phase: {
            "from_s": round(bounds[i], 2),
            "to_s": round(bounds[i + 1], 2),
            "requests": tally.requests[phase],
            "by_target": {t.name: tally.by_target[phase][t.name] for t in targets},
            "errors": dict(tally.errors[phase].most_common()),
            "latency_ms": latency_ms(tally.latencies[phase]),
        }
        for i, phase in enumerate(PHASES)
    }
    probes = sum(t.health_hits for t in targets)
    failures = []
    if not total:
        failures.append("no request completed")
    if errors:
        failures.append(f"{sum(errors.values())} failed requests")
    if not after:
        failures.append(f"{victim} served nothing after its restart")
    if healthchecks is not None and "active" in healthchecks and not probes:
        failures.append("active health checks configured, but no /health probe reached a target")
    return {
        "config": {
            "seconds": opts.seconds,
            "concurrency": opts.concurrency,
            "target_delay_s": opts.delay,
            "gateway": "thread" if opts.in_thread else "subprocess",
            "healthchecks": healthchecks,
            "retries": RETRIES,
            "victim": victim,
            "stop_at_s": round(opts.seconds * STOP_AT, 2),
            "restart_at_s": round(opts.seconds * RESTART_AT, 2),
            "pygateway": pygateway.__version__,
        },
        "total_requests": total,
        "errors_total": sum(errors.values()),
        "errors": dict(errors.most_common()),
        "requests_per_second": round(total / elapsed, 1) if elapsed else None,
        "latency_ms": latency_ms([v for p in PHASES for v in tally.latencies[p]]),
        "phases": phases,
        "restarted_target": {
            "name": victim,
            "served_after_restart": after,
            "first_answer_after_restart_s": None
            if tally.first_after_restart is None
            else round(tally.first_after_restart, 2),
        },
        # As the targets counted them: tries the gateway made, retries included.
        "target_side": {t.name: {"hits": t.hits, "health_probes": t.health_hits} for t in targets},
        "error_samples": tally.samples,
        "timeline": [
            {"second": i, **{k: s[k] for k in sorted(s)}} for i, s in enumerate(tally.timeline)
        ],
        "failures": failures,
        "passed": not failures,
    }


def summary(result: dict[str, Any]) -> str:
    config = result["config"]
    names = list(result["target_side"])
    lines = [
        f"fault under load: {config['concurrency']} clients for {config['seconds']} s, "
        f"gateway in a {config['gateway']}, health checks "
        f"{'on' if config['healthchecks'] else 'OFF'}, retries {config['retries']}; "
        f"{config['victim']} down from {config['stop_at_s']} s to {config['restart_at_s']} s",
        f"  requests {result['total_requests']}  ({result['requests_per_second']} req/s)  "
        f"errors {result['errors_total']}  latency ms p50 {result['latency_ms']['p50']} "
        f"p99 {result['latency_ms']['p99']}",
        "  phase     from-to s      requests  "
        + "".join(f"{n:>8s}" for n in names)
        + "  errors   p50 ms   p99 ms",
    ]
    for phase, p in result["phases"].items():
        span = f"{p['from_s']:5.1f}-{p['to_s']:<5.1f}"
        counts = "".join(f"{p['by_target'][n]:8d}" for n in names)
        errors = sum(p["errors"].values())
        p50, p99 = (p["latency_ms"][k] for k in ("p50", "p99"))
        lines.append(
            f"  {phase:8s}  {span:12s}  {p['requests']:8d}  {counts}  {errors:6d}  {p50!s:>7s}"
            f"  {p99!s:>7s}"
        )
    for kind, count in result["errors"].items():
        lines.append(f"  error x{count}: {kind}")
    side = result["target_side"]
    lines.append(
        "  target side: "
        + ", ".join(f"{n} {s['hits']} hits / {s['health_probes']} probes" for n, s in side.items())
    )
    restarted = result["restarted_target"]
    lines.append(
        f"  {restarted['name']} after restart: {restarted['served_after_restart']} answers, "
        f"first after {restarted['first_answer_after_restart_s']} s"
    )
    lines.append("PASSED" if result["passed"] else "FAILED: " + "; ".join(result["failures"]))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the run")
    parser.add_argument("--concurrency", type=int, default=50, help="clients sending at once")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds each target waits before answering"
    )
    parser.add_argument(
        "--no-healthchecks", action="store_true", help="the Upstream without health checks"
    )
    parser.add_argument("--in-thread", action="store_true", help="serve the gateway in-process")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "fault_under_load.json"
    )
    parser.add_argument("--serve", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve is not None:
        serve_child(opts.serve, opts.port)
        return 0
    if opts.seconds <= 0 or opts.concurrency < 1:
        parser.error("--seconds and --concurrency must be positive")

    healthchecks = None if opts.no_healthchecks else HEALTHCHECKS
    with target_servers(3) as targets:
        for target in targets:
            target.delay = opts.delay
        with running_gateway(targets, healthchecks, opts.in_thread) as url:
            log(f"gateway {url}, targets {', '.join(t.address for t in targets)}")
            tally = anyio.run(drive, url, targets, opts.seconds, opts.concurrency)
        result = report(tally, targets, opts, healthchecks)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    log(f"results in {opts.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit as exc:
        if isinstance(exc.code, str):
            log(exc.code)
            sys.exit(2)
        raise
