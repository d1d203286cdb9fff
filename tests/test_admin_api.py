"""The Admin API (pygateway.admin.AdminAPI): Kong's endpoints, bodies, errors and paging,
driven in-process with httpx, and the gateway proxying what was configured through it."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any
from unittest.mock import ANY

import httpx
import pytest
from upstreams import call_asgi, serve_asgi

import pygateway as gw
from pygateway._config import load
from pygateway.admin import AdminAPI, FollowingGateway
from pygateway.admin._model import configuration, documents
from pygateway.stores import MemoryCounterStore, StoreError, use_counter_store
from pygateway.stores._config_store import Change, MemoryConfigStore, StoredConfig
from pygateway.testing import client, echo_engine

SERVICE_ID = "9c1b3a44-5a0c-4e4b-8c1e-1f7e2b6a0c01"


def new_gateway(**entities: Any) -> gw.Gateway:
    """A gateway on the echo upstream; rate limits count on a clock that stands still (at
    20 s into a minute), so no window ends during a test."""
    gateway = gw.Gateway(engine=echo_engine(), **entities)
    use_counter_store(gateway, MemoryCounterStore(clock=lambda: 1_773_144_020.0))
    return gateway


@pytest.fixture
def gateway() -> gw.Gateway:
    return new_gateway()


@pytest.fixture
def store() -> MemoryConfigStore:
    return MemoryConfigStore()


@pytest.fixture
async def admin(gateway: gw.Gateway, store: MemoryConfigStore) -> AsyncIterator[httpx.AsyncClient]:
    app = AdminAPI(gateway, store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as http:
        yield http


async def proxy(gateway: gw.Gateway, path: str, **kwargs: Any) -> httpx.Response:
    async with client(gateway) as http:
        return await http.get(path, **kwargs)


async def create(admin: httpx.AsyncClient, path: str, **body: Any) -> dict[str, Any]:
    response = await admin.post(path, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# -- the walkthrough ----------------------------------------------------------------------


async def walkthrough(gateway: gw.Gateway, post: Any) -> None:
    """Kong's getting-started steps, each POST given as form fields to `post`."""
    service = await post("/services", {"name": "example-service", "url": "http://echo.test/v1"})
    assert service["host"] == "echo.test"
    assert service["path"] == "/v1"
    assert service["port"] == 80
    assert service["protocol"] == "http"
    route = await post("/services/example-service/routes", {"name": "mocking", "paths[]": "/mock"})
    assert route["paths"] == ["/mock"]
    assert route["service"] == {"id": service["id"]}
    assert (await proxy(gateway, "/mock/anything")).json()["path"] == "/v1/anything"

    plugin = await post(
        "/services/example-service/plugins", {"name": "rate-limiting", "config.minute": "5"}
    )
    assert plugin["config"]["minute"] == 5
    assert plugin["service"] == {"id": service["id"]}
    auth = await post("/routes/mocking/plugins", {"name": "key-auth"})
    assert auth["route"] == {"id": route["id"]}
    consumer = await post("/consumers", {"username": "luka"})
    credential = await post("/consumers/luka/key-auth", {"key": "top-secret"})
    assert credential["consumer"] == {"id": consumer["id"]}

    assert (await proxy(gateway, "/mock")).status_code == 401
    statuses = [
        (await proxy(gateway, "/mock", headers={"apikey": "top-secret"})).status_code
        for _ in range(6)
    ]
    assert statuses == [200] * 5 + [429]


