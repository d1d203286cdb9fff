"""HTTP/1.1 on the wire for NativeEngine: the request head, chunk framing, response parsers.

Two interchangeable response parsers share one small interface (`ResponseParser`): one on
httptools (llhttp, in C; the fast one, an optional dependency) and one on h11 (pure Python,
always there through httpx). The engine owns the sockets; a parser only turns the bytes it
is fed into a status, headers and body chunks, and says when the message is complete and
whether the connection may carry another one.
"""

from __future__ import annotations

import re
from typing import Protocol

import h11

from .._exceptions import UpstreamProtocolError
from .._types import RawHeaders

try:
    import httptools
except ImportError:  # pragma: no cover - an optional dependency
    httptools = None  # type: ignore[assignment]

__all__ = [
    "HEAD_LIMIT",
    "MalformedResponse",
    "ResponseParser",
    "StaleConnection",
    "WriteFailed",
    "chunk_frame",
    "parser_factory",
    "request_head",
]

#: Bytes a response head may take (status line, headers, 1xx responses before it).
HEAD_LIMIT = 256 * 1024

_LAST_CHUNK = b"0\r\n\r\n"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2


class MalformedResponse(Exception):
    """The bytes received are not a valid HTTP/1.1 response, or it ended too early."""


class StaleConnection(Exception):
    """A reused connection failed before any byte of the response: the upstream had closed
    it while it was idle. The request never reached it, so it can go again."""


class WriteFailed(Exception):
    """The request could not be sent whole: writing failed, or the upstream answered (and
    maybe closed) before taking the whole body, as with a 413 or a 401. Its answer is read."""


def request_head(method: str, target: bytes, headers: RawHeaders, chunked: bool) -> bytes:
    """The request line and headers, byte for byte as given (nothing added but the
    `transfer-encoding: chunked` a body without a length needs).

    Raises ValueError when a CR or LF inside the target or a header would let one request
    smuggle another (the names and values come from plugins too).
    """
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"{method!r} is not a method name")
    lines = [b"%s %s HTTP/1.1" % (method.encode("ascii"), target)]
    lines += [b"%s: %s" % pair for pair in headers]
    if chunked:
        lines.append(b"transfer-encoding: chunked")
    lines.append(b"\r\n")
    head = b"\r\n".join(lines)
    # Counting is one C-level pass: exactly one CRLF per line means none was injected.
    newlines = len(lines)  # the joins, and the blank line that ends the head
    if head.count(b"\n") != newlines or head.count(b"\r") != newlines or b" " in target:
        raise ValueError("a CR, LF or space in the request target or a header")
    return head


def early_answer(parser: ResponseParser, data: bytes) -> None:
    """Feed `parser` what the upstream sent while the request body was going out. Raises
    WriteFailed when that is the final answer or the end of the connection (sending more is
    pointless), UpstreamProtocolError when it is malformed; returns after a 1xx (a 100
    Continue: the body goes on)."""
    if not data:
        raise WriteFailed()
    try:
        parser.feed(data)
    except MalformedResponse as exc:
        raise UpstreamProtocolError(str(exc)) from exc
    if parser.status is not None:
        raise WriteFailed()


def chunk_frame(chunk: bytes) -> bytes:
    """One chunk of a chunked body (the caller skips empty chunks: one would end it)."""
    return b"%x\r\n%s\r\n" % (len(chunk), chunk)


def last_chunk() -> bytes:
    return _LAST_CHUNK


