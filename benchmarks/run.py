"""pygateway side by side with the baselines of the shared proxy benchmark harness.

    python benchmarks/run.py            # default groups, the harness's 3 rounds (~22 min)
    python benchmarks/run.py --quick    # 1 short round (~5 min): does everything work?
    python benchmarks/run.py --group servers --group plugins   # named subsets (--help)
    python benchmarks/run.py --setup    # once: harness setup.sh + this checkout into its venv

One harness invocation (../shared/bench/proxy_bench.py, or $BENCH_DIR) measures the baselines
and the pygateway configurations (benchmarks/gateways/ under uvicorn, granian, hypercorn
with uvloop and with trio) together, on the same origin, load generator and CPU pinning;
then router_bench.py runs. Before measuring, the harness's check_apps.py checks that the
pygateway proxies forward correctly.

Results go to benchmarks/results/<timestamp>[-quick]/: `summary.json` and `summary.md`
(per config: req/s, p50, p99, c=1 p50, CPU µs per request, ratios to the fastest bare-ASGI
proxy on the same server and to proxy.py / Starlette+httpx; issue 8's budget lines, also
printed last), `plot.png` (plot.py), `small.jsonl` (harness summaries), `small.raw.jsonl`
(every run), `small.log` (progress and the harness table), `report.md` (the harness's
report.py), `derived.txt` (pygateway's own cost per request), `check.txt` and
`router.txt`. Arguments this script does not know are passed to the harness (e.g.
`-- --connections 100`).

The proxy commands run in the harness venv ($BENCH_VENV, default /tmp/bench/venv), which
must have this checkout installed (`--setup` does it). Figures are CPU-bound on one core
and only mean something on a quiet machine: nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
BENCH_DIR = Path(os.environ.get("BENCH_DIR") or ROOT.parent / "shared" / "bench")
BENCH_WORK = Path(os.environ.get("BENCH_WORK", "/tmp/bench"))
BENCH_VENV = Path(os.environ.get("BENCH_VENV") or BENCH_WORK / "venv")

# Baselines from the harness (`proxy_bench.py --list`), in table order.
BASELINES = [
    "direct",  # wrk straight at the upstream: the ceiling, and c=1 latency's zero
    "nginx-proxy",  # Kong's data plane minus Lua
    "proxypy",  # proxy.py's reverse proxy (budget: pygateway >= 8x)
    "starlette-httpx",  # the naive afternoon proxy (budget: pygateway >= 25x)
    "uvicorn-hello",  # uvicorn answering itself: ceiling of anything on uvicorn
    "uvicorn-httpx",  # bare ASGI + httpx.AsyncClient
    "uvicorn-httpcore",  # bare ASGI + httpcore pool (HttpxEngine calls the transport directly)
    "uvicorn-httpx2",  # bare ASGI + httpx2 (the pool-fixed fork: a drop-in engine candidate)
    "uvicorn-anyio-httptools",  # bare ASGI + anyio streams + httptools (NativeEngine's design)
    "uvicorn-proto-httptools",  # bare ASGI + asyncio.Protocol + httptools: fastest on uvicorn
    "granian-hello",
    "granian-httpx",
    "granian-proto-httptools",  # fastest bare-ASGI proxy on granian
    "hypercorn-anyio-httptools",  # fastest on hypercorn (uvloop worker)
    "hypercorn-trio-anyio-httptools",  # fastest on hypercorn (trio worker)
]
# The bare-ASGI proxies of the harness by server: the budget's "fastest bare-ASGI proxy of
# the table on the same server" is the one of these with the most req/s in the same run.
BARE = {
    "uvicorn": [
        "uvicorn-httpx",
        "uvicorn-httpcore",
        "uvicorn-httpx2",
        "uvicorn-aiohttp",
        "uvicorn-pyreqwest",
        "uvicorn-anyio-httptools",
        "uvicorn-proto-httptools",
    ],
    "granian": ["granian-httpx", "granian-aiohttp", "granian-proto-httptools"],
    "hypercorn": ["hypercorn-httpx", "hypercorn-anyio-httptools"],
    "hypercorn-trio": ["hypercorn-trio-httpx", "hypercorn-trio-anyio-httptools"],
}
SERVERS = list(BARE)
# Issue 8's configurations (a)-(e): suffix of the config name -> gateways module.
VARIANTS = {
    "": "passthrough",  # (a)
    "-auth-rl": "key_auth_ratelimit",  # (b) key-auth + rate-limiting (local)
    "-auth-rl-obs": "key_auth_ratelimit_observed",  # (c) (b) + prometheus + http-log
    "-10k-routes": "many_routes",  # (d) 10,000 routes
    "-cache-hit": "cache_hit",  # (e) proxy-cache hit
}
# The pygateway configurations: name -> (server, gateways module, is a proxy). First every
# variant on every server (`pygw-<server><suffix>`), then single-plugin extras on uvicorn.
PYGW = {
    f"pygw-{server}{suffix}": (server, module, True)
    for server in SERVERS
    for suffix, module in VARIANTS.items()
}
PYGW.update(
    {
        "pygw-uvicorn-terminate": ("uvicorn", "terminate", False),
        "pygw-uvicorn-noop": ("uvicorn", "noop_plugin", True),
        "pygw-uvicorn-balanced": ("uvicorn", "balanced", True),
        "pygw-uvicorn-key-auth": ("uvicorn", "key_auth", True),
        "pygw-uvicorn-ratelimit": ("uvicorn", "rate_limiting", True),
        "pygw-uvicorn-ratelimit-redis": ("uvicorn", "rate_limiting_redis", True),
        "pygw-uvicorn-observed": ("uvicorn", "observed", True),
    }
)
# Named sets for --only / --group. The default (servers + plugins + versus) is 17 configs:
# about 22 minutes for the harness's 3 rounds.
_FASTEST = [
    "uvicorn-proto-httptools",
    "uvicorn-anyio-httptools",
    "granian-proto-httptools",
    "hypercorn-anyio-httptools",
    "hypercorn-trio-anyio-httptools",
]
GROUPS = {
    # (a) on each server, next to the fastest bare-ASGI proxies of each server
    "servers": ["direct", "nginx-proxy", *_FASTEST, *(f"pygw-{s}" for s in SERVERS)],
    # (a)-(e) on uvicorn
    "plugins": [
        "direct",
        "uvicorn-proto-httptools",
        "uvicorn-anyio-httptools",
        *(f"pygw-uvicorn{suffix}" for suffix in VARIANTS),
    ],
    # the Python proxies a user could pick instead
    "versus": ["direct", "proxypy", "starlette-httpx", "pygw-uvicorn"],
    # (a)-(e) on every server (about 35 minutes)
    "matrix": [
        "direct",
        "nginx-proxy",
        *_FASTEST,
        *(f"pygw-{server}{suffix}" for server in SERVERS for suffix in VARIANTS),
    ],
    # single plugins and the server ceilings (issue 5's figures)
    "extras": [
        "direct",
        "uvicorn-hello",
        "granian-hello",
        "pygw-uvicorn",
        *(n for n, (_, module, _) in PYGW.items() if module not in VARIANTS.values()),
    ],
    "all": [*BASELINES, *PYGW],
}
DEFAULT_GROUPS = ["servers", "plugins", "versus"]
QUICK = ["--rounds", "1", "--duration", "5", "--warmup", "2", "--c1-duration", "2"]
# Derived figures: each pygateway config minus its references (same engine for pygw ones).
REFERENCES: dict[str, list[str]] = {
    "pygw-uvicorn-terminate": ["uvicorn-hello"],
    "pygw-uvicorn": [
        "uvicorn-hello",
        "uvicorn-httpx",
        "uvicorn-httpcore",
        "uvicorn-httpx2",
        "uvicorn-anyio-httptools",
        "uvicorn-proto-httptools",
    ],
    "pygw-granian": ["granian-hello", "granian-httpx", "granian-proto-httptools"],
    "pygw-hypercorn": ["hypercorn-anyio-httptools"],
    "pygw-hypercorn-trio": ["hypercorn-trio-anyio-httptools"],
    **{
        name: [f"pygw-{server}"]
        for name, (server, module, _) in PYGW.items()
        if module not in ("passthrough", "terminate")
    },
}
REFERENCES["pygw-uvicorn-cache-hit"].append("uvicorn-hello")
# The budget of issue 8: (pygateway variant suffix, minimum ratio to the fastest bare-ASGI
# proxy on the same server).
BUDGET_VS_BARE = [("", 0.9), ("-auth-rl", 0.8), ("-auth-rl-obs", 0.7)]
BUDGET_VS_OTHERS = [("proxypy", 8.0), ("starlette-httpx", 25.0)]
BUDGET_ROUTES = 0.95  # (d) req/s >= 95% of (a)'s
BUDGET_C1 = 1.3  # added c=1 p50 latency <= 1.3x the fastest bare-ASGI proxy's
BUDGET_RSS_MIB = 50  # 1 GiB streamed: peak RSS growth (benchmarks/stream_rss.py)


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def harness_templates() -> dict[str, str]:
    """The harness's own server command lines by server, so our flags match its baselines'.

    hypercorn runs the harness's worker classes: `uvloop` (asyncio on uvloop, as its
    hypercorn baselines) and `trio`."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import proxy_bench  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit(f"error: no benchmark harness at {BENCH_DIR} (set BENCH_DIR)") from None
    finally:
        sys.path.pop(0)
    hypercorn = getattr(
        proxy_bench,
        "HYPERCORN",
        "exec hypercorn --workers 1 --worker-class {k} --bind $PROXY_HOST:$PROXY_PORT "
        "--log-level warning {app}",
    )
    return {
        # The gateway handles X-Forwarded-* itself (trusted_ips): uvicorn must not rewrite
        # the client address, so proxy headers are off, as `pygateway run` does.
        "uvicorn": proxy_bench.UVICORN + " --no-proxy-headers",
        "granian": proxy_bench.GRANIAN,
        "hypercorn": hypercorn.replace("{k}", "uvloop"),
        "hypercorn-trio": hypercorn.replace("{k}", "trio"),
    }


