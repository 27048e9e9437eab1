"""Per-node scheduling state (after swarmkit ``manager/scheduler/nodeinfo.go``).

A :class:`NodeInfo` wraps a Node dict (Docker Engine API shape) and tracks what the tasks placed on it
consume: active task counts (total and per service), reserved CPU/memory, the generic resources the node's
engine advertises (``node-generic-resources``: named ones like ``gpu=UUID`` are given out by value, discrete
ones like ``ssd=2`` by count, as swarmkit's ``genericresource`` package does), published host ports and the
recent failures of each service on the node. Tasks are tracked as small :class:`TaskRecord` tuples so
that scheduling many identical tasks can share one record.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from shoal.model import states
from shoal.model.constraint import NodeAttributes

Node = dict[str, Any]
Task = dict[str, Any]

#: Look-back window (seconds) for counting a service's failures on a node.
MONITOR_FAILURES = 300.0
#: Failures within :data:`MONITOR_FAILURES` after which a node is ranked last for that service.
MAX_FAILURES = 5


def desired_active(task: Task) -> bool:
    """True if the task's DesiredState is ``complete`` or earlier (it should run / counts as active)."""
    return states.rank(task.get("DesiredState") or states.RUNNING) <= states.rank(states.COMPLETE)


def task_reservations(task: Task) -> tuple[int, int]:
    """``(NanoCPUs, MemoryBytes)`` reserved by the task's ``Spec.Resources.Reservations``."""
    res = ((task.get("Spec") or {}).get("Resources") or {}).get("Reservations") or {}
    return int(res.get("NanoCPUs") or 0), int(res.get("MemoryBytes") or 0)


Generic = tuple[tuple[str, "str | int"], ...]  # (kind, named value) or (kind, count)


def task_generic(task: Task) -> tuple[tuple[str, int], ...]:
    """``(kind, count)`` of every generic resource the task reserves (``--generic-resource gpu=1``)."""
    res = ((task.get("Spec") or {}).get("Resources") or {}).get("Reservations") or {}
    out = []
    for r in res.get("GenericResources") or ():
        d = r.get("DiscreteResourceSpec") or {}
        if d.get("Kind") and int(d.get("Value") or 0) > 0:
            out.append((d["Kind"], int(d["Value"])))
    return tuple(out)


def generic_tuples(resources: list[dict] | None) -> Generic:
    """API GenericResources as ``(kind, value)`` tuples: a named value is a str, a discrete count an int."""
    out: list[tuple[str, str | int]] = []
    for r in resources or ():
        if r.get("NamedResourceSpec"):
            out.append((r["NamedResourceSpec"].get("Kind", ""), str(r["NamedResourceSpec"].get("Value", ""))))
        elif r.get("DiscreteResourceSpec"):
            out.append((r["DiscreteResourceSpec"].get("Kind", ""), int(r["DiscreteResourceSpec"].get("Value") or 0)))
    return tuple(out)


def generic_api(claim: Generic) -> list[dict]:
    """``(kind, value)`` tuples back to the API's GenericResources."""
    return [{"NamedResourceSpec": {"Kind": k, "Value": v}} if isinstance(v, str)
            else {"DiscreteResourceSpec": {"Kind": k, "Value": v}} for k, v in claim]


def task_host_ports(task: Task) -> tuple[tuple[str, int], ...]:
    """``(protocol, published port)`` of every host-mode port the task publishes."""
    ports = (task.get("Endpoint") or {}).get("Ports") or ()
    return tuple(
        sorted(
            ((p.get("Protocol") or "tcp").lower(), int(p["PublishedPort"]))
            for p in ports
            if p.get("PublishMode") == "host" and p.get("PublishedPort")
        )
    )


class TaskRecord(NamedTuple):
    """What a task placed on a node consumes there."""

    service_id: str
    nano_cpus: int = 0
    memory_bytes: int = 0
    host_ports: tuple[tuple[str, int], ...] = ()
    active: bool = True
    generic: tuple[tuple[str, int], ...] = ()  # generic resources reserved: (kind, count)
    assigned: Generic = ()  # the ones the task was given (GenericResources), once it was scheduled

    @classmethod
    def from_task(cls, task: Task) -> TaskRecord:
        cpus, mem = task_reservations(task)
        generic = task_generic(task)
        return cls(task.get("ServiceID") or "", cpus, mem, task_host_ports(task), desired_active(task), generic,
                   generic_tuples(task.get("GenericResources")) if generic else ())


