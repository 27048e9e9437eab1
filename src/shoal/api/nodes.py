"""``/nodes``: list, inspect, update (availability, labels, role), remove."""

from __future__ import annotations

from aiohttp import web

from shoal.api.decode import decode
from shoal.api.filters import match_any_prefix, match_labels, parse_filters
from shoal.api.query import bool_value
from shoal.api.resolve import resolve
from shoal.api.server import Ctx, json_response, read_json, route
from shoal.api.shape import complete
from shoal.model.errors import BadRequest, InvalidArgument

FILTERS = {"id", "label", "node.label", "membership", "name", "role"}
INTERNAL = ("Attachments",)  # the node's own network addresses: swarmkit keeps them, Docker's API does not show them


def node_view(node: dict) -> dict:
    """The node as Docker answers it."""
    return complete({k: v for k, v in node.items() if k not in INTERNAL}, "Node")


@route("GET", "/nodes")
async def list_nodes(ctx: Ctx, request: web.Request) -> web.Response:
    f = parse_filters(request.rel_url.query.get("filters"), FILTERS)
    out = []
    for n in ctx.manager.objects.list("nodes"):
        spec, desc = n["Spec"], n.get("Description") or {}
        if "id" in f and not match_any_prefix(n["ID"], f["id"]):
            continue
        if "name" in f and not match_any_prefix(spec.get("Name") or desc.get("Hostname", ""), f["name"]):
            continue
        if "role" in f and spec.get("Role") not in f["role"]:
            continue
        if "membership" in f and spec.get("Membership", "accepted") not in f["membership"]:
            continue
        if "label" in f and not match_labels((desc.get("Engine") or {}).get("Labels") or {}, f["label"]):
            continue
        if "node.label" in f and not match_labels(spec.get("Labels") or {}, f["node.label"]):
            continue
        out.append(node_view(n))
    out.sort(key=lambda n: ((n.get("Description") or {}).get("Hostname", ""), n["ID"]))
    return json_response(out)


@route("GET", "/nodes/{ref}")
async def inspect_node(ctx: Ctx, request: web.Request, ref: str) -> web.Response:
    return json_response(node_view(resolve(ctx.manager.objects, "nodes", ref)))


@route("POST", "/nodes/{ref}/update")
async def update_node(ctx: Ctx, request: web.Request, ref: str) -> web.Response:
    manager = ctx.manager
    node = resolve(manager.objects, "nodes", ref)
    spec = decode(await read_json(request), "NodeSpec")
    raw = request.rel_url.query.get("version", "")
    try:
        version = int(raw)
    except ValueError:
        raise BadRequest(f"invalid node version '{raw}': strconv.ParseUint: parsing \"{raw}\": "
                         "invalid syntax") from None
    role = spec.get("Role") or node["Spec"].get("Role")
    avail = spec.get("Availability") or node["Spec"].get("Availability")
    if role not in ("worker", "manager"):
        raise InvalidArgument(f"invalid Role: {role!r}")
    if avail not in ("active", "pause", "drain"):
        raise InvalidArgument(f"invalid Availability: {avail!r}")
    labels = spec.get("Labels") or {}
    new = {**{k: v for k, v in spec.items() if k in ("Name",)}, "Labels": labels, "Role": role,
           "Availability": avail}
    await manager.update_node(node, version, new)
    return web.Response(status=200)


@route("DELETE", "/nodes/{ref}")
async def remove_node(ctx: Ctx, request: web.Request, ref: str) -> web.Response:
    manager = ctx.manager
    node = resolve(manager.objects, "nodes", ref)
    await manager.remove_node(node, force=bool_value(request.rel_url.query, "force"))
    return web.Response(status=200)
