"""Declaring plugins: mistakes caught at registration and at Gateway build; the registry;
custom plugins in declarative config; `from_config` / `to_config`.

The registry is global: every plugin name registered here starts with `decl-` and is used by
one test only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs
import pytest

import pygateway as gw
from pygateway.engines import MockEngine, UpstreamRequest, UpstreamResponse
from pygateway.testing import client


def mock() -> MockEngine:
    return MockEngine(lambda request: UpstreamResponse(200, content=b"ok"))


def declaration_error(cls: type[gw.Plugin]) -> str:
    """The message `register` gives for `cls`, checking Gateway build says the same."""
    with pytest.raises(gw.PluginDeclarationError) as registered:
        gw.plugins.register(cls)
    assert cls.name not in gw.plugins.available() or gw.plugins.available()[cls.name] is not cls
    with pytest.raises(gw.ConfigurationError) as built:
        gw.Gateway(plugins=[cls()])
    message = str(registered.value)
    for line in message.splitlines():
        assert f"plugins[0]: {line}" in str(built.value)
    return message


# -- misdeclared plugins -----------------------------------------------------------------


def _sync_phase_class(phase: str) -> type[gw.Plugin]:
    def method(self: Any, *args: Any) -> None:
        return None

    namespace = {"name": f"decl-sync-{phase.replace('_', '-')}", phase: method}
    return attrs.frozen(type(f"Sync{phase.title().replace('_', '')}", (gw.Plugin,), namespace))


@pytest.mark.parametrize("phase", [*gw.plugins.PHASES, "startup", "shutdown"])
def test_a_sync_phase_fails_naming_the_class_and_the_fix(phase: str) -> None:
    cls = _sync_phase_class(phase)
    message = declaration_error(cls)
    assert f"{cls.__qualname__}.{phase} must be a coroutine" in message
    assert f"async def {phase}" in message


@attrs.frozen
class MisspelledAccess(gw.Plugin):
    name = "decl-misspelled-access"

    async def acess(self, ctx: gw.Context) -> gw.Response | None:
        return None


@attrs.frozen
class MisspelledHeaderFilter(gw.Plugin):
    name = "decl-misspelled-header-filter"

    async def header_filters(self, ctx: gw.Context) -> None:
        return None


@pytest.mark.parametrize(
    ("cls", "attr", "phase"),
    [
        (MisspelledAccess, "acess", "access"),
        (MisspelledHeaderFilter, "header_filters", "header_filter"),
    ],
)
def test_a_misspelled_phase_fails_suggesting_the_right_name(
    cls: type[gw.Plugin], attr: str, phase: str
) -> None:
    message = declaration_error(cls)
    assert f"{cls.__qualname__}.{attr} looks like a misspelled phase" in message
    assert f"did you mean '{phase}'?" in message


@attrs.frozen
class HelperMethods(gw.Plugin):
    """Methods that are not near a phase name are fine."""

    name = "decl-helper-methods"

    def helper(self) -> int:
        return 1

    async def fetch_token(self) -> str:
        return "t"

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        return None


def test_helper_methods_with_other_names_are_not_mistaken_for_phases() -> None:
    assert gw.plugins.register(HelperMethods) is HelperMethods
    gw.Gateway(plugins=[HelperMethods()])


class NotAttrs(gw.Plugin):
    name = "decl-not-attrs"

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        return None


def test_a_plugin_that_is_not_an_attrs_class_fails() -> None:
    message = declaration_error(NotAttrs)
    assert "NotAttrs must be an attrs class: decorate it with @attrs.frozen" in message


@pytest.mark.parametrize("name", ["", "My-Plugin", "has space", "-leading-dash", "dotted.name"])
def test_a_bad_plugin_name_fails(name: str) -> None:
    cls = attrs.frozen(type("BadName", (gw.Plugin,), {"name": name}))
    message = declaration_error(cls)
    assert f"BadName.name must be a lower-case plugin name like 'my-plugin' (got {name!r})" in (
        message
    )


@pytest.mark.parametrize("priority", ["high", 1.5, None, True])
def test_a_priority_that_is_not_an_integer_fails(priority: Any) -> None:
    cls = attrs.frozen(
        type("BadPriority", (gw.Plugin,), {"name": "decl-bad-priority", "priority": priority})
    )
    message = declaration_error(cls)
    assert f"BadPriority.priority must be an integer (got {priority!r})" in message


@pytest.mark.parametrize(
    "scopes",
    [frozenset({"global", "workspace"}), frozenset({"routes"}), frozenset()],
    ids=["unknown-scope", "plural", "empty"],
)
def test_scopes_that_are_not_a_subset_of_the_known_scopes_fail(scopes: frozenset[str]) -> None:
    cls = attrs.frozen(
        type("BadScopes", (gw.Plugin,), {"name": "decl-bad-scopes", "scopes": scopes})
    )
    message = declaration_error(cls)
    assert "BadScopes.scopes must be a subset of ['consumer', 'global', 'route', 'service']" in (
        message
    )


@attrs.frozen
class ManyMistakes(gw.Plugin):
    name = "Many Mistakes"
    priority = "first"  # type: ignore[assignment]

    def access(self, ctx: gw.Context) -> gw.Response | None:  # type: ignore[override]
        return None

    async def acess(self, ctx: gw.Context) -> gw.Response | None:
        return None


def test_every_problem_of_a_class_is_reported_at_once() -> None:
    message = declaration_error(ManyMistakes)
    assert "ManyMistakes.name must be" in message
    assert "ManyMistakes.priority must be an integer" in message
    assert "ManyMistakes.access must be a coroutine" in message
    assert "ManyMistakes.acess looks like a misspelled phase" in message
    assert len(message.splitlines()) == 4


@attrs.frozen
class SyncOnRoute(gw.Plugin):
    name = "decl-sync-on-route"

    def access(self, ctx: gw.Context) -> gw.Response | None:  # type: ignore[override]
        return None


def test_a_misdeclared_plugin_fails_at_gateway_build_with_its_field_path() -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        gw.Gateway(
            services=[
                gw.Service(
                    name="s",
                    url="http://s.test",
                    routes=[gw.Route(paths=["/"], plugins=[gw.Scoped(SyncOnRoute())])],
                )
            ]
        )
    assert "services[0].routes[0].plugins[0]: SyncOnRoute.access must be a coroutine" in str(
        info.value
    )


def test_registering_something_that_is_not_a_plugin_class_fails() -> None:
    class Unrelated:
        name = "decl-unrelated"

    with pytest.raises(gw.PluginDeclarationError, match=r"not a subclass of pygateway\.Plugin"):
        gw.plugins.register(Unrelated)  # type: ignore[type-var]


def test_registering_a_plugin_instance_instead_of_its_class_fails_clearly() -> None:
    with pytest.raises(gw.PluginDeclarationError) as info:
        gw.plugins.register(gw.plugins.RequestTermination())  # type: ignore[type-var]
    assert "is a plugin instance" in str(info.value)
    assert "register the class (RequestTermination)" in str(info.value)


def test_a_declaration_error_is_a_configuration_error() -> None:
    assert issubclass(gw.PluginDeclarationError, gw.ConfigurationError)


# -- the registry ------------------------------------------------------------------------


@attrs.frozen
class Stamp(gw.Plugin):
    """Adds `header: value` to the upstream request."""

    name = "decl-stamp"
    priority = 700

    value: str
    header: str = "x-stamp"
    times: int = 1
    tags: tuple[str, ...] = ()
    mode: Literal["set", "add"] = "set"
    extra: Mapping[str, str] | None = None

    async def access(self, ctx: gw.Context) -> gw.Response | None:
        assert ctx.upstream_request is not None
        ctx.upstream_request.headers[self.header] = ",".join([self.value] * self.times)
        return None


def test_register_returns_the_class_and_can_be_used_as_a_decorator() -> None:
    @gw.plugins.register
    @attrs.frozen
    class Decorated(gw.Plugin):
        name = "decl-decorated"

    assert gw.plugins.get("decl-decorated") is Decorated
    assert gw.plugins.available()["decl-decorated"] is Decorated
    assert gw.plugins.register(Decorated) is Decorated  # registering again is harmless


def test_available_lists_the_bundled_plugins_by_name() -> None:
    available = gw.plugins.available()
    assert available["request-termination"] is gw.plugins.RequestTermination
    assert list(available) == sorted(available)


def test_get_of_an_unknown_name_fails_with_kongs_message() -> None:
    with pytest.raises(LookupError, match="plugin 'decl-no-such-plugin' not enabled"):
        gw.plugins.get("decl-no-such-plugin")


def test_registering_a_different_class_under_a_taken_name_fails() -> None:
    @attrs.frozen
    class First(gw.Plugin):
        name = "decl-taken"

    @attrs.frozen
    class Second(gw.Plugin):
        name = "decl-taken"

    gw.plugins.register(First)
    with pytest.raises(gw.PluginDeclarationError) as info:
        gw.plugins.register(Second)
    message = str(info.value)
    assert "plugin name 'decl-taken' is already registered" in message
    assert First.__qualname__ in message
    assert Second.__qualname__ in message
    assert gw.plugins.get("decl-taken") is First


def test_a_custom_plugin_cannot_take_a_bundled_plugins_name() -> None:
    @attrs.frozen
    class Impostor(gw.Plugin):
        name = "request-termination"

    with pytest.raises(gw.PluginDeclarationError, match="already registered"):
        gw.plugins.register(Impostor)
    assert gw.plugins.get("request-termination") is gw.plugins.RequestTermination


# -- declarative configuration -----------------------------------------------------------


def declarative(plugin: dict[str, Any]) -> dict[str, Any]:
    return {
        "_format_version": "3.0",
        "services": [
            {
                "name": "s",
                "url": "http://s.test",
                "routes": [{"name": "r", "paths": ["/"], "plugins": [plugin]}],
            }
        ],
    }


async def test_a_registered_plugin_is_usable_by_name_in_declarative_config() -> None:
    gw.plugins.register(Stamp)
    engine = mock()
    gateway = gw.Gateway.from_config(
        declarative({"name": "decl-stamp", "config": {"value": "v", "times": 2}}), engine=engine
    )
    async with client(gateway) as c:
        response = await c.get("/")
    assert response.status_code == 200
    request: UpstreamRequest = engine.requests[-1]
    assert gw.Headers(list(request.headers))["x-stamp"] == "v,v"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"value": "v", "nope": 1}, ["config.nope: unknown field"]),
        ({"value": 5}, ["config.value: expected a string"]),
        ({"value": "v", "times": "2"}, ["config.times: expected an integer"]),
        ({"value": "v", "tags": "a"}, ["config.tags: expected an array"]),
        ({"value": "v", "tags": ["a", 2]}, ["config.tags[1]: expected a string"]),
        ({"value": "v", "mode": "append"}, ["config.mode: expected one of: set, add"]),
        ({"value": "v", "extra": []}, ["config.extra: expected a map"]),
        ({"value": 1, "times": "x"}, ["config.value: expected", "config.times: expected"]),
    ],
)
def test_declarative_config_of_a_custom_plugin_is_validated_with_field_paths(
    config: dict[str, Any], expected: list[str]
) -> None:
    gw.plugins.register(Stamp)
    with pytest.raises(gw.ConfigurationError) as info:
        gw.Gateway.from_config(declarative({"name": "decl-stamp", "config": config}))
    message = str(info.value)
    for text in expected:
        assert f"services[0].routes[0].plugins[0].{text}" in message


def test_a_missing_required_field_of_a_custom_plugin_is_reported() -> None:
    gw.plugins.register(Stamp)
    with pytest.raises(gw.ConfigurationError, match=r"plugins\[0\]\.config") as info:
        gw.Gateway.from_config(declarative({"name": "decl-stamp", "config": {}}))
    assert "value" in str(info.value)


def test_an_unregistered_plugin_name_in_declarative_config_fails() -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        gw.Gateway.from_config(declarative({"name": "decl-never-registered"}))
    assert (
        "services[0].routes[0].plugins[0].name: plugin 'decl-never-registered' not enabled"
        in str(info.value)
    )


def test_from_config_rejects_unknown_fields() -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        Stamp.from_config({"value": "v", "nope": 1, "other": 2})
    assert info.value.errors == [(("nope",), "unknown field"), (("other",), "unknown field")]


def test_a_plugin_built_in_python_is_validated_too() -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        Stamp(value=5, times="x")  # type: ignore[arg-type]
    assert sorted(info.value.errors) == [
        (("times",), "expected an integer"),
        (("value",), "expected a string"),
    ]


def test_from_config_and_to_config_round_trip() -> None:
    plugin = Stamp(value="v", header="x-h", times=3, tags=["a", "b"], mode="add", extra={"k": "v"})
    config = plugin.to_config()
    assert config == {
        "value": "v",
        "header": "x-h",
        "times": 3,
        "tags": ["a", "b"],
        "mode": "add",
        "extra": {"k": "v"},
    }
    assert Stamp.from_config(config) == plugin
    termination = gw.plugins.RequestTermination(status_code=418, message="teapot")
    assert gw.plugins.RequestTermination.from_config(termination.to_config()) == termination
    assert gw.plugins.RequestTermination.from_config(None) == gw.plugins.RequestTermination()


def test_a_gateway_with_custom_plugins_round_trips_through_declarative_config() -> None:
    gw.plugins.register(Stamp)
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://s.test",
                routes=[gw.Route(name="r", paths=["/"], plugins=[Stamp(value="route")])],
                plugins=[gw.Scoped(Stamp(value="svc"), enabled=False, tags=["t"])],
            )
        ],
        consumers=[gw.Consumer(username="alice")],
        plugins=[gw.Scoped(Stamp(value="alice", tags=["x"]), consumer="alice")],
    )
    document = gateway.to_config()
    assert document["plugins"] == [
        {
            "name": "decl-stamp",
            "config": Stamp(value="alice", tags=["x"]).to_config(),
            "consumer": "alice",
            "enabled": True,
            "protocols": ["grpc", "grpcs", "http", "https"],
            "tags": [],
        }
    ]
    again = gw.Gateway.from_config(document)
    assert again.config == gateway.config
