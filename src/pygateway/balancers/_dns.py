"""Resolve a Target's host name to the addresses the balancer spreads requests over.

Kong's semantics (lua-resty-dns-client, `dns_order = SRV,A,AAAA`):

- Record types are tried in order, SRV, then A, then AAAA; the first type with records wins,
  so a dual-stack name resolves to its IPv4 addresses only.
- SRV records give each address its port and weight, which override the Target's. Only the
  group with the lowest `priority` is used (the others are standbys Kong does not fail over
  to). An SRV weight of 0 counts as 1: RFC 2782 means "rarely picked" by it, while a balancer
  weight of 0 would take the address out of rotation altogether. A record whose target is
  "." (RFC 2782: "service not available here") is skipped.
- An SRV target's addresses come from the additional section when the server sent them,
  else from A, then AAAA queries. A target that does not resolve is left out; when none
  does, the name is an error.
- CNAME chains are followed; an address's `ttl` is the smallest TTL along its chain (CNAMEs,
  SRV record, address record), at least 1 second so a TTL of 0 does not make callers spin.

Two modes. With `servers` given (e.g. Consul's DNS interface, `["127.0.0.1:8600"]`), every
query goes over UDP to those servers, in order, for `attempts` rounds; a truncated answer is
asked again over TCP. With `servers=None`, SRV queries go to the nameservers of
/etc/resolv.conf (names are sent as given: no search domains), and addresses come from the
system's getaddrinfo, so /etc/hosts works; their TTL is unknown, `default_ttl` stands in. A
failed SRV query falls through to getaddrinfo there (a name from /etc/hosts is unknown to
DNS), and "localhost" names skip it (RFC 6761).

This module speaks the small part of the DNS wire format it needs (RFC 1035, 2782, 3596, 6891)
itself, on anyio: it works on asyncio and trio and every wait is bounded by `timeout`.
"""

from __future__ import annotations

import ipaddress
import math
import secrets
import socket
import struct
from collections.abc import Iterable, Sequence

import anyio
import attrs
from anyio.streams.buffered import BufferedByteReceiveStream

from .._exceptions import PygatewayError

__all__ = ["Address", "DNSError", "Resolver"]

_A, _CNAME, _AAAA, _SRV = 1, 5, 28, 33
_TYPE_NAMES = {_A: "A", _AAAA: "AAAA", _SRV: "SRV", _CNAME: "CNAME"}
_IN = 1
_QR, _TC, _RD = 0x8000, 0x0200, 0x0100
_NXDOMAIN = 3
_RCODES = {
    1: "format error",
    2: "server failure",
    3: "name error",
    4: "not implemented",
    5: "refused",
}
# EDNS0 OPT record: root name, type 41, "class" = the UDP payload we accept. 1232 bytes is
# the DNS flag day 2020 size that avoids IP fragmentation; bigger answers come back truncated
# and are asked again over TCP.
_OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
_MAX_CNAME_QUERIES = 8
_RESOLV_CONF = "/etc/resolv.conf"


@attrs.frozen
class Address:
    """One address a name resolved to.

    `port` and `weight` come from an SRV record; None means the Target's own apply.
    `ttl` is how many seconds until the name should be resolved again (`math.inf` for an
    IP literal).
    """

    ip: str
    port: int | None
    weight: int | None
    ttl: float


class DNSError(PygatewayError):
    """A name could not be resolved. `str(error)` is the reason, e.g. `timeout` or
    `dns server error: 3 name error`."""


class _ServerError(DNSError):
    """The server answered with an error rcode other than NXDOMAIN (another type may work)."""


@attrs.frozen
class _Srv:
    priority: int
    weight: int
    port: int
    target: str


@attrs.frozen
class _Record:
    name: str  # lower case, no trailing dot
    rtype: int
    ttl: int
    data: str | _Srv  # the IP for A/AAAA, the canonical name for CNAME


@attrs.frozen
class _Response:
    flags: int
    answers: list[_Record]
    additional: list[_Record]


@attrs.frozen
class _Answer:
    records: list[_Record]  # of the queried type, owned by the end of the CNAME chain
    ttl: float  # the smallest TTL of the CNAMEs that led there
    additional: list[_Record]


