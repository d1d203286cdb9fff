"""Forwarding headers, client IPs and the gateway's own headers (kong.md §2, §5).

X-Forwarded-* come from the client only when the connecting peer is in `trusted_ips`;
otherwise the gateway states its own values. X-Real-IP names the client after the real-IP
rules (nginx's realip module as Kong configures it).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import pytest
from upstreams import call_asgi

import pygateway as gw
from pygateway._proxy import TrustedIPs, real_client_ip
from pygateway.engines import MockEngine, UpstreamResponse
from pygateway.testing import client, echo_engine

PEER = "192.0.2.10"  # untrusted unless a test says so
PROXY = "10.0.0.2"  # inside the trusted 10.0.0.0/8
FORWARDED = ["x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-forwarded-path"]


def capturing(headers: list[tuple[bytes, bytes]] | None = None) -> MockEngine:
    return MockEngine(lambda request: UpstreamResponse(200, headers, content=b"ok"))


def gateway_for(
    engine: MockEngine | None = None, *, route: dict[str, Any] | None = None, **settings: Any
) -> gw.Gateway:
    route = route or {"paths": ["/api"]}
    return gw.Gateway(
        services=[gw.Service(host="upstream.test", routes=[gw.Route(**route)])],
        engine=engine if engine is not None else capturing(),
        **settings,
    )


async def forwarded(
    gateway: gw.Gateway,
    *,
    peer: str = PEER,
    headers: list[tuple[bytes, bytes]] | None = None,
    path: str = "/api/x",
    raw_path: bytes | None = None,
    scheme: str = "http",
    server: tuple[str, int] = ("gateway.test", 80),
    root_path: str = "",
) -> dict[str, list[str]]:
    """Send one request as `peer`; return the headers the upstream got (name -> values)."""
    engine = gateway.engine
    assert isinstance(engine, MockEngine)
    result = await call_asgi(
        gateway,
        path,
        raw_path=raw_path,
        headers=headers or [],
        client=(peer, 40000),
        scheme=scheme,
        server=server,
        root_path=root_path,
    )
    assert result.status == 200, result.body
    out: dict[str, list[str]] = {}
    for k, v in engine.requests[-1].headers:
        out.setdefault(k.decode(), []).append(v.decode("latin-1"))
    return out


CLIENT_CLAIMS = [
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"claimed.example"),
    (b"x-forwarded-port", b"8443"),
    (b"x-forwarded-path", b"/claimed/path"),
    (b"x-forwarded-prefix", b"/claimed"),
]


# -- X-Forwarded-For -----------------------------------------------------------------------


async def test_x_forwarded_for_is_the_peer_when_the_client_sent_none() -> None:
    sent = await forwarded(gateway_for())
    assert sent["x-forwarded-for"] == [PEER]


async def test_x_forwarded_for_appends_the_peer_to_the_clients_list() -> None:
    headers = [(b"x-forwarded-for", b"203.0.113.1, 198.51.100.2"), (b"x-forwarded-for", b"::1")]
    sent = await forwarded(gateway_for(), headers=headers)
    assert sent["x-forwarded-for"] == [f"203.0.113.1, 198.51.100.2, ::1, {PEER}"]


async def test_empty_x_forwarded_for_and_via_are_not_carried_over() -> None:
    headers = [(b"x-forwarded-for", b""), (b"via", b"")]
    sent = await forwarded(gateway_for(), headers=headers)
    assert sent["x-forwarded-for"] == [PEER]
    assert sent["via"] == [f"1.1 pygateway/{gw.__version__}"]


async def test_x_forwarded_for_appends_the_connecting_peer_even_when_it_is_trusted() -> None:
    headers = [(b"x-forwarded-for", b"203.0.113.1"), (b"x-real-ip", b"203.0.113.1")]
    sent = await forwarded(gateway_for(trusted_ips=["10.0.0.0/8"]), peer=PROXY, headers=headers)
    assert sent["x-forwarded-for"] == [f"203.0.113.1, {PROXY}"]
    assert sent["x-real-ip"] == ["203.0.113.1"]


# -- X-Forwarded-Proto/Host/Port/Path/Prefix -----------------------------------------------


async def test_an_untrusted_peers_forwarding_claims_are_replaced_by_the_gateways_own() -> None:
    sent = await forwarded(
        gateway_for(trusted_ips=["10.0.0.0/8"]),
        headers=[(b"host", b"Shop.Example"), *CLIENT_CLAIMS],
        raw_path=b"/api/./x%2Fy",
        path="/api/x%2Fy",
    )
    assert sent["x-forwarded-proto"] == ["http"]
    assert sent["x-forwarded-host"] == ["shop.example"]
    assert sent["x-forwarded-port"] == ["80"]
    assert sent["x-forwarded-path"] == ["/api/./x%2Fy"]
    assert sent["x-forwarded-prefix"] == ["/api"]


async def test_a_trusted_peers_forwarding_claims_are_passed_on() -> None:
    sent = await forwarded(
        gateway_for(trusted_ips=["10.0.0.0/8"]), peer=PROXY, headers=CLIENT_CLAIMS
    )
    for name, value in CLIENT_CLAIMS:
        assert sent[name.decode()] == [value.decode()]


async def test_a_trusted_peer_that_claims_nothing_gets_the_gateways_own_values() -> None:
    sent = await forwarded(
        gateway_for(trusted_ips=["10.0.0.0/8"]), peer=PROXY, scheme="https", server=("g", 443)
    )
    assert sent["x-forwarded-proto"] == ["https"]
    assert sent["x-forwarded-host"] == ["gateway.test"]
    assert sent["x-forwarded-port"] == ["443"]
    assert sent["x-forwarded-path"] == ["/api/x"]
    assert sent["x-forwarded-prefix"] == ["/api"]


async def test_without_trusted_ips_no_peer_is_trusted() -> None:
    sent = await forwarded(gateway_for(), peer="127.0.0.1", headers=CLIENT_CLAIMS)
    assert sent["x-forwarded-proto"] == ["http"]
    assert sent["x-forwarded-host"] == ["gateway.test"]


async def test_each_forwarding_header_is_sent_once() -> None:
    sent = await forwarded(gateway_for(), headers=[*CLIENT_CLAIMS, *CLIENT_CLAIMS])
    for name in [*FORWARDED, "x-forwarded-for", "x-forwarded-prefix", "x-real-ip"]:
        assert len(sent[name]) == 1, name


async def test_x_forwarded_path_and_prefix_include_the_mount_point() -> None:
    sent = await forwarded(gateway_for(), path="/gw/api/x", raw_path=b"/gw/api/x", root_path="/gw")
    assert sent["x-forwarded-path"] == ["/gw/api/x"]
    assert sent["x-forwarded-prefix"] == ["/gw/api"]


@pytest.mark.parametrize(
    ("route", "path", "prefix"),
    [
        ({"paths": ["/api"]}, "/api/x", "/api"),
        ({"paths": ["/api/"]}, "/api/x", "/api/"),
        ({"paths": ["/api"], "strip_path": False}, "/api/x", None),
        ({"paths": ["/"]}, "/api/x", None),
        ({"paths": [r"~/users/\d+"]}, "/users/42/x", "/users/42"),
        ({"hosts": ["gateway.test"]}, "/api/x", None),
    ],
)
async def test_x_forwarded_prefix_is_the_stripped_prefix_only(
    route: dict[str, Any], path: str, prefix: str | None
) -> None:
    sent = await forwarded(gateway_for(route=route), path=path)
    assert sent.get("x-forwarded-prefix") == ([prefix] if prefix else None)


# -- the client's IP -----------------------------------------------------------------------


async def test_x_real_ip_is_the_peer_when_it_is_not_trusted() -> None:
    sent = await forwarded(gateway_for(), headers=[(b"x-real-ip", b"203.0.113.9")])
    assert sent["x-real-ip"] == [PEER]


async def test_a_trusted_peer_names_the_client_with_x_real_ip() -> None:
    sent = await forwarded(
        gateway_for(trusted_ips=["10.0.0.0/8"]),
        peer=PROXY,
        headers=[(b"x-real-ip", b"203.0.113.9")],
    )
    assert sent["x-real-ip"] == ["203.0.113.9"]
    assert sent["x-forwarded-for"] == ["203.0.113.9"]


async def test_a_trusted_peer_without_a_real_ip_header_is_the_client() -> None:
    sent = await forwarded(gateway_for(trusted_ips=["10.0.0.0/8"]), peer=PROXY)
    assert sent["x-real-ip"] == [PROXY]


@pytest.mark.parametrize(
    ("recursive", "client_ip"),
    [(False, "10.0.0.3"), (True, "198.51.100.7")],
)
async def test_the_real_ip_header_can_be_x_forwarded_for(recursive: bool, client_ip: str) -> None:
    gateway = gateway_for(
        trusted_ips=["10.0.0.0/8"], real_ip_header="X-Forwarded-For", real_ip_recursive=recursive
    )
    chain = b"203.0.113.1, 198.51.100.7, 10.0.0.3"
    sent = await forwarded(gateway, peer=PROXY, headers=[(b"x-forwarded-for", chain)])
    # Not recursive: the last address; recursive: the last one that is not trusted.
    assert sent["x-real-ip"] == [client_ip]
    assert sent["x-forwarded-for"] == [f"{chain.decode()}, {PROXY}"]


async def test_an_ipv4_mapped_ipv6_peer_is_matched_against_ipv4_ranges() -> None:
    sent = await forwarded(
        gateway_for(trusted_ips=["10.0.0.0/8"]),
        peer="::ffff:10.1.2.3",
        headers=[(b"x-real-ip", b"203.0.113.9"), (b"x-forwarded-proto", b"https")],
    )
    assert sent["x-real-ip"] == ["203.0.113.9"]
    assert sent["x-forwarded-proto"] == ["https"]


@pytest.mark.parametrize(
    ("trusted", "peer", "believed"),
    [
        (["10.0.0.0/8"], "10.255.255.255", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["192.0.2.10"], "192.0.2.10", True),
        (["192.0.2.10/32"], "192.0.2.11", False),
        (["2001:db8::/32"], "2001:db8::1", True),
        (["2001:db8::/32"], "2001:db9::1", False),
        (["0.0.0.0/0", "::/0"], "::1", True),
        (["172.16.0.0/12", "10.0.0.0/8"], "172.31.0.1", True),
    ],
)
async def test_trusted_ips_take_addresses_and_cidr_ranges(
    trusted: list[str], peer: str, believed: bool
) -> None:
    sent = await forwarded(
        gateway_for(trusted_ips=trusted), peer=peer, headers=[(b"x-real-ip", b"203.0.113.9")]
    )
    assert sent["x-real-ip"] == (["203.0.113.9"] if believed else [peer])


async def test_a_trusted_peer_cannot_name_a_client_that_is_not_an_ip() -> None:
    sent = await forwarded(
        gateway_for(trusted_ips=["10.0.0.0/8"]),
        peer=PROXY,
        headers=[(b"x-real-ip", b"<script>")],
    )
    assert sent["x-real-ip"] == [PROXY]


async def test_the_client_ip_plugins_see_follows_the_real_ip_rules() -> None:
    seen: list[tuple[str, str]] = []

    @attrs.frozen
    class Spy(gw.Plugin):
        name: ClassVar[str] = "forwarding-test-spy"

        async def access(self, ctx: gw.Context) -> None:
            seen.append((ctx.request.client_ip, ctx.request.peer_ip))

    gateway = gw.Gateway(
        services=[gw.Service(host="upstream.test", routes=[gw.Route(paths=["/"])])],
        plugins=[Spy()],
        engine=capturing(),
        trusted_ips=["10.0.0.0/8"],
    )
    await call_asgi(gateway, "/", client=(PROXY, 1), headers=[(b"x-real-ip", b"203.0.113.9")])
    assert seen == [("203.0.113.9", PROXY)]


def test_real_client_ip_follows_nginx_realip() -> None:
    trusted = TrustedIPs(["10.0.0.0/8"])
    xff = [(b"x-forwarded-for", b"1.1.1.1, 10.0.0.9"), (b"x-forwarded-for", b"10.0.0.8")]
    assert real_client_ip("10.0.0.1", xff, trusted, b"x-forwarded-for", True) == "1.1.1.1"
    assert real_client_ip("10.0.0.1", xff, trusted, b"x-forwarded-for", False) == "10.0.0.8"
    assert real_client_ip("8.8.8.8", xff, trusted, b"x-forwarded-for", True) == "8.8.8.8"
    assert real_client_ip("10.0.0.1", [], trusted, b"x-forwarded-for", True) == "10.0.0.1"
    all_trusted = [(b"x-forwarded-for", b"10.0.0.7, 10.0.0.9")]
    assert real_client_ip("10.0.0.1", all_trusted, trusted, b"x-forwarded-for", True) == "10.0.0.7"
    garbage = [(b"x-forwarded-for", b"1.1.1.1, nonsense, 10.0.0.9")]
    assert real_client_ip("10.0.0.1", garbage, trusted, b"x-forwarded-for", True) == "10.0.0.1"
    assert real_client_ip("10.0.0.1", [(b"x-real-ip", b" , ")], trusted, b"x-real-ip", False) == (
        "10.0.0.1"
    )


def test_trusted_ips_reject_what_is_not_an_address_or_range() -> None:
    with pytest.raises(gw.ConfigurationError, match="invalid ip or cidr range: 'ten'"):
        gw.Gateway(trusted_ips=["10.0.0.0/8", "ten"])
    assert not TrustedIPs([])
    assert not TrustedIPs(["10.0.0.0/8"]).contains("not-an-ip")
    assert TrustedIPs(["10.0.0.1/8"]).contains("10.9.9.9")  # host bits are ignored


def test_trusted_ips_may_be_one_comma_separated_string() -> None:
    gateway = gw.Gateway(trusted_ips="10.0.0.0/8, 192.0.2.1")
    assert gateway.settings.trusted_ips.contains("192.0.2.1")
    assert gateway.settings.trusted_ips.contains("10.1.1.1")


# -- Via, request ids, latency and Server headers ------------------------------------------


async def test_via_is_appended_upstream_and_downstream() -> None:
    engine = capturing(headers=[(b"via", b"1.1 upstream-cache")])
    gateway = gateway_for(engine)
    result = await call_asgi(gateway, "/api/x", headers=[(b"via", b"1.0 corporate-proxy")])
    token = f"pygateway/{gw.__version__}"
    sent = [v for k, v in engine.requests[-1].headers if k == b"via"]
    assert sent == [f"1.0 corporate-proxy, 1.1 {token}".encode()]
    assert result.header_list("via") == [f"1.1 upstream-cache, 1.1 {token}"]


async def test_the_request_id_goes_upstream_and_back_to_the_client() -> None:
    engine = capturing()
    async with client(gateway_for(engine)) as c:
        response = await c.get("/api/x", headers={"x-pygateway-request-id": "forged"})
    request_id = response.headers["x-pygateway-request-id"]
    assert len(request_id) == 32
    assert int(request_id, 16) >= 0
    sent = [v for k, v in engine.requests[-1].headers if k == b"x-pygateway-request-id"]
    assert sent == [request_id.encode()]


async def test_headers_upstream_off_sends_no_request_id() -> None:
    engine = capturing()
    async with client(gateway_for(engine, headers_upstream=["off"])) as c:
        response = await c.get("/api/x")
    assert "x-pygateway-request-id" in response.headers
    assert b"x-pygateway-request-id" not in dict(engine.requests[-1].headers)


async def test_proxied_responses_carry_latency_via_and_request_id_headers() -> None:
    async with client(gateway_for()) as c:
        response = await c.get("/api/x")
    for name in (
        "x-pygateway-upstream-latency",
        "x-pygateway-proxy-latency",
        "x-pygateway-request-id",
        "via",
    ):
        assert name in response.headers
    assert int(response.headers["x-pygateway-upstream-latency"]) >= 0
    assert int(response.headers["x-pygateway-proxy-latency"]) >= 0
    assert "x-pygateway-response-latency" not in response.headers


async def test_the_gateways_own_answers_carry_server_and_response_latency() -> None:
    async with client(gateway_for()) as c:
        response = await c.get("/elsewhere")
    assert response.status_code == 404
    assert response.headers["server"] == f"pygateway/{gw.__version__}"
    assert int(response.headers["x-pygateway-response-latency"]) >= 0
    assert "x-pygateway-upstream-latency" not in response.headers
    assert "via" not in response.headers


async def test_the_upstreams_server_header_is_kept() -> None:
    engine = capturing(headers=[(b"server", b"nginx/1.25")])
    async with client(gateway_for(engine)) as c:
        response = await c.get("/api/x")
    assert response.headers.get_list("server") == ["nginx/1.25"]


GATEWAY_HEADERS = {
    "server_tokens": {"via", "server"},
    "latency_tokens": {
        "x-pygateway-upstream-latency",
        "x-pygateway-proxy-latency",
        "x-pygateway-response-latency",
    },
    "request_id": {"x-pygateway-request-id"},
}


@pytest.mark.parametrize(
    "enabled",
    [["off"], ["server_tokens"], ["latency_tokens"], ["request_id"], ["latency_tokens", "off"]],
)
async def test_the_headers_setting_switches_the_gateways_headers(enabled: list[str]) -> None:
    gateway = gateway_for(headers=enabled)
    async with client(gateway) as c:
        proxied = await c.get("/api/x")
        own = await c.get("/elsewhere")
    names = set(proxied.headers) | set(own.headers)
    for token, headers in GATEWAY_HEADERS.items():
        on = token in enabled and "off" not in enabled
        for name in headers - {"server"}:
            assert (name in names) == on, name
    assert ("server" in own.headers) == ("server_tokens" in enabled and "off" not in enabled)


def test_the_headers_setting_rejects_unknown_tokens() -> None:
    with pytest.raises(gw.ConfigurationError, match="invalid value: bogus"):
        gateway_for(headers=["bogus"])


# -- the port the connection arrived on ----------------------------------------------------


@pytest.mark.parametrize(
    ("host", "server", "port"),
    [
        (b"api.example:9443", ("api.example", 8000), "8000"),  # the connection's, not Host's
        (b"api.example:9443", None, "9443"),  # no server address: the Host header's
        (b"api.example", None, "80"),  # neither: the scheme's default
    ],
)
async def test_x_forwarded_port_is_the_port_the_connection_arrived_on(
    host: bytes, server: tuple[str, int] | None, port: str
) -> None:
    engine = capturing()
    gateway = gateway_for(engine)
    result = await call_asgi(gateway, "/api/x", headers=[(b"host", host)], server=server)
    assert result.status == 200
    sent = dict((k.decode(), v.decode()) for k, v in engine.requests[-1].headers)
    assert sent["x-forwarded-port"] == port


@pytest.mark.parametrize(("server_port", "status"), [(9443, 200), (8000, 404)])
async def test_a_host_port_route_matches_the_port_the_connection_arrived_on(
    server_port: int, status: int
) -> None:
    gateway = gateway_for(route={"hosts": ["api.example:9443"], "paths": ["/admin"]})
    result = await call_asgi(
        gateway,
        "/admin",
        headers=[(b"host", b"api.example:9443")],
        server=("api.example", server_port),
    )
    assert result.status == status


# -- headers a plugin or the client must not be able to forge ------------------------------


async def test_forwarding_headers_a_plugin_sets_are_replaced_by_the_gateways() -> None:
    @attrs.frozen
    class Claims(gw.Plugin):
        name: ClassVar[str] = "forwarding-test-claims"

        async def access(self, ctx: gw.Context) -> None:
            assert ctx.upstream_request is not None
            for name in ("X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto", "Via"):
                ctx.upstream_request.headers[name] = "plugin"
            ctx.upstream_request.headers["X-Pygateway-Request-Id"] = "plugin"

    sent = await forwarded(gateway_for(route={"paths": ["/api"], "plugins": [Claims()]}))
    assert sent["x-forwarded-for"] == [PEER]
    assert sent["x-real-ip"] == [PEER]
    assert sent["x-forwarded-proto"] == ["http"]
    assert sent["via"] == [f"1.1 pygateway/{gw.__version__}"]
    assert len(sent["x-pygateway-request-id"]) == 1
    assert sent["x-pygateway-request-id"] != ["plugin"]


UNDERSCORED = [
    (b"x_consumer_username", b"admin"),
    (b"x_consumer_id", b"0f0e0d0c"),
    (b"x_credential_identifier", b"stolen"),
    (b"x_anonymous_consumer", b"false"),
    (b"x_forwarded_for", b"203.0.113.9"),
    (b"x_forwarded_proto", b"https"),
    (b"x_real_ip", b"203.0.113.9"),
]


async def test_underscored_spellings_of_gateway_and_consumer_headers_are_dropped() -> None:
    # WSGI/CGI upstreams read `X_Consumer_Username` as HTTP_X_CONSUMER_USERNAME, the same
    # variable as the gateway's X-Consumer-Username.
    sent = await forwarded(gateway_for(), headers=[*UNDERSCORED, (b"x_kept_header", b"yes")])
    for name, _ in UNDERSCORED:
        assert name.decode() not in sent
    assert sent["x_kept_header"] == ["yes"]


async def test_authenticated_identity_headers_from_a_client_never_reach_the_upstream() -> None:
    gateway = gw.Gateway(
        services=[gw.Service(name="s", url="http://echo.internal", routes=[gw.Route(paths=["/"])])],
        engines={"echo.internal": echo_engine()},
    )
    async with gateway, client(gateway) as http:
        response = await http.get(
            "/",
            headers={
                "X-Authenticated-Userid": "admin",
                "X-Authenticated-Scope": "everything",
                "X_Authenticated_Groups": "admins",
            },
        )
    received = {k.lower() for k in response.json()["headers"]}
    assert not {k for k in received if k.replace("_", "-").startswith("x-authenticated-")}
