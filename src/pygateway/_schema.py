"""Field checking shared by entities and plugins.

Every attrs class here is checked the same way, whether it was built in Python or loaded from
a declarative file: the annotation of each field says what it accepts (with Kong's wording,
"expected an integer"), lists become tuples and mappings read-only `FrozenMap`s (so entities
stay immutable and hashable), and `field(check=...)` adds a rule of its own. All problems are
collected into one `ConfigurationError` naming each field path.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar, Union

import attrs

from ._exceptions import ConfigurationError, PathPart

Check = Callable[[Any], "str | None"]
_NOTHING: Any = attrs.NOTHING
K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """A read-only, hashable mapping: what a mapping field of an entity or plugin holds, so
    that entities stay immutable and can be hashed. Equal to a dict with the same items."""

    __slots__ = ("_data", "_hash")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(items)
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __repr__(self) -> str:
        return repr(self._data)


def freeze(value: Any) -> Any:
    """`value` with its dicts and lists made FrozenMaps and tuples, all the way down."""
    if isinstance(value, Mapping):
        return FrozenMap((k, freeze(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, set):
        return frozenset(value)
    return value


def plain(value: Any) -> Any:
    """`value` as plain JSON-able data: mappings become dicts, sequences lists, and nested
    records (attrs instances) dicts of all their fields."""
    if attrs.has(type(value)):
        return {a.name: plain(getattr(value, a.name)) for a in attrs.fields(type(value))}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


_NAME = re.compile(r"[\w.~-]+")


def check_name(value: str | None) -> str | None:
    """Kong's rule for entity names (`name`, `instance_name`)."""
    if value is not None and not _NAME.fullmatch(value):
        return (
            f"invalid value '{value}': the only accepted ascii characters are "
            "alphanumerics or ., -, _, and ~"
        )
    return None


def field(
    default: Any = _NOTHING,
    *,
    factory: Callable[[], Any] | None = None,
    check: Check | None = None,
    between: tuple[int, int] | None = None,
    eq: bool = True,
    kw_only: bool = False,
) -> Any:
    """An attrs field with an extra rule: `check(value)` returns an error text or None."""
    checks: list[Check] = []
    if between is not None:
        low, high = between
        checks.append(
            lambda v: (
                None
                if v is None or low <= v <= high
                else f"value should be between {low} and {high}"
            )
        )
    if check is not None:
        checks.append(check)
    if factory is not None:
        return attrs.field(factory=factory, metadata={"checks": checks}, eq=eq, kw_only=kw_only)
    return attrs.field(default=default, metadata={"checks": checks}, eq=eq, kw_only=kw_only)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def validate(instance: Any) -> None:
    """Check and normalize every field of an attrs instance in place (it may be frozen)."""
    cls = type(instance)
    hints = _hints(cls)
    errors: list[tuple[tuple[PathPart, ...], str]] = []
    for a in attrs.fields(cls):
        value = getattr(instance, a.name)
        hint = hints.get(a.name, Any)
        before = len(errors)
        new = coerce(value, hint, (a.name,), errors)
        if len(errors) == before:
            for check in a.metadata.get("checks", ()):
                reason = check(new)
                if reason:
                    errors.append(((a.name,), reason))
                    break
        if new is not value:
            object.__setattr__(instance, a.name, new)
    if errors:
        raise ConfigurationError(errors=errors)


def describe(hint: Any) -> str:
    if hint is str:
        return "a string"
    if hint is bool:
        return "a boolean"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    origin = typing.get_origin(hint)
    if origin in (tuple, list, frozenset, set, Sequence):
        return "an array"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return "a map"
    if isinstance(hint, type):
        return f"a {hint.__name__}"
    return str(hint)


def coerce(
    value: Any,
    hint: Any,
    path: tuple[PathPart, ...],
    errors: list[tuple[tuple[PathPart, ...], str]],
) -> Any:
    """Return `value` checked against `hint` (lists become tuples); record errors."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            errors.append((path, "required field missing"))
            return value
        options = [a for a in args if a is not type(None)]
        first_errors: list[tuple[tuple[PathPart, ...], str]] | None = None
        for option in options:
            trial: list[tuple[tuple[PathPart, ...], str]] = []
            result = coerce(value, option, path, trial)
            if not trial:
                return result
            if first_errors is None:
                first_errors = trial
        if len(options) == 1 and first_errors:
            errors.extend(first_errors)
        else:
            errors.append((path, "expected " + " or ".join(describe(o) for o in options)))
        return value
    if value is None:
        errors.append((path, "required field missing"))
        return value
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed or (type(value) is bool and True not in allowed):
            errors.append((path, "expected one of: " + ", ".join(str(a) for a in allowed)))
        return value
    if hint is str:
        if not isinstance(value, str):
            errors.append((path, "expected a string"))
        return value
    if hint is bool:
        if not isinstance(value, bool):
            errors.append((path, "expected a boolean"))
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            errors.append((path, "expected an integer"))
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append((path, "expected a number"))
        elif not math.isfinite(value):
            # NaN compares false with everything: a limit of NaN would be no limit.
            errors.append((path, "expected a finite number"))
        return value
    if origin in (tuple, list, frozenset, set, Sequence) or hint in (tuple, list):
        if isinstance(value, str | bytes | Mapping) or not isinstance(
            value, list | tuple | set | frozenset
        ):
            errors.append((path, "expected an array"))
            return value
        args = typing.get_args(hint)
        item = args[0] if args else Any
        out = tuple(coerce(v, item, (*path, i), errors) for i, v in enumerate(value))
        return out
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            errors.append((path, "expected a map"))
            return value
        args = typing.get_args(hint)
        item = args[1] if len(args) == 2 else Any
        if item is Any:
            return freeze(value)
        return FrozenMap((k, coerce(v, item, (*path, k), errors)) for k, v in value.items())
    if isinstance(hint, type):
        if issubclass(hint, Record) and isinstance(value, Mapping):
            return record(hint, value, path, errors)
        if not isinstance(value, hint):
            errors.append((path, f"expected {describe(hint)}"))
        return value
    return value


class Record:
    """Base of nested configuration records (an Upstream's `healthchecks`): a field typed
    with one accepts a mapping too, as declarative files give it. Subclasses are attrs
    classes; they are checked like entities."""

    def __attrs_post_init__(self) -> None:
        validate(self)


def record(
    cls: type[Any],
    value: Mapping[str, Any],
    path: tuple[PathPart, ...],
    errors: list[tuple[tuple[PathPart, ...], str]],
) -> Any:
    """A nested record given as a mapping (`{"active": {"timeout": 2}}`): built as `cls`,
    with unknown keys and the record's own errors located under `path`."""
    known = {a.name for a in attrs.fields(cls) if a.init}
    unknown = [k for k in value if k not in known]
    for key in unknown:
        errors.append(((*path, key), "unknown field"))
    if unknown:
        return value
    try:
        return cls(**value)
    except ConfigurationError as exc:
        errors.extend(exc.prefixed(*path).errors)
        return value
