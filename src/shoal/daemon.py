"""shoald: one host's daemon. Serves the Engine API, and once in a swarm runs the store member, the
manager controllers (on managers) and the agent.

Local state (which swarm, which node, the etcd member) is in ``<data-dir>/state.json``; desired state
is in the store. A restart reads both and carries on: controllers rebuild from the store, the agent
re-adopts its containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from shoal.agent.agent import Agent
from shoal.agent.executor.docker import DockerExecutor
from shoal.api.proxy import EngineProxy
from shoal.api.server import make_app, not_manager
from shoal.manager.allocator import Allocator
from shoal.manager.ca import join_token, make_root_ca, tls_info
from shoal.manager.dispatcher import LocalSession
from shoal.manager.orchestrator.orchestrator import Orchestrator
from shoal.manager.reaper import Reaper
from shoal.manager.scheduler.controller import SchedulerController
from shoal.model.errors import APIError, BadRequest, OutOfSequence, Unavailable
from shoal.model.ids import new_id, now
from shoal.model.service import SECOND
from shoal.store.etcd_member import EtcdMember
from shoal.store.objects import Objects

log = logging.getLogger(__name__)

ALREADY_IN_SWARM = ('This node is already part of a swarm. Use "docker swarm leave" to leave this swarm '
                    "and join another one.")
LEAVE_MANAGER = ("You are attempting to leave the swarm on a node that is participating as a manager. "
                 "Removing the last manager erases all current state of the swarm. Use `--force` to "
                 "ignore this message.")


def default_cluster_spec() -> dict:
    return {
        "Name": "default", "Labels": {},
        "Orchestration": {"TaskHistoryRetentionLimit": 5},
        "Raft": {"SnapshotInterval": 10000, "KeepOldSnapshots": 0, "LogEntriesForSlowFollowers": 500,
                 "ElectionTick": 10, "HeartbeatTick": 1},
        "Dispatcher": {"HeartbeatPeriod": 5 * SECOND},
        "CAConfig": {"NodeCertExpiry": 90 * 24 * 3600 * SECOND},
        "TaskDefaults": {},
        "EncryptionConfig": {"AutoLockManagers": False},
    }


def _merge_spec(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_spec(out[k], v)
        elif v is not None:
            out[k] = v
    return out


def detect_addr() -> str:
    """The address other hosts would reach us at: the source address of the default route."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # UDP connect only picks a route; nothing is sent
        return s.getsockname()[0]
    return "127.0.0.1"


@dataclass
class Options:
    data_dir: Path = Path("/var/lib/shoal")
    socket: str = "/run/shoal/shoal.sock"
    engine: str = "/var/run/docker.sock"
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380


