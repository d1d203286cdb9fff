"""Kong's traditional_compatible router, compiled once per configuration.

Each route is split like Kong does (one rule per prefix length, one for all its regexes) and
given Kong's priority: number of fields set > plain hosts only > header count > regex >
regex_priority > prefix length; ties go to the route defined first. Rules are indexed by host
and by path prefix (a regex by its literal prefix, or by a whole segment it requires when that
is more selective), so a match looks at the few rules that could apply instead of scanning
them all; the best-ranked candidate that fully matches wins. Only rules with no usable path
key (no paths, or a regex with neither) are tried for every path of their host.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import TYPE_CHECKING

import attrs

from ._paths import literal_prefix, translate_regex

if TYPE_CHECKING:
    from .._entities import Route, Service

__all__ = ["Match", "Router"]

_HeaderMatcher = tuple[bytes, frozenset[str], tuple[re.Pattern[str], ...]]


@attrs.frozen
class Match:
    """The outcome of routing one request."""

    route: Route
    service: Service | None
    #: The text the matched path (prefix or regex) consumed; stripped when strip_path is set.
    matched: str
    #: Regex captures, by name and by position (`"1"`, `"2"`, ...), as Kong exposes them.
    captures: dict[str, str]


@attrs.frozen(eq=False)
class _Rule:
    rank: int
    route: Route
    service: Service | None
    methods: frozenset[str] | None
    hosts: tuple[tuple[str, int | None], ...] | None  # (pattern, port); pattern may have a *
    headers: tuple[_HeaderMatcher, ...]
    prefixes: tuple[str, ...] | None
    regexes: tuple[re.Pattern[str], ...] | None

    def matches(
        self, method: str, host: str, port: int, path: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> Match | None:
        if self.methods is not None and method not in self.methods:
            return None
        if self.hosts is not None and not any(
            _host_matches(pattern, want, host, port) for pattern, want in self.hosts
        ):
            return None
        for name, plain, regexes in self.headers:
            values = [v.decode("latin-1") for k, v in headers if k == name]
            if not any(v.lower() in plain or any(r.search(v) for r in regexes) for v in values):
                return None
        if self.regexes is not None:
            for regex in self.regexes:
                m = regex.match(path)
                if m:
                    captures = {str(i): g for i, g in enumerate(m.groups(), 1) if g is not None}
                    captures.update({k: v for k, v in m.groupdict().items() if v is not None})
                    return Match(self.route, self.service, m.group(0), captures)
            return None
        if self.prefixes is not None:
            for prefix in self.prefixes:
                if path.startswith(prefix):
                    return Match(self.route, self.service, prefix, {})
            return None
        return Match(self.route, self.service, "", {})


def _host_matches(pattern: str, want_port: int | None, host: str, port: int) -> bool:
    if want_port is not None and want_port != port:
        return False
    if pattern.startswith("*"):
        return host.endswith(pattern[1:])
    if pattern.endswith("*"):
        return host.startswith(pattern[:-1])
    return host == pattern


_Bucket = tuple[dict[str, tuple[tuple[int, ...], ...]], tuple[int, ...]]
_PathKey = tuple[str, str]  # ("prefix", "/svc12/v1") or ("segment", "orders")


class _PathIndex:
    """Rule ranks by literal path prefix, found in time independent of the number of rules.

    A prefix splits at its last `/` into a head and a tail (`/svc12/v1` -> `/svc12/`, `v1`).
    It can only match a path that has the same head, cut at one of the path's own slashes,
    followed by a segment starting with the tail. So `collect` looks up one head per slash of
    the path (as deep as the deepest head) and, in that head's bucket, the longest tail
    starting the next segment (usually the whole segment: one lookup). Each tail's *chain*
    lists the ranks of that tail and of every shorter tail of the bucket it starts with, so
    nothing else needs looking at.
    """

    __slots__ = ("always", "buckets", "head_ends", "max_depth", "pending", "segments")

    def __init__(self) -> None:
        self.pending: dict[str, dict[str, list[int]]] = {}
        self.buckets: dict[str, _Bucket] = {}
        self.segments: dict[str, list[int]] = {}  # regexes keyed by a segment they require
        self.always: list[int] = []  # no usable path key: a candidate for every path
        self.head_ends: frozenset[int] = frozenset()
        self.max_depth = 0

    def add(self, key: _PathKey, rank: int) -> None:
        kind, prefix = key
        if kind == "segment":
            self.segments.setdefault(prefix, []).append(rank)
            return
        if not prefix.startswith("/"):
            self.always.append(rank)
            return
        cut = prefix.rfind("/") + 1
        self.pending.setdefault(prefix[:cut], {}).setdefault(prefix[cut:], []).append(rank)

    def freeze(self) -> None:
        for head, tails in self.pending.items():
            chains = {
                tail: tuple(
                    tuple(tails[tail[:n]]) for n in range(len(tail) + 1) if tail[:n] in tails
                )
                for tail in tails
            }
            lengths = tuple(sorted({len(t) for t in tails}, reverse=True))
            self.buckets[head] = (chains, lengths)
        self.head_ends = frozenset(map(len, self.buckets))
        self.max_depth = max((head.count("/") for head in self.buckets), default=0)
        self.pending = {}

    def collect(self, path: str, out: list[int]) -> None:
        if self.always:
            out.extend(self.always)
        if self.segments:
            for segment in path.split("/"):
                required = self.segments.get(segment)
                if required is not None:
                    out.extend(required)
        buckets = self.buckets
        if not buckets:
            return
        # Every head starts with "/": for a path that does not, no lookup below can hit.
        head_ends, depth = self.head_ends, self.max_depth
        end = 1  # the head is path[:end], which ends with one of the path's slashes
        for segment in path.split("/", depth + 1)[1 : depth + 1]:
            bucket = buckets.get(path[:end]) if end in head_ends else None
            if bucket is not None:
                chains, lengths = bucket
                chain = chains.get(segment)
                if chain is None:
                    size = len(segment)
                    for length in lengths:
                        if length < size:
                            chain = chains.get(segment[:length])
                            if chain is not None:
                                break
                if chain is not None:
                    for ranks in chain:
                        out.extend(ranks)
            end += len(segment) + 1


class Router:
    """Match requests to routes. Build it once per configuration; `match` is pure and sync."""

    def __init__(self, routes: Iterable[tuple[Route, Service | None]]) -> None:
        rules: list[tuple[tuple[int, ...], int, _Rule]] = []
        for order, (route, service) in enumerate(routes):
            for key, rule in _compile(route, service):
                rules.append((key, order, rule))
        rules.sort(key=lambda r: (tuple(-k for k in r[0]), r[1]))
        self.rules: tuple[_Rule, ...] = tuple(
            attrs.evolve(rule, rank=rank) for rank, (_, _, rule) in enumerate(rules)
        )
        self._exact: dict[str, _PathIndex] = {}
        self._suffix: dict[str, _PathIndex] = {}  # "*.example.com" keyed by ".example.com"
        self._prefix: dict[str, _PathIndex] = {}  # "example.*" keyed by "example."
        self._any = _PathIndex()
        regex_keys = {
            regex.pattern: _regex_keys(regex.pattern)
            for rule in self.rules
            for regex in rule.regexes or ()
        }
        shared = Counter(key for keys in regex_keys.values() for key in keys)
        for rule in self.rules:
            path_keys = _path_keys(rule, regex_keys, shared)
            for index in self._host_indexes(rule):
                for path_key in path_keys:
                    index.add(path_key, rule.rank)
        for index in (
            *self._exact.values(),
            *self._suffix.values(),
            *self._prefix.values(),
            self._any,
        ):
            index.freeze()

    def _host_indexes(self, rule: _Rule) -> list[_PathIndex]:
        if rule.hosts is None:
            return [self._any]
        out = []
        for pattern, _ in rule.hosts:
            if pattern.startswith("*"):
                out.append(self._suffix.setdefault(pattern[1:], _PathIndex()))
            elif pattern.endswith("*"):
                out.append(self._prefix.setdefault(pattern[:-1], _PathIndex()))
            else:
                out.append(self._exact.setdefault(pattern, _PathIndex()))
        return out

    def match(
        self,
        method: str,
        host: str,
        port: int,
        path: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Match | None:
        """The best route for a request, or None. `host` lower-case without port; `path`
        normalized, without query; `headers` ASGI's raw pairs."""
        candidates: list[int] = []
        index = self._exact.get(host)
        if index is not None:
            index.collect(path, candidates)
        if self._suffix:
            dot = host.find(".")
            while dot != -1:
                index = self._suffix.get(host[dot:])
                if index is not None:
                    index.collect(path, candidates)
                dot = host.find(".", dot + 1)
        if self._prefix:
            dot = host.find(".")
            while dot != -1:
                index = self._prefix.get(host[: dot + 1])
                if index is not None:
                    index.collect(path, candidates)
                dot = host.find(".", dot + 1)
        self._any.collect(path, candidates)
        if len(candidates) > 1:
            candidates = sorted(set(candidates))
        rules = self.rules
        for rank in candidates:
            found = rules[rank].matches(method, host, port, path, headers)
            if found is not None:
                return found
        return None


