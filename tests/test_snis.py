"""SNIs: the names the gateway presents certificates for, and TLS termination by SNI.

Kong 3.x is the reference (shared/reference/kong.md §1 "Certificate", "SNI"; §6
`/snis`, `/certificates/{c}/snis`): SNI names are unique wildcard hosts referring to a
certificate; a certificate's `snis` is a shorthand for them; deleting a certificate deletes
its SNIs; at a handshake the exact name wins, then `*.rest`, then `prefix.*`, then the
default certificate. Certificates are made with `cryptography` once per module.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from serverutil import PYTHON, ServerProcess, free_port, port_accepts

import pygateway as gw
from pygateway import Certificate, ConfigurationError
from pygateway._config import dump, load
from pygateway._entities import SNI
from pygateway._snapshot import Configuration
from pygateway._tls import ServerCertificates
from pygateway.admin import AdminAPI
from pygateway.plugins import _registry
from pygateway.stores._config_store import MemoryConfigStore

# -- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: str
    key: str
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    def entity(self) -> Certificate:
        return Certificate(cert=self.cert, key=self.key)


def issue(
    name: str, *, by: Issued | None = None, dns: tuple[str, ...] = (), rsa_key: bool = False
) -> Issued:
    """A certificate with common name `name` for the `dns` names, signed by `by` (a CA,
    self-signed without it); its key is ECDSA, or RSA with `rsa_key`."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if rsa_key:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer = key if by is None else by.private_key
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if by is None else by.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=by is None, path_length=None), critical=True)
    )
    if dns:
        names = [x509.DNSName(d) for d in dns]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(signer, hashes.SHA256())
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return Issued(
        certificate.public_bytes(serialization.Encoding.PEM).decode(), pem_key, certificate, key
    )


@dataclass(frozen=True)
class PKI:
    ca: Issued
    a: Issued  # a.test
    b: Issued  # *.b.test and b.*
    c: Issued  # c.test
    fallback: Issued  # the default certificate
    a_rsa: Issued  # a.test, with an RSA key


@pytest.fixture(scope="module")
def pki() -> PKI:
    ca = issue("snis test CA")
    return PKI(
        ca=ca,
        a=issue("a.test", by=ca, dns=("a.test",)),
        b=issue("b.test", by=ca, dns=("*.b.test", "b.example")),
        c=issue("c.test", by=ca, dns=("c.test",)),
        fallback=issue("fallback", by=ca, dns=("localhost",)),
        a_rsa=issue("a.test rsa", by=ca, dns=("a.test",), rsa_key=True),
    )


def errors(excinfo: pytest.ExceptionInfo[ConfigurationError]) -> list[tuple[Any, str]]:
    return [(tuple(path), reason) for path, reason in excinfo.value.errors]


# -- the entity -----------------------------------------------------------------------------

CERT_ID = "7d4a4a5e-2f6e-4d0b-9b77-1a2b3c4d5e6f"


@pytest.mark.parametrize("name", ["a.test", "*.example.com", "example.*", "x_y.test", "*", "*.com"])
def test_an_sni_name_is_a_host_with_at_most_a_wildcard_at_either_end(name: str) -> None:
    assert SNI(name, certificate=CERT_ID).name == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("*.*.x", "only one wildcard must be specified"),
        ("*.wildcard.*", "only one wildcard must be specified"),
        ("a.*.b", "wildcard must be leftmost or rightmost character"),
        ("a.test:8443", "must not have a port"),
        ("10.0.0.1", "must not be an IP"),
        ("[::1]:443", "must not be an IP"),
        ("a b.test", "invalid value: a b.test"),
        ("a..test", "invalid value: a..test"),
    ],
)
def test_an_invalid_sni_name_is_refused_with_kongs_reason(name: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        SNI(name, certificate=CERT_ID)
    assert errors(excinfo) == [(("name",), reason)]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("*a.test", "wildcard must stand for a whole label: *.example.com or example.*"),
        ("a.test*", "wildcard must stand for a whole label: *.example.com or example.*"),
        ("*.", "wildcard must stand for a whole label: *.example.com or example.*"),
        (".*", "wildcard must stand for a whole label: *.example.com or example.*"),
        ("a.test.", "invalid value: a.test. (a server name has no trailing dot)"),
    ],
)
def test_a_name_no_client_could_ever_send_is_refused_where_kong_accepts_it(
    name: str, reason: str
) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        SNI(name, certificate=CERT_ID)
    assert errors(excinfo) == [(("name",), reason)]


def test_an_sni_certificate_reference_must_be_an_entity_or_a_uuid() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        SNI("a.test", certificate="not-a-uuid")
    assert errors(excinfo) == [(("certificate",), "expected a valid UUID")]


def test_an_sni_id_is_derived_from_its_name() -> None:
    assert SNI("a.test", certificate=CERT_ID).id == SNI("a.test", certificate=CERT_ID).id
    assert SNI("a.test", certificate=CERT_ID).id != SNI("b.test", certificate=CERT_ID).id


def test_an_sni_given_its_certificate_equals_one_given_its_id(pki: PKI) -> None:
    certificate = pki.a.entity()
    assert SNI("a.test", certificate=certificate) == SNI("a.test", certificate=certificate.id)


