"""The ``shoal`` libnetwork remote network driver and IPAM driver, served on a unix socket.

dockerd finds it as ``/run/docker/plugins/shoal.sock`` the first time a network with driver (or IPAM
driver) ``shoal`` is used, and calls it over HTTP (moby's ``libnetwork/docs/remote.md`` and ``ipam.md``).
The engine-local "twin" networks of the swarm networks (made by :class:`shoal.network.agent.NetworkAgent`)
use it for both roles:

- IPAM never chooses: a pool is the swarm network's subnet, an address is the one the managers'
  allocator gave the task (passed as ``IPAMConfig.IPv4Address``), the gateway request gets the swarm
  network's gateway;
- the driver plugs a veth pair into the network's bridge (made by :mod:`shoal.network.overlay`) at
  ``Join``; dockerd moves the container end into the container (as ``eth<n>``) and sets its address
  before the container's process starts. ``Join`` returns no gateway, so libnetwork also attaches the
  container to ``docker_gwbridge`` for its default route (egress), as with Docker's own overlay.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shoal.model import labels
from shoal.network.overlay import bridge_name, mac_of

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/docker/plugins/shoal.sock")
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
GENERIC_OPTION = "com.docker.network.generic"
GATEWAY_REQUEST = "com.docker.network.gateway"  # RequestAddress Options["RequestAddressType"]

Handler = Callable[[dict], Awaitable[dict]]


class PluginError(Exception):
    """Answered to dockerd as ``{"Err": message}``."""


class _Agent(Protocol):
    netmap: dict


def host_veth(endpoint_id: str) -> str:
    return "shv" + endpoint_id[:12]


def container_veth(endpoint_id: str) -> str:
    return "shc" + endpoint_id[:12]


class PluginServer:
    """libnetwork's remote ``NetworkDriver`` and ``IpamDriver`` protocol on a unix socket.

    ``agent.netmap`` (the node's network map) is read to find a network's gateway and, after a restart
    of shoald (dockerd never repeats ``CreateNetwork``), which swarm network an endpoint belongs to.
    """

    def __init__(self, agent: _Agent | None, socket_path: Path | str = DEFAULT_SOCKET) -> None:
        self.agent = agent
        self.socket_path = Path(socket_path)
        self.networks: dict[str, str] = {}  # engine network ID -> swarm network ID
        self.endpoints: dict[str, dict] = {}  # endpoint ID -> {"network", "address", "mac"}
        self._runner: web.AppRunner | None = None
        self.routes: dict[str, Handler] = {
            "Plugin.Activate": self.activate,
            "NetworkDriver.GetCapabilities": self.capabilities,
            "NetworkDriver.CreateNetwork": self.create_network,
            "NetworkDriver.DeleteNetwork": self.delete_network,
            "NetworkDriver.CreateEndpoint": self.create_endpoint,
            "NetworkDriver.EndpointOperInfo": self.endpoint_info,
            "NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "NetworkDriver.Join": self.join,
            "NetworkDriver.Leave": self.empty,
            "NetworkDriver.DiscoverNew": self.empty,
            "NetworkDriver.DiscoverDelete": self.empty,
            "NetworkDriver.ProgramExternalConnectivity": self.empty,
            "NetworkDriver.RevokeExternalConnectivity": self.empty,
            "IpamDriver.GetCapabilities": self.ipam_capabilities,
            "IpamDriver.GetDefaultAddressSpaces": self.address_spaces,
            "IpamDriver.RequestPool": self.request_pool,
            "IpamDriver.ReleasePool": self.empty,
            "IpamDriver.RequestAddress": self.request_address,
            "IpamDriver.ReleaseAddress": self.empty,
        }

    # -- server ----------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{method}", self._handle)
        return app

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # stale, from a previous run
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path)).start()
        log.info("network plugin listening on %s", self.socket_path)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        handler = self.routes.get(method)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
            if handler is None:
                raise PluginError(f"shoal: {method} is not implemented")
            reply, status = await handler(body or {}), 200
        except (PluginError, NetlinkError, ValueError, KeyError) as e:
            log.warning("plugin %s failed: %s", method, e)
            reply, status = {"Err": str(e) or type(e).__name__}, 500
        except Exception as e:
            log.exception("plugin %s", method)
            reply, status = {"Err": f"shoal: {e}"}, 500
        log.debug("plugin %s %s -> %s", method, raw[:400], reply)
        return web.Response(body=json.dumps(reply).encode(), status=status, content_type=CONTENT_TYPE)

    # -- plugin and network driver ---------------------------------------------------------------------
    async def empty(self, req: dict) -> dict:
        return {}

    async def activate(self, req: dict) -> dict:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    async def capabilities(self, req: dict) -> dict:
        return {"Scope": "local", "ConnectivityScope": "global"}

    async def create_network(self, req: dict) -> dict:
        generic = (req.get("Options") or {}).get(GENERIC_OPTION) or {}
        swarm_id = generic.get(labels.TWIN_ID)
        if not swarm_id:
            raise PluginError(f"shoal: networks of the shoal driver are made by shoald (option {labels.TWIN_ID})")
        self.networks[req["NetworkID"]] = swarm_id
        return {}

    async def delete_network(self, req: dict) -> dict:
        self.networks.pop(req.get("NetworkID", ""), None)
        return {}

    async def create_endpoint(self, req: dict) -> dict:
        iface = req.get("Interface") or {}
        address = iface.get("Address") or ""
        if not address:
            raise PluginError("shoal: an endpoint needs its address from the swarm allocator")
        nid = req["NetworkID"]
        if nid not in self.networks:
            self.networks[nid] = self._network_of_address(address)
        mac = iface.get("MacAddress") or mac_of(address)
        self.endpoints[req["EndpointID"]] = {"network": nid, "address": address, "mac": mac}
        return {} if iface.get("MacAddress") else {"Interface": {"MacAddress": mac}}

    async def endpoint_info(self, req: dict) -> dict:
        ep = self.endpoints.get(req.get("EndpointID", ""))
        return {"Value": {"shoal.veth": host_veth(req.get("EndpointID", ""))} if ep else {}}

    async def delete_endpoint(self, req: dict) -> dict:
        eid = req["EndpointID"]
        self.endpoints.pop(eid, None)
        await asyncio.to_thread(_delete_link, host_veth(eid))
        return {}

    async def join(self, req: dict) -> dict:
        eid, nid = req["EndpointID"], req["NetworkID"]
        ep = self.endpoints.get(eid)
        swarm_id = self.networks.get(nid)
        if swarm_id is None and ep is not None:
            swarm_id = self.networks[nid] = self._network_of_address(ep["address"])
        if swarm_id is None:
            raise PluginError(f"shoal: unknown network {nid}")
        mac = ep["mac"] if ep else None
        await asyncio.to_thread(_plug, bridge_name(swarm_id), host_veth(eid), container_veth(eid), mac)
        # No "Gateway": libnetwork then gives the container a docker_gwbridge endpoint for egress.
        return {"InterfaceName": {"SrcName": container_veth(eid), "DstPrefix": "eth"}}

    # -- IPAM ------------------------------------------------------------------------------------------
    async def ipam_capabilities(self, req: dict) -> dict:
        return {"RequiresMACAddress": False}

    async def address_spaces(self, req: dict) -> dict:
        return {"LocalDefaultAddressSpace": "shoal-local", "GlobalDefaultAddressSpace": "shoal-global"}

    async def request_pool(self, req: dict) -> dict:
        if req.get("V6"):
            raise PluginError("shoal: IPv6 is not supported on swarm networks")
        pool = req.get("Pool") or ""
        if not pool:
            raise PluginError("shoal: give the swarm network's subnet (IPAM Config Subnet)")
        subnet = str(ipaddress.IPv4Network(pool, strict=False))
        return {"PoolID": subnet, "Pool": subnet, "Data": {}}

    async def request_address(self, req: dict) -> dict:
        subnet = ipaddress.IPv4Network(req["PoolID"])
        address = req.get("Address") or ""
        options = req.get("Options") or {}  # null for endpoints on Docker 20.10
        if not address:
            if options.get("RequestAddressType") != GATEWAY_REQUEST:
                raise PluginError("shoal: addresses come from the swarm allocator (give IPAMConfig.IPv4Address)")
            address = self._gateway(subnet)
        ip = ipaddress.IPv4Address(address.split("/")[0])
        if ip not in subnet:
            raise PluginError(f"shoal: address {ip} is not in {subnet}")
        return {"Address": f"{ip}/{subnet.prefixlen}", "Data": {}}

    # -- helpers ---------------------------------------------------------------------------------------
    def _netmap_networks(self) -> dict[str, Any]:
        return ((self.agent.netmap if self.agent is not None else None) or {}).get("networks") or {}

    def _gateway(self, subnet: ipaddress.IPv4Network) -> str:
        for net in self._netmap_networks().values():
            if net.get("subnet") and ipaddress.IPv4Network(net["subnet"]) == subnet and net.get("gateway"):
                return str(net["gateway"])
        return str(subnet.network_address + 1)

    def _network_of_address(self, address: str) -> str:
        ip = ipaddress.IPv4Address(address.split("/")[0])
        for nid, net in self._netmap_networks().items():
            if net.get("subnet") and ip in ipaddress.IPv4Network(net["subnet"]):
                return nid
        raise PluginError(f"shoal: no swarm network of this node holds {ip}")


def _delete_link(name: str) -> None:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if idx:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=idx[0])


def _plug(bridge: str, host: str, peer: str, mac: str | None) -> None:
    """A veth pair: ``host`` in ``bridge`` (up), ``peer`` waiting for dockerd to move it."""
    with IPRoute() as ipr:
        br = ipr.link_lookup(ifname=bridge)
        if not br:
            raise PluginError(f"shoal: bridge {bridge} does not exist yet (network map not applied on this node)")
        mtu = ipr.get_links(br[0])[0].get("IFLA_MTU") or 1450
        for name in (host, peer):
            for idx in ipr.link_lookup(ifname=name):  # stale, from an interrupted attach
                ipr.link("del", index=idx)
        ipr.link("add", ifname=host, kind="veth", peer=peer)
        hidx, pidx = ipr.link_lookup(ifname=host)[0], ipr.link_lookup(ifname=peer)[0]
        pattrs: dict = {"mtu": mtu}
        if mac:
            pattrs["address"] = mac
        ipr.link("set", index=pidx, **pattrs)
        ipr.link("set", index=hidx, mtu=mtu, master=br[0], state="up")
