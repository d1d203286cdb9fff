"""Path normalization and the checks on route paths and regexes.

Kong 3.x (shared/reference/kong.md §1-2): the router matches the normalized path (unreserved
escapes decoded, dot segments removed, `//` merged); route paths must already be normalized;
regexes follow Rust's regex crate (no look-around, no back-references). pygateway also refuses
nested unbounded repeats, which Python's backtracking engine could take forever on.
"""

from __future__ import annotations

import random
import re

import pytest

import pygateway as gw
from pygateway.routing import normalize_path
from pygateway.routing._paths import (
    check_regex,
    literal_prefix,
    remove_dot_segments,
    translate_regex,
)

NESTED = "nested repetition"

# -- normalize_path ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "normalized"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/./b/../c", "/a/c"),
        ("/a/b/c/./../../g", "/a/g"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/..", "/"),
        ("/../../a", "/a"),
        ("/a/...", "/a/..."),
        ("/a/.hidden/..b", "/a/.hidden/..b"),
        ("//a///b//", "/a/b/"),
        ("/a/..//b", "/b"),
        ("/%2e%2e/x", "/x"),
        ("/a/%2E%2e/b", "/b"),
        ("/a/.%2e/b", "/b"),
        ("/a/%2e/b", "/a/b"),
        ("/%7e%7E", "/~~"),
        ("/%41%5a%61%7a%30%39%2d%2e%5f%7e", "/AZaz09-._~"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%2Fb", "/a%2Fb"),
        ("/a%3a%40", "/a%3A%40"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
        ("/a%252e", "/a%252e"),
        ("/a%zz%4", "/a%zz%4"),
        ("/file.json", "/file.json"),
        ("/x/a/%2e./b%2E//c/%2e/./d/../e/%2e%2E/%5f%99%af%2f%2F", "/x/b./c/_%99%AF%2F%2F"),
    ],
)
def test_normalize_path(path: str, normalized: str) -> None:
    assert normalize_path(path) == normalized


def test_an_encoded_slash_is_never_decoded_so_it_does_not_split_segments() -> None:
    assert normalize_path("/a%2F..%2Fb") == "/a%2F..%2Fb"
    assert normalize_path("/a/%2F/../b") == "/a/b"


def test_escapes_are_decoded_once_not_twice() -> None:
    # %25 is "%": decoding it and then decoding again would turn %252e into "."
    assert normalize_path("/a/%252e%252e/b") == "/a/%252e%252e/b"


def test_remove_dot_segments_follows_rfc_3986() -> None:
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("/mid/content=5/../6") == "/mid/6"
    assert remove_dot_segments("/no/dots") == "/no/dots"


def test_normalization_is_idempotent_and_leaves_no_dot_segments_or_empty_segments() -> None:
    rng = random.Random(7)
    pieces = ["a", "b", "/", "/", ".", "..", "%2e", "%2E", "%2F", "%2f", "%7e", "%41", "%20", "//"]
    for _ in range(3000):
        path = "/" + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        once = normalize_path(path)
        assert normalize_path(once) == once, path
        assert once.startswith("/"), path
        assert "//" not in once, path
        segments = once.split("/")[1:]
        assert "." not in segments, path
        assert ".." not in segments, path
        assert not re.search(r"%[0-9A-F]?[a-f]", once), path  # escapes are upper-cased
        assert "%7E" not in once, path
        assert "%41" not in once, path


# -- route path validation -----------------------------------------------------------------


def route_error(path: str) -> str:
    with pytest.raises(gw.ConfigurationError) as caught:
        gw.Route(paths=["/ok", path])
    return str(caught.value)


@pytest.mark.parametrize(
    ("path", "suggestion"),
    [
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a//b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/%7Euser", "/~user"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%3ab", "/a%3Ab"),
        ("/%2e%2e/a", "/a"),
    ],
)
def test_a_non_normalized_route_path_is_refused_with_the_normalized_one(
    path: str, suggestion: str
) -> None:
    assert route_error(path) == (
        f"paths[1]: non-normalized path, consider use '{suggestion}' instead"
    )


@pytest.mark.parametrize("path", ["/", "/a", "/a/", "/a%2Fb", "/a%20b", "/~user", "/a.b/c"])
def test_normalized_route_paths_are_accepted(path: str) -> None:
    assert gw.Route(paths=[path]).paths == (path,)


def test_a_route_path_must_start_with_a_slash_or_a_tilde() -> None:
    assert route_error("users") == "paths[1]: should start with: / (fixed path) or ~/ (regex path)"


def test_regex_paths_are_not_required_to_be_normalized() -> None:
    assert gw.Route(paths=[r"~/a/\./b//c"]).paths == (r"~/a/\./b//c",)


def test_a_bad_route_path_nested_in_a_service_is_named_by_its_full_field_path() -> None:
    with pytest.raises(gw.ConfigurationError) as caught:
        gw.Gateway.from_config(
            {
                "_format_version": "3.0",
                "services": [
                    {"name": "s", "url": "http://s.test", "routes": [{"paths": ["/a", "/b/./c"]}]}
                ],
            }
        )
    assert "services[0].routes[0].paths[1]: non-normalized path, consider use '/b/c' instead" in (
        str(caught.value)
    )


def test_every_bad_path_of_a_route_is_reported() -> None:
    with pytest.raises(gw.ConfigurationError) as caught:
        gw.Route(paths=["/a//b", "~/(", "/ok", "~/(?=x)"])
    assert [path for path, _ in caught.value.errors] == [
        ("paths", 0),
        ("paths", 1),
        ("paths", 3),
    ]


# -- regex checks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "regex",
    [
        r"/users/(?<id>\d+)$",
        r"/v[0-9]+/.*",
        r"/users/(?P<id>\d+)/orders/(?<order>[a-f0-9-]{36})$",
        r"/(?<tenant>[^/]+)/items/\d+",
        r"/(ab)+/x",
        r"/(a{3})+",
        r"/\d+/\d+",
        r"/(?:foo|bar)/.*",
        r"/files(/[^/]+)+$",
        r"/files/([^/]+/)*[^/]+$",
        r"/v\d+(\.\d+)*/",
        r"(?i)/caseless",
        r"/a{1,100}",
    ],
)
def test_ordinary_regexes_are_accepted(regex: str) -> None:
    assert check_regex(translate_regex(regex)) is None
    assert gw.Route(paths=["~" + regex]).paths == ("~" + regex,)


