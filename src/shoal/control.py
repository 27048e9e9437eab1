"""The control interface: everything the Engine-API handlers may ask of this node (swarmkit's controlapi
is the model). ``shoal.api`` imports this module and ``shoal.model`` only (an import-linter contract).

:class:`Control` is this host's node: its own state, joining and leaving, standalone containers on swarm
networks. :class:`ManagerControl` is the swarm's state as a manager sees it: reads come from its object
cache; writes run on the leader (:attr:`ManagerControl.is_leader`; a follower forwards the HTTP request
with :meth:`ManagerControl.forward`). Objects are the Engine API's JSON shapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from shoal.model.logs import LogLine, LogQuery


@dataclass(frozen=True)
class LocalNode:
    """This host's place in a swarm."""

    state: str  # inactive | pending | active | locked (the ``Swarm`` header of ``/_ping``)
    role: str  # worker | manager
    node_id: str
    addr: str  # the advertised address


@dataclass(frozen=True)
class Attachment:
    """A standalone container's attachment to a swarm network, ready for the engine."""

    task_id: str
    network: str  # the engine-local twin to name in the create or connect request
    ipam: dict  # the endpoint's IPAMConfig (the address the allocator gave)
    dns: list[str]  # this node's DNS server for the container


@dataclass(frozen=True)
class Forwarded:
    """The leader's answer to a write forwarded from a follower."""

    status: int
    body: bytes
    content_type: str


class Objects(Protocol):
    """Read access to the swarm's objects (a manager's cache)."""

    def get(self, kind: str, oid: str) -> dict | None: ...

    def list(self, kind: str) -> list[dict]: ...

    def tasks_of_service(self, sid: str) -> list[dict]: ...


class Events(Protocol):
    """The swarm's events (``docker events``): the recent ones and a subscription to new ones."""

    @property
    def history(self) -> Iterable[dict]: ...

    def subscribe(self) -> asyncio.Queue[dict | None]:
        """New events; ``None`` ends them (the subscriber fell too far behind and is cut off)."""

    def unsubscribe(self, sub: asyncio.Queue[dict | None]) -> None: ...


class ManagerControl(Protocol):
    """The swarm as one of its managers sees it."""

    @property
    def objects(self) -> Objects: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def events(self) -> Events: ...

    async def forward(self, method: str, path_qs: str, body: bytes, headers: dict[str, str]) -> Forwarded:
        """A write made here, answered by the leader (raises Unavailable when there is none)."""
        ...

    # -- the swarm ---------------------------------------------------------------------------------
    def cluster(self, with_tokens: bool = True) -> dict: ...

    def unlock_key(self) -> str: ...

    async def update_swarm(self, spec: dict, version: int, rotate_worker: bool, rotate_manager: bool,
                           rotate_unlock: bool) -> None: ...

    def snapshot(self) -> AbstractAsyncContextManager[tuple[str, int]]:
        """A snapshot of the store in a file (its path and size), removed when the context ends."""
        ...

    # -- writes (leader only) ----------------------------------------------------------------------
    async def create_service(self, spec: dict, registry_auth: str = "") -> str:
        """A service; ``registry_auth``: the client's encoded registry credentials (``X-Registry-Auth``),
        kept sealed for the nodes that pull its image."""
        ...

    async def update_service(self, service: dict, version: int, spec: dict, rollback: bool,
                             registry_auth: str = "", previous_auth: bool = False) -> None:
        """Without new credentials the service keeps those of its spec (or of its previous spec)."""
        ...

    async def remove_service(self, service: dict) -> None: ...

    async def update_node(self, node: dict, version: int, spec: dict) -> None: ...

    async def remove_node(self, node: dict, force: bool) -> None: ...

    async def create_network(self, spec: dict) -> str: ...

    async def remove_network(self, network: dict) -> None: ...

    async def create_secret(self, kind: str, spec: dict, data: bytes) -> str:
        """A secret (sealed before it is stored) or a config."""
        ...

    async def update_secret(self, kind: str, obj: dict, version: int, labels: dict[str, str]) -> None: ...

    async def remove_secret(self, kind: str, obj: dict) -> None: ...

    def reveal(self, kind: str, obj: dict) -> bytes:
        """The plain data of a secret or config (a secret only on a manager that holds the CA key)."""
        ...

    # -- logs --------------------------------------------------------------------------------------
    def logs(self, service: dict, task: dict | None, query: LogQuery) -> AsyncGenerator[LogLine, None]:
        """The lines of the service's (or the task's) containers on every node, as they come."""
        ...


class Control(Protocol):
    """This host's node."""

    @property
    def engine_socket(self) -> str:
        """The local Docker Engine's unix socket (every path shoal does not answer goes there)."""
        ...

    def local(self) -> LocalNode: ...

    def swarm_info(self) -> dict:
        """``Info.Swarm`` as ``GET /info`` shows it."""
        ...

    def manager(self) -> ManagerControl:
        """The swarm's state, if this node is an active manager; else Unavailable with Docker's message
        (not a manager, a worker, or locked)."""
        ...

    async def init_swarm(self, request: dict) -> str: ...

    async def join_swarm(self, request: dict) -> None: ...

    async def leave_swarm(self, force: bool) -> None: ...

    async def unlock_swarm(self, key: str) -> None: ...

    # -- standalone containers on attachable swarm networks (any node in a swarm) ------------------
    def networks_here(self) -> list[dict] | None:
        """The swarm networks this node takes part in, as ``docker network inspect`` shows them (None when
        the node has no swarm networking)."""
        ...

    async def attach(self, network: str, container: str) -> Attachment: ...

    async def detach(self, task_ids: Iterable[str]) -> None:
        """Give attachments back (failures are logged; the collector tries again)."""
        ...

    async def collect_attachments(self) -> None:
        """Give back at once the attachments whose container is gone."""
        ...
