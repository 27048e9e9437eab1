"""A node's side of ``docker service logs``: the log lines of this host's task containers.

The managers ask each node that runs (or ran) a task of the service (shoal.manager.logs). A node reads its
local engine's container logs (always with timestamps, which the manager drops unless asked for), and
while following it picks up the containers of tasks that start later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator
from urllib.parse import urlencode

import aiohttp

from shoal.aio import cancel_all, drain
from shoal.engine import Engine
from shoal.model import labels
from shoal.model.logs import LogLine, LogQuery

log = logging.getLogger(__name__)

POLL = 0.5  # how often a following reader looks for new task containers


def _split(buf: bytearray, chunk: bytes) -> list[bytes]:
    """Append ``chunk``; return the complete lines (newline kept)."""
    buf += chunk
    lines = []
    while (i := buf.find(b"\n")) >= 0:
        lines.append(bytes(buf[:i + 1]))
        del buf[:i + 1]
    return lines


def _line(task_id: str, stream: int, raw: bytes, node_id: str) -> LogLine:
    ts, sep, rest = raw.partition(b" ")
    if not sep:
        return LogLine(task_id, stream, "", raw, node_id)
    return LogLine(task_id, stream, ts.decode(errors="replace"), rest, node_id)


async def _container_lines(engine: Engine, cid: str, task_id: str, q: LogQuery,
                           out: asyncio.Queue, node_id: str) -> None:
    params = {"stdout": "1", "stderr": "1", "timestamps": "1", "follow": "1" if q.follow else "0",
              "tail": q.tail or "all"}
    if q.since:
        params["since"] = q.since
    try:
        async with engine.session.get(f"http://docker/containers/{cid}/logs?{urlencode(params)}") as resp:
            if resp.status != 200:
                return
            bufs = {1: bytearray(), 2: bytearray()}
            if q.tty:  # a raw stream
                async for chunk in resp.content.iter_any():
                    for raw in _split(bufs[1], chunk):
                        await out.put(_line(task_id, 1, raw, node_id))
            else:  # multiplexed: 8-byte headers (stream, 0, 0, 0, big-endian size)
                while True:
                    try:
                        head = await resp.content.readexactly(8)
                    except asyncio.IncompleteReadError:
                        break
                    size = int.from_bytes(head[4:8], "big")
                    payload = await resp.content.readexactly(size)
                    stream = 2 if head[0] == 2 else 1
                    for raw in _split(bufs[stream], payload):
                        await out.put(_line(task_id, stream, raw, node_id))
            for stream, rest in bufs.items():
                if rest:
                    await out.put(_line(task_id, stream, bytes(rest) + b"\n", node_id))
    except (aiohttp.ClientError, asyncio.IncompleteReadError) as e:
        log.debug("logs of container %s ended: %s", cid, e)


async def _read(engine: Engine, q: LogQuery, out: asyncio.Queue, node_id: str) -> None:
    """Put every log line of this host's matching task containers on ``out``; returns when all are read
    (never, when following: cancel it)."""
    label = f"{labels.TASK_ID}={q.task}" if q.task else f"{labels.SERVICE_ID}={q.service}"
    query = urlencode({"all": "1", "filters": json.dumps({"label": [label]})})
    seen: set[str] = set()
    readers: list[asyncio.Task] = []
    try:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with engine.session.get(f"http://docker/containers/json?{query}") as resp:
                    containers = await resp.json() if resp.status == 200 else []
                for c in sorted(containers, key=lambda c: c.get("Created", 0)):
                    if c["Id"] in seen:
                        continue
                    seen.add(c["Id"])
                    tid = (c.get("Labels") or {}).get(labels.TASK_ID, "")
                    readers.append(asyncio.create_task(_container_lines(engine, c["Id"], tid, q, out, node_id)))
            if not q.follow:
                break
            await asyncio.sleep(POLL)
        await asyncio.gather(*readers)
    finally:
        await cancel_all(readers)


async def local_logs(engine: Engine, q: LogQuery, node_id: str = "") -> AsyncGenerator[LogLine, None]:
    """Every log line of this host's matching task containers (following: until closed)."""
    out: asyncio.Queue[LogLine] = asyncio.Queue(maxsize=1000)
    reader = asyncio.create_task(_read(engine, q, out, node_id))
    try:
        async for line in drain(out, {reader}):
            yield line
    finally:
        await cancel_all((reader,))