class NodeInfo:
    """A node plus the bookkeeping the filters and strategies need."""

    __slots__ = (
        "id",
        "node",
        "attrs",
        "ready",
        "platform",
        "total_nano_cpus",
        "total_memory_bytes",
        "reserved_nano_cpus",
        "reserved_memory_bytes",
        "tasks",
        "active_tasks",
        "active_by_service",
        "host_ports",
        "generic_total",
        "generic_free",
        "generic_claims",
        "failures",
        "_last_cleanup",
    )

    def __init__(self, node: Node, tasks: dict[str, TaskRecord] | None = None) -> None:
        self.tasks: dict[str, TaskRecord] = {}
        self.active_tasks = 0
        self.active_by_service: dict[str, int] = {}
        self.reserved_nano_cpus = 0
        self.reserved_memory_bytes = 0
        self.host_ports: dict[tuple[str, int], int] = {}
        self.generic_total: dict[str, list[str] | int] = {}  # kind -> named values, or a count
        self.generic_free: dict[str, list[str] | int] = {}
        self.generic_claims: dict[str, Generic] = {}  # task id -> what it holds
        self.failures: dict[str, list[float]] = {}
        self._last_cleanup = 0.0
        self.set_node(node)
        for task_id, rec in (tasks or {}).items():
            self.add_record(task_id, rec)

    def __repr__(self) -> str:
        return f"NodeInfo({self.id!r}, active_tasks={self.active_tasks}, ready={self.ready})"

    def set_node(self, node: Node) -> None:
        """Replace the node dict (keeps the tracked tasks; reservations are re-applied to new totals)."""
        self.id: str = node["ID"]
        self.node = node
        self.attrs = NodeAttributes.from_node(node)
        spec = node.get("Spec") or {}
        status = node.get("Status") or {}
        self.ready = (status.get("State") or "unknown") == "ready" and (
            spec.get("Availability") or "active"
        ) == "active"
        desc = node.get("Description") or {}
        plat = desc.get("Platform")
        self.platform: tuple[str, str] | None = (
            (plat.get("OS") or "", normalize_arch(plat.get("Architecture") or "")) if plat else None
        )
        res = desc.get("Resources") or {}
        self.total_nano_cpus = int(res.get("NanoCPUs") or 0)
        self.total_memory_bytes = int(res.get("MemoryBytes") or 0)
        total: dict[str, list[str] | int] = {}
        for kind, value in generic_tuples(res.get("GenericResources")):
            have = total.get(kind)
            if isinstance(value, str):
                total[kind] = [*(have if isinstance(have, list) else []), value]
            else:
                total[kind] = value
        self.generic_total = total
        # what the tracked tasks hold stays theirs (swarmkit's sanitize: values the node no longer has are gone)
        self.generic_free = {k: list(v) if isinstance(v, list) else v for k, v in total.items()}
        for claim in self.generic_claims.values():
            self._consume(claim)

    def has_generic(self, wanted: tuple[tuple[str, int], ...]) -> bool:
        """Whether the node has ``count`` free of each kind (swarmkit's ``HasEnough``)."""
        for kind, count in wanted:
            free = self.generic_free.get(kind)
            have = len(free) if isinstance(free, list) else (free or 0)
            if count > have:
                return False
        return True

    def _consume(self, claim: Generic) -> None:
        for kind, value in claim:
            free = self.generic_free.get(kind)
            if isinstance(value, str) and isinstance(free, list) and value in free:
                free.remove(value)
            elif isinstance(value, int) and isinstance(free, int):
                self.generic_free[kind] = free - value

    def _claim(self, rec: TaskRecord) -> Generic:
        """What a task takes: the resources it was given, else the first free values (or the count) of each
        kind it reserves (swarmkit's ``Claim``)."""
        if rec.assigned:
            claim = rec.assigned
        else:
            picked: list[tuple[str, str | int]] = []
            for kind, count in rec.generic:
                free = self.generic_free.get(kind)
                if isinstance(free, list):
                    picked.extend((kind, v) for v in free[:count])
                elif isinstance(free, int) and free >= count:
                    picked.append((kind, count))
            claim = tuple(picked)
        self._consume(claim)
        return claim

    def _reclaim(self, claim: Generic) -> None:
        for kind, value in claim:
            total, free = self.generic_total.get(kind), self.generic_free.get(kind)
            if isinstance(value, str) and isinstance(total, list) and value in total and isinstance(free, list) \
                    and value not in free:
                free.append(value)
            elif isinstance(value, int) and isinstance(total, int) and isinstance(free, int):
                self.generic_free[kind] = min(total, free + value)

    @property
    def available_nano_cpus(self) -> int:
        return self.total_nano_cpus - self.reserved_nano_cpus

    @property
    def available_memory_bytes(self) -> int:
        return self.total_memory_bytes - self.reserved_memory_bytes

    def add_record(self, task_id: str, rec: TaskRecord) -> bool:
        """Track a task; an already tracked task is updated. Returns True if anything changed."""
        old = self.tasks.get(task_id)
        if old is not None:
            if old == rec:
                return False
            self.remove_task(task_id)
        self.tasks[task_id] = rec
        if rec.generic:
            self.generic_claims[task_id] = self._claim(rec)
        if rec.nano_cpus or rec.memory_bytes:
            self.reserved_nano_cpus += rec.nano_cpus
            self.reserved_memory_bytes += rec.memory_bytes
        if rec.host_ports:
            hp = self.host_ports
            for port in rec.host_ports:
                hp[port] = hp.get(port, 0) + 1
        if rec.active:
            self.active_tasks += 1
            by_svc = self.active_by_service
            by_svc[rec.service_id] = by_svc.get(rec.service_id, 0) + 1
        return True

    def add_task(self, task: Task) -> bool:
        """Track a task dict (see :meth:`add_record`)."""
        return self.add_record(task["ID"], TaskRecord.from_task(task))

    def remove_task(self, task_id: str) -> bool:
        """Stop tracking a task, giving back what it consumed. Returns False if it was not tracked."""
        rec = self.tasks.pop(task_id, None)
        if rec is None:
            return False
        self.reserved_nano_cpus -= rec.nano_cpus
        self.reserved_memory_bytes -= rec.memory_bytes
        claim = self.generic_claims.pop(task_id, None)
        if claim:
            self._reclaim(claim)
        for port in rec.host_ports:
            left = self.host_ports.get(port, 0) - 1
            if left > 0:
                self.host_ports[port] = left
            else:
                self.host_ports.pop(port, None)
        if rec.active:
            self.active_tasks -= 1
            left = self.active_by_service.get(rec.service_id, 0) - 1
            if left > 0:
                self.active_by_service[rec.service_id] = left
            else:
                self.active_by_service.pop(rec.service_id, None)
        return True

    def task_failed(self, service_id: str, now: float | None = None) -> None:
        """Record that a task of ``service_id`` failed or was rejected on this node."""
        now = time.monotonic() if now is None else now
        if now - self._last_cleanup >= MONITOR_FAILURES:
            self.failures = {
                sid: ts for sid, ts in self.failures.items() if ts and now - ts[-1] < MONITOR_FAILURES
            }
            self._last_cleanup = now
        stamps = [t for t in self.failures.get(service_id, ()) if now - t < MONITOR_FAILURES]
        stamps.append(now)
        self.failures[service_id] = stamps

    def recent_failures(self, service_id: str, now: float | None = None) -> int:
        """Failures of ``service_id`` on this node within the last :data:`MONITOR_FAILURES` seconds."""
        stamps = self.failures.get(service_id)
        if not stamps:
            return 0
        now = time.monotonic() if now is None else now
        return sum(1 for t in stamps if now - t <= MONITOR_FAILURES)


def normalize_arch(arch: str) -> str:
    """Normalise architecture aliases the way swarmkit's platform filter does."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)
