"""The store interface: revisioned keys, compare-and-swap transactions, gap-free watches, leases.

Semantics follow etcd v3. Every write bumps one global revision. A key's ``mod_revision`` is the
revision of its last write, ``create_revision`` the revision that created it (0 = absent).
Backends: :mod:`shoal.store.memory` (unit tests, simulations) and :mod:`shoal.store.etcd`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from shoal.model.errors import StoreError as StoreError  # the store's errors are the API's 503


class CompactedError(StoreError):
    """A watch asked for a revision that has been compacted away."""


@dataclass(frozen=True, slots=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int = 1
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    type: Literal["put", "delete"]
    kv: KV  # for a delete: key set, value b"", mod_revision = the deleting revision
    prev: KV | None = None


@dataclass(frozen=True, slots=True)
class Compare:
    """``key``'s mod_revision must equal ``mod_revision`` (0 means: the key must not exist)."""

    key: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


Op = Put | Delete


@dataclass(slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store's revision after the transaction (unchanged if it failed)
    failed: list[str] = field(default_factory=list)  # keys whose compare failed


class Store(Protocol):
    """What every backend provides. Keys are strings, values bytes."""

    async def get(self, key: str) -> KV | None: ...

    async def range(self, prefix: str) -> tuple[list[KV], int]:
        """All keys under ``prefix`` (sorted by key) and the revision they were read at."""
        ...

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """Apply ``ops`` atomically if every compare holds; otherwise change nothing."""
        ...

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Unconditional put; returns the new revision."""
        ...

    async def delete(self, key: str) -> bool: ...

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        """Events for keys under ``prefix`` from ``start_revision`` on (inclusive), in order, batched
        per revision. Together with :meth:`range` this gives a gap-free view: read at revision R, then
        watch from R + 1. ``start_revision`` <= 0 means from the next revision on. Raises
        :class:`CompactedError` (on first iteration) if ``start_revision`` is compacted."""
        ...

    async def lease_grant(self, ttl: int) -> int:
        """A lease of ``ttl`` seconds; keys put with it vanish when it expires or is revoked."""
        ...

    async def lease_keepalive(self, lease: int) -> None:
        """Refresh the lease once. Raises :class:`StoreError` if it has expired."""
        ...

    async def lease_revoke(self, lease: int) -> None: ...

    async def compact(self, revision: int) -> None: ...

    async def revision(self) -> int: ...

    async def close(self) -> None: ...
