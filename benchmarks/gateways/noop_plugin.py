"""(b) Passthrough plus one global plugin implementing `access` and `log` as no-ops.

The difference to `passthrough` is the cost of plugin dispatch (plan resolution, two phase
calls, the per-phase bookkeeping), until real plugins (auth, rate limiting) are benchmarked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

import pygateway as gw

from . import UPSTREAM_URL, engine

if TYPE_CHECKING:
    from pygateway import Context, Response


@attrs.frozen
class Noop(gw.Plugin):
    name = "bench-noop"
    priority = 1000

    async def access(self, ctx: Context) -> Response | None:
        return None

    async def log(self, ctx: Context) -> None:
        return None


app = gw.Gateway(
    services=[
        gw.Service(name="upstream", url=UPSTREAM_URL, routes=[gw.Route(name="all", paths=["/"])]),
    ],
    plugins=[Noop()],
    engine=engine(),
)