async def test_kongs_walkthrough_with_json_bodies_configures_the_proxy(
    admin: httpx.AsyncClient, gateway: gw.Gateway
) -> None:
    async def post(path: str, body: dict[str, str]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, value in body.items():
            if key == "paths[]":
                data["paths"] = [value]
            elif key == "config.minute":
                data["config"] = {"minute": int(value)}
            else:
                data[key] = value
        return await create(admin, path, **data)

    await walkthrough(gateway, post)


async def test_kongs_walkthrough_with_form_bodies_configures_the_proxy(
    admin: httpx.AsyncClient, gateway: gw.Gateway
) -> None:
    async def post(path: str, body: dict[str, str]) -> dict[str, Any]:
        response = await admin.post(path, data=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    await walkthrough(gateway, post)


async def test_multipart_bodies_use_the_form_notation(admin: httpx.AsyncClient) -> None:
    files = {"name": (None, "svc"), "url": (None, "http://a.test"), "retries": (None, "3")}
    response = await admin.post("/services", files=files)
    assert response.status_code == 201, response.text
    assert response.json()["retries"] == 3
    response = await admin.post(
        "/routes",
        files=[
            ("paths[1]", (None, "/a")),
            ("paths[2]", (None, "/b")),
            ("service.name", (None, "svc")),
            ("strip_path", (None, "false")),
        ],
    )
    assert response.status_code == 201, response.text
    route = response.json()
    assert route["paths"] == ["/a", "/b"]
    assert route["strip_path"] is False


# -- errors -------------------------------------------------------------------------------


async def test_an_invalid_route_is_a_schema_violation_naming_the_field(
    admin: httpx.AsyncClient,
) -> None:
    response = await admin.post("/routes", json={"paths": ["/ok", "bad"]})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 2
    assert body["name"] == "schema violation"
    assert body["message"] == (
        "schema violation (paths.2: should start with: / (fixed path) or ~/ (regex path))"
    )
    assert body["fields"] == {
        "paths": [None, "should start with: / (fixed path) or ~/ (regex path)"]
    }


async def test_an_entity_wide_rule_is_reported_under_at_entity(admin: httpx.AsyncClient) -> None:
    response = await admin.post("/routes", json={"name": "nothing"})
    assert response.status_code == 400
    assert response.json()["fields"]["@entity"] == [
        "must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is "
        "'http' or 'https'"
    ]


async def test_a_missing_field_and_an_unknown_one_are_both_listed(
    admin: httpx.AsyncClient,
) -> None:
    response = await admin.post("/services", json={"name": "s", "colour": "blue"})
    body = response.json()
    assert response.status_code == 400
    assert body["fields"] == {"colour": "unknown field", "host": "required field missing"}
    assert body["message"] == (
        "2 schema violations (colour: unknown field; host: required field missing)"
    )


async def test_a_duplicate_name_is_a_unique_violation(admin: httpx.AsyncClient) -> None:
    await create(admin, "/services", name="s", url="http://a.test")
    response = await admin.post("/services", json={"name": "s", "url": "http://b.test"})
    assert response.status_code == 409
    assert response.json() == {
        "code": 5,
        "name": "unique constraint violation",
        "message": "UNIQUE violation detected on '{name=\"s\"}'",
        "fields": {"name": "s"},
    }


async def test_a_reused_key_auth_key_is_a_unique_violation(admin: httpx.AsyncClient) -> None:
    await create(admin, "/consumers", username="a")
    await create(admin, "/consumers", username="b")
    await create(admin, "/consumers/a/key-auth", key="k")
    response = await admin.post("/consumers/b/key-auth", json={"key": "k"})
    assert response.status_code == 409
    assert response.json()["message"] == "UNIQUE violation detected on '{key=\"k\"}'"


async def test_a_reference_to_a_missing_service_is_a_foreign_key_violation(
    admin: httpx.AsyncClient,
) -> None:
    response = await admin.post("/routes", json={"paths": ["/"], "service": {"id": SERVICE_ID}})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 4
    assert body["name"] == "foreign key violation"
    assert body["message"] == (
        f"the foreign key '{{id=\"{SERVICE_ID}\"}}' does not reference an existing "
        "'services' entity."
    )
    assert body["fields"] == {"service": {"id": SERVICE_ID}}


async def test_unknown_entities_and_paths_are_not_found(admin: httpx.AsyncClient) -> None:
    for path in ("/services/nope", f"/services/{SERVICE_ID}", "/nothing-here", "/services/x/y"):
        response = await admin.get(path)
        assert response.status_code == 404, path
        assert response.json() == {"message": "Not found"}


async def test_an_unsupported_method_is_405(admin: httpx.AsyncClient) -> None:
    response = await admin.put("/services")
    assert response.status_code == 405
    assert response.json() == {"message": "Method not allowed"}


async def test_a_malformed_json_body_is_400(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/services", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {"message": "Cannot parse JSON body"}


# -- paging and tags ----------------------------------------------------------------------


async def test_listings_page_through_every_entity_once(admin: httpx.AsyncClient) -> None:
    for i in range(7):
        await create(admin, "/consumers", username=f"user-{i}")
    seen: list[str] = []
    url: str | None = "/consumers?size=3"
    pages = 0
    while url is not None:
        response = await admin.get(url)
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [c["username"] for c in body["data"]]
        url = body["next"]
        pages += 1
        if url is not None:
            assert body["offset"]
            assert "size=3" in url
    assert pages == 3
    assert sorted(seen) == [f"user-{i}" for i in range(7)]


async def test_a_bad_size_or_offset_is_refused_with_kongs_codes(
    admin: httpx.AsyncClient,
) -> None:
    response = await admin.get("/services?size=1001")
    assert response.status_code == 400
    assert response.json()["code"] == 9
    response = await admin.get("/services?offset=%%%")
    assert response.status_code == 400
    assert response.json()["code"] == 7


async def test_tags_filter_with_and_and_or(admin: httpx.AsyncClient) -> None:
    await create(admin, "/consumers", username="a", tags=["x", "y"])
    await create(admin, "/consumers", username="b", tags=["x"])
    await create(admin, "/consumers", username="c", tags=["z"])

    async def names(tags: str) -> set[str]:
        response = await admin.get("/consumers", params={"tags": tags})
        return {c["username"] for c in response.json()["data"]}

    assert await names("x,y") == {"a"}
    assert await names("y/z") == {"a", "c"}


# -- PUT, PATCH, DELETE -------------------------------------------------------------------


async def test_put_creates_then_replaces_resetting_omitted_fields(
    admin: httpx.AsyncClient,
) -> None:
    response = await admin.put("/services/s", json={"url": "http://a.test", "retries": 1})
    assert response.status_code == 200, response.text
    first = response.json()
    assert first["name"] == "s"
    assert first["retries"] == 1
    response = await admin.put("/services/s", json={"host": "b.test"})
    second = response.json()
    assert second["id"] == first["id"]
    assert second["retries"] == 5
    assert second["host"] == "b.test"
    response = await admin.put(f"/services/{SERVICE_ID}", json={"name": "t", "host": "c.test"})
    assert response.json()["id"] == SERVICE_ID


async def test_patch_merges_fields_and_plugin_config(
    admin: httpx.AsyncClient, gateway: gw.Gateway
) -> None:
    service = await create(admin, "/services", name="s", url="http://a.test", retries=2)
    response = await admin.patch("/services/s", json={"read_timeout": 5})
    assert response.json()["retries"] == 2
    assert response.json()["read_timeout"] == 5
    plugin = await create(admin, "/plugins", name="rate-limiting", config={"minute": 5, "hour": 50})
    response = await admin.patch(f"/plugins/{plugin['id']}", data={"config.minute": "7"})
    assert response.status_code == 200, response.text
    assert response.json()["config"]["minute"] == 7
    assert response.json()["config"]["hour"] == 50
    assert gateway.config.services[0].id == service["id"]


async def test_patch_of_a_missing_entity_is_404(admin: httpx.AsyncClient) -> None:
    response = await admin.patch("/services/nope", json={"retries": 1})
    assert response.status_code == 404


async def test_delete_is_204_and_idempotent(admin: httpx.AsyncClient, gateway: gw.Gateway) -> None:
    await create(admin, "/services", name="s", url="http://a.test")
    assert (await admin.delete("/services/s")).status_code == 204
    assert (await admin.delete("/services/s")).status_code == 204
    assert (await admin.get("/services/s")).status_code == 404
    assert gateway.config.services == ()


async def test_a_service_with_routes_cannot_be_deleted(admin: httpx.AsyncClient) -> None:
    await create(admin, "/services", name="s", url="http://a.test")
    await create(admin, "/services/s/routes", paths=["/"])
    response = await admin.delete("/services/s")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 4
    assert body["message"] == "an existing 'routes' entity references this 'services' entity"


async def test_deleting_a_consumer_deletes_its_credentials_and_plugins(
    admin: httpx.AsyncClient, store: MemoryConfigStore
) -> None:
    await create(admin, "/consumers", username="c")
    await create(admin, "/consumers/c/key-auth", key="k")
    await create(admin, "/consumers/c/plugins", name="rate-limiting", config={"minute": 1})
    assert (await admin.delete("/consumers/c")).status_code == 204
    assert (await admin.get("/key-auths")).json()["data"] == []
    assert (await admin.get("/plugins")).json()["data"] == []
    stored = await store.load()
    assert not any(stored.entities.get(k) for k in ("consumers", "keyauth_credentials"))


async def test_deleting_a_route_deletes_its_plugins(admin: httpx.AsyncClient) -> None:
    route = await create(admin, "/routes", name="r", paths=["/"])
    await create(admin, "/routes/r/plugins", name="cors")
    await admin.delete(f"/routes/{route['id']}")
    assert (await admin.get("/plugins")).json()["data"] == []


# -- nested endpoints ---------------------------------------------------------------------


async def test_nested_listings_hold_only_the_parents_children(admin: httpx.AsyncClient) -> None:
    await create(admin, "/services", name="a", url="http://a.test")
    await create(admin, "/services", name="b", url="http://b.test")
    route = await create(admin, "/services/a/routes", name="ra", paths=["/a"])
    await create(admin, "/services/b/routes", name="rb", paths=["/b"])
    listed = (await admin.get("/services/a/routes")).json()["data"]
    assert [r["name"] for r in listed] == ["ra"]
    assert (await admin.get("/services/b/routes/ra")).status_code == 404
    assert (await admin.get("/routes/ra/service")).json()["name"] == "a"
    assert (await admin.get(f"/services/a/routes/{route['id']}")).json()["name"] == "ra"


async def test_targets_and_upstream_health(admin: httpx.AsyncClient) -> None:
    checks = {"passive": {"unhealthy": {"http_failures": 1}}}
    await create(admin, "/upstreams", name="backend", healthchecks=checks)
    target = await create(admin, "/upstreams/backend/targets", target="10.0.0.1")
    assert target["target"] == "10.0.0.1:8000"
    assert target["weight"] == 100
    response = await admin.post("/upstreams/backend/targets", json={"target": "10.0.0.1:8000"})
    assert response.status_code == 409
    health = (await admin.get("/upstreams/backend/health")).json()
    assert [t["target"] for t in health["data"]] == ["10.0.0.1:8000"]
    response = await admin.post("/upstreams/backend/targets/10.0.0.1:8000/unhealthy")
    assert response.status_code == 204
    health = (await admin.get("/upstreams/backend/health")).json()
    assert health["data"][0]["health"] == "UNHEALTHY"
    assert (await admin.delete("/upstreams/backend/targets/10.0.0.1:8000")).status_code == 204
    assert (await admin.get("/upstreams/backend/targets")).json()["data"] == []


# -- consistency of store and gateway -----------------------------------------------------


async def test_a_rejected_change_leaves_store_and_gateway_unchanged(
    admin: httpx.AsyncClient, gateway: gw.Gateway, store: MemoryConfigStore
) -> None:
    await create(admin, "/routes", name="r", paths=["/a"])
    before, config = await store.load(), gateway.config
    response = await admin.patch("/routes/r", json={"paths": ["a"]})
    assert response.status_code == 400
    assert await store.load() == before
    assert gateway.config is config


class BrokenStore(MemoryConfigStore):
    """A store whose writes fail once `broken` is set."""

    broken = False

    async def write(self, changes: Sequence[Change], *, expected: int) -> int:
        if self.broken:
            raise StoreError("the database went away")
        return await super().write(changes, expected=expected)


async def test_a_failed_store_write_leaves_the_gateway_unchanged() -> None:
    gateway, store = new_gateway(), BrokenStore()
    app = AdminAPI(gateway, store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin.test"
    ) as admin:
        await create(admin, "/services", name="s", url="http://a.test")
        config = gateway.config
        store.broken = True
        response = await admin.post("/services", json={"name": "t", "url": "http://b.test"})
        assert response.status_code == 500
        assert gateway.config is config
        assert [s["name"] for s in (await admin.get("/services")).json()["data"]] == ["s"]


async def test_an_empty_store_is_seeded_from_the_gateway(store: MemoryConfigStore) -> None:
    gateway = new_gateway(services=[gw.Service(name="s", url="http://a.test")])
    app = AdminAPI(gateway, store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin.test"
    ) as admin:
        listed = (await admin.get("/services")).json()["data"]
    assert [s["name"] for s in listed] == ["s"]
    assert [d["name"] for d in (await store.load()).documents("services")] == ["s"]


async def test_a_stored_configuration_configures_a_new_gateway(store: MemoryConfigStore) -> None:
    first = new_gateway()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=AdminAPI(first, store)), base_url="http://admin.test"
    ) as admin:
        await create(admin, "/services", name="s", url="http://a.test")
        await create(admin, "/services/s/routes", paths=["/s"])
    second = new_gateway()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=AdminAPI(second, store)), base_url="http://admin.test"
    ) as admin:
        assert (await admin.get("/")).status_code == 200
    assert (await proxy(second, "/s/x")).status_code == 200


