"""Kong's Admin API for a pygateway Gateway, as an ASGI app: `AdminAPI(gateway, store)`."""

from ._api import AdminAPI
from ._follow import FollowingGateway

__all__ = ["AdminAPI", "FollowingGateway"]
