"""Small typed views of the stored objects (Engine API shapes).

The store and the API speak JSON; everything in between reads objects through these views instead of
chains of ``.get(...) or {}``. A view wraps the dict it is given (no copy, read-only): it is cheap to make
per read, and ``raw`` is there when the whole object must be written back.
"""

from __future__ import annotations

from typing import Any

from shoal.model import states
from shoal.model.labels import ENCRYPTED, VXLAN_ID
from shoal.model.service import DEFAULT_RESTART, DEFAULT_UPDATE, mode_of

ATTACHMENT_SPEC = "NetworkAttachmentSpec"  # the spec key of a standalone container's attachment task


def _d(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


class View:
    __slots__ = ("raw",)

    def __init__(self, raw: dict) -> None:
        self.raw = raw

    @property
    def id(self) -> str:
        return self.raw["ID"]

    @property
    def version(self) -> int:
        return _d(self.raw.get("Version")).get("Index", 0)

    @property
    def created_at(self) -> str:
        return self.raw.get("CreatedAt", "")

    @property
    def spec(self) -> dict:
        return _d(self.raw.get("Spec"))


class TaskView(View):
    __slots__ = ()

    @property
    def service_id(self) -> str:
        return self.raw.get("ServiceID") or ""

    @property
    def slot(self) -> int:
        return self.raw.get("Slot") or 0

    @property
    def node_id(self) -> str:
        return self.raw.get("NodeID") or ""

    @property
    def state(self) -> str:
        """The observed state (what the agent reported)."""
        return _d(self.raw.get("Status")).get("State") or states.NEW

    @property
    def desired(self) -> str:
        return self.raw.get("DesiredState") or states.RUNNING

    @property
    def status(self) -> dict:
        return _d(self.raw.get("Status"))

    @property
    def terminal(self) -> bool:
        return states.terminal(self.state)

    @property
    def runnable(self) -> bool:
        """Desired to run (or to become ready to run, or, a job's task, to run to completion)."""
        return states.rank(self.desired) <= states.rank(states.COMPLETE)

    @property
    def job_iteration(self) -> int | None:
        """The run of its job the task belongs to (None: not a job's task)."""
        it = self.raw.get("JobIteration")
        return None if it is None else int(_d(it).get("Index") or 0)

    @property
    def done(self) -> bool:
        """A job's task that completed, as it was meant to."""
        return self.state == states.COMPLETE and self.desired == states.COMPLETE

    @property
    def live(self) -> bool:
        """Desired to run and not stopped."""
        return self.runnable and not self.terminal

    @property
    def is_attachment(self) -> bool:
        return ATTACHMENT_SPEC in self.spec

    @property
    def placement(self) -> dict:
        return _d(self.spec.get("Placement"))

    @property
    def constraints(self) -> list[str]:
        return list(self.placement.get("Constraints") or [])

    @property
    def restart_policy(self) -> dict:
        return {**DEFAULT_RESTART, **_d(self.spec.get("RestartPolicy"))}

    @property
    def attachments(self) -> list[dict]:
        """The task's ``NetworksAttachments`` (a network and the task's addresses on it)."""
        return list(self.raw.get("NetworksAttachments") or [])

    @property
    def network_ids(self) -> list[str]:
        return [a["Network"]["ID"] for a in self.attachments]

    @property
    def endpoint(self) -> dict:
        return _d(self.raw.get("Endpoint"))

    @property
    def service_labels(self) -> dict[str, str]:
        return _d(_d(self.raw.get("ServiceAnnotations")).get("Labels"))


class ServiceView(View):
    __slots__ = ()

    @property
    def name(self) -> str:
        return self.spec.get("Name", "")

    @property
    def labels(self) -> dict[str, str]:
        return _d(self.spec.get("Labels"))

    @property
    def mode(self) -> str:
        """``replicated``, ``global``, ``replicated-job`` or ``global-job``."""
        return mode_of(self.spec)

    @property
    def replicas(self) -> int:
        rep = _d(self.spec.get("Mode")).get("Replicated")
        if rep is None:
            return 1
        n = _d(rep).get("Replicas")
        return 1 if n is None else int(n)

    @property
    def task_template(self) -> dict:
        return _d(self.spec.get("TaskTemplate"))

    @property
    def constraints(self) -> list[str]:
        return list(_d(self.task_template.get("Placement")).get("Constraints") or [])

    @property
    def restart_policy(self) -> dict:
        return {**DEFAULT_RESTART, **_d(self.task_template.get("RestartPolicy"))}

    @property
    def update_config(self) -> dict:
        return {**DEFAULT_UPDATE, **_d(self.spec.get("UpdateConfig"))}

    @property
    def update_status(self) -> dict:
        return _d(self.raw.get("UpdateStatus"))

    @property
    def job_iteration(self) -> int:
        """``JobStatus.JobIteration.Index``: which run of the job is wanted (0 for services)."""
        return int(_d(_d(self.raw.get("JobStatus")).get("JobIteration")).get("Index") or 0)

    @property
    def previous_spec(self) -> dict | None:
        return self.raw.get("PreviousSpec")

    @property
    def endpoint(self) -> dict:
        return _d(self.raw.get("Endpoint"))

    @property
    def virtual_ips(self) -> list[dict]:
        return list(self.endpoint.get("VirtualIPs") or [])

    @property
    def ports(self) -> list[dict]:
        """The allocated ports (``Endpoint.Ports``)."""
        return list(self.endpoint.get("Ports") or [])

    @property
    def network_configs(self) -> list[dict]:
        """The network attachment configs (``TaskTemplate.Networks``, or the legacy ``Spec.Networks``)."""
        return list(self.task_template.get("Networks") or self.spec.get("Networks") or [])


def ingress_ports(spec: dict) -> list[dict]:
    """A service spec's ports published in ingress mode."""
    return [p for p in _d(spec.get("EndpointSpec")).get("Ports") or []
            if (p.get("PublishMode") or "ingress") == "ingress"]


class NodeView(View):
    __slots__ = ()

    @property
    def role(self) -> str:
        """The desired role (``Spec.Role``)."""
        return self.spec.get("Role") or "worker"

    @property
    def availability(self) -> str:
        return self.spec.get("Availability") or "active"

    @property
    def labels(self) -> dict[str, str]:
        return _d(self.spec.get("Labels"))

    @property
    def status(self) -> dict:
        return _d(self.raw.get("Status"))

    @property
    def state(self) -> str:
        return self.status.get("State") or "unknown"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def down(self) -> bool:
        return self.state == "down"

    @property
    def addr(self) -> str:
        """The node's advertised address (its VXLAN endpoint)."""
        return self.status.get("Addr") or ""

    @property
    def description(self) -> dict:
        return _d(self.raw.get("Description"))

    @property
    def hostname(self) -> str:
        return self.description.get("Hostname") or ""

    @property
    def name(self) -> str:
        """What ``docker node ls`` calls it: ``Spec.Name``, else the hostname."""
        return self.spec.get("Name") or self.hostname

    @property
    def manager_status(self) -> dict | None:
        """``ManagerStatus`` while the node is an etcd member (None otherwise)."""
        ms = self.raw.get("ManagerStatus")
        return ms if isinstance(ms, dict) else None

    @property
    def is_leader(self) -> bool:
        return bool((self.manager_status or {}).get("Leader"))

    @property
    def manager_addr(self) -> str:
        """A manager's cluster address (``host:port``), or ``""``."""
        return (self.manager_status or {}).get("Addr") or ""

    @property
    def reachable(self) -> bool:
        ms = self.manager_status or {}
        return bool(ms.get("Leader")) or ms.get("Reachability") == "reachable"

    @property
    def attachments(self) -> list[dict]:
        """The node's own addresses on networks (``Attachments``)."""
        return list(self.raw.get("Attachments") or [])

    def address_on(self, network_id: str) -> str | None:
        for a in self.attachments:
            if a["Network"]["ID"] == network_id and a.get("Addresses"):
                return a["Addresses"][0]
        return None


class NetworkView(View):
    __slots__ = ()

    @property
    def name(self) -> str:
        return self.spec.get("Name", "")

    @property
    def ingress(self) -> bool:
        return bool(self.spec.get("Ingress"))

    @property
    def attachable(self) -> bool:
        return bool(self.spec.get("Attachable"))

    @property
    def internal(self) -> bool:
        return bool(self.spec.get("Internal"))

    @property
    def ipam_config(self) -> dict:
        """The allocated (or requested) IPAM config: ``{"Subnet", "Gateway"}``."""
        cfgs = _d(self.raw.get("IPAMOptions")).get("Configs") or [{}]
        return _d(cfgs[0])

    @property
    def subnet(self) -> str:
        return self.ipam_config.get("Subnet", "")

    @property
    def gateway(self) -> str:
        return self.ipam_config.get("Gateway", "")

    @property
    def encrypted(self) -> bool:
        """``--opt encrypted``: its traffic between nodes goes through WireGuard tunnels."""
        return ENCRYPTED in _d(_d(self.spec.get("DriverConfiguration")).get("Options"))

    @property
    def vni(self) -> int:
        opts = _d(_d(self.raw.get("DriverState")).get("Options"))
        return int(str(opts.get(VXLAN_ID, "0")).split(",")[0] or 0)


class ClusterView(View):
    __slots__ = ()

    @property
    def heartbeat_period(self) -> int:
        """Nanoseconds (default 5 s)."""
        return _d(self.spec.get("Dispatcher")).get("HeartbeatPeriod") or 5_000_000_000

    @property
    def history_limit(self) -> int | None:
        """``Orchestration.TaskHistoryRetentionLimit`` (None when unset)."""
        limit = _d(self.spec.get("Orchestration")).get("TaskHistoryRetentionLimit")
        return None if limit is None else int(limit)

    @property
    def default_addr_pool(self) -> list[str]:
        return list(self.raw.get("DefaultAddrPool") or ["10.0.0.0/8"])

    @property
    def subnet_size(self) -> int:
        return int(self.raw.get("SubnetSize") or 24)
