"""``shoal backup`` and ``shoal restore``: snapshots of a manager's store, sealed under the cluster's data
key (see docs/operations.md). A backup file is written 0600; restoring it needs the data key, which the
manager restored on holds (with autolock: sealed, so ``--unlock-key`` must be given)."""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import time
from pathlib import Path

import aiohttp

from shoal.manager.autolock import InvalidUnlockKey, parse
from shoal.manager.backup_seal import BackupError, open_file
from shoal.model.errors import BadRequest
from shoal.node.keylock import KeyLock
from shoal.node.state import NodeState
from shoal.store.backup import restore
from shoal.store.base import StoreError
from shoal.tls.files import KEY_MODE, NodeTLS, replacing


def add_parsers(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("backup", help="write a snapshot of the swarm's store to a file (on a manager)")
    b.add_argument("file")
    b.add_argument("--socket", default="/run/shoal/shoal.sock", help="shoald's socket")
    r = sub.add_parser("restore", help="turn a snapshot into this manager's store (shoald stopped)")
    r.add_argument("file")
    r.add_argument("--data-dir", default="/var/lib/shoal")
    r.add_argument("--unlock-key", default="", help="the swarm's unlock key (SWMKEY-1-…), if autolock is on")


async def _download(socket: str, file: Path) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket)) as http, \
            http.get("http://shoal/shoal/backup") as resp:
        if resp.status != 200:
            body = await resp.json(content_type=None)
            raise RuntimeError(body.get("message", f"backup failed ({resp.status})"))
        size = 0
        with replacing(file, KEY_MODE) as f:  # 0600 from its first byte
            async for chunk in resp.content.iter_chunked(1 << 20):
                f.write(chunk)
                size += len(chunk)
    return size


def _data_key(data_dir: Path, unlock_key: str) -> bytes:
    """The cluster's data key as this manager keeps it: a plain file, or sealed under the unlock key."""
    lock = KeyLock(data_dir)
    if not lock.enabled:
        try:
            return NodeTLS(data_dir / "certificates").data_key()
        except OSError as e:
            raise RuntimeError(f"this manager holds no data key ({e}): restore on a manager of the swarm") from None
    if not unlock_key:
        raise RuntimeError("autolock is on: the data key is sealed; give the unlock key with --unlock-key")
    try:
        keys = lock.read_sealed(parse(unlock_key))
    except (InvalidUnlockKey, BadRequest) as e:
        raise RuntimeError(str(e)) from None
    return base64.b64decode(keys["certificates/swarm-data.key"])


def _restore(sealed: Path, data_dir: Path, unlock_key: str = "") -> str:
    state_file = data_dir / "state.json"
    st = NodeState.load(state_file)
    if st is None:
        raise RuntimeError(f"{data_dir} holds no swarm state: restore on a manager that was part of the swarm")
    if st.role != "manager":
        raise RuntimeError("this node is not a manager: restore a snapshot on a manager")
    pid_file = data_dir / "etcd" / "etcd.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().strip() or 0)
        if pid and Path(f"/proc/{pid}").exists():
            raise RuntimeError("this manager's etcd member is running: stop shoald first")
    snapshot = data_dir / "restore-snapshot.db"
    try:
        open_file(sealed, snapshot, _data_key(data_dir, unlock_key))
    except BackupError as e:
        raise RuntimeError(f"{sealed}: {e}") from None
    edir = data_dir / "etcd"
    kept = data_dir / f"etcd.before-restore-{int(time.time())}"
    if edir.exists():
        edir.rename(kept)
    peer = f"https://{st.addr}:{st.etcd_peer_port}"
    try:
        restore(snapshot, edir, st.node_id, peer)
    except StoreError:
        if kept.exists():
            shutil.rmtree(edir, ignore_errors=True)
            kept.rename(edir)
        raise
    finally:
        snapshot.unlink(missing_ok=True)
    st.etcd_cluster, st.restored = "", True
    st.save(state_file)
    return str(kept) if kept.exists() else ""


def run(args: argparse.Namespace) -> int:
    import asyncio

    try:
        if args.cmd == "backup":
            size = asyncio.run(_download(args.socket, Path(args.file)))
            print(f"wrote {args.file} ({size} bytes)")
        else:
            kept = _restore(Path(args.file), Path(args.data_dir), args.unlock_key)
            note = f" (the old store is in {kept})" if kept else ""
            print(f"restored {args.file} into {args.data_dir}/etcd{note}")
            print("start shoald: it comes back as the only manager; promote others to add managers again")
    except (RuntimeError, StoreError, OSError, aiohttp.ClientError) as e:
        print(f"shoal {args.cmd}: {e}", file=sys.stderr)
        return 1
    return 0