def test_a_certificate_given_inline_to_an_sni_is_listed_in_the_configuration(pki: PKI) -> None:
    certificate = pki.a.entity()
    gateway = gw.Gateway(snis=[SNI("a.test", certificate=certificate)])
    assert gateway.config.certificates == (certificate,)


def test_two_snis_with_the_same_name_are_refused(pki: PKI) -> None:
    a, b = pki.a.entity(), pki.b.entity()
    with pytest.raises(ConfigurationError) as excinfo:
        gw.Gateway(
            certificates=[a, b],
            snis=[SNI("a.test", certificate=a), SNI("A.test", certificate=b, id=CERT_ID)],
        )
    assert errors(excinfo) == [(("snis", 1, "name"), "UNIQUE violation detected on 'a.test'")]


def test_an_sni_naming_an_unknown_certificate_is_refused() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        gw.Gateway(snis=[SNI("a.test", certificate=CERT_ID)])
    assert errors(excinfo) == [
        (
            ("snis", 0, "certificate"),
            f"the foreign key '{CERT_ID}' does not reference an existing 'certificates' entity",
        )
    ]


# -- declarative configuration ------------------------------------------------------------


def doc(**sections: Any) -> dict[str, Any]:
    return {"_format_version": "3.0", **sections}


def test_a_certificates_nested_snis_load_as_snis_of_it(pki: PKI) -> None:
    config = load(
        doc(
            certificates=[
                {"cert": pki.a.cert, "key": pki.a.key, "snis": ["a.test", {"name": "*.a.test"}]}
            ]
        )
    )
    certificate = pki.a.entity()
    assert config.snis == (
        SNI("a.test", certificate=certificate.id),
        SNI("*.a.test", certificate=certificate.id),
    )


def test_top_level_snis_name_their_certificate_by_id(pki: PKI) -> None:
    certificate = {"id": CERT_ID, "cert": pki.a.cert, "key": pki.a.key}
    config = load(
        doc(
            certificates=[certificate],
            snis=[
                {"name": "a.test", "certificate": {"id": CERT_ID}, "tags": ["t"]},
                {"name": "b.test", "certificate": CERT_ID},
            ],
        )
    )
    assert [(s.name, s.certificate, s.tags) for s in config.snis] == [
        ("a.test", CERT_ID, ("t",)),
        ("b.test", CERT_ID, ()),
    ]


def test_snis_in_a_file_are_checked_where_they_are(pki: PKI) -> None:
    data = doc(
        certificates=[{"cert": pki.a.cert, "key": pki.a.key, "snis": ["a.test", "a.*.test"]}],
        snis=[{"name": "x.test"}, {"name": "y.test", "certificate": CERT_ID, "port": 1}],
    )
    with pytest.raises(ConfigurationError) as excinfo:
        load(data)
    assert errors(excinfo) == [
        (
            ("certificates", 0, "snis", 1, "name"),
            "wildcard must be leftmost or rightmost character",
        ),
        (("snis", 0, "certificate"), "required field missing"),
        (("snis", 1, "port"), "unknown field"),
    ]


def test_a_duplicate_name_in_a_file_is_reported_where_the_second_one_is(pki: PKI) -> None:
    nested = doc(
        certificates=[
            {"cert": pki.a.cert, "key": pki.a.key, "snis": ["a.test", "x.test"]},
            {"cert": pki.b.cert, "key": pki.b.key, "snis": ["b.test", "X.test"]},
        ]
    )
    with pytest.raises(ConfigurationError) as excinfo:
        gw.Gateway(config=load(nested))
    assert errors(excinfo) == [
        (("certificates", 1, "snis", 1, "name"), "UNIQUE violation detected on 'x.test'")
    ]
    top = doc(
        certificates=[{"id": CERT_ID, "cert": pki.a.cert, "key": pki.a.key, "snis": ["x.test"]}],
        snis=[
            {"name": "y.test", "certificate": CERT_ID},
            {"name": "x.test", "certificate": CERT_ID},
        ],
    )
    with pytest.raises(ConfigurationError) as excinfo:
        gw.Gateway(config=load(top))
    assert errors(excinfo) == [(("snis", 1, "name"), "UNIQUE violation detected on 'x.test'")]


def test_a_top_level_sni_with_an_unknown_certificate_is_reported_at_its_own_index(
    pki: PKI,
) -> None:
    data = doc(
        certificates=[{"cert": pki.a.cert, "key": pki.a.key, "snis": ["x.test", "y.test"]}],
        snis=[{"name": "z.test", "certificate": CERT_ID}],
    )
    with pytest.raises(ConfigurationError) as excinfo:
        gw.Gateway(config=load(data))
    assert [path for path, _ in errors(excinfo)] == [("snis", 0, "certificate")]


def test_snis_given_in_code_are_reported_in_the_callers_order(pki: PKI) -> None:
    a = pki.a.entity()
    with pytest.raises(ConfigurationError) as excinfo:
        gw.Gateway(
            certificates=[a],
            snis=[SNI("u.test", certificate=CERT_ID), SNI("a.test", certificate=a)],
        )
    assert [path for path, _ in errors(excinfo)] == [("snis", 0, "certificate")]


