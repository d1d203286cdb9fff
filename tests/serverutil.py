"""Start and stop real servers as subprocesses, for the tests that need sockets.

    port = free_port()
    with ServerProcess([sys.executable, "-m", "uvicorn", ..., "--port", str(port)], port) as s:
        httpx.get(s.url + "/echo")

A server's stdout and stderr go to one temporary file, shown in every failure message. It is
started in a new session (process group), so teardown can stop it and any workers it spawned:
SIGTERM to the server first, then SIGKILL to the whole group if anything is left after
the grace time.
"""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = [
    "PYTHON",
    "CannedUpstream",
    "ServerProcess",
    "echo_upstream",
    "free_port",
    "port_accepts",
]

#: The interpreter running the tests (the project's venv).
PYTHON = sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Does something accept TCP connections on host:port?"""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ServerProcess:
    """A subprocess server on 127.0.0.1:`port`, started by `start()` (or `with`).

    `start()` returns once the port accepts connections, and raises (with the server's output)
    if the process exits first or the port is not open within `startup_timeout` seconds.
    """

    def __init__(
        self,
        argv: Sequence[str],
        port: int,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.argv = list(argv)
        self.port = port
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._final_output = ""
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """Everything the server printed so far (stdout and stderr, interleaved)."""
        if self._log is None:
            return self._final_output
        return Path(self._log.name).read_bytes().decode("utf-8", "replace")

    def describe(self) -> str:
        code = None if self.process is None else self.process.poll()
        return (
            f"server {' '.join(self.argv)!r} (port {self.port}, exit code {code}); "
            f"its output:\n{self.output()}"
        )

    def start(self) -> ServerProcess:
        self._log = tempfile.NamedTemporaryFile(prefix="pygateway-server-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                message = f"exited before accepting connections: {self.describe()}"
                self.close()
                raise RuntimeError(message)
            if port_accepts(self.port):
                return self
            time.sleep(0.05)
        message = f"not accepting connections after {self.startup_timeout}s: {self.describe()}"
        self.close()
        raise RuntimeError(message)

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop the server and everything in its process group; returns its exit code."""
        process = self.process
        code: int | None = None
        if process is not None and self._stopped:
            return process.returncode
        if process is not None:
            self._stopped = True
            if process.poll() is None:
                # Only the leader: servers with worker processes (hypercorn, granian) stop their
                # workers themselves, and a worker signalled directly may skip its shutdown.
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal(process, signal.SIGKILL)
                    process.wait(timeout)
            # Workers the server spawned share its process group and may still be finishing
            # their own shutdown: give them the same time, then make sure none outlive it.
            deadline = time.monotonic() + timeout
            while self._group_alive(process) and time.monotonic() < deadline:
                time.sleep(0.05)
            self._signal(process, signal.SIGKILL)
            code = process.returncode
        return code

    @staticmethod
    def _group_alive(process: subprocess.Popen[bytes]) -> bool:
        try:
            os.killpg(process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._final_output = self.output()
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def echo_upstream() -> ServerProcess:
    """`pygateway.testing.EchoUpstream` under uvicorn on a free port (not started yet)."""
    port = free_port()
    argv = [PYTHON, "-m", "uvicorn", "--factory", "pygateway.testing:EchoUpstream"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return ServerProcess(argv, port)


class CannedUpstream:
    """An HTTP/1.1 upstream in a thread that answers every request with the same raw bytes
    and closes the connection: for responses that ASGI servers refuse to produce."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self) -> type[socketserver.BaseRequestHandler]:
        upstream = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                upstream.requests.append(data)
                sock.sendall(upstream.reply)

        return Handler

    def __enter__(self) -> CannedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
