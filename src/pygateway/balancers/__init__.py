"""Balancers pick a Target of an Upstream for each try. (Round-robin for now.)"""

from ._base import Balancer
from ._round_robin import RoundRobin

__all__ = ["Balancer", "RoundRobin"]
