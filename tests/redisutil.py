"""The machine's Redis (127.0.0.1:6379) for the tests that need one.

    def test_x(redis_prefix: str) -> None:   # a fixture: import it into the test module
        ...keys under redis_prefix are deleted after the test

`redis_prefix` skips the test, with the reason shown, when Redis is unreachable in a local
run, and fails it when `CI=true` (set by .ci/run), where Redis must be there.

Talks RESP over a plain socket, so the checks and the cleanup depend on neither coredis
nor the event loop under test.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

__all__ = [
    "REDIS_HOST",
    "REDIS_PORT",
    "redis_command",
    "redis_key_names",
    "redis_keys",
    "redis_prefix",
    "require_redis",
]

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379


def _encode(*args: str | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read(stream: socket.SocketIO) -> object:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = stream.read(1)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        line += chunk
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = b""
        while len(data) < size + 2:
            data += stream.read(size + 2 - len(data)) or b""
        return data[:-2].decode()
    if kind == b"*":
        return [_read(stream) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected RESP reply {line!r}")


def redis_command(*args: str | int, port: int = REDIS_PORT) -> object:
    """One command to the test Redis; its reply (str, int, None or list)."""
    with socket.create_connection((REDIS_HOST, port), timeout=2) as sock:
        sock.sendall(_encode(*args))
        return _read(socket.SocketIO(sock, "rb"))


def redis_key_names(prefix: str) -> list[str]:
    """Every key starting with `prefix` (SCAN), sorted."""
    keys: list[str] = []
    cursor = "0"
    while True:
        reply = redis_command("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000)
        assert isinstance(reply, list)
        cursor, batch = reply
        keys.extend(batch)
        if cursor == "0":
            break
    return sorted(set(keys))


def redis_keys(prefix: str) -> dict[str, int]:
    """Every key starting with `prefix`, with its integer value (counters)."""
    return {key: int(str(redis_command("GET", key))) for key in redis_key_names(prefix)}


def require_redis(port: int = REDIS_PORT) -> None:
    """Skip the running test if Redis does not answer PING — or fail it when `CI=true`."""
    try:
        reply = redis_command("PING", port=port)
        problem = None if reply == "PONG" else f"answered PING with {reply!r}"
    except OSError as exc:
        problem = f"is not reachable: {exc}"
    if problem is None:
        return
    message = f"Redis at {REDIS_HOST}:{port} {problem}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: Redis is required)")
    pytest.skip(message)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    require_redis()
    prefix = f"pygateway-test-{uuid.uuid4().hex}:"
    yield prefix
    for key in redis_key_names(prefix):
        redis_command("DEL", key)
