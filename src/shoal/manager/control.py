"""The manager's control API (swarmkit's controlapi): what the Engine-API handlers read and write.

Reads come from this manager's object cache. Writes run on the leader (the API forwards them there):
they check what swarmkit checks (versions, references, quorum, objects in use) and then write the store —
through the allocator when the object needs network resources, which is the only one to allocate them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Protocol

from shoal.control import Forwarded
from shoal.manager import autolock, ca, ca_rotation, roles, sealed_fields
from shoal.manager.allocator import Allocator, normalise_networks, service_network_ids
from shoal.manager.backup_seal import seal_file
from shoal.manager.events import SwarmEvents
from shoal.manager.membership import cluster_of
from shoal.manager.secrets import Sealer, SealError, check_refs, reveal, seal_registry_auth, users_of
from shoal.model.cluster import default_cluster_spec, merge_spec
from shoal.model.errors import (
    APIError,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NameConflict,
    OutOfSequence,
    Unavailable,
)
from shoal.model.ids import new_id, now
from shoal.model.logs import LogLine, LogQuery
from shoal.model.network import name_conflict, new_network
from shoal.model.secrets import SINGULAR, validate_refs
from shoal.model.service import PREVIOUS_SEALED_AUTH, SEALED_AUTH, mode_of
from shoal.model.views import NodeView
from shoal.store.backup import backup
from shoal.store.etcd import EtcdStore
from shoal.store.objects import Objects

NOT_LEADING = "rpc error: code = Unavailable desc = this manager is not the leader"


class Leader(Protocol):
    """What the control API needs of its manager."""

    node_id: str
    objs: Objects
    events: SwarmEvents
    data_dir: Path

    @property
    def is_leader(self) -> bool: ...

    @property
    def allocator(self) -> Allocator | None:
        """The leader's allocator (None on a follower)."""
        ...

    def sealer(self) -> Sealer:
        """The cluster's data key as a sealer (OSError when this manager has none)."""
        ...

    def data_key(self) -> bytes: ...

    async def forward(self, method: str, path_qs: str, body: bytes, headers: dict[str, str]) -> Forwarded: ...

    def logs(self, service: dict, task: dict | None, query: LogQuery) -> AsyncGenerator[LogLine, None]: ...

    def cluster_changed(self) -> None:
        """This manager changed the cluster object: its own key files follow at once."""
        ...


