"""The public surface: what `import pygateway` promises. Changing it is an API change."""

from __future__ import annotations

import importlib.resources
from types import ModuleType

import pytest

import pygateway
import pygateway.admin
import pygateway.balancers
import pygateway.engines
import pygateway.plugins
import pygateway.stores
import pygateway.testing

EXPECTED = {
    pygateway.admin: ["AdminAPI", "FollowingGateway"],
    pygateway: [
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
    ],
    pygateway.plugins: [
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
    ],
    pygateway.balancers: [
        "ActiveHealthcheck",
        "ActiveHealthy",
        "ActiveUnhealthy",
        "Balancer",
        "ConsistentHashing",
        "Healthchecks",
        "Latency",
        "LeastConnections",
        "PassiveHealthcheck",
        "PassiveHealthy",
        "PassiveUnhealthy",
        "Peer",
        "RoundRobin",
    ],
    pygateway.stores: [
        "Change",
        "ConfigStore",
        "Counter",
        "CounterStore",
        "Hit",
        "MemoryConfigStore",
        "MemoryCounterStore",
        "PostgresConfigStore",
        "RedisClient",
        "RedisConfig",
        "RedisConnection",
        "RedisCounterStore",
        "RevisionConflict",
        "SQLiteConfigStore",
        "StoreError",
        "StoredConfig",
        "close_counter_stores",
        "counter_store",
        "open_config_store",
        "use_counter_store",
    ],
    pygateway.engines: [
        "ASGIEngine",
        "Engine",
        "HttpxEngine",
        "MockEngine",
        "NativeEngine",
        "UpstreamRequest",
        "UpstreamResponse",
        "UpstreamWebSocket",
        "WebSocketClosed",
    ],
    pygateway.testing: [
        "EchoUpstream",
        "StreamingASGITransport",
        "WebSocket",
        "WebSocketClosed",
        "WebSocketRejected",
        "client",
        "echo_engine",
        "websocket_connect",
    ],
}

MODULES = list(EXPECTED)
IDS = [m.__name__ for m in MODULES]


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_all_is_exactly_the_expected_public_names(module: ModuleType) -> None:
    assert list(module.__all__) == EXPECTED[module]


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_all_is_sorted(module: ModuleType) -> None:
    assert list(module.__all__) == sorted(module.__all__)


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_every_name_in_all_exists(module: ModuleType) -> None:
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_public_classes_say_they_live_in_the_package(module: ModuleType) -> None:
    """Public classes come from the package, never from a third-party library."""
    for name in module.__all__:
        obj = getattr(module, name)
        if isinstance(obj, type):
            assert obj.__module__.startswith("pygateway"), name


def test_the_plugin_registry_finds_bundled_plugins_by_kong_name() -> None:
    assert pygateway.plugins.get("request-termination") is pygateway.plugins.RequestTermination
    assert pygateway.plugins.available()["request-termination"] is (
        pygateway.plugins.RequestTermination
    )


def test_an_unknown_plugin_name_is_a_lookup_error_with_kongs_message() -> None:
    with pytest.raises(LookupError) as excinfo:
        pygateway.plugins.get("no-such-plugin")
    assert excinfo.value.args[0] == (
        "plugin 'no-such-plugin' not enabled; add it to the 'plugins' configuration property"
    )


def test_the_facade_re_exports_the_same_objects_as_the_subpackages() -> None:
    assert pygateway.Plugin is pygateway.plugins.Plugin
    assert pygateway.Scoped is pygateway.plugins.Scoped


def test_the_version_is_a_string() -> None:
    assert isinstance(pygateway.__version__, str)
    assert pygateway.__version__[0].isdigit()


def test_the_error_tree_is_as_documented() -> None:
    assert issubclass(pygateway.ConfigurationError, pygateway.PygatewayError)
    assert issubclass(pygateway.ConfigurationError, ValueError)
    assert issubclass(pygateway.PluginDeclarationError, pygateway.ConfigurationError)
    assert issubclass(pygateway.UpstreamError, pygateway.PygatewayError)
    for error in (
        pygateway.UpstreamConnectError,
        pygateway.UpstreamTimeout,
        pygateway.UpstreamProtocolError,
    ):
        assert issubclass(error, pygateway.UpstreamError)
    assert issubclass(pygateway.UpstreamConnectTimeout, pygateway.UpstreamConnectError)
    assert issubclass(pygateway.UpstreamConnectTimeout, pygateway.UpstreamTimeout)


def test_the_package_ships_py_typed() -> None:
    assert importlib.resources.files("pygateway").joinpath("py.typed").is_file()
