"""TLS termination: the certificate a client gets is chosen by the name it asks for (SNI).

`ServerCertificates` makes the one `ssl.SSLContext` a server listens with. At each
handshake its `sni_callback` looks the client's server name up in the configuration's SNIs,
in Kong's order (kong/runloop/certificate.lua): the exact name; then `*.` with the leftmost
label replaced (`*.example.com` for `api.example.com`; only when two labels remain, so
`*.com` never serves `example.com`); then `.*` with the rightmost one replaced (`example.*`
for `example.com`); then the catch-all SNI `*`; and then the default certificate
(`--ssl-certfile`). A client that names no server gets the default certificate (or, with
none, the catch-all's).

The configuration is read from a callable at each handshake, so a gateway reconfigured (by
the Admin API, or following a store) serves its new certificates from the next handshake
on. A new configuration costs a table of names only: a certificate's context is built the
first time a handshake selects it (a few milliseconds, once), and kept while later
configurations hold the same certificate and key. A certificate OpenSSL cannot load fails
the handshakes that select it, with one log line, and leaves every other name served.

With no default certificate, a client naming no known SNI (or none at all) has its
handshake refused with the `unrecognized_name` alert. Kong would present a self-signed
certificate of its own there, which no client trusts either; refusing says why, and never
shows one tenant's certificate to a client that asked for another name.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Callable, Sequence

from ._entities import Certificate
from ._snapshot import Configuration
from .engines._base import load_cert_chain

__all__ = ["ServerCertificates"]

logger = logging.getLogger("pygateway.tls")
#: A certificate's context key: its id and the digest of its PEM texts.
_Key = tuple[str | None, str]


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
        #: (certificate id, digest of its PEM texts) -> its context, built on first use.
        self._contexts: dict[_Key, ssl.SSLContext] = {}
        #: The keys whose context could not be built, and why (logged once).
        self._failed: dict[_Key, str] = {}
        #: id(certificate) -> (the certificate, its key): digests are computed once per
        #: Certificate object, not at each reconfiguration.
        self._keys: dict[int, tuple[Certificate, _Key]] = {}
        #: The configuration last seen, and its table: SNI name (lower case) -> key.
        self._seen: Configuration | None = None
        self._table: dict[str, tuple[Certificate, _Key]] = {}
        self._source_error: str | None = None
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
        """The context for a client asking for `server_name`; None: the default one.

        Raises `ssl.SSLError` when the chosen certificate cannot be loaded (the handshake
        fails; other names are still served)."""
        found = self._match(server_name)
        if found is None:
            return None
        certificate, key = found
        context = self._contexts.get(key)
        if context is None:
            context = self._build(certificate, key)
        return context

    def _match(self, server_name: str | None) -> tuple[Certificate, _Key] | None:
        table = self._current()
        if not table:
            return None
        if not server_name:
            return table.get("*") if self._default is None else None
        name = server_name.lower().rstrip(".")
        found = table.get(name)
        if found is None:
            labels = name.split(".")
            if len(labels) >= 3 and labels[0]:
                found = table.get("*." + ".".join(labels[1:]))
            if found is None and len(labels) >= 2 and labels[-1]:
                found = table.get(".".join(labels[:-1]) + ".*")
        return found or table.get("*")

    def _on_server_name(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        try:
            found = self.select(server_name)
        except ssl.SSLError:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR  # logged when it was built
        except Exception as exc:  # an exception here would only be "unraisable"
            message = f"{type(exc).__name__}: {exc}"
            if message != self._source_error:  # once, not at every handshake
                logger.exception("TLS: cannot choose a certificate for %r", server_name)
                self._source_error = message
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        if found is not None:
            connection.context = found
            return None
        if self._default is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    def _current(self) -> dict[str, tuple[Certificate, _Key]]:
        """The SNI table of the configuration in force, made when it changed."""
        config = self._source()
        self._source_error = None
        if config is not self._seen:
            self._table = self._tabulate(config)
            self._seen = config
        return self._table

    def _tabulate(self, config: Configuration | None) -> dict[str, tuple[Certificate, _Key]]:
        """Names -> certificates (no context built); contexts and digests of certificates
        no longer configured are dropped."""
        keys: dict[int, tuple[Certificate, _Key]] = {}
        table: dict[str, tuple[Certificate, _Key]] = {}
        if config is not None and config.snis:
            by_id = {c.id: c for c in config.certificates}
            for sni in config.snis:
                ref = sni.certificate
                certificate = by_id.get(ref) if isinstance(ref, str) else ref
                if certificate is None:
                    continue  # a configuration in force has none such (the snapshot checks)
                entry = keys.get(id(certificate)) or self._keys.get(id(certificate))
                if entry is None or entry[0] is not certificate:
                    entry = (certificate, (certificate.id, _digest(certificate)))
                keys[id(certificate)] = entry
                table[sni.name.lower()] = entry
        live = {key for _, key in keys.values()}
        self._keys = keys
        self._contexts = {k: c for k, c in self._contexts.items() if k in live}
        self._failed = {k: r for k, r in self._failed.items() if k in live}
        return table

    def _build(self, certificate: Certificate, key: _Key) -> ssl.SSLContext:
        failed = self._failed.get(key)
        if failed is not None:
            raise ssl.SSLError(failed)
        context = server_context(self._alpn)
        try:
            load_cert_chain(context, certificate.cert, certificate.key)
            if certificate.cert_alt is not None and certificate.key_alt is not None:
                # The other key type: OpenSSL keeps one pair per type, and picks the one
                # the client supports.
                load_cert_chain(context, certificate.cert_alt, certificate.key_alt)
        except (ssl.SSLError, ValueError) as exc:
            reason = f"certificate {certificate.id} cannot be loaded: {exc}"
            logger.error("TLS: %s; handshakes for its SNIs fail", reason)
            self._failed[key] = reason
            raise ssl.SSLError(reason) from None
        self._contexts[key] = context
        return context


def _digest(certificate: Certificate) -> str:
    parts = (certificate.cert, certificate.key, certificate.cert_alt, certificate.key_alt)
    text = "\0".join(p or "" for p in parts).encode()
    return hashlib.sha256(text).hexdigest()
