"""A node's networking: applies the network map pushed by the managers, and prepares task containers
for their networks.

- :mod:`shoal.network.plugin` — the libnetwork remote network + IPAM driver (``shoal``) the engine calls
  to attach containers, with addresses chosen by the managers' allocator;
- :mod:`shoal.network.overlay` — per network a bridge and a VXLAN device, static FDB/neighbour entries
  for every endpoint on other nodes, this node's own address (and the services' VIPs) on the bridge;
- :mod:`shoal.network.lb` — nftables: VIP and ingress load balancing, SNAT, isolation between networks;
- :mod:`shoal.network.dns` — service discovery for the containers on this node.
Everything is computed from the whole map and applied as a whole, so a restart rebuilds it. The last
map is re-applied every :data:`RESYNC` seconds (every :data:`RETRY` s after a failure): links and
addresses are diffed against the kernel, and the nftables table is re-applied if it differs from what
was applied last, so drift (a flushed table, a deleted link, a failed apply) is repaired without a new map.

Task containers join a swarm network through its engine-local *twin*: a network of the engine with
driver and IPAM driver ``shoal``, named like the swarm network, carrying its subnet and gateway and the
option ``shoal.network.id``. The twins are made on demand by :meth:`NetworkAgent.prepare_task` and removed
once no task of this node uses their swarm network any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from shoal.model import labels
from shoal.model.addr import ip_of

log = logging.getLogger(__name__)

NETWORK_WAIT = 20.0  # how long a task waits for its networks to appear in the applied map
ADDRESS_WAIT = 5.0  # ... and for this node's own address on its DNS network
KEEP_RECENT = 60.0  # a twin used by a task preparation this recently is never pruned
RESYNC = 5.0  # the applied map is checked against the kernel (and repaired) this often
RETRY = 1.0  # ... and this soon after a failed apply


class NetworkError(Exception):
    """A task's networks cannot be set up; the message says why."""


