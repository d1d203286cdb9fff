"""Real upstreams on 127.0.0.1 for proxy and engine tests, each in background threads.

- `serve_asgi(app)`: an ASGI app (e.g. `pygateway.testing.EchoUpstream()`) under uvicorn;
- `RawServer`: a hand-written HTTP/1.1 server that records the exact bytes of every request
  and answers with scripted `Reply`s, or misbehaves on purpose (`Fault`);
- `refused_port()`: a port that refuses connections; `unaccepting_port()`: one whose
  connects never complete (for connect timeouts);
- `call_asgi(app, ...)`: call an ASGI app (a Gateway) with a hand-built scope, so raw paths,
  odd query strings and streamed bodies reach it unchanged (httpx would normalize them);
  `raw_http(...)`: send bytes to a real server and read the answer.

They run in threads with their own blocking sockets (or uvicorn's own asyncio loop), so they
serve tests on any anyio backend. Use them from fixtures: `with serve_asgi(app) as server:`.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import uvicorn

__all__ = [
    "ASGIResult",
    "Fault",
    "RawServer",
    "ReceivedRequest",
    "Reply",
    "Server",
    "call_asgi",
    "raw_http",
    "refused_port",
    "serve_asgi",
    "unaccepting_port",
    "wait_until",
]

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Server:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll `predicate` (state another thread changes) until it holds, for up to 5 s."""
    with anyio.fail_after(5):
        while not predicate():  # noqa: ASYNC110 (the state lives in another thread)
            await anyio.sleep(0.005)


def _listening_socket(backlog: int = 128) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(backlog)
    return sock


