"""The `pygateway` command (also `python -m pygateway`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from ._exceptions import ConfigurationError
from ._version import __version__

__all__ = ["main"]

_CONFIG_ENV = "PYGATEWAY_CONFIG"
_TRUSTED_ENV = "PYGATEWAY_TRUSTED_IPS"
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_STORE_ENV = "PYGATEWAY_STORE"
_ADMIN_TOKEN_ENV = "PYGATEWAY_ADMIN_TOKEN"


def gateway_from_env() -> Any:
    """The gateway of `pygateway run`'s declarative file (or an empty one)."""
    from ._gateway import Gateway

    path = os.environ.get(_CONFIG_ENV)
    trusted = [ip for ip in os.environ.get(_TRUSTED_ENV, "").split(",") if ip.strip()]
    if path:
        return Gateway.from_config(path, trusted_ips=trusted)
    return Gateway(trusted_ips=trusted)


def app_from_env() -> Any:
    """The app `pygateway run` serves (a factory, so every worker builds its own): the
    gateway, following the configuration store when one is given (`--store`)."""
    gateway = gateway_from_env()
    store_url = os.environ.get(_STORE_ENV)
    if not store_url or store_url == "memory://":
        return gateway
    from .admin import FollowingGateway
    from .stores import open_config_store

    return FollowingGateway(gateway, open_config_store(store_url))


def demo_gateway() -> Any:
    """The demo: a few routes in front of the built-in echo upstream (no services needed)."""
    from . import plugins
    from ._entities import Route, Service
    from ._gateway import Gateway
    from .testing import echo_engine

    return Gateway(
        services=[
            Service(
                name="echo",
                url="http://echo.local/",
                routes=[
                    Route(name="echo", paths=["/echo"]),
                    Route(name="users", paths=["~/users/(?<user_id>\\d+)$"], strip_path=False),
                    Route(
                        name="blocked",
                        paths=["/blocked"],
                        plugins=[
                            plugins.RequestTermination(
                                status_code=403, message="Blocked by the demo"
                            ),
                        ],
                    ),
                ],
            ),
        ],
        engines={"echo.local": echo_engine()},
    )


_DEMO_HELP = """\
pygateway demo on http://{host}:{port} (an in-process echo upstream behind it)

Try:
  curl -i http://{host}:{port}/echo/hello?x=1        # proxied; the echo shows what upstream got
  curl -i -X POST http://{host}:{port}/echo -d 'hi'  # the body is streamed through
  curl -i http://{host}:{port}/users/42              # a regex route
  curl -i http://{host}:{port}/blocked               # request-termination answers 403
  curl -i http://{host}:{port}/nowhere               # no route: Kong's 404
  curl -i -H 'Accept: text/html' http://{host}:{port}/nowhere

Press Ctrl+C to stop.
"""


def _serve(
    app: Any,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    status: tuple[Any, int] | None = None,
    log_config: dict[str, Any] | None = None,
    admin: tuple[Any, str, int] | None = None,
    ssl: dict[str, Any] | None = None,
) -> int:
    try:
        import uvicorn
    except ImportError:
        print("pygateway: serving needs uvicorn: pip install 'pygateway[server]'", file=sys.stderr)
        return 2
    status_server = _start_status(status[0], status[1], log_level) if status is not None else None
    admin_server = None
    if admin is not None and workers > 1:
        # The supervisor serves it; the workers follow the store it writes to.
        admin_server = _start_status(admin[0], admin[2], log_level, host=admin[1])
        admin = None
    try:
        return _run(uvicorn, app, host, port, workers, log_level, log_config, admin, ssl)
    finally:
        for server in (status_server, admin_server):
            if server is not None:
                server.should_exit = True


def _start_status(app: Any, port: int, log_level: str, host: str = "127.0.0.1") -> Any:
    """Serve the status app (/metrics) on 127.0.0.1:port from a thread of this process.

    With workers, this is the supervisor: it has no gateway, and serves what the workers
    wrote to PROMETHEUS_MULTIPROC_DIR. Its event loop is its own; it only reads. (The
    Admin API is served the same way by a supervisor: its gateway serves no traffic.)
    """
    import threading

    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        access_log=False,
        server_header=False,
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name="pygateway-status", daemon=True).start()
    return server


