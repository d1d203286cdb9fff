"""pygateway: a Kong-class API gateway you embed in your Python application.

import pygateway as gw

gateway = gw.Gateway(services=[
    gw.Service(name="users", url="http://users.internal:8080",
               routes=[gw.Route(paths=["/users"])]),
])
# `gateway` is an ASGI app: uvicorn myapp:gateway
"""

from __future__ import annotations

from . import balancers, engines, plugins, stores
from ._context import Context, Request, ResponseState, UpstreamRequestState
from ._entities import (
    SNI,
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
    RequestRejected,
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
from ._tls import ServerCertificates
from ._version import __version__
from .plugins import Plugin, Scoped
from .plugins._basic_auth import BasicAuthCredential
from .plugins._hmac_auth import HMACAuthCredential
from .plugins._jwt import JWTCredential
from .plugins._oauth2 import OAuth2Credential

__all__ = [
    "BasicAuthCredential",
    "CACertificate",
    "Certificate",
    "Configuration",
    "ConfigurationError",
    "Consumer",
    "Context",
    "Credential",
    "Gateway",
    "GatewayMiddleware",
    "HMACAuthCredential",
    "Headers",
    "JWTCredential",
    "KeyAuthCredential",
    "OAuth2Credential",
    "Plugin",
    "PluginDeclarationError",
    "PygatewayError",
    "Request",
    "RequestRejected",
    "Response",
    "ResponseState",
    "Route",
    "SNI",
    "Scoped",
    "ServerCertificates",
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
    "balancers",
    "engines",
    "plugins",
    "stores",
]