class Resolver:
    """Resolves host names to `Address`es, Kong's way (see the module docstring).

    Args:
        servers: nameservers as `"host"` or `"host:port"` (`"[::1]:53"` for IPv6; the port
            defaults to 53), asked in order. None uses the system's: /etc/resolv.conf for
            SRV, getaddrinfo for addresses.
        timeout: seconds to wait for one server's answer.
        attempts: rounds over all the servers before giving up.
        default_ttl: the TTL of addresses from getaddrinfo, which does not tell.

    Raises `ValueError` for an invalid option, and `DNSError` from `resolve`. The servers
    asked are in `nameservers`, as (host, port) pairs.

        resolver = Resolver(["127.0.0.1:8600"])
        addresses = await resolver.resolve("web.service.consul")
    """

    def __init__(
        self,
        servers: Sequence[str] | None = None,
        *,
        timeout: float = 2.0,
        attempts: int = 2,
        default_ttl: float = 30.0,
    ) -> None:
        if isinstance(servers, str):
            raise ValueError(f"servers must be a list of 'host:port' strings (got {servers!r})")
        if servers is not None and not servers:
            raise ValueError("servers must not be empty (None uses the system's nameservers)")
        if not timeout > 0:
            raise ValueError(f"timeout must be greater than 0 (got {timeout!r})")
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1 (got {attempts!r})")
        if not default_ttl > 0:
            raise ValueError(f"default_ttl must be greater than 0 (got {default_ttl!r})")
        self.timeout = timeout
        self.attempts = attempts
        self.default_ttl = default_ttl
        self.system = servers is None
        if servers is None:
            self.nameservers = _system_nameservers(_RESOLV_CONF)
        else:
            self.nameservers = [_parse_server(s) for s in servers]
        #: /etc/hosts, read first even when `servers` are given (as Kong reads its hosts
        #: file before asking DNS): name -> IPv4 addresses, then IPv6 ones.
        self.hosts = _hosts_file(_HOSTS)

    async def resolve(self, name: str) -> list[Address]:
        """The addresses of `name`, a host name or an IP literal. Raises `DNSError`."""
        ip = _ip_literal(name)
        if ip is not None:
            return [Address(ip, None, None, math.inf)]
        host = name[:-1] if name.endswith(".") else name
        if not host:
            raise DNSError(f"invalid name {name!r}")
        if self.system:
            return await self._resolve_system(host)
        listed = self.hosts.get(host.lower())
        if listed:
            return [Address(ip, None, None, self.default_ttl) for ip in listed]
        return await self._resolve_dns(host)

    async def _resolve_dns(self, host: str) -> list[Address]:
        server_error: DNSError | None = None
        for rtype in (_SRV, _A, _AAAA):
            try:
                answer = await self._lookup(host, rtype)
            except _ServerError as exc:
                # Some servers fail one type and answer another: Kong tries the next type.
                server_error = exc
                continue
            if answer.records and rtype == _SRV:
                return await self._from_srv(answer)
            if answer.records:
                return _unique(
                    Address(str(r.data), None, None, _ttl(answer.ttl, r.ttl))
                    for r in answer.records
                )
        raise server_error or DNSError("no SRV, A or AAAA records")

    async def _resolve_system(self, host: str) -> list[Address]:
        # RFC 6761: localhost names never go to DNS.
        lower = host.lower()
        if self.nameservers and lower != "localhost" and not lower.endswith(".localhost"):
            try:
                answer = await self._lookup(host, _SRV)
            except DNSError:
                # Names from /etc/hosts are unknown to DNS: getaddrinfo has the last word.
                answer = None
            if answer is not None and answer.records:
                return await self._from_srv(answer)
        return [Address(ip, None, None, ttl) for ip, ttl in await self._getaddrinfo(host)]

    async def _from_srv(self, answer: _Answer) -> list[Address]:
        srvs = [(r.data, r.ttl) for r in answer.records if isinstance(r.data, _Srv)]
        srvs = [(srv, ttl) for srv, ttl in srvs if srv.target]
        if not srvs:
            raise DNSError("srv: service not available (target '.')")
        lowest = min(srv.priority for srv, _ in srvs)
        addresses: list[Address] = []
        found: dict[str, list[tuple[str, float]]] = {}
        error: DNSError | None = None
        for srv, srv_ttl in srvs:
            if srv.priority != lowest:
                continue
            if srv.target not in found:
                try:
                    found[srv.target] = await self._target_addresses(srv.target, answer)
                except DNSError as exc:
                    # A stale record should not take the healthy ones down with it.
                    error = DNSError(f"srv target {srv.target}: {exc}")
                    found[srv.target] = []
            weight = max(srv.weight, 1)
            for ip, ttl in found[srv.target]:
                ttl = _ttl(answer.ttl, srv_ttl, ttl)
                addresses.append(Address(ip, srv.port, weight, ttl))
        if not addresses:
            raise error or DNSError("srv targets have no addresses")
        return _unique(addresses)

    async def _target_addresses(self, target: str, answer: _Answer) -> list[tuple[str, float]]:
        for rtype in (_A, _AAAA):
            records, ttl = _follow(answer.additional, target, rtype)
            if records:
                return [(str(r.data), _ttl(ttl, r.ttl)) for r in records]
        if self.system:
            return await self._getaddrinfo(target)
        for rtype in (_A, _AAAA):
            found = await self._lookup(target, rtype)
            if found.records:
                return [(str(r.data), _ttl(found.ttl, r.ttl)) for r in found.records]
        raise DNSError("no A or AAAA records")

    async def _getaddrinfo(self, host: str) -> list[tuple[str, float]]:
        try:
            # The system resolver has timeouts of its own, but not ours.
            with anyio.fail_after(self.timeout * self.attempts):
                infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise DNSError("timeout") from None
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise DNSError(f"getaddrinfo: {reason}") from None
        v4 = [info[4][0] for info in infos if info[0] == socket.AF_INET]
        v6 = [info[4][0] for info in infos if info[0] == socket.AF_INET6]
        ips = list(dict.fromkeys(v4 or v6))  # A before AAAA, as with DNS
        if not ips:
            raise DNSError("getaddrinfo: no addresses")
        return [(ip, self.default_ttl) for ip in ips]

    async def _lookup(self, name: str, rtype: int) -> _Answer:
        """Records of `rtype` for `name`, following CNAMEs, asking again for the end of a
        chain when the server did not (recursive servers do; others may not)."""
        chain_ttl = math.inf
        for _ in range(_MAX_CNAME_QUERIES):
            response = await self._query(name, rtype)
            records, ttl = _follow(response.answers, name.lower(), rtype)
            chain_ttl = min(chain_ttl, ttl)
            canonical = records[0].name if records else _chain_end(response.answers, name)
            if records or canonical == name.lower():
                return _Answer(records, chain_ttl, response.additional)
            name = canonical
        raise DNSError("cname chain too long")

    async def _query(self, name: str, rtype: int) -> _Response:
        """Ask each server in turn, for `attempts` rounds, until one answers."""
        question = _question(name, rtype)
        server_error: DNSError | None = None
        transport_error: DNSError | None = None
        for _ in range(self.attempts):
            for host, port in self.nameservers:
                try:
                    response = await self._exchange(host, port, question)
                except DNSError as exc:
                    transport_error = exc
                    continue
                rcode = response.flags & 0xF
                if rcode == 0:
                    return response
                reason = f"dns server error: {rcode} {_RCODES.get(rcode, 'unknown')}"
                if rcode == _NXDOMAIN:
                    raise DNSError(reason)
                server_error = _ServerError(reason)
        # A server's own words tell more than another one's silence.
        raise server_error or transport_error or DNSError("timeout")

    async def _exchange(self, host: str, port: int, question: bytes) -> _Response:
        qid = secrets.randbits(16)
        query = struct.pack("!HHHHHH", qid, _RD, 1, 0, 0, 1) + question + _OPT
        try:
            with anyio.fail_after(self.timeout):
                async with await anyio.create_connected_udp_socket(host, port) as udp:
                    await udp.send(query)
                    while True:
                        response = _parse(await udp.receive(), qid, question)
                        if response is not None:
                            break  # else a stray datagram: a late answer, or a spoof
            if response.flags & _TC:
                with anyio.fail_after(self.timeout):
                    response = await _exchange_tcp(host, port, query, qid, question)
        except TimeoutError:
            raise DNSError("timeout") from None
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            # anyio wraps some socket errors (trio: an ICMP "port unreachable") in its own.
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            reason = cause.strerror if isinstance(cause, OSError) else None
            reason = reason or "connection lost"
            raise DNSError(f"{_format_server(host, port)}: {reason}") from None
        return response


