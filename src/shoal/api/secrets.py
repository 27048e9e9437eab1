"""``/secrets`` and ``/configs``: create, list, inspect, update (labels only), delete.

Secret data is sealed before it is stored and never returned; configs return their data. Messages and
status codes are Docker's (swarmkit's controlapi through moby).
"""

from __future__ import annotations

import copy

from aiohttp import web

from shoal.api.decode import decode
from shoal.api.filters import match_any_prefix, match_labels, parse_filters
from shoal.api.resolve import resolve
from shoal.api.server import Ctx, json_response, read_json, route
from shoal.model.errors import BadRequest
from shoal.model.secrets import SINGULAR, Kind, check_update, read_update, validate_spec

FILTERS = {"id", "name", "names", "label"}
SCHEMA = {"secrets": "SecretSpec", "configs": "ConfigSpec"}


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


async def _create(ctx: Ctx, request: web.Request, kind: Kind) -> web.Response:
    spec, data = validate_spec(kind, decode(await read_json(request), SCHEMA[kind]))
    return json_response({"ID": await ctx.manager.create_secret(kind, spec, data)}, 201)


async def _list(ctx: Ctx, request: web.Request, kind: Kind) -> web.Response:
    f = parse_filters(request.rel_url.query.get("filters"), FILTERS)
    out = []
    for obj in ctx.manager.objects.list(kind):
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


async def _update(ctx: Ctx, request: web.Request, kind: Kind, ref: str) -> web.Response:
    # moby's order: decode the body, parse the version, find the object, then swarmkit's checks
    update = read_update(kind, decode(await read_json(request), SCHEMA[kind]))
    version = _version(request, kind)
    manager = ctx.manager
    obj = resolve(manager.objects, kind, ref)
    labels = check_update(obj, update, manager.reveal(kind, obj))
    await manager.update_secret(kind, obj, version, labels)
    return web.Response(status=200)


async def _delete(ctx: Ctx, request: web.Request, kind: Kind, ref: str) -> web.Response:
    manager = ctx.manager
    await manager.remove_secret(kind, resolve(manager.objects, kind, ref))
    return web.Response(status=204)


def _register(kind: Kind) -> None:
    @route("POST", f"/{kind}/create")
    async def create(ctx: Ctx, request: web.Request) -> web.Response:
        return await _create(ctx, request, kind)

    @route("GET", f"/{kind}")
    async def list_(ctx: Ctx, request: web.Request) -> web.Response:
        return await _list(ctx, request, kind)

    @route("GET", f"/{kind}/{{ref}}")
    async def inspect(ctx: Ctx, request: web.Request, ref: str) -> web.Response:
        return json_response(view(kind, resolve(ctx.manager.objects, kind, ref)))

    @route("POST", f"/{kind}/{{ref}}/update")
    async def update(ctx: Ctx, request: web.Request, ref: str) -> web.Response:
        return await _update(ctx, request, kind, ref)

    @route("DELETE", f"/{kind}/{{ref}}")
    async def delete(ctx: Ctx, request: web.Request, ref: str) -> web.Response:
        return await _delete(ctx, request, kind, ref)


_register("secrets")
_register("configs")