def _run(
    uvicorn: Any,
    app: Any,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    log_config: dict[str, Any] | None = None,
    admin: tuple[Any, str, int] | None = None,
    ssl: dict[str, Any] | None = None,
) -> int:
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
        "access_log": False,
    }
    if log_config is not None:
        # uvicorn applies it in every worker process too.
        options["log_config"] = log_config
    if workers > 1:
        uvicorn.run(
            "pygateway._cli:app_from_env", factory=True, workers=workers, **options, **(ssl or {})
        )
    elif admin is None:
        uvicorn.run(app, **options, **(ssl or {}))
    else:
        _run_with_admin(uvicorn, uvicorn.Config(app, **options, **(ssl or {})), admin)
    return 0


def _run_with_admin(uvicorn: Any, config: Any, admin: tuple[Any, str, int]) -> None:
    """Serve the gateway and the Admin API from one event loop: the Admin API's writes
    reconfigure the gateway on the loop that serves it."""
    import asyncio

    app, host, port = admin
    admin_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        access_log=False,
        server_header=False,
        log_config=None,
        log_level=config.log_level,
    )
    main_server, admin_server = uvicorn.Server(config), uvicorn.Server(admin_config)

    async def both() -> None:
        # The admin server runs without uvicorn's signal handling (`_serve`): the main
        # one handles Ctrl+C / SIGTERM, and the admin one stops with it.
        admin_task = asyncio.ensure_future(admin_server._serve())
        try:
            await main_server.serve()
        finally:
            admin_server.should_exit = True
            await admin_task

    try:
        asyncio.run(both())
    except KeyboardInterrupt:
        pass


def _log_config(log_format: str, access_log: bool, log_level: str) -> dict[str, Any]:
    """The logging of `pygateway run`: uvicorn's lines and the gateway's (`pygateway.*`) on
    stderr, the access log (`pygateway.access`, one line per request) on stdout; as text
    (uvicorn's style) or as JSON lines. uvicorn's own access log stays off: the gateway's
    replaces it. `--log-level warning` silences the access log, as it does uvicorn's."""
    if log_format == "json":
        formatter: dict[str, Any] = {"()": "pygateway.logging.JsonFormatter"}
    else:
        formatter = {
            "()": "uvicorn.logging.DefaultFormatter",
            "fmt": "%(levelprefix)s %(message)s",
            "use_colors": None,
        }
    level = log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # uvicorn expects both names (it sets `use_colors` on them).
        "formatters": {"default": formatter, "access": dict(formatter)},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "access",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "pygateway": {"handlers": ["default"], "level": level, "propagate": False},
            "pygateway.access": {
                "handlers": ["access"],
                "level": level if access_log else "WARNING",
                "propagate": False,
            },
        },
    }


