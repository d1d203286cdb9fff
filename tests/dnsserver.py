"""A fake DNS server for tests, built with dnspython (an implementation independent of ours).

It runs in a thread on 127.0.0.1 (UDP and TCP on one port), so it serves tests on asyncio
and trio alike. Use the `make_dns_server` fixture (conftest.py), or `FakeDNS()` and `close()`.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections.abc import Callable

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["FakeDNS", "Script", "wire"]

Script = Callable[[dns.message.Message], list[bytes]]


class FakeDNS:
    """A DNS server answering from `zone`, with switches for the ways real ones misbehave.

    `add("web1.node.consul. 60 A 10.0.0.1", ...)` adds records (one TTL per name and type).
    A name absent from the zone is NXDOMAIN; a name present without the asked type, NODATA.
    """

    def __init__(self) -> None:
        self.zone: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self.additional = True  # SRV answers carry their targets' A/AAAA records
        self.chase = True  # answers follow CNAMEs, as a recursive server's do
        self.rcode: int | None = None  # answer every query with this rcode
        self.truncate_udp = False  # UDP answers are empty with TC set; TCP ones are whole
        self.script: Script | None = None  # raw UDP datagrams to send instead of the answer
        self.queries: list[tuple[str, str, str]] = []  # (name, type, "udp" or "tcp")
        self._udp, self._tcp = _bind_udp_and_tcp()
        self.port: int = self._udp.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def add(self, *lines: str) -> None:
        for line in lines:
            name, ttl, rtype, rdata = line.split(None, 3)
            rrset = dns.rrset.from_text(name, int(ttl), "IN", rtype, rdata)
            key = (rrset.name, rrset.rdtype)
            if key in self.zone:  # add, not union: the order of records is kept
                self.zone[key].add(rrset[0], rrset.ttl)
            else:
                self.zone[key] = rrset

    def types_asked(self) -> list[tuple[str, str]]:
        return [(name, rtype) for name, rtype, _ in self.queries]

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        if self.rcode is not None:
            response.set_rcode(self.rcode)
            return response
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        if not any(key[0] == name for key in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        for _ in range(10):
            if (name, rdtype) in self.zone:
                response.answer.append(self.zone[name, rdtype])
                break
            cname = self.zone.get((name, dns.rdatatype.CNAME))
            if cname is None:
                break
            response.answer.append(cname)
            if not self.chase:
                break
            name = cname[0].target
        if rdtype == dns.rdatatype.SRV and self.additional:
            for rrset in response.answer:
                for rdata in rrset if rrset.rdtype == dns.rdatatype.SRV else ():
                    for address_type in (dns.rdatatype.A, dns.rdatatype.AAAA):
                        if (rdata.target, address_type) in self.zone:
                            response.additional.append(self.zone[rdata.target, address_type])
        return response

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ)
            selector.register(self._tcp, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    if key.fileobj is self._udp:
                        self._on_datagram()
                    else:
                        self._on_connection()

    def _log(self, query: dns.message.Message, transport: str) -> None:
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        self.queries.append((name, dns.rdatatype.to_text(question.rdtype), transport))

    def _on_datagram(self) -> None:
        data, peer = self._udp.recvfrom(65535)
        query = dns.message.from_wire(data)
        self._log(query, "udp")
        if self.script is not None:
            replies = self.script(query)
        else:
            response = self.answer(query)
            if self.truncate_udp:
                response.answer.clear()
                response.additional.clear()
                response.flags |= dns.flags.TC
            replies = [wire(response)]
        for reply in replies:
            self._udp.sendto(reply, peer)

    def _on_connection(self) -> None:
        connection, _ = self._tcp.accept()
        with connection:
            connection.settimeout(5)
            size = struct.unpack("!H", _receive_exactly(connection, 2))[0]
            query = dns.message.from_wire(_receive_exactly(connection, size))
            self._log(query, "tcp")
            data = wire(self.answer(query))
            connection.sendall(struct.pack("!H", len(data)) + data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._udp.close()
        self._tcp.close()


def wire(message: dns.message.Message) -> bytes:
    # Real servers shuffle the records of a set, and so does dnspython: keep the zone's order,
    # so tests can see that the resolver keeps the server's.
    return message.to_wire(want_shuffle=False)


def _bind_udp_and_tcp() -> tuple[socket.socket, socket.socket]:
    # DNS over TCP is on the UDP port: find a port free for both.
    for _ in range(50):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("127.0.0.1", tcp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen()
        return udp, tcp
    raise RuntimeError("no port free for both UDP and TCP")


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client closed the connection")
        data += chunk
    return data