def _path_keys(
    rule: _Rule, regex_keys: dict[str, list[_PathKey]], shared: Counter[_PathKey]
) -> list[_PathKey]:
    """The keys a rule is indexed under: one per path, all of which a matching path has."""
    if rule.prefixes is not None:
        return [("prefix", p) for p in rule.prefixes]
    if rule.regexes is not None:
        # Of the keys a regex offers, the one the fewest other regexes share.
        return sorted({min(regex_keys[r.pattern], key=lambda k: shared[k]) for r in rule.regexes})
    return [("prefix", "")]


def _regex_keys(pattern: str) -> list[_PathKey]:
    """Its literal prefix, and the whole segments every match of `pattern` contains:
    `/(?P<v>v\\d+)/orders/(.*)` has prefix `/` (useless: every path has it), segment `orders`.
    """
    prefix = literal_prefix(pattern)
    keys: list[_PathKey] = []
    if len(prefix) > 1:
        keys.append(("prefix", prefix))
    try:
        parsed = sre_parse.parse(pattern)
    except re.error:
        parsed = None
    if parsed is not None and not parsed.state.flags & re.IGNORECASE:
        # Runs of literals at the top level are text every match contains; a `/x/` inside
        # one means the path has a segment `x`.
        run: list[str] = []
        for op, av in [*parsed, (None, None)]:
            if op is not None and str(op) == "LITERAL":
                run.append(chr(av))
                continue
            segments = "".join(run).split("/")[1:-1]
            keys.extend(("segment", s) for s in segments if s)
            run = []
    return keys or [("prefix", prefix)]


