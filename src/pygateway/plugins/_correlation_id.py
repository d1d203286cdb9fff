"""correlation-id: give every request an id header, for tracing it across services (Kong's).

A request that arrives with the header keeps its value; otherwise the plugin generates one
and sends it upstream. With `echo_downstream` the client gets the same header back.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from typing import TYPE_CHECKING, Literal

import attrs

from .._headers import _checked_name
from .._schema import field
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._gateway import Gateway
    from .._responses import Response

__all__ = ["CorrelationId"]

_STATE = "correlation-id"


def _check_header_name(value: str) -> str | None:
    try:
        _checked_name(value)
    except ValueError:
        return f"invalid header name '{value}'"
    return None


class _Counter:
    """One random uuid per gateway process and a counter: ids unique without a uuid each."""

    __slots__ = ("count", "prefix")

    def __init__(self) -> None:
        self.prefix = str(uuid.uuid4())
        self.count = itertools.count(1)


@attrs.frozen(kw_only=True)
class CorrelationId(Plugin):
    """Send `header_name` upstream with an id, generated unless the client sent one.

    Generators: `uuid` (a random uuid4), `uuid#counter` (a uuid fixed per gateway process,
    then `#` and a counter: cheaper, still unique), `tracker` (host, port, process id, a
    counter and the time, Kong's nginx-based layout approximated).

        CorrelationId(header_name="X-Request-ID", generator="uuid", echo_downstream=True)
    """

    name = "correlation-id"
    priority = 100001

    header_name: str = field("Kong-Request-ID", check=_check_header_name)
    generator: Literal["uuid", "uuid#counter", "tracker"] = "uuid#counter"
    echo_downstream: bool = False

    async def startup(self, gateway: Gateway) -> None:
        gateway.shared.setdefault(_STATE, _Counter())

    async def access(self, ctx: Context) -> Response | None:
        assert ctx.upstream_request is not None
        value = ctx.request.headers.get(self.header_name)
        if not value:
            value = self._generate(ctx)
            ctx.upstream_request.headers[self.header_name] = value
        if self.echo_downstream:
            ctx.plugin_state["id"] = value
        return None

    async def header_filter(self, ctx: Context) -> None:
        if not self.echo_downstream or ctx.response is None:
            return
        # Without access (the request was answered before it), the client's own id, if any.
        value = ctx.plugin_state.get("id") or ctx.request.headers.get(self.header_name)
        if value:
            ctx.response.headers[self.header_name] = value

    def _generate(self, ctx: Context) -> str:
        if self.generator == "uuid":
            return str(uuid.uuid4())
        counter = ctx.gateway.shared.get(_STATE)
        if not isinstance(counter, _Counter):
            counter = ctx.gateway.shared[_STATE] = _Counter()
        if self.generator == "uuid#counter":
            return f"{counter.prefix}#{next(counter.count)}"
        request = ctx.request
        return (
            f"{request.host}-{request.port}-{os.getpid()}-{next(counter.count)}-{time.time():.3f}"
        )


register(CorrelationId)