async def _exchange_tcp(host: str, port: int, query: bytes, qid: int, question: bytes) -> _Response:
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(len(query).to_bytes(2, "big") + query)
        reader = BufferedByteReceiveStream(stream)
        try:
            size = int.from_bytes(await reader.receive_exactly(2), "big")
            data = await reader.receive_exactly(size)
        except anyio.IncompleteRead:
            raise DNSError("malformed dns response: tcp connection closed mid-answer") from None
    response = _parse(data, qid, question)
    if response is None:
        raise DNSError("malformed dns response: tcp answer does not match the query")
    return response


# --- The wire format ---


def _question(name: str, rtype: int) -> bytes:
    out = bytearray()
    for label in name.split("."):
        try:
            raw = label.encode("ascii")
        except UnicodeEncodeError:
            raise DNSError(f"invalid name {name!r}: not ASCII (use its 'xn--' form)") from None
        if not 0 < len(raw) < 64:
            raise DNSError(f"invalid name {name!r}: labels must be 1 to 63 characters long")
        out += bytes([len(raw)]) + raw
    out += b"\x00"
    if len(out) > 255:
        raise DNSError(f"invalid name {name!r}: longer than 255 bytes")
    return bytes(out) + struct.pack("!HH", rtype, _IN)


def _parse(data: bytes, qid: int, question: bytes) -> _Response | None:
    """The response to our query in `data`, or None when it answers something else."""
    if len(data) < 12:
        return None
    rid, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHHHH", data)
    if rid != qid or not flags & _QR:
        return None
    pos = 12
    try:
        if qdcount != 1 or not _same_question(data, question):
            # Servers may drop the question from an error answer, never from a good one.
            if qdcount == 0 and flags & 0xF:
                return _Response(flags, [], [])
            return None
        pos += len(question)
        sections: list[list[_Record]] = []
        for count in (ancount, nscount, arcount):
            records = []
            for _ in range(count):
                record, pos = _read_record(data, pos)
                if record is not None:
                    records.append(record)
            sections.append(records)
    except (IndexError, ValueError, struct.error) as exc:
        raise DNSError(f"malformed dns response: {exc}") from None
    return _Response(flags, sections[0], sections[2])