@pytest.mark.parametrize(
    ("regex", "why"),
    [
        (r"/a(?=b)", "look-around"),
        (r"/a(?!b)", "look-around"),
        (r"/(?<=a)b", "look-around"),
        (r"/(?<!a)b", "look-around"),
        (r"/(a)\1", "back-references"),
        (r"/(?P<x>a)(?P=x)", "back-references"),
        (r"/(?<x>a)(?(x)b|c)", "back-references"),
    ],
)
def test_look_around_and_back_references_are_refused_as_in_kong_3(regex: str, why: str) -> None:
    reason = check_regex(translate_regex(regex))
    assert reason is not None
    assert why in reason
    assert route_error("~" + regex).startswith(f"paths[1]: {why}")


# Nested repeats are safe when every repetition starts (or ends) with a character nothing
# else in it can match, as in `(/[^/]+)+`: the text splits into repetitions one way only.
# The shapes below are refused: the inner part can match the delimiter (`(/.*)+`), there is
# no delimiter at an edge (`([a-z]+/[a-z]+)+`), or it is a letter (case folding).
@pytest.mark.parametrize(
    "regex",
    [
        r"/(a+)+$",
        r"/(a*)*$",
        r"/(a+)*b",
        r"/(?:a|b+)+",
        r"/(\w+\s?)+$",
        r"/(.*)*",
        r"/(/.*)+",
        r"/((ab)+)+",
        r"/(a+){2,}",
        r"/(a{1,5})+",
        r"/((/[^/]+)+)+",
        r"/([a-z]+/[a-z]+)+$",
        r"/(?:[a-z/]+)+",
        r"/(/\W+)+",
        r"/(a[^a]+)+",
    ],
)
def test_nested_unbounded_repetition_is_refused_as_catastrophic(regex: str) -> None:
    reason = check_regex(translate_regex(regex))
    assert reason is not None
    assert NESTED in reason
    assert route_error("~" + regex).startswith(f"paths[1]: {NESTED}")


def test_a_nested_repetition_inside_a_bounded_one_is_still_checked() -> None:
    reason = check_regex(r"/x((a+)+){1,3}")
    assert reason is not None
    assert NESTED in reason


