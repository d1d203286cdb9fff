"""TLS to upstreams: a service's CA certificates, tls_verify, and client certificates (mTLS).

Kong 3.x is the reference (shared/reference/kong.md §1: `certificates`, `ca_certificates`,
`service.client_certificate`, `service.ca_certificates`, `upstream.client_certificate`).
Upstreams are uvicorn servers with TLS on 127.0.0.1, run in threads; their certificates are
made with `cryptography` for each test session. The upstream answers with the subject of
the client certificate it saw and the client port of the connection.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from uvicorn.protocols.http.h11_impl import H11Protocol

import pygateway as gw
from pygateway import CACertificate, Certificate, ConfigurationError
from pygateway._config import dump, load
from pygateway.testing import client

pytestmark = pytest.mark.servers

BAD_GATEWAY = "An invalid response was received from the upstream server"


# -- a small PKI --------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM texts."""

    cert: str
    key: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    def entity(self) -> Certificate:
        return Certificate(cert=self.cert, key=self.key)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def issue(
    name: str,
    *,
    by: Issued | None = None,
    ca: bool = False,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    client_auth: bool = False,
    days: float = 2,
) -> Issued:
    """A certificate for `name`, signed by `by` (self-signed without it), valid from a day
    ago for `days` days from now (negative: expired)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_key = key if by is None else by.private_key
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if by is None else by.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(
            now - datetime.timedelta(days=1)
            if days > 0
            else now + datetime.timedelta(days=days - 1)
        )
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client_auth else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(issuer_key, hashes.SHA256())
    cert = certificate.public_bytes(serialization.Encoding.PEM).decode()
    return Issued(cert, _pem_key(key), certificate, key)


@dataclass(frozen=True)
class PKI:
    ca: Issued  # signs the servers' and the clients' certificates
    other_ca: Issued  # trusted by nobody
    server: Issued  # for localhost and 127.0.0.1, by `ca`
    localhost_only: Issued  # for localhost only, by `ca`
    untrusted_server: Issued  # for localhost and 127.0.0.1, by `other_ca`
    client_a: Issued
    client_b: Issued
    directory: Path

    def files(self, issued: Issued) -> tuple[str, str]:
        """(cert file, key file) for uvicorn, which reads files only."""
        name = hashlib.sha256(issued.cert.encode()).hexdigest()[:16]
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        if not cert.exists():
            cert.write_text(issued.cert)
            key.write_text(issued.key)
        return str(cert), str(key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    ca = issue("pygateway test CA", ca=True)
    other_ca = issue("someone else's CA", ca=True)
    both = {"dns": ("localhost",), "ips": ("127.0.0.1",)}
    return PKI(
        ca=ca,
        other_ca=other_ca,
        server=issue("upstream", by=ca, **both),
        localhost_only=issue("localhost", by=ca, dns=("localhost",)),
        untrusted_server=issue("impostor", by=other_ca, **both),
        client_a=issue("client-a", by=ca, client_auth=True),
        client_b=issue("client-b", by=ca, client_auth=True),
        directory=tmp_path_factory.mktemp("pki"),
    )


# -- an HTTPS upstream under uvicorn -------------------------------------------------------


class _TLSAwareProtocol(H11Protocol):
    """uvicorn's h11 protocol, telling the app who the TLS peer was (in scope extensions)."""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        peer = ssl_object.getpeercert() if ssl_object is not None else None
        subject = dict(pair[0] for pair in peer["subject"]) if peer else {}
        port = transport.get_extra_info("peername")[1]
        app = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            tls = {"client_subject": subject.get("commonName"), "client_port": port}
            scope["extensions"] = {"tls": tls}
            await app(scope, receive, send)

        self.app = with_tls


