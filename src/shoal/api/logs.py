"""``GET /services/{id}/logs`` and ``GET /tasks/{id}/logs``: the task containers' logs from every node,
in Docker's stream format.

Each line carries the details the docker CLI needs for its ``<task name>.<id>@<node>`` prefix
(``com.docker.swarm.node.id``, ``...service.id``, ``...task.id``, sorted, URL-escaped, comma-separated,
then a space), after the timestamp when asked for. Lines of this host come from the local engine; other
nodes' lines from their shoald over the cluster port (mutual TLS). ``follow`` keeps reading, including
the tasks that start later and nodes that get a task later.
"""

from __future__ import annotations

import contextlib
from urllib.parse import quote_plus

from aiohttp import web

from shoal.api.query import bool_value
from shoal.api.resolve import resolve
from shoal.api.server import Ctx, route
from shoal.api.stream import write
from shoal.model.errors import APIError, BadRequest
from shoal.model.labels import NODE_ID, SERVICE_ID, TASK_ID
from shoal.model.logs import LogLine, LogQuery

MUX = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"


def _flag(request: web.Request, name: str) -> bool:
    return bool_value(request.rel_url.query, name)


def details(line: LogLine, node_id: str, service_id: str) -> str:
    attrs = {NODE_ID: node_id, SERVICE_ID: service_id, TASK_ID: line.task_id}
    return ",".join(sorted(f"{quote_plus(k)}={quote_plus(v)}" for k, v in attrs.items()))


@route("GET", "/services/{ref}/logs")
async def service_logs(ctx: Ctx, request: web.Request, ref: str) -> web.StreamResponse:
    svc = resolve(ctx.manager.objects, "services", ref)
    return await _stream(ctx, request, svc, None)


@route("GET", "/tasks/{ref}/logs")
async def task_logs(ctx: Ctx, request: web.Request, ref: str) -> web.StreamResponse:
    objs = ctx.manager.objects
    task = resolve(objs, "tasks", ref)
    svc = objs.get("services", task["ServiceID"]) or {"ID": task["ServiceID"], "Spec": {}}
    return await _stream(ctx, request, svc, task)


async def _stream(ctx: Ctx, request: web.Request, svc: dict, task: dict | None) -> web.StreamResponse:
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

    lines = ctx.manager.logs(svc, task, q)
    try:
        async for line in lines:
            if (line.stream == 2 and not stderr) or (line.stream == 1 and not stdout):
                continue
            data = line.data
            if with_details:
                data = details(line, line.node_id, svc["ID"]).encode() + b" " + data
            if timestamps:
                data = line.timestamp.encode() + b" " + data
            if mux:
                data = bytes((line.stream, 0, 0, 0)) + len(data).to_bytes(4, "big") + data
            await write(request, resp, data)
    except ConnectionError:  # the client went away, or was cut off
        return resp
    finally:
        await lines.aclose()
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp
