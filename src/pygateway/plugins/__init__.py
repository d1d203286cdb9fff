"""Bundled plugins (class name = CamelCase of the Kong name) and the plugin registry.

`gw.plugins.KeyAuth(key_names=["apikey"])`; `gw.plugins.get("key-auth")` (by Kong name).
"""

from __future__ import annotations

from ._acl import Acl
from ._base import PHASES, Plugin, Scoped
from ._basic_auth import BasicAuth
from ._bot_detection import BotDetection
from ._correlation_id import CorrelationId
from ._cors import Cors
from ._datadog import Datadog, DatadogMetric
from ._file_log import FileLog
from ._hmac_auth import HmacAuth
from ._http_log import HttpLog
from ._ip_restriction import IpRestriction
from ._jwt import Jwt
from ._key_auth import KeyAuth
from ._oauth2 import OAuth2
from ._opentelemetry import Opentelemetry
from ._prometheus import Prometheus
from ._proxy_cache import ProxyCache
from ._rate_limiting import RateLimiting
from ._redirect import Redirect
from ._registry import available, get, register
from ._request_size_limiting import RequestSizeLimiting
from ._request_termination import RequestTermination
from ._request_transformer import RequestTransformer
from ._request_validator import RequestValidator
from ._response_ratelimiting import ResponseLimits, ResponseRatelimiting
from ._response_transformer import ResponseTransformer
from ._statsd import Statsd, StatsdMetric
from ._syslog import Syslog
from ._tcp_log import TcpLog
from ._udp_log import UdpLog
from ._websocket_size_limit import WebSocketSizeLimit

__all__ = [
    "Acl",
    "BasicAuth",
    "BotDetection",
    "CorrelationId",
    "Cors",
    "Datadog",
    "DatadogMetric",
    "FileLog",
    "HmacAuth",
    "HttpLog",
    "IpRestriction",
    "Jwt",
    "KeyAuth",
    "OAuth2",
    "Opentelemetry",
    "PHASES",
    "Plugin",
    "Prometheus",
    "ProxyCache",
    "RateLimiting",
    "Redirect",
    "RequestSizeLimiting",
    "RequestTermination",
    "RequestTransformer",
    "RequestValidator",
    "ResponseLimits",
    "ResponseRatelimiting",
    "ResponseTransformer",
    "Scoped",
    "Statsd",
    "StatsdMetric",
    "Syslog",
    "TcpLog",
    "UdpLog",
    "WebSocketSizeLimit",
    "available",
    "get",
    "register",
]

register(RequestTermination)
