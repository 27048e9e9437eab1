"""``/networks``: swarm-scoped overlay networks live in the store; the engine's local networks are
listed beside them and everything about local networks is passed to the engine."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TypeVar
from urllib.parse import quote

from aiohttp import web

from shoal.api.decode import decode
from shoal.api.filters import match_any_prefix, match_labels, parse_filters
from shoal.api.query import parse_bool
from shoal.api.server import Ctx, forward, json_response, read_json, route
from shoal.control import ManagerControl
from shoal.model import labels
from shoal.model.errors import BadRequest, NotFound
from shoal.model.network import name_conflict, resource, spec_from_request

FILTERS = {"driver", "id", "label", "name", "scope", "type", "dangling"}

T = TypeVar("T")


def _manager(ctx: Ctx) -> ManagerControl | None:
    """The swarm's networks are a manager's to answer for; None on any other node."""
    local = ctx.control.local()
    return ctx.manager if local.state == "active" and local.role == "manager" else None


def pick(items: Iterable[T], ref: str, ident: Callable[[T], str], name: Callable[[T], str]) -> T | None:
    """What ``ref`` names among ``items``, as Docker resolves a network: full ID, then name, then a unique
    ID prefix."""
    items = list(items)
    for key in (ident, name):
        found = [i for i in items if key(i) == ref]
        if found:
            return found[0]
    by_prefix = [i for i in items if ident(i).startswith(ref)]
    return by_prefix[0] if len(by_prefix) == 1 else None


def find_swarm_network(ctx: Ctx, ref: str) -> dict | None:
    manager = _manager(ctx)
    if manager is None:
        return None
    return pick(manager.objects.list("networks"), ref, lambda n: n["ID"], lambda n: n["Spec"]["Name"])


def worker_networks(ctx: Ctx) -> list[dict]:
    """On a worker, the swarm networks this node takes part in (ingress, and those of its tasks), as
    its network map has them: Docker lists these on a worker too."""
    local = ctx.control.local()
    if local.state != "active" or local.role == "manager":
        return []
    return ctx.control.networks_here() or []


def find_worker_network(ctx: Ctx, ref: str) -> dict | None:
    return pick(worker_networks(ctx), ref, lambda n: n["Id"], lambda n: n["Name"])


async def engine_network(ctx: Ctx, ref: str) -> dict | None:
    """The engine's own network ``ref`` (its inspect), or None."""
    async with ctx.proxy.session.get(f"http://docker/networks/{quote(ref, safe='')}") as resp:
        return await resp.json() if resp.status == 200 else None


def _dangling(f: dict[str, list[str]]) -> bool | None:
    """The ``dangling`` filter as moby reads it: None when not asked for."""
    values = f.get("dangling")
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest('got more than one value for filter key "dangling"')
    if values[0] not in ("0", "false", "1", "true"):
        raise BadRequest("invalid value for filter 'dangling', must be \"true\" (or \"1\"), or \"false\" (or \"0\")")
    return values[0] in ("1", "true")


@route("GET", "/networks", manager=False)
async def list_networks(ctx: Ctx, request: web.Request) -> web.Response:
    f = parse_filters(request.rel_url.query.get("filters"), FILTERS)
    dangling = _dangling(f)
    # the engine says which of its own networks are in use
    query = "" if dangling is None else "?filters=" + quote(json.dumps({"dangling": f["dangling"]}))
    local = await ctx.proxy.get_json(f"/networks{query}")
    out = [n for n in local if n.get("Driver") != labels.PLUGIN_DRIVER]
    manager = _manager(ctx)
    if manager is not None:
        swarm = manager.objects.list("networks")
        if dangling is not None:  # a swarm network is in use while a service is on it; ingress always is
            used = {n.get("Target") for s in manager.objects.list("services")
                    for n in (s["Spec"].get("TaskTemplate") or {}).get("Networks") or []}
            swarm = [n for n in swarm if (not n["Spec"].get("Ingress") and n["ID"] not in used) == dangling]
        out += [resource(n) for n in swarm]
    elif not dangling:  # a worker lists the swarm networks its tasks are on: in use
        out += worker_networks(ctx)

    def keep(n: dict) -> bool:
        if "driver" in f and n.get("Driver") not in f["driver"]:
            return False
        if "id" in f and not match_any_prefix(n["Id"], f["id"]):
            return False
        if "name" in f and not any(w in n["Name"] for w in f["name"]):
            return False
        if "label" in f and not match_labels(n.get("Labels") or {}, f["label"]):
            return False
        if "scope" in f and n.get("Scope") not in f["scope"]:
            return False
        if "type" in f:
            builtin = n["Name"] in ("bridge", "host", "none", "ingress", "docker_gwbridge")
            if ("builtin" in f["type"]) != builtin and ("custom" in f["type"]) == builtin:
                return False
        return True

    return json_response([n for n in out if keep(n)])


@route("GET", "/networks/{ref}", manager=False)
async def inspect_network(ctx: Ctx, request: web.Request, ref: str) -> web.StreamResponse:
    # verbose: a swarm network's inspect has nothing more to show (as Docker's manager answers for a
    # network with no container on this node); the engine answers it for its own networks
    parse_bool(request.rel_url.query, "verbose")
    scope = request.rel_url.query.get("scope", "")
    net = find_swarm_network(ctx, ref)
    # moby: a swarm network is found by a prefix of its ID whatever the scope, by its name only when no
    # scope or "swarm" is asked for
    if net is not None and (scope in ("", "swarm") or net["ID"].startswith(ref)):
        return json_response(resource(net))
    found = find_worker_network(ctx, ref)
    if found is not None and (scope in ("", "swarm") or found["Id"].startswith(ref)):
        return json_response(found)
    local = await engine_network(ctx, ref)
    if local is not None and local.get("Driver") == labels.PLUGIN_DRIVER:
        # the engine's twin of a swarm network this node no longer takes part in: hidden
        raise NotFound(f"network {ref} not found")
    return await ctx.proxy.handle(request)


@route("POST", "/networks/create", manager=False)
async def create_network(ctx: Ctx, request: web.Request) -> web.StreamResponse:
    body = decode(await read_json(request), "NetworkCreateRequest")
    if body.get("Driver") != "overlay":  # the engine's own network: the request as it came
        return await ctx.proxy.forward_body(request, await request.read())
    manager = ctx.manager
    if not manager.is_leader:
        return await forward(manager, request)
    spec = spec_from_request(body)
    if find_swarm_network(ctx, spec["Name"]) is not None:
        raise name_conflict(spec["Name"])
    return json_response({"Id": await manager.create_network(spec), "Warning": ""}, 201)


@route("DELETE", "/networks/{ref}", manager=False)
async def delete_network(ctx: Ctx, request: web.Request, ref: str) -> web.StreamResponse:
    net = find_swarm_network(ctx, ref)
    if net is None:
        return await ctx.proxy.handle(request)
    manager = ctx.manager
    if not manager.is_leader:
        return await forward(manager, request)
    await manager.remove_network(net)
    return web.Response(status=204)
