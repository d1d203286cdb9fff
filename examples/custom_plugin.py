"""A custom plugin, registered once and used both in code and from declarative config.

    python examples/custom_plugin.py

`RequireTenant` refuses requests without a tenant header (an early answer from `access`),
tells the upstream which tenant called (a header on `ctx.upstream_request`), echoes the tenant
back to the client (`header_filter`) and logs each request with its latency (`log`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import attrs

import pygateway as gw
from pygateway.testing import client, echo_engine

logger = logging.getLogger("examples.tenants")


@gw.plugins.register  # usable by name ("require-tenant") in declarative config
@attrs.frozen
class RequireTenant(gw.Plugin):
    """Require a tenant header, optionally from a fixed list of tenants."""

    name = "require-tenant"  # the Kong-style name used in declarative config
    priority = 900  # higher runs first: after auth plugins (key-auth is 1250)

    # Fields are the plugin's configuration, checked when the plugin is built.
    header: str = "x-tenant"
    allowed: Sequence[str] = ()  # empty: any tenant is accepted

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        tenant = ctx.request.headers.get(self.header)  # header names are case-insensitive
        if not tenant:
            return gw.Response(400, json={"message": f"{self.header} header required"})
        if self.allowed and tenant not in self.allowed:
            return gw.Response(403, json={"message": f"unknown tenant '{tenant}'"})
        ctx.plugin_state["tenant"] = tenant  # per request, private to this plugin
        assert ctx.upstream_request is not None  # always set once a route matched
        ctx.upstream_request.headers["x-tenant-id"] = tenant
        return None  # carry on: the request is proxied

    async def header_filter(self, ctx: gw.Context) -> None:
        tenant = ctx.plugin_state.get("tenant")
        if tenant is not None and ctx.response is not None:
            ctx.response.headers["x-tenant"] = tenant

    async def log(self, ctx: gw.Context) -> None:
        # Runs after the last byte was sent, for proxied requests and early answers alike.
        logger.info(
            "tenant=%s route=%s status=%s latency=%sms",
            ctx.plugin_state.get("tenant", "-"),
            ctx.route.name if ctx.route else "-",
            ctx.response.status_code if ctx.response else "-",
            ctx.latencies.get("request", 0),
        )


def gateway_in_code() -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="reports",
                url="http://reports.internal",
                routes=[gw.Route(name="reports", paths=["/reports"])],
                # Service scope: every route of this service gets the plugin.
                plugins=[RequireTenant(allowed=["acme", "globex"])],
            )
        ],
        engines={"reports.internal": echo_engine()},
    )


def gateway_from_config() -> gw.Gateway:
    return gw.Gateway.from_config(
        {
            "_format_version": "3.0",
            "services": [
                {
                    "name": "reports",
                    "url": "http://reports.internal",
                    "routes": [{"name": "reports", "paths": ["/reports"]}],
                    "plugins": [
                        {"name": "require-tenant", "config": {"allowed": ["acme", "globex"]}}
                    ],
                }
            ],
        },
        engines={"reports.internal": echo_engine()},
    )


async def exercise(gateway: gw.Gateway) -> list[tuple[int, str]]:
    """Three requests: no tenant, an unknown tenant, a known one."""
    results = []
    async with gateway, client(gateway) as http:
        for headers in ({}, {"X-Tenant": "initech"}, {"X-Tenant": "acme"}):
            response = await http.get("/reports/daily", headers=headers)
            if response.status_code == 200:
                # The echo upstream shows the header the plugin added.
                detail = "upstream got x-tenant-id=" + response.json()["headers"]["x-tenant-id"][0]
            else:
                detail = response.json()["message"]
            results.append((response.status_code, detail))
    return results


async def main() -> dict[str, list[tuple[int, str]]]:
    results = {
        "in code": await exercise(gateway_in_code()),
        "declarative": await exercise(gateway_from_config()),
    }
    for how, outcomes in results.items():
        print(f"{how}:")
        for status, detail in outcomes:
            print(f"  {status}  {detail}")
    return results


if __name__ == "__main__":
    logging.basicConfig(format="%(name)s: %(message)s")
    logger.setLevel(logging.INFO)  # show the log phase's lines
    anyio.run(main)