class ControlAPI:
    """One manager's answers to the API (implements :class:`shoal.control.ManagerControl`)."""

    def __init__(self, manager: Leader) -> None:
        self.m = manager
        # a service write's reference checks with its commit, and a secret or config removal's in-use
        # check with its delete (what swarmkit does in one raft transaction); every write runs on the leader
        self._refs = asyncio.Lock()

    # -- reads ------------------------------------------------------------------------------------
    @property
    def objects(self) -> Objects:
        return self.m.objs

    @property
    def is_leader(self) -> bool:
        return self.m.is_leader

    @property
    def events(self) -> SwarmEvents:
        return self.m.events

    async def forward(self, method: str, path_qs: str, body: bytes, headers: dict[str, str]) -> Forwarded:
        return await self.m.forward(method, path_qs, body, headers)

    def logs(self, service: dict, task: dict | None, query: LogQuery) -> AsyncGenerator[LogLine, None]:
        return self.m.logs(service, task, query)

    def cluster(self, with_tokens: bool = True) -> dict:
        """The cluster object as the API shows it: what is sealed or internal left out, the join tokens
        opened (when asked for)."""
        stored = cluster_of(self.m.objs)
        c = copy.deepcopy({k: v for k, v in stored.items() if k not in (sealed_fields.FIELD, ca.CA_FIELD)})
        if with_tokens:
            try:
                c["JoinTokens"] = ca.tokens(stored, self._sealer())
            except SealError as e:
                raise Unavailable(f"shoal: the join tokens cannot be opened on this manager: {e}") from None
        return c

    def unlock_key(self) -> str:
        key = autolock.unlock_key(cluster_of(self.m.objs), self._sealer())
        return autolock.human(key) if key else ""

    def _allocator(self) -> Allocator:
        allocator = self.m.allocator
        if allocator is None:
            raise Unavailable(NOT_LEADING)
        return allocator

    def _sealer(self) -> Sealer:
        try:
            return self.m.sealer()
        except (OSError, ValueError) as e:
            raise Unavailable(f"shoal: the cluster's data key is not available on this manager: {e}") from None

    def reveal(self, kind: str, obj: dict) -> bytes:
        return reveal(self._sealer() if kind == "secrets" else None, kind, obj)

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[tuple[str, int]]:
        store = self.m.objs.store
        if not isinstance(store, EtcdStore):
            raise Unavailable("shoal: this manager's store cannot be backed up")
        with tempfile.TemporaryDirectory(dir=self.m.data_dir, prefix="backup-") as tmp:
            plain, sealed = Path(tmp) / "snapshot.db", Path(tmp) / "backup.sealed"
            await backup(store, plain)
            size = await asyncio.to_thread(seal_file, plain, sealed, self.m.data_key())
            plain.unlink()
            yield str(sealed), size

    # -- the swarm --------------------------------------------------------------------------------
    async def update_swarm(self, spec: dict, version: int, rotate_worker: bool, rotate_manager: bool,
                           rotate_unlock: bool) -> None:
        c = copy.deepcopy(cluster_of(self.m.objs))
        if version != c["Version"]["Index"]:
            raise OutOfSequence()
        ca.check_node_cert_expiry(spec)
        sealer = self._sealer()
        which = tuple(r for r, asked in (("Worker", rotate_worker), ("Manager", rotate_manager)) if asked)
        if which:  # with the current root, as swarmkit does
            ca.new_tokens(c, sealer, ca.load(c, sealer).cert, which)
        ca_rotation.update_ca(c, sealer, spec.get("CAConfig") or {})
        # the signing certificate and key are never kept in the spec (swarmkit redacts them on every read)
        kept = {**spec, "CAConfig": {k: v for k, v in (spec.get("CAConfig") or {}).items()
                                     if k not in ("SigningCACert", "SigningCAKey")}}
        c["Spec"] = merge_spec(default_cluster_spec(), kept)
        autolock.update_cluster(c, sealer, rotate=rotate_unlock)
        c["UpdatedAt"] = now()
        await self.m.objs.update("clusters", c)
        self.m.cluster_changed()

    # -- services ---------------------------------------------------------------------------------
    def _check_refs(self, spec: dict) -> None:
        """Check and normalise what a service spec refers to (networks by name become IDs; secrets and
        configs must exist)."""
        validate_refs(spec)
        normalise_networks(self.m.objs, spec)
        check_refs(self.m.objs, spec)

    async def create_service(self, spec: dict, registry_auth: str = "") -> str:
        async with self._refs:  # no secret or config is removed between the check and the write
            self._check_refs(spec)
            ts = now()
            svc = {"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": spec,
                   "Endpoint": {"Spec": spec.get("EndpointSpec") or {"Mode": "vip"}}}
            if registry_auth:
                svc[SEALED_AUTH] = seal_registry_auth(self._sealer(), svc["ID"], registry_auth)
            if mode_of(spec).endswith("-job"):
                svc["JobStatus"] = {"JobIteration": {"Index": 0}, "LastExecution": ts}
            await self._allocator().create_service(svc)
        return svc["ID"]

    def _registry_auth(self, service: dict, registry_auth: str, rollback: bool, previous: bool) -> str | None:
        """The sealed credentials of an updated spec: the new ones, else those of the spec the update
        starts from (Docker's ``registryAuthFrom``; a rollback goes back to the previous spec's)."""
        if registry_auth:
            return seal_registry_auth(self._sealer(), service["ID"], registry_auth)
        return service.get(PREVIOUS_SEALED_AUTH if rollback or previous else SEALED_AUTH)

    async def update_service(self, service: dict, version: int, spec: dict, rollback: bool,
                             registry_auth: str = "", previous_auth: bool = False) -> None:
        if spec["Name"] != service["Spec"]["Name"]:
            raise Unimplemented("renaming services is not supported")
        if mode_of(spec) != mode_of(service["Spec"]):
            raise InvalidArgument("service mode change is not allowed")
        async with self._refs:
            self._check_refs(spec)
            if version != service["Version"]["Index"]:
                raise OutOfSequence()
            new = copy.deepcopy(service)
            new["PreviousSpec"] = service["Spec"]
            new["Spec"] = spec
            for key, sealed in ((PREVIOUS_SEALED_AUTH, service.get(SEALED_AUTH)),
                                (SEALED_AUTH, self._registry_auth(service, registry_auth, rollback, previous_auth))):
                if sealed:
                    new[key] = sealed
                else:
                    new.pop(key, None)
            new["UpdatedAt"] = now()
            new["Endpoint"] = {**(service.get("Endpoint") or {}), "Spec": spec.get("EndpointSpec") or {"Mode": "vip"}}
            if new.get("JobStatus") is not None:  # every update runs a job again (`--force` to do only that)
                index = new["JobStatus"]["JobIteration"]["Index"] + 1
                new["JobStatus"] = {"JobIteration": {"Index": index}, "LastExecution": now()}
            # as swarmkit: the updater sets "updating" once it finds tasks to replace
            new.pop("UpdateStatus", None)
            if rollback:
                new["UpdateStatus"] = {"State": "rollback_started", "StartedAt": now(),
                                       "Message": "manually requested rollback"}
            await self._allocator().update_service(new)

    async def remove_service(self, service: dict) -> None:
        """Delete whatever version the service has by then (as swarmkit: an orchestrator's write of its
        UpdateStatus meanwhile does not make the removal fail)."""
        for _ in range(20):
            if await self.m.objs.delete("services", service):
                return
            service = await self.m.objs.fetch("services", service["ID"])
            if service is None:
                return
        raise OutOfSequence()

    # -- nodes ------------------------------------------------------------------------------------
    async def update_node(self, node: dict, version: int, spec: dict) -> None:
        if version != node["Version"]["Index"]:
            raise OutOfSequence()
        if spec["Role"] == "worker" and NodeView(node).role == "manager":
            managers = [n for n in self.m.objs.list("nodes") if NodeView(n).role == "manager"]
            if len(managers) <= 1:
                raise FailedPrecondition("attempting to demote the last manager of the swarm")
            roles.check_demote(self.m.objs, self.m.node_id, node)
        new = copy.deepcopy(node)
        new["Spec"] = spec
        new["UpdatedAt"] = now()
        await self.m.objs.update("nodes", new)

    async def remove_node(self, node: dict, force: bool) -> None:
        view = NodeView(node)
        if view.manager_status is not None:  # still an etcd member
            raise FailedPrecondition(
                f"node {view.id} is a cluster manager and is a member of the raft cluster. It must be "
                "demoted to worker before removal")
        if not force and view.state not in ("down", "unknown"):
            raise FailedPrecondition(f"node {view.id} is not down and can't be removed")
        if not await self.m.objs.delete("nodes", node):
            raise OutOfSequence()

    # -- networks ---------------------------------------------------------------------------------
    async def create_network(self, spec: dict) -> str:
        try:
            net = await self._allocator().create_network(new_network(spec))
        except NameConflict:
            raise name_conflict(spec["Name"]) from None
        return net["ID"]

    async def remove_network(self, network: dict) -> None:
        for svc in self.m.objs.list("services"):
            if network["ID"] in service_network_ids(self.m.objs, svc["Spec"]):
                raise APIError(f"rpc error: code = FailedPrecondition desc = network {network['ID']} is in use by "
                               f"service {svc['ID']}", 400)
        if not await self.m.objs.delete("networks", network):
            raise APIError(f"network {network['ID']} not found", 404)

    # -- secrets and configs ----------------------------------------------------------------------
    async def create_secret(self, kind: str, spec: dict, data: bytes) -> str:
        ts = now()
        obj = {"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": spec}
        if kind == "secrets":
            obj["Sealed"] = self._sealer().seal(kind, obj["ID"], data)
        else:
            spec["Data"] = base64.b64encode(data).decode()
        try:
            await self.m.objs.create(kind, obj)
        except NameConflict:
            raise Conflict(f"rpc error: code = AlreadyExists desc = {SINGULAR[kind]} {spec['Name']} "
                           "already exists") from None
        return obj["ID"]

    async def update_secret(self, kind: str, obj: dict, version: int, labels: dict[str, str]) -> None:
        if version != obj["Version"]["Index"]:
            raise OutOfSequence()
        new = copy.deepcopy(obj)
        new["Spec"]["Labels"] = labels
        new["UpdatedAt"] = now()
        await self.m.objs.update(kind, new)

    async def remove_secret(self, kind: str, obj: dict) -> None:
        async with self._refs:  # no service starts using it between the check and the delete
            users = users_of(self.m.objs, kind, obj["ID"])
            if users:
                word = "service" if len(users) == 1 else "services"
                raise InvalidArgument(f"{SINGULAR[kind]} '{obj['Spec']['Name']}' is in use by the following "
                                      f"{word}: {', '.join(users)}")
            if not await self.m.objs.delete(kind, obj):
                raise OutOfSequence()


class Unimplemented(APIError):
    status = 501

    def __init__(self, desc: str) -> None:
        super().__init__(f"rpc error: code = Unimplemented desc = {desc}")

