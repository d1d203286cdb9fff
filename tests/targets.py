"""Upstream Targets on 127.0.0.1 that count what they serve and can be killed and revived.

    with target_servers(3) as targets:
        gw.Upstream(name="backend", targets=[gw.Target(t.address) for t in targets])
        ...
        targets[1].stop()        # its port now refuses connections; open ones are dropped
        targets[1].status = 500  # answer 500 from now on (the health path keeps its own)
        targets[1].start()       # listening again on the same port
        assert targets[1].hits > 0

Every answer carries `x-target: <name>` and the name as its body, so a client can tell which
target served it. The health path (default /health) answers `health_status` and is counted
apart, in `health_hits`, so active health checks do not blur the balancing counts.

Each server is a small HTTP/1.1 server (keep-alive, any number of slow requests at once)
running in its own thread with its own event loop, so it serves sync fixtures and async tests
on any anyio backend, and `stop()` can drop connections the way a dead host does.
conftest.py makes fixtures of them: `targets2`, `targets3`.
"""

from __future__ import annotations

import contextlib
import http
import threading
from collections import deque
from collections.abc import Iterator
from typing import TypedDict

import anyio
import anyio.from_thread
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.from_thread import BlockingPortal
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = [
    "HOST",
    "RequestInfo",
    "TargetServer",
    "target_servers",
]

HOST = "127.0.0.1"
#: How many requests each server remembers in `requests`.
REQUEST_LOG = 1000


class RequestInfo(TypedDict):
    method: str
    #: The request target as sent: path and query.
    path: str
    #: Names lower-cased; a repeated header's values joined with ", ".
    headers: dict[str, str]
    body: bytes