async def test_a_write_by_another_node_is_picked_up(store: MemoryConfigStore) -> None:
    gateways = [new_gateway(), new_gateway()]
    clients = [
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=AdminAPI(g, store)), base_url="http://a"
        )
        for g in gateways
    ]
    async with clients[0] as one, clients[1] as two:
        await create(one, "/consumers", username="a")
        await create(two, "/consumers", username="b")
        names = {c["username"] for c in (await one.get("/consumers")).json()["data"]}
    assert names == {"a", "b"}
    assert {c.username for c in gateways[0].config.consumers} == {"a", "b"}


# -- information and the whole configuration ----------------------------------------------


async def test_the_root_lists_plugins_and_the_node(
    admin: httpx.AsyncClient, gateway: gw.Gateway
) -> None:
    await create(admin, "/plugins", name="cors")
    body = (await admin.get("/")).json()
    assert body["node_id"] == gateway.node_id
    assert "rate-limiting" in body["plugins"]["available_on_server"]
    assert body["plugins"]["enabled_in_cluster"] == ["cors"]
    assert "key-auth" in (await admin.get("/plugins/enabled")).json()["enabled_plugins"]
    assert (await admin.get("/status")).json()["database"]["reachable"] is True


async def test_schemas_describe_entities_and_plugins(admin: httpx.AsyncClient) -> None:
    fields = (await admin.get("/schemas/services")).json()["fields"]
    assert {"retries": {"type": "an integer", "default": 5}} in fields
    plugin = (await admin.get("/schemas/plugins/rate-limiting")).json()
    assert any("minute" in f for f in plugin["fields"][0]["config"]["fields"])
    assert (await admin.get("/schemas/plugins/nope")).status_code == 404


