"""Bundled plugins (class name = CamelCase of the Kong name) and the plugin registry.

`gw.plugins.RequestTermination(status_code=403)`; `gw.plugins.get("request-termination")`.
"""

from __future__ import annotations

from ._base import PHASES, Plugin, Scoped
from ._registry import available, get, register
from ._request_termination import RequestTermination

__all__ = [
    "PHASES",
    "Plugin",
    "RequestTermination",
    "Scoped",
    "available",
    "get",
    "register",
]

register(RequestTermination)
