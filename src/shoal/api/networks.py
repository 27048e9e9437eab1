"""``/networks``: swarm-scoped overlay networks live in the store; the engine's local networks are
listed beside them and everything about local networks is passed to the engine."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

from aiohttp import web

from shoal.api.filters import match_any_prefix, match_labels, parse_filters
from shoal.api.server import json_response, read_json, route
from shoal.model import labels
from shoal.model.errors import APIError, NotFound
from shoal.model.network import name_conflict, new_network, resource, spec_from_request

if TYPE_CHECKING:
    from shoal.daemon import Daemon

FILTERS = {"driver", "id", "label", "name", "scope", "type", "dangling"}

T = TypeVar("T")


def _swarm_active(daemon: Daemon) -> bool:
    return daemon.state == "active" and daemon.role == "manager" and daemon.objs is not None


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


def find_swarm_network(daemon: Daemon, ref: str) -> dict | None:
    if not _swarm_active(daemon):
        return None
    return pick(daemon.objs.list("networks"), ref, lambda n: n["ID"], lambda n: n["Spec"]["Name"])


def worker_networks(daemon: Daemon) -> list[dict]:
    """On a worker, the swarm networks this node takes part in (ingress, and those of its tasks), as
    its network map has them: Docker lists these on a worker too."""
    if daemon.state != "active" or daemon.role == "manager" or daemon.netagent is None:
        return []
    return [n["resource"] for n in (daemon.netagent.netmap.get("networks") or {}).values() if "resource" in n]


def find_worker_network(daemon: Daemon, ref: str) -> dict | None:
    return pick(worker_networks(daemon), ref, lambda n: n["Id"], lambda n: n["Name"])


async def engine_network(daemon: Daemon, ref: str) -> dict | None:
    """The engine's own network ``ref`` (its inspect), or None."""
    async with daemon.proxy.session.get(f"http://docker/networks/{quote(ref, safe='')}") as resp:
        return await resp.json() if resp.status == 200 else None


@route("GET", "/networks", manager=False)
async def list_networks(daemon: Daemon, request: web.Request) -> web.Response:
    local = await daemon.proxy.get_json("/networks")
    f = parse_filters(request.rel_url.query.get("filters"), FILTERS)
    out = [n for n in local if n.get("Driver") != labels.PLUGIN_DRIVER]
    if _swarm_active(daemon):
        out += [resource(n) for n in daemon.objs.list("networks")]
    else:
        out += worker_networks(daemon)

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
async def inspect_network(daemon: Daemon, request: web.Request, ref: str) -> web.StreamResponse:
    net = find_swarm_network(daemon, ref)
    if net is not None:
        return json_response(resource(net))
    found = find_worker_network(daemon, ref)
    if found is not None:
        return json_response(found)
    local = await engine_network(daemon, ref)
    if local is not None and local.get("Driver") == labels.PLUGIN_DRIVER:
        # the engine's twin of a swarm network this node no longer takes part in: hidden
        raise NotFound(f"network {ref} not found")
    return await daemon.proxy.handle(request)


@route("POST", "/networks/create", manager=False)
async def create_network(daemon: Daemon, request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    if not isinstance(body, dict) or body.get("Driver") != "overlay":
        return await daemon.proxy.forward_body(request, json.dumps(body).encode() if body is not None else b"")
    daemon.require_manager()
    if not daemon.is_leader:
        return await daemon.forward(request)
    spec = spec_from_request(body)
    if find_swarm_network(daemon, spec["Name"]) is not None:
        raise name_conflict(spec["Name"])
    async with daemon.alloc_lock:
        net = daemon.netalloc.allocate_network(new_network(spec), daemon.cluster().get("DefaultAddrPool")
                                               or ["10.0.0.0/8"], daemon.cluster().get("SubnetSize") or 24)
        try:
            await daemon.objs.create("networks", net)
        except APIError:
            daemon.netalloc.release_network(net["ID"])
            raise name_conflict(spec["Name"]) from None
    return json_response({"Id": net["ID"], "Warning": ""}, 201)


@route("DELETE", "/networks/{ref}", manager=False)
async def delete_network(daemon: Daemon, request: web.Request, ref: str) -> web.StreamResponse:
    net = find_swarm_network(daemon, ref)
    if net is None:
        return await daemon.proxy.handle(request)
    if not daemon.is_leader:
        return await daemon.forward(request)
    for svc in daemon.objs.list("services"):
        if net["ID"] in daemon.netalloc.networks_of(svc["Spec"]):
            raise APIError(f"rpc error: code = FailedPrecondition desc = network {net['ID']} is in use by "
                           f"service {svc['ID']}", 400)
    if not await daemon.objs.delete("networks", net):
        raise NotFound(f"network {ref} not found")
    daemon.netalloc.release_network(net["ID"])
    return web.Response(status=204)
