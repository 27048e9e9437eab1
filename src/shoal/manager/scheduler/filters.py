"""Feasibility filters (after swarmkit ``manager/scheduler/filter.go`` and ``pipeline.go``).

Each filter is configured for one task with :meth:`Filter.set_task` (False = not applicable, skip it),
then answers :meth:`Filter.check` per node, and :meth:`Filter.explain` words a failure on N nodes with
swarmkit's exact texts. Filters whose answer depends on the tasks already placed on a node are marked
``dynamic``: they are re-checked after every placement. Plugin checks (volume/network/log drivers) are
not modelled.
"""

from __future__ import annotations

from typing import Any, ClassVar

from shoal.model.constraint import Constraint, attrs_match, parse

from .nodeinfo import NodeInfo, normalize_arch, task_generic, task_host_ports, task_reservations

Task = dict[str, Any]


def _on_nodes(text: str, nodes: int) -> str:
    return f"{text} on 1 node" if nodes == 1 else f"{text} on {nodes} nodes"


class Filter:
    """Base class: a yes/no test of one node for the task given to :meth:`set_task`."""

    dynamic: ClassVar[bool] = False

    def set_task(self, task: Task) -> bool:
        """Configure for ``task``; return False if the filter does not apply to it."""
        raise NotImplementedError

    def check(self, ni: NodeInfo) -> bool:
        """True if the configured task may run on the node."""
        raise NotImplementedError

    def explain(self, nodes: int) -> str:
        """Explain the filter failing on ``nodes`` nodes."""
        raise NotImplementedError


class ReadyFilter(Filter):
    """Node must be ``ready`` and have availability ``active``."""

    def set_task(self, task: Task) -> bool:
        return True

    def check(self, ni: NodeInfo) -> bool:
        return ni.ready

    def explain(self, nodes: int) -> str:
        if nodes == 1:
            return "1 node not available for new tasks"
        return f"{nodes} nodes not available for new tasks"


class ResourceFilter(Filter):
    """Node must have the reserved CPU, memory and generic resources still available."""

    dynamic = True

    def __init__(self) -> None:
        self.nano_cpus = 0
        self.memory_bytes = 0
        self.generic: tuple[tuple[str, int], ...] = ()

    def set_task(self, task: Task) -> bool:
        self.nano_cpus, self.memory_bytes = task_reservations(task)
        self.generic = task_generic(task)
        return bool(self.nano_cpus or self.memory_bytes or self.generic)

    def check(self, ni: NodeInfo) -> bool:
        return (
            self.nano_cpus <= ni.total_nano_cpus - ni.reserved_nano_cpus
            and self.memory_bytes <= ni.total_memory_bytes - ni.reserved_memory_bytes
            and (not self.generic or ni.has_generic(self.generic))
        )

    def explain(self, nodes: int) -> str:
        return _on_nodes("insufficient resources", nodes)


class ConstraintFilter(Filter):
    """Node must satisfy ``Spec.Placement.Constraints`` (unparsable constraints disable the filter)."""

    def __init__(self) -> None:
        self.constraints: list[Constraint] = []

    def set_task(self, task: Task) -> bool:
        exprs = ((task.get("Spec") or {}).get("Placement") or {}).get("Constraints")
        if not exprs:
            return False
        try:
            self.constraints = parse(exprs)
        except ValueError:
            return False  # validated by the API; like swarmkit, treat as no constraints
        return True

    def check(self, ni: NodeInfo) -> bool:
        return attrs_match(self.constraints, ni.attrs)

    def explain(self, nodes: int) -> str:
        return _on_nodes("scheduling constraints not satisfied", nodes)


class PlatformFilter(Filter):
    """Node OS/architecture must be one of ``Spec.Placement.Platforms`` (empty field = any)."""

    def __init__(self) -> None:
        self.platforms: list[tuple[str, str]] = []

    def set_task(self, task: Task) -> bool:
        plats = ((task.get("Spec") or {}).get("Placement") or {}).get("Platforms") or []
        self.platforms = [(p.get("OS") or "", normalize_arch(p.get("Architecture") or "")) for p in plats]
        return bool(self.platforms)

    def check(self, ni: NodeInfo) -> bool:
        if ni.platform is None:
            return False
        node_os, node_arch = ni.platform
        return any(
            (not arch or arch == node_arch) and (not os_ or os_ == node_os) for os_, arch in self.platforms
        )

    def explain(self, nodes: int) -> str:
        return _on_nodes("unsupported platform", nodes)


class HostPortFilter(Filter):
    """Host-mode published ports of the task must be free on the node."""

    dynamic = True

    def __init__(self) -> None:
        self.ports: tuple[tuple[str, int], ...] = ()

    def set_task(self, task: Task) -> bool:
        self.ports = task_host_ports(task)
        return bool(self.ports)

    def check(self, ni: NodeInfo) -> bool:
        used = ni.host_ports
        return not any(p in used for p in self.ports)

    def explain(self, nodes: int) -> str:
        return _on_nodes("host-mode port already in use", nodes)


class MaxReplicasFilter(Filter):
    """Node must run fewer than ``Spec.Placement.MaxReplicas`` active tasks of the service."""

    dynamic = True

    def __init__(self) -> None:
        self.service_id = ""
        self.max_replicas = 0

    def set_task(self, task: Task) -> bool:
        self.max_replicas = int(((task.get("Spec") or {}).get("Placement") or {}).get("MaxReplicas") or 0)
        self.service_id = task.get("ServiceID") or ""
        return self.max_replicas > 0

    def check(self, ni: NodeInfo) -> bool:
        return ni.active_by_service.get(self.service_id, 0) < self.max_replicas

    def explain(self, nodes: int) -> str:
        return "max replicas per node limit exceed"


#: Pipeline order (swarmkit's ``defaultFilters``, minus the plugin filter).
DEFAULT_FILTERS: tuple[type[Filter], ...] = (
    ReadyFilter,
    ResourceFilter,
    ConstraintFilter,
    PlatformFilter,
    HostPortFilter,
    MaxReplicasFilter,
)


def enabled_filters(task: Task) -> list[Filter]:
    """Fresh instances of the default filters that apply to ``task``, in pipeline order."""
    out = []
    for cls in DEFAULT_FILTERS:
        f = cls()
        if f.set_task(task):
            out.append(f)
    return out


def explain_failures(filters: list[Filter], counts: list[int]) -> str:
    """Join the explanations of failed filters, most failures first (ties in pipeline order)."""
    failed = sorted((i for i, c in enumerate(counts) if c), key=lambda i: -counts[i])
    return "; ".join(filters[i].explain(counts[i]) for i in failed)


def no_suitable_node(explanation: str) -> str:
    """The task error when no node fits: ``no suitable node (<explanation>)``."""
    return f"no suitable node ({explanation})" if explanation else "no suitable node"


class Pipeline:
    """Runs the filters for one task against nodes, counting which filter rejected each node."""

    def __init__(self, task: Task | None = None) -> None:
        self.filters: list[Filter] = []
        self.failures: list[int] = []
        if task is not None:
            self.set_task(task)

    def set_task(self, task: Task) -> None:
        """Configure the filters for ``task`` and reset the failure counts."""
        self.filters = enabled_filters(task)
        self.failures = [0] * len(self.filters)

    def process(self, ni: NodeInfo) -> bool:
        """True if every enabled filter passes; otherwise count the first failing one."""
        for i, f in enumerate(self.filters):
            if not f.check(ni):
                self.failures[i] += 1
                return False
        return True

    def explain(self) -> str:
        """Explanation of the failures counted so far (empty if none)."""
        return explain_failures(self.filters, self.failures)
