"""pygateway side by side with the baselines of the shared proxy benchmark harness.

    python benchmarks/run.py            # full: the harness's normal 3 rounds (~18 min)
    python benchmarks/run.py --quick    # 1 short round (~3 min): does everything work?
    python benchmarks/run.py --setup    # once: harness setup.sh + this checkout into its venv

One harness invocation (../shared/bench/proxy_bench.py, or $BENCH_DIR) measures the baselines
and the pygateway configurations (benchmarks/gateways/) together, on the same origin, load
generator and CPU pinning; then router_bench.py runs. Before measuring, the harness's
check_apps.py checks that the pygateway proxies forward correctly.

Results go to benchmarks/results/<timestamp>[-quick]/: `small.jsonl` (harness summaries),
`small.raw.jsonl` (every run), `small.log` (progress and the harness table), `report.md`
(the harness's report.py), `derived.txt` (pygateway's own cost per request, printed last),
`check.txt` and `router.txt`. Arguments this script does not know are passed to the harness
(e.g. `-- --connections 100`).

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
    "direct",  # wrk straight at the upstream: the ceiling
    "nginx-proxy",  # Kong's data plane minus Lua
    "uvicorn-hello",  # uvicorn answering itself: ceiling of anything on uvicorn
    "uvicorn-httpx",  # bare ASGI + httpx.AsyncClient
    "uvicorn-httpcore",  # bare ASGI + httpcore pool (HttpxEngine calls the transport directly)
    "uvicorn-httpx2",  # bare ASGI + httpx2 (the pool-fixed fork: a drop-in engine candidate)
    "uvicorn-anyio-httptools",  # bare ASGI + anyio streams + httptools (hand-rolled engine)
    "granian-hello",
    "granian-httpx",
]
# The pygateway configurations: name -> (server, gateways module, is a proxy).
PYGW = {
    "pygw-uvicorn-terminate": ("uvicorn", "terminate", False),
    "pygw-uvicorn": ("uvicorn", "passthrough", True),
    "pygw-uvicorn-noop": ("uvicorn", "noop_plugin", True),
    "pygw-uvicorn-balanced": ("uvicorn", "balanced", True),
    "pygw-uvicorn-key-auth": ("uvicorn", "key_auth", True),
    "pygw-uvicorn-ratelimit": ("uvicorn", "rate_limiting", True),
    "pygw-uvicorn-ratelimit-redis": ("uvicorn", "rate_limiting_redis", True),
    "pygw-uvicorn-observed": ("uvicorn", "observed", True),
    "pygw-uvicorn-cache-hit": ("uvicorn", "cache_hit", True),
    "pygw-granian": ("granian", "passthrough", True),
}
QUICK = ["--rounds", "1", "--duration", "5", "--warmup", "2", "--c1-duration", "2"]
# Derived figures: each pygateway config minus its references (same engine for pygw ones).
REFERENCES = {
    "pygw-uvicorn-terminate": ["uvicorn-hello"],
    "pygw-uvicorn": [
        "uvicorn-hello",
        "uvicorn-httpx",
        "uvicorn-httpcore",
        "uvicorn-httpx2",
        "uvicorn-anyio-httptools",
    ],
    "pygw-uvicorn-noop": ["pygw-uvicorn"],
    "pygw-uvicorn-balanced": ["pygw-uvicorn"],
    "pygw-uvicorn-key-auth": ["pygw-uvicorn"],
    "pygw-uvicorn-ratelimit": ["pygw-uvicorn"],
    "pygw-uvicorn-ratelimit-redis": ["pygw-uvicorn"],
    "pygw-uvicorn-observed": ["pygw-uvicorn"],
    "pygw-uvicorn-cache-hit": ["pygw-uvicorn", "uvicorn-hello"],
    "pygw-granian": ["granian-hello", "granian-httpx"],
}


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def harness_templates() -> tuple[str, str]:
    """The harness's own uvicorn and granian command lines, so our flags match its."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import proxy_bench  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit(f"error: no benchmark harness at {BENCH_DIR} (set BENCH_DIR)") from None
    finally:
        sys.path.pop(0)
    return proxy_bench.UVICORN, proxy_bench.GRANIAN


def pygw_configs(names: list[str], engines: list[str]) -> list[tuple[str, str, bool]]:
    """(config name, harness command, is a proxy) for each pygateway config and engine."""
    uvicorn, granian = harness_templates()
    out = []
    for name in names:
        server, module, proxy = PYGW[name]
        app = f"gateways.{module}:app"
        if server == "uvicorn":
            # The gateway handles X-Forwarded-* itself (trusted_ips): uvicorn must not rewrite
            # the client address, so proxy headers are off, as `pygateway run` does.
            cmd = uvicorn.format(app=app) + " --no-proxy-headers"
        else:
            cmd = granian.format(app=app)
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
    subprocess.run(
        # Extras the configs need: coredis (redis rate limiting), prometheus-client.
        [
            str(BENCH_VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "-e",
            f"{ROOT}[redis,prometheus]",
        ],
        check=True,
    )


def preflight() -> None:
    problems = [f"{tool} not found" for tool in ("nginx", "wrk") if not shutil.which(tool)]
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        problems.append(f"no harness venv at {BENCH_VENV}")
    else:
        probe = subprocess.run(
            [str(python), "-c", "import granian, uvicorn, uvloop, httptools, pygateway;"
             "print(pygateway.__file__)"],
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
        help="comma-separated subset of the configs: " + ", ".join([*BASELINES, *PYGW]),
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
    opts, harness_args = parser.parse_known_args()
    if harness_args[:1] == ["--"]:
        harness_args = harness_args[1:]
    if opts.setup:
        setup()
        return 0

    baselines, names = list(BASELINES), list(PYGW)
    if opts.only:
        wanted = [n.strip() for n in opts.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in BASELINES and n not in PYGW]
        if unknown:
            parser.error(f"unknown config(s): {', '.join(unknown)}")
        baselines = [n for n in baselines if n in wanted]
        names = [n for n in names if n in wanted]
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

    if not opts.no_router and run_router(out / "router.txt", opts.quick) != 0:
        failed.append("router_bench")

    log(f"\nresults in {out}")
    if failed:
        log("FAILED: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