def pygw_configs(names: list[str], engines: list[str]) -> list[tuple[str, str, bool]]:
    """(config name, harness command, is a proxy) for each pygateway config and engine."""
    templates = harness_templates()
    out = []
    for name in names:
        server, module, proxy = PYGW[name]
        cmd = templates[server].format(app=f"gateways.{module}:app")
        for spec in (engines or [""]) if proxy else [""]:
            if spec:
                label = f"{name}+{spec.rpartition(':')[2]}"
                out.append((label, f"export PYGW_BENCH_ENGINE={shlex.quote(spec)}; {cmd}", proxy))
            else:
                out.append((name, cmd, proxy))
    return out


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["BENCH_DIR"] = str(BENCH_DIR)
    # `gateways.<module>:app` is importable from benchmarks/ (the harness adds its apps/).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCHMARKS), env.get("PYTHONPATH")) if p)
    return env


def setup() -> None:
    """The harness's setup.sh (apt + venv), then this checkout into the harness venv."""
    subprocess.run([str(BENCH_DIR / "setup.sh")], check=True, env=child_env())
    python = str(BENCH_VENV / "bin" / "python")
    # Extras the configs need: coredis (redis rate limiting), prometheus-client; hypercorn
    # with trio (the harness pins both; named again in case its requirements drop them).
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "-e", f"{ROOT}[redis,prometheus]"], check=True
    )
    subprocess.run([python, "-m", "pip", "install", "-q", "hypercorn[trio]"], check=True)
    # The plot (plot.py); optional: without it run.py writes no plot.png and says so.
    if subprocess.run([python, "-m", "pip", "install", "-q", "matplotlib"]).returncode != 0:
        log("warning: matplotlib did not install: runs will write no plot.png")


