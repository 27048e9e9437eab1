"""``/services``: create, list (with ServiceStatus), inspect (insertDefaults), update, delete."""

from __future__ import annotations

import copy

from aiohttp import web

from shoal.api.filters import match_any_prefix, match_labels, parse_filters
from shoal.api.resolve import resolve
from shoal.api.server import Ctx, json_response, read_json, route
from shoal.control import Objects
from shoal.model import states
from shoal.model.errors import BadRequest, FailedPrecondition
from shoal.model.service import INTERNAL_SERVICE_FIELDS, mode_of, validate_spec, with_defaults

FILTERS = {"id", "name", "label", "mode"}


def service_view(objs: Objects, svc: dict, insert_defaults: bool = False, status: bool = False) -> dict:
    out = copy.deepcopy({k: v for k, v in svc.items() if k not in INTERNAL_SERVICE_FIELDS})
    if insert_defaults:
        out["Spec"] = with_defaults(out["Spec"])
        if out.get("PreviousSpec"):
            out["PreviousSpec"] = with_defaults(out["PreviousSpec"])
    out.setdefault("Endpoint", {"Spec": {}})
    if status:
        out["ServiceStatus"] = service_status(objs, svc)
    return out


def service_status(objs: Objects, svc: dict) -> dict:
    running = desired = completed = 0
    down = {n["ID"] for n in objs.list("nodes") if n["Status"].get("State") == "down"}
    for t in objs.tasks_of_service(svc["ID"]):
        if t.get("NodeID") in down:
            continue
        if t["Status"]["State"] == states.RUNNING and states.rank(t["DesiredState"]) <= states.rank(states.RUNNING):
            running += 1
        if t["DesiredState"] == states.RUNNING:
            desired += 1
        if t["Status"]["State"] == states.COMPLETE:
            completed += 1
    mode = mode_of(svc["Spec"])
    if mode == "replicated":
        desired = int(svc["Spec"]["Mode"]["Replicated"].get("Replicas", 1))
    result = {"RunningTasks": running, "DesiredTasks": desired}
    if mode.endswith("job"):
        result["CompletedTasks"] = completed
    return result


def _version(request: web.Request) -> int:
    raw = request.rel_url.query.get("version", "")
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"invalid service version '{raw}': strconv.ParseUint: parsing \"{raw}\": "
                         "invalid syntax") from None


@route("GET", "/services")
async def list_services(ctx: Ctx, request: web.Request) -> web.Response:
    f = parse_filters(request.rel_url.query.get("filters"), FILTERS)
    for m in f.get("mode", []):
        if m not in ("replicated", "global", "replicated-job", "global-job"):
            raise BadRequest(f"Invalid filter: 'mode'='{m}'")
    status = request.rel_url.query.get("status") in ("1", "true", "True")
    objs = ctx.manager.objects
    out = []
    for svc in objs.list("services"):
        spec = svc["Spec"]
        if "id" in f and not match_any_prefix(svc["ID"], f["id"]):
            continue
        if "name" in f and not match_any_prefix(spec.get("Name", ""), f["name"]):
            continue
        if "label" in f and not match_labels(spec.get("Labels") or {}, f["label"]):
            continue
        if "mode" in f and mode_of(spec) not in f["mode"]:
            continue
        out.append(service_view(objs, svc, status=status))
    out.sort(key=lambda s: s["Spec"].get("Name", ""))
    return json_response(out)


@route("GET", "/services/{ref}")
async def inspect_service(ctx: Ctx, request: web.Request, ref: str) -> web.Response:
    objs = ctx.manager.objects
    insert = request.rel_url.query.get("insertDefaults") in ("1", "true", "True")
    return json_response(service_view(objs, resolve(objs, "services", ref), insert_defaults=insert))


def registry_auth(request: web.Request) -> str:
    """The client's encoded registry credentials (``docker service create --with-registry-auth``)."""
    return request.headers.get("X-Registry-Auth", "")


@route("POST", "/services/create")
async def create_service(ctx: Ctx, request: web.Request) -> web.Response:
    spec = validate_spec(await read_json(request))
    sid = await ctx.manager.create_service(spec, registry_auth(request))
    return json_response({"ID": sid, "Warnings": None}, 201)


@route("POST", "/services/{ref}/update")
async def update_service(ctx: Ctx, request: web.Request, ref: str) -> web.Response:
    manager = ctx.manager
    svc = resolve(manager.objects, "services", ref)
    version = _version(request)
    body = await read_json(request)
    rollback = request.rel_url.query.get("rollback") == "previous"
    if rollback:
        if not svc.get("PreviousSpec"):
            raise FailedPrecondition(f"service {svc['ID']} does not have a previous spec")
        body = svc["PreviousSpec"]
    auth_from = request.rel_url.query.get("registryAuthFrom", "")
    if auth_from not in ("", "spec", "previous-spec"):  # moby answers this with a 500
        raise BadRequest("unsupported registryAuthFrom value")
    if auth_from == "previous-spec" and not svc.get("PreviousSpec"):
        raise BadRequest("service does not have a previous spec")
    await manager.update_service(svc, version, validate_spec(body), rollback, registry_auth(request),
                                 previous_auth=auth_from == "previous-spec")
    return json_response({"Warnings": None})


@route("DELETE", "/services/{ref}")
async def delete_service(ctx: Ctx, request: web.Request, ref: str) -> web.Response:
    manager = ctx.manager
    await manager.remove_service(resolve(manager.objects, "services", ref))
    return web.Response(status=200)
