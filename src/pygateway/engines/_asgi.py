"""ASGIEngine: upstreams that are ASGI apps in the same process (no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import anyio
from anyio.abc import TaskGroup

from .._exceptions import UpstreamProtocolError, UpstreamTimeout
from .._types import ASGIApp, Message
from ._base import Engine, UpstreamRequest, UpstreamResponse

__all__ = ["ASGIEngine"]


class ASGIEngine(Engine):
    """Proxy to an ASGI application called in-process, streaming both ways.

    The app sees an ordinary `http` scope; its exceptions before the response starts become
    `UpstreamProtocolError` (a 502), as a crashed upstream would.
    """

    def __init__(self, app: ASGIApp, *, client: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.app = app
        self.client = client

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        path_bytes, _, query = request.target.partition(b"?")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.scheme,
            "path": unquote(path_bytes.decode("latin-1")),
            "raw_path": path_bytes,
            "query_string": query,
            "root_path": "",
            "headers": list(request.headers),
            "client": self.client,
            "server": (request.host, request.port),
            "extensions": {},
        }
        body = aiter(request.body) if request.body is not None else None
        body_done = False
        response_done = anyio.Event()
        started = anyio.Event()
        start: dict[str, Any] = {}
        chunks_in, chunks_out = anyio.create_memory_object_stream[bytes](4)
        failure: list[BaseException] = []

        async def receive() -> Message:
            nonlocal body, body_done
            if body is not None:
                try:
                    chunk = await anext(body)
                except StopAsyncIteration:
                    body = None
                else:
                    return {"type": "http.request", "body": chunk, "more_body": True}
            if not body_done:
                body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await response_done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                started.set()
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                if chunk:
                    await chunks_in.send(chunk)
                if not message.get("more_body", False):
                    response_done.set()
                    chunks_in.close()

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                failure.append(exc)
            finally:
                started.set()
                chunks_in.close()

        task_group: TaskGroup = anyio.create_task_group()
        await task_group.__aenter__()
        task_group.start_soon(run)

        async def close() -> None:
            task_group.cancel_scope.cancel()
            chunks_out.close()
            await task_group.__aexit__(None, None, None)

        try:
            with anyio.fail_after(request.read_timeout):
                await started.wait()
        except TimeoutError:
            await close()
            raise UpstreamTimeout("ASGI upstream did not start a response in time") from None
        except BaseException:
            await close()
            raise
        if not start:
            await close()
            reason = repr(failure[0]) if failure else "the app returned without a response"
            raise UpstreamProtocolError(f"ASGI upstream failed: {reason}")

        async def stream() -> AsyncIterator[bytes]:
            while True:
                try:
                    with anyio.fail_after(request.read_timeout):
                        chunk = await chunks_out.receive()
                except anyio.EndOfStream:
                    break
                except TimeoutError:
                    raise UpstreamTimeout("ASGI upstream sent nothing in time") from None
                yield chunk
            if failure or not response_done.is_set():
                raise UpstreamProtocolError("ASGI upstream stopped before the response ended")

        headers = [(bytes(k).lower(), bytes(v)) for k, v in start.get("headers", [])]
        return UpstreamResponse(start["status"], headers, stream=stream(), on_close=close)