def preflight() -> None:
    problems = [f"{tool} not found" for tool in ("nginx", "wrk") if not shutil.which(tool)]
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        problems.append(f"no harness venv at {BENCH_VENV}")
    else:
        probe = subprocess.run(
            [str(python), "-c", "import granian, hypercorn, trio, uvicorn, uvloop, httptools;"
             "import pygateway; print(pygateway.__file__)"],
            capture_output=True, text=True, env=child_env(),
        )  # fmt: skip
        if probe.returncode != 0:
            problems.append(f"harness venv incomplete: {probe.stderr.strip().splitlines()[-1]}")
        elif not Path(probe.stdout.strip()).resolve().is_relative_to(ROOT / "src"):
            problems.append(
                f"harness venv imports pygateway from {probe.stdout.strip()}, not {ROOT}"
            )
    if problems:
        raise SystemExit(
            "error: " + "; ".join(problems) + f"\n(run `python {sys.argv[0]} --setup` first)"
        )
    with open("/proc/loadavg") as f:
        load = float(f.read().split()[0])
    if load > 0.5:
        log(f"warning: load average {load:.2f}: other work is running, figures will be noisy")


def tee(cmd: list[str], path: Path, capture_stdout: bool = False) -> int:
    """Run `cmd`, streaming its stderr (and stdout) to ours and to `path`."""
    with open(path, "w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if capture_stdout else subprocess.PIPE,
            text=True,
        )
        stream = proc.stdout if capture_stdout else proc.stderr
        assert stream is not None
        for line in stream:
            sys.stderr.write(line)
            out.write(line)
        return proc.wait()