async def test_post_config_replaces_everything_and_get_config_dumps_it(
    admin: httpx.AsyncClient, gateway: gw.Gateway
) -> None:
    await create(admin, "/consumers", username="old")
    document = {
        "_format_version": "3.0",
        "services": [{"name": "s", "url": "http://a.test", "routes": [{"paths": ["/s"]}]}],
    }
    response = await admin.post("/config", json=document)
    assert response.status_code == 201, response.text
    assert (await admin.get("/consumers")).json()["data"] == []
    assert (await proxy(gateway, "/s")).status_code == 200
    dumped = (await admin.get("/config", headers={"Accept": "application/json"})).json()["config"]
    assert [s["name"] for s in dumped["services"]] == ["s"]
    bad = {"_format_version": "3.0", "routes": [{"paths": ["x"]}]}
    response = await admin.post("/config", json={"config": json.dumps(bad)})
    assert response.status_code == 400
    assert response.json()["code"] == 14
    twice = {"_format_version": "3.0", "consumers": [{"username": "a"}, {"username": "a"}]}
    response = await admin.post("/config", json=twice)
    assert response.status_code == 400
    assert response.json()["code"] == 14
    assert response.json()["fields"] == {"consumers": [None, {"username": ANY}]}
    assert (await proxy(gateway, "/s")).status_code == 200


