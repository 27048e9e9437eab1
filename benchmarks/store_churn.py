"""Task churn against one etcd member, as shoal runs it: how big does the backend get, and what do
compaction and defragmentation give back?

Writes ``--tasks`` task-sized objects (~2 KiB of JSON), updates each ``--updates`` times (status
changes) and deletes them (the reaper), in rounds; prints the backend size after the churn, after
the compaction etcd's ``--auto-compaction-retention=1000`` would do, and after a defragmentation.

    .venv/bin/python benchmarks/store_churn.py [--tasks 2000] [--updates 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import time
from pathlib import Path

from shoal.store.etcd_member import EtcdMember
from shoal.store.housekeeping import needs_defrag


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _task(i: int, state: str) -> bytes:
    return json.dumps({"ID": f"task{i:025d}", "ServiceID": "svc", "Slot": i, "Spec": {"ContainerSpec": {
        "Image": "shoal/demo-web:latest", "Env": [f"K{k}=v{k}" * 4 for k in range(20)]}},
        "Status": {"State": state, "Message": state, "Timestamp": time.time()}, "Pad": "x" * 1024}).encode()


async def main(tasks: int, updates: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="churn-") as tmp:
        client, peer = f"http://127.0.0.1:{_port()}", f"http://127.0.0.1:{_port()}"
        member = EtcdMember("churn", Path(tmp) / "etcd", client, peer, f"churn={peer}", "new")
        await member.start()
        store = member.store()
        try:
            t0 = time.monotonic()
            writes = 0
            for r in range(rounds):
                for i in range(tasks):
                    await store.put(f"/shoal/tasks/{r}-{i}", _task(i, "new"))
                for state in ("pending", "assigned", "running", "shutdown", "complete")[:updates]:
                    for i in range(tasks):
                        await store.put(f"/shoal/tasks/{r}-{i}", _task(i, state))
                for i in range(tasks):
                    await store.delete(f"/shoal/tasks/{r}-{i}")
                writes += tasks * (2 + min(updates, 5))
            took = time.monotonic() - t0
            st = await store.status()
            print(f"churn: {writes} writes in {took:.1f}s ({writes / took:.0f}/s), revision {st['revision']}")
            mib, used = st["db_size"] / 2**20, st["db_size_in_use"] / 2**20
            print(f"backend after churn:        {mib:7.1f} MiB ({used:.1f} in use)")
            await store.compact(st["revision"] - 1000)
            await asyncio.sleep(1)
            st = await store.status()
            print(f"after compaction (keep 1000 revisions): {st['db_size'] / 2**20:7.1f} MiB "
                  f"({st['db_size_in_use'] / 2**20:.1f} in use); housekeeping would defragment: "
                  f"{needs_defrag(st)}")
            t1 = time.monotonic()
            await store.defragment()
            st = await store.status()
            print(f"after defragmentation:      {st['db_size'] / 2**20:7.1f} MiB in {time.monotonic() - t1:.2f}s")
        finally:
            await store.close()
            await member.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--updates", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    asyncio.run(main(a.tasks, a.updates, a.rounds))