def run_checks(configs: list[tuple[str, str, bool]], out: Path) -> int:
    proxies = [(name, cmd) for name, cmd, proxy in configs if proxy]
    if not proxies:
        return 0
    log(f"\n== check_apps.py: {', '.join(name for name, _ in proxies)}")
    cmds = [f"--cmd={name}={cmd}" for name, cmd in proxies]
    return tee([sys.executable, str(BENCH_DIR / "check_apps.py"), *cmds], out, True)


def run_harness(
    baselines: list[str],
    configs: list[tuple[str, str, bool]],
    args: list[str],
    out: Path,
    label: str,
) -> tuple[int, list[dict[str, Any]]]:
    save = out / f"{label}.jsonl"
    cmd = [
        sys.executable,
        str(BENCH_DIR / "proxy_bench.py"),
        *baselines,
        *(f"--cmd={name}={cmd}" for name, cmd, _ in configs),
        "--cwd", str(ROOT),
        "--save", str(save),
        "--raw", str(out / f"{label}.raw.jsonl"),
        *args,
    ]  # fmt: skip
    log(f"\n== proxy_bench.py ({label}): {' '.join([*baselines, *(c[0] for c in configs)])}")
    rc = tee(cmd, out / f"{label}.log")
    summaries = []
    if save.exists():
        summaries = [json.loads(line) for line in save.read_text().splitlines() if line.strip()]
    return rc, summaries


def cpu_us(s: dict[str, Any]) -> float | None:
    """Proxy CPU microseconds per request (the rps of a CPU-bound proxy, corrected for idle)."""
    rps, cpu = s.get("rps_median"), s.get("proxy_cpu_pct_median")
    if not rps or cpu is None:
        return None
    return float(cpu) * 1e4 / float(rps)


def derived(summaries: list[dict[str, Any]]) -> str:
    by = {s["config"]: s for s in summaries}
    lines = ["", "proxy-CPU µs per request (= proxy cpu% * 10^4 / rps; the proxy is CPU-bound):"]
    for name, s in by.items():
        us = cpu_us(s)
        if us is not None:
            lines.append(
                f"  {name:34s} {s['rps_median']:8.0f} req/s  {us:7.1f} µs/req  "
                f"(cpu {s['proxy_cpu_pct_median']:.0f}%)"
            )
    lines.append("differences (µs of proxy CPU per request):")
    for name in by:
        base, plus, engine = name.partition("+")
        for ref in REFERENCES.get(base, []):
            ref = ref + plus + engine if ref in PYGW else ref
            if ref in by:
                ua, ub = cpu_us(by[name]), cpu_us(by[ref])
                if ua is not None and ub is not None:
                    lines.append(f"  {name + ' - ' + ref:60s} {ua - ub:+8.1f}")
    return "\n".join(lines)