# -- token and read-only ------------------------------------------------------------------


async def test_a_token_is_required_when_configured(gateway: gw.Gateway) -> None:
    app = AdminAPI(gateway, token="s3cret")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin.test"
    ) as admin:
        assert (await admin.get("/services")).status_code == 401
        ok = await admin.get("/services", headers={"Kong-Admin-Token": "s3cret"})
        assert ok.status_code == 200
        bearer = await admin.get("/services", headers={"Authorization": "Bearer s3cret"})
        assert bearer.status_code == 200
        wrong = await admin.get("/services", headers={"Authorization": "Bearer s3cre"})
        assert wrong.status_code == 401


async def test_read_only_mode_refuses_writes(gateway: gw.Gateway) -> None:
    app = AdminAPI(gateway, read_only=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin.test"
    ) as admin:
        assert (await admin.get("/services")).status_code == 200
        response = await admin.post("/services", json={"name": "s", "url": "http://a.test"})
        assert response.status_code == 405
    assert gateway.config.services == ()


# -- the model ----------------------------------------------------------------------------


def test_documents_round_trip_through_the_declarative_loader() -> None:
    config = load(
        {
            "_format_version": "3.0",
            "services": [
                {
                    "name": "s",
                    "url": "http://a.test",
                    "routes": [{"paths": ["/"], "plugins": [{"name": "cors"}]}],
                    "plugins": [{"name": "rate-limiting", "config": {"minute": 3}}],
                }
            ],
            "consumers": [{"username": "c", "keyauth_credentials": [{"key": "k"}]}],
            "upstreams": [{"name": "u", "targets": [{"target": "10.0.0.1"}]}],
        }
    )
    entities = documents(config)
    assert all(d["id"] and "created_at" in d for by_id in entities.values() for d in by_id.values())
    again = configuration(entities)
    assert again == configuration(documents(again, previous=entities))
    assert again.services[0].name == "s"
    assert len(again.plugins) == 2
    assert again.consumers[0].credentials[0].key == "k"
    assert again.upstreams[0].targets[0].target == "10.0.0.1:8000"


