"""A case-insensitive, ordered, multi-valued header list over ASGI's raw byte pairs.

`raw` is the byte list itself (lower-case names, as ASGI gives them), so forwarding headers
costs no decoding. Text is converted only for the headers a plugin reads or writes: values
are UTF-8, and bytes that are not valid UTF-8 read as lone surrogates (`surrogateescape`), so
whatever a client sent is written back unchanged. Names are ASCII tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping

from ._types import RawHeaders

__all__ = ["Headers"]

# RFC 9110 5.6.2: token = 1*tchar
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN = re.compile(rb"[\r\n\x00]")


def _name(key: str | bytes) -> bytes | None:
    """A name as looked up in `raw` (None: no header can have it)."""
    if isinstance(key, bytes):
        return key.lower()
    try:
        return key.encode("latin-1").lower()  # as `__iter__` decodes names
    except UnicodeEncodeError:
        return None


def _checked_name(key: str | bytes) -> bytes:
    # Non-ASCII becomes "?", which is no token character.
    name = key if isinstance(key, bytes) else key.encode("ascii", "replace")
    if not _TOKEN.fullmatch(name):
        raise ValueError(
            f"invalid header name {key!r}: use letters, digits and !#$%&'*+-.^_`|~ only"
        )
    return name.lower()


def _checked_value(key: str | bytes, value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        try:
            data = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise ValueError(f"header {key!r}: the value is not encodable as UTF-8") from None
    else:
        raise TypeError(f"header {key!r}: expected a str value (got {type(value).__name__})")
    if _FORBIDDEN.search(data):
        raise ValueError(f"header {key!r}: the value must not contain CR, LF or NUL")
    return data


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class Headers(MutableMapping[str, str]):
    """Headers a plugin can read and change: `h["X-Tenant"]`, `h.getlist("via")`, `h.add(...)`.

    Reading is case-insensitive and returns the first value; `getlist` returns them all.
    Setting replaces every value of that name; `add` appends one. A name that is not an
    HTTP token, or a value containing CR, LF or NUL, raises `ValueError`.

    `Headers(mapping_or_pairs)` copies what it is given; `Headers.wrap(raw)` adopts an ASGI
    byte list as is (no copy, no checks), so changes show through to that list.
    """

    __slots__ = ("raw",)

    def __init__(
        self,
        headers: Mapping[str, str]
        | Iterable[tuple[str, str]]
        | Iterable[tuple[bytes, bytes]]
        | None = None,
    ) -> None:
        self.raw: RawHeaders
        if headers is None:
            self.raw = []
        elif isinstance(headers, Headers):
            self.raw = list(headers.raw)
        else:
            items = headers.items() if isinstance(headers, Mapping) else headers
            self.raw = [(_checked_name(k), _checked_value(k, v)) for k, v in items]

    @classmethod
    def wrap(cls, raw: RawHeaders) -> Headers:
        """Headers over `raw` itself: an ASGI list of lower-case byte pairs, trusted as is."""
        headers = cls.__new__(cls)
        headers.raw = raw
        return headers

    def __getitem__(self, key: str) -> str:
        name = _name(key)
        for k, v in self.raw:
            if k == name:
                return _text(v)
        raise KeyError(key)

    def get_bytes(self, key: bytes) -> bytes | None:
        """The first raw value of a lower-case byte name, without decoding."""
        for k, v in self.raw:
            if k == key:
                return v
        return None

    def getlist(self, key: str) -> list[str]:
        name = _name(key)
        return [_text(v) for k, v in self.raw if k == name]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | bytes):
            return False
        name = _name(key)
        return any(k == name for k, _ in self.raw)

    def __setitem__(self, key: str, value: str) -> None:
        name = _checked_name(key)
        data = _checked_value(key, value)
        raw = [(k, v) for k, v in self.raw if k != name]
        raw.append((name, data))
        self.raw[:] = raw

    def add(self, key: str, value: str) -> None:
        self.raw.append((_checked_name(key), _checked_value(key, value)))

    def __delitem__(self, key: str) -> None:
        name = _name(key)
        before = len(self.raw)
        self.raw[:] = [(k, v) for k, v in self.raw if k != name]
        if len(self.raw) == before:
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        seen: set[bytes] = set()
        for k, _ in self.raw:
            if k not in seen:
                seen.add(k)
                yield k.decode("latin-1")

    def __len__(self) -> int:
        return len({k for k, _ in self.raw})

    def multi_items(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), _text(v)) for k, v in self.raw]

    def copy(self) -> Headers:
        return Headers.wrap(list(self.raw))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return sorted(self.raw) == sorted(other.raw)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Headers({self.multi_items()!r})"
