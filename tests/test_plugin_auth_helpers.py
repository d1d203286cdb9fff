"""What the authentication plugins share (plugins/_auth.py): reading a credential from a
header, the `anonymous` field's rule, reading a small body, and running key derivations a
few at a time."""

from __future__ import annotations

import json
import threading
from typing import Any

import anyio
import attrs
import pytest
from upstreams import call_asgi, wait_until

import pygateway as gw
from pygateway.plugins._auth import (
    CREDENTIAL_BODY_MAX,
    KDF_THREADS,
    check_anonymous,
    credential_body,
    credentials_from_header,
    kdf_limiter,
    run_kdf,
)

# -- credentials_from_header ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("  Bearer \t abc  ", "abc"),
        ("Basic x, Bearer abc", "abc"),
        ("Bearer abc def", "abc def"),
        ("Bearerabc", None),
        ("Bearer", None),
        ("Bearer    ", None),
        ("Token abc", None),
        ("", None),
    ],
)
def test_the_credentials_after_a_scheme_are_found_in_any_case(
    value: str, expected: str | None
) -> None:
    assert credentials_from_header(value, "bearer") == expected


@pytest.mark.parametrize("filler", [" ", "\t", "bearer"])
def test_a_100_kb_header_of_spaces_is_answered(filler: str) -> None:
    value = "x" + filler * (100_000 // len(filler)) + "x"
    assert credentials_from_header(value, "bearer") is None


def test_a_scheme_is_matched_literally() -> None:
    assert credentials_from_header("a.b c", "a.b") == "c"
    assert credentials_from_header("axb c", "a.b") is None


# -- check_anonymous ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [("", "length must be at least 1"), (None, None), ("guest", None)],
)
def test_an_empty_anonymous_is_refused(value: str | None, reason: str | None) -> None:
    assert check_anonymous(value) == reason


# -- credential_body ------------------------------------------------------------------------


@attrs.frozen
class ReadBody(gw.Plugin):
    """Answers with how many bytes `credential_body` gave (or -1 for None)."""

    name = "test-read-body"

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        body = await credential_body(ctx.request)
        return gw.Response(200, json={"read": -1 if body is None else len(body)})


async def _read(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """(what the plugin read, how many chunks the client sent before the answer)."""
    sent = 0

    def body() -> Any:
        nonlocal sent
        for chunk in chunks:
            sent += 1
            yield chunk

    route = gw.Route(paths=["/"], plugins=[ReadBody()])
    gateway = gw.Gateway(services=[gw.Service(name="s", url="http://u.internal", routes=[route])])
    async with gateway:
        response = await call_asgi(gateway, "/", method="POST", headers=headers, body=body())
    assert response.status == 200
    return int(json.loads(response.body)["read"]), sent


async def test_a_body_declared_small_is_read() -> None:
    read, _ = await _read([(b"content-length", b"5")], [b"hello"])
    assert read == 5


async def test_a_body_declared_larger_than_the_limit_is_not_read() -> None:
    size = CREDENTIAL_BODY_MAX + 1
    chunks = [b"x" * 1024] * (size // 1024) + [b"x" * (size % 1024)]
    read, sent = await _read([(b"content-length", str(size).encode())], chunks)
    assert read == -1
    assert sent < len(chunks)


async def test_a_body_without_a_length_is_not_read() -> None:
    chunks = [b"x" * 1024] * 16
    read, sent = await _read([(b"transfer-encoding", b"chunked")], chunks)
    assert read == -1
    assert sent < len(chunks)


# -- run_kdf --------------------------------------------------------------------------------


async def test_run_kdf_returns_what_the_function_returns_from_a_worker_thread() -> None:
    def where(a: int, b: int) -> tuple[int, bool]:
        return a + b, threading.current_thread() is threading.main_thread()

    assert await run_kdf(where, 2, 3) == (5, False)


async def test_key_derivations_run_four_at_a_time_per_event_loop() -> None:
    release = threading.Event()
    running = 0
    peak = 0
    lock = threading.Lock()

    def derive() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(10)
        with lock:
            running -= 1

    limiter = kdf_limiter()
    assert KDF_THREADS == 4
    assert limiter.total_tokens == KDF_THREADS
    async with anyio.create_task_group() as tg:
        for _ in range(KDF_THREADS + 2):
            tg.start_soon(run_kdf, derive)
        await wait_until(lambda: limiter.statistics().tasks_waiting == 2 and running == KDF_THREADS)
        assert limiter.borrowed_tokens == running == KDF_THREADS
        release.set()
    assert peak == KDF_THREADS
    assert kdf_limiter() is limiter  # one limiter for this event loop


def test_each_event_loop_has_its_own_limiter() -> None:
    async def limiter_of_this_loop() -> anyio.CapacityLimiter:
        return kdf_limiter()

    first = anyio.run(limiter_of_this_loop)
    second = anyio.run(limiter_of_this_loop)
    assert first is not second
