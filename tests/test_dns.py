"""The DNS resolver for upstream targets, against a fake DNS server built with dnspython.

dnspython builds and parses the fake server's messages, so the resolver's own wire code is
checked against an independent implementation. The server runs in a thread on 127.0.0.1
(UDP and TCP on one port), so it serves tests on asyncio and trio alike.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from dnsserver import FakeDNS, wire

from pygateway.balancers._dns import Address, DNSError, Resolver, _system_nameservers


@pytest.fixture
def dns_server(make_dns_server: Callable[[], FakeDNS]) -> FakeDNS:
    return make_dns_server()


@pytest.fixture
def resolver(dns_server: FakeDNS) -> Resolver:
    return Resolver([dns_server.address], timeout=1.0)


# --- IP literals ---


@pytest.mark.parametrize(
    ("literal", "ip"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[2001:DB8::1]", "2001:db8::1"),
    ],
)
async def test_an_ip_literal_resolves_to_itself_forever_without_a_query(
    literal: str, ip: str, dns_server: FakeDNS, resolver: Resolver
) -> None:
    assert await resolver.resolve(literal) == [Address(ip, None, None, math.inf)]
    assert dns_server.queries == []


async def test_brackets_around_something_else_than_an_ipv6_address_are_an_error(
    resolver: Resolver,
) -> None:
    with pytest.raises(DNSError, match="invalid name"):
        await resolver.resolve("[api.internal]")


# --- Address records ---


async def test_a_records_resolve_to_their_addresses_with_their_ttl(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.add("api.internal. 60 A 10.0.0.1", "api.internal. 60 A 10.0.0.2")

    assert await resolver.resolve("api.internal") == [
        Address("10.0.0.1", None, None, 60.0),
        Address("10.0.0.2", None, None, 60.0),
    ]
    assert dns_server.types_asked() == [("api.internal", "SRV"), ("api.internal", "A")]


async def test_a_name_with_only_aaaa_records_resolves_to_its_ipv6_addresses(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.add("v6.internal. 45 AAAA 2001:db8::7")

    assert await resolver.resolve("v6.internal.") == [Address("2001:db8::7", None, None, 45.0)]
    assert [rtype for _, rtype in dns_server.types_asked()] == ["SRV", "A", "AAAA"]


async def test_a_name_with_a_and_aaaa_records_resolves_to_its_ipv4_addresses_as_kong_does(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.add("dual.internal. 60 A 10.0.0.1", "dual.internal. 60 AAAA 2001:db8::1")

    assert await resolver.resolve("dual.internal") == [Address("10.0.0.1", None, None, 60.0)]
    assert ("dual.internal", "AAAA") not in dns_server.types_asked()


async def test_names_are_matched_without_regard_to_case(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.add("api.internal. 60 A 10.0.0.1")

    assert await resolver.resolve("API.Internal") == [Address("10.0.0.1", None, None, 60.0)]


async def test_a_cname_chain_resolves_to_the_final_names_records_with_the_smallest_ttl(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.add(
        "www.example.test. 300 CNAME edge.example.test.",
        "edge.example.test. 20 CNAME lb.example.test.",
        "lb.example.test. 60 A 10.1.1.1",
        "lb.example.test. 60 A 10.1.1.2",
    )

    assert await resolver.resolve("www.example.test") == [
        Address("10.1.1.1", None, None, 20.0),
        Address("10.1.1.2", None, None, 20.0),
    ]


async def test_the_end_of_a_cname_chain_the_server_did_not_follow_is_asked_for(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.chase = False
    dns_server.add("www.example.test. 300 CNAME lb.example.test.", "lb.example.test. 60 A 10.1.1.1")

    assert await resolver.resolve("www.example.test") == [Address("10.1.1.1", None, None, 60.0)]
    assert ("lb.example.test", "A") in dns_server.types_asked()


async def test_a_cname_loop_is_an_error(dns_server: FakeDNS, resolver: Resolver) -> None:
    dns_server.chase = False
    dns_server.add("a.loop.test. 60 CNAME b.loop.test.", "b.loop.test. 60 CNAME a.loop.test.")

    with pytest.raises(DNSError, match="cname"):
        await resolver.resolve("a.loop.test")


async def test_a_ttl_of_zero_counts_as_one_second(dns_server: FakeDNS, resolver: Resolver) -> None:
    dns_server.add("flappy.internal. 0 A 10.0.0.9")

    assert await resolver.resolve("flappy.internal") == [Address("10.0.0.9", None, None, 1.0)]


# --- SRV records ---


async def test_srv_records_give_each_address_its_port_weight_and_ttl_from_the_additional_section(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.add(
        "web.service.consul. 30 SRV 1 10 8080 web1.node.consul.",
        "web.service.consul. 30 SRV 1 20 8081 web2.node.consul.",
        "web1.node.consul. 60 A 10.0.0.1",
        "web1.node.consul. 60 A 10.0.0.3",
        "web2.node.consul. 5 AAAA 2001:db8::2",
    )

    assert await resolver.resolve("web.service.consul") == [
        Address("10.0.0.1", 8080, 10, 30.0),
        Address("10.0.0.3", 8080, 10, 30.0),
        Address("2001:db8::2", 8081, 20, 5.0),
    ]
    assert dns_server.types_asked() == [("web.service.consul", "SRV")]


async def test_srv_targets_missing_from_the_additional_section_are_asked_for_a_then_aaaa(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.additional = False
    dns_server.add(
        "web.service.consul. 30 SRV 1 10 8080 web1.node.consul.",
        "web.service.consul. 30 SRV 1 20 8081 web2.node.consul.",
        "web1.node.consul. 60 A 10.0.0.1",
        "web2.node.consul. 5 AAAA 2001:db8::2",
    )

    assert await resolver.resolve("web.service.consul") == [
        Address("10.0.0.1", 8080, 10, 30.0),
        Address("2001:db8::2", 8081, 20, 5.0),
    ]
    assert dns_server.types_asked() == [
        ("web.service.consul", "SRV"),
        ("web1.node.consul", "A"),
        ("web2.node.consul", "A"),
        ("web2.node.consul", "AAAA"),
    ]


async def test_only_the_lowest_priority_srv_group_is_used(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.additional = False
    dns_server.add(
        "web.service.consul. 30 SRV 5 10 8080 standby.node.consul.",
        "web.service.consul. 30 SRV 2 10 8080 web1.node.consul.",
        "web.service.consul. 30 SRV 2 30 8080 web2.node.consul.",
        "standby.node.consul. 60 A 10.0.0.9",
        "web1.node.consul. 60 A 10.0.0.1",
        "web2.node.consul. 60 A 10.0.0.2",
    )

    addresses = await resolver.resolve("web.service.consul")

    assert [(a.ip, a.weight) for a in addresses] == [("10.0.0.1", 10), ("10.0.0.2", 30)]
    assert ("standby.node.consul", "A") not in dns_server.types_asked()


async def test_an_srv_weight_of_zero_counts_as_one(dns_server: FakeDNS, resolver: Resolver) -> None:
    dns_server.add(
        "web.service.consul. 30 SRV 1 0 8080 web1.node.consul.",
        "web1.node.consul. 60 A 10.0.0.1",
    )

    assert await resolver.resolve("web.service.consul") == [Address("10.0.0.1", 8080, 1, 30.0)]


async def test_an_srv_target_that_does_not_resolve_is_left_out(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.add(
        "web.service.consul. 30 SRV 1 10 8080 gone.node.consul.",
        "web.service.consul. 30 SRV 1 10 8081 web1.node.consul.",
        "web1.node.consul. 60 A 10.0.0.1",
    )

    assert await resolver.resolve("web.service.consul") == [Address("10.0.0.1", 8081, 10, 30.0)]


async def test_srv_records_whose_targets_do_not_resolve_are_an_error(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.add("web.service.consul. 30 SRV 1 10 8080 gone.node.consul.")

    with pytest.raises(DNSError) as caught:
        await resolver.resolve("web.service.consul")
    assert str(caught.value) == "srv target gone.node.consul: dns server error: 3 name error"


async def test_an_srv_record_with_the_root_as_target_means_no_service(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.add("web.service.consul. 30 SRV 0 0 0 .")

    with pytest.raises(DNSError, match="service not available"):
        await resolver.resolve("web.service.consul")


# --- Errors ---


async def test_a_name_that_does_not_exist_is_an_error_after_one_query(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    with pytest.raises(DNSError) as caught:
        await resolver.resolve("nowhere.internal")
    assert str(caught.value) == "dns server error: 3 name error"
    assert dns_server.types_asked() == [("nowhere.internal", "SRV")]


async def test_a_name_without_srv_a_or_aaaa_records_is_an_error(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.add('notes.internal. 60 TXT "hello"')

    with pytest.raises(DNSError, match="no SRV, A or AAAA records"):
        await resolver.resolve("notes.internal")


@pytest.mark.parametrize(
    ("rcode", "reason"),
    [
        (dns.rcode.SERVFAIL, "dns server error: 2 server failure"),
        (dns.rcode.REFUSED, "dns server error: 5 refused"),
    ],
)
async def test_a_server_error_is_an_error_with_its_rcode(
    rcode: int, reason: str, dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.rcode = rcode

    with pytest.raises(DNSError) as caught:
        await resolver.resolve("api.internal")
    assert str(caught.value) == reason


async def test_a_server_that_never_answers_is_a_timeout_after_every_attempt(
    dns_server: FakeDNS,
) -> None:
    dns_server.script = lambda query: []
    resolver = Resolver([dns_server.address], timeout=0.2, attempts=2)

    with pytest.raises(DNSError) as caught:
        await resolver.resolve("api.internal")
    assert str(caught.value) == "timeout"
    assert dns_server.types_asked() == [("api.internal", "SRV")] * 2


async def test_the_next_server_is_asked_when_one_does_not_answer(
    make_dns_server: Callable[[], FakeDNS],
) -> None:
    silent, good = make_dns_server(), make_dns_server()
    silent.script = lambda query: []
    good.add("api.internal. 60 A 10.0.0.1")
    resolver = Resolver([silent.address, good.address], timeout=0.2, attempts=1)

    assert await resolver.resolve("api.internal") == [Address("10.0.0.1", None, None, 60.0)]
    assert len(silent.queries) == 2  # SRV and A, each waited for in vain


async def test_a_server_on_a_port_nobody_listens_on_is_an_error(dns_server: FakeDNS) -> None:
    port = dns_server.port
    dns_server.close()  # frees the port: nothing answers there now
    resolver = Resolver([f"127.0.0.1:{port}"], timeout=0.2, attempts=1)

    with pytest.raises(DNSError):
        await resolver.resolve("api.internal")


async def test_a_truncated_udp_answer_is_asked_again_over_tcp(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.truncate_udp = True
    dns_server.add(
        "web.service.consul. 30 SRV 1 10 8080 web1.node.consul.",
        "web1.node.consul. 60 A 10.0.0.1",
    )

    assert await resolver.resolve("web.service.consul") == [Address("10.0.0.1", 8080, 10, 30.0)]
    assert dns_server.queries == [
        ("web.service.consul", "SRV", "udp"),
        ("web.service.consul", "SRV", "tcp"),
    ]


async def test_stray_datagrams_with_a_wrong_id_or_question_are_ignored(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    dns_server.add("api.internal. 60 A 10.0.0.1")
    evil = dns.rrset.from_text("api.internal.", 60, "IN", "A", "6.6.6.6")

    def strays_first(query: dns.message.Message) -> list[bytes]:
        wrong_id = dns.message.make_response(query)
        wrong_id.id = (query.id + 1) % 65536
        wrong_id.answer.append(evil)
        other = dns.message.make_query(
            "api.internal.", "A" if query.question[0].rdtype != 1 else "MX"
        )
        other.id = query.id
        wrong_question = dns.message.make_response(other)
        wrong_question.answer.append(evil)
        right = dns_server.answer(query)
        return [wire(wrong_id), wire(wrong_question), wire(right)]

    dns_server.script = strays_first

    assert await resolver.resolve("api.internal") == [Address("10.0.0.1", None, None, 60.0)]


async def test_a_malformed_response_is_an_error(dns_server: FakeDNS, resolver: Resolver) -> None:
    dns_server.add("api.internal. 60 A 10.0.0.1")

    def cut_short(query: dns.message.Message) -> list[bytes]:
        response = dns_server.answer(query)
        response.use_edns(False)
        return [wire(response)[:-2]] if response.answer else [wire(response)]

    dns_server.script = cut_short

    with pytest.raises(DNSError, match="malformed dns response"):
        await resolver.resolve("api.internal")


async def test_a_name_compression_loop_is_an_error_not_a_hang(
    dns_server: FakeDNS, resolver: Resolver
) -> None:
    def looping_answer(query: dns.message.Message) -> list[bytes]:
        question = query.question[0]
        header = struct.pack("!HHHHHH", query.id, 0x8180, 1, 1, 0, 0)
        data = header + question.name.to_wire() + struct.pack("!HH", question.rdtype, 1)
        pointer_to_itself = struct.pack("!H", 0xC000 | len(data))
        return [data + pointer_to_itself + struct.pack("!HHIH", 1, 1, 60, 4) + bytes(4)]

    dns_server.script = looping_answer

    with pytest.raises(DNSError, match="malformed dns response: name compression pointer"):
        await resolver.resolve("api.internal")


# --- The system's resolver ---


async def test_the_system_resolver_resolves_localhost_with_getaddrinfo() -> None:
    resolver = Resolver(default_ttl=12.0)

    assert await resolver.resolve("localhost") == [Address("127.0.0.1", None, None, 12.0)]


async def test_the_system_resolver_asks_its_nameservers_for_srv_and_getaddrinfo_for_targets(
    dns_server: FakeDNS,
) -> None:
    dns_server.additional = False
    dns_server.add("web.service.test. 20 SRV 1 5 8080 localhost.")
    resolver = Resolver(default_ttl=30.0)
    resolver.nameservers = [("127.0.0.1", dns_server.port)]  # instead of resolv.conf's

    assert await resolver.resolve("web.service.test") == [Address("127.0.0.1", 8080, 5, 20.0)]
    assert dns_server.types_asked() == [("web.service.test", "SRV")]


def test_the_system_nameservers_are_the_nameserver_lines_of_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# generated\nsearch corp.test\nnameserver 10.0.0.53\n"
        "nameserver fe80::1%eth0\nnameserver not-an-ip\noptions ndots:2\nnameserver ::1\n"
    )

    assert _system_nameservers(str(conf)) == [("10.0.0.53", 53), ("fe80::1%eth0", 53), ("::1", 53)]
    assert _system_nameservers(str(tmp_path / "missing")) == []


# --- Options ---


@pytest.mark.parametrize(
    ("server", "host", "port"),
    [
        ("127.0.0.1:8600", "127.0.0.1", 8600),
        ("10.0.0.2", "10.0.0.2", 53),
        ("[::1]:5353", "::1", 5353),
        ("[::1]", "::1", 53),
        ("::1", "::1", 53),
        ("consul:8600", "consul", 8600),
    ],
)
def test_servers_are_host_and_port_with_port_53_by_default(
    server: str, host: str, port: int
) -> None:
    assert Resolver([server]).nameservers == [(host, port)]


@pytest.mark.parametrize(
    "server", ["", ":53", "127.0.0.1:", "127.0.0.1:dns", "[::1", "[::1]x", "h:0"]
)
def test_an_invalid_server_is_rejected_when_the_resolver_is_built(server: str) -> None:
    with pytest.raises(ValueError, match="dns server must be 'host' or 'host:port'"):
        Resolver([server])


@pytest.mark.parametrize(
    "options",
    [{"servers": []}, {"timeout": 0}, {"attempts": 0}, {"default_ttl": -1}],
)
def test_invalid_options_are_rejected_when_the_resolver_is_built(
    options: dict[str, object],
) -> None:
    with pytest.raises(ValueError, match="must"):
        Resolver(**options)  # type: ignore[arg-type]


async def test_the_hosts_file_is_read_before_the_configured_servers(
    dns_server: FakeDNS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost\n10.1.2.3 db.internal # ok\n"
    )
    monkeypatch.setattr("pygateway.balancers._dns._HOSTS", str(hosts))
    resolver = Resolver([dns_server.address], timeout=0.5)
    assert [a.ip for a in await resolver.resolve("localhost")] == ["127.0.0.1"]
    assert [a.ip for a in await resolver.resolve("DB.internal")] == ["10.1.2.3"]
    assert [a.ip for a in await resolver.resolve("ip6-localhost")] == ["::1"]
    assert dns_server.queries == []
