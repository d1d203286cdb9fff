"""ip-restriction: refuse clients by IP address or CIDR range (Kong's ip-restriction plugin).

The client is `ctx.request.client_ip`: the connecting peer, or the address a trusted proxy
named (the gateway's `trusted_ips` / real-IP settings), never a header an untrusted peer
sent. `deny` is checked first, then `allow`. IPv4-mapped IPv6 addresses
(`::ffff:10.0.0.1`) are IPv4 addresses here, in the lists and for the client alike.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from .._exceptions import ConfigurationError, PathPart
from .._responses import error_response
from .._schema import field
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._responses import Response

__all__ = ["IpRestriction"]

logger = logging.getLogger("pygateway.plugins.ip_restriction")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_UNIDENTIFIED = "Cannot identify the client IP address, unix domain sockets are not supported."


def parse_network(value: str) -> Network | None:
    """An IP address or CIDR range as Kong accepts it (`10.0.0.1/8` too), or None."""
    _, slash, prefix = value.partition("/")
    if slash and not (prefix.isascii() and prefix.isdigit()):
        return None  # no netmask forms ("/255.0.0.0"), no signs or spaces
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


class Matcher:
    """A set of networks, asked "does it hold this address?" in a few set lookups.

    Networks are grouped by prefix length: an address is in the set when, masked to one of
    those lengths, it is one of the networks of that length. The cost depends on how many
    distinct lengths there are (at most 33 or 129), not on how many networks.
    """

    __slots__ = ("_v4", "_v6")

    def __init__(self, networks: Sequence[Network]) -> None:
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        for network in networks:
            network = _unmapped(network)
            groups = v4 if network.version == 4 else v6
            groups.setdefault(network.prefixlen, set()).add(int(network.network_address))
        self._v4 = _compile(v4, 32)
        self._v6 = _compile(v6, 128)

    def __contains__(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        groups = self._v4 if address.version == 4 else self._v6
        value = int(address)
        return any(value & mask in starts for mask, starts in groups)


def _compile(groups: dict[int, set[int]], bits: int) -> tuple[tuple[int, frozenset[int]], ...]:
    full = (1 << bits) - 1
    return tuple(
        (full ^ ((1 << (bits - length)) - 1), frozenset(starts))
        for length, starts in sorted(groups.items())
    )


def _unmapped(network: Network) -> Network:
    """An IPv6 range of IPv4-mapped addresses as the IPv4 range it stands for."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        start = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((start, network.prefixlen - 96))
    return network


def _with_mapped(networks: Sequence[Network]) -> list[Network]:
    """`networks`, plus all of IPv4 for an IPv6 range wide enough to hold every mapped
    address (`::/0`)."""
    out = list(networks)
    for network in networks:
        if isinstance(network, ipaddress.IPv6Network) and _MAPPED.subnet_of(network):
            out.append(ipaddress.IPv4Network("0.0.0.0/0"))
    return out


def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address, IPv4 for an IPv4-mapped one; None if it is not an IP."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attrs.frozen(kw_only=True)
class IpRestriction(Plugin):
    """Refuse requests from the `deny` ranges, and from outside the `allow` ranges.

        IpRestriction(allow=["10.0.0.0/8", "2001:db8::/32"], deny=["10.6.6.0/24"])

    A refused client gets `status` (403) and `message` (`IP address not allowed: <ip>`).
    """

    name = "ip-restriction"
    priority = 990

    allow: Sequence[str] | None = None
    deny: Sequence[str] | None = None
    status: int | None = field(None, between=(400, 599))
    message: str | None = None
    # The lists compiled once, for cheap checks per request (not configuration).
    _allow: Matcher | None = attrs.field(init=False, default=None, eq=False, repr=False)
    _deny: Matcher | None = attrs.field(init=False, default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        errors: list[tuple[tuple[PathPart, ...], str]] = []
        compiled: dict[str, Matcher] = {}
        for name in ("allow", "deny"):
            networks = []
            for i, value in enumerate(getattr(self, name) or ()):
                network = parse_network(value)
                if network is None:
                    errors.append(((name, i), f"invalid ip or cidr range: '{value}'"))
                else:
                    networks.append(network)
            if networks:
                compiled[name] = Matcher(_with_mapped(networks))
        if errors:
            raise ConfigurationError(errors=errors)
        if not self.allow and not self.deny:
            raise ConfigurationError(
                "at least one of these fields must be non-empty: 'config.allow', 'config.deny'"
            )
        for name, matcher in compiled.items():
            object.__setattr__(self, f"_{name}", matcher)

    async def access(self, ctx: Context) -> Response | None:
        ip = ctx.request.client_ip
        address = client_address(ip)
        if address is None:
            # Kong's answer for a client it cannot place (a unix socket): always a 403.
            return _refuse(ctx, 403, _UNIDENTIFIED)
        if (self._deny is not None and address in self._deny) or (
            self._allow is not None and address not in self._allow
        ):
            return _refuse(ctx, self.status or 403, self.message or f"IP address not allowed: {ip}")
        return None


def _refuse(ctx: Context, status: int, message: str) -> Response:
    logger.info("%s (request %s)", message, ctx.request_id)
    return error_response(status, message, ctx.request_id, accept=ctx.request.headers.get("accept"))


register(IpRestriction)
