"""The Admin API's OpenAPI document, and schemathesis driving the API from it.

Schemathesis reads the document from `GET /openapi.json` of an in-process AdminAPI, then
sends every operation generated requests (valid bodies and invalid ones, JSON and form
encoded), checking that none is answered with a server error, and that every answer has a
status code, a media type and a body the document lists for it. Once with path parameters
generated, once with them naming seeded entities (so that reads and changes find them).
"""

from __future__ import annotations

from typing import Any

import httpx
import hypothesis
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import pygateway as gw
from pygateway.admin import AdminAPI
from pygateway.testing import echo_engine

_SEEDED = {
    "_format_version": "3.0",
    "services": [
        {
            "name": "orders",
            "url": "http://orders.internal",
            "routes": [{"name": "orders-route", "paths": ["/orders"]}],
            "plugins": [
                {"name": "rate-limiting", "instance_name": "orders-limit", "config": {"minute": 5}}
            ],
        }
    ],
    "consumers": [{"username": "shop", "keyauth_credentials": [{"key": "s3cret"}]}],
    "upstreams": [{"name": "backend", "targets": [{"target": "10.0.0.1:80"}]}],
}


#: Path parameters naming the entities `_SEEDED` creates.
_NAMES = {
    "service": "orders",
    "route": "orders-route",
    "plugin": "orders-limit",
    "consumer": "shop",
    "keyauth_credential": "s3cret",
    "upstream": "backend",
    "target": "10.0.0.1:80",
}


def _schema(max_examples: int, parameters: dict[str, str] | None = None) -> Any:
    """The document as schemathesis loads it from a new seeded API, shared by the run of one
    test: what a generated request creates, later ones find. Deterministic, and bounded
    in size. (Loaded at import: schemathesis' lazy `from_fixture` fails on pytest 9.)"""
    admin = AdminAPI(gw.Gateway.from_config(_SEEDED, engine=echo_engine()))
    schema = schemathesis.openapi.from_asgi("/openapi.json", admin)
    schema.config.generation.update(max_examples=max_examples, deterministic=True, database="none")
    schema.config.phases.update(phases=["examples", "fuzzing"])
    if parameters:
        schema.config.update(parameters=parameters)
    return schema


#: Path parameters generated: mostly names of nothing (404s, and PUTs creating entities).
FUZZED = _schema(max_examples=6)
#: Path parameters fixed to the seeded entities: reads, changes and deletes that find them.
NAMED = _schema(max_examples=4, parameters=_NAMES)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


async def test_the_document_is_served_at_openapi_json_and_describes_every_collection() -> None:
    transport = httpx.ASGITransport(app=AdminAPI(gw.Gateway(engine=echo_engine())))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as api:
        response = await api.get("/openapi.json")
        assert (await api.post("/openapi.json")).status_code == 405
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    for collection in ("/services", "/routes", "/consumers", "/plugins", "/upstreams"):
        assert {"get", "post"} <= set(paths[collection])
    assert set(paths["/services/{service}"]) == {"get", "put", "patch", "delete"}
    assert "/services/{service}/routes/{route}" in paths
    assert "/consumers/{consumer}/key-auth" in paths
    assert "/upstreams/{upstream}/targets/{target}/healthy" in paths
    error = document["components"]["schemas"]["Error"]
    assert {"message", "code", "name", "fields"} <= set(error["properties"])


def test_the_document_is_valid_openapi() -> None:
    FUZZED.validate()  # against the OpenAPI 3.1 meta-schema; raises when invalid


async def test_a_token_protected_api_documents_its_security_schemes() -> None:
    admin = AdminAPI(gw.Gateway(engine=echo_engine()), token="t0ken")
    transport = httpx.ASGITransport(app=admin)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as api:
        response = await api.get("/openapi.json", headers={"Kong-Admin-Token": "t0ken"})
    assert response.json()["security"] == [{"token": []}, {"bearer": []}]


def test_entity_bodies_are_typed_from_the_entity_fields() -> None:
    schemas = FUZZED.raw_schema["components"]["schemas"]
    service = schemas["services"]["properties"]
    assert service["retries"] == {"type": "integer", "default": 5}
    assert service["protocol"]["enum"] == ["http", "https"]
    assert schemas["upstreams"]["required"] == ["name"]
    assert "minute" in schemas["plugin-config.rate-limiting"]["properties"]


_SETTINGS = hypothesis.settings(
    deadline=None, suppress_health_check=list(hypothesis.HealthCheck), print_blob=False
)


@FUZZED.parametrize()
@_SETTINGS
def test_no_generated_request_makes_the_admin_api_fail(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


@NAMED.parametrize()
@_SETTINGS
def test_no_generated_request_on_existing_entities_makes_the_admin_api_fail(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)