async def tls_echo(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = json.dumps(
        {
            "client_subject": scope["extensions"]["tls"]["client_subject"],
            "client_port": scope["extensions"]["tls"]["client_port"],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class TLSServer:
    port: int
    #: The SNI of every handshake, in order.
    server_names: list[str | None]


@contextlib.contextmanager
def serve_tls(pki: PKI, issued: Issued, *, client_ca: Issued | None = None) -> Iterator[TLSServer]:
    """`tls_echo` over HTTPS with `issued` as the server certificate; with `client_ca`, a
    client certificate signed by it is required."""
    sock = socket.create_server(("127.0.0.1", 0))
    cert_file, key_file = pki.files(issued)
    config = uvicorn.Config(
        tls_echo,
        http=_TLSAwareProtocol,
        lifespan="off",
        log_level="critical",
        access_log=False,
        ws="none",
        timeout_keep_alive=30,
        ssl_certfile=cert_file,
        ssl_keyfile=key_file,
        ssl_ca_certs=pki.files(client_ca)[0] if client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE,
    )
    config.load()
    assert config.ssl is not None
    server_names: list[str | None] = []
    config.ssl.sni_callback = lambda ssl_object, name, context: server_names.append(name)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-tls-upstream", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the TLS upstream did not start")
            time.sleep(0.005)
        yield TLSServer(sock.getsockname()[1], server_names)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def trusted(pki: PKI) -> Iterator[TLSServer]:
    with serve_tls(pki, pki.server) as server:
        yield server


@pytest.fixture(scope="module")
def untrusted(pki: PKI) -> Iterator[TLSServer]:
    with serve_tls(pki, pki.untrusted_server) as server:
        yield server


@pytest.fixture(scope="module")
def mutual(pki: PKI) -> Iterator[TLSServer]:
    with serve_tls(pki, pki.server, client_ca=pki.ca) as server:
        yield server


async def get(*services: gw.Service, **settings: Any) -> list[httpx.Response]:
    """One GET per service, in order, through one gateway (so one engine and its pools)."""
    routed = [attrs.evolve(s, routes=[gw.Route(paths=[f"/{i}"])]) for i, s in enumerate(services)]
    responses = []
    async with gw.Gateway(services=routed, **settings) as gateway, client(gateway) as http:
        for i in range(len(services)):
            responses.append(await http.get(f"/{i}"))
    return responses


# -- verification --------------------------------------------------------------------------


async def test_an_upstream_signed_by_a_service_ca_certificate_is_trusted(
    pki: PKI, trusted: TLSServer
) -> None:
    service = gw.Service(
        url=f"https://localhost:{trusted.port}", ca_certificates=[CACertificate(cert=pki.ca.cert)]
    )
    [response] = await get(service)
    assert response.status_code == 200
    assert response.json()["client_subject"] is None  # no client certificate was asked for


async def test_a_service_ca_certificate_can_be_referenced_by_id(
    pki: PKI, trusted: TLSServer
) -> None:
    ca = CACertificate(cert=pki.ca.cert)
    service = gw.Service(
        url=f"https://localhost:{trusted.port}",
        ca_certificates=[ca.id],
        routes=[gw.Route(paths=["/"])],
    )
    config = gw.Configuration(services=[service], ca_certificates=[ca])
    async with gw.Gateway(config=config) as gateway, client(gateway) as http:
        response = await http.get("/")
    assert response.status_code == 200


async def test_the_service_ca_certificates_replace_the_system_store(
    pki: PKI, trusted: TLSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The system store (here: the test CA itself) would accept the upstream; the service
    # says to trust only another CA, so it must not.
    monkeypatch.setenv("SSL_CERT_FILE", pki.files(pki.ca)[0])
    url = f"https://localhost:{trusted.port}"
    only_other = gw.Service(
        url=url, retries=0, ca_certificates=[CACertificate(cert=pki.other_ca.cert)]
    )
    system = gw.Service(url=url, retries=0)
    refused, accepted = await get(only_other, system)
    assert refused.status_code == 502
    assert refused.json()["message"] == BAD_GATEWAY
    assert accepted.status_code == 200


async def test_an_untrusted_upstream_certificate_is_a_502_with_tls_verify_on(
    untrusted: TLSServer,
) -> None:
    [response] = await get(gw.Service(url=f"https://localhost:{untrusted.port}", retries=0))
    assert response.status_code == 502
    assert response.json()["message"] == BAD_GATEWAY


async def test_an_untrusted_upstream_certificate_passes_with_tls_verify_off(
    pki: PKI, untrusted: TLSServer
) -> None:
    url = f"https://localhost:{untrusted.port}"
    ca = CACertificate(cert=pki.ca.cert)
    per_service = gw.Service(url=url, tls_verify=False, ca_certificates=[ca])
    [response] = await get(per_service)
    assert response.status_code == 200
    [response] = await get(gw.Service(url=url), tls_verify=False)
    assert response.status_code == 200


async def test_the_certificate_is_checked_against_the_service_host_sent_as_sni(
    pki: PKI,
) -> None:
    ca = [CACertificate(cert=pki.ca.cert)]
    with serve_tls(pki, pki.localhost_only) as server:
        by_name = gw.Service(url=f"https://localhost:{server.port}", ca_certificates=ca)
        by_address = gw.Service(
            url=f"https://127.0.0.1:{server.port}", ca_certificates=ca, retries=0
        )
        named, addressed = await get(by_name, by_address)
    assert named.status_code == 200
    # The certificate names localhost only: the same server is refused by its address.
    assert addressed.status_code == 502
    assert server.server_names[0] == "localhost"


# -- client certificates (mTLS) --------------------------------------------------------------


async def test_an_upstream_requiring_a_client_certificate_gets_the_service_one(
    pki: PKI, mutual: TLSServer
) -> None:
    service = gw.Service(
        url=f"https://localhost:{mutual.port}",
        client_certificate=pki.client_a.entity(),
        ca_certificates=[CACertificate(cert=pki.ca.cert)],
    )
    [response] = await get(service)
    assert response.status_code == 200
    assert response.json()["client_subject"] == "client-a"


async def test_without_a_client_certificate_an_mtls_upstream_is_a_502(
    pki: PKI, mutual: TLSServer
) -> None:
    service = gw.Service(
        url=f"https://localhost:{mutual.port}",
        retries=0,
        ca_certificates=[CACertificate(cert=pki.ca.cert)],
    )
    [response] = await get(service)
    assert response.status_code == 502
    assert response.json()["message"] == BAD_GATEWAY


async def test_the_client_certificate_is_sent_with_tls_verify_off(
    pki: PKI, mutual: TLSServer
) -> None:
    service = gw.Service(
        url=f"https://localhost:{mutual.port}",
        tls_verify=False,
        client_certificate=pki.client_b.entity(),
    )
    [response] = await get(service)
    assert response.status_code == 200
    assert response.json()["client_subject"] == "client-b"


async def test_services_with_different_client_certificates_never_share_a_connection(
    pki: PKI, mutual: TLSServer
) -> None:
    url = f"https://localhost:{mutual.port}"
    ca = [CACertificate(cert=pki.ca.cert)]
    a = gw.Service(url=url, client_certificate=pki.client_a.entity(), ca_certificates=ca)
    b = gw.Service(url=url, client_certificate=pki.client_b.entity(), ca_certificates=ca)
    responses = await get(a, b, a, b)
    seen = [(r.status_code, r.json()["client_subject"]) for r in responses]
    assert seen == [(200, "client-a"), (200, "client-b"), (200, "client-a"), (200, "client-b")]
    ports = [r.json()["client_port"] for r in responses]
    # Each certificate has its own kept-alive connection, and never the other one's.
    assert ports[0] == ports[2]
    assert ports[1] == ports[3]
    assert ports[0] != ports[1]


async def test_an_upstream_client_certificate_is_used_for_its_targets(
    pki: PKI, mutual: TLSServer
) -> None:
    upstream = gw.Upstream(
        name="mtls.internal",
        client_certificate=pki.client_b.entity(),
        targets=[gw.Target(f"127.0.0.1:{mutual.port}")],
    )
    ca = [CACertificate(cert=pki.ca.cert)]
    inherits = gw.Service(url="https://mtls.internal", ca_certificates=ca)
    overrides = gw.Service(
        url="https://mtls.internal", ca_certificates=ca, client_certificate=pki.client_a.entity()
    )
    first, second = await get(inherits, overrides, upstreams=[upstream])
    assert (first.status_code, first.json()["client_subject"]) == (200, "client-b")
    assert (second.status_code, second.json()["client_subject"]) == (200, "client-a")


# -- entities ------------------------------------------------------------------------------


def errors(excinfo: pytest.ExceptionInfo[ConfigurationError]) -> list[tuple[Any, str]]:
    return list(excinfo.value.errors)


def test_a_certificate_whose_key_does_not_match_is_refused(pki: PKI) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Certificate(cert=pki.client_a.cert, key=pki.client_b.key)
    assert errors(excinfo) == [((), "certificate does not match key")]


def test_a_certificate_that_is_not_pem_is_refused(pki: PKI) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Certificate(cert="not a certificate", key=pki.client_a.key)
    [(path, reason)] = errors(excinfo)
    assert path == ("cert",)
    assert reason.startswith("invalid certificate: ")


def test_a_key_that_is_not_pem_is_refused(pki: PKI) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        Certificate(cert=pki.client_a.cert, key="-----BEGIN PRIVATE KEY-----\nAAAA\n")
    [(path, reason)] = errors(excinfo)
    assert path == ("key",)
    assert reason.startswith("invalid key: ")


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(pki: PKI) -> None:
    encrypted = pki.client_a.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    with pytest.raises(ConfigurationError) as excinfo:
        Certificate(cert=pki.client_a.cert, key=encrypted)
    assert errors(excinfo) == [(("key",), "invalid key: encrypted keys are not supported")]


def test_a_certificate_keeps_its_key_out_of_its_repr(pki: PKI) -> None:
    assert pki.client_a.key not in repr(pki.client_a.entity())


def test_certificate_ids_are_derived_from_the_certificate(pki: PKI) -> None:
    assert pki.client_a.entity().id == pki.client_a.entity().id
    assert pki.client_a.entity().id != pki.client_b.entity().id
    given = "8f2ad6d2-4c6b-4cf3-9c39-2f3c0ac6d1a1"
    assert Certificate(cert=pki.client_a.cert, key=pki.client_a.key, id=given).id == given


def test_a_ca_certificate_digest_is_the_sha256_of_its_der_form(pki: PKI) -> None:
    ca = CACertificate(cert=pki.ca.cert)
    der = pki.ca.certificate.public_bytes(serialization.Encoding.DER)
    assert ca.cert_digest == hashlib.sha256(der).hexdigest()
    assert ca.id == CACertificate(cert=pki.ca.cert).id
    assert ca.id != CACertificate(cert=pki.other_ca.cert).id


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda pki: pki.client_a.cert,
            'certificate does not appear to be a CA because it is missing the "CA" '
            "basic constraint",
        ),
        (
            lambda pki: pki.ca.cert + pki.other_ca.cert,
            "please submit only one certificate at a time",
        ),
        (
            lambda pki: issue("old CA", ca=True, days=-1).cert,
            'certificate expired, "Not After" time is in the past',
        ),
    ],
    ids=["not-a-ca", "two-certificates", "expired"],
)
def test_ca_certificates_follow_kongs_rules(pki: PKI, make: Any, reason: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        CACertificate(cert=make(pki))
    assert errors(excinfo) == [(("cert",), reason)]


def test_certificate_references_must_be_entities_or_uuids() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        gw.Service(url="https://a.internal", client_certificate="nope")
    assert errors(excinfo) == [(("client_certificate",), "expected a valid UUID")]
    with pytest.raises(ConfigurationError) as excinfo:
        gw.Service(url="https://a.internal", ca_certificates=["x", "y"])
    assert errors(excinfo) == [
        (("ca_certificates", 0), "expected a valid UUID"),
        (("ca_certificates", 1), "expected a valid UUID"),
    ]
    with pytest.raises(ConfigurationError) as excinfo:
        gw.Upstream(name="u.internal", client_certificate="nope")
    assert errors(excinfo) == [(("client_certificate",), "expected a valid UUID")]


def test_tls_verify_depth_is_still_refused() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        gw.Service(url="https://a.internal", tls_verify_depth=2)
    assert errors(excinfo) == [(("tls_verify_depth",), "not supported by pygateway yet")]


def test_a_service_given_a_certificate_equals_one_given_its_id(pki: PKI) -> None:
    certificate = pki.client_a.entity()
    inline = gw.Service(url="https://a.internal", client_certificate=certificate)
    by_id = gw.Service(url="https://a.internal", client_certificate=certificate.id)
    assert inline == by_id
    assert hash(inline) == hash(by_id)


# -- declarative configuration --------------------------------------------------------------


def doc(**sections: Any) -> dict[str, Any]:
    return {"_format_version": "3.0", **sections}


def test_an_unknown_certificate_id_is_a_foreign_key_error(pki: PKI) -> None:
    missing = "6a1f8f9e-2a4b-4b8e-9d3c-0e2f5a7b9c11"
    data = doc(
        services=[
            {
                "name": "billing",
                "url": "https://billing.internal",
                "client_certificate": {"id": missing},
                "ca_certificates": [missing],
            }
        ],
        upstreams=[{"name": "billing.internal", "client_certificate": {"id": missing}}],
    )
    with pytest.raises(ConfigurationError) as excinfo:
        gw.Gateway.from_config(data)
    fk = f"the foreign key '{missing}' does not reference an existing"
    assert errors(excinfo) == [
        (("upstreams", 0, "client_certificate"), f"{fk} 'certificates' entity"),
        (("services", 0, "client_certificate"), f"{fk} 'certificates' entity"),
        (("services", 0, "ca_certificates", 0), f"{fk} 'ca_certificates' entity"),
    ]


def test_a_declarative_certificate_with_the_wrong_key_is_refused_where_it_is(pki: PKI) -> None:
    data = doc(certificates=[{"cert": pki.client_a.cert, "key": pki.client_b.key}])
    with pytest.raises(ConfigurationError) as excinfo:
        load(data)
    assert errors(excinfo) == [(("certificates", 0), "certificate does not match key")]
    assert str(excinfo.value) == "certificates[0]: certificate does not match key"


def test_a_declarative_certificate_that_is_not_pem_is_refused_where_it_is() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        load(doc(ca_certificates=[{"cert": "-----BEGIN CERTIFICATE-----\nzz\n"}]))
    [(path, reason)] = errors(excinfo)
    assert path == ("ca_certificates", 0, "cert")
    assert reason.startswith("invalid certificate: ")


def test_a_certificates_snis_load_and_a_half_alternate_pair_is_refused(pki: PKI) -> None:
    cert = {"cert": pki.client_a.cert, "key": pki.client_a.key, "snis": ["a.example"]}
    assert [sni.name for sni in load(doc(certificates=[cert])).snis] == ["a.example"]
    with pytest.raises(ConfigurationError) as excinfo:
        load(doc(certificates=[{**cert, "cert_alt": pki.client_b.cert}]))
    [(path, reason)] = errors(excinfo)
    assert path == ("certificates", 0)
    assert reason.startswith("all or none of these fields must be set")


def test_a_configuration_with_certificates_survives_a_round_trip(pki: PKI) -> None:
    client_id = pki.client_a.entity().id
    ca_id = "0c8f7a3e-5b1d-4e2f-8a9b-1c2d3e4f5a6b"
    data = doc(
        certificates=[
            {"cert": pki.client_a.cert, "key": pki.client_a.key, "tags": ["mtls"]},
            {"cert": pki.client_b.cert, "key": pki.client_b.key},
        ],
        ca_certificates=[{"id": ca_id, "cert": pki.ca.cert, "cert_digest": "stale"}],
        services=[
            {
                "name": "billing",
                "url": "https://billing.internal",
                "client_certificate": {"id": client_id},
                "ca_certificates": [ca_id],
                "tls_verify": True,
            }
        ],
        upstreams=[{"name": "billing.internal", "client_certificate": pki.client_b.entity().id}],
    )
    config = load(data)
    assert config.certificates[0].tags == ("mtls",)
    assert config.ca_certificates[0].cert_digest == CACertificate(cert=pki.ca.cert).cert_digest
    dumped = dump(config)
    assert dumped["services"][0]["client_certificate"] == {"id": client_id}
    assert dumped["services"][0]["ca_certificates"] == [ca_id]
    assert dumped["ca_certificates"][0]["id"] == ca_id
    again = load(json.loads(json.dumps(dumped)))
    assert again == config
    assert [c.id for c in again.certificates] == [c.id for c in config.certificates]
    gw.Gateway(config=again)  # and the references resolve


def test_certificates_given_inline_are_listed_and_dumped_by_id(pki: PKI) -> None:
    certificate = pki.client_a.entity()
    ca = CACertificate(cert=pki.ca.cert)
    service = gw.Service(
        name="billing",
        url="https://billing.internal",
        client_certificate=certificate,
        ca_certificates=[ca],
    )
    config = gw.Configuration(services=[service], certificates=[certificate])
    assert config.certificates == (certificate,)  # not twice
    assert config.ca_certificates == (ca,)
    dumped = dump(config)
    assert dumped["services"][0]["client_certificate"] == {"id": certificate.id}
    assert load(json.loads(json.dumps(dumped))) == config


def test_an_http_service_gets_no_tls_material_from_its_upstream(pki: PKI) -> None:
    upstream = gw.Upstream(name="plain.internal", client_certificate=pki.client_a.entity())
    service = gw.Service(url="http://plain.internal")
    gateway = gw.Gateway(services=[service], upstreams=[upstream])
    assert gateway.snapshot.upstream_tls_kwargs(gateway.config.services[0]) == {}
