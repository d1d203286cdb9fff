"""Path normalization and route-regex checking.

The router matches, and the proxy forwards, the *normalized* path: percent-encoded unreserved
characters decoded, other escapes upper-cased, dot segments removed, repeated slashes merged.
`%2F` (an encoded slash) is never decoded, so `/a%2Fb` stays one segment.
"""

from __future__ import annotations

import re
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_MULTI_SLASH = re.compile(r"//+")


def _unescape(m: re.Match[str]) -> str:
    code = int(m.group(1), 16)
    return chr(code) if code in _UNRESERVED else "%" + m.group(1).upper()


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, on a path that starts with `/`."""
    if "." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments[1:], 1):
        last = i == len(segments) - 1
        if seg == "..":
            if len(out) > 0:
                out.pop()
            if last:
                out.append("")
        elif seg == ".":
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def normalize_path(path: str) -> str:
    """Normalize a request path (no query string) that starts with `/`."""
    if "%" in path:
        path = _ESCAPE.sub(_unescape, path)
    if "//" in path:
        path = _MULTI_SLASH.sub("/", path)
    if "." in path:
        path = remove_dot_segments(path)
    return path


# Rust's regex crate (Kong 3 routers) has neither look-around nor back-references; Python's
# engine backtracks, so on top of those we refuse nested unbounded repeats like `(a+)+`, the
# shape behind catastrophic backtracking. Everything else compiles as Python `re`.
_NAMED_GROUP = re.compile(r"\(\?<(?![=!])")
_MAXREPEAT = sre_parse.MAXREPEAT


def translate_regex(pattern: str) -> str:
    """Kong/PCRE `(?<name>...)` becomes Python's `(?P<name>...)`."""
    return _NAMED_GROUP.sub("(?P<", pattern)


def check_regex(pattern: str) -> str | None:
    """Return why `pattern` (already translated) is refused, or None."""
    try:
        parsed = sre_parse.parse(pattern)
        re.compile(pattern)
    except re.error as exc:
        return f"invalid regex: '{pattern}' ({exc})"
    return _check_tree(parsed)


def _check_tree(items: Any) -> str | None:
    for op, av in items:
        name = str(op)
        if name in ("ASSERT", "ASSERT_NOT"):
            return "look-around assertions are not supported (as in Kong 3's regex engine)"
        if name == "GROUPREF" or name == "GROUPREF_EXISTS":
            return "back-references are not supported (as in Kong 3's regex engine)"
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            _, high, sub = av
            unbounded = high == _MAXREPEAT or high > 100
            if unbounded and _can_repeat(sub):
                return (
                    "nested unbounded repetition (like '(a+)+') could backtrack "
                    "catastrophically; rewrite it without the outer or inner repeat"
                )
            reason = _check_tree(sub)
            if reason:
                return reason
        elif name == "SUBPATTERN":
            reason = _check_tree(av[-1])
            if reason:
                return reason
        elif name == "BRANCH":
            for branch in av[1]:
                reason = _check_tree(branch)
                if reason:
                    return reason
        elif name == "ATOMIC_GROUP":
            reason = _check_tree(av)
            if reason:
                return reason
    return None


def _can_repeat(items: Any) -> bool:
    """Does this sub-pattern match strings of more than one length (i.e. contain a repeat)?"""
    for op, av in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, _ = av
            if high != low:
                return True
        elif name == "SUBPATTERN":
            if _can_repeat(av[-1]):
                return True
        elif name == "BRANCH" and any(_can_repeat(b) for b in av[1]):
            return True
    return False


def literal_prefix(pattern: str) -> str:
    """The fixed text every match of `pattern` starts with (used to index regex routes)."""
    try:
        parsed = sre_parse.parse(pattern)
    except re.error:
        return ""
    if parsed.state.flags & re.IGNORECASE:
        return ""
    out = []
    for op, av in parsed:
        if str(op) == "LITERAL":
            out.append(chr(av))
        elif str(op) == "AT" and str(av) == "AT_BEGINNING" and not out:
            continue
        else:
            break
    return "".join(out)
