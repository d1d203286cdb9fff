"""Kong's Admin API for a pygateway Gateway, as an ASGI app: `AdminAPI(gateway, store)`."""

from ._api import AdminAPI

__all__ = ["AdminAPI"]