def test_an_invalid_regex_gives_a_clear_error_naming_the_field() -> None:
    message = route_error("~/users/(?<id>\\d+")
    assert message.startswith("paths[1]: invalid regex: '/users/(")
    assert "missing )" in message


def test_a_header_regex_is_checked_too_and_named_by_header_and_index() -> None:
    with pytest.raises(gw.ConfigurationError) as caught:
        gw.Route(headers={"x-version": ["v1", "~*(a+)+"]})
    assert str(caught.value).startswith(f"headers.x-version[1]: {NESTED}")


# -- translate_regex and literal_prefix ----------------------------------------------------


@pytest.mark.parametrize(
    ("pcre", "python"),
    [
        (r"/(?<id>\d+)", r"/(?P<id>\d+)"),
        (r"/(?<a>x)/(?<b>y)", r"/(?P<a>x)/(?P<b>y)"),
        (r"/(?P<id>\d+)", r"/(?P<id>\d+)"),
        (r"/(?<=a)b", r"/(?<=a)b"),
        (r"/(?<!a)b", r"/(?<!a)b"),
        (r"/(\d+)", r"/(\d+)"),
    ],
)
def test_pcre_named_groups_become_python_named_groups(pcre: str, python: str) -> None:
    assert translate_regex(pcre) == python


@pytest.mark.parametrize(
    ("regex", "prefix"),
    [
        (r"/users/(?P<id>\d+)$", "/users/"),
        (r"/v[0-9]+/", "/v"),
        (r"/abc?", "/ab"),
        (r"/ab*", "/a"),
        (r"^/anchored", "/anchored"),
        (r"/a|/b", "/"),
        (r"a|b", ""),
        (r"(?i)/caseless", ""),
        (r"\/escaped", "/escaped"),
        (r".*", ""),
    ],
)
def test_literal_prefix_is_text_every_match_starts_with(regex: str, prefix: str) -> None:
    assert literal_prefix(regex) == prefix


def test_a_route_path_with_non_ascii_text_is_refused_with_its_escaped_form_suggested() -> None:
    with pytest.raises(gw.ConfigurationError, match=r"consider use '/caf%C3%A9' instead"):
        gw.Route(paths=["/café"])


def test_a_request_path_with_raw_utf8_bytes_matches_the_escaped_route_path() -> None:
    raw = "/café/x".encode().decode("latin-1")
    assert normalize_path(raw) == "/caf%C3%A9/x"
    assert normalize_path("/caf%c3%a9/x") == "/caf%C3%A9/x"


@pytest.mark.parametrize("pattern", ["/(a|aa)+$", "/(?:a|a)+$", r"/(\d|\d\d)*$"])
def test_a_repeated_alternation_with_branches_that_start_alike_is_refused(pattern: str) -> None:
    with pytest.raises(gw.ConfigurationError, match="start alike"):
        gw.Route(paths=["~" + pattern])


@pytest.mark.parametrize("pattern", ["/(?>a+)b", "/a++b"])
def test_atomic_groups_and_possessive_repeats_are_refused_as_kong_does(pattern: str) -> None:
    with pytest.raises(gw.ConfigurationError, match="not supported"):
        gw.Route(paths=["~" + pattern])


def test_an_invalid_regex_is_reported_as_the_user_wrote_it() -> None:
    with pytest.raises(gw.ConfigurationError, match=r"invalid regex: '/\(\?<id>"):
        gw.Route(paths=["~/(?<id>\\d+"])


@pytest.mark.parametrize("pattern", [r"/(.*a){20}$", r"/(a+b?){2,5}$"])
def test_a_bounded_repeat_of_a_variable_length_group_is_refused_like_an_unbounded_one(
    pattern: str,
) -> None:
    with pytest.raises(gw.ConfigurationError, match="nested repetition"):
        gw.Route(paths=["~" + pattern])


def test_three_repeats_in_a_row_that_can_match_the_same_text_are_refused() -> None:
    with pytest.raises(gw.ConfigurationError, match="three or more repeats"):
        gw.Route(paths=["~/.*.*.*.*=$"])


@pytest.mark.parametrize(
    "pattern", [r"/api/.*/v1/.*", r"/(\d{1,3}\.){3}\d+$", r"/x/[a-z]+-[0-9]+-.*$"]
)
def test_repeats_separated_by_delimiters_or_only_two_in_a_row_are_accepted(pattern: str) -> None:
    gw.Route(paths=["~" + pattern])
