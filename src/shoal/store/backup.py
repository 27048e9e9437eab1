"""Backup and restore of the etcd store.

:func:`backup` streams a member's snapshot to a file. :func:`restore` turns a snapshot into a fresh
data directory with ``etcdctl snapshot restore`` (a new one-member cluster holding the snapshot's
keys and revisions); start an :class:`~shoal.store.etcd_member.EtcdMember` on it with the same name
and peer URL, then grow the cluster again with :meth:`~shoal.store.etcd_member.EtcdMember.join`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from shoal.store.base import StoreError
from shoal.store.etcd import EtcdStore

__all__ = ["ETCDCTL_BINARY", "backup", "restore"]

ETCDCTL_BINARY = "/usr/bin/etcdctl"


async def backup(store: EtcdStore, path: str | Path, endpoint: str | None = None) -> int:
    """Write a snapshot of the member ``store`` talks to (or ``endpoint``) to ``path``; returns its size."""
    return await store.snapshot(path, endpoint=endpoint)


def restore(
    snapshot_path: str | Path,
    data_dir: str | Path,
    name: str,
    peer_url: str,
    *,
    initial_cluster_token: str = "shoal",
    binary: str = ETCDCTL_BINARY,
    timeout: float = 300.0,
) -> Path:
    """Restore ``snapshot_path`` into ``data_dir`` (which must not exist, or be empty) for member
    ``name`` advertising ``peer_url``. Blocking: from async code run it in a thread. Raises
    :class:`StoreError` with etcdctl's message on failure."""
    data_dir = Path(data_dir)
    if data_dir.exists():
        if any(data_dir.iterdir()):
            raise StoreError(f"cannot restore into {data_dir}: not empty")
        data_dir.rmdir()  # etcdctl insists on creating it
    args = [
        binary,
        "snapshot",
        "restore",
        str(snapshot_path),
        f"--data-dir={data_dir}",
        f"--name={name}",
        f"--initial-cluster={name}={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster-token={initial_cluster_token}",
    ]
    try:
        cp = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, env={**os.environ, "ETCDCTL_API": "3"}
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StoreError(f"etcdctl snapshot restore failed: {e}") from e
    if cp.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        msg = (cp.stderr or cp.stdout).strip().splitlines()
        raise StoreError(f"etcdctl snapshot restore failed: {msg[-1] if msg else cp.returncode}")
    data_dir.chmod(0o700)
    return data_dir