def _compile(route: Route, service: Service | None) -> list[tuple[tuple[int, ...], _Rule]]:
    hosts: tuple[tuple[str, int | None], ...] | None = None
    if route.hosts:
        parsed: list[tuple[str, int | None]] = []
        for h in route.hosts:
            name, sep, port = h.rpartition(":")
            if sep and port.isdigit():
                parsed.append((name.lower(), int(port)))
            else:
                parsed.append((h.lower(), None))
        hosts = tuple(parsed)
    headers: list[_HeaderMatcher] = []
    for name, values in (route.headers or {}).items():
        plain = frozenset(v.lower() for v in values if not v.startswith("~*"))
        regexes = tuple(
            re.compile(translate_regex(v[2:]), re.IGNORECASE) for v in values if v.startswith("~*")
        )
        headers.append((name.lower().encode("latin-1"), plain, regexes))
    weight = sum(1 for f in (route.methods, route.hosts, route.headers, route.paths) if f)
    plain_hosts = int(bool(route.hosts) and not any("*" in h for h in route.hosts or ()))
    header_count = min(len(headers), 255)
    base = _Rule(
        rank=0,
        route=route,
        service=service,
        methods=frozenset(route.methods) if route.methods else None,
        hosts=hosts,
        headers=tuple(headers),
        prefixes=None,
        regexes=None,
    )
    if not route.paths:
        return [((weight, plain_hosts, header_count, 0, 0, 0), base)]
    groups: dict[int, list[str]] = {}
    patterns = [p[1:] for p in route.paths if p.startswith("~")]
    for p in route.paths:
        if not p.startswith("~"):
            groups.setdefault(len(p), []).append(p)
    out: list[tuple[tuple[int, ...], _Rule]] = []
    if patterns:
        compiled = tuple(re.compile(translate_regex(p)) for p in patterns)
        key = (weight, plain_hosts, header_count, 1, route.regex_priority, 0)
        out.append((key, attrs.evolve(base, regexes=compiled)))
    for length, prefixes in groups.items():
        key = (weight, plain_hosts, header_count, 0, 0, length)
        out.append((key, attrs.evolve(base, prefixes=tuple(prefixes))))
    return out
