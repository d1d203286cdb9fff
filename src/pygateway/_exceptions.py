"""The errors pygateway raises.

    PygatewayError
    ├── ConfigurationError        invalid configuration, raised when it is built
    │   └── PluginDeclarationError  a plugin class that cannot work (raised at registration)
    ├── RequestRejected           the client's request cannot be served as sent (a body over
    │                             a size limit, say): answered with its own status and message
    └── UpstreamError             translated at the engine seam; the runloop maps them
        ├── UpstreamConnectError  no connection was made: the next target may be tried  -> 502
        │   └── UpstreamConnectTimeout  (also an UpstreamTimeout)                       -> 504
        ├── UpstreamTimeout       connect, write or read took longer than the Service allows -> 504
        └── UpstreamProtocolError reset, malformed or truncated response                -> 502

Engines raise only `UpstreamError` subclasses; anything else escaping an engine is a bug
and becomes a 500.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "ConfigurationError",
    "PluginDeclarationError",
    "PygatewayError",
    "RequestRejected",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
]

PathPart = str | int


def format_path(path: Sequence[PathPart]) -> str:
    """`("services", 0, "routes", 1, "paths")` -> `services[0].routes[1].paths`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class PygatewayError(Exception):
    """Base class of every error pygateway raises on purpose."""


class ConfigurationError(PygatewayError, ValueError):
    """A configuration that cannot be built, with every problem found and where it is.

    `errors` is a list of `(path, reason)` pairs; `path` is a tuple of field names and list
    indexes, e.g. `("services", 0, "routes", 1, "paths", 0)`. `str(error)` renders one line per
    problem: `services[0].routes[1].paths[0]: non-normalized path, consider use '/a' instead`.
    """

    def __init__(
        self,
        reason: str | None = None,
        *,
        path: Sequence[PathPart] = (),
        errors: Iterable[tuple[tuple[PathPart, ...], str]] | None = None,
    ) -> None:
        collected = list(errors or [])
        if reason is not None:
            collected.insert(0, (tuple(path), reason))
        self.errors: list[tuple[tuple[PathPart, ...], str]] = collected
        super().__init__(str(self))

    def prefixed(self, *prefix: PathPart) -> ConfigurationError:
        """The same errors, located under `prefix`."""
        return type(self)(errors=[((*prefix, *path), reason) for path, reason in self.errors])

    def __str__(self) -> str:
        lines = []
        for path, reason in self.errors:
            where = format_path(path)
            lines.append(f"{where}: {reason}" if where else reason)
        return "\n".join(lines)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_rebuild_configuration_error, (type(self), self.errors))


def _rebuild_configuration_error(
    cls: type[ConfigurationError], errors: list[tuple[tuple[PathPart, ...], str]]
) -> ConfigurationError:
    return cls(errors=errors)


class PluginDeclarationError(ConfigurationError):
    """A plugin class that is declared wrong (a sync phase, a misspelled phase, no name...)."""


class RequestRejected(PygatewayError):
    """The client's request cannot be served as sent; raise it from a plugin, or from a body
    stream the upstream is reading, to answer `status_code` and `message` (no traceback is
    logged, and no upstream is blamed)."""

    status_code = 400
    message = "Bad request"

    def __init__(self, message: str | None = None, *, status_code: int | None = None) -> None:
        if message is not None:
            self.message = message
        if status_code is not None:
            self.status_code = status_code
        super().__init__(self.message)


class UpstreamError(PygatewayError):
    """The upstream could not be reached or did not answer properly."""

    status_code = 502
    message = "An invalid response was received from the upstream server"


class UpstreamConnectError(UpstreamError):
    """No connection could be made; nothing was sent, so another target may be tried."""


class UpstreamTimeout(UpstreamError):
    """The upstream took longer than the Service's connect/write/read timeout."""

    status_code = 504
    message = "The upstream server is timing out"


class UpstreamConnectTimeout(UpstreamConnectError, UpstreamTimeout):
    """Connecting took longer than `connect_timeout`."""

    status_code = 504
    message = "The upstream server is timing out"


class UpstreamProtocolError(UpstreamError):
    """The connection was reset, or the upstream sent something that is not valid HTTP."""
