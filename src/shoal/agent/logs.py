"""A node's side of ``docker service logs``: the log lines of this host's task containers.

The managers ask each node that runs (or ran) a task of the service. A node reads its local engine's
container logs (always with timestamps, which the manager drops unless asked for), and while following
it picks up the containers of tasks that start later. Remote managers get the lines over the cluster
port (mutual TLS) as JSON lines; the manager that answers the API merges them into Docker's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from shoal.aio import cancel_all
from shoal.model import labels
from shoal.tls import peer_identity

if TYPE_CHECKING:
    from shoal.api.proxy import EngineProxy
    from shoal.daemon import Daemon

log = logging.getLogger(__name__)

POLL = 0.5  # how often a following reader looks for new task containers


@dataclass
class LogQuery:
    """What to read: the containers of one service or one task."""

    service: str = ""
    task: str = ""
    follow: bool = False
    tail: str = "all"
    since: str = ""
    tty: bool = False

    def params(self) -> dict[str, str]:
        return {"service": self.service, "task": self.task, "follow": "1" if self.follow else "0",
                "tail": self.tail, "since": self.since, "tty": "1" if self.tty else "0"}

    @classmethod
    def from_params(cls, q: dict) -> LogQuery:
        return cls(service=q.get("service", ""), task=q.get("task", ""), follow=q.get("follow") == "1",
                   tail=q.get("tail") or "all", since=q.get("since", ""), tty=q.get("tty") == "1")


@dataclass(slots=True)
class LogLine:
    task_id: str
    stream: int  # 1 stdout, 2 stderr
    timestamp: str  # RFC 3339 with nanoseconds, as the engine gives it
    data: bytes  # the line, newline included
    node_id: str = ""

    def to_json(self) -> str:
        return json.dumps({"t": self.task_id, "s": self.stream, "ts": self.timestamp,
                           "l": self.data.decode("latin-1")})

    @classmethod
    def from_json(cls, raw: str | bytes) -> LogLine:
        d = json.loads(raw)
        return cls(d["t"], int(d["s"]), d["ts"], d["l"].encode("latin-1"))


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


async def _container_lines(proxy: EngineProxy, cid: str, task_id: str, q: LogQuery,
                           out: asyncio.Queue, node_id: str) -> None:
    params = {"stdout": "1", "stderr": "1", "timestamps": "1", "follow": "1" if q.follow else "0",
              "tail": q.tail or "all"}
    if q.since:
        params["since"] = q.since
    try:
        async with proxy.session.get(f"http://docker/containers/{cid}/logs?{urlencode(params)}") as resp:
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


async def local_logs(proxy: EngineProxy, q: LogQuery, out: asyncio.Queue, node_id: str = "") -> None:
    """Put every log line of this host's matching task containers on ``out``; returns when all are read
    (never, when following: cancel it)."""
    label = f"{labels.TASK_ID}={q.task}" if q.task else f"{labels.SERVICE_ID}={q.service}"
    query = urlencode({"all": "1", "filters": json.dumps({"label": [label]})})
    seen: set[str] = set()
    readers: list[asyncio.Task] = []
    try:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with proxy.session.get(f"http://docker/containers/json?{query}") as resp:
                    containers = await resp.json() if resp.status == 200 else []
                for c in sorted(containers, key=lambda c: c.get("Created", 0)):
                    if c["Id"] in seen:
                        continue
                    seen.add(c["Id"])
                    tid = (c.get("Labels") or {}).get(labels.TASK_ID, "")
                    readers.append(asyncio.create_task(_container_lines(proxy, c["Id"], tid, q, out, node_id)))
            if not q.follow:
                break
            await asyncio.sleep(POLL)
        await asyncio.gather(*readers)
    finally:
        await cancel_all(readers)


async def remote_logs(addr: str, ssl_ctx: ssl.SSLContext, q: LogQuery, node_id: str) -> AsyncIterator[LogLine]:
    """The lines node ``node_id``'s shoald reads from its engine (``GET https://addr/logs``)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(
            f"https://{addr}/logs", params={**q.params(), "node": node_id}, ssl=ssl_ctx) as resp:
        if resp.status != 200:
            raise RuntimeError(f"node {addr} refused the log request ({resp.status}): {await resp.text()}")
        async for raw in resp.content:
            if raw.strip():
                yield LogLine.from_json(raw)


async def drain(out: asyncio.Queue, producers: set[asyncio.Task]) -> AsyncIterator[LogLine]:
    """Yield what the producers put on ``out`` until all of them are done and it is empty (the set may
    grow meanwhile)."""
    while True:
        if not out.empty():
            yield out.get_nowait()
            continue
        pending = {p for p in producers if not p.done()}
        if not pending:
            return
        get = asyncio.ensure_future(out.get())
        await asyncio.wait({get, *pending}, return_when=asyncio.FIRST_COMPLETED)
        if get.done():
            yield get.result()
        else:
            get.cancel()


def make_logs_handler(daemon: Daemon):
    """``GET /logs`` on the cluster port: for managers of this swarm only."""

    async def node_logs(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        ident = peer_identity(transport.get_extra_info("peercert") if transport else None)
        if ident is None or ident[1] != "manager":
            return web.json_response({"message": "only managers of this swarm may read logs"}, status=403)
        if request.rel_url.query.get("node") != daemon.node_id:
            return web.json_response({"message": "the logs asked for are another node's"}, status=409)
        q = LogQuery.from_params(dict(request.rel_url.query))
        if not q.service and not q.task:
            return web.json_response({"message": "a service or a task is required"}, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        out: asyncio.Queue = asyncio.Queue(maxsize=1000)
        reader = asyncio.create_task(local_logs(daemon.proxy, q, out, daemon.node_id))
        try:
            async for line in drain(out, {reader}):
                await resp.write((line.to_json() + "\n").encode())
        finally:
            await cancel_all((reader,))
        await resp.write_eof()
        return resp

    return node_logs


def make_node_app(daemon: Daemon) -> web.Application:
    """What a worker serves on its cluster port: the managers' log requests."""
    app = web.Application()
    app.router.add_get("/logs", make_logs_handler(daemon))
    return app
