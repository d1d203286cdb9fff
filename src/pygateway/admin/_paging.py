"""Listings a page at a time, as Kong pages them: `size` entities after an opaque `offset`,
and the URL of the next page (null on the last one). Tag filters apply before paging."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from . import _errors
from ._errors import ApiError

__all__ = ["page"]

MAX_SIZE = 1000
DEFAULT_SIZE = 100


def page(
    docs: Sequence[Mapping[str, Any]],
    query: Mapping[str, str],
    path: str,
    show: Callable[[Mapping[str, Any]], Any],
) -> dict[str, Any]:
    """One page of `docs` (in id order) for a request to `path` with `query`."""
    try:
        size = int(query.get("size", DEFAULT_SIZE))
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_SIZE:
        raise ApiError.coded(
            400, _errors.INVALID_SIZE, f"size must be an integer between 1 and {MAX_SIZE}"
        )
    after = decode_offset(query["offset"]) if "offset" in query else ""
    tags = query.get("tags")
    selected = [d for d in docs if d["id"] > after and tagged(d, tags)]
    shown, more = selected[:size], len(selected) > size
    offset = encode_offset(shown[-1]["id"]) if more else None
    next_url = None
    if offset is not None:
        args = {k: v for k, v in query.items() if k not in ("offset", "size")}
        next_url = f"{path}?{urlencode({**args, 'offset': offset, 'size': size})}"
    return {"data": [show(d) for d in shown], "next": next_url, "offset": offset}


def tagged(doc: Mapping[str, Any], tags: str | None) -> bool:
    """Kong's tag filter: `a,b` needs both, `a/b` either."""
    if not tags:
        return True
    have = set(doc.get("tags") or ())
    if "/" in tags:
        return bool(have & set(tags.split("/")))
    return set(tags.split(",")) <= have


def encode_offset(id_: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([id_]).encode("utf-8")).decode("ascii")


def decode_offset(offset: str) -> str:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(offset.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        decoded = None
    if not (isinstance(decoded, list) and len(decoded) == 1 and isinstance(decoded[0], str)):
        raise ApiError.coded(
            400, _errors.INVALID_OFFSET, f"'{offset}' is not a valid offset: bad base64 encoding"
        )
    return str(decoded[0])