def split_engine(name: str) -> tuple[str, str]:
    """`pygw-uvicorn+NativeEngine` -> (`pygw-uvicorn`, `+NativeEngine`)."""
    base, plus, engine = name.partition("+")
    return base, plus + engine


def server_of(name: str) -> str | None:
    base = split_engine(name)[0]
    if base in PYGW:
        return PYGW[base][0]
    for server in sorted(SERVERS, key=len, reverse=True):  # hypercorn-trio before hypercorn
        if base.startswith(server + "-") and base != "starlette-httpx":
            return server
    return None


def _rps(s: dict[str, Any] | None) -> float | None:
    return float(s["rps_median"]) if s and s.get("rps_median") else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def fastest_bare(by: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Per server, the bare-ASGI proxy of the run with the most req/s."""
    out = {}
    for server, names in BARE.items():
        ran = [n for n in names if _rps(by.get(n))]
        if ran:
            out[server] = max(ran, key=lambda n: _rps(by[n]) or 0.0)
    return out


def summarize(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per config: the figures of the issue, and the ratios the budget is made of."""
    by = {s["config"]: s for s in summaries}
    fastest = fastest_bare(by)
    direct_c1 = (by.get("direct") or {}).get("c1_p50_us_median")
    rows = []
    for s in summaries:
        name = s["config"]
        base, engine = split_engine(name)
        server = server_of(name)
        c1 = s.get("c1_p50_us_median")
        row: dict[str, Any] = {
            "config": name,
            "kind": "pygateway" if base in PYGW else "baseline",
            "server": server,
            "gateway_module": PYGW[base][1] if base in PYGW else None,
            "engine": engine[1:] or None,
            "rps": s.get("rps_median"),
            "p50_ms": s.get("p50_ms_median"),
            "p99_ms": s.get("p99_ms_median"),
            "c1_p50_us": c1,
            "c1same_p50_us": s.get("c1same_p50_us_median"),
            "c1_p50_added_us": round(c1 - direct_c1, 1)
            if c1 is not None and direct_c1 is not None and name != "direct"
            else None,
            "cpu_us_per_req": None if cpu_us(s) is None else round(cpu_us(s) or 0.0, 1),
            "proxy_cpu_pct": s.get("proxy_cpu_pct_median"),
            "other_cpu_pct_max": s.get("other_cpu_pct_max"),
            "errors": sum((s.get("socket_errors") or {}).values())
            + (s.get("non2xx") or 0)
            + len(s.get("errors") or []),
            "rounds": s.get("runs_ok"),
        }
        ref = fastest.get(server or "")
        if ref and not base.endswith("-hello") and base != "pygw-uvicorn-terminate":
            row["fastest_bare"] = ref
            row["x_fastest_bare"] = _ratio(_rps(s), _rps(by[ref]))
        for other in ("proxypy", "starlette-httpx", "nginx-proxy"):
            row[f"x_{other.replace('-', '_')}"] = _ratio(_rps(s), _rps(by.get(other)))
        rows.append(row)
    return rows


def _line(ok: bool, what: str, text: str) -> str:
    return f"{'PASS' if ok else 'MISS'}  {what}: {text}"


def _cpu_ratio(a: dict[str, Any], b: dict[str, Any]) -> str:
    """b's CPU µs per request over a's: the req/s ratio had both proxies saturated their
    core (a proxy that did not, because something else ran, reads low on req/s only)."""
    ua, ub = a.get("cpu_us_per_req"), b.get("cpu_us_per_req")
    return f"; by CPU µs/req {ub / ua:.2f}x" if ua and ub else ""


def budget(rows: list[dict[str, Any]], stream: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 8's budget, one entry per line that this run can judge (per engine, per server).

    `margin` is how far inside (+) or outside (-) the limit the figure is, as a fraction of
    the limit: a ratio of 0.72 against >= 0.9 is -20% (20% short), 1.56 against <= 1.3 is
    -20% (20% over)."""
    by = {r["config"]: r for r in rows}
    out: list[dict[str, Any]] = []

    def add(
        what: str, value: float | None, limit: float, at_least: bool, unit: str, also: str = ""
    ) -> None:
        if value is None:
            return
        ok = value >= limit if at_least else value <= limit
        margin = value / limit - 1 if at_least else 1 - value / limit
        sign = ">=" if at_least else "<="
        how = "inside" if ok else ("short" if at_least else "over")
        text = f"{value:.2f}{unit} (limit {sign} {limit:g}{unit}: {abs(margin):.0%} {how}{also})"
        out.append(
            {
                "budget": what,
                "value": round(value, 3),
                "limit": limit,
                "at_least": at_least,
                "pass": ok,
                "margin": round(margin, 3),
                "line": _line(ok, what, text),
            }
        )

    engines = sorted({split_engine(n)[1] for n in by if split_engine(n)[0] in PYGW})
    for engine in engines:
        for server in SERVERS:
            passthrough = by.get(f"pygw-{server}{engine}")
            for suffix, limit in BUDGET_VS_BARE:
                row = by.get(f"pygw-{server}{suffix}{engine}")
                if row and row.get("x_fastest_bare") is not None:
                    bare = by[row["fastest_bare"]]
                    what = f"{row['config']} req/s vs {bare['config']}"
                    add(what, row["x_fastest_bare"], limit, True, "x", _cpu_ratio(row, bare))
            routes = by.get(f"pygw-{server}-10k-routes{engine}")
            if routes and passthrough and routes["rps"] and passthrough["rps"]:
                what = f"{routes['config']} req/s vs {passthrough['config']} (1 route)"
                add(what, routes["rps"] / passthrough["rps"], BUDGET_ROUTES, True, "x",
                    _cpu_ratio(routes, passthrough))  # fmt: skip
            ref = by.get((passthrough or {}).get("fastest_bare") or "")
            if passthrough and ref:
                a, b = passthrough.get("c1_p50_added_us"), ref.get("c1_p50_added_us")
                if a is not None and b:
                    what = f"{passthrough['config']} added c=1 p50 vs {ref['config']}"
                    add(what, a / b, BUDGET_C1, False, "x", f"; {a:.0f} vs {b:.0f} µs")
        row = by.get(f"pygw-uvicorn{engine}")
        for other, limit in BUDGET_VS_OTHERS:
            if row and row.get(f"x_{other.replace('-', '_')}") is not None:
                add(f"{row['config']} req/s vs {other}", row[f"x_{other.replace('-', '_')}"],
                    limit, True, "x", _cpu_ratio(row, by[other]))  # fmt: skip
    when = (stream or {}).get("when")
    for direction, figures in (stream or {}).get("results", {}).items():
        what = f"1 GiB {direction} through pygateway (stream_rss.py, {when}): peak RSS growth"
        add(what, figures.get("rss_growth_mib"), BUDGET_RSS_MIB, False, " MiB",
            f"; {figures.get('mib_per_s')} MiB/s")  # fmt: skip
    return out


def _f(value: Any, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown(rows: list[dict[str, Any]], lines: list[dict[str, Any]], title: str) -> str:
    out = [
        f"# {title}",
        "",
        "| config | server | req/s | p50 ms | p99 ms | c=1 p50 µs | added c=1 p50 µs "
        "| CPU µs/req | x fastest bare (same server) | x proxy.py | x Starlette+httpx | errors "
        "| other cpu% |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|",
    ]
    for r in rows:
        bare = (
            f"{r['x_fastest_bare']:.2f} ({r['fastest_bare']})"
            if r.get("x_fastest_bare") is not None
            else "-"
        )
        name = f"**{r['config']}**" if r["kind"] == "pygateway" else r["config"]
        out.append(
            f"| {name} | {r['server'] or '-'} | {_f(r['rps'])} | {_f(r['p50_ms'], '{:.2f}')} "
            f"| {_f(r['p99_ms'], '{:.2f}')} | {_f(r['c1_p50_us'])} | {_f(r['c1_p50_added_us'])} "
            f"| {_f(r['cpu_us_per_req'], '{:.1f}')} | {bare} | {_f(r['x_proxypy'], '{:.1f}')} "
            f"| {_f(r['x_starlette_httpx'], '{:.1f}')} | {r['errors']} "
            f"| {_f(r['other_cpu_pct_max'])} |"
        )
    out += ["", "## Budget (issue 8)", ""]
    out += [f"- {b['line']}" for b in lines] or ["- (nothing in this run to judge it by)"]
    passed = sum(b["pass"] for b in lines)
    out += ["", f"{passed} of {len(lines)} budget lines pass.", ""]
    return "\n".join(out)


def load_stream_rss() -> dict[str, Any] | None:
    """The latest `stream_rss.py` figures, if it has been run (it is not part of run.py)."""
    path = BENCHMARKS / "results" / "stream_rss.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def plot(out: Path) -> None:
    """plot.png from summary.json, with the first Python that has matplotlib."""
    script = BENCHMARKS / "plot.py"
    for python in (str(BENCH_VENV / "bin" / "python"), sys.executable):
        probe = subprocess.run([python, "-c", "import matplotlib"], capture_output=True)
        if probe.returncode == 0:
            done = subprocess.run([python, str(script), str(out / "summary.json")])
            if done.returncode != 0:
                log(f"warning: {script.name} failed: no plot.png")
            return
    log("no plot.png: matplotlib is missing (`python benchmarks/run.py --setup` installs it)")


def write_summary(out: Path, summaries: list[dict[str, Any]], title: str) -> list[dict[str, Any]]:
    """summary.json, summary.md and plot.png in `out`; returns the budget lines."""
    rows = summarize(summaries)
    lines = budget(rows, load_stream_rss())
    doc = {"title": title, "configs": rows, "budget": lines}
    (out / "summary.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    (out / "summary.md").write_text(markdown(rows, lines, title))
    plot(out)
    return lines


def run_router(out: Path, quick: bool) -> int:
    script = BENCHMARKS / "router_bench.py"
    if not script.exists():
        log("\n(no benchmarks/router_bench.py yet: skipped)")
        return 0
    python = sys.executable
    probe = subprocess.run([python, "-c", "import pygateway"], capture_output=True, env=child_env())
    if probe.returncode != 0:
        python = str(BENCH_VENV / "bin" / "python")
    args = []
    if quick:  # fewer rounds, if the script (owned by someone else) still takes --rounds
        usage = subprocess.run([python, str(script), "--help"], capture_output=True, text=True)
        if "--rounds" in usage.stdout:
            args = ["--rounds", "1"]
    log(f"\n== {script.relative_to(ROOT)} {' '.join(args)}")
    return tee([python, str(script), *args], out, True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 short round (a smoke test)")
    parser.add_argument("--setup", action="store_true", help="install the harness, then exit")
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated configs and/or groups, instead of the default groups ("
        + ", ".join(DEFAULT_GROUPS)
        + "); configs: "
        + ", ".join([*BASELINES, *PYGW]),
    )
    parser.add_argument(
        "--group",
        action="append",
        default=[],
        choices=list(GROUPS),
        help="a named set of configs (repeatable; with --only, the union): "
        + "; ".join(f"{g}: {len(names)} configs" for g, names in GROUPS.items()),
    )
    parser.add_argument("--big", action="store_true", help="also run the proxies on /big (16 KiB)")
    parser.add_argument("--no-check", action="store_true", help="skip check_apps.py")
    parser.add_argument("--check-only", action="store_true", help="only run check_apps.py")
    parser.add_argument("--no-router", action="store_true", help="skip router_bench.py")
    parser.add_argument(
        "--engine",
        action="append",
        default=[],
        metavar="MODULE:CLASS",
        help="run the pygateway proxies with this engine class or factory (repeatable; names "
        "get a +CLASS suffix), e.g. pygateway.engines:HttpxEngine; default: the gateway's",
    )
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "results")
    parser.add_argument(
        "--summarize",
        type=Path,
        metavar="RUN_DIR",
        help="only rebuild summary.json, summary.md and plot.png from RUN_DIR/small.jsonl "
        "(e.g. after stream_rss.py ran, or on another machine)",
    )
    opts, harness_args = parser.parse_known_args()
    if harness_args[:1] == ["--"]:
        harness_args = harness_args[1:]
    if opts.setup:
        setup()
        return 0
    if opts.summarize:
        lines_of = (opts.summarize / "small.jsonl").read_text().splitlines()
        summaries = [json.loads(line) for line in lines_of if line.strip()]
        quick = opts.summarize.name.endswith("-quick")
        title = f"pygateway benchmark {opts.summarize.name}" + (" (smoke run)" if quick else "")
        for line in write_summary(opts.summarize, summaries, title):
            log("  " + line["line"])
        log(f"written: {opts.summarize}/summary.json, summary.md, plot.png")
        return 0

    wanted: list[str] = []
    for item in (
        [*(opts.only or "").split(","), *opts.group]
        if opts.only or opts.group
        else (DEFAULT_GROUPS)
    ):
        item = item.strip()
        if item in GROUPS:
            wanted += GROUPS[item]
        elif item in BASELINES or item in PYGW:
            wanted.append(item)
        elif item:
            parser.error(f"unknown config or group: {item}")
    baselines = [n for n in BASELINES if n in wanted]
    names = [n for n in PYGW if n in wanted]
    configs = pygw_configs(names, opts.engine)
    preflight()
    out = opts.out / (time.strftime("%Y%m%d-%H%M%S") + ("-quick" if opts.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    log(f"results -> {out}")
    args = (QUICK if opts.quick else []) + harness_args
    failed: list[str] = []

    if not opts.no_check and run_checks(configs, out / "check.txt") != 0:
        failed.append("check_apps")
    if opts.check_only:
        return 1 if failed else 0

    rc, summaries = run_harness(baselines, configs, args, out, "small")
    if rc != 0:
        failed.append(f"proxy_bench exited {rc}")
    failed += [f"{s['config']}: errors" for s in summaries if s["errors"] or s["non2xx"]]
    if opts.big:
        big = [n for n in baselines if not n.endswith("-hello")]
        big_configs = [c for c in configs if c[2]]
        big_args = [*args, "--path", "/big", "--c1-duration", "0"]
        rc, big_summaries = run_harness(big, big_configs, big_args, out, "big")
        if rc != 0:
            failed.append(f"proxy_bench /big exited {rc}")
        failed += [f"{s['config']} /big: errors" for s in big_summaries if s["errors"]]

    if summaries:
        report = subprocess.run(
            [sys.executable, str(BENCH_DIR / "report.py"), *map(str, sorted(out.glob("*.jsonl")))],
            capture_output=True, text=True, env=child_env(),
        )  # fmt: skip
        (out / "report.md").write_text(report.stdout + report.stderr)
        text = derived(summaries)
        (out / "derived.txt").write_text(text + "\n")
        log(text)
        title = f"pygateway benchmark {out.name}" + (" (smoke run)" if opts.quick else "")
        lines = write_summary(out, summaries, title)
        log("\nbudget (issue 8; summary.md has the table, plot.png the figure):")
        for line in lines:
            log("  " + line["line"])
        log(f"  {sum(b['pass'] for b in lines)} of {len(lines)} budget lines pass")

    if not opts.no_router and run_router(out / "router.txt", opts.quick) != 0:
        failed.append("router_bench")

    log(f"\nresults in {out}")
    if failed:
        log("FAILED: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