@contextlib.contextmanager
def serve_asgi(app: Any, *, lifespan: bool = False) -> Iterator[Server]:
    """Serve `app` with uvicorn on a free 127.0.0.1 port until the block ends (with the ASGI
    lifespan when `lifespan` is set: a Gateway then closes its engines at the end)."""
    sock = _listening_socket()
    config = uvicorn.Config(
        app,
        lifespan="on" if lifespan else "off",
        log_level="error",
        access_log=False,
        ws="none",
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-upstream", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn upstream did not start")
            time.sleep(0.005)
        yield Server(HOST, sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def unaccepting_port() -> Iterator[int | None]:
    """A listening port whose accept queue is full, so new connects hang (Linux drops the
    SYN). Yields None when this platform completes the connect anyway."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        usable = False
        for _ in range(8):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.settimeout(0.1)
            fillers.append(probe)
            try:
                probe.connect((HOST, port))
            except TimeoutError:
                usable = True
                break
        yield port if usable else None
    finally:
        for filler in fillers:
            filler.close()
        sock.close()


# -- a raw HTTP/1.1 server ----------------------------------------------------------------


@dataclass
class ReceivedRequest:
    """One request exactly as it arrived on the wire."""

    method: str
    target: bytes
    #: (name, value) in arrival order, names as sent (not lower-cased).
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    #: "chunked", "content-length" or None (no body framing at all).
    framing: str | None
    #: The request line and headers, byte for byte.
    head: bytes

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(k.lower(), v) for k, v in self.raw_headers]

    def header_names(self) -> list[bytes]:
        return [k.lower() for k, _ in self.raw_headers]

    def get(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass
class Reply:
    """A scripted response. `chunks` with `chunked=True` are sent as separate chunks;
    otherwise they are joined and sent with Content-Length (unless `length=False`, which
    sends the body and closes the connection to end it)."""

    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=lambda: [b"ok"])
    chunked: bool = False
    length: bool = True

    def encode(self, method: str) -> tuple[bytes, bool]:
        """(bytes to send, close the connection afterwards)."""
        head = [f"HTTP/1.1 {self.status} Whatever\r\n".encode()]
        head += [k + b": " + v + b"\r\n" for k, v in self.headers]
        no_body = method == "HEAD" or self.status in (204, 304) or self.status < 200
        body = b""
        if self.chunked:
            head.append(b"Transfer-Encoding: chunked\r\n")
            if not no_body:
                body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in self.chunks if c)
                body += b"0\r\n\r\n"
        elif self.length:
            content = b"".join(self.chunks)
            if self.status not in (204, 304):
                head.append(b"Content-Length: %d\r\n" % len(content))
            if not no_body:
                body = content
        else:
            head.append(b"Connection: close\r\n")
            if not no_body:
                body = b"".join(self.chunks)
        return b"".join(head) + b"\r\n" + body, not self.length and not self.chunked


class Fault(enum.Enum):
    #: Read the request and never answer.
    SILENT = "silent"
    #: Read the request, then reset the connection (SO_LINGER 0).
    RESET = "reset"
    #: Read the request, answer with bytes that are not HTTP, close.
    MALFORMED = "malformed"
    #: Read the request, send headers for 100000 bytes, send 1000, close.
    TRUNCATED = "truncated"


class _Closed(Exception):
    pass


class _Reader:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = bytearray()

    def _fill(self) -> None:
        data = self.conn.recv(65536)
        if not data:
            raise _Closed()
        self.buffer += data

    def until(self, marker: bytes) -> bytes:
        while True:
            index = self.buffer.find(marker)
            if index >= 0:
                out = bytes(self.buffer[: index + len(marker)])
                del self.buffer[: index + len(marker)]
                return out
            self._fill()

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


class RawServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that records requests byte for byte.

    Each request gets the next scripted answer (`server.reply(Reply(...), Fault.RESET)`), or
    `default` when none is queued. Keep-alive is supported; `received` lists every request.
    """

    def __init__(self, default: Reply | Fault | None = None) -> None:
        self.default = default if default is not None else Reply()
        self.received: list[ReceivedRequest] = []
        #: Pieces of request bodies as they arrive (to prove bodies are streamed).
        self.partial: list[bytes] = []
        self.connections = 0
        self._queue: deque[Reply | Fault] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = _listening_socket()
        self.host = HOST
        self.port: int = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def reply(self, *answers: Reply | Fault) -> None:
        with self._lock:
            self._queue.extend(answers)

    def reset(self) -> None:
        """Forget what was received and queued (between tests sharing one server)."""
        with self._lock:
            self._queue.clear()
            self.received.clear()
            self.partial.clear()

    def __enter__(self) -> RawServer:
        thread = threading.Thread(target=self._accept, name="raw-upstream", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _next(self) -> Reply | Fault:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    def _serve(self, conn: socket.socket) -> None:
        reader = _Reader(conn)
        try:
            while not self._stop.is_set():
                request = self._read_request(reader)
                with self._lock:
                    self.received.append(request)
                answer = self._next()
                if isinstance(answer, Fault):
                    self._misbehave(conn, answer)
                    return
                data, close = answer.encode(request.method)
                conn.sendall(data)
                if close:
                    conn.shutdown(socket.SHUT_WR)
                    return
        except (_Closed, OSError):
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _misbehave(self, conn: socket.socket, fault: Fault) -> None:
        if fault is Fault.SILENT:
            self._stop.wait()
        elif fault is Fault.RESET:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif fault is Fault.MALFORMED:
            conn.sendall(b"THIS IS NOT HTTP AT ALL\r\n\r\n")
        elif fault is Fault.TRUNCATED:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            conn.shutdown(socket.SHUT_WR)
        conn.close()

    def _read_request(self, reader: _Reader) -> ReceivedRequest:
        head = reader.until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        raw_headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            raw_headers.append((name, value.strip(b" \t")))
        lowered = {k.lower(): v for k, v in raw_headers}
        body = b""
        framing = None
        if b"chunked" in lowered.get(b"transfer-encoding", b"").lower():
            framing = "chunked"
            parts = []
            while True:
                size_line = reader.until(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    reader.until(b"\r\n")  # no trailers are sent in these tests
                    break
                parts.append(reader.exactly(size))
                with self._lock:
                    self.partial.append(parts[-1])
                reader.exactly(2)
            body = b"".join(parts)
        elif b"content-length" in lowered:
            framing = "content-length"
            remaining = int(lowered[b"content-length"])
            parts = []
            while remaining:
                parts.append(reader.exactly(min(remaining, 65536)))
                remaining -= len(parts[-1])
                with self._lock:
                    self.partial.append(parts[-1])
            body = b"".join(parts)
        return ReceivedRequest(method.decode(), target, raw_headers, body, framing, head)


# -- clients -------------------------------------------------------------------------------


@dataclass
class ASGIResult:
    """What an ASGI app sent back to `call_asgi`."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: Was the response ended properly (a last body message without `more_body`)?
    complete: bool
    #: Body messages that carried data, and the largest one.
    pieces: int = 0
    largest: int = 0

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name.encode():
                return v.decode("latin-1")
        return None

    def header_list(self, name: str) -> list[str]:
        return [v.decode("latin-1") for k, v in self.headers if k == name.encode()]


async def call_asgi(
    app: Any,
    path: str = "/",
    *,
    raw_path: bytes | None = None,
    method: str = "GET",
    query: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: Iterable[bytes] | AsyncIterable[bytes] | None = None,
    client: tuple[str, int] = ("127.0.0.1", 50000),
    server: tuple[str, int] = ("gateway.test", 80),
    scheme: str = "http",
    root_path: str = "",
    sink: Callable[[bytes], None] | None = None,
    disconnect: bool | anyio.Event = False,
    body_ends: bool = True,
) -> ASGIResult:
    """Call `app` once, as an ASGI server would, and collect its answer.

    `body` chunks are sent one `http.request` message each (and a last empty one, unless
    `body_ends` is false). With `disconnect=True` the client goes away (`http.disconnect`)
    right after its body; with an `anyio.Event`, once it is set. `sink` receives response
    body chunks instead of keeping them (to hash large bodies without holding them).
    The result's `status` is 0 when the app sent nothing.
    """
    header_list = [(k.lower(), v) for k, v in headers]
    if not any(k == b"host" for k, _ in header_list):
        header_list.insert(0, (b"host", b"gateway.test"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "query_string": query,
        "root_path": root_path,
        "headers": header_list,
        "client": client,
        "server": server,
        "extensions": {},
    }
    done = anyio.Event()
    messages = _body_messages(body, body_ends)
    start: dict[str, Any] = {}
    kept = bytearray()
    state = {"complete": False, "pieces": 0, "largest": 0}

    async def receive() -> dict[str, Any]:
        message = await anext(messages, None)
        if message is not None:
            return message
        if isinstance(disconnect, anyio.Event):
            await disconnect.wait()
        elif not disconnect:
            await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            assert start, "body sent before the response started"
            assert not state["complete"], "body sent after the response ended"
            chunk = message.get("body", b"")
            if chunk:
                state["pieces"] += 1
                state["largest"] = max(state["largest"], len(chunk))
                if sink is not None:
                    sink(chunk)
                else:
                    kept.extend(chunk)
            if not message.get("more_body", False):
                state["complete"] = True
                done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
        await messages.aclose()
    return ASGIResult(
        start.get("status", 0),
        [(bytes(k), bytes(v)) for k, v in start.get("headers", [])],
        bytes(kept),
        bool(state["complete"]),
        int(state["pieces"]),
        int(state["largest"]),
    )


async def _body_messages(
    body: Iterable[bytes] | AsyncIterable[bytes] | None, ends: bool = True
) -> Any:
    if body is None:
        yield {"type": "http.request", "body": b"", "more_body": False}
        return
    if isinstance(body, AsyncIterable):
        async for chunk in body:
            yield {"type": "http.request", "body": chunk, "more_body": True}
    else:
        for chunk in body:
            yield {"type": "http.request", "body": chunk, "more_body": True}
    if ends:
        yield {"type": "http.request", "body": b"", "more_body": False}


async def raw_http(host: str, port: int, data: bytes) -> bytes:
    """Send `data` on a new connection and read until the server closes it."""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(data)
            out = bytearray()
            while True:
                try:
                    out += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return bytes(out)