class Daemon:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.proxy = EngineProxy(opts.engine)
        self.state = "inactive"
        self.role = "worker"
        self.node_id = ""
        self.addr = ""
        self.objs: Objects | None = None  # type: ignore[assignment]
        self.etcd: EtcdMember | None = None
        self.executor: DockerExecutor | None = None
        self._tasks: list[asyncio.Task] = []
        self._session: LocalSession | None = None
        self._lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.opts.data_dir / "state.json"

    async def start(self) -> None:
        self.opts.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            ver = await self.proxy.get_json("/version")
            major, minor = (int(x) for x in ver.get("ApiVersion", "1.41").split(".")[:2])
            self.proxy.engine_api = (major, minor)
        if self.state_file.exists():
            st = json.loads(self.state_file.read_text())
            self.node_id, self.role, self.addr = st["node_id"], st["role"], st.get("addr", "")
            await self._start_store(new=False)
            await self._start_roles()
            self.state = "active"
            await self._mark_ready()
        await self._serve()

    async def _serve(self) -> None:
        sock = Path(self.opts.socket)
        sock.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        self._runner = web.AppRunner(make_app(self), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(sock))
        await site.start()
        os.chmod(sock, 0o660)
        log.info("shoald listening on unix://%s", sock)

    async def stop(self) -> None:
        await self._stop_roles()
        if self._runner:
            await self._runner.cleanup()
        if self.objs:
            await self.objs.stop()
            await self.objs.store.close()
        if self.etcd:
            await self.etcd.stop()
        await self.proxy.close()

    # -- store ----------------------------------------------------------------------------------
    async def _start_store(self, new: bool) -> None:
        edir = self.opts.data_dir / "etcd"
        client = f"http://127.0.0.1:{self.opts.etcd_client_port}"
        peer = f"http://127.0.0.1:{self.opts.etcd_peer_port}"
        name = self.node_id
        self.etcd = EtcdMember(name, edir, client, peer, f"{name}={peer}", "new" if new else "existing")
        await self.etcd.start()
        store = self.etcd.store()
        self.objs = Objects(store)
        await self.objs.start()

    async def _start_roles(self) -> None:
        assert self.objs is not None
        if self.role == "manager":
            for ctl in (Orchestrator(self.objs), Allocator(self.objs), SchedulerController(self.objs),
                        Reaper(self.objs)):
                self._tasks.append(asyncio.create_task(ctl.run(), name=ctl.name))
        self.executor = DockerExecutor(f"unix://{self.opts.engine}")
        self._session = LocalSession(self.objs, self.node_id)
        agent = Agent(self.node_id, self._session, self.executor)
        self._tasks.append(asyncio.create_task(agent.run(), name="agent"))

    async def _stop_roles(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self._session:
            self._session.close()
            self._session = None
        if self.executor:
            await self.executor.close()
            self.executor = None

    async def _describe(self) -> dict:
        info = await self.proxy.get_json("/info")
        labels = {}
        for item in info.get("Labels") or []:
            k, _, v = item.partition("=")
            labels[k] = v
        return {
            "Hostname": info.get("Name") or socket.gethostname(),
            "Platform": {"Architecture": info.get("Architecture", "x86_64"), "OS": info.get("OSType", "linux")},
            "Resources": {"NanoCPUs": int(info.get("NCPU", 1)) * SECOND, "MemoryBytes": int(info.get("MemTotal", 0))},
            "Engine": {"EngineVersion": info.get("ServerVersion", ""), "Labels": labels,
                       "Plugins": [{"Type": "Log", "Name": n} for n in (info.get("Plugins") or {}).get("Log") or []]
                       + [{"Type": "Network", "Name": n} for n in (info.get("Plugins") or {}).get("Network") or []]
                       + [{"Type": "Volume", "Name": n} for n in (info.get("Plugins") or {}).get("Volume") or []]},
        }

    async def _mark_ready(self) -> None:
        """Refresh this node's description and mark it ready."""
        assert self.objs is not None
        desc = await self._describe()

        def apply(node: dict) -> None:
            node["Description"] = {**node.get("Description", {}), **desc}
            node["Status"] = {"State": "ready", "Addr": self.addr}
            node["UpdatedAt"] = now()

        await self.objs.modify("nodes", self.node_id, apply)

    # -- swarm ------------------------------------------------------------------------------------
    def require_manager(self) -> None:
        if self.state != "active" or self.role != "manager" or self.objs is None:
            raise not_manager(self)

    async def init_swarm(self, req: dict) -> str:
        async with self._lock:
            if self.state == "active":
                raise Unavailable(ALREADY_IN_SWARM)
            avail = req.get("Availability") or "active"
            if avail not in ("active", "pause", "drain"):
                raise BadRequest(f"invalid Availability: {avail!r}")
            addr = (req.get("AdvertiseAddr") or "").rsplit(":", 1)[0] if ":" in (req.get("AdvertiseAddr") or "") \
                else (req.get("AdvertiseAddr") or "")
            self.addr = addr or detect_addr()
            self.node_id = new_id()
            self.role = "manager"
            edir = self.opts.data_dir / "etcd"
            if edir.exists():
                shutil.rmtree(edir)
            cert, key = make_root_ca()
            cdir = self.opts.data_dir / "certificates"
            cdir.mkdir(parents=True, exist_ok=True)
            (cdir / "swarm-root-ca.crt").write_bytes(cert)
            (cdir / "swarm-root-ca.key").write_bytes(key)
            os.chmod(cdir / "swarm-root-ca.key", 0o600)
            await self._start_store(new=True)
            assert self.objs is not None
            ts = now()
            cluster = {
                "ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts,
                "Spec": _merge_spec(default_cluster_spec(), req.get("Spec") or {}),
                "TLSInfo": tls_info(cert), "RootRotationInProgress": False,
                "DefaultAddrPool": req.get("DefaultAddrPool") or ["10.0.0.0/8"],
                "SubnetSize": req.get("SubnetSize") or 24,
                "DataPathPort": req.get("DataPathPort") or 4789,
                "JoinTokens": {"Worker": join_token(cert), "Manager": join_token(cert)},
            }
            node = {
                "ID": self.node_id, "CreatedAt": ts, "UpdatedAt": ts,
                "Spec": {"Labels": {}, "Role": "manager", "Availability": avail},
                "Description": await self._describe(),
                "Status": {"State": "ready", "Addr": self.addr},
                "ManagerStatus": {"Leader": True, "Reachability": "reachable", "Addr": f"{self.addr}:2377"},
            }
            await self.objs.create("clusters", cluster)
            await self.objs.create("nodes", node)
            self.state_file.write_text(json.dumps({"node_id": self.node_id, "role": self.role, "addr": self.addr,
                                                   "cluster_id": cluster["ID"]}))
            await self._start_roles()
            self.state = "active"
            return self.node_id

    async def leave(self, force: bool) -> None:
        async with self._lock:
            if self.state != "active":
                raise Unavailable("This node is not part of a swarm")
            if self.role == "manager" and not force:
                raise Unavailable(LEAVE_MANAGER)
            await self._stop_roles()
            if self.objs:
                await self.objs.stop()
                await self.objs.store.close()
                self.objs = None
            if self.etcd:
                await self.etcd.stop()
                self.etcd = None
            await self._remove_task_containers()
            self.state_file.unlink(missing_ok=True)
            for sub in ("etcd", "certificates"):
                shutil.rmtree(self.opts.data_dir / sub, ignore_errors=True)
            self.state, self.role, self.node_id = "inactive", "worker", ""

    async def _remove_task_containers(self) -> None:
        ex = DockerExecutor(f"unix://{self.opts.engine}")
        try:
            for c in (await ex.containers(self.node_id)).values():
                with contextlib.suppress(Exception):
                    await ex.remove(c["Id"])
        finally:
            await ex.close()

    def cluster(self) -> dict:
        assert self.objs is not None
        clusters = self.objs.list("clusters")
        if not clusters:
            raise Unavailable("shoal: the cluster object is missing from the store")
        return clusters[0]

    def cluster_view(self, with_tokens: bool) -> dict:
        c = copy.deepcopy(self.cluster())
        if not with_tokens:
            c.pop("JoinTokens", None)
        return c

    async def update_swarm(self, spec: dict, version: int, rotate_worker: bool, rotate_manager: bool) -> None:
        assert self.objs is not None
        c = copy.deepcopy(self.cluster())
        if version != c["Version"]["Index"]:
            raise OutOfSequence()
        c["Spec"] = _merge_spec(default_cluster_spec(), spec)
        cert = c["TLSInfo"]["TrustRoot"].encode()
        if rotate_worker:
            c["JoinTokens"]["Worker"] = join_token(cert)
        if rotate_manager:
            c["JoinTokens"]["Manager"] = join_token(cert)
        c["UpdatedAt"] = now()
        await self.objs.update("clusters", c)

    def swarm_info(self) -> dict:
        if self.state != "active" or self.objs is None:
            return {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                    "Error": "", "RemoteManagers": None}
        nodes = self.objs.list("nodes")
        managers = [n for n in nodes if n["Spec"].get("Role") == "manager"]
        out = {
            "NodeID": self.node_id, "NodeAddr": self.addr, "LocalNodeState": "active",
            "ControlAvailable": self.role == "manager", "Error": "",
            "RemoteManagers": [{"NodeID": n["ID"], "Addr": (n.get("ManagerStatus") or {}).get("Addr", "")}
                               for n in managers],
            "Nodes": len(nodes), "Managers": len(managers),
        }
        if self.role == "manager":
            out["Cluster"] = self.cluster_view(with_tokens=False)
        return out

    # -- hooks for later subsystems (networks, secrets) ----------------------------------------------
    def check_spec_refs(self, spec: dict, exclude: str | None = None) -> None:
        """Check what a service spec refers to (networks, secrets, configs, published ports)."""

    async def allocate_endpoint(self, svc: dict, old: dict | None) -> None:
        """Fill the service's Endpoint (VIPs and published ports come with networking)."""
        svc["Endpoint"] = {"Spec": svc["Spec"].get("EndpointSpec") or {"Mode": "vip"}}

    async def check_demote(self, node: dict) -> None:
        raise APIError("rpc error: code = Unimplemented desc = demoting managers comes with HA managers", 501)

    async def remove_node(self, node: dict) -> None:
        assert self.objs is not None
        if not await self.objs.delete("nodes", node):
            raise OutOfSequence()
