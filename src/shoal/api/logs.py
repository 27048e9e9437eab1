"""``GET /services/{id}/logs`` and ``GET /tasks/{id}/logs``: the task containers' logs from every node,
in Docker's stream format.

Each line carries the details the docker CLI needs for its ``<task name>.<id>@<node>`` prefix
(``com.docker.swarm.node.id``, ``...service.id``, ``...task.id``, sorted, URL-escaped, comma-separated,
then a space), after the timestamp when asked for. Lines of this host come from the local engine; other
nodes' lines from their shoald over the cluster port (mutual TLS). ``follow`` keeps reading, including
the tasks that start later and nodes that get a task later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING
from urllib.parse import quote_plus

from aiohttp import web

from shoal.agent.logs import LogLine, LogQuery, drain, local_logs, remote_logs
from shoal.aio import cancel_all
from shoal.api.resolve import resolve
from shoal.api.server import route
from shoal.model.errors import APIError, BadRequest

if TYPE_CHECKING:
    from shoal.daemon import Daemon

log = logging.getLogger(__name__)

MUX = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"


def _flag(request: web.Request, name: str) -> bool:
    return request.rel_url.query.get(name, "") in ("1", "true", "True")


def node_endpoint(daemon: Daemon, node: dict) -> str:
    """Where a node's shoald answers log requests: a manager's cluster address; a worker listens on its
    advertised address with the swarm's cluster port."""
    ms = node.get("ManagerStatus") or {}
    if ms.get("Addr"):
        return ms["Addr"]
    return f"{(node.get('Status') or {}).get('Addr', '')}:{daemon.cluster_port}"


def details(line: LogLine, node_id: str, service_id: str) -> str:
    attrs = {"com.docker.swarm.node.id": node_id, "com.docker.swarm.service.id": service_id,
             "com.docker.swarm.task.id": line.task_id}
    return ",".join(sorted(f"{quote_plus(k)}={quote_plus(v)}" for k, v in attrs.items()))


@route("GET", "/services/{ref}/logs")
async def service_logs(daemon: Daemon, request: web.Request, ref: str) -> web.StreamResponse:
    svc = resolve(daemon.objs, "services", ref)
    return await _stream(daemon, request, svc, None)


@route("GET", "/tasks/{ref}/logs")
async def task_logs(daemon: Daemon, request: web.Request, ref: str) -> web.StreamResponse:
    task = resolve(daemon.objs, "tasks", ref)
    svc = daemon.objs.get("services", task["ServiceID"]) or {"ID": task["ServiceID"], "Spec": {}}
    return await _stream(daemon, request, svc, task)


async def _stream(daemon: Daemon, request: web.Request, svc: dict, task: dict | None) -> web.StreamResponse:
    stdout, stderr = _flag(request, "stdout"), _flag(request, "stderr")
    if not (stdout or stderr):
        raise BadRequest("Bad parameters: you must choose at least one stream")
    tail = request.rel_url.query.get("tail") or "all"
    if tail != "all":  # moby's ServiceLogs: plain errors, hence 500
        try:
            if int(tail) < 0:
                raise APIError("negative tail values not supported", 500)
        except ValueError:
            raise APIError('tail value must be a positive integer or "all"', 500) from None
    if task is not None:
        cs = (task.get("Spec") or {}).get("ContainerSpec") or {}
    else:
        cs = ((svc.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}
    tty = bool(cs.get("TTY"))
    q = LogQuery(service=svc["ID"], task=task["ID"] if task else "", follow=_flag(request, "follow"),
                 tail=tail, since=request.rel_url.query.get("since", ""), tty=tty)
    timestamps, with_details = _flag(request, "timestamps"), _flag(request, "details")
    mux = not tty
    ctype = MUX if mux and request["api_version"] >= (1, 42) else RAW
    resp = web.StreamResponse(headers={"Content-Type": ctype})
    await resp.prepare(request)

    objs = daemon.objs
    out: asyncio.Queue = asyncio.Queue(maxsize=1000)
    producers: set[asyncio.Task] = set()
    started: set[str] = set()

    def nodes() -> set[str]:
        if task is not None:
            return {task["NodeID"]} if task.get("NodeID") else set()
        return {t["NodeID"] for t in objs.tasks_of_service(svc["ID"]) if t.get("NodeID")}

    async def from_node(nid: str) -> None:
        if nid == daemon.node_id:
            await local_logs(daemon.proxy, q, out, node_id=nid)
            return
        node = objs.get("nodes", nid)
        if node is None:
            return
        try:
            async for line in remote_logs(node_endpoint(daemon, node), daemon.tls.client_context(), q, nid):
                line.node_id = nid
                await out.put(line)
        except Exception as e:  # an unreachable node: the others' logs still come
            log.warning("logs from node %s: %s", nid, e or type(e).__name__)

    def start_new() -> None:
        for nid in sorted(nodes() - started):
            started.add(nid)
            producers.add(asyncio.create_task(from_node(nid), name=f"logs-{nid}"))

    async def watch_nodes() -> None:
        watcher = objs.watcher(["tasks"])
        try:
            while True:
                await watcher.wait(1.0)
                start_new()
        finally:
            objs.unwatch(watcher)

    start_new()
    if q.follow and task is None:
        producers.add(asyncio.create_task(watch_nodes(), name="logs-watch"))
    try:
        async for line in drain(out, producers):
            if (line.stream == 2 and not stderr) or (line.stream == 1 and not stdout):
                continue
            data = line.data
            if with_details:
                data = details(line, line.node_id, svc["ID"]).encode() + b" " + data
            if timestamps:
                data = line.timestamp.encode() + b" " + data
            if mux:
                data = bytes((line.stream, 0, 0, 0)) + len(data).to_bytes(4, "big") + data
            await resp.write(data)
    finally:
        await cancel_all(producers)
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp
