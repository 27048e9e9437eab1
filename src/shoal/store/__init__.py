"""Desired-state store: the protocol and its backends (imported lazily: shoald loads only etcd's, the tests
and simulations only the in-memory one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.store.base import (
    KV,
    CompactedError,
    Compare,
    Delete,
    Event,
    Op,
    Put,
    Store,
    StoreError,
    TxnResult,
)

if TYPE_CHECKING:
    from shoal.store.etcd import EtcdStore
    from shoal.store.etcd_member import EtcdMember, EtcdTLS
    from shoal.store.memory import MemoryStore

__all__ = [
    "KV",
    "CompactedError",
    "Compare",
    "Delete",
    "EtcdMember",
    "EtcdStore",
    "EtcdTLS",
    "Event",
    "MemoryStore",
    "Op",
    "Put",
    "Store",
    "StoreError",
    "TxnResult",
]

_LAZY = {
    "MemoryStore": "shoal.store.memory",
    "EtcdStore": "shoal.store.etcd",
    "EtcdMember": "shoal.store.etcd_member",
    "EtcdTLS": "shoal.store.etcd_member",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
