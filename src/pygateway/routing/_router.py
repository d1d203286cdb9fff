"""Kong's traditional_compatible router, compiled once per configuration.

Each route is split like Kong does (one rule per prefix length, one for all its regexes) and
given Kong's priority: number of fields set > plain hosts only > header count > regex >
regex_priority > prefix length; ties go to the route defined first. Rules are indexed by host
and by path prefix (regexes by their literal prefix), so a match looks at the few rules that
could apply instead of scanning them all; the best-ranked candidate that fully matches wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
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


class _PathIndex:
    """Rule ranks by literal path prefix, bucketed by prefix length."""

    __slots__ = ("by_length", "lengths")

    def __init__(self) -> None:
        self.by_length: dict[int, dict[str, list[int]]] = {}
        self.lengths: tuple[int, ...] = ()

    def add(self, prefix: str, rank: int) -> None:
        self.by_length.setdefault(len(prefix), {}).setdefault(prefix, []).append(rank)

    def freeze(self) -> None:
        self.lengths = tuple(sorted(self.by_length, reverse=True))

    def collect(self, path: str, out: list[int]) -> None:
        n = len(path)
        by_length = self.by_length
        for length in self.lengths:
            if length <= n:
                ranks = by_length[length].get(path[:length])
                if ranks:
                    out.extend(ranks)


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
        for rule in self.rules:
            prefixes = _path_keys(rule)
            for index in self._host_indexes(rule):
                for prefix in prefixes:
                    index.add(prefix, rule.rank)
        for index in (
            *self._exact.values(),
            *self._suffix.values(),
            *self._prefix.values(),
            self._any,
        ):
            index.freeze()
        self._suffix_lengths = sorted({k.count(".") for k in self._suffix}, reverse=True)

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


def _path_keys(rule: _Rule) -> list[str]:
    if rule.prefixes is not None:
        return list(rule.prefixes)
    if rule.regexes is not None:
        return sorted({literal_prefix(r.pattern) for r in rule.regexes})
    return [""]


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
