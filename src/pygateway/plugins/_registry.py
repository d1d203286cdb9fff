"""Plugins by Kong name, for declarative configuration."""

from __future__ import annotations

from typing import TypeVar

from .._exceptions import PluginDeclarationError
from ._base import Plugin, check_declaration

__all__ = ["available", "get", "register"]

P = TypeVar("P", bound=type[Plugin])
_REGISTRY: dict[str, type[Plugin]] = {}


def register(cls: P) -> P:
    """Make a plugin class usable by name in declarative config. Usable as a decorator.

    Raises `PluginDeclarationError` if the class is misdeclared or its name is taken by
    another class.
    """
    check_declaration(cls)
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        if existing.__module__ == cls.__module__ and existing.__qualname__ == cls.__qualname__:
            _REGISTRY[cls.name] = cls  # the same class, re-imported (e.g. a reloaded module)
            return cls
        raise PluginDeclarationError(
            f"plugin name '{cls.name}' is already registered by "
            f"{existing.__module__}.{existing.__qualname__}; choose another name for "
            f"{cls.__module__}.{cls.__qualname__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Plugin]:
    """The plugin class registered under a Kong name, e.g. `get("request-termination")`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LookupError(
            f"plugin '{name}' not enabled; add it to the 'plugins' configuration property"
        ) from None


def available() -> dict[str, type[Plugin]]:
    """Every registered plugin, by name."""
    return dict(sorted(_REGISTRY.items()))
