"""Routing: Kong's traditional_compatible matcher and path normalization."""

from ._paths import normalize_path
from ._router import Match, Router

__all__ = ["Match", "Router", "normalize_path"]