def _same_question(data: bytes, question: bytes) -> bool:
    # The server copies the question, but may change the letters' case (the "0x20" trick).
    ours = _read_name(question, 0)[0], question[-4:]
    theirs, end = _read_name(data, 12)
    return (theirs, data[end : end + 4]) == ours


def _read_record(data: bytes, pos: int) -> tuple[_Record | None, int]:
    name, pos = _read_name(data, pos)
    rtype, rclass, ttl, size = struct.unpack_from("!HHIH", data, pos)
    pos += 10
    end = pos + size
    if end > len(data):
        raise ValueError("record runs past the end")
    if ttl >= 2**31:  # RFC 2181: a TTL with the top bit set counts as 0
        ttl = 0
    value: str | _Srv
    if rclass != _IN:
        return None, end
    if rtype == _A and size == 4:
        value = str(ipaddress.IPv4Address(data[pos:end]))
    elif rtype == _AAAA and size == 16:
        value = str(ipaddress.IPv6Address(data[pos:end]))
    elif rtype == _CNAME:
        value, stop = _read_name(data, pos)
        if stop > end:
            raise ValueError("CNAME runs past its record")
    elif rtype == _SRV:
        priority, weight, port = struct.unpack_from("!HHH", data, pos)
        target, stop = _read_name(data, pos + 6)
        if stop > end:
            raise ValueError("SRV runs past its record")
        value = _Srv(priority, weight, port, target)
    elif rtype in (_A, _AAAA):
        raise ValueError(f"{_TYPE_NAMES[rtype]} record of {size} bytes")
    else:
        return None, end
    return _Record(name, rtype, ttl, value), end


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    """The name at `pos` (lower case, no trailing dot) and the position after it."""
    labels: list[str] = []
    after: int | None = None
    # Every pointer must point before the labels being read: they can never loop.
    limit = pos
    size = 0
    while True:
        length = data[pos]
        if length & 0xC0 == 0xC0:
            target = (length & 0x3F) << 8 | data[pos + 1]
            if after is None:
                after = pos + 2
            if target >= limit:
                raise ValueError("name compression pointer does not point backwards")
            pos = limit = target
            continue
        if length & 0xC0:
            raise ValueError(f"unknown label type {length:#x}")
        pos += 1
        if length == 0:
            break
        label = data[pos : pos + length]
        if len(label) < length:
            raise ValueError("name runs past the end")
        size += length + 1
        if size > 255:
            raise ValueError("name longer than 255 bytes")
        labels.append(label.decode("latin-1").lower())
        pos += length
    return ".".join(labels), pos if after is None else after


