"""The bundled bot-detection plugin, after Kong's spec (spec/03-plugins/21-bot-detection)."""

from __future__ import annotations

import re._parser as sre_parse
from re._constants import (  # type: ignore[attr-defined]
    ATOMIC_GROUP,
    BRANCH,
    MAX_REPEAT,
    MAXREPEAT,
    MIN_REPEAT,
    POSSESSIVE_REPEAT,
    SUBPATTERN,
)
from typing import Any

import pytest
from upstreams import call_asgi

import pygateway as gw
from pygateway.plugins._bot_detection import BOTS, BotDetection
from pygateway.testing import client, echo_engine

HELLOWORLD = "HelloWorld"
FACEBOOK = "facebookexternalhit/1.1"  # a known bot
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_5) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/50.0.2661.102 Safari/537.36"
)


def gateway_with(plugin: BotDetection, *, globally: bool = False) -> gw.Gateway:
    route = gw.Route(name="r", paths=["/"], plugins=[] if globally else [plugin])
    return gw.Gateway(
        services=[gw.Service(name="s", url="http://echo.internal", routes=[route])],
        plugins=[plugin] if globally else [],
        engines={"echo.internal": echo_engine()},
    )


async def status(gateway: gw.Gateway, user_agent: str | None) -> int:
    headers = [(b"user-agent", user_agent.encode())] if user_agent is not None else []
    result = await call_asgi(gateway, "/request", headers=headers)
    return result.status


@pytest.mark.parametrize("globally", [False, True])
async def test_regular_requests_pass(globally: bool) -> None:
    gateway = gateway_with(BotDetection(), globally=globally)
    for user_agent in (None, CHROME, HELLOWORLD, "curl/7.43.0"):
        assert await status(gateway, user_agent) == 200, user_agent


@pytest.mark.parametrize(
    "user_agent",
    [
        "Googlebot/2.1 (+http://www.google.com/bot.html)",
        FACEBOOK,
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
        "Twitterbot/1.0",
        "Go-http-client/1.1",
        "Apache-HttpClient/4.5.13 (Java/11.0.11)",
        "aws-sdk-go/1.44.0 (go1.19; linux; amd64)",
        "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
        "Scrapy/2.11.0 (+https://scrapy.org)",
        "my-little-spider",
        "Mozilla/4.0 (compatible; MSIE 6.0b; Windows NT 5.0) MSIECrawler",
        "NING/1.0",
    ],
)
@pytest.mark.parametrize("globally", [False, True])
async def test_known_bots_get_403_forbidden(user_agent: str, globally: bool) -> None:
    gateway = gateway_with(BotDetection(), globally=globally)
    async with client(gateway) as http:
        response = await http.get("/request", headers={"user-agent": user_agent})
    assert response.status_code == 403
    body = response.json()
    assert body["message"] == "Forbidden"
    assert "request_id" in body


async def test_anchored_patterns_only_match_at_the_start() -> None:
    gateway = gateway_with(BotDetection())
    assert await status(gateway, "NING/1.0") == 403
    assert await status(gateway, "Mozilla/5.0 NING/1.0") == 200


async def test_denied_user_agents_get_403() -> None:
    gateway = gateway_with(BotDetection(deny=[HELLOWORLD]))
    assert await status(gateway, HELLOWORLD) == 403
    assert await status(gateway, f"Say {HELLOWORLD}!") == 403  # found anywhere, as Kong's
    assert await status(gateway, CHROME) == 200


async def test_an_allowed_user_agent_passes_even_if_it_is_a_known_bot_or_denied() -> None:
    gateway = gateway_with(BotDetection(allow=[FACEBOOK], deny=["facebook"]))
    assert await status(gateway, FACEBOOK) == 200
    assert await status(gateway, "facebookexternalhit/2.0") == 403
    assert await status(gateway, "Googlebot/2.1") == 403


async def test_the_user_agent_is_matched_without_surrounding_spaces() -> None:
    gateway = gateway_with(BotDetection(deny=["^curl/[0-9.]+$"]))
    assert await status(gateway, "  curl/8.0  ") == 403


async def test_several_user_agent_headers_get_400() -> None:
    gateway = gateway_with(BotDetection())
    result = await call_asgi(
        gateway, "/request", headers=[(b"user-agent", CHROME.encode()), (b"user-agent", b"x")]
    )
    assert result.status == 400
    assert b'"message": "Only one User-Agent header allowed"' in result.body


async def test_decisions_are_cached_per_user_agent_and_stay_right() -> None:
    plugin = BotDetection(deny=["evil"])
    gateway = gateway_with(plugin)
    for _ in range(3):
        assert await status(gateway, "evil/1") == 403
        assert await status(gateway, CHROME) == 200
    assert plugin._decisions is not None
    assert plugin._decisions.get("evil/1") is True
    assert plugin._decisions.get(CHROME) is False


def test_the_decision_cache_is_bounded() -> None:
    plugin = BotDetection()
    decisions = plugin._decisions
    assert decisions is not None
    for i in range(10_001):
        decisions.put(f"agent/{i}", False)
    assert decisions.get("agent/0") is None
    assert decisions.get("agent/10000") is False


