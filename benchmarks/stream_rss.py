"""A 1 GiB body streamed through pygateway, each way: the gateway's peak RSS growth.

    python benchmarks/stream_rss.py [--size-mib 1024] [--engine module:Class] [--python PY]

Three processes on 127.0.0.1: an upstream (uvicorn serving `upstream` below: `GET
/download?size=N` streams N bytes in 64 KiB chunks, `POST /upload` reads the body and
answers how many bytes it got), pygateway's `passthrough` configuration under uvicorn
(uvloop, httptools, as `run.py` serves it) in front of it, and this script as the client
(http.client, 64 KiB reads and writes). Before each transfer the gateway's peak RSS is
reset to its current RSS (`/proc/<pid>/clear_refs`) after a small warm-up request; after
it, `VmHWM` minus that RSS is the growth the transfer caused. A gateway that buffered the
body would grow by about the body's size; the budget (issue 8) is < 50 MiB.

Prints one line per direction and writes `benchmarks/results/stream_rss.json`, which
`run.py` reads into its budget lines. Exit status 1 if a transfer failed or is over budget.
The servers run with the harness venv's Python when it exists (`run.py --setup`), which has
uvloop; `--python` picks another.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
BENCH_VENV = Path(
    os.environ.get("BENCH_VENV") or Path(os.environ.get("BENCH_WORK", "/tmp/bench")) / "venv"
)
CHUNK = 64 * 1024
BUDGET_MIB = 50
MIB = 1024 * 1024


# -- the upstream (served by uvicorn in its own process: `stream_rss:upstream`) -------------


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["path"] == "/upload":
        got = 0
        more = True
        while more:
            message = await receive()
            got += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = str(got).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
        return
    size = int(parse_qs(scope["query_string"].decode()).get("size", ["0"])[0])
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(size).encode()),
                            (b"content-type", b"application/octet-stream")]})  # fmt: skip
    block = b"x" * CHUNK
    left = size
    while left > 0:
        piece = block if left >= CHUNK else block[:left]
        left -= len(piece)
        await send({"type": "http.response.body", "body": piece, "more_body": left > 0})
    if size == 0:
        await send({"type": "http.response.body", "body": b""})


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: server on port {port} exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"error: nothing listens on port {port} after {timeout} s")


class Server:
    """uvicorn serving `app` on a free port, in its own session; stopped by its pid."""

    def __init__(self, python: str, app: str, env: dict[str, str], extra: list[str]) -> None:
        self.port = free_port()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        cmd = [python, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--no-access-log", "--log-level", "warning", *extra]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=BENCHMARKS, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_port(self.port, self.proc)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- transfers --------------------------------------------------------------------------------


def body(size: int) -> Iterator[bytes]:
    block = b"y" * CHUNK
    left = size
    while left > 0:
        piece = block if left >= CHUNK else block[:left]
        left -= len(piece)
        yield piece


def upload(port: int, size: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/upload", body=body(size), headers={"content-length": str(size)})
        response = conn.getresponse()
        text = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"upload: {response.status} {text[:200]}")
        return int(text)
    finally:
        conn.close()


def download(port: int, size: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", f"/download?size={size}")
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"download: {response.status} {response.read(200)!r}")
        got = 0
        while chunk := response.read(CHUNK):
            got += len(chunk)
        return got
    finally:
        conn.close()


def measure(direction: str, gateway: Server, size: int) -> dict[str, Any]:
    transfer = upload if direction == "upload" else download
    transfer(gateway.port, 1024 * 1024)  # warm-up: the pools, buffers and code paths exist
    pid = gateway.proc.pid
    reset = reset_peak(pid)
    before_rss = status_kib(pid, "VmRSS")
    before_hwm = status_kib(pid, "VmHWM")
    started = time.perf_counter()
    got = transfer(gateway.port, size)
    seconds = time.perf_counter() - started
    hwm = status_kib(pid, "VmHWM")
    growth = (hwm - (before_rss if reset else before_hwm)) / 1024
    return {
        "bytes": got,
        "complete": got == size,
        "seconds": round(seconds, 2),
        "mib_per_s": round(size / MIB / seconds, 1),
        "rss_before_mib": round(before_rss / 1024, 1),
        "peak_rss_mib": round(hwm / 1024, 1),
        "rss_growth_mib": round(growth, 1),
        "peak_reset": reset,
    }


def default_python() -> str:
    python = BENCH_VENV / "bin" / "python"
    return str(python) if python.exists() else sys.executable


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="body size (default 1 GiB)")
    parser.add_argument("--engine", metavar="MODULE:CLASS", help="the gateway's engine")
    parser.add_argument("--python", default=default_python(), help="Python for the servers")
    parser.add_argument("--json", type=Path, default=RESULTS / "stream_rss.json")
    args = parser.parse_args()
    size = args.size_mib * MIB
    probe = subprocess.run([args.python, "-c", "import uvloop, httptools"], capture_output=True)
    fast = ["--loop", "uvloop", "--http", "httptools"] if probe.returncode == 0 else []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCHMARKS), env.get("PYTHONPATH")) if p)
    origin = Server(args.python, "stream_rss:upstream", env, fast)
    env["UPSTREAM_URL"] = f"http://127.0.0.1:{origin.port}"
    if args.engine:
        env["PYGW_BENCH_ENGINE"] = args.engine
    failed = False
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "size_mib": args.size_mib,
        "engine": args.engine or "default",
        "server": "uvicorn " + " ".join(fast),
        "budget_mib": BUDGET_MIB,
        "results": {},
    }
    try:
        gateway = Server(
            args.python, "gateways.passthrough:app", env, [*fast, "--no-proxy-headers"]
        )
        try:
            for direction in ("upload", "download"):
                try:
                    figures = measure(direction, gateway, size)
                except (OSError, RuntimeError, http.client.HTTPException) as exc:
                    print(f"{direction}: FAILED {exc!r}\n{gateway.output()}")
                    failed = True
                    continue
                report["results"][direction] = figures
                ok = figures["complete"] and figures["rss_growth_mib"] < BUDGET_MIB
                failed |= not ok
                print(
                    f"{'PASS' if ok else 'MISS'}  {args.size_mib} MiB {direction:8s} "
                    f"{figures['mib_per_s']:7.1f} MiB/s  peak RSS growth "
                    f"{figures['rss_growth_mib']:6.1f} MiB (budget < {BUDGET_MIB} MiB; "
                    f"peak {figures['peak_rss_mib']} MiB, before {figures['rss_before_mib']} MiB)"
                )
        finally:
            gateway.stop()
    finally:
        origin.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"JSON: {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
