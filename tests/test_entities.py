"""The configuration entities built in Python: Kong's defaults, Kong's validation messages
with field paths, immutability, and the cross-entity checks a Gateway runs when it is built."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import pytest

import pygateway as gw
from pygateway import (
    ConfigurationError,
    Consumer,
    Gateway,
    KeyAuthCredential,
    Route,
    Service,
    Target,
    Upstream,
)
from pygateway.testing import client, echo_engine

SOME_UUID = "3c9e3a4e-5d0a-4c8e-9a3b-7f2d1e6b8c90"


def errors_of(excinfo: pytest.ExceptionInfo[ConfigurationError]) -> list[tuple[Any, str]]:
    return list(excinfo.value.errors)


# -- Kong's defaults ----------------------------------------------------------------------


def test_a_service_gets_kong_defaults() -> None:
    service = Service(host="users.internal")
    assert service.protocol == "http"
    assert service.port == 80
    assert service.path is None
    assert service.retries == 5
    assert service.connect_timeout == 60_000
    assert service.write_timeout == 60_000
    assert service.read_timeout == 60_000
    assert service.enabled is True
    assert service.routes == ()
    assert service.plugins == ()


def test_an_https_service_defaults_to_port_443() -> None:
    assert Service(host="users.internal", protocol="https").port == 443


def test_an_explicit_port_wins_over_the_protocol_default() -> None:
    assert Service(host="users.internal", protocol="https", port=8443).port == 8443


def test_a_route_gets_kong_defaults() -> None:
    route = Route(paths=["/users"])
    assert route.protocols == ("http", "https")
    assert route.strip_path is True
    assert route.preserve_host is False
    assert route.regex_priority == 0
    assert route.path_handling == "v0"
    assert route.https_redirect_status_code == 426
    assert route.request_buffering is True
    assert route.response_buffering is True
    assert route.methods is None
    assert route.hosts is None
    assert route.headers is None


def test_a_target_port_defaults_to_8000_and_its_weight_to_100() -> None:
    target = Target("users-1.internal")
    assert target.target == "users-1.internal:8000"
    assert target.host == "users-1.internal"
    assert target.port == 8000
    assert target.weight == 100


def test_a_target_keeps_an_explicit_port() -> None:
    target = Target("10.0.0.5:8080", weight=0)
    assert (target.host, target.port, target.weight) == ("10.0.0.5", 8080, 0)


def test_an_ipv6_target_is_written_with_brackets() -> None:
    target = Target("[::1]:8080")
    assert target.target == "[::1]:8080"
    assert (target.host, target.port) == ("::1", 8080)
    assert Target("::1").target == "[::1]:8000"


def test_an_upstream_gets_kong_defaults() -> None:
    upstream = Upstream(name="users.internal")
    assert upstream.algorithm == "round-robin"
    assert upstream.slots == 10_000
    assert upstream.hash_on == "none"
    assert upstream.hash_fallback == "none"
    assert upstream.hash_on_cookie_path == "/"
    assert upstream.use_srv_name is False
    assert upstream.targets == ()


def test_a_key_credential_without_a_key_gets_a_random_one() -> None:
    first, second = KeyAuthCredential(), KeyAuthCredential()
    assert first.key
    assert len(first.key) >= 20
    assert first.key != second.key


# -- the url shorthand --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "protocol", "host", "port", "path"),
    [
        ("http://users.internal", "http", "users.internal", 80, None),
        ("https://users.internal", "https", "users.internal", 443, None),
        ("http://users.internal:8080/v1", "http", "users.internal", 8080, "/v1"),
        ("https://10.0.0.5:8443/api/v2", "https", "10.0.0.5", 8443, "/api/v2"),
        ("http://users.internal/", "http", "users.internal", 80, "/"),
    ],
)
def test_the_url_shorthand_is_split_into_protocol_host_port_and_path(
    url: str, protocol: str, host: str, port: int, path: str | None
) -> None:
    service = Service(url=url)
    assert (service.protocol, service.host, service.port, service.path) == (
        protocol,
        host,
        port,
        path,
    )


def test_a_service_built_from_a_url_equals_one_built_from_its_parts() -> None:
    assert Service(name="s", url="https://api.example.com:8443/v1") == Service(
        name="s", protocol="https", host="api.example.com", port=8443, path="/v1"
    )


@pytest.mark.parametrize(
    "url",
    [
        "ftp://users.internal",
        "users.internal",
        "http://",
        "http://users.internal:http",
        "http://users.internal:70000",
    ],
)
def test_an_invalid_url_is_refused_naming_it(url: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Service(url=url)
    assert errors_of(excinfo) == [(("url",), f"invalid url: {url}")]
    assert str(excinfo.value) == f"url: invalid url: {url}"


def test_a_service_needs_a_host() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Service(name="nowhere")
    assert errors_of(excinfo) == [(("host",), "required field missing")]


def test_a_service_path_must_be_normalized() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Service(host="a.internal", path="/v1//users")
    assert errors_of(excinfo) == [
        (("path",), "non-normalized path, consider use '/v1/users' instead")
    ]


# -- field types and ranges, with Kong's wording ------------------------------------------


@pytest.mark.parametrize(
    ("build", "path", "reason"),
    [
        (lambda: Service(host="a.internal", retries="5"), ("retries",), "expected an integer"),
        (lambda: Service(host="a.internal", retries=True), ("retries",), "expected an integer"),
        (lambda: Service(host=5), ("host",), "expected a string"),
        (lambda: Service(host="a.internal", name=42), ("name",), "expected a string"),
        (lambda: Service(host="a.internal", tags="prod"), ("tags",), "expected an array"),
        (lambda: Service(host="a.internal", enabled="yes"), ("enabled",), "expected a boolean"),
        (
            lambda: Service(host="a.internal", protocol="grpc"),
            ("protocol",),
            "expected one of: http, https",
        ),
        (
            lambda: Service(host="a.internal", retries=32768),
            ("retries",),
            "value should be between 0 and 32767",
        ),
        (
            lambda: Service(host="a.internal", retries=-1),
            ("retries",),
            "value should be between 0 and 32767",
        ),
        (
            lambda: Service(host="a.internal", connect_timeout=0),
            ("connect_timeout",),
            "value should be between 1 and 2147483646",
        ),
        (
            lambda: Service(host="a.internal", port=65536),
            ("port",),
            "value should be between 0 and 65535",
        ),
        (
            lambda: Service(host="a.internal", tls_verify_depth=65, protocol="https"),
            ("tls_verify_depth",),
            "value should be between 0 and 64",
        ),
        (lambda: Service(host="bad host!"), ("host",), "invalid hostname: bad host!"),
        (lambda: Service(host="a.internal", id="42"), ("id",), "expected a valid UUID"),
        (lambda: Route(paths="/users"), ("paths",), "expected an array"),
        (lambda: Route(paths=[1]), ("paths", 0), "expected a string"),
        (lambda: Route(paths=["/a"], strip_path="no"), ("strip_path",), "expected a boolean"),
        (
            lambda: Route(paths=["/a"], regex_priority="high"),
            ("regex_priority",),
            "expected an integer",
        ),
        (
            lambda: Route(paths=["/a"], https_redirect_status_code=200),
            ("https_redirect_status_code",),
            "expected one of: 426, 301, 302, 307, 308",
        ),
        (
            lambda: Route(paths=["/a"], path_handling="v2"),
            ("path_handling",),
            "expected one of: v0, v1",
        ),
        (
            lambda: Route(paths=["/a"], protocols=["grpc"]),
            ("protocols", 0),
            "expected one of: http, https, ws, wss",
        ),
        (lambda: Route(paths=["/a"], headers=["x-a"]), ("headers",), "expected a map"),
        (lambda: Consumer(username=7), ("username",), "expected a string"),
        (
            lambda: Upstream(name="u.internal", slots=5),
            ("slots",),
            "value should be between 10 and 65536",
        ),
        (
            lambda: Upstream(name="u.internal", algorithm="random"),
            ("algorithm",),
            "expected one of: round-robin, consistent-hashing, least-connections, latency",
        ),
        (
            lambda: Target("a.internal", weight=70000),
            ("weight",),
            "value should be between 0 and 65535",
        ),
        (lambda: Target("a.internal", weight="heavy"), ("weight",), "expected an integer"),
        (
            lambda: KeyAuthCredential(key="k", ttl=-1),
            ("ttl",),
            "value should be between 0 and 100000000",
        ),
    ],
)
def test_a_wrong_field_is_refused_with_kongs_message_and_its_path(
    build: Any, path: tuple[Any, ...], reason: str
) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        build()
    assert (path, reason) in errors_of(excinfo)


def test_every_wrong_field_of_an_entity_is_reported_at_once() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Service(host="a.internal", retries="many", read_timeout=0, tags=[1])
    assert errors_of(excinfo) == [
        (("retries",), "expected an integer"),
        (("read_timeout",), "value should be between 1 and 2147483646"),
        (("tags", 0), "expected a string"),
    ]
    assert str(excinfo.value).splitlines() == [
        "retries: expected an integer",
        "read_timeout: value should be between 1 and 2147483646",
        "tags[0]: expected a string",
    ]


def test_a_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="expected an integer"):
        Service(host="a.internal", retries="5")


@pytest.mark.parametrize(
    "tls_field",
    [
        {"tls_verify": True},
        {"tls_verify_depth": 2},
        {"ca_certificates": [SOME_UUID]},
        {"client_certificate": SOME_UUID},
    ],
)
def test_tls_only_fields_are_refused_on_an_http_service(tls_field: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Service(host="a.internal", **tls_field)
    [name] = tls_field
    assert errors_of(excinfo) == [((name,), "value must be null when 'protocol' is not 'https'")]


def test_tls_verify_is_accepted_on_an_https_service() -> None:
    assert Service(host="a.internal", protocol="https", tls_verify=False).tls_verify is False


def test_a_tls_verify_depth_pygateway_cannot_apply_is_refused_not_ignored() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Service(host="a.internal", protocol="https", tls_verify_depth=2)
    assert errors_of(excinfo) == [(("tls_verify_depth",), "not supported by pygateway yet")]


# -- routes -------------------------------------------------------------------------------


def test_a_route_must_match_on_something() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Route(name="catch-nothing")
    assert errors_of(excinfo) == [
        (
            (),
            "must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is "
            "'http' or 'https'",
        )
    ]


@pytest.mark.parametrize(
    "matcher",
    [
        {"methods": ["GET"]},
        {"hosts": ["api.example.com"]},
        {"headers": {"x-tenant": ["acme"]}},
        {"paths": ["/"]},
    ],
)
def test_any_one_matcher_is_enough_for_a_route(matcher: dict[str, Any]) -> None:
    Route(**matcher)


def test_route_methods_must_be_upper_case() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Route(methods=["GET", "get", "Post"])
    assert errors_of(excinfo) == [
        (("methods", 1), "invalid value: get"),
        (("methods", 2), "invalid value: Post"),
    ]


@pytest.mark.parametrize("name", ["Host", "host", "HOST"])
def test_the_host_header_cannot_be_a_route_header(name: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Route(headers={name: ["api.example.com"]})
    assert errors_of(excinfo) == [
        (
            ("headers",),
            "cannot contain 'host' header, which must be specified in the 'hosts' attribute",
        )
    ]


def test_a_route_header_needs_at_least_one_value() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Route(headers={"x-tenant": []})
    assert errors_of(excinfo) == [(("headers", "x-tenant"), "length must be at least 1")]


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("*.*.example.com", "invalid wildcard: must have at most one wildcard"),
        ("api.*.com", "invalid wildcard: must be placed at leftmost or rightmost label"),
        ("*example.com", "invalid wildcard: must be placed at leftmost or rightmost label"),
        ("api.example.com:99999", "invalid port number: 99999"),
        ("api.example.com:http", "invalid port number: http"),
        ("bad_host!", "invalid hostname: bad_host!"),
    ],
)
def test_a_bad_route_host_is_refused(host: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Route(hosts=["ok.example.com", host])
    assert errors_of(excinfo) == [(("hosts", 1), reason)]


@pytest.mark.parametrize(
    "host", ["*.example.com", "example.*", "api.example.com:8080", "10.0.0.1", "localhost"]
)
def test_wildcard_and_ported_route_hosts_are_accepted(host: str) -> None:
    assert Route(hosts=[host]).hosts == (host,)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/users/../admin", "non-normalized path, consider use '/admin' instead"),
        ("/a//b", "non-normalized path, consider use '/a/b' instead"),
        ("/%7Euser", "non-normalized path, consider use '/~user' instead"),
        ("users", "should start with: / (fixed path) or ~/ (regex path)"),
    ],
)
def test_a_route_path_must_be_normalized(path: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Route(paths=["/ok", path])
    assert errors_of(excinfo) == [(("paths", 1), reason)]


def test_an_invalid_regex_path_is_refused() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Route(paths=["~/users/(unclosed"])
    [(path, reason)] = errors_of(excinfo)
    assert path == ("paths", 0)
    assert reason.startswith("invalid regex")


def test_a_look_around_regex_path_is_refused_like_kong_3() -> None:
    with pytest.raises(ConfigurationError, match="look-around") as excinfo:
        Route(paths=["~/users/(?!admin)"])
    assert errors_of(excinfo)[0][0] == ("paths", 0)


def test_a_regex_path_with_a_named_group_is_accepted() -> None:
    route = Route(paths=[r"~/users/(?<user_id>\d+)$"])
    assert route.paths == (r"~/users/(?<user_id>\d+)$",)


def test_every_route_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Route(methods=["get"], hosts=["a.*.b"], paths=["/x/./y"])
    assert [path for path, _ in errors_of(excinfo)] == [
        ("methods", 0),
        ("hosts", 0),
        ("paths", 0),
    ]


def test_a_nested_route_cannot_name_another_service() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Service(name="users", host="a.internal", routes=[Route(paths=["/"], service="billing")])
    assert errors_of(excinfo) == [
        (
            ("routes", 0, "service"),
            "route is nested under service 'users' but names service 'billing'",
        )
    ]


def test_a_nested_route_may_name_its_own_service() -> None:
    Service(name="users", host="a.internal", routes=[Route(paths=["/"], service="users")])


def test_bad_tags_are_refused() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Route(paths=["/"], tags=["ok", "a,b"])
    [(path, reason)] = errors_of(excinfo)
    assert path == ("tags",)
    assert reason.startswith("invalid tag 'a,b'")


@pytest.mark.parametrize("name", ["has space", "slash/ed", ""])
def test_an_entity_name_is_restricted_to_kongs_characters(name: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Service(name=name, host="a.internal")
    [(path, reason)] = errors_of(excinfo)
    assert path == ("name",)
    assert "the only accepted ascii characters are alphanumerics or ., -, _, and ~" in reason


def test_a_service_refuses_something_that_is_not_a_plugin_in_plugins() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Service(host="a.internal", plugins=["request-termination"])
    assert errors_of(excinfo) == [(("plugins", 0), "expected a Plugin or a Scoped")]


# -- consumers, upstreams, targets -------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"username": ""}, {"username": "", "custom_id": ""}])
def test_a_consumer_needs_a_username_or_a_custom_id(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Consumer(**kwargs)
    assert errors_of(excinfo) == [
        ((), "at least one of these fields must be non-empty: 'custom_id', 'username'")
    ]


@pytest.mark.parametrize("kwargs", [{"username": "alice"}, {"custom_id": "1001"}])
def test_a_consumer_with_a_username_or_a_custom_id_is_fine(kwargs: dict[str, Any]) -> None:
    Consumer(**kwargs)


@pytest.mark.parametrize("name", ["10.0.0.1", "::1", "[::1]"])
def test_an_upstream_cannot_be_named_like_an_ip_address(name: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Upstream(name=name)
    assert errors_of(excinfo) == [(("name",), "Invalid name; no ip addresses allowed")]


@pytest.mark.parametrize("name", ["users.internal:8080", "bad name"])
def test_an_upstream_name_must_be_a_plain_hostname(name: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Upstream(name=name)
    assert errors_of(excinfo) == [(("name",), f"Invalid name ('{name}'); must be a valid hostname")]


def test_an_upstream_needs_a_name() -> None:
    with pytest.raises(TypeError):
        Upstream()  # type: ignore[call-arg]


def test_an_upstream_hash_fallback_needs_a_hash_on() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Upstream(name="u.internal", hash_fallback="ip")
    assert errors_of(excinfo) == [
        (("hash_fallback",), "failed conditional validation given value of field 'hash_on'")
    ]


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("10.0.0.5:0", "invalid port number: 0"),
        ("10.0.0.5:65536", "invalid port number: 65536"),
        ("10.0.0.5:http", "invalid port number: http"),
        ("not a host:80", "Invalid target; not a valid hostname or ip address"),
        ("bad_host!", "Invalid target; not a valid hostname or ip address"),
        ("", "Invalid target; not a valid hostname or ip address"),
    ],
)
def test_a_bad_target_is_refused(target: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Target(target)
    assert errors_of(excinfo) == [(("target",), reason)]


def test_an_upstream_refuses_duplicate_targets() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Upstream(
            name="u.internal",
            targets=[Target("10.0.0.5:8080"), Target("10.0.0.6:8080"), Target("10.0.0.5:8080")],
        )
    assert errors_of(excinfo) == [(("targets", 2), "duplicate target '10.0.0.5:8080'")]


def test_a_target_without_a_port_duplicates_the_same_target_on_port_8000() -> None:
    with pytest.raises(ConfigurationError, match=r"duplicate target 'users-1\.internal:8000'"):
        Upstream(
            name="u.internal",
            targets=[Target("users-1.internal"), Target("users-1.internal:8000")],
        )


def test_a_key_credential_cannot_have_an_empty_key() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        KeyAuthCredential(key="")
    assert errors_of(excinfo) == [(("key",), "length must be at least 1")]


# -- immutability -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entity", "attribute", "value"),
    [
        (Service(host="a.internal"), "retries", 1),
        (Route(paths=["/"]), "paths", ("/x",)),
        (Consumer(username="alice"), "username", "bob"),
        (Upstream(name="u.internal"), "slots", 100),
        (Target("a.internal"), "weight", 1),
        (KeyAuthCredential(key="k"), "key", "other"),
    ],
)
def test_entities_are_frozen(entity: Any, attribute: str, value: Any) -> None:
    before = getattr(entity, attribute)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(entity, attribute, value)
    assert getattr(entity, attribute) == before


def test_lists_become_tuples() -> None:
    route = Route(
        methods=["GET"], hosts=["a.example.com"], paths=["/a"], headers={"x-a": ["1", "2"]}
    )
    service = Service(host="a.internal", routes=[route], tags=["t"])
    consumer = Consumer(username="alice", credentials=[KeyAuthCredential(key="k")], acls=["admins"])
    upstream = Upstream(name="u.internal", targets=[Target("a.internal")])
    assert route.methods == ("GET",)
    assert route.hosts == ("a.example.com",)
    assert route.paths == ("/a",)
    assert route.headers == {"x-a": ("1", "2")}
    assert route.protocols == ("http", "https")
    for value in (
        route.methods,
        route.hosts,
        route.paths,
        route.headers["x-a"],
        service.routes,
        service.tags,
        consumer.credentials,
        consumer.acls,
        upstream.targets,
    ):
        assert type(value) is tuple


def test_mappings_are_read_only_and_entities_are_hashable() -> None:
    headers = {"x-a": ["1", "2"]}
    route = Route(name="r", paths=["/a"], headers=headers)
    service = Service(name="s", host="a.internal", routes=[route])
    upstream = Upstream(
        name="u.internal",
        healthchecks={"active": {"headers": {"x-probe": ["1"]}}},
    )
    headers["x-b"] = ["3"]  # the caller's dict is not the entity's
    assert route.headers == {"x-a": ("1", "2")}
    assert route.headers is not None
    with pytest.raises(TypeError):
        route.headers["x-b"] = ("3",)  # type: ignore[index]
    assert upstream.healthchecks.active.headers == {"x-probe": ("1",)}
    # Equal entities hash alike: they work as set members and dict keys.
    again = Route(name="r", paths=["/a"], headers={"x-a": ("1", "2")})
    assert hash(route) == hash(again)
    assert len({route, again}) == 1
    assert {service: "x"}[Service(name="s", host="a.internal", routes=[again])] == "x"
    assert hash(upstream) == hash(attrs.evolve(upstream))


def test_a_read_only_mapping_is_exported_as_a_plain_dict() -> None:
    gateway = Gateway(
        services=[
            Service(
                name="s", host="a.internal", routes=[Route(paths=["/"], headers={"x-a": ["1"]})]
            )
        ],
        upstreams=[Upstream(name="u.internal", healthchecks={"active": {"timeout": 1}})],
    )
    exported = gateway.to_config()
    assert exported["services"][0]["routes"][0]["headers"] == {"x-a": ["1"]}
    assert type(exported["services"][0]["routes"][0]["headers"]) is dict
    assert type(exported["upstreams"][0]["healthchecks"]["active"]) is dict


def test_the_caller_list_is_not_shared_with_the_entity() -> None:
    paths = ["/a"]
    route = Route(paths=paths)
    paths.append("/b")
    assert route.paths == ("/a",)


def test_evolve_derives_a_changed_copy() -> None:
    service = Service(name="users", url="http://users.internal:8080/v1")
    faster = attrs.evolve(service, read_timeout=5_000, retries=0)
    assert (faster.read_timeout, faster.retries) == (5_000, 0)
    assert (faster.host, faster.port, faster.path) == ("users.internal", 8080, "/v1")
    assert service.read_timeout == 60_000
    assert faster != service


def test_evolve_revalidates() -> None:
    route = Route(paths=["/users"], methods=["GET"])
    with pytest.raises(ConfigurationError) as excinfo:
        attrs.evolve(route, methods=["get"])
    assert errors_of(excinfo) == [(("methods", 0), "invalid value: get")]
    with pytest.raises(ConfigurationError, match="value should be between 0 and 32767"):
        attrs.evolve(Service(host="a.internal"), retries=100_000)


def test_evolve_normalizes_lists_to_tuples() -> None:
    route = attrs.evolve(Route(paths=["/a"]), paths=["/b", "/c"])
    assert route.paths == ("/b", "/c")


# -- identity ------------------------------------------------------------------------------


def test_equality_ignores_ids() -> None:
    assert Service(name="users", host="a.internal") == Service(
        name="users", host="a.internal", id=str(uuid.uuid4())
    )
    assert Route(paths=["/"], id=str(uuid.uuid4())) == Route(paths=["/"])
    assert Consumer(username="alice", id=str(uuid.uuid4())) == Consumer(username="alice")
    assert Target("a.internal", id=str(uuid.uuid4())) == Target("a.internal")
    assert Route(paths=["/"]) != Route(paths=["/"], strip_path=False)


def test_named_entities_get_deterministic_ids() -> None:
    pairs = [
        (Service(name="users", host="a.internal"), Service(name="users", host="b.internal")),
        (Route(name="users", paths=["/a"]), Route(name="users", paths=["/b"])),
        (Consumer(username="alice"), Consumer(username="alice", tags=["x"])),
        (Upstream(name="u.internal"), Upstream(name="u.internal", slots=100)),
    ]
    for first, second in pairs:
        assert first.id is not None
        assert uuid.UUID(first.id)
        assert first.id == second.id


def test_a_key_auth_credential_id_is_random_and_says_nothing_about_the_key() -> None:
    first, second = KeyAuthCredential(key="guessable"), KeyAuthCredential(key="guessable")
    assert first.id is not None
    assert second.id is not None
    assert uuid.UUID(first.id).version == 4
    assert first.id != second.id
    assert first == second  # ids take no part in equality
    assert KeyAuthCredential(key="k", id=SOME_UUID).id == SOME_UUID


def test_different_names_get_different_ids() -> None:
    assert (
        Service(name="users", host="a.internal").id != Service(name="orders", host="a.internal").id
    )
    assert Consumer(username="alice").id != Consumer(username="bob").id
    assert Consumer(username="x").id != Consumer(custom_id="x").id
    # a service and a route with the same name are different entities
    assert Service(name="users", host="a.internal").id != Route(name="users", paths=["/"]).id


def test_unnamed_entities_get_no_id() -> None:
    assert Service(host="a.internal").id is None
    assert Route(paths=["/"]).id is None


def test_an_explicit_id_is_kept() -> None:
    assert Service(name="users", host="a.internal", id=SOME_UUID).id == SOME_UUID


# -- cross-entity checks when a Gateway is built -------------------------------------------


def test_a_gateway_refuses_two_services_with_the_same_name() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(services=[Service(name="users", host="a"), Service(name="users", host="b")])
    assert ((("services", 1, "name"), "UNIQUE violation detected on 'users'")) in errors_of(excinfo)


def test_a_gateway_refuses_two_routes_with_the_same_name() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(
            services=[
                Service(
                    name="users",
                    host="a",
                    routes=[Route(name="r", paths=["/a"]), Route(name="r", paths=["/b"])],
                )
            ]
        )
    assert ((("services", 0, "routes", 1, "name"), "UNIQUE violation detected on 'r'")) in (
        errors_of(excinfo)
    )


def test_a_gateway_refuses_two_consumers_with_the_same_username() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(consumers=[Consumer(username="alice"), Consumer(username="alice")])
    assert errors_of(excinfo) == [
        (("consumers", 1, "username"), "UNIQUE violation detected on 'alice'")
    ]


def test_a_gateway_refuses_two_consumers_with_the_same_custom_id() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(
            consumers=[
                Consumer(username="a", custom_id="1001"),
                Consumer(username="b", custom_id="1001"),
            ]
        )
    assert errors_of(excinfo) == [
        (("consumers", 1, "custom_id"), "UNIQUE violation detected on '1001'")
    ]


def test_a_username_and_a_custom_id_may_be_the_same_text() -> None:
    alice = Consumer(username="alice")
    partner = Consumer(custom_id="alice")
    gateway = Gateway(
        consumers=[partner, alice],
        plugins=[gw.Scoped(gw.plugins.RequestTermination(), consumer="alice")],
    )
    # A reference means the username before the custom_id; the id before either.
    assert gateway.snapshot.consumers_by_key["alice"] is alice
    assert partner.id is not None
    assert gateway.snapshot.consumers_by_key[partner.id] is partner


def test_a_gateway_refuses_two_consumers_with_the_same_key_auth_key() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(
            consumers=[
                Consumer(username="alice", credentials=[KeyAuthCredential(key="s3cret")]),
                Consumer(
                    username="bob",
                    credentials=[KeyAuthCredential(key="other"), KeyAuthCredential(key="s3cret")],
                ),
            ]
        )
    assert errors_of(excinfo) == [
        (
            ("consumers", 1, "keyauth_credentials", 1, "key"),
            "UNIQUE violation detected on 'key' "
            "(already used at consumers[0].keyauth_credentials[0])",
        )
    ]
    assert "s3cret" not in str(excinfo.value)  # a key is a secret, even in an error


def test_a_gateway_refuses_two_credentials_with_the_same_id() -> None:
    one = KeyAuthCredential(key="k1", id=SOME_UUID)
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(
            consumers=[
                Consumer(username="alice", credentials=[one]),
                Consumer(username="bob", credentials=[attrs.evolve(one, key="k2")]),
            ]
        )
    assert errors_of(excinfo) == [
        (
            ("consumers", 1, "keyauth_credentials", 0, "id"),
            "UNIQUE violation detected on 'id' "
            "(already used at consumers[0].keyauth_credentials[0])",
        )
    ]


def test_a_gateway_refuses_two_upstreams_with_the_same_name() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(upstreams=[Upstream(name="u.internal"), Upstream(name="u.internal")])
    assert errors_of(excinfo) == [
        (("upstreams", 1, "name"), "UNIQUE violation detected on 'u.internal'")
    ]


def test_a_gateway_refuses_a_route_naming_an_unknown_service() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(
            services=[Service(name="users", host="a")],
            routes=[Route(paths=["/ok"], service="users"), Route(paths=["/x"], service="billing")],
        )
    assert errors_of(excinfo) == [
        (
            ("routes", 1, "service"),
            "the foreign key 'billing' does not reference an existing 'services' entity",
        )
    ]


def test_a_top_level_route_may_name_its_service_by_id() -> None:
    service = Service(name="users", host="a")
    gateway = Gateway(services=[service], routes=[Route(paths=["/"], service=service.id)])
    assert gateway.config.routes[0].service == service.id


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        (
            {"route": "nope"},
            "the foreign key 'nope' does not reference an existing 'routes' entity",
        ),
        (
            {"service": "nope"},
            "the foreign key 'nope' does not reference an existing 'services' entity",
        ),
        (
            {"consumer": "nope"},
            "the foreign key 'nope' does not reference an existing 'consumers' entity",
        ),
    ],
)
def test_a_gateway_refuses_a_plugin_scoped_to_a_missing_entity(
    scope: dict[str, str], message: str
) -> None:
    [field] = scope
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(plugins=[gw.Scoped(plugin=gw.plugins.RequestTermination(), **scope)])
    assert errors_of(excinfo) == [(("plugins", 0, field), message)]


@attrs.frozen
class RouteOnly(gw.Plugin):
    name = "test-entities-route-only"
    scopes = frozenset({"route"})


@attrs.frozen
class NoConsumer(gw.Plugin):
    name = "test-entities-no-consumer"
    scopes = frozenset({"global", "route", "service"})


def test_a_plugin_that_forbids_consumers_cannot_be_put_on_a_consumer() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(consumers=[Consumer(username="alice", plugins=[NoConsumer()])])
    assert errors_of(excinfo) == [
        (
            ("consumers", 0, "plugins", 0, "consumer"),
            "plugin 'test-entities-no-consumer' cannot be applied to a consumer",
        )
    ]


def test_a_route_only_plugin_cannot_be_global_or_on_a_service() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(
            services=[
                Service(
                    name="s",
                    host="a",
                    plugins=[RouteOnly()],
                    routes=[Route(paths=["/"], plugins=[RouteOnly()])],
                )
            ],
            plugins=[RouteOnly()],
        )
    assert errors_of(excinfo) == [
        (("plugins", 0), "plugin 'test-entities-route-only' cannot be applied globally"),
        (
            ("services", 0, "plugins", 0, "service"),
            "plugin 'test-entities-route-only' cannot be applied to a service",
        ),
    ]


def test_the_same_plugin_twice_on_one_route_is_refused() -> None:
    rt = gw.plugins.RequestTermination
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(
            services=[
                Service(
                    name="s",
                    host="a",
                    routes=[Route(name="r", paths=["/"], plugins=[rt(), rt(status_code=404)])],
                )
            ]
        )
    assert errors_of(excinfo) == [
        (
            ("services", 0, "routes", 0, "plugins", 1),
            "UNIQUE violation detected on plugin 'request-termination' (already configured at "
            "services[0].routes[0].plugins[0] for the same route, service and consumer)",
        )
    ]


def test_a_nested_plugin_and_a_top_level_plugin_on_the_same_service_collide() -> None:
    rt = gw.plugins.RequestTermination
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(
            services=[Service(name="s", host="a", plugins=[rt()])],
            plugins=[gw.Scoped(plugin=rt(status_code=404), service="s")],
        )
    [(path, reason)] = errors_of(excinfo)
    assert path == ("services", 0, "plugins", 0)
    assert "UNIQUE violation detected on plugin 'request-termination'" in reason
    assert "plugins[0]" in reason


def test_the_same_plugin_twice_on_one_consumer_is_refused() -> None:
    rt = gw.plugins.RequestTermination
    with pytest.raises(ConfigurationError, match="UNIQUE violation detected on plugin"):
        Gateway(consumers=[Consumer(username="alice", plugins=[rt(), rt()])])


def test_the_same_plugin_on_different_scopes_is_fine() -> None:
    rt = gw.plugins.RequestTermination
    Gateway(
        services=[
            Service(
                name="s",
                host="a",
                plugins=[rt()],
                routes=[Route(name="r", paths=["/"], plugins=[rt()])],
            )
        ],
        consumers=[Consumer(username="alice", plugins=[rt()])],
        plugins=[rt(), gw.Scoped(plugin=rt(), route="r", consumer="alice")],
    )


def test_a_disabled_scoped_plugin_does_not_collide() -> None:
    rt = gw.plugins.RequestTermination
    Gateway(plugins=[rt(), gw.Scoped(plugin=rt(status_code=404), enabled=False)])


def test_every_cross_entity_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(
            services=[Service(name="users", host="a"), Service(name="users", host="b")],
            routes=[Route(paths=["/"], service="billing")],
            plugins=[gw.Scoped(plugin=gw.plugins.RequestTermination(), consumer="nobody")],
        )
    paths = [path for path, _ in errors_of(excinfo)]
    assert ("services", 1, "name") in paths
    assert ("routes", 0, "service") in paths
    assert ("plugins", 0, "consumer") in paths


@pytest.mark.parametrize("kind", ["services", "routes", "consumers", "upstreams", "plugins"])
def test_a_gateway_wants_lists_of_entities(kind: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(**{kind: "oops"})
    assert errors_of(excinfo) == [((kind,), "expected an array")]


def test_a_gateway_refuses_something_that_is_not_a_service() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(services=[{"name": "users", "host": "a"}])  # type: ignore[list-item]
    assert errors_of(excinfo) == [(("services", 0), "expected a Service")]


def test_gateway_settings_are_checked_too() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Gateway(headers=["server_tokens", "bogus"])
    [(path, reason)] = errors_of(excinfo)
    assert path == ("headers",)
    assert reason.startswith("invalid value: bogus")


async def test_a_refused_reconfiguration_changes_nothing() -> None:
    gateway = Gateway(
        services=[Service(name="echo", url="http://echo.local", routes=[Route(paths=["/a"])])],
        engine=echo_engine(),
    )
    before = gateway.config
    broken = gw.Configuration(routes=[Route(paths=["/b"], service="missing")])
    with pytest.raises(ConfigurationError, match=r"routes\[0\]\.service"):
        gateway.configure(broken)
    assert gateway.config is before
    async with client(gateway) as c:
        assert (await c.get("/a/x")).status_code == 200
        assert (await c.get("/b")).status_code == 404


async def test_a_valid_reconfiguration_takes_effect() -> None:
    gateway = Gateway(
        services=[Service(name="echo", url="http://echo.local", routes=[Route(paths=["/a"])])],
        engine=echo_engine(),
    )
    gateway.configure(
        gw.Configuration(
            services=[Service(name="echo", url="http://echo.local", routes=[Route(paths=["/b"])])]
        )
    )
    async with client(gateway) as c:
        assert (await c.get("/a")).status_code == 404
        assert (await c.get("/b")).status_code == 200


def test_a_key_auth_key_is_not_shown_in_a_consumer_repr() -> None:
    consumer = Consumer(username="alice", credentials=[KeyAuthCredential(key="s3cret-key")])
    assert "s3cret-key" not in repr(consumer)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_number_field_refuses_nan_and_infinity(value: float) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Upstream(name="u.internal", healthchecks={"threshold": value})
    assert errors_of(excinfo) == [(("healthchecks", "threshold"), "expected a finite number")]
