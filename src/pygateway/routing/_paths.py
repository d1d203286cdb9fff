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
# Anything but unreserved, sub-delims, ':', '@', '/' and '%' is escaped (Kong does the same).
_UNSAFE = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]")


def _escape(m: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in m.group(0).encode("latin-1", "replace"))


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
    """Normalize a request path (no query string) that starts with `/`.

    The path is text decoded from the raw bytes as latin-1 (as the runloop does), so a byte
    that needs escaping becomes `%XX` of that byte.
    """
    if not path.isascii() or _UNSAFE.search(path):
        path = _UNSAFE.sub(_escape, path)
    if "%" in path:
        path = _ESCAPE.sub(_unescape, path)
    if "//" in path:
        path = _MULTI_SLASH.sub("/", path)
    if "." in path:
        path = remove_dot_segments(path)
    return path


# Rust's regex crate (Kong 3 routers) has neither look-around nor back-references; Python's
# engine backtracks, so on top of those we refuse nested unbounded repeats like `(a+)+`, the
# shape behind catastrophic backtracking, unless each repetition is delimited by a character
# nothing else in it matches (`(/[^/]+)+`, `(\.\d+)*`). Everything else compiles as `re`.
_NAMED_GROUP = re.compile(r"\(\?<(?![=!])")
_MAXREPEAT = sre_parse.MAXREPEAT


def translate_regex(pattern: str) -> str:
    """Kong/PCRE `(?<name>...)` becomes Python's `(?P<name>...)`."""
    return _NAMED_GROUP.sub("(?P<", pattern)


def check_regex(pattern: str, shown: str | None = None) -> str | None:
    """Return why `pattern` (already translated) is refused, or None. `shown` is the pattern
    as the user wrote it, for the message."""
    try:
        parsed = sre_parse.parse(pattern)
        re.compile(pattern)
    except re.error as exc:
        return f"invalid regex: '{shown or pattern}' ({exc})"
    return _check_tree(parsed)


def _check_tree(items: Any) -> str | None:
    reason = _competing_repeats(items)
    if reason:
        return reason
    for op, av in items:
        name = str(op)
        if name in ("ASSERT", "ASSERT_NOT"):
            return "look-around assertions are not supported (as in Kong 3's regex engine)"
        if name == "GROUPREF" or name == "GROUPREF_EXISTS":
            return "back-references are not supported (as in Kong 3's regex engine)"
        if name in ("ATOMIC_GROUP", "POSSESSIVE_REPEAT"):
            return "atomic groups and possessive repeats are not supported (as in Kong 3)"
        if name in ("MAX_REPEAT", "MIN_REPEAT"):
            _, high, sub = av
            # Bounded repeats count too: `(.*a){20}` is as bad as `(.*a)+`.
            if high > 1 and not _delimited(sub):
                if _can_repeat(sub):
                    return (
                        "nested repetition (like '(a+)+' or '(.*a){20}') could backtrack "
                        "catastrophically; rewrite it without the outer or inner repeat"
                    )
                if _overlapping_branches(sub):
                    return (
                        "a repeated alternation whose branches can start alike (like "
                        "'(a|aa)+') could backtrack catastrophically; make the branches "
                        "start differently"
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


def _competing_repeats(items: Any) -> str | None:
    """Three or more unbounded repeats in a row that can match the same characters (like
    `.*.*.*x`) backtrack polynomially: n^3 steps and more on a failing path."""
    open_sets: list[frozenset[int]] = []
    for node in items:
        op, av = node
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT") and av[1] == _MAXREPEAT:
            chars = frozenset(c for c in _SAMPLE if any(_may_match(n, c) for n in av[2]))
            competing = [o for o in open_sets if o & chars]
            if len(competing) >= 2:
                return (
                    "three or more repeats in a row that can match the same text (like "
                    "'.*.*.*') could backtrack catastrophically; anchor them with literals "
                    "they cannot match"
                )
            open_sets.append(chars)
        elif name in ("LITERAL", "IN", "NOT_LITERAL", "ANY"):
            chars = frozenset(c for c in _SAMPLE if _may_match(node, c))
            # A repeat that cannot match this mandatory character must stop before it.
            open_sets = [o for o in open_sets if o & chars]
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


_SAMPLE = range(128)


def _first_codes(branch: Any) -> frozenset[int]:
    """The (ASCII) characters a branch may start with; everything when unsure."""
    for node in branch:
        if str(node[0]) == "AT":
            continue
        return frozenset(c for c in _SAMPLE if _may_match(node, c))
    return frozenset(_SAMPLE)


def _overlapping_branches(items: Any) -> bool:
    """Is there an alternation in `items` with two branches that can start alike?"""
    for op, av in items:
        name = str(op)
        if name == "BRANCH":
            firsts = [_first_codes(b) for b in av[1]]
            for i, first in enumerate(firsts):
                if any(first & other for other in firsts[i + 1 :]):
                    return True
            if any(_overlapping_branches(b) for b in av[1]):
                return True
        elif name == "SUBPATTERN" and _overlapping_branches(av[-1]):
            return True
    return False


def _delimited(items: Any) -> bool:
    """Does each repetition of `items` start (or end) with a literal character that nothing
    else in it can match? Then a text splits into repetitions one way only: no blow-up."""
    while len(items) == 1 and str(items[0][0]) == "SUBPATTERN":
        if items[0][1][1] & re.IGNORECASE:
            return False
        items = items[0][1][-1]
    if len(items) < 2:
        return False
    for edge, rest in ((items[0], items[1:]), (items[-1], items[:-1])):
        op, code = edge
        uncased = str(op) == "LITERAL" and chr(code).lower() == chr(code).upper()
        if uncased and not any(_may_match(node, code) for node in rest):
            return True
    return False


_CATEGORIES = {
    "CATEGORY_DIGIT": re.compile(r"\d"),
    "CATEGORY_NOT_DIGIT": re.compile(r"\D"),
    "CATEGORY_SPACE": re.compile(r"\s"),
    "CATEGORY_NOT_SPACE": re.compile(r"\S"),
    "CATEGORY_WORD": re.compile(r"\w"),
    "CATEGORY_NOT_WORD": re.compile(r"\W"),
}


def _may_match(node: Any, code: int) -> bool:
    """Could this parsed node consume the character `code`? (True when unsure.)"""
    op, av = node
    name = str(op)
    if name == "LITERAL":
        return bool(av == code)
    if name == "NOT_LITERAL":
        return bool(av != code)
    if name == "AT":
        return False
    if name == "IN":
        negate, hit = False, False
        for item_op, item in av:
            kind = str(item_op)
            if kind == "NEGATE":
                negate = True
            elif kind == "LITERAL":
                hit = hit or item == code
            elif kind == "RANGE":
                hit = hit or item[0] <= code <= item[1]
            elif kind == "CATEGORY" and str(item) in _CATEGORIES:
                hit = hit or bool(_CATEGORIES[str(item)].match(chr(code)))
            else:
                return True
        return hit != negate
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        return any(_may_match(n, code) for n in av[2])
    if name == "SUBPATTERN":
        return any(_may_match(n, code) for n in av[-1])
    if name == "BRANCH":
        return any(_may_match(n, code) for branch in av[1] for n in branch)
    if name == "ATOMIC_GROUP":
        return any(_may_match(n, code) for n in av)
    return True


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
