"""Consistent hashing: requests with the same key go to the same peer.

Peers own points on a ring (Ketama style): `slots` points shared out by weight, each placed
by the CRC-32 of the peer's address and the point's number. A key goes to the owner of the
first point at or after the key's own hash, skipping peers that are unavailable, so when a
peer goes away only its keys move, and when it comes back they return. CRC-32 is the same in
every process, so several gateways agree on where a key goes.
"""

from __future__ import annotations

import bisect
import uuid
import zlib
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from ._base import Balancer, Peer
from ._round_robin import RoundRobin

if TYPE_CHECKING:
    from .._context import Context
    from .._entities import Upstream


class ConsistentHashing(Balancer):
    """Hashes on what the Upstream's `hash_on` names (then `hash_fallback` when the request
    has none of it); with no key at all, requests go round-robin."""

    def __init__(self, upstream: Upstream) -> None:
        super().__init__(upstream)
        self._points: list[int] = []
        self._owners: list[Peer] = []
        self._round_robin = RoundRobin(upstream)

    def update(self, peers: Sequence[Peer]) -> None:
        super().update(peers)
        self._round_robin.update(peers)
        weighted = [p for p in self.peers if p.weight > 0]
        total = sum(p.weight for p in weighted)
        ring: list[tuple[int, int, Peer]] = []
        for order, peer in enumerate(weighted):
            count = max(1, round(self.upstream.slots * peer.weight / total))
            seed = f"{peer.address} ".encode()
            for i in range(count):
                ring.append((zlib.crc32(seed + str(i).encode()), order, peer))
        ring.sort(key=lambda point: point[:2])
        self._points = [point[0] for point in ring]
        self._owners = [point[2] for point in ring]

    def select(self, ctx: Context | None = None, avoid: Collection[Peer] = ()) -> Peer | None:
        key = hash_key(self.upstream, ctx) if ctx is not None else None
        if key is None or not self._points:
            return self._round_robin.select(ctx, avoid)
        return self.lookup(key, avoid)

    def lookup(self, key: str, avoid: Collection[Peer] = ()) -> Peer | None:
        """The peer `key` goes to: the first available owner clockwise from its hash."""
        points, owners = self._points, self._owners
        start = bisect.bisect_left(points, zlib.crc32(key.encode("utf-8", "surrogateescape")))
        fallback: Peer | None = None
        for i in range(len(owners)):
            peer = owners[(start + i) % len(owners)]
            if peer.available:
                if peer not in avoid:
                    return peer
                fallback = fallback or peer
        return fallback


def hash_key(upstream: Upstream, ctx: Context) -> str | None:
    """The request's hash key: from `hash_on`, else from `hash_fallback`."""
    key = _value(upstream, ctx, fallback=False)
    if key is None and upstream.hash_fallback != "none":
        key = _value(upstream, ctx, fallback=True)
    return key


def _value(upstream: Upstream, ctx: Context, *, fallback: bool) -> str | None:
    kind = upstream.hash_fallback if fallback else upstream.hash_on
    request = ctx.request
    if kind == "consumer":
        consumer = ctx.consumer
        if consumer is not None:
            return consumer.id
        return ctx.credential.id if ctx.credential is not None else None
    if kind == "ip":
        return request.client_ip or None
    if kind == "header":
        name = upstream.hash_fallback_header if fallback else upstream.hash_on_header
        values = request.headers.getlist(name or "")
        return ",".join(values) if values else None
    if kind == "cookie":
        return _cookie(upstream, ctx)
    if kind == "path":
        return request.path
    if kind == "query_arg":
        name = upstream.hash_fallback_query_arg if fallback else upstream.hash_on_query_arg
        found = sorted(v for k, v in parse_qsl(request.query_string, True) if k == name)
        return ",".join(found) if found else None
    if kind == "uri_capture":
        name = upstream.hash_fallback_uri_capture if fallback else upstream.hash_on_uri_capture
        return ctx.uri_captures.get(name or "") or None
    return None


def _cookie(upstream: Upstream, ctx: Context) -> str | None:
    """The hash cookie's value; a request without one gets a new value, and the response
    sets it, so the client's next requests stick to the same peer."""
    name = upstream.hash_on_cookie or ""
    for header in ctx.request.headers.getlist("cookie"):
        for part in header.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name and value:
                return value
    if ctx.balancer_cookie is None:
        value = uuid.uuid4().hex
        ctx.balancer_cookie = (
            f"{name}={value}; Path={upstream.hash_on_cookie_path}",
            value,
        )
    return ctx.balancer_cookie[1]
