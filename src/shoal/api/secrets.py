"""``/secrets`` and ``/configs``: create, list, inspect, update (labels only), delete.

Secret data is sealed before it is stored (:mod:`shoal.manager.secrets`) and never returned; configs
return their data. Messages and status codes are Docker's (swarmkit's controlapi through moby).
"""

from __future__ import annotations

import base64
import copy
from typing import TYPE_CHECKING

from aiohttp import web

from shoal.api.filters import match_any_prefix, match_labels, parse_filters
from shoal.api.resolve import resolve
from shoal.api.server import json_response, read_json, route
from shoal.manager.secrets import cached_sealer, refs_lock, reveal, users_of
from shoal.model.errors import BadRequest, Conflict, InvalidArgument, NameConflict, OutOfSequence, Unavailable
from shoal.model.ids import new_id, now
from shoal.model.secrets import SINGULAR, Kind, check_update, read_update, validate_spec

if TYPE_CHECKING:
    from shoal.daemon import Daemon
    from shoal.manager.secrets import Sealer

FILTERS = {"id", "name", "names", "label"}


def sealer(daemon: Daemon) -> Sealer:
    try:
        return cached_sealer(daemon.ca_key_pem())
    except (OSError, ValueError, TypeError) as e:
        raise Unavailable(f"shoal: the cluster's data key is not available on this manager: {e}") from None


def view(kind: str, obj: dict) -> dict:
    """The object as the API shows it: a secret without its data or seal."""
    out = copy.deepcopy(obj)
    out.pop("Sealed", None)
    if kind == "secrets":
        out["Spec"].pop("Data", None)
    return {k: out[k] for k in ("ID", "Version", "CreatedAt", "UpdatedAt", "Spec") if k in out}


def _version(request: web.Request, kind: Kind) -> int:
    raw = request.rel_url.query.get("version", "")
    if not raw.isdigit():
        raise BadRequest(f"invalid {SINGULAR[kind]} version")
    return int(raw)


async def _create(daemon: Daemon, request: web.Request, kind: Kind) -> web.Response:
    spec, data = validate_spec(kind, await read_json(request))
    ts = now()
    obj = {"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": spec}
    if kind == "secrets":
        obj["Sealed"] = sealer(daemon).seal(kind, obj["ID"], data)
    else:
        spec["Data"] = base64.b64encode(data).decode()
    try:
        await daemon.objs.create(kind, obj)
    except NameConflict:
        raise Conflict(f"rpc error: code = AlreadyExists desc = {SINGULAR[kind]} {spec['Name']} "
                       "already exists") from None
    return json_response({"ID": obj["ID"]}, 201)


async def _list(daemon: Daemon, request: web.Request, kind: Kind) -> web.Response:
    f = parse_filters(request.rel_url.query.get("filters"), FILTERS)
    out = []
    for obj in daemon.objs.list(kind):
        name = obj["Spec"].get("Name", "")
        # names, name prefixes and ID prefixes: any may match (swarmkit ORs them); labels: all must
        if any(k in f for k in ("names", "name", "id")) and not (
                name in f.get("names", []) or match_any_prefix(name, f.get("name", []))
                or match_any_prefix(obj["ID"], f.get("id", []))):
            continue
        if "label" in f and not match_labels(obj["Spec"].get("Labels") or {}, f["label"]):
            continue
        out.append(view(kind, obj))
    out.sort(key=lambda o: (o["Spec"].get("Name", ""), o["ID"]))
    return json_response(out)


async def _update(daemon: Daemon, request: web.Request, kind: Kind, ref: str) -> web.Response:
    # moby's order: decode the body, parse the version, find the object, then swarmkit's checks
    update = read_update(kind, await read_json(request))
    version = _version(request, kind)
    obj = resolve(daemon.objs, kind, ref)
    current = reveal(sealer(daemon) if kind == "secrets" else None, kind, obj)
    labels = check_update(obj, update, current)
    if version != obj["Version"]["Index"]:
        raise OutOfSequence()
    new = copy.deepcopy(obj)
    new["Spec"]["Labels"] = labels
    new["UpdatedAt"] = now()
    await daemon.objs.update(kind, new)
    return web.Response(status=200)


async def _delete(daemon: Daemon, request: web.Request, kind: Kind, ref: str) -> web.Response:
    obj = resolve(daemon.objs, kind, ref)
    async with refs_lock(daemon.objs):  # no service starts using it between the check and the delete
        users = users_of(daemon.objs, kind, obj["ID"])
        if users:
            word = "service" if len(users) == 1 else "services"
            raise InvalidArgument(f"{SINGULAR[kind]} '{obj['Spec']['Name']}' is in use by the following {word}: "
                                  f"{', '.join(users)}")
        if not await daemon.objs.delete(kind, obj):
            raise OutOfSequence()
    return web.Response(status=204)


def _register(kind: Kind) -> None:
    @route("POST", f"/{kind}/create")
    async def create(daemon: Daemon, request: web.Request) -> web.Response:
        return await _create(daemon, request, kind)

    @route("GET", f"/{kind}")
    async def list_(daemon: Daemon, request: web.Request) -> web.Response:
        return await _list(daemon, request, kind)

    @route("GET", f"/{kind}/{{ref}}")
    async def inspect(daemon: Daemon, request: web.Request, ref: str) -> web.Response:
        return json_response(view(kind, resolve(daemon.objs, kind, ref)))

    @route("POST", f"/{kind}/{{ref}}/update")
    async def update(daemon: Daemon, request: web.Request, ref: str) -> web.Response:
        return await _update(daemon, request, kind, ref)

    @route("DELETE", f"/{kind}/{{ref}}")
    async def delete(daemon: Daemon, request: web.Request, ref: str) -> web.Response:
        return await _delete(daemon, request, kind, ref)


_register("secrets")
_register("configs")
