"""A case-insensitive, ordered, multi-valued header list over ASGI's raw byte pairs.

The raw list is kept as is (lower-case byte names, as ASGI gives them), so forwarding headers
costs no decoding; text is decoded (latin-1) only for the headers a plugin actually reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping

from ._types import RawHeaders

__all__ = ["Headers"]


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


class Headers(MutableMapping[str, str]):
    """Headers a plugin can read and change: `h["X-Tenant"]`, `h.getlist("via")`, `h.add(...)`.

    Reading is case-insensitive and returns the first value; `getlist` returns them all.
    Setting replaces every value of that name; `add` appends one.
    """

    __slots__ = ("raw",)

    def __init__(
        self, raw: RawHeaders | Mapping[str, str] | Iterable[tuple[str, str]] | None = None
    ) -> None:
        if raw is None:
            self.raw: RawHeaders = []
        elif isinstance(raw, list) and (not raw or isinstance(raw[0][0], bytes)):
            self.raw = raw
        else:
            items = raw.items() if isinstance(raw, Mapping) else raw
            self.raw = [(_b(k).lower(), _b(v)) for k, v in items]

    def __getitem__(self, key: str) -> str:
        name = _b(key).lower()
        for k, v in self.raw:
            if k == name:
                return v.decode("latin-1")
        raise KeyError(key)

    def get_bytes(self, key: bytes) -> bytes | None:
        """The first raw value of a lower-case byte name, without decoding."""
        for k, v in self.raw:
            if k == key:
                return v
        return None

    def getlist(self, key: str) -> list[str]:
        name = _b(key).lower()
        return [v.decode("latin-1") for k, v in self.raw if k == name]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | bytes):
            return False
        name = _b(key).lower()
        return any(k == name for k, _ in self.raw)

    def __setitem__(self, key: str, value: str) -> None:
        name = _b(key).lower()
        raw = [(k, v) for k, v in self.raw if k != name]
        raw.append((name, _b(value)))
        self.raw[:] = raw

    def add(self, key: str, value: str) -> None:
        self.raw.append((_b(key).lower(), _b(value)))

    def __delitem__(self, key: str) -> None:
        name = _b(key).lower()
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
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return sorted(self.raw) == sorted(other.raw)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Headers({self.multi_items()!r})"