class NetworkAgent:
    def __init__(self, node_id: str, engine_url: str, plugin_dir: Path = Path("/run/docker/plugins"),
                 *, overlay: Any = None, lb: Any = None, dns: Any = None, tunnel_key: Path | None = None) -> None:
        """``overlay``, ``lb`` and ``dns`` replace the default components (tests); ``tunnel_key`` is where
        this node's WireGuard key is kept (the encrypted networks' tunnels)."""
        self.node_id = node_id
        self.engine_url = engine_url
        self.plugin_dir = plugin_dir
        self.netmap: dict = {"node": {"id": node_id, "addr": ""}, "networks": {}, "peers": {}, "services": []}
        self.applied = asyncio.Event()
        self._lock = asyncio.Lock()
        self._twin_lock = asyncio.Lock()
        self._ready: set[str] = set()  # networks whose bridge is in place on this node
        self._changed = asyncio.Event()  # replaced after every apply
        self._recent: dict[str, float] = {}  # swarm network ID -> last time a task was prepared on it
        self._docker: aiodocker.Docker | None = None
        self._active = False  # a map was applied and the node has not left since
        self._failed = False  # the last apply raised: retry soon
        self._retry = asyncio.Event()  # set by a failed apply: wakes the resync loop
        self._resync_task: asyncio.Task | None = None
        from shoal.network.plugin import PluginServer

        self.plugin = PluginServer(self, plugin_dir / "shoal.sock")
        self.public_key = ""  # this node's WireGuard public key, sent to the managers
        if overlay is None:
            from shoal.network.overlay import Overlay
            from shoal.network.wireguard import WireGuard
            tunnels = WireGuard(tunnel_key) if tunnel_key is not None else None
            self.public_key = tunnels.public_key if tunnels is not None else ""
            overlay = Overlay(tunnels=tunnels)
        if lb is None:
            from shoal.network.lb import LoadBalancer
            lb = LoadBalancer()
        if dns is None:
            from shoal.network.dns import DNSServer
            dns = DNSServer()
        self.overlay, self.lb, self.dns = overlay, lb, dns

    async def start(self) -> None:
        await self.plugin.start()
        await self.dns.start()
        self._resync_task = asyncio.create_task(self._resync_loop(), name="netmap-resync")

    async def stop(self) -> None:
        if self._resync_task is not None:
            self._resync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync_task
            self._resync_task = None
        await self.dns.stop()
        await self.plugin.stop()
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def cleanup(self) -> None:
        """Leaving the swarm: remove every link, rule and engine network shoal made on this node."""
        async with self._lock:
            self._active = False
            await self._prune_twins(keep=set(), force=True)
            await self.lb.clear()
            await self.overlay.clear()
            self._ready = set()
            await self.dns.stop()

    async def apply(self, netmap: dict, verify: bool = False) -> None:
        """Bring links, rules and DNS records to what ``netmap`` says.

        With ``verify`` (the periodic resync) an unchanged ruleset is compared with the kernel's and
        re-applied if they differ."""
        async with self._lock:
            self.netmap = netmap
            self._active = True
            try:
                await self.overlay.sync(netmap)
                self._ready = set(self.overlay.ready)
                self._notify()
                await self.lb.sync(netmap, verify=verify)
                await self.dns.update(netmap)
                self.applied.set()
                if self._failed:
                    log.info("network map applied again after a failure")
                self._failed = False
            except Exception:
                self._failed = True
                self._retry.set()
                log.exception("applying the network map failed (retrying in %.0f s)", RETRY)
            await self._prune_twins(keep=set(netmap.get("networks") or {}))

    async def _resync_loop(self) -> None:
        """Re-apply the last map every RESYNC s (RETRY s after a failure), repairing drift in the kernel."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry.wait(), RESYNC)
            if self._retry.is_set():
                self._retry.clear()
                await asyncio.sleep(RETRY)
            if self._active:
                try:
                    await self.apply(self.netmap, verify=True)
                except Exception:  # never let the loop die
                    log.exception("network resync failed")

    def network(self, net_id: str) -> dict | None:
        return self.netmap["networks"].get(net_id)

    # -- task containers -------------------------------------------------------------------------------
    async def prepare_task(self, task: dict) -> dict:
        """Extra container-create config attaching the task to its first network (and its DNS)."""
        atts = task.get("NetworksAttachments") or []
        if not atts:
            return {}
        dns_net = self._dns_network(atts)
        await self._wait_for([a["Network"]["ID"] for a in atts], dns_net)
        first = atts[0]
        name = await self._twin(first["Network"])
        host: dict[str, Any] = {"NetworkMode": name}
        local = (self.network(dns_net) or {}).get("local_addr")
        if local:
            host["Dns"] = [ip_of(local)]
        return {"HostConfig": host,
                "NetworkingConfig": {"EndpointsConfig": {name: self._endpoint(task, first)}}}

    async def connect_extra(self, task: dict, container_id: str) -> None:
        """Connect the created (not yet started) container to the task's other networks."""
        for att in (task.get("NetworksAttachments") or [])[1:]:
            name = await self._twin(att["Network"])
            body = {"Container": container_id, "EndpointConfig": self._endpoint(task, att)}
            try:
                await (await self._engine().networks.get(name)).connect(body)
            except DockerError as e:
                if "already exists" not in e.message:  # connected before a restart of shoald
                    raise NetworkError(f"connecting to network {name}: {e.message}") from None

    @staticmethod
    def _endpoint(task: dict, att: dict) -> dict:
        # no Aliases: the engine's DNS would answer them (and the service name) with this container's
        # address to queriers on the same node, instead of the VIP; shoal's DNS answers them
        ep: dict[str, Any] = {"IPAMConfig": {"IPv4Address": ip_of(att["Addresses"][0])}}
        # `--network name=N,driver-opt=k=v`: the endpoint's driver options, as Docker's executor passes them
        for conf in (task.get("Spec") or {}).get("Networks") or ():
            if conf.get("Target") == att["Network"]["ID"] and conf.get("DriverOpts"):
                ep["DriverOpts"] = dict(conf["DriverOpts"])
        return ep

    def _dns_network(self, atts: list[dict]) -> str:
        """The network whose node address serves DNS: the first one that is not the ingress network.

        The DNS server tells networks apart by the querier's address, and on ingress there are no
        service names to answer.
        """
        for att in atts:
            if not (att["Network"].get("Spec") or {}).get("Ingress"):
                return att["Network"]["ID"]
        return atts[0]["Network"]["ID"]

    async def _wait_for(self, ids: list[str], dns_net: str) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            missing = [i for i in ids if i not in self._ready]
            no_addr = not (self.network(dns_net) or {}).get("local_addr")
            waited = loop.time() - start
            if not missing and (not no_addr or waited >= ADDRESS_WAIT):
                if no_addr:
                    log.warning("no address of this node on network %s yet: task without shoal DNS", dns_net)
                return
            if missing and waited >= NETWORK_WAIT:
                raise NetworkError(f"network {', '.join(missing)} is not set up on this node "
                                   f"(not in the network map after {NETWORK_WAIT:.0f}s)")
            limit = (NETWORK_WAIT if missing else ADDRESS_WAIT) - waited
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(limit, 0.01))

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- engine-local twin networks ------------------------------------------------------------------
    def _engine(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.engine_url)
        return self._docker

    async def _twins(self) -> list[dict]:
        return await self._engine().networks.list(filters={"label": [labels.TWIN]})

    async def _twin(self, net: dict) -> str:
        """The name of the engine-local network standing for swarm network ``net``, made if missing."""
        nid = net["ID"]
        async with self._twin_lock:
            self._recent[nid] = asyncio.get_running_loop().time()
            for t in await self._twins():
                if (t.get("Labels") or {}).get(labels.TWIN_ID) == nid:
                    return t["Name"]
            name = net["Spec"]["Name"]
            clash = [n for n in await self._engine().networks.list(filters={"name": [name]}) if n["Name"] == name]
            if clash and (clash[0].get("Labels") or {}).get(labels.TWIN):
                with contextlib.suppress(DockerError):  # twin of an older swarm network of that name
                    await (await self._engine().networks.get(clash[0]["Id"])).delete()
                    clash = []
            if clash:
                name = f"{name}-{nid[:12]}"
            cfg = ((net.get("IPAMOptions") or {}).get("Configs") or [{}])[0]
            if not cfg.get("Subnet"):
                raise NetworkError(f"swarm network {net['Spec']['Name']} has no subnet allocated")
            ipam: dict[str, Any] = {"Subnet": cfg["Subnet"]}
            if cfg.get("Gateway"):
                ipam["Gateway"] = cfg["Gateway"]
            body = {
                "Name": name, "Driver": labels.PLUGIN_DRIVER, "CheckDuplicate": True,
                "Internal": bool(net["Spec"].get("Internal")),
                "IPAM": {"Driver": labels.PLUGIN_DRIVER, "Config": [ipam]},
                "Options": {labels.TWIN_ID: nid}, "Labels": {labels.TWIN: "1", labels.TWIN_ID: nid},
            }
            try:
                await self._engine().networks.create(body)
            except DockerError as e:
                raise NetworkError(f"creating engine network {name}: {e.message}") from None
            log.info("engine network %s made for swarm network %s", name, nid)
            return name

    async def _prune_twins(self, keep: set[str], force: bool = False) -> None:
        """Remove the twins of swarm networks not in ``keep`` (the engine refuses while in use)."""
        now = asyncio.get_running_loop().time()
        try:
            async with self._twin_lock:
                for t in await asyncio.wait_for(self._twins(), 10):
                    nid = (t.get("Labels") or {}).get(labels.TWIN_ID, "")
                    if nid in keep or (not force and now - self._recent.get(nid, -KEEP_RECENT) < KEEP_RECENT):
                        continue
                    try:
                        await asyncio.wait_for((await self._engine().networks.get(t["Id"])).delete(), 10)
                        self._recent.pop(nid, None)
                        log.info("engine network %s removed", t["Name"])
                    except DockerError as e:
                        log.debug("engine network %s kept: %s", t["Name"], e.message)
        except Exception as e:  # the engine is away: next time
            log.warning("cannot prune engine networks: %s", e)
