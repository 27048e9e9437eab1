"""Network resources on the leader: the allocator (sole owner), its bookkeeping, and the address pools."""

from shoal.manager.allocator.allocator import Allocator
from shoal.manager.allocator.networks import (
    NetworkAllocator,
    allocate_network,
    normalise_networks,
    service_network_ids,
)

__all__ = ["Allocator", "NetworkAllocator", "allocate_network", "normalise_networks", "service_network_ids"]