def test_an_alternate_pair_of_the_other_key_type_is_accepted(pki: PKI) -> None:
    data = doc(
        certificates=[
            {"cert": pki.a_rsa.cert, "key": pki.a_rsa.key, "cert_alt": pki.a.cert,
             "key_alt": pki.a.key, "snis": ["a.test"]}
        ]
    )  # fmt: skip
    [certificate] = load(data).certificates
    assert (certificate.cert_alt, certificate.key_alt) == (pki.a.cert, pki.a.key)
    assert certificate.id == Certificate(cert=pki.a_rsa.cert, key=pki.a_rsa.key).id
    assert load(dump(load(data))) == load(data)


@pytest.mark.parametrize(
    ("alt", "path", "reason"),
    [
        ({"cert_alt": "b"}, (), "all or none of these fields must be set: 'cert_alt', 'key_alt'"),
        (
            {"cert_alt": "b", "key_alt": "b"},
            (),
            "certificate and alternative certificate need to have different type (e.g. RSA "
            "and ECDSA), the provided certificates were both of the same type",
        ),
        ({"cert_alt": "rsa", "key_alt": "b"}, (), "alternative certificate does not match key"),
        ({"cert_alt": "nonsense", "key_alt": "b"}, ("cert_alt",), "invalid certificate: "),
    ],
)
def test_an_alternate_pair_follows_kongs_rules(
    pki: PKI, alt: dict[str, str], path: tuple[str, ...], reason: str
) -> None:
    pem = {"b": (pki.b.cert, pki.b.key), "rsa": (pki.a_rsa.cert, pki.a_rsa.key)}
    fields = {
        name: "-----BEGIN CERTIFICATE-----\nzz\n"
        if which == "nonsense"
        else pem[which][name == "key_alt"]
        for name, which in alt.items()
    }
    with pytest.raises(ConfigurationError) as excinfo:
        Certificate(cert=pki.a.cert, key=pki.a.key, **fields)
    [(where, why)] = errors(excinfo)
    assert where == path
    assert why.startswith(reason)


def edwards(kind: str) -> tuple[str, str]:
    """A self-signed certificate and key (PEM) of an Ed25519 or Ed448 key."""
    from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

    key = (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else ed448.Ed448PrivateKey.generate()
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kind)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, None)
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), pem_key.decode()


def test_key_types_are_told_apart_by_their_public_key_algorithm_as_kong_does(pki: PKI) -> None:
    ed25519, ed448, other_ed25519 = edwards("ed25519"), edwards("ed448"), edwards("ed25519")
    # An ECDSA certificate signed by an RSA CA is ECDSA; Ed25519 and Ed448 are two types.
    rsa_ca = issue("rsa CA", rsa_key=True)
    ecdsa_by_rsa = issue("a.test", by=rsa_ca, dns=("a.test",))
    Certificate(cert=ecdsa_by_rsa.cert, key=ecdsa_by_rsa.key, cert_alt=pki.a_rsa.cert,
                key_alt=pki.a_rsa.key)  # fmt: skip
    Certificate(cert=ed25519[0], key=ed25519[1], cert_alt=ed448[0], key_alt=ed448[1])
    with pytest.raises(ConfigurationError, match="both of the same type"):
        Certificate(cert=ed25519[0], key=ed25519[1], cert_alt=other_ed25519[0],
                    key_alt=other_ed25519[1])  # fmt: skip
    with pytest.raises(ConfigurationError, match="both of the same type"):
        Certificate(cert=ecdsa_by_rsa.cert, key=ecdsa_by_rsa.key, cert_alt=pki.b.cert,
                    key_alt=pki.b.key)  # fmt: skip


def test_a_configuration_with_snis_survives_a_round_trip(pki: PKI) -> None:
    a, b = pki.a.entity(), pki.b.entity()
    config = Configuration(
        certificates=(a, b),
        # Interleaved on purpose: a dump nests them under their certificates, and the
        # configuration loaded back is equal, its SNIs in that other order.
        snis=(
            SNI("*.b.test", certificate=b),
            SNI("a.test", certificate=a.id, tags=("x",)),
            SNI("b.*", certificate=b.id),
        ),
    )
    dumped = dump(config)
    assert "snis" not in dumped  # nested under their certificates, as Kong writes them
    assert [[s["name"] for s in c["snis"]] for c in dumped["certificates"]] == [
        ["a.test"],
        ["*.b.test", "b.*"],
    ]
    again = load(json.loads(json.dumps(dumped)))
    assert again == config
    assert sorted(s.id for s in again.snis) == sorted(s.id for s in config.snis)
    assert [s.name for s in again.snis] == ["a.test", "*.b.test", "b.*"]
    assert gw.Gateway(**attrs.asdict(config, recurse=False)).config == config


# -- the Admin API ------------------------------------------------------------------------


@pytest.fixture
async def admin() -> AsyncIterator[tuple[httpx.AsyncClient, gw.Gateway]]:
    gateway = gw.Gateway()
    app = AdminAPI(gateway, MemoryConfigStore())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as http:
        yield http, gateway


