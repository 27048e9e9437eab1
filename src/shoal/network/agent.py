"""A node's networking: applies the network map pushed by the managers, and prepares task containers
for their networks.

- :mod:`shoal.network.plugin` — the libnetwork remote network + IPAM driver (``shoal``) the engine calls
  to attach containers, with addresses chosen by the managers' allocator;
- :mod:`shoal.network.overlay` — per network a bridge and a VXLAN device, static FDB/neighbour entries
  for every endpoint on other nodes, this node's own address (and the services' VIPs) on the bridge;
- :mod:`shoal.network.lb` — nftables: VIP and ingress load balancing, SNAT, isolation between networks;
- :mod:`shoal.network.dns` — service discovery for the containers on this node.
Everything is computed from the whole map and applied as a whole, so a restart rebuilds it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class NetworkAgent:
    def __init__(self, node_id: str, engine_url: str, plugin_dir: Path = Path("/run/docker/plugins")) -> None:
        self.node_id = node_id
        self.engine_url = engine_url
        self.plugin_dir = plugin_dir
        self.netmap: dict = {"node": {"id": node_id, "addr": ""}, "networks": {}, "peers": {}, "services": []}
        self.applied = asyncio.Event()
        self._lock = asyncio.Lock()
        from shoal.network.dns import DNSServer
        from shoal.network.lb import LoadBalancer
        from shoal.network.overlay import Overlay
        from shoal.network.plugin import PluginServer

        self.plugin = PluginServer(self, plugin_dir / "shoal.sock")
        self.overlay = Overlay()
        self.lb = LoadBalancer()
        self.dns = DNSServer()

    async def start(self) -> None:
        await self.plugin.start()
        await self.dns.start()

    async def stop(self) -> None:
        await self.dns.stop()
        await self.plugin.stop()

    async def cleanup(self) -> None:
        """Leaving the swarm: remove every link, rule and engine network shoal made on this node."""
        async with self._lock:
            await self.lb.clear()
            await self.overlay.clear()
            await self.dns.stop()

    async def apply(self, netmap: dict) -> None:
        """Bring links, rules and DNS records to what ``netmap`` says."""
        async with self._lock:
            self.netmap = netmap
            try:
                await self.overlay.sync(netmap)
                await self.lb.sync(netmap)
                await self.dns.update(netmap)
                self.applied.set()
            except Exception:
                log.exception("applying the network map failed")

    def network(self, net_id: str) -> dict | None:
        return self.netmap["networks"].get(net_id)
