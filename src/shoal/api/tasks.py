"""``/tasks``: list with Docker's filters, inspect."""

from __future__ import annotations

from aiohttp import web

from shoal.api.filters import match_any_prefix, match_labels, parse_filters
from shoal.api.resolve import resolve
from shoal.api.server import Ctx, json_response, route
from shoal.api.shape import complete
from shoal.model import states
from shoal.model.errors import BadRequest
from shoal.model.task import is_dirty, public, task_name
from shoal.model.views import ATTACHMENT_SPEC

FILTERS = {"id", "name", "label", "service", "node", "desired-state", "_up-to-date", "runtime"}


def _runtime(task: dict) -> str:
    return "attachment" if ATTACHMENT_SPEC in (task.get("Spec") or {}) else "container"


@route("GET", "/tasks")
async def list_tasks(ctx: Ctx, request: web.Request) -> web.Response:
    objs = ctx.manager.objects
    f = parse_filters(request.rel_url.query.get("filters"), FILTERS)
    desired: set[str] = set()
    for state in f.get("desired-state", []):
        if state.lower() in states.ORDER:
            desired.add(state.lower())
        elif state:
            # moby answers this with a 500; shoal keeps Docker's message but calls it what it is, a bad request
            raise BadRequest(f"Invalid desired-state filter: '{state}'")
    # as moby: every service and node value must name exactly one object, else its lookup error (404 / 400)
    services = {resolve(objs, "services", ref)["ID"] for ref in f["service"]} if "service" in f else None
    nodes = {resolve(objs, "nodes", ref)["ID"] for ref in f["node"]} if "node" in f else None
    runtimes = set(f.get("runtime") or ("container", ""))
    if services is not None:
        candidates = [t for sid in services for t in objs.tasks_of_service(sid)]
    else:
        candidates = objs.list("tasks")
    up_to_date = "_up-to-date" in f and bool(f["_up-to-date"])
    out = []
    for t in candidates:
        if nodes is not None and t.get("NodeID") not in nodes:
            continue
        if "id" in f and not match_any_prefix(t["ID"], f["id"]):
            continue
        if "name" in f and not match_any_prefix(task_name(t), f["name"]):
            continue
        # Docker matches a task's label filter against its service's labels
        if "label" in f and not match_labels((t.get("ServiceAnnotations") or {}).get("Labels") or {}, f["label"]):
            continue
        if desired and t["DesiredState"] not in desired:
            continue
        if _runtime(t) not in runtimes:
            continue
        if up_to_date:
            svc = objs.get("services", t["ServiceID"])
            if svc is None or is_dirty(svc, t):
                continue
        out.append(complete(public(t), "Task"))
    out.sort(key=lambda t: (t.get("CreatedAt", ""), t["ID"]))
    return json_response(out)


@route("GET", "/tasks/{ref}")
async def inspect_task(ctx: Ctx, request: web.Request, ref: str) -> web.Response:
    return json_response(complete(public(resolve(ctx.manager.objects, "tasks", ref)), "Task"))
