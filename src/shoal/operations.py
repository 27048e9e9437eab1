"""``shoal backup`` and ``shoal restore``: snapshots of a manager's store (see docs/operations.md)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import aiohttp

from shoal.node.state import NodeState
from shoal.store.backup import restore
from shoal.store.base import StoreError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("backup", help="write a snapshot of the swarm's store to a file (on a manager)")
    b.add_argument("file")
    b.add_argument("--socket", default="/run/shoal/shoal.sock", help="shoald's socket")
    r = sub.add_parser("restore", help="turn a snapshot into this manager's store (shoald stopped)")
    r.add_argument("file")
    r.add_argument("--data-dir", default="/var/lib/shoal")


async def _download(socket: str, file: Path) -> int:
    tmp = file.with_name(file.name + ".part")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket)) as http, \
            http.get("http://shoal/shoal/backup") as resp:
        if resp.status != 200:
            body = await resp.json(content_type=None)
            raise RuntimeError(body.get("message", f"backup failed ({resp.status})"))
        size = 0
        with tmp.open("wb") as f:
            async for chunk in resp.content.iter_chunked(1 << 20):
                f.write(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(file)
    return size


def _restore(snapshot: Path, data_dir: Path) -> str:
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
            kept = _restore(Path(args.file), Path(args.data_dir))
            note = f" (the old store is in {kept})" if kept else ""
            print(f"restored {args.file} into {args.data_dir}/etcd{note}")
            print("start shoald: it comes back as the only manager; promote others to add managers again")
    except (RuntimeError, StoreError, OSError, aiohttp.ClientError) as e:
        print(f"shoal {args.cmd}: {e}", file=sys.stderr)
        return 1
    return 0
