"""Load a Kong declarative file (examples/kong.yaml) and send requests through it.

    python examples/declarative.py

The upstream hosts in the file (`orders.internal`, the `catalog-pool` targets) do not exist:
`engines=` maps them to an in-process echo app, which answers with what it received. Without
`engines=`, the same gateway proxies over the network: `pygateway run examples/kong.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

import pygateway as gw
from pygateway.testing import client, echo_engine

CONFIG = Path(__file__).with_name("kong.yaml")


def load_gateway(path: Path = CONFIG) -> gw.Gateway:
    # Keyword arguments after the path are Gateway settings (engine, trusted_ips, ...).
    return gw.Gateway.from_config(
        path, engines={"orders.internal": echo_engine(), "catalog-pool": echo_engine()}
    )


async def main() -> dict[str, Any]:
    gateway = load_gateway()
    print(gateway)
    results: dict[str, Any] = {}
    async with gateway, client(gateway) as http:
        response = await http.get("/orders", params={"status": "open"})
        results["orders"] = (response.status_code, response.json()["path"])

        response = await http.get("/orders/7")
        results["order-by-id"] = (response.status_code, response.json()["path"])

        response = await http.get("/orders", params={"x-maintenance": "1"})
        results["maintenance"] = (response.status_code, response.json()["message"])

        # The catalog route matches on host; its upstream balances 2:1 over two targets.
        hosts = []
        for _ in range(3):
            response = await http.get("http://api.shop.example.com/catalog/items")
            hosts.append(response.json()["headers"]["host"][0])
        results["catalog targets"] = hosts

        response = await http.get("http://elsewhere.example.org/catalog/items")
        results["catalog, other host"] = (response.status_code, response.json()["message"])

    # to_config() exports Kong's declarative format; loading it back gives the same config.
    exported = gateway.to_config()
    results["round trip"] = gw.Gateway.from_config(exported).config == gateway.config

    # Mistakes are reported when the configuration is loaded, each with its field path.
    try:
        gw.Gateway.from_config(
            {
                "_format_version": "3.0",
                "services": [{"name": "bad", "url": "http://x", "routes": [{"paths": ["orders"]}]}],
                "plugins": [{"name": "no-such-plugin"}],
            }
        )
    except gw.ConfigurationError as exc:
        results["errors"] = str(exc).splitlines()

    for key, value in results.items():
        print(f"{key}: {value}")
    return results


if __name__ == "__main__":
    anyio.run(main)
