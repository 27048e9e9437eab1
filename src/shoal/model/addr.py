"""Address helpers shared by the allocator, the network map and the node's networking."""

from __future__ import annotations


def ip_of(cidr: str) -> str:
    """``10.0.1.7/24`` → ``10.0.1.7`` (an address without a prefix length is returned as it is)."""
    return cidr.split("/")[0]
