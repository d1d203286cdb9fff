"""Balancers pick a peer of an Upstream for each try; health checks keep bad peers out.

Algorithms (an Upstream's `algorithm`): `RoundRobin` (smooth weighted), `ConsistentHashing`
(Ketama ring, `hash_on`), `LeastConnections`, `Latency` (EWMA of response times).
"""

from ._base import Balancer, Peer
from ._consistent_hashing import ConsistentHashing
from ._health import (
    ActiveHealthcheck,
    ActiveHealthy,
    ActiveUnhealthy,
    Healthchecks,
    PassiveHealthcheck,
    PassiveHealthy,
    PassiveUnhealthy,
)
from ._latency import Latency
from ._least_connections import LeastConnections
from ._round_robin import RoundRobin

__all__ = [
    "ActiveHealthcheck",
    "ActiveHealthy",
    "ActiveUnhealthy",
    "Balancer",
    "ConsistentHashing",
    "Healthchecks",
    "Latency",
    "LeastConnections",
    "PassiveHealthcheck",
    "PassiveHealthy",
    "PassiveUnhealthy",
    "Peer",
    "RoundRobin",
]
