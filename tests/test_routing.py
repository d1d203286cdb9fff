"""The router: Kong 3.x `traditional_compatible` matching and priorities.

Reference: shared/reference/kong.md §2. Priority, highest first: number of fields set
(methods/hosts/headers/paths) > plain hosts only > number of header names > regex path >
regex_priority > prefix length > (pygateway) the route defined first.

Every priority test is built so that dropping the rule it is named after would flip the
result: the loser is defined first (so the order tie-break would pick it) and wins on every
lower-ranked criterion (usually a longer prefix).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

import anyio
import attrs
import pytest

import pygateway as gw
from pygateway.routing import Match, Router
from pygateway.testing import client, echo_engine

# -- helpers -------------------------------------------------------------------------------


def router(*routes: gw.Route) -> Router:
    return Router([(route, None) for route in routes])


def find(
    r: Router,
    path: str = "/",
    *,
    method: str = "GET",
    host: str = "example.com",
    port: int = 80,
    headers: Sequence[tuple[str, str]] = (),
) -> Match | None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return r.match(method, host, port, path, raw)


def winner(r: Router, path: str = "/", **request: Any) -> str | None:
    found = find(r, path, **request)
    return found.route.name if found is not None else None


@attrs.frozen
class RouteProbe(gw.Plugin):
    """Answers instead of proxying, with what routing decided."""

    name = "route-probe"
    priority = 1000

    async def access(self, ctx: gw.Context) -> gw.Response:
        return gw.Response(
            200,
            json={
                "route": ctx.route.name if ctx.route else None,
                "captures": ctx.uri_captures,
                "matched": ctx.matched_prefix,
                "path": ctx.request.path,
                "host": ctx.request.host,
                "port": ctx.request.port,
            },
        )


def probed_gateway(*routes: gw.Route, enabled: bool = True) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(name="svc", url="http://upstream.test", routes=routes, enabled=enabled)
        ],
        plugins=[RouteProbe()],
        engine=echo_engine(),
    )


async def call(
    app: Any,
    raw_path: bytes,
    *,
    host: bytes | None = b"gw.test",
    root_path: str = "",
    server: tuple[str, int] | None = ("127.0.0.1", 80),
    with_raw_path: bool = True,
) -> tuple[int, dict[str, Any]]:
    """One request straight through ASGI (httpx would normalize the path client-side)."""
    path, _, query = raw_path.partition(b"?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(path.decode("latin-1")),
        "query_string": query,
        "root_path": root_path,
        "headers": [(b"host", host)] if host is not None else [],
        "client": ("127.0.0.1", 50000),
        "server": server,
    }
    if with_raw_path:
        scope["raw_path"] = path
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    status = 0
    body = b""

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            body += message.get("body", b"")

    await app(scope, receive, send)
    return status, json.loads(body)


# -- priority rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loser", "winner_fields"),
    [
        # the loser has the longer prefix: without rule 1, prefix length would pick it
        ({"paths": ["/users/profile"]}, {"methods": ["GET"], "paths": ["/users"]}),
        # the loser's regex path would beat a prefix path
        ({"paths": ["~/users"]}, {"methods": ["GET"], "paths": ["/u"]}),
        # the loser has plain hosts only, the winner none
        ({"hosts": ["example.com"]}, {"methods": ["GET"], "paths": ["/"]}),
        # the loser has more header names
        (
            {"headers": {"x-a": ["1"], "x-b": ["2"], "x-c": ["3"]}},
            {"methods": ["GET"], "headers": {"x-a": ["1"]}},
        ),
    ],
)
def test_a_route_with_more_fields_set_wins(
    loser: dict[str, Any], winner_fields: dict[str, Any]
) -> None:
    r = router(gw.Route(name="loser", **loser), gw.Route(name="winner", **winner_fields))
    headers = [("x-a", "1"), ("x-b", "2"), ("x-c", "3")]
    assert winner(r, "/users/profile", headers=headers) == "winner"


def test_headers_count_as_a_field() -> None:
    r = router(
        gw.Route(name="paths-only", paths=["/users/profile"]),
        gw.Route(name="with-header", paths=["/users"], headers={"x-a": ["1"]}),
    )
    assert winner(r, "/users/profile", headers=[("x-a", "1")]) == "with-header"
    assert winner(r, "/users/profile") == "paths-only"


@pytest.mark.parametrize("wildcard", ["*.example.com", "api.*"])
def test_plain_hosts_beat_wildcard_hosts_even_with_a_shorter_prefix(wildcard: str) -> None:
    r = router(
        gw.Route(name="wildcard", hosts=[wildcard], paths=["/api/longer"]),
        gw.Route(name="plain", hosts=["api.example.com"], paths=["/api"]),
    )
    assert winner(r, "/api/longer", host="api.example.com") == "plain"
    assert winner(r, "/api/longer", host="other.example.com" if "*." in wildcard else "api.x") == (
        "wildcard"
    )


def test_plain_hosts_beat_wildcard_hosts_even_against_a_regex_path() -> None:
    r = router(
        gw.Route(name="wildcard", hosts=["*.example.com"], paths=["~/api"]),
        gw.Route(name="plain", hosts=["api.example.com"], paths=["/api"]),
    )
    assert winner(r, "/api", host="api.example.com") == "plain"


def test_a_route_with_one_wildcard_among_its_hosts_ranks_as_a_wildcard_route() -> None:
    r = router(
        gw.Route(name="mixed", hosts=["api.example.com", "*.example.org"], paths=["/api/longer"]),
        gw.Route(name="plain", hosts=["api.example.com"], paths=["/api"]),
    )
    assert winner(r, "/api/longer", host="api.example.com") == "plain"


def test_more_header_names_win_even_with_a_shorter_prefix() -> None:
    r = router(
        gw.Route(name="one", headers={"x-a": ["1"]}, paths=["/api/longer"]),
        gw.Route(name="two", headers={"x-a": ["1"], "x-b": ["2"]}, paths=["/api"]),
    )
    assert winner(r, "/api/longer", headers=[("x-a", "1"), ("x-b", "2")]) == "two"
    assert winner(r, "/api/longer", headers=[("x-a", "1")]) == "one"


def test_header_count_is_the_number_of_names_not_of_values() -> None:
    r = router(
        gw.Route(name="two-names", headers={"x-a": ["1"], "x-b": ["2"]}, paths=["/api"]),
        gw.Route(name="three-values", headers={"x-a": ["1", "2", "3"]}, paths=["/api/longer"]),
    )
    assert winner(r, "/api/longer", headers=[("x-a", "1"), ("x-b", "2")]) == "two-names"


def test_a_regex_route_beats_a_longer_prefix_route() -> None:
    r = router(
        gw.Route(name="prefix", paths=["/users/profile/settings"]),
        gw.Route(name="regex", paths=["~/users"]),
    )
    assert winner(r, "/users/profile/settings") == "regex"


def test_a_regex_route_with_negative_regex_priority_still_beats_a_prefix_route() -> None:
    r = router(
        gw.Route(name="prefix", paths=["/users/profile"], regex_priority=5),
        gw.Route(name="regex", paths=["~/users"], regex_priority=-10),
    )
    assert winner(r, "/users/profile") == "regex"


def test_higher_regex_priority_wins_among_regex_routes() -> None:
    r = router(
        gw.Route(name="low", paths=[r"~/users/\d+$"], regex_priority=0),
        gw.Route(name="high", paths=["~/users/"], regex_priority=1),
    )
    assert winner(r, "/users/42") == "high"
    assert winner(r, "/users/x") == "high"


def test_negative_regex_priority_orders_regex_routes_too() -> None:
    r = router(
        gw.Route(name="minus-five", paths=["~/users"], regex_priority=-5),
        gw.Route(name="minus-one", paths=["~/users"], regex_priority=-1),
    )
    assert winner(r, "/users") == "minus-one"


def test_regex_priority_does_not_affect_prefix_routes() -> None:
    r = router(
        gw.Route(name="short", paths=["/users"], regex_priority=100),
        gw.Route(name="long", paths=["/users/42"], regex_priority=0),
    )
    assert winner(r, "/users/42") == "long"


def test_the_longest_prefix_wins_among_prefix_routes() -> None:
    r = router(
        gw.Route(name="short", paths=["/users"]),
        gw.Route(name="long", paths=["/users/admin"]),
    )
    assert winner(r, "/users/admin/x") == "long"
    assert winner(r, "/users/adm") == "short"


@pytest.mark.parametrize("paths", [["/users"], ["~/users"]], ids=["prefix", "regex"])
def test_equal_priority_ties_go_to_the_route_defined_first_not_to_kongs_uuid_order(
    paths: list[str],
) -> None:
    first, second = gw.Route(name="first", paths=paths), gw.Route(name="second", paths=paths)
    assert winner(router(first, second), "/users/1") == "first"
    assert winner(router(second, first), "/users/1") == "second"


def test_ties_are_decided_by_definition_order_whatever_the_ids() -> None:
    # Kong's atc-router breaks ties by the larger uuid; pygateway by order, deterministic.
    low = gw.Route(name="low", paths=["/a"], id="00000000-0000-4000-8000-000000000000")
    high = gw.Route(name="high", paths=["/a"], id="ffffffff-ffff-4fff-bfff-ffffffffffff")
    assert winner(router(low, high), "/a") == "low"
    assert winner(router(high, low), "/a") == "high"


def test_routes_nested_in_services_come_before_top_level_routes_in_definition_order() -> None:
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="a", url="http://a.test", routes=[gw.Route(name="nested", paths=["/x"])]
            )
        ],
        routes=[gw.Route(name="top-level", paths=["/x"], service="a")],
        engine=echo_engine(),
    )
    found = gateway.snapshot.router.match("GET", "gw.test", 80, "/x", [])
    assert found is not None
    assert found.route.name == "nested"


# -- paths, split routes, regexes ----------------------------------------------------------


def test_a_route_with_several_paths_is_split_into_rules_ranked_on_their_own() -> None:
    r = router(
        gw.Route(name="A", paths=["/a", "/a/b/c", r"~/a/b/c/\d+$"]),
        gw.Route(name="B", paths=["/a/b"]),
        gw.Route(name="C", paths=["~/a/b/c/"], regex_priority=-1),
    )
    assert winner(r, "/a/x") == "A"  # A's short prefix: nothing else matches
    assert winner(r, "/a/b/x") == "B"  # B's medium prefix beats A's short one
    assert winner(r, "/a/b/c/x") == "C"  # C's regex beats A's long prefix
    assert winner(r, "/a/b/c/7") == "A"  # A's regex (priority 0) beats C's (-1)
    assert winner(r, "/a/b/c") == "A"  # A's long prefix beats B's medium one
    found = find(r, "/a/b/x")
    assert found is not None
    assert found.matched == "/a/b"


def test_the_matched_text_is_the_prefix_of_the_rule_that_matched() -> None:
    r = router(gw.Route(name="A", paths=["/a", "/a/long"]))
    short, long_ = find(r, "/a/x"), find(r, "/a/long/x")
    assert short is not None
    assert long_ is not None
    assert (short.matched, long_.matched) == ("/a", "/a/long")


def test_a_prefix_is_a_plain_string_prefix_as_in_kong() -> None:
    r = router(gw.Route(name="foo", paths=["/foo"]))
    assert winner(r, "/foo") == "foo"
    assert winner(r, "/foo/bar") == "foo"
    assert winner(r, "/foobar") == "foo"
    assert winner(r, "/fo") is None
    assert winner(r, "/x/foo") is None


def test_a_trailing_slash_prefix_needs_the_slash() -> None:
    r = router(gw.Route(name="slash", paths=["/foo/"]))
    assert winner(r, "/foo/bar") == "slash"
    assert winner(r, "/foo") is None


def test_the_root_prefix_matches_every_path() -> None:
    r = router(gw.Route(name="root", paths=["/"]), gw.Route(name="users", paths=["/users"]))
    assert winner(r, "/") == "root"
    assert winner(r, "/anything/at/all") == "root"
    assert winner(r, "/users/1") == "users"


def test_a_regex_is_anchored_at_the_start_not_at_the_end() -> None:
    r = router(gw.Route(name="re", paths=[r"~/users/\d+"]))
    assert winner(r, "/users/42") == "re"
    assert winner(r, "/users/42/orders") == "re"
    assert winner(r, "/api/users/42") is None
    assert winner(r, "/users/x") is None
    found = find(r, "/users/42/orders")
    assert found is not None
    assert found.matched == "/users/42"


def test_a_dollar_anchors_a_regex_at_the_end() -> None:
    r = router(gw.Route(name="re", paths=[r"~/users/\d+$"]))
    assert winner(r, "/users/42") == "re"
    assert winner(r, "/users/42/orders") is None


def test_regex_captures_are_given_by_name_and_by_position() -> None:
    r = router(gw.Route(name="re", paths=[r"~/users/(?<id>\d+)/(\w+)(/(?<opt>x))?"]))
    found = find(r, "/users/42/orders")
    assert found is not None
    assert found.captures == {"id": "42", "1": "42", "2": "orders"}
    found = find(r, "/users/42/orders/x")
    assert found is not None
    assert found.captures == {"id": "42", "1": "42", "2": "orders", "3": "/x", "4": "x", "opt": "x"}


def test_pcre_and_python_named_group_syntaxes_are_both_accepted() -> None:
    r = router(
        gw.Route(name="pcre", paths=[r"~/a/(?<id>\d+)$"]),
        gw.Route(name="python", paths=[r"~/b/(?P<id>\d+)$"]),
    )
    for path, name in (("/a/1", "pcre"), ("/b/2", "python")):
        found = find(r, path)
        assert found is not None
        assert found.route.name == name
        assert found.captures["id"] == path[-1]


def test_a_prefix_route_has_no_captures() -> None:
    found = find(router(gw.Route(paths=["/users"])), "/users/1")
    assert found is not None
    assert found.captures == {}


def test_a_route_may_mix_several_regexes_and_the_first_that_matches_gives_captures() -> None:
    r = router(gw.Route(name="re", paths=[r"~/a/(?<x>\d+)", r"~/a/(?<y>\w+)"]))
    digits, word = find(r, "/a/12"), find(r, "/a/ab")
    assert digits is not None
    assert word is not None
    assert (digits.captures, word.captures) == ({"x": "12", "1": "12"}, {"y": "ab", "1": "ab"})


# -- hosts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "matches"),
    [
        ("api.example.com", True),
        ("a.b.c.example.com", True),
        ("example.com", False),
        ("xexample.com", False),
        ("example.com.evil.test", False),
    ],
)
def test_a_leading_wildcard_host_matches_any_depth_of_subdomain(host: str, matches: bool) -> None:
    r = router(gw.Route(name="w", hosts=["*.example.com"]))
    assert (winner(r, host=host) == "w") is matches


@pytest.mark.parametrize(
    ("host", "matches"),
    [
        ("example.com", True),
        ("example.co.uk", True),
        ("www.example.com", False),
        ("example", False),
        ("examples.com", False),
    ],
)
def test_a_trailing_wildcard_host_matches_any_suffix(host: str, matches: bool) -> None:
    r = router(gw.Route(name="w", hosts=["example.*"]))
    assert (winner(r, host=host) == "w") is matches


def test_hosts_are_matched_case_insensitively() -> None:
    r = router(
        gw.Route(name="plain", hosts=["API.Example.COM"]),
        gw.Route(name="wild", hosts=["*.Other.ORG"]),
    )
    assert winner(r, host="api.example.com") == "plain"
    assert winner(r, host="x.other.org") == "wild"


def test_a_host_with_a_port_matches_only_that_port() -> None:
    r = router(gw.Route(name="8080", hosts=["example.com:8080"]))
    assert winner(r, host="example.com", port=8080) == "8080"
    assert winner(r, host="example.com", port=80) is None
    assert winner(r, host="example.com", port=8081) is None


def test_a_wildcard_host_with_a_port_matches_only_that_port() -> None:
    r = router(gw.Route(name="w", hosts=["*.example.com:8443"]))
    assert winner(r, host="a.example.com", port=8443) == "w"
    assert winner(r, host="a.example.com", port=443) is None


def test_a_host_without_a_port_matches_any_port() -> None:
    r = router(gw.Route(name="any", hosts=["example.com"]))
    assert winner(r, host="example.com", port=80) == "any"
    assert winner(r, host="example.com", port=9999) == "any"


def test_any_of_a_routes_hosts_matches() -> None:
    r = router(gw.Route(name="multi", hosts=["a.test", "*.b.test", "c.*"]))
    assert [winner(r, host=h) for h in ("a.test", "x.b.test", "c.io", "d.test")] == [
        "multi",
        "multi",
        "multi",
        None,
    ]


def test_a_route_with_hosts_does_not_match_other_hosts_whatever_its_path() -> None:
    r = router(gw.Route(name="h", hosts=["a.test"], paths=["/x"]), gw.Route(name="p", paths=["/"]))
    assert winner(r, "/x", host="a.test") == "h"
    assert winner(r, "/x", host="b.test") == "p"


# -- methods and headers -------------------------------------------------------------------


def test_methods_restrict_a_route() -> None:
    r = router(gw.Route(name="rw", methods=["GET", "POST"], paths=["/x"]))
    assert winner(r, "/x", method="GET") == "rw"
    assert winner(r, "/x", method="POST") == "rw"
    assert winner(r, "/x", method="DELETE") is None


def test_a_plain_header_value_matches_case_insensitively_and_any_of_them() -> None:
    r = router(gw.Route(name="h", headers={"X-Version": ["Beta", "v2"]}))
    assert winner(r, headers=[("x-version", "bEtA")]) == "h"
    assert winner(r, headers=[("X-VERSION", "V2")]) == "h"
    assert winner(r, headers=[("x-version", "v3")]) is None
    assert winner(r, headers=[("x-version", "beta-1")]) is None
    assert winner(r) is None


def test_any_of_the_requests_values_of_a_header_may_match() -> None:
    r = router(gw.Route(name="h", headers={"x-version": ["v2"]}))
    assert winner(r, headers=[("x-version", "v1"), ("x-version", "v2")]) == "h"


def test_a_tilde_star_header_value_is_a_case_insensitive_regex() -> None:
    r = router(gw.Route(name="h", headers={"x-version": [r"~*^v\d+$"]}))
    assert winner(r, headers=[("x-version", "V12")]) == "h"
    assert winner(r, headers=[("x-version", "v12b")]) is None


def test_a_header_regex_is_searched_anywhere_in_the_value() -> None:
    r = router(gw.Route(name="h", headers={"user-agent": ["~*mobile"]}))
    assert winner(r, headers=[("user-agent", "Foo/1.0 (Mobile; x)")]) == "h"


def test_plain_values_and_regexes_of_one_header_are_alternatives() -> None:
    r = router(gw.Route(name="h", headers={"x-v": ["exact", r"~*^re\d$"]}))
    assert [winner(r, headers=[("x-v", v)]) for v in ("EXACT", "re1", "nope")] == ["h", "h", None]


def test_every_header_of_a_route_must_match() -> None:
    r = router(gw.Route(name="h", headers={"x-a": ["1"], "x-b": ["2"]}))
    assert winner(r, headers=[("x-a", "1"), ("x-b", "2")]) == "h"
    assert winner(r, headers=[("x-a", "1")]) is None
    assert winner(r, headers=[("x-a", "1"), ("x-b", "3")]) is None


def test_fields_are_anded_together() -> None:
    r = router(
        gw.Route(
            name="all", methods=["GET"], hosts=["a.test"], paths=["/x"], headers={"x-a": ["1"]}
        )
    )
    good: dict[str, Any] = {"method": "GET", "host": "a.test", "headers": [("x-a", "1")]}
    assert winner(r, "/x", **good) == "all"
    for change in ({"method": "PUT"}, {"host": "b.test"}, {"headers": []}):
        assert winner(r, "/x", **{**good, **change}) is None
    assert winner(r, "/y", **good) is None


# -- the index agrees with trying every rule in order --------------------------------------


def _random_route(rng: random.Random, i: int) -> gw.Route:
    segments = ["a", "ab", "b", "svc1", "svc12"]
    fields: dict[str, Any] = {"name": f"r{i}"}
    paths = []
    for _ in range(rng.choice([0, 1, 1, 2])):
        kind = rng.random()
        depth = rng.randint(1, 3)
        text = "/" + "/".join(rng.choice(segments) for _ in range(depth))
        if kind < 0.5:
            paths.append(text + rng.choice(["", "/"]))
        elif kind < 0.8:
            paths.append("~" + text + rng.choice(["", r"/(?<id>\d+)", "$", "/.*"]))
        else:
            paths.append(
                rng.choice([r"~/(?<v>v\d+)" + text + "/", r"~/\w+/b/", r"~(?i)/A", r"~/[ab]+/"])
            )
    if paths:
        fields["paths"] = paths
        fields["regex_priority"] = rng.randint(-1, 1)
    if rng.random() < 0.3:
        fields["hosts"] = [rng.choice(["a.test", "*.a.test", "a.*", "a.test:8080", "b.test"])]
    if rng.random() < 0.2:
        fields["methods"] = ["GET"]
    if rng.random() < 0.1 or (not paths and "hosts" not in fields):
        fields["headers"] = {"x-a": ["1"]}
    return gw.Route(**fields)


def test_the_index_finds_the_same_route_as_trying_every_rule_in_rank_order() -> None:
    rng = random.Random(20240601)
    segments = ["", "a", "ab", "abc", "b", "svc1", "svc12", "svc123", "v1", "v2", "7", "A"]
    for _ in range(40):
        r = router(*(_random_route(rng, i) for i in range(rng.randint(1, 30))))
        for _ in range(60):
            path = "/" + "/".join(rng.choice(segments) for _ in range(rng.randint(1, 4)))
            method = rng.choice(["GET", "POST"])
            host = rng.choice(["a.test", "x.a.test", "a.io", "b.test", "c.test"])
            port = rng.choice([80, 8080])
            headers = rng.choice([[], [(b"x-a", b"1")]])
            expected = next(
                (
                    m
                    for rule in r.rules
                    if (m := rule.matches(method, host, port, path, headers)) is not None
                ),
                None,
            )
            assert r.match(method, host, port, path, headers) == expected, (path, host, port)


def test_many_routes_still_find_the_best_one() -> None:
    routes = [gw.Route(name=f"r{i}", paths=[f"/svc{i}/v1"]) for i in range(2000)]
    routes.append(gw.Route(name="re", paths=[r"~/(?<v>v\d+)/svc1999/"]))
    routes.append(gw.Route(name="re-no-key", paths=[r"~/\w+/svc7"]))
    r = router(*routes)
    assert winner(r, "/svc1999/v1/x") == "r1999"
    assert winner(r, "/svc199/v1") == "r199"
    assert winner(r, "/svc1999/v2") is None
    assert winner(r, "/v2/svc1999/x") == "re"
    assert winner(r, "/abc/svc7") == "re-no-key"


# -- through a Gateway ---------------------------------------------------------------------


async def test_no_match_is_a_404_with_kongs_message_and_the_request_id() -> None:
    gateway = probed_gateway(gw.Route(name="users", paths=["/users"]))
    async with client(gateway) as c:
        response = await c.get("/orders")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body == {
        "message": "no Route matched with those values",
        "request_id": body["request_id"],
    }
    assert body["request_id"] == response.headers["x-pygateway-request-id"]
    assert len(body["request_id"]) >= 16


async def test_routes_of_a_disabled_service_are_not_routed() -> None:
    gateway = gw.Gateway(
        services=[
            gw.Service(
                name="off",
                url="http://off.test",
                enabled=False,
                routes=[gw.Route(name="off-route", paths=["/x/y"])],
            ),
            gw.Service(
                name="on", url="http://on.test", routes=[gw.Route(name="on-route", paths=["/x"])]
            ),
        ],
        plugins=[RouteProbe()],
        engine=echo_engine(),
    )
    async with client(gateway) as c:
        shadowed = await c.get("/x/y")
        assert shadowed.json()["route"] == "on-route"
    only_disabled = probed_gateway(gw.Route(name="r", paths=["/x"]), enabled=False)
    async with client(only_disabled) as c:
        response = await c.get("/x")
    assert response.status_code == 404
    assert response.json()["message"] == "no Route matched with those values"


async def test_a_plugin_sees_regex_captures_as_uri_captures() -> None:
    gateway = probed_gateway(
        gw.Route(name="users", paths=[r"~/users/(?<id>\d+)/(\w+)$"]),
    )
    async with client(gateway) as c:
        response = await c.get("/users/42/orders")
    assert response.status_code == 200
    assert response.json()["route"] == "users"
    assert response.json()["captures"] == {"id": "42", "1": "42", "2": "orders"}
    assert response.json()["matched"] == "/users/42/orders"


async def test_the_host_header_is_matched_lower_cased_and_without_its_port() -> None:
    # Same priority (the port is not a field of its own): "8080" must come first.
    gateway = probed_gateway(
        gw.Route(name="8080", hosts=["api.example.com:8080"]),
        gw.Route(name="api", hosts=["api.example.com"]),
    )
    async with client(gateway) as c:
        plain = await c.get("/", headers={"host": "API.Example.COM"})
        with_port = await c.get("/", headers={"host": "Api.Example.Com:9090"})
        on_8080 = await c.get("/", headers={"host": "api.example.com:8080"})
    assert plain.json()["route"] == "api"
    assert (with_port.json()["route"], with_port.json()["host"]) == ("api", "api.example.com")
    assert (on_8080.json()["route"], on_8080.json()["port"]) == ("8080", 8080)


async def test_without_a_port_in_the_host_header_the_servers_port_is_used() -> None:
    gateway = probed_gateway(gw.Route(name="8080", hosts=["api.example.com:8080"]))
    status, body = await call(gateway, b"/", host=b"api.example.com", server=("127.0.0.1", 8080))
    assert (status, body["route"], body["port"]) == (200, "8080", 8080)
    status, _ = await call(gateway, b"/", host=b"api.example.com", server=("127.0.0.1", 80))
    assert status == 404


async def test_without_a_host_header_the_servers_address_is_the_host() -> None:
    gateway = probed_gateway(gw.Route(name="local", hosts=["127.0.0.1"]))
    status, body = await call(gateway, b"/", host=None, server=("127.0.0.1", 8000))
    assert (status, body["route"]) == (200, "local")


async def test_the_path_is_routed_below_the_mount_point() -> None:
    gateway = probed_gateway(gw.Route(name="users", paths=["/users"]))
    status, body = await call(gateway, b"/gw/users/1", root_path="/gw")
    assert (status, body["route"], body["path"]) == (200, "users", "/users/1")
    status, body = await call(gateway, b"/gw/users/1", root_path="/gw", with_raw_path=False)
    assert (status, body["route"], body["path"]) == (200, "users", "/users/1")


@pytest.mark.parametrize(
    ("raw_path", "normalized"),
    [
        (b"/a/./b/../c", "/a/c"),
        (b"/x/%2e%2e/a/c", "/a/c"),
        (b"/x/%2E%2e/a/c", "/a/c"),
        (b"//a///c", "/a/c"),
        (b"/a/c/.", "/a/c/"),
        (b"/%61/%63", "/a/c"),
    ],
)
async def test_requests_are_routed_on_the_normalized_path(raw_path: bytes, normalized: str) -> None:
    gateway = probed_gateway(gw.Route(name="ac", paths=["/a/c"]))
    status, body = await call(gateway, raw_path)
    assert (status, body["route"], body["path"]) == (200, "ac", normalized)


async def test_dot_segments_cannot_climb_out_to_another_route() -> None:
    gateway = probed_gateway(
        gw.Route(name="public", paths=["/public"]), gw.Route(name="admin", paths=["/admin"])
    )
    status, body = await call(gateway, b"/public/../admin/x")
    assert (status, body["route"]) == (200, "admin")
    status, body = await call(gateway, b"/public/%2e%2e/%2e%2e/admin")
    assert (status, body["route"]) == (200, "admin")


async def test_an_encoded_unreserved_character_matches_its_decoded_route() -> None:
    gateway = probed_gateway(gw.Route(name="tilde", paths=["/~user"]))
    status, body = await call(gateway, b"/%7Euser/x")
    assert (status, body["route"], body["path"]) == (200, "tilde", "/~user/x")


async def test_an_encoded_slash_is_never_decoded() -> None:
    gateway = probed_gateway(
        gw.Route(name="slash", paths=["/a/b"]), gw.Route(name="encoded", paths=["/a%2Fb"])
    )
    status, body = await call(gateway, b"/a%2Fb")
    assert (status, body["route"], body["path"]) == (200, "encoded", "/a%2Fb")
    status, body = await call(gateway, b"/a%2fb/x")
    assert (status, body["route"], body["path"]) == (200, "encoded", "/a%2Fb/x")
    status, body = await call(gateway, b"/a/b")
    assert (status, body["route"]) == (200, "slash")


async def test_an_encoded_slash_does_not_match_a_route_with_a_real_slash() -> None:
    gateway = probed_gateway(gw.Route(name="slash", paths=["/a/b"]))
    status, body = await call(gateway, b"/a%2Fb")
    assert status == 404
    assert body["message"] == "no Route matched with those values"


async def test_a_regex_route_sees_the_normalized_path() -> None:
    gateway = probed_gateway(gw.Route(name="re", paths=[r"~/files/(?<name>[^/]+)$"]))
    status, body = await call(gateway, b"/x/../files/a%2Fb")
    assert (status, body["captures"]) == (200, {"name": "a%2Fb", "1": "a%2Fb"})
    status, _ = await call(gateway, b"/files/a/b")
    assert status == 404