class ResponseParser(Protocol):
    """What the engine reads from a parser after each `feed`.

    `status` stays None until the final (non-1xx) head is parsed; `body` collects the body
    chunks received since the engine last emptied it; `done` is set once the message is
    complete; `reusable` says whether the connection may carry another request then.
    """

    status: int | None
    headers: RawHeaders
    http_version: str
    body: list[bytes]
    done: bool
    reusable: bool

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises MalformedResponse."""

    def feed_eof(self) -> None:
        """The upstream closed: completes a body read until close, else MalformedResponse."""


class _HttptoolsParser:
    """llhttp through httptools. A fresh one per response (llhttp cannot be told that a
    response answers a HEAD, so that body is skipped here instead)."""

    __slots__ = (
        "_head_only",
        "_parser",
        "_sized",
        "body",
        "done",
        "headers",
        "http_version",
        "reusable",
        "status",
    )

    def __init__(self, head_only: bool) -> None:
        self._head_only = head_only
        self._sized = False  # the body has a length or chunks: not ended by a close
        self.status: int | None = None
        self.headers: RawHeaders = []
        self.http_version = "1.1"
        self.body: list[bytes] = []
        self.done = False
        self.reusable = False
        self._parser = httptools.HttpResponseParser(self)

    # -- llhttp callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (
            # Any other final coding is read until the upstream closes (RFC 9112 6.3).
            name == b"transfer-encoding" and value.rstrip().lower().endswith(b"chunked")
        ):
            self._sized = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers = []  # informational: the real head follows
            self._sized = False
            return
        self.status = status
        self.http_version = parser.get_http_version()
        # Read here: llhttp resets its flags once the message is complete.
        self.reusable = parser.should_keep_alive()
        if self._head_only or status == 101:
            self.done = True
            self.reusable = self.reusable and status != 101

    def on_body(self, body: bytes) -> None:
        if self.done:  # bytes after a HEAD response's head: not a connection to reuse
            self.reusable = False
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status is not None:
            self.done = True

    def on_message_begin(self) -> None:
        if self.done:  # a second response nobody asked for
            self.reusable = False

    # -- the interface --

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # a 101: done above
        except httptools.HttpParserError as exc:
            if not self.done:
                raise MalformedResponse(str(exc) or type(exc).__name__) from exc
            self.reusable = False  # garbage after a complete response

    def feed_eof(self) -> None:
        self.reusable = False
        if self.done:
            return
        if self.status is not None and not self._sized:
            self.done = True  # a body delimited by the end of the connection
            return
        if self.status is None:
            raise MalformedResponse("the upstream closed the connection before a response")
        raise MalformedResponse("the upstream closed the connection before the end of the body")


class _H11Parser:
    """h11, for when httptools is not installed. h11 frames a response only after it has
    seen the request, so it is shown a stand-in with the same method (our own head is sent
    byte for byte instead of h11's)."""

    __slots__ = ("_conn", "body", "done", "headers", "http_version", "reusable", "status")

    def __init__(self, method: str) -> None:
        conn = self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_LIMIT)
        conn.send(h11.Request(method=method, target="/", headers=[("host", "upstream")]))
        conn.send(h11.EndOfMessage())
        self.status: int | None = None
        self.headers: RawHeaders = []
        self.http_version = "1.1"
        self.body: list[bytes] = []
        self.done = False
        self.reusable = False

    def feed(self, data: bytes) -> None:
        if self.done:
            self.reusable = False  # bytes after a complete response
            return
        self._conn.receive_data(data)
        self._events()

    def feed_eof(self) -> None:
        if self.done:
            self.reusable = False
            return
        self._conn.receive_data(b"")
        self._events()
        self.reusable = False
        if not self.done:
            raise MalformedResponse("the upstream closed the connection before a response")

    def _events(self) -> None:
        conn = self._conn
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Data):
                    self.body.append(bytes(event.data))
                elif isinstance(event, h11.Response):
                    self.status = event.status_code
                    self.headers = [(k, v) for k, v in event.headers]
                    self.http_version = event.http_version.decode("ascii")
                    if event.status_code == 101:
                        self.done = True
                        return
                elif isinstance(event, h11.EndOfMessage):
                    self.done = True
                    # Bytes after the response (to a HEAD, say): nothing to send more on.
                    self.reusable = conn.their_state is h11.DONE and not conn.trailing_data[0]
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    raise MalformedResponse("the upstream closed the connection")
                # InformationalResponse (1xx): skipped, the real head follows.
        except h11.RemoteProtocolError as exc:
            raise MalformedResponse(str(exc) or "invalid response") from exc


def httptools_available() -> bool:
    return httptools is not None


class ParserFactory(Protocol):
    def __call__(self, method: str) -> ResponseParser: ...


def _make_httptools(method: str) -> ResponseParser:
    return _HttptoolsParser(method == "HEAD")


def _make_h11(method: str) -> ResponseParser:
    return _H11Parser(method)


def parser_factory(name: str | None) -> tuple[str, ParserFactory]:
    """(the parser's name, a function making one per response) for "httptools", "h11" or
    None (httptools when importable, else h11)."""
    if name is None:
        name = "httptools" if httptools_available() else "h11"
    if name == "httptools":
        if not httptools_available():
            raise ImportError("parser='httptools' needs httptools: pip install httptools")
        return name, _make_httptools
    if name == "h11":
        return name, _make_h11
    raise ValueError(f"parser must be 'httptools', 'h11' or None (got {name!r})")
