"""``/services``: create, list (with ServiceStatus), inspect (insertDefaults), update, delete."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from aiohttp import web

from shoal.api.filters import match_any_prefix, match_labels, parse_filters
from shoal.api.resolve import resolve
from shoal.api.server import json_response, read_json, route
from shoal.manager.secrets import refs_lock
from shoal.model import states
from shoal.model.errors import BadRequest, FailedPrecondition, InvalidArgument, OutOfSequence
from shoal.model.ids import new_id, now
from shoal.model.service import mode_of, validate_spec, with_defaults

if TYPE_CHECKING:
    from shoal.daemon import Daemon

FILTERS = {"id", "name", "label", "mode"}


def service_view(daemon: Daemon, svc: dict, insert_defaults: bool = False, status: bool = False) -> dict:
    out = copy.deepcopy(svc)
    if insert_defaults:
        out["Spec"] = with_defaults(out["Spec"])
        if out.get("PreviousSpec"):
            out["PreviousSpec"] = with_defaults(out["PreviousSpec"])
    out.setdefault("Endpoint", {"Spec": {}})
    if status:
        out["ServiceStatus"] = service_status(daemon, svc)
    return out


def service_status(daemon: Daemon, svc: dict) -> dict:
    objs = daemon.objs
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
async def list_services(daemon: Daemon, request: web.Request) -> web.Response:
    f = parse_filters(request.rel_url.query.get("filters"), FILTERS)
    for m in f.get("mode", []):
        if m not in ("replicated", "global", "replicated-job", "global-job"):
            raise BadRequest(f"Invalid filter: 'mode'='{m}'")
    status = request.rel_url.query.get("status") in ("1", "true", "True")
    out = []
    for svc in daemon.objs.list("services"):
        spec = svc["Spec"]
        if "id" in f and not match_any_prefix(svc["ID"], f["id"]):
            continue
        if "name" in f and not match_any_prefix(spec.get("Name", ""), f["name"]):
            continue
        if "label" in f and not match_labels(spec.get("Labels") or {}, f["label"]):
            continue
        if "mode" in f and mode_of(spec) not in f["mode"]:
            continue
        out.append(service_view(daemon, svc, status=status))
    out.sort(key=lambda s: s["Spec"].get("Name", ""))
    return json_response(out)


@route("GET", "/services/{ref}")
async def inspect_service(daemon: Daemon, request: web.Request, ref: str) -> web.Response:
    svc = resolve(daemon.objs, "services", ref)
    insert = request.rel_url.query.get("insertDefaults") in ("1", "true", "True")
    return json_response(service_view(daemon, svc, insert_defaults=insert))


@route("POST", "/services/create")
async def create_service(daemon: Daemon, request: web.Request) -> web.Response:
    spec = validate_spec(await read_json(request))
    async with refs_lock(daemon.objs):  # no secret or config is removed between the check and the write
        daemon.check_spec_refs(spec)
        ts = now()
        svc = {
            "ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": spec,
            "Endpoint": {"Spec": spec.get("EndpointSpec") or {"Mode": "vip"}},
        }
        await daemon.allocate_endpoint(svc, None)
        try:
            await daemon.objs.create("services", svc)
        except Exception:
            daemon.netalloc.release_service(svc["ID"])
            raise
    return json_response({"ID": svc["ID"], "Warnings": None}, 201)


@route("POST", "/services/{ref}/update")
async def update_service(daemon: Daemon, request: web.Request, ref: str) -> web.Response:
    svc = resolve(daemon.objs, "services", ref)
    version = _version(request)
    body = await read_json(request)
    q = request.rel_url.query
    rollback = q.get("rollback") == "previous"
    if rollback:
        if not svc.get("PreviousSpec"):
            raise FailedPrecondition(f"service {svc['ID']} does not have a previous spec")
        body = svc["PreviousSpec"]
    spec = validate_spec(body)
    if spec["Name"] != svc["Spec"]["Name"]:
        raise APIErrorUnimplemented("renaming services is not supported")
    if mode_of(spec) != mode_of(svc["Spec"]):
        raise InvalidArgument("service mode change is not allowed")
    async with refs_lock(daemon.objs):  # no secret or config is removed between the check and the write
        daemon.check_spec_refs(spec, exclude=svc["ID"])
        if version != svc["Version"]["Index"]:
            raise OutOfSequence()
        new = copy.deepcopy(svc)
        new["PreviousSpec"] = svc["Spec"]
        new["Spec"] = spec
        new["UpdatedAt"] = now()
        new["Endpoint"] = {**(svc.get("Endpoint") or {}), "Spec": spec.get("EndpointSpec") or {"Mode": "vip"}}
        if (spec.get("TaskTemplate") != svc["Spec"].get("TaskTemplate")):
            state, message = ("rollback_started", "manually requested rollback") if rollback else \
                ("updating", "update in progress")
            new["UpdateStatus"] = {"State": state, "StartedAt": now(), "Message": message}
        await daemon.allocate_endpoint(new, svc)
        await daemon.objs.update("services", new)
    return json_response({"Warnings": None})


@route("DELETE", "/services/{ref}")
async def delete_service(daemon: Daemon, request: web.Request, ref: str) -> web.Response:
    svc = resolve(daemon.objs, "services", ref)
    if not await daemon.objs.delete("services", svc):
        raise OutOfSequence()
    return web.Response(status=200)


class APIErrorUnimplemented(InvalidArgument):
    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.message = f"rpc error: code = Unimplemented desc = {desc}"
        self.status = 501