async def post(http: httpx.AsyncClient, path: str, **body: Any) -> dict[str, Any]:
    response = await http.post(path, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def names(gateway: gw.Gateway) -> set[tuple[str, str | None]]:
    """(SNI name, certificate id) of every SNI the gateway runs with."""
    return {
        (s.name, s.certificate if isinstance(s.certificate, str) else s.certificate.id)
        for s in gateway.config.snis
    }


async def test_snis_are_created_listed_read_changed_and_deleted(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    http, gateway = admin
    cert = await post(http, "/certificates", cert=pki.a.cert, key=pki.a.key)
    sni = await post(http, "/snis", name="a.test", certificate={"id": cert["id"]}, tags=["t"])
    assert sni == {
        "id": sni["id"],
        "name": "a.test",
        "certificate": {"id": cert["id"]},
        "tags": ["t"],
        "created_at": sni["created_at"],
        "updated_at": sni["updated_at"],
    }
    assert names(gateway) == {("a.test", cert["id"])}
    listed = (await http.get("/snis")).json()
    assert [s["name"] for s in listed["data"]] == ["a.test"]
    assert (await http.get("/snis/a.test")).json()["id"] == sni["id"]
    assert (await http.get(f"/snis/{sni['id']}/certificate")).json()["id"] == cert["id"]
    assert (await http.get(f"/certificates/{cert['id']}")).json()["snis"] == ["a.test"]

    changed = await http.patch("/snis/a.test", json={"name": "*.a.test"})
    assert changed.status_code == 200, changed.text
    assert names(gateway) == {("*.a.test", cert["id"])}
    assert (await http.delete("/snis/*.a.test")).status_code == 204
    assert names(gateway) == set()
    assert (await http.get("/snis")).json()["data"] == []


async def test_a_duplicate_sni_name_is_a_409(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    http, _ = admin
    cert = await post(http, "/certificates", cert=pki.a.cert, key=pki.a.key)
    await post(http, "/snis", name="a.test", certificate={"id": cert["id"]})
    again = await http.post("/snis", json={"name": "a.test", "certificate": cert["id"]})
    assert again.status_code == 409
    assert again.json()["message"] == "UNIQUE violation detected on '{name=\"a.test\"}'"


async def test_an_invalid_sni_or_unknown_certificate_is_a_400_naming_the_field(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    http, _ = admin
    cert = await post(http, "/certificates", cert=pki.a.cert, key=pki.a.key)
    bad = await http.post("/snis", json={"name": "a.*.test", "certificate": cert["id"]})
    assert bad.status_code == 400
    assert bad.json()["fields"] == {"name": "wildcard must be leftmost or rightmost character"}
    unknown = await http.post("/snis", json={"name": "a.test", "certificate": {"id": CERT_ID}})
    assert unknown.status_code == 400
    assert unknown.json()["code"] == 4  # foreign key violation


async def test_snis_are_created_under_their_certificate(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    http, gateway = admin
    a = await post(http, "/certificates", cert=pki.a.cert, key=pki.a.key)
    b = await post(http, "/certificates", cert=pki.b.cert, key=pki.b.key)
    sni = await post(http, f"/certificates/{a['id']}/snis", name="a.test")
    assert sni["certificate"] == {"id": a["id"]}
    await post(http, f"/certificates/{b['id']}/snis", name="*.b.test")
    under_a = (await http.get(f"/certificates/{a['id']}/snis")).json()["data"]
    assert [s["name"] for s in under_a] == ["a.test"]
    assert (await http.get(f"/certificates/{b['id']}/snis/a.test")).status_code == 404
    assert names(gateway) == {("a.test", a["id"]), ("*.b.test", b["id"])}


async def test_a_certificates_snis_shorthand_creates_replaces_and_keeps_its_snis(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    http, gateway = admin
    cert = await post(http, "/certificates", cert=pki.a.cert, key=pki.a.key, snis=["a.test", "x.*"])
    assert cert["snis"] == ["a.test", "x.*"]
    assert names(gateway) == {("a.test", cert["id"]), ("x.*", cert["id"])}
    kept = (await http.get("/snis/a.test")).json()["id"]

    patched = await http.patch(f"/certificates/{cert['id']}", json={"snis": ["a.test", "y.test"]})
    assert patched.status_code == 200, patched.text
    assert patched.json()["snis"] == ["a.test", "y.test"]
    assert (await http.get("/snis/a.test")).json()["id"] == kept  # unchanged, not replaced
    assert (await http.get("/snis/x.*")).status_code == 404

    tagged = await http.patch(f"/certificates/{cert['id']}", json={"tags": ["t"]})
    assert tagged.json()["snis"] == ["a.test", "y.test"]  # not given: left as they are
    listed = (await http.get("/certificates")).json()["data"]
    assert [c["snis"] for c in listed] == [["a.test", "y.test"]]
    assert names(gateway) == {("a.test", cert["id"]), ("y.test", cert["id"])}


async def test_the_snis_shorthand_refuses_names_taken_or_repeated_with_kongs_messages(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    http, gateway = admin
    a = await post(http, "/certificates", cert=pki.a.cert, key=pki.a.key, snis=["a.test"])
    taken = await http.post("/certificates", json={"cert": pki.b.cert, "key": pki.b.key,
                                                   "snis": ["a.test"]})  # fmt: skip
    assert taken.status_code == 400
    assert taken.json()["fields"] == {
        "snis": f"a.test already associated with existing certificate '{a['id']}'"
    }
    bad = await http.post(
        "/certificates",
        json={"cert": pki.b.cert, "key": pki.b.key, "snis": ["b.test", "q.test", "B.test"]},
    )
    assert bad.status_code == 400
    assert bad.json()["message"] == "schema violation (snis: B.test is duplicated)"
    assert len((await http.get("/certificates")).json()["data"]) == 1
    assert names(gateway) == {("a.test", a["id"])}


async def test_a_certificate_may_be_named_by_one_of_its_snis(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    http, gateway = admin
    cert = await post(http, "/certificates", cert=pki.a.cert, key=pki.a.key, snis=["a.test"])
    assert (await http.get("/certificates/a.test")).json()["id"] == cert["id"]
    under = (await http.get("/certificates/a.test/snis")).json()["data"]
    assert [s["name"] for s in under] == ["a.test"]
    assert (await http.get("/certificates/nothing.test")).status_code == 404

    created = await http.put(
        "/certificates/b.example",
        json={"cert": pki.b.cert, "key": pki.b.key, "snis": ["w.b.test"]},
    )
    assert created.status_code == 200, created.text
    assert created.json()["snis"] == ["b.example", "w.b.test"]  # the URL's name added
    assert created.json()["id"] != cert["id"]
    assert names(gateway) == {
        ("a.test", cert["id"]),
        ("b.example", created.json()["id"]),
        ("w.b.test", created.json()["id"]),
    }


async def test_patching_a_certificates_snis_to_null_deletes_them_all(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    http, gateway = admin
    a = await post(http, "/certificates", cert=pki.a.cert, key=pki.a.key, snis=["a.test", "z.test"])
    b = await post(http, "/certificates", cert=pki.b.cert, key=pki.b.key, snis=["b.test"])
    patched = await http.patch(f"/certificates/{a['id']}", json={"snis": None})
    assert patched.status_code == 200, patched.text
    assert patched.json()["snis"] == []
    assert names(gateway) == {("b.test", b["id"])}


async def test_putting_a_certificate_by_id_without_snis_leaves_it_none(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    # Kong's "upserts if found": `snis` not given on PUT is `snis: null`.
    http, gateway = admin
    a = await post(http, "/certificates", cert=pki.a.cert, key=pki.a.key, snis=["a.test"])
    put = await http.put(f"/certificates/{a['id']}", json={"cert": pki.c.cert, "key": pki.c.key})
    assert put.status_code == 200, put.text
    assert put.json()["snis"] == []
    assert names(gateway) == set()


async def test_putting_a_certificate_by_one_of_its_sni_names_keeps_that_name(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    http, gateway = admin
    a = await post(http, "/certificates", cert=pki.a.cert, key=pki.a.key, snis=["a.test", "z.test"])
    body = {"cert": pki.a.cert, "key": pki.a.key, "snis": ["y.test"]}
    put = await http.put("/certificates/a.test", json=body)
    assert put.status_code == 200, put.text
    assert put.json()["id"] == a["id"]
    assert put.json()["snis"] == ["a.test", "y.test"]
    assert names(gateway) == {("a.test", a["id"]), ("y.test", a["id"])}
    body["snis"] = ["a.test", "y.test"]  # named in the body too: listed once
    assert (await http.put("/certificates/a.test", json=body)).json()["snis"] == [
        "a.test",
        "y.test",
    ]


async def test_sni_names_are_unique_whatever_their_case(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    http, gateway = admin
    a = await post(http, "/certificates", cert=pki.a.cert, key=pki.a.key, snis=["y.test"])
    b = await post(http, "/certificates", cert=pki.b.cert, key=pki.b.key)
    taken = await http.post("/snis", json={"name": "Y.test", "certificate": {"id": b["id"]}})
    assert taken.status_code == 409
    assert taken.json()["name"] == "unique constraint violation"
    shorthand = await http.patch(f"/certificates/{b['id']}", json={"snis": ["Y.TEST"]})
    assert shorthand.status_code == 400
    assert shorthand.json()["fields"] == {
        "snis": f"Y.TEST already associated with existing certificate '{a['id']}'"
    }
    renamed = await http.patch(f"/certificates/{a['id']}", json={"snis": ["Y.test"]})
    assert renamed.json()["snis"] == ["Y.test"]  # its own name, in another case
    assert names(gateway) == {("Y.test", a["id"])}


async def test_the_certificates_schema_lists_the_snis_shorthand(
    admin: tuple[httpx.AsyncClient, gw.Gateway],
) -> None:
    http, _ = admin
    fields = (await http.get("/schemas/certificates")).json()["fields"]
    assert {"snis": {"type": "array", "elements": {"type": "string"}}} in fields


async def test_deleting_a_certificate_deletes_its_snis(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    http, gateway = admin
    a = await post(http, "/certificates", cert=pki.a.cert, key=pki.a.key, snis=["a.test"])
    b = await post(http, "/certificates", cert=pki.b.cert, key=pki.b.key, snis=["*.b.test"])
    assert (await http.delete(f"/certificates/{a['id']}")).status_code == 204
    assert [s["name"] for s in (await http.get("/snis")).json()["data"]] == ["*.b.test"]
    assert names(gateway) == {("*.b.test", b["id"])}


async def test_a_declarative_config_with_snis_posted_to_the_admin_api_is_run(
    admin: tuple[httpx.AsyncClient, gw.Gateway], pki: PKI
) -> None:
    http, gateway = admin
    document = doc(certificates=[{"cert": pki.a.cert, "key": pki.a.key, "snis": ["a.test"]}])
    response = await http.post("/config", json={"config": json.dumps(document)})
    assert response.status_code == 201, response.text
    [certificate] = response.json()["certificates"]
    assert certificate["snis"] == ["a.test"]
    assert names(gateway) == {("a.test", certificate["id"])}
    exported = (await http.get("/config", headers={"accept": "application/json"})).json()
    assert exported["config"]["certificates"][0]["snis"][0]["name"] == "a.test"


async def test_the_openapi_document_describes_snis(
    admin: tuple[httpx.AsyncClient, gw.Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bundled plugins only: not those other tests (the docs' examples) registered.
    bundled = {k: v for k, v in _registry.available().items() if v.__module__[:10] == "pygateway."}
    monkeypatch.setattr(_registry, "_REGISTRY", bundled)
    http, _ = admin
    document = (await http.get("/openapi.json")).json()
    for path in ("/snis", "/snis/{sni}", "/certificates/{certificate}/snis"):
        assert path in document["paths"], path
    certificate = document["components"]["schemas"]["certificates"]["properties"]
    assert certificate["snis"]["items"] == {"type": "string"}


# -- choosing the certificate at the handshake (in memory, no sockets) ---------------------


def handshake(
    server: ssl.SSLContext, name: str | None, ca: Issued, *, ciphers: str | None = None
) -> str:
    """A TLS handshake between `server` and a client trusting `ca` asking for `name`, over
    memory buffers; the common name of the certificate the client got. Raises the
    client's SSLError when the handshake fails. `ciphers`: the client offers only those
    (in TLS 1.2)."""
    client = ssl.create_default_context(cadata=ca.cert)
    client.check_hostname = False
    if ciphers is not None:
        client.maximum_version = ssl.TLSVersion.TLSv1_2
        client.set_ciphers(ciphers)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_hostname=name)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    server_done = False
    for _ in range(10):
        try:
            client_side.do_handshake()
        except ssl.SSLWantReadError:
            pass
        else:
            break
        finally:
            s_in.write(c_out.read())
        if not server_done:
            try:
                server_side.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                server_done = True  # its alert goes to the client, which raises
            finally:
                c_in.write(s_out.read())
    peer = client_side.getpeercert()
    assert peer is not None
    subject = dict(item for rdn in peer["subject"] for item in rdn)
    return str(subject["commonName"])


def sni_configuration(pki: PKI, *extra: tuple[str, Issued]) -> Configuration:
    a, b = pki.a.entity(), pki.b.entity()
    snis = [SNI("a.test", certificate=a), SNI("*.b.test", certificate=b)]
    snis += [SNI("b.*", certificate=b), *(SNI(n, certificate=i.entity()) for n, i in extra)]
    return Configuration(certificates=(a, b), snis=tuple(snis))


def test_the_certificate_is_chosen_exact_then_prefix_then_suffix_wildcard(pki: PKI) -> None:
    config = sni_configuration(pki, ("x.b.test", pki.c), ("c.b.*", pki.a))
    server = ServerCertificates(lambda: config, default=(pki.fallback.cert, pki.fallback.key))
    context = server.context()
    assert handshake(context, "a.test", pki.ca) == "a.test"
    assert handshake(context, "A.Test", pki.ca) == "a.test"  # names are not case-sensitive
    assert handshake(context, "x.b.test", pki.ca) == "c.test"  # exact beats `*.b.test`
    assert handshake(context, "y.b.test", pki.ca) == "b.test"
    assert handshake(context, "c.b.test", pki.ca) == "b.test"  # `*.b.test` beats `c.b.*`
    assert handshake(context, "c.b.org", pki.ca) == "a.test"  # `c.b.*`
    assert handshake(context, "b.example", pki.ca) == "b.test"  # `b.*`
    assert handshake(context, "y.x.b.test", pki.ca) == "fallback"  # `*.` is one label
    assert handshake(context, "other.test", pki.ca) == "fallback"
    assert handshake(context, None, pki.ca) == "fallback"


def test_without_a_default_certificate_an_unknown_name_is_refused(pki: PKI) -> None:
    config = sni_configuration(pki)
    context = ServerCertificates(lambda: config).context()
    assert handshake(context, "a.test", pki.ca) == "a.test"
    for name in ("other.test", None):
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            handshake(context, name, pki.ca)


def test_a_client_gets_the_pair_of_the_key_type_it_supports(pki: PKI) -> None:
    both = Certificate(cert=pki.a_rsa.cert, key=pki.a_rsa.key, cert_alt=pki.a.cert,
                       key_alt=pki.a.key)  # fmt: skip
    config = Configuration(snis=(SNI("a.test", certificate=both),))
    context = ServerCertificates(lambda: config).context()
    rsa_only, ecdsa_only = "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert handshake(context, "a.test", pki.ca, ciphers=rsa_only) == "a.test rsa"
    assert handshake(context, "a.test", pki.ca, ciphers=ecdsa_only) == "a.test"


def test_a_new_configuration_is_served_from_the_next_handshake_reusing_contexts(
    pki: PKI,
) -> None:
    configs = [sni_configuration(pki)]
    server = ServerCertificates(lambda: configs[-1])
    context = server.context()
    assert handshake(context, "a.test", pki.ca) == "a.test"
    before = server.select("a.test")
    configs.append(sni_configuration(pki, ("c.test", pki.c)))
    assert handshake(context, "c.test", pki.ca) == "c.test"
    assert server.select("a.test") is before  # the same certificate: its context is kept
    configs.append(Configuration())
    assert server.select("a.test") is None


def test_the_catch_all_sni_serves_names_nothing_else_matches_before_the_default(
    pki: PKI,
) -> None:
    a = pki.a.entity()
    catch_all = pki.c.entity()
    config = Configuration(snis=(SNI("a.test", certificate=a), SNI("*", certificate=catch_all)))
    default = (pki.fallback.cert, pki.fallback.key)
    context = ServerCertificates(lambda: config, default=default).context()
    assert handshake(context, "a.test", pki.ca) == "a.test"
    assert handshake(context, "other.test", pki.ca) == "c.test"
    assert handshake(context, None, pki.ca) == "fallback"  # no name: Kong's default
    without_default = ServerCertificates(lambda: config).context()
    assert handshake(without_default, None, pki.ca) == "c.test"


def test_a_prefix_wildcard_stands_for_a_label_of_a_name_of_three_labels_or_more(
    pki: PKI,
) -> None:
    config = Configuration(
        snis=(
            SNI("*.test", certificate=pki.a.entity()),
            SNI("*.c.test", certificate=pki.c.entity()),
        )
    )
    server = ServerCertificates(lambda: config)
    assert server.select("example.test") is None  # as Kong: `*.test` is never tried
    assert server.select("x.c.test") is not None
    assert server.select("c.test") is None


class Counting:
    """Wraps a function, keeping the arguments of each call."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.wrapped(*args)


def many_certificates(pki: PKI, count: int) -> tuple[list[Certificate], list[SNI]]:
    """`count` distinct certificate entities (ids differ; the same pair, cheap to make)."""
    certificates = [
        Certificate(cert=pki.a.cert, key=pki.a.key, id=f"00000000-0000-4000-8000-{i:012d}")
        for i in range(count)
    ]
    return certificates, [SNI(f"h{i}.test", certificate=c) for i, c in enumerate(certificates)]


def test_a_certificates_context_is_built_when_a_handshake_first_selects_it(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pygateway._tls as tls

    loads = Counting(tls.load_cert_chain)
    monkeypatch.setattr(tls, "load_cert_chain", loads)
    certificates, snis = many_certificates(pki, 50)
    configs = [Configuration(certificates=certificates, snis=snis)]
    server = ServerCertificates(lambda: configs[-1])
    context = server.context()
    assert loads.calls == []  # none built before a handshake needs one
    assert handshake(context, "h7.test", pki.ca) == "a.test"
    assert len(loads.calls) == 1
    assert handshake(context, "h7.test", pki.ca) == "a.test"
    assert len(loads.calls) == 1  # kept


def test_a_reconfiguration_keeps_contexts_and_digests_of_the_same_certificates(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pygateway._tls as tls

    digests = Counting(tls._digest)
    monkeypatch.setattr(tls, "_digest", digests)
    certificates, snis = many_certificates(pki, 20)
    configs = [Configuration(certificates=certificates, snis=snis)]
    server = ServerCertificates(lambda: configs[-1])
    context = server.context()
    assert handshake(context, "h1.test", pki.ca) == "a.test"
    kept = server.select("h1.test")
    assert len(digests.calls) == 20
    configs.append(Configuration(certificates=certificates, snis=snis[1:]))
    assert server.select("h1.test") is kept
    assert len(digests.calls) == 20  # the same Certificate objects: not digested again
    changed = attrs.evolve(certificates[1], cert=pki.c.cert, key=pki.c.key)
    configs.append(Configuration(snis=(SNI("h1.test", certificate=changed),)))
    assert handshake(context, "h1.test", pki.ca) == "c.test"  # same id, new pair
    assert server.select("h1.test") is not kept


def test_a_certificate_that_cannot_be_loaded_fails_its_handshakes_only_logged_once(
    pki: PKI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import pygateway._tls as tls

    def load(context: ssl.SSLContext, cert: str, key: str) -> None:
        if cert == pki.c.cert:
            raise ssl.SSLError("simulated: cannot load")
        real(context, cert, key)

    real = tls.load_cert_chain
    loads = Counting(load)
    monkeypatch.setattr(tls, "load_cert_chain", loads)
    config = sni_configuration(pki, ("c.test", pki.c), ("c2.test", pki.c))
    context = ServerCertificates(lambda: config).context()
    for name in ("c.test", "c2.test", "c.test"):
        with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
            handshake(context, name, pki.ca)
    assert handshake(context, "a.test", pki.ca) == "a.test"
    assert [args[1] for args in loads.calls].count(pki.c.cert) == 1  # not retried
    failures = [r for r in caplog.records if r.name == "pygateway.tls"]
    assert len(failures) == 1
    assert "cannot be loaded" in failures[0].getMessage()


def test_a_configuration_source_that_raises_fails_the_handshake_with_one_log_line(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    def source() -> Configuration:
        raise RuntimeError("store gone")

    context = ServerCertificates(source, default=(pki.fallback.cert, pki.fallback.key)).context()
    for _ in range(2):
        with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
            handshake(context, "a.test", pki.ca)
    assert [r.name for r in caplog.records if r.levelname == "ERROR"] == ["pygateway.tls"]


# -- `pygateway run`, served to the real curl ----------------------------------------------

CURL = shutil.which("curl")


@pytest.fixture
def files(pki: PKI, tmp_path: Path) -> Path:
    (tmp_path / "ca.pem").write_text(pki.ca.cert)
    document = doc(
        certificates=[
            {"cert": pki.a.cert, "key": pki.a.key, "snis": ["a.test"]},
            {"cert": pki.b.cert, "key": pki.b.key, "snis": ["*.b.test"]},
        ]
    )
    (tmp_path / "kong.json").write_text(json.dumps(document))
    return tmp_path


def curl_https(port: int, name: str, ca: Path) -> subprocess.CompletedProcess[str]:
    """curl -v https://name:port/, resolved to 127.0.0.1, trusting `ca`."""
    if CURL is None:
        pytest.skip("the curl binary is not installed")
    return subprocess.run(
        [CURL, "-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}",
         "--resolve", f"{name}:{port}:127.0.0.1", "--cacert", str(ca), f"https://{name}:{port}/"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def served(port: int, name: str, ca: Path) -> tuple[int, str]:
    """The status curl got from https://name:port/, and the subject of the certificate it
    verified."""
    done = curl_https(port, name, ca)
    assert done.returncode == 0, done.stderr
    subject = re.search(r"subject: (.*)", done.stderr)
    assert subject is not None, done.stderr
    return int(done.stdout), subject.group(1).strip()


@pytest.mark.servers
def test_pygateway_run_serves_each_sni_its_certificate_and_new_ones_without_restart(
    files: Path, pki: PKI
) -> None:
    port, admin_port = free_port(), free_port()
    argv = [PYTHON, "-m", "pygateway", "run", str(files / "kong.json"), "--port", str(port)]
    argv += ["--admin-port", str(admin_port), "--log-level", "warning"]
    with ServerProcess(argv, port) as server:
        deadline = time.monotonic() + 20
        while not port_accepts(admin_port):
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        ca = files / "ca.pem"
        assert served(port, "a.test", ca) == (404, "CN=a.test")  # no route: Kong's 404
        assert served(port, "x.b.test", ca) == (404, "CN=b.test")
        assert curl_https(port, "c.test", ca).returncode == 35  # no such SNI, no default

        created = httpx.post(
            f"http://127.0.0.1:{admin_port}/certificates",
            json={"cert": pki.c.cert, "key": pki.c.key, "snis": ["c.test"]},
        )
        assert created.status_code == 201, created.text
        assert served(port, "c.test", ca) == (404, "CN=c.test")
        assert served(port, "a.test", ca) == (404, "CN=a.test")


@pytest.mark.servers
def test_pygateway_run_serves_the_ssl_certfile_to_names_without_an_sni(
    files: Path, pki: PKI
) -> None:
    (files / "fallback.crt").write_text(pki.fallback.cert)
    (files / "fallback.key").write_text(pki.fallback.key)
    port = free_port()
    argv = [PYTHON, "-m", "pygateway", "run", str(files / "kong.json"), "--port", str(port)]
    argv += ["--ssl-certfile", str(files / "fallback.crt")]
    argv += ["--ssl-keyfile", str(files / "fallback.key"), "--log-level", "warning"]
    with ServerProcess(argv, port):
        assert served(port, "localhost", files / "ca.pem") == (404, "CN=fallback")
        assert served(port, "a.test", files / "ca.pem") == (404, "CN=a.test")


def run_until_serving(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> tuple[int, dict[str, Any] | None]:
    """`pygateway run ARGV` up to where it would start serving: its exit status and the
    TLS options it would serve with."""
    from pygateway import _cli

    served: dict[str, Any] = {}
    for name in ("PYGATEWAY_CONFIG", "PYGATEWAY_TRUSTED_IPS", "PYGATEWAY_STORE"):
        monkeypatch.setenv(name, "")  # `main` sets them: restored after the test
        monkeypatch.delenv(name)

    def serve(*args: Any) -> int:
        served["ssl"] = args[-1]
        return 0

    monkeypatch.setattr(_cli, "_serve", serve)
    return _cli.main(["run", *argv]), served.get("ssl")


def test_pygateway_run_warns_that_plain_http_with_an_admin_api_serves_no_later_sni(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "kong.json").write_text(json.dumps(doc()))
    argv = [str(tmp_path / "kong.json"), "--port", str(free_port())]
    status, ssl_options = run_until_serving(monkeypatch, [*argv, "--admin-port", str(free_port())])
    assert (status, ssl_options) == (0, None)
    assert "warning: serving plain HTTP" in capsys.readouterr().err
    run_until_serving(monkeypatch, argv)  # no Admin API, no store: nothing to say
    assert "warning" not in capsys.readouterr().err


def test_pygateway_run_warns_when_its_uvicorn_cannot_serve_snis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], files: Path, pki: PKI
) -> None:
    from pygateway import _cli

    (files / "default.pem").write_text(pki.fallback.cert + pki.fallback.key)
    monkeypatch.setattr(_cli, "_sni_capable", lambda: False)
    argv = [str(files / "kong.json"), "--port", str(free_port())]
    status, ssl_options = run_until_serving(
        monkeypatch, [*argv, "--ssl-certfile", str(files / "default.pem"), "--ssl-keyfile",
                      str(files / "default.pem")]
    )  # fmt: skip
    assert status == 0
    assert ssl_options is not None
    assert "ssl_context_factory" not in ssl_options
    assert "SNIs of the configuration are ignored" in capsys.readouterr().err
