"""TLS termination: the certificate a client gets is chosen by the name it asks for (SNI).

`ServerCertificates` makes the one `ssl.SSLContext` a server listens with. At each
handshake its `sni_callback` looks the client's server name up in the configuration's SNIs,
as Kong does: the exact name, then `*.` with the leftmost label replaced
(`*.example.com` for `api.example.com`), then `.*` with the rightmost one replaced
(`example.*` for `example.com`), and then the default certificate (`--ssl-certfile`).

The configuration is read from a callable at each handshake, so a gateway reconfigured (by
the Admin API, or following a store) serves its new certificates from the next handshake
on. One context per certificate is built the first time a configuration is seen, and kept
while later configurations hold the same certificate and key.

With no default certificate, a client naming no known SNI (or none at all) has its
handshake refused with the `unrecognized_name` alert. Kong would present a self-signed
certificate of its own there, which no client trusts either; refusing says why, and never
shows one tenant's certificate to a client that asked for another name.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable, Sequence

from ._entities import Certificate
from ._snapshot import Configuration
from .engines._base import load_cert_chain

__all__ = ["ServerCertificates"]


def server_context(alpn_protocols: Sequence[str] | None = None) -> ssl.SSLContext:
    """A context for serving TLS: the ssl module's defaults for servers, plus ALPN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if alpn_protocols:
        context.set_alpn_protocols(list(alpn_protocols))
    return context


class ServerCertificates:
    """The certificates a server presents, by SNI, from the configuration `source` returns.

    Args:
        source: returns the configuration in force (`lambda: gateway.config`); called at
            each handshake, so it must be cheap. None: no SNIs (only the default).
        default: (certificate chain, private key) PEM texts: presented when no SNI
            matches. None: such handshakes are refused (`unrecognized_name`).
        alpn_protocols: offered by every context (the HTTP server's, e.g. `["http/1.1"]`).

        certificates = ServerCertificates(lambda: gateway.config, default=(cert, key))
        uvicorn.Config(gateway, ssl_context_factory=lambda *_: certificates.context())
    """

    def __init__(
        self,
        source: Callable[[], Configuration | None],
        *,
        default: tuple[str, str] | None = None,
        alpn_protocols: Sequence[str] | None = None,
    ) -> None:
        self._source = source
        self._alpn = list(alpn_protocols or ())
        #: (certificate id, digest of its PEM texts) -> its context.
        self._contexts: dict[tuple[str | None, str], ssl.SSLContext] = {}
        #: The configuration last seen, and its table: SNI name (lower case) -> context.
        self._seen: Configuration | None = None
        self._table: dict[str, ssl.SSLContext] = {}
        self._default = default
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        """The server's context (the same one on every call): it holds the default
        certificate, and switches to the SNI's at each handshake."""
        if self._context is None:
            context = server_context(self._alpn)
            if self._default is not None:
                load_cert_chain(context, *self._default)
            context.sni_callback = self._on_server_name
            self._context = context
        return self._context

    def select(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context for a client asking for `server_name`; None: the default one."""
        if not server_name:
            return None
        table = self._current()
        if not table:
            return None
        name = server_name.lower().rstrip(".")
        found = table.get(name)
        if found is None:
            _, dot, rest = name.partition(".")
            if dot:
                found = table.get(f"*.{rest}")
        if found is None:
            head, dot, _ = name.rpartition(".")
            if dot:
                found = table.get(f"{head}.*")
        return found

    def _on_server_name(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        found = self.select(server_name)
        if found is not None:
            connection.context = found
            return None
        if self._default is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    def _current(self) -> dict[str, ssl.SSLContext]:
        """The SNI table of the configuration in force, built when it changed."""
        config = self._source()
        if config is not self._seen:
            self._table = self._build(config)
            self._seen = config
        return self._table

    def _build(self, config: Configuration | None) -> dict[str, ssl.SSLContext]:
        if config is None or not config.snis:
            self._contexts.clear()
            return {}
        by_id = {c.id: c for c in config.certificates}
        kept: dict[tuple[str | None, str], ssl.SSLContext] = {}
        table: dict[str, ssl.SSLContext] = {}
        for sni in config.snis:
            ref = sni.certificate
            certificate = by_id.get(ref) if isinstance(ref, str) else ref
            if certificate is None:
                continue  # a configuration in force has none such (the snapshot checks)
            key = (certificate.id, _digest(certificate))
            context = kept.get(key) or self._contexts.get(key)
            if context is None:
                context = server_context(self._alpn)
                load_cert_chain(context, certificate.cert, certificate.key)
                if certificate.cert_alt is not None and certificate.key_alt is not None:
                    # The other key type: OpenSSL keeps one pair per type, and picks the
                    # one the client supports.
                    load_cert_chain(context, certificate.cert_alt, certificate.key_alt)
            kept[key] = context
            table[sni.name.lower()] = context
        self._contexts = kept
        return table


def _digest(certificate: Certificate) -> str:
    parts = (certificate.cert, certificate.key, certificate.cert_alt, certificate.key_alt)
    text = "\0".join(p or "" for p in parts).encode()
    return hashlib.sha256(text).hexdigest()
