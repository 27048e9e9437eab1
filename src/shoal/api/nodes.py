"""``/nodes``: list, inspect, update (availability, labels, role), remove."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from aiohttp import web

from shoal.api.filters import match_any_prefix, match_labels, parse_filters
from shoal.api.resolve import resolve
from shoal.api.server import json_response, read_json, route
from shoal.model.errors import BadRequest, FailedPrecondition, InvalidArgument, OutOfSequence
from shoal.model.ids import now

if TYPE_CHECKING:
    from shoal.daemon import Daemon

FILTERS = {"id", "label", "node.label", "membership", "name", "role"}


@route("GET", "/nodes")
async def list_nodes(daemon: Daemon, request: web.Request) -> web.Response:
    f = parse_filters(request.rel_url.query.get("filters"), FILTERS)
    out = []
    for n in daemon.objs.list("nodes"):
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
        out.append(n)
    out.sort(key=lambda n: ((n.get("Description") or {}).get("Hostname", ""), n["ID"]))
    return json_response(out)


@route("GET", "/nodes/{ref}")
async def inspect_node(daemon: Daemon, request: web.Request, ref: str) -> web.Response:
    return json_response(resolve(daemon.objs, "nodes", ref))


@route("POST", "/nodes/{ref}/update")
async def update_node(daemon: Daemon, request: web.Request, ref: str) -> web.Response:
    node = resolve(daemon.objs, "nodes", ref)
    raw = request.rel_url.query.get("version", "")
    try:
        version = int(raw)
    except ValueError:
        raise BadRequest(f"invalid node version '{raw}': strconv.ParseUint: parsing \"{raw}\": "
                         "invalid syntax") from None
    spec = await read_json(request)
    if not isinstance(spec, dict):
        raise BadRequest("json: cannot unmarshal into Go value of type swarm.NodeSpec")
    role = spec.get("Role") or node["Spec"].get("Role")
    avail = spec.get("Availability") or node["Spec"].get("Availability")
    if role not in ("worker", "manager"):
        raise InvalidArgument(f"invalid Role: {role!r}")
    if avail not in ("active", "pause", "drain"):
        raise InvalidArgument(f"invalid Availability: {avail!r}")
    labels = spec.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise BadRequest("json: cannot unmarshal into Go struct field NodeSpec.Labels of type string")
    if version != node["Version"]["Index"]:
        raise OutOfSequence()
    if role == "worker" and node["Spec"].get("Role") == "manager":
        managers = [n for n in daemon.objs.list("nodes") if n["Spec"].get("Role") == "manager"]
        if len(managers) <= 1:
            raise FailedPrecondition("attempting to demote the last manager of the swarm")
        await daemon.check_demote(node)
    new = copy.deepcopy(node)
    new["Spec"] = {**{k: v for k, v in spec.items() if k in ("Name",)}, "Labels": labels, "Role": role,
                   "Availability": avail}
    new["UpdatedAt"] = now()
    await daemon.objs.update("nodes", new)
    return web.Response(status=200)


@route("DELETE", "/nodes/{ref}")
async def remove_node(daemon: Daemon, request: web.Request, ref: str) -> web.Response:
    node = resolve(daemon.objs, "nodes", ref)
    force = request.rel_url.query.get("force") in ("1", "true", "True")
    if node.get("ManagerStatus") is not None:  # still an etcd member
        raise FailedPrecondition(
            f"node {node['ID']} is a cluster manager and is a member of the raft cluster. It must be "
            "demoted to worker before removal")
    if not force and node["Status"].get("State") not in ("down", "unknown"):
        raise FailedPrecondition(
            f"node {node['ID']} is not down and can't be removed")
    await daemon.remove_node(node)
    return web.Response(status=200)
