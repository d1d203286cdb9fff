"""pygateway: a Kong-class API gateway you embed in your Python application.

import pygateway as gw

gateway = gw.Gateway(services=[
    gw.Service(name="users", url="http://users.internal:8080",
               routes=[gw.Route(paths=["/users"])]),
])
# `gateway` is an ASGI app: uvicorn myapp:gateway
"""

from __future__ import annotations

from . import engines, plugins
from ._context import Context, Request, ResponseState, UpstreamRequestState
from ._entities import (
    CACertificate,
    Certificate,
    Consumer,
    Credential,
    KeyAuthCredential,
    Route,
    Service,
    Target,
    Upstream,
)
from ._exceptions import (
    ConfigurationError,
    PluginDeclarationError,
    PygatewayError,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ._gateway import Gateway, GatewayMiddleware
from ._headers import Headers
from ._responses import Response
from ._snapshot import Configuration
from ._version import __version__
from .plugins import Plugin, Scoped

__all__ = [
    "CACertificate",
    "Certificate",
    "Configuration",
    "ConfigurationError",
    "Consumer",
    "Context",
    "Credential",
    "Gateway",
    "GatewayMiddleware",
    "Headers",
    "KeyAuthCredential",
    "Plugin",
    "PluginDeclarationError",
    "PygatewayError",
    "Request",
    "Response",
    "ResponseState",
    "Route",
    "Scoped",
    "Service",
    "Target",
    "Upstream",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRequestState",
    "UpstreamTimeout",
    "__version__",
    "engines",
    "plugins",
]