def _bind_error(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on, or None if it can."""
    import errno
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OverflowError:
            return "the port must be 0-65535"
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the address is in use"
            return exc.strerror or str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pygateway", description="An embeddable API gateway.")
    parser.add_argument("--version", action="version", version=f"pygateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve a gateway (with uvicorn)")
    run.add_argument("config", nargs="?", help="a Kong declarative file (YAML or JSON)")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--workers", type=int, default=1)
    run.add_argument("--trusted-ips", default="", help="comma-separated IPs/CIDRs")
    run.add_argument("--log-level", default="info")
    run.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log every request on stdout (the pygateway.access logger; default: on)",
    )
    run.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text lines, or one JSON object per line (default: text)",
    )
    run.add_argument(
        "--status-port",
        type=int,
        help="serve /metrics on 127.0.0.1:STATUS_PORT (needs pygateway[prometheus])",
    )
    run.add_argument("--admin-port", type=int, help="serve the Admin API on this port")
    run.add_argument(
        "--admin-host", default="127.0.0.1", help="the Admin API's address (default: 127.0.0.1)"
    )
    run.add_argument(
        "--admin-token",
        default=os.environ.get(_ADMIN_TOKEN_ENV),
        help=f"require this token on Admin API requests (default: ${_ADMIN_TOKEN_ENV})",
    )
    run.add_argument(
        "--admin-read-only", action="store_true", help="the Admin API answers reads only"
    )
    run.add_argument(
        "--store",
        default="memory://",
        help="where the configuration is kept: memory:// (default), sqlite:///PATH or "
        "postgresql://...; with a store, every worker follows its changes",
    )
    run.add_argument(
        "--ssl-certfile",
        help="serve HTTPS with this certificate (PEM), for the names no SNI of the "
        "configuration holds (HTTPS is on without it when the configuration has SNIs)",
    )
    run.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")

    demo = sub.add_parser("demo", help="serve a demo gateway in front of an echo upstream")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)

    config = sub.add_parser("config", help="work with declarative configuration files")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a file (exit 1 on errors)")
    check.add_argument("file")
    show = config_sub.add_parser("show", help="print a file as pygateway understood it")
    show.add_argument("file")
    export = config_sub.add_parser(
        "export", help="print a store's configuration in Kong's declarative format"
    )
    export.add_argument("--store", required=True, help="sqlite:///PATH or postgresql://...")
    importer = config_sub.add_parser(
        "import", help="replace a store's configuration with a file's (validated first)"
    )
    importer.add_argument("file")
    importer.add_argument("--store", required=True, help="sqlite:///PATH or postgresql://...")

    args = parser.parse_args(argv)
    if args.command == "config" and args.config_command in ("export", "import"):
        return _store_command(args)
    if args.command == "config":
        from ._config import dump, load

        try:
            loaded = load(args.file)
            from ._snapshot import Snapshot

            Snapshot(loaded)
        except ConfigurationError as exc:
            print(f"pygateway: {args.file} is invalid:", file=sys.stderr)
            for line in str(exc).splitlines():
                print(f"  {line}", file=sys.stderr)
            return 1
        if args.config_command == "show":
            print(json.dumps(dump(loaded), indent=2))
        else:
            print(f"{args.file}: configuration is valid")
        return 0

    host, port = args.host, args.port
    bind_error = _bind_error(host, port)
    if bind_error is not None:
        print(f"pygateway: cannot listen on {host}:{port}: {bind_error}", file=sys.stderr)
        return 1
    if args.command == "demo":
        print(_DEMO_HELP.format(host=host, port=port), flush=True)
        return _serve(demo_gateway(), host, port, 1, "warning")
    if args.config:
        os.environ[_CONFIG_ENV] = os.path.abspath(args.config)
    os.environ[_TRUSTED_ENV] = args.trusted_ips
    status_port = args.status_port
    if status_port is not None:
        problem = _bind_error("127.0.0.1", status_port)
        if status_port == port:
            problem = "the same port as --port"
        elif problem is None and args.workers > 1 and not os.environ.get(_MULTIPROC_ENV):
            # Each worker would count apart, and a scrape would see one worker's share.
            problem = (
                f"with --workers, set {_MULTIPROC_ENV} to an empty directory "
                "(prometheus-client's multiprocess mode)"
            )
        if problem is not None:
            print(f"pygateway: --status-port {status_port}: {problem}", file=sys.stderr)
            return 1
    try:
        app = app_from_env()
    except ConfigurationError as exc:
        print(f"pygateway: {args.config} is invalid:", file=sys.stderr)
        for line in str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return 1
    status: tuple[Any, int] | None = None
    if status_port is not None:
        from . import metrics

        try:
            # With workers, this process is the supervisor: it has no gateway.
            status = (metrics.app(app if args.workers <= 1 else None), status_port)
        except ConfigurationError as exc:
            print(f"pygateway: --status-port: {exc}", file=sys.stderr)
            return 2
    log_config = _log_config(args.log_format, args.access_log, args.log_level)
    ssl: dict[str, Any] | None = None
    if args.ssl_certfile or args.ssl_keyfile:
        if not (args.ssl_certfile and args.ssl_keyfile):
            print("pygateway: --ssl-certfile and --ssl-keyfile go together", file=sys.stderr)
            return 1
        ssl = {"ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile}
    admin = None
    if args.store != "memory://" or args.admin_port is not None:
        prepared = _prepare_store(args, app, port)
        if isinstance(prepared, int):
            return prepared
        app, admin = prepared
    # HTTPS or not is decided here, once: a server cannot start TLS on a listening socket.
    snis = bool(_configuration_of(app).snis)
    if ssl is not None or snis:
        if not _sni_capable():
            if ssl is None:
                print(
                    "pygateway: serving certificates by SNI needs a uvicorn with "
                    "ssl_context_factory: pip install -U uvicorn",
                    file=sys.stderr,
                )
                return 2
            _warn(
                "this uvicorn has no ssl_context_factory: every client gets the "
                "--ssl-certfile certificate, and the SNIs of the configuration are ignored "
                "(pip install -U uvicorn)"
            )
        else:
            ssl = {**(ssl or {}), "ssl_context_factory": _ssl_context}
    elif admin is not None or args.store != "memory://":
        _warn(
            "serving plain HTTP: certificates and SNIs added later (Admin API or store) "
            "are not served until a restart; start with --ssl-certfile/--ssl-keyfile, or "
            "with SNIs in the configuration, to serve HTTPS"
        )
    return _serve(app, host, port, args.workers, args.log_level, status, log_config, admin, ssl)


def _warn(message: str) -> None:
    print(f"pygateway: warning: {message}", file=sys.stderr)


def _sni_capable() -> bool:
    import inspect

    try:
        import uvicorn
    except ImportError:
        return True  # `_serve` says how to install it
    return "ssl_context_factory" in inspect.signature(uvicorn.Config).parameters


def _configuration_of(app: Any) -> Any:
    """The configuration in force of the gateway `app` serves (through FollowingGateway
    and uvicorn's middleware, if any)."""
    for _ in range(5):
        if hasattr(app, "snapshot"):
            return app.config
        app = getattr(app, "gateway", None) or getattr(app, "app", None)
    from ._snapshot import Configuration

    return Configuration()


def _ssl_context(config: Any, default_factory: Any) -> Any:
    """uvicorn's `ssl_context_factory` for `pygateway run`: TLS with the certificate of
    each SNI of the gateway's configuration in force (read at each handshake, so SNIs added
    through the Admin API or a store are served without a restart), and the
    `--ssl-certfile` certificate for other names. A module-level function: each worker
    process calls it for its own gateway."""
    from pathlib import Path

    from ._tls import ServerCertificates

    default = None
    if config.ssl_certfile:
        cert = Path(config.ssl_certfile).read_text(encoding="utf-8")
        key = Path(config.ssl_keyfile or config.ssl_certfile).read_text(encoding="utf-8")
        default = (cert, key)
    certificates = ServerCertificates(
        lambda: _configuration_of(getattr(config, "loaded_app", None)),
        default=default,
        alpn_protocols=getattr(config.http_protocol_class, "alpn_protocols", None),
    )
    return certificates.context()


def _prepare_store(args: Any, gateway: Any, port: int) -> tuple[Any, Any] | int:
    """For `run --store/--admin-port`: the app to serve and the Admin API to serve beside
    it (host, port), after checking the store answers; or an exit status."""
    from .admin import AdminAPI, FollowingGateway
    from .stores import StoreError, open_config_store

    try:
        store = open_config_store(args.store)
    except (ValueError, StoreError) as exc:
        print(f"pygateway: --store: {exc}", file=sys.stderr)
        return 1
    admin_port = args.admin_port
    if admin_port is not None:
        problem = _bind_error(args.admin_host, admin_port)
        if admin_port == port:
            problem = "the same port as --port"
        if problem is None and args.workers > 1 and args.store == "memory://":
            problem = (
                "with --workers, the Admin API needs a store every worker reads: "
                "--store sqlite:///PATH or postgresql://..."
            )
        if problem is not None:
            print(f"pygateway: --admin-port {admin_port}: {problem}", file=sys.stderr)
            return 1
    os.environ[_STORE_ENV] = args.store
    following = FollowingGateway(gateway, store)
    try:
        # The store's configuration wins; an empty store gets the file's.
        anyio.run(following.sync)
        anyio.run(store.aclose)
    except StoreError as exc:
        print(f"pygateway: --store: {exc}", file=sys.stderr)
        return 1
    except ConfigurationError as exc:
        print(f"pygateway: the configuration in {store.url} is invalid: {exc}", file=sys.stderr)
        return 1
    app = gateway if args.store == "memory://" else following
    if admin_port is None:
        return app, None
    if args.workers > 1:
        # The supervisor's gateway serves no traffic: it checks what the Admin API writes.
        gateway = gateway_from_env()
    api = AdminAPI(gateway, store, token=args.admin_token, read_only=args.admin_read_only)
    return app, (api, args.admin_host, admin_port)


def _store_command(args: Any) -> int:
    """`config export` (a store's configuration, as Kong's declarative JSON) and `config
    import` (a file into a store, replacing what it held, validated first)."""
    from ._config import dump, load
    from .admin._model import configuration, documents
    from .stores import StoreError, open_config_store

    async def export(store: Any) -> dict[str, Any]:
        try:
            return dump(configuration((await store.load()).entities))
        finally:
            await store.aclose()

    async def import_(store: Any, entities: Any) -> int:
        try:
            return int(await store.replace(entities, expected=await store.revision()))
        finally:
            await store.aclose()

    try:
        store = open_config_store(args.store)
        if args.config_command == "export":
            text = json.dumps(anyio.run(export, store), indent=2)
            try:
                print(text)
            except BrokenPipeError:  # `pygateway config export | head`
                sys.stderr.close()
            return 0
        revision = anyio.run(import_, store, documents(load(args.file)))
    except (ValueError, StoreError) as exc:
        print(f"pygateway: --store: {exc}", file=sys.stderr)
        return 1
    except ConfigurationError as exc:
        source = args.file if args.config_command == "import" else store.url
        print(f"pygateway: {source} is invalid:", file=sys.stderr)
        for line in str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"{args.file}: imported into {store.url} (revision {revision})")
    return 0
