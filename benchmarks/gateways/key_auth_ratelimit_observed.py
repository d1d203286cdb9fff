"""Issue 8's (c): (b) (`key_auth_ratelimit`: key-auth + local rate-limiting on the Route)
plus the global prometheus and http-log plugins of `observed`."""

from __future__ import annotations

from . import observers
from .key_auth_ratelimit import build

app = build(observers())