class InterruptedStore(MemoryConfigStore):
    """A store where another writer gets in just before the next write."""

    interrupt: Change | None = None

    async def write(self, changes: Sequence[Change], *, expected: int) -> int:
        if self.interrupt is not None:
            other, self.interrupt = self.interrupt, None
            await super().write([other], expected=expected)
        return await super().write(changes, expected=expected)


async def test_a_write_that_lost_a_race_is_retried_on_the_newer_configuration() -> None:
    gateway, store = new_gateway(), InterruptedStore()
    app = AdminAPI(gateway, store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin.test"
    ) as admin:
        await create(admin, "/consumers", username="first")
        other = {"id": SERVICE_ID, "username": "other"}
        store.interrupt = Change("consumers", SERVICE_ID, other)
        await create(admin, "/consumers", username="second")
        listed = (await admin.get("/consumers")).json()["data"]
    assert {c["username"] for c in listed} == {"first", "other", "second"}
    assert {c.username for c in gateway.config.consumers} == {"first", "other", "second"}


async def test_a_second_plugin_of_a_name_on_the_same_scope_is_a_unique_violation(
    admin: httpx.AsyncClient,
) -> None:
    await create(admin, "/services", name="s", url="http://a.test")
    await create(admin, "/services/s/plugins", name="cors")
    await create(admin, "/plugins", name="cors")  # global: another scope
    response = await admin.post("/services/s/plugins", json={"name": "cors"})
    assert response.status_code == 409
    assert response.json()["code"] == 5


async def test_a_plugin_is_found_by_its_instance_name(admin: httpx.AsyncClient) -> None:
    plugin = await create(admin, "/plugins", name="cors", instance_name="site-cors")
    response = await admin.get("/plugins/site-cors")
    assert response.json()["id"] == plugin["id"]
    response = await admin.patch("/plugins/site-cors", data={"enabled": "false"})
    assert response.json()["enabled"] is False


async def test_put_under_a_parent_creates_the_child_there(admin: httpx.AsyncClient) -> None:
    service = await create(admin, "/services", name="s", url="http://a.test")
    response = await admin.put("/services/s/routes/r", json={"paths": ["/r"]})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "r"
    assert response.json()["service"] == {"id": service["id"]}


async def test_a_route_moves_to_another_service_by_name_in_a_form(
    admin: httpx.AsyncClient,
) -> None:
    await create(admin, "/services", name="a", url="http://a.test")
    b = await create(admin, "/services", name="b", url="http://b.test")
    await create(admin, "/services/a/routes", name="r", paths=["/r"])
    response = await admin.patch("/routes/r", data={"service.name": "b"})
    assert response.json()["service"] == {"id": b["id"]}
    assert (await admin.get("/services/a/routes")).json()["data"] == []


async def test_basic_auth_credentials_are_stored_hashed(admin: httpx.AsyncClient) -> None:
    await create(admin, "/consumers", username="c")
    created = await create(admin, "/consumers/c/basic-auth", username="u", password="pw")
    assert created["password"].startswith("pbkdf2_sha256$")
    listed = (await admin.get("/basic-auths")).json()["data"]
    assert [c["username"] for c in listed] == ["u"]
    assert (await admin.get("/basic-auths/u/consumer")).json()["username"] == "c"


async def test_a_plugin_that_cannot_apply_to_consumers_is_refused_on_one(
    admin: httpx.AsyncClient, gateway: gw.Gateway
) -> None:
    await create(admin, "/consumers", username="c")
    response = await admin.post("/consumers/c/plugins", json={"name": "key-auth"})
    body = response.json()
    assert response.status_code == 400, body
    assert body["code"] == 2
    assert (await admin.get("/plugins")).json()["data"] == []
    assert gateway.config.plugins == ()


async def test_form_notation_builds_maps_arrays_and_typed_values(
    admin: httpx.AsyncClient,
) -> None:
    response = await admin.post(
        "/routes",
        data={
            "headers.x-version[]": ["1", "2"],
            "methods[]": ["GET", "POST"],
            "regex_priority": "3",
            "https_redirect_status_code": "301",
            "hosts": "",
        },
    )
    assert response.status_code == 201, response.text
    route = response.json()
    assert route["headers"] == {"x-version": ["1", "2"]}
    assert route["methods"] == ["GET", "POST"]
    assert route["regex_priority"] == 3
    assert route["https_redirect_status_code"] == 301
    assert route["hosts"] is None
    response = await admin.post("/routes", data={"paths[]": "/x", "regex_priority": "high"})
    assert response.status_code == 400
    assert response.json()["fields"] == {"regex_priority": "expected an integer"}


