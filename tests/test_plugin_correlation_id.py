"""The bundled correlation-id plugin, after Kong's spec for it."""

from __future__ import annotations

import re
from typing import Any

import pytest

import pygateway as gw
from pygateway._config import dump, load
from pygateway.plugins._correlation_id import CorrelationId
from pygateway.plugins._request_termination import RequestTermination
from pygateway.testing import client, echo_engine

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def gateway_with(*plugins: Any) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="s",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=["/r"], plugins=plugins)],
            )
        ],
        engines={"echo.internal": echo_engine()},
    )


async def sent_upstream(gateway: gw.Gateway, n: int = 1, **kwargs: Any) -> list[Any]:
    async with client(gateway) as http:
        return [await http.get("/r", **kwargs) for _ in range(n)]


async def test_the_defaults_send_a_uuid_and_counter_in_kong_request_id() -> None:
    first, second = await sent_upstream(gateway_with(CorrelationId()), 2)
    ids = [r.json()["headers"]["kong-request-id"] for r in (first, second)]
    assert all(len(v) == 1 for v in ids)
    (a,), (b,) = ids
    assert re.fullmatch(UUID + r"#\d+", a)
    prefix_a, count_a = a.split("#")
    prefix_b, count_b = b.split("#")
    assert prefix_a == prefix_b
    assert int(count_b) == int(count_a) + 1
    assert "kong-request-id" not in first.headers


async def test_the_uuid_generator_makes_a_fresh_uuid_each_time() -> None:
    responses = await sent_upstream(
        gateway_with(CorrelationId(header_name="X-Request-ID", generator="uuid")), 2
    )
    ids = [r.json()["headers"]["x-request-id"][0] for r in responses]
    assert all(re.fullmatch(UUID, v) for v in ids)
    assert ids[0] != ids[1]


async def test_the_tracker_generator_makes_distinct_ids() -> None:
    responses = await sent_upstream(gateway_with(CorrelationId(generator="tracker")), 2)
    ids = [r.json()["headers"]["kong-request-id"][0] for r in responses]
    assert ids[0] != ids[1]
    assert ids[0].startswith("gateway.test-80-")


async def test_an_incoming_id_is_kept_and_not_duplicated() -> None:
    (response,) = await sent_upstream(
        gateway_with(CorrelationId(echo_downstream=True)), headers={"Kong-Request-ID": "abc"}
    )
    assert response.json()["headers"]["kong-request-id"] == ["abc"]
    assert response.headers["kong-request-id"] == "abc"


async def test_an_empty_incoming_id_is_replaced() -> None:
    (response,) = await sent_upstream(
        gateway_with(CorrelationId()), headers={"Kong-Request-ID": ""}
    )
    (value,) = response.json()["headers"]["kong-request-id"]
    assert re.fullmatch(UUID + r"#\d+", value)


async def test_echo_downstream_returns_the_id_sent_upstream() -> None:
    (response,) = await sent_upstream(gateway_with(CorrelationId(echo_downstream=True)))
    assert response.headers["kong-request-id"] == response.json()["headers"]["kong-request-id"][0]


async def test_echo_downstream_also_marks_an_answer_of_a_later_plugin() -> None:
    gateway = gateway_with(CorrelationId(echo_downstream=True), RequestTermination(status_code=418))
    async with client(gateway) as http:
        response = await http.get("/r")
    assert response.status_code == 418
    assert re.fullmatch(UUID + r"#\d+", response.headers["kong-request-id"])


async def test_a_global_plugin_echoes_the_clients_id_on_a_404() -> None:
    gateway = gw.Gateway(
        plugins=[CorrelationId(echo_downstream=True)],
        services=[
            gw.Service(name="s", url="http://echo.internal", routes=[gw.Route(paths=["/r"])])
        ],
        engines={"echo.internal": echo_engine()},
    )
    async with client(gateway) as http:
        response = await http.get("/nowhere", headers={"kong-request-id": "from-client"})
    assert response.status_code == 404
    assert response.headers["kong-request-id"] == "from-client"


def test_the_priority_and_defaults_are_kongs() -> None:
    plugin = CorrelationId()
    assert (CorrelationId.name, CorrelationId.priority) == ("correlation-id", 100001)
    assert plugin.to_config() == {
        "header_name": "Kong-Request-ID",
        "generator": "uuid#counter",
        "echo_downstream": False,
    }


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"generator": "uuid4"}, "generator: expected one of: uuid, uuid#counter, tracker"),
        ({"header_name": "bad header"}, "header_name: invalid header name 'bad header'"),
        ({"echo_downstream": "yes"}, "echo_downstream: expected a boolean"),
    ],
)
def test_invalid_configs_are_refused_naming_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(gw.ConfigurationError, match=re.escape(message)):
        CorrelationId.from_config(config)


async def test_a_declarative_config_works_and_round_trips() -> None:
    data = {
        "_format_version": "3.0",
        "services": [
            {
                "name": "s",
                "url": "http://echo.internal",
                "routes": [{"name": "r", "paths": ["/r"]}],
                "plugins": [
                    {
                        "name": "correlation-id",
                        "config": {"header_name": "X-Trace", "generator": "uuid"},
                    }
                ],
            }
        ],
    }
    gateway = gw.Gateway.from_config(data, engines={"echo.internal": echo_engine()})
    (response,) = await sent_upstream(gateway)
    assert re.fullmatch(UUID, response.json()["headers"]["x-trace"][0])
    assert load(dump(gateway.config)) == gateway.config
