"""The cluster's own secrets in its store object, sealed under the cluster's data key.

The cluster object keeps them under ``ShoalSealed`` (never shown by the API): the join tokens, the root
CA's key (and the next root's during a rotation) and autolock's unlock key. Each is AES-256-GCM with the
cluster ID and the field's name as associated data, so a copy of the store (an etcd snapshot, a data
directory) without the data key reveals none of them.
"""

from __future__ import annotations

from shoal.manager.secrets import Sealer

FIELD = "ShoalSealed"


def _where(cluster: dict, name: str) -> str:
    return f"{cluster['ID']}/{name}"


def put(cluster: dict, sealer: Sealer, name: str, data: bytes | None) -> None:
    """Seal ``data`` into the cluster object as ``name`` (None removes it)."""
    fields = cluster.setdefault(FIELD, {})
    if data is None:
        fields.pop(name, None)
    else:
        fields[name] = sealer.seal("clusters", _where(cluster, name), data)


def get(cluster: dict, sealer: Sealer, name: str) -> bytes | None:
    """The field ``name`` opened (None when absent; SealError when the data key is not this cluster's)."""
    sealed = (cluster.get(FIELD) or {}).get(name)
    return None if sealed is None else sealer.open("clusters", _where(cluster, name), sealed)


def has(cluster: dict, name: str) -> bool:
    return name in (cluster.get(FIELD) or {})