async def test_a_consumer_joins_a_group_once(admin: httpx.AsyncClient) -> None:
    await create(admin, "/consumers", username="c")
    await create(admin, "/consumers/c/acls", group="staff")
    response = await admin.post("/consumers/c/acls", json={"group": "staff"})
    assert response.status_code == 409
    assert [a["group"] for a in (await admin.get("/consumers/c/acls")).json()["data"]] == ["staff"]


async def test_head_answers_like_get_without_a_body(admin: httpx.AsyncClient) -> None:
    await create(admin, "/services", name="s", url="http://a.test")
    response = await admin.head("/services/s")
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) > 0
    assert (await admin.head("/services/t")).status_code == 404


def test_the_admin_api_serves_over_a_socket_with_uvicorn() -> None:
    gateway = new_gateway()
    with (
        serve_asgi(AdminAPI(gateway), lifespan=True) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        response = http.post("/services", data={"name": "s", "url": "http://a.test"})
        assert response.status_code == 201, response.text
        response = http.post("/services/s/routes", data={"paths[]": "/s"})
        assert response.status_code == 201, response.text
        assert http.get("/services/s/routes").json()["data"][0]["paths"] == ["/s"]
    assert gateway.config.services[0].name == "s"


async def test_a_store_seeded_by_another_process_meanwhile_wins_over_our_configuration() -> None:
    theirs = gw.Gateway(services=[gw.Service(name="theirs", url="http://theirs.internal")])
    ours = gw.Gateway(services=[gw.Service(name="ours", url="http://ours.internal")])

    class SeededAfterWeLooked(MemoryConfigStore):
        """Empty when first looked at; seeded by another process just after."""

        looked = False

        async def load(self) -> StoredConfig:
            if not self.looked:
                self.looked = True
                return StoredConfig(0, {})
            return await super().load()

    store = SeededAfterWeLooked()
    their_documents = documents(theirs.config)
    changes = [Change(k, i, d) for k, v in their_documents.items() for i, d in v.items()]
    await store.write(changes, expected=0)

    await FollowingGateway(ours, store).sync()

    assert [s.name for s in ours.config.services] == ["theirs"]
    assert (await store.load()).revision == 1  # nothing of ours was written over it


# -- targets/all, tags, validation, the configuration as YAML -----------------------------


async def test_all_targets_of_an_upstream_lists_weight_zero_ones_too(
    admin: httpx.AsyncClient,
) -> None:
    await create(admin, "/upstreams", name="backend")
    await create(admin, "/upstreams", name="other")
    live = await create(admin, "/upstreams/backend/targets", target="10.0.0.1:80")
    off = await create(admin, "/upstreams/backend/targets", target="10.0.0.2:80", weight=0)
    await create(admin, "/upstreams/other/targets", target="10.0.0.3:80")
    listed = (await admin.get("/upstreams/backend/targets/all")).json()
    assert sorted(t["id"] for t in listed["data"]) == sorted([live["id"], off["id"]])
    assert listed["data"][0]["upstream"] == {"id": live["upstream"]["id"]}
    assert (await admin.get("/upstreams/nope/targets/all")).status_code == 404
    assert (await admin.post("/upstreams/backend/targets/all", json={})).status_code == 405
    assert (await admin.get(f"/targets/{live['id']}/upstream")).status_code == 404


async def test_tags_lists_a_row_per_tag_of_every_tagged_entity_a_page_at_a_time(
    admin: httpx.AsyncClient,
) -> None:
    service = await create(admin, "/services", name="s", url="http://a.test", tags=["b", "a"])
    consumer = await create(admin, "/consumers", username="c", tags=["a"])
    await create(admin, "/consumers", username="untagged")
    rows = (await admin.get("/tags")).json()
    assert rows["next"] is None
    assert sorted(rows["data"], key=lambda r: (r["tag"], r["entity_name"])) == [
        {"entity_name": "consumers", "entity_id": consumer["id"], "tag": "a"},
        {"entity_name": "services", "entity_id": service["id"], "tag": "a"},
        {"entity_name": "services", "entity_id": service["id"], "tag": "b"},
    ]
    first = (await admin.get("/tags/a?size=1")).json()
    second = (await admin.get(first["next"])).json()
    assert second["next"] is None
    paged = [r["entity_id"] for r in first["data"] + second["data"]]
    assert sorted(paged) == sorted([service["id"], consumer["id"]])
    assert (await admin.get("/tags/none")).json()["data"] == []
    assert (await admin.get("/tags?size=0")).json()["code"] == 9


async def test_validate_checks_a_body_as_a_create_would_without_writing_it(
    admin: httpx.AsyncClient,
) -> None:
    body = {"name": "s", "url": "http://a.test"}
    response = await admin.post("/schemas/services/validate", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"message": "schema validation successful"}
    assert (await admin.get("/services")).json()["data"] == []
    response = await admin.post("/schemas/routes/validate", data={"paths[]": "x"})
    assert response.status_code == 400
    assert response.json()["code"] == 2
    assert response.json()["fields"] == {"paths": [ANY]}
    assert (await admin.get("/routes")).json()["data"] == []
    assert (await admin.post("/schemas/nope/validate", json={})).status_code == 404
    assert (await admin.get("/schemas/services/validate")).status_code == 405


async def test_validating_a_plugin_reads_its_config_and_reports_its_errors(
    admin: httpx.AsyncClient,
) -> None:
    good = {"name": "rate-limiting", "config.minute": "5"}
    response = await admin.post("/schemas/plugins/validate", data=good)
    assert response.status_code == 200, response.text
    bad = {"name": "rate-limiting", "config": {"minute": "often"}}
    response = await admin.post("/schemas/plugins/validate", json=bad)
    assert response.status_code == 400
    assert response.json()["fields"] == {"config": {"minute": ANY}}
    assert (await admin.get("/plugins")).json()["data"] == []


async def test_validation_is_answered_by_a_read_only_api(gateway: gw.Gateway) -> None:
    transport = httpx.ASGITransport(app=AdminAPI(gateway, read_only=True))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as admin:
        response = await admin.post("/schemas/consumers/validate", json={"username": "a"})
        assert response.status_code == 200, response.text
        assert (await admin.post("/consumers", json={"username": "a"})).status_code == 405


async def test_get_config_answers_yaml_text_unless_json_is_asked_for(
    admin: httpx.AsyncClient,
) -> None:
    yaml = pytest.importorskip("yaml")
    await create(admin, "/services", name="s", url="http://a.test")
    text = (await admin.get("/config")).json()["config"]
    assert isinstance(text, str)
    assert [s["name"] for s in yaml.safe_load(text)["services"]] == ["s"]
    asked = await admin.get("/config", headers={"Accept": "application/json"})
    assert asked.json()["config"] == yaml.safe_load(text)


async def test_get_config_answers_the_document_without_pyyaml(
    admin: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml now raises ImportError
    await create(admin, "/services", name="s", url="http://a.test")
    dumped = (await admin.get("/config")).json()["config"]
    assert [s["name"] for s in dumped["services"]] == ["s"]


async def test_the_openapi_document_lists_tags_validation_and_all_targets(
    admin: httpx.AsyncClient,
) -> None:
    paths = (await admin.get("/openapi.json")).json()["paths"]
    assert set(paths["/tags"]) == set(paths["/tags/{tag}"]) == {"get"}
    assert set(paths["/schemas/{entity}/validate"]) == {"post"}
    assert set(paths["/schemas/plugins/validate"]) == {"post"}
    assert set(paths["/upstreams/{upstream}/targets/all"]) == {"get"}


async def test_a_body_over_the_size_limit_is_refused_with_413_and_nothing_changes(
    gateway: gw.Gateway, store: MemoryConfigStore
) -> None:
    app = AdminAPI(gateway, store)
    app.max_body_size = 1000
    json_type = [(b"content-type", b"application/json")]
    too_big = json.dumps({"name": "big", "url": "http://x", "tags": ["t" * 2000]}).encode()
    # In pieces, as a client streams it: refused once the limit is passed, unread after.
    big = await call_asgi(
        app, "/services", method="POST", headers=json_type, body=[too_big[:600], too_big[600:]]
    )
    small = json.dumps({"name": "small", "url": "http://x"}).encode()
    created = await call_asgi(app, "/services", method="POST", headers=json_type, body=[small])
    assert (big.status, json.loads(big.body)) == (413, {"message": "Request body too large"})
    assert created.status == 201
    assert [s.name for s in gateway.config.services] == ["small"]