def test_the_decision_cache_holds_a_digest_not_the_user_agent() -> None:
    plugin = BotDetection()
    decisions = plugin._decisions
    assert decisions is not None
    user_agent = "Mozilla/5.0 " + "x" * 16_000
    decisions.put(user_agent, False)
    assert decisions.get(user_agent) is False
    assert all(len(key) <= 32 for key in decisions._cache)


def test_an_equal_configuration_is_an_equal_plugin_with_its_own_cache() -> None:
    a, b = BotDetection(deny=["x"]), BotDetection(deny=["x"])
    assert a == b
    assert a._decisions is not b._decisions


def test_a_long_adversarial_user_agent_is_still_judged() -> None:
    plugin = BotDetection()
    assert not plugin.refuses("Google" * 1500)
    assert plugin.refuses("Google" * 1500 + " /+/web/snippet")
    assert not plugin.refuses("MSIE 6.0;" * 900)
    assert plugin.refuses("MSIE 6.0;" * 900 + " MSIECrawler")


def _ambiguous_runs(items: Any) -> bool:
    """Does this parsed regex put two unbounded repeats of the same thing back to back
    (only optional items between)? Such a pair splits a long run n ways: quadratic."""
    items = list(items)
    for i, (op, av) in enumerate(items):
        if op in (MAX_REPEAT, MIN_REPEAT) and av[1] == MAXREPEAT:
            for next_op, next_av in items[i + 1 :]:
                if next_op not in (MAX_REPEAT, MIN_REPEAT):
                    break
                if next_av[1] == MAXREPEAT and list(next_av[2]) == list(av[2]):
                    return True
                if next_av[0] > 0:
                    break
        children: list[Any] = []
        if op in (MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT):
            children = [av[2]]
        elif op is SUBPATTERN:
            children = [av[3]]
        elif op is ATOMIC_GROUP:
            children = [av]
        elif op is BRANCH:
            children = list(av[1])
        if any(_ambiguous_runs(child) for child in children):
            return True
    return False


def test_no_known_bot_pattern_splits_a_long_run_of_characters_many_ways() -> None:
    assert _ambiguous_runs(sre_parse.parse(r" PTST/\d+\.?\d+$"))  # Kong's, quadratic
    quadratic = [p for p in BOTS if _ambiguous_runs(sre_parse.parse(p))]
    assert quadratic == []


def test_a_long_run_of_digits_after_ptst_is_judged_as_kongs_pattern_would() -> None:
    plugin = BotDetection()
    assert not plugin.refuses("a PTST/" + "1" * 16_000 + "x")
    assert plugin.refuses("a PTST/" + "1" * 16_000)
    for version, bot in [
        ("1", False),
        ("12", True),
        ("1.2", True),
        ("1.", False),
        ("1.2.3", False),
    ]:
        assert plugin.refuses(f"Mozilla/5.0 PTST/{version}") is bot, version


# -- configuration -----------------------------------------------------------------------------


def test_its_kong_name_priority_and_round_trip() -> None:
    assert gw.plugins.get("bot-detection") is BotDetection
    assert BotDetection.priority == 2500
    plugin = BotDetection(allow=["^ok"], deny=["bad"])
    assert plugin.to_config() == {"allow": ["^ok"], "deny": ["bad"]}
    assert BotDetection().to_config() == {"allow": [], "deny": []}
    assert BotDetection.from_config(plugin.to_config()) == plugin


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"allow": "x"}, "allow: expected an array"),
        ({"deny": ["(unclosed"]}, "deny[0]: not a valid regex: (unclosed"),
        ({"allow": ["ok", "[z-a]"]}, "allow[1]: not a valid regex: [z-a]"),
        ({"deny": [5]}, "deny[0]: expected a string"),
    ],
)
def test_invalid_configurations_fail_with_kongs_messages(
    config: dict[str, Any], error: str
) -> None:
    with pytest.raises(gw.ConfigurationError) as info:
        BotDetection(**config)
    assert str(info.value) == error


def test_it_cannot_be_applied_to_a_consumer() -> None:
    with pytest.raises(gw.ConfigurationError, match="consumer"):
        gw.Gateway(consumers=[gw.Consumer(username="c", plugins=[BotDetection()])])


async def test_it_works_from_a_declarative_file() -> None:
    config = {
        "_format_version": "3.0",
        "services": [{"name": "s", "url": "http://echo.internal", "routes": [{"paths": ["/"]}]}],
        "plugins": [{"name": "bot-detection", "config": {"deny": [HELLOWORLD]}}],
    }
    gateway = gw.Gateway.from_config(config, engines={"echo.internal": echo_engine()})
    assert await status(gateway, HELLOWORLD) == 403
    assert await status(gateway, FACEBOOK) == 403
    assert await status(gateway, CHROME) == 200
    again = gw.Gateway.from_config(gateway.to_config())
    assert again.config == gateway.config