class TargetServer:
    """One Target: answers `status` after `delay` seconds with its `name`, counting hits.

    `status`, `delay`, `health_status` and `health_delay` may be changed at any time, from
    any thread; a request uses the values current when it arrives. A request is counted (in
    `hits`, or `health_hits` for `health_path`) and recorded in `requests` when it arrives,
    before its delay. The server is not listening until `start()` (or `with`).
    """

    def __init__(
        self,
        name: str,
        *,
        port: int = 0,
        status: int = 200,
        delay: float = 0.0,
        health_path: str = "/health",
        health_status: int = 200,
    ) -> None:
        self.name = name
        #: 0 until the first `start()` picks a free port; kept across stop/start.
        self.port = port
        self.status = status
        self.delay = delay
        self.health_path = health_path
        self.health_status = health_status
        #: Delay of the health path's answers (to make active checks time out).
        self.health_delay = 0.0
        self.hits = 0
        self.health_hits = 0
        self.in_flight = 0
        #: Connections accepted since the server was made.
        self.connections = 0
        self._requests: deque[RequestInfo] = deque(maxlen=REQUEST_LOG)
        self._lock = threading.Lock()
        # While listening: the event loop thread, and the scope whose cancel drops everything.
        self._life: contextlib.ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._scope: anyio.CancelScope | None = None

    @property
    def address(self) -> str:
        """The "127.0.0.1:<port>" a `Target` takes."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self._life is not None

    @property
    def requests(self) -> list[RequestInfo]:
        """The last `REQUEST_LOG` requests, oldest first (health checks included)."""
        with self._lock:
            return list(self._requests)

    def reset_hits(self) -> None:
        """Forget the counts and the request log (`in_flight` and `connections` stay)."""
        with self._lock:
            self.hits = 0
            self.health_hits = 0
            self._requests.clear()

    def start(self) -> None:
        """Listen (again) on `port`, the first start on a free one; serve from a new thread
        running its own event loop."""
        if self.alive:
            raise RuntimeError(f"target {self.name} is already listening on {self.address}")
        life = contextlib.ExitStack()
        portal = life.enter_context(anyio.from_thread.start_blocking_portal("asyncio"))
        try:
            _, (scope, port) = portal.start_task(self._serve)
        except OSError as exc:
            life.close()
            raise RuntimeError(
                f"target {self.name} cannot listen on {self.address}: {exc}"
            ) from exc
        self._life, self._portal, self._scope, self.port = life, portal, scope, port

    def stop(self) -> None:
        """Close the listening socket and every open connection, mid-request or idle; the
        port then refuses connections. Returns once the server's thread has ended."""
        life, portal, scope = self._life, self._portal, self._scope
        if life is None or portal is None or scope is None:
            return
        self._life = self._portal = self._scope = None
        portal.call(scope.cancel)
        life.close()

    def __enter__(self) -> TargetServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "alive" if self.alive else "stopped"
        return f"<TargetServer {self.name} {self.address} {state} hits={self.hits}>"

    # -- serving (in the server's own thread) ----------------------------------------------

    async def _serve(self, *, task_status: TaskStatus[tuple[anyio.CancelScope, int]]) -> None:
        # anyio sets SO_REUSEADDR: the same port again, though the last life's connections
        # sit in TIME_WAIT.
        listener = await anyio.create_tcp_listener(local_host=HOST, local_port=self.port)
        port = listener.extra(SocketAttribute.local_port)
        with anyio.CancelScope() as scope:
            async with listener, anyio.create_task_group() as tg:
                task_status.started((scope, port))
                # Cancelling the scope closes the listener and every connection's stream.
                await listener.serve(self._connection, tg)

    async def _connection(self, stream: SocketStream) -> None:
        with self._lock:
            self.connections += 1
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            try:
                while True:
                    info, keep_alive = await _read_request(reader)
                    await self._answer(stream, info, keep_alive)
                    if not keep_alive:
                        return
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                return  # the client went away
            except (anyio.DelimiterNotFound, ValueError):
                return  # not HTTP as this server reads it

    async def _answer(self, stream: SocketStream, info: RequestInfo, keep_alive: bool) -> None:
        health = info["path"].partition("?")[0] == self.health_path
        with self._lock:
            if health:
                self.health_hits += 1
                status, delay = self.health_status, self.health_delay
            else:
                self.hits += 1
                status, delay = self.status, self.delay
            self._requests.append(info)
            self.in_flight += 1
        try:
            if delay > 0:
                await anyio.sleep(delay)
        finally:
            # Before the answer leaves: a client holding it never sees its request in flight.
            with self._lock:
                self.in_flight -= 1
        await stream.send(self._response(status, info["method"], keep_alive))

    def _response(self, status: int, method: str, keep_alive: bool) -> bytes:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Whatever"
        body = self.name.encode()
        head = [f"HTTP/1.1 {status} {reason}", f"x-target: {self.name}"]
        if status >= 200 and status not in (204, 304):
            head += ["content-type: text/plain", f"content-length: {len(body)}"]
        if not keep_alive:
            head.append("connection: close")
        if method == "HEAD" or status < 200 or status in (204, 304):
            body = b""
        return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body


@contextlib.contextmanager
def target_servers(n: int) -> Iterator[list[TargetServer]]:
    """`n` listening targets named t0, t1, ...; all stopped when the block ends."""
    servers = [TargetServer(f"t{i}") for i in range(n)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


# -- HTTP/1.1 parsing, just enough ------------------------------------------------------


async def _read_request(reader: BufferedByteReceiveStream) -> tuple[RequestInfo, bool]:
    """One request (body read whole), and whether the connection stays open after it."""
    head = await reader.receive_until(b"\r\n\r\n", 65536)
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        length = int(headers.get("content-length", "0"))
        body = await reader.receive_exactly(length) if length else b""
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    return RequestInfo(method=method, path=target, headers=headers, body=body), keep_alive


async def _read_chunked(reader: BufferedByteReceiveStream) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.receive_until(b"\r\n", 4096)).split(b";")[0].strip(), 16)
        if size == 0:
            while await reader.receive_until(b"\r\n", 65536):  # trailers, up to a blank line
                pass
            return b"".join(parts)
        parts.append(await reader.receive_exactly(size))
        await reader.receive_exactly(2)
