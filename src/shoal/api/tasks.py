"""``/tasks``: list with Docker's filters, inspect."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from shoal.api.filters import match_any_prefix, match_labels, parse_filters
from shoal.api.resolve import resolve
from shoal.api.server import json_response, route
from shoal.manager.orchestrator.common import INTERNAL_FIELDS, is_dirty
from shoal.model.errors import BadRequest

if TYPE_CHECKING:
    from shoal.daemon import Daemon

FILTERS = {"id", "name", "label", "service", "node", "desired-state", "_up-to-date", "up-to-date"}


def public(task: dict) -> dict:
    return {k: v for k, v in task.items() if k not in INTERNAL_FIELDS}


def task_display_name(task: dict) -> str:
    svc = (task.get("ServiceAnnotations") or {}).get("Name", "")
    return f"{svc}.{task['Slot'] if task.get('Slot') else task.get('NodeID', '')}"


@route("GET", "/tasks")
async def list_tasks(daemon: Daemon, request: web.Request) -> web.Response:
    objs = daemon.objs
    f = parse_filters(request.rel_url.query.get("filters"), FILTERS)
    for state in f.get("desired-state", []):
        if state not in ("running", "shutdown", "accepted"):
            raise BadRequest(f"Invalid desired-state filter value: '{state}'")
    services = None
    if "service" in f:
        services = set()
        for ref in f["service"]:
            try:
                services.add(resolve(objs, "services", ref)["ID"])
            except Exception:
                continue
    nodes = None
    if "node" in f:
        nodes = set()
        for ref in f["node"]:
            if ref == "self":
                nodes.add(daemon.node_id)
                continue
            try:
                nodes.add(resolve(objs, "nodes", ref)["ID"])
            except Exception:
                continue
    if services is not None:
        candidates = [t for sid in services for t in objs.tasks_of_service(sid)]
    else:
        candidates = objs.list("tasks")
    up_to_date = (f.get("_up-to-date") or f.get("up-to-date") or [""])[0] in ("true", "1")
    out = []
    for t in candidates:
        if nodes is not None and t.get("NodeID") not in nodes:
            continue
        if "id" in f and not match_any_prefix(t["ID"], f["id"]):
            continue
        if "name" in f and not match_any_prefix(task_display_name(t), f["name"]):
            continue
        # Docker matches a task's label filter against its service's labels
        if "label" in f and not match_labels((t.get("ServiceAnnotations") or {}).get("Labels") or {}, f["label"]):
            continue
        if "desired-state" in f and not _desired_matches(t["DesiredState"], f["desired-state"]):
            continue
        if up_to_date:
            svc = objs.get("services", t["ServiceID"])
            if svc is None or is_dirty(svc, t):
                continue
        out.append(public(t))
    out.sort(key=lambda t: (t.get("CreatedAt", ""), t["ID"]))
    return json_response(out)


def _desired_matches(desired: str, wanted: list[str]) -> bool:
    from shoal.model import states

    for w in wanted:
        if w == "running" and states.rank(desired) <= states.rank(states.RUNNING):
            return True
        if w == "shutdown" and states.rank(desired) > states.rank(states.RUNNING):
            return True
        if w == desired:
            return True
    return False


@route("GET", "/tasks/{ref}")
async def inspect_task(daemon: Daemon, request: web.Request, ref: str) -> web.Response:
    return json_response(public(resolve(daemon.objs, "tasks", ref)))
