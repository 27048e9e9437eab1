"""The node's own state on disk (``<data-dir>/state.json``): which swarm, which node, which role, and the
addresses and etcd settings to come back with after a restart. The desired state of the swarm is in the
store; this is only what a node needs to find it again."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class NodeState:
    node_id: str = ""
    role: str = "worker"
    addr: str = ""  # the advertised IP
    port: int = 2377  # the advertised cluster port
    listen: str = ""  # the cluster port's listen address, host:port
    managers: list[str] = field(default_factory=list)  # host:port of the managers' cluster ports
    etcd_cluster: str = ""  # --initial-cluster of a manager that joined an existing etcd cluster
    etcd_peer_port: int = 2380
    restored: bool = False  # `shoal restore` made a one-member cluster of a snapshot: become its only manager

    @property
    def cluster_addr(self) -> str:
        return f"{self.addr}:{self.port}"

    @classmethod
    def load(cls, path: Path) -> NodeState | None:
        """The state saved at ``path`` (None: this node is in no swarm)."""
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))