# --- Helpers ---


def _follow(records: list[_Record], name: str, rtype: int) -> tuple[list[_Record], float]:
    """The `rtype` records at the end of `name`'s CNAME chain, and the chain's smallest TTL."""
    ttl = math.inf
    seen = {name}
    while True:
        found = [r for r in records if r.name == name and r.rtype == rtype]
        if found:
            return found, ttl
        cname = next((r for r in records if r.name == name and r.rtype == _CNAME), None)
        if cname is None:
            return [], ttl
        ttl = min(ttl, cname.ttl)
        name = str(cname.data)
        if name in seen:
            raise DNSError("cname loop")
        seen.add(name)


def _chain_end(records: list[_Record], name: str) -> str:
    name = name.lower()
    for _ in range(len(records)):  # _follow has already ruled loops out
        cname = next((r for r in records if r.name == name and r.rtype == _CNAME), None)
        if cname is None:
            break
        name = str(cname.data)
    return name


def _ttl(*ttls: float) -> float:
    return float(max(min(ttls), 1))


def _unique(addresses: Iterable[Address]) -> list[Address]:
    seen: set[tuple[str, int | None]] = set()
    out = []
    for address in addresses:
        if (address.ip, address.port) not in seen:
            seen.add((address.ip, address.port))
            out.append(address)
    return out


def _ip_literal(name: str) -> str | None:
    text = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        if text is not name:
            raise DNSError(f"invalid name {name!r}: not an IPv6 address in brackets") from None
        return None


def _parse_server(text: str) -> tuple[str, int]:
    """`"10.0.0.2"`, `"10.0.0.2:8600"`, `"[::1]:53"`, `"::1"`, `"consul:8600"` -> (host, port)."""
    host, port = text, "53"
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            host = ""
        port = rest[1:] if rest else port
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"dns server must be 'host' or 'host:port' (got {text!r})")
    return host, int(port)


def _format_server(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_HOSTS = "/etc/hosts"


def _hosts_file(path: str) -> dict[str, list[str]]:
    """Names to addresses from a hosts file (IPv4 first, as A records come before AAAA)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            lines = file.read().splitlines()
    except OSError:
        return {}
    found: dict[str, tuple[list[str], list[str]]] = {}
    for line in lines:
        fields = line.partition("#")[0].split()
        if len(fields) < 2:
            continue
        try:
            ip = _ip_literal(fields[0])
        except DNSError:
            continue
        if ip is None:
            continue
        for name in fields[1:]:
            v4, v6 = found.setdefault(name.lower().rstrip("."), ([], []))
            bucket = v6 if ":" in ip else v4
            if ip not in bucket:
                bucket.append(ip)
    return {name: v4 or v6 for name, (v4, v6) in found.items()}


def _system_nameservers(path: str) -> list[tuple[str, int]]:
    """The `nameserver` lines of a resolv.conf file, on port 53."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            lines = file.read().splitlines()
    except OSError:
        return []
    servers = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                ipaddress.ip_address(fields[1])
            except ValueError:
                continue
            servers.append((fields[1], 53))
    return servers
