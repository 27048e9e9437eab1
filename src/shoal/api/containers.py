"""Standalone containers on attachable swarm networks: `docker run --network NET` and
`docker network connect NET CONTAINER` (and `disconnect`) through shoald.

A request naming a swarm network gets an attachment from the leader (an address on the network, see
``shoal.manager.attachments``); the engine-local twin of the network is made, and the request goes on to
the engine naming the twin, with the address and this node's DNS server. Everything else passes
through untouched. The node gives attachments back once their container is gone.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from aiohttp import web

from shoal.api.networks import engine_network, pick
from shoal.api.server import Ctx, route
from shoal.model import labels
from shoal.model.errors import APIError, NotFound

BUILTIN = {"", "default", "bridge", "host", "none"}


def _attaching(ctx: Ctx) -> bool:
    return ctx.control.local().state == "active" and ctx.control.networks_here() is not None


async def _is_swarm_network(ctx: Ctx, ref: str) -> bool:
    """``ref`` is not one of the engine's own networks (a twin of a swarm network counts as swarm)."""
    if ref in BUILTIN or ref.startswith("container:"):
        return False
    local = await engine_network(ctx, ref)
    return local is None or local.get("Driver") == labels.PLUGIN_DRIVER


async def _twin_name(ctx: Ctx, ref: str) -> str | None:
    """The engine's twin of the swarm network ``ref`` (ID, name or ID prefix) on this node, if any."""
    net = pick(ctx.control.networks_here() or [], ref, lambda n: n["Id"], lambda n: n["Name"])
    query = json.dumps({"label": [f"{labels.TWIN_ID}={net['Id'] if net else ref}"]})
    async with ctx.proxy.session.get("http://docker/networks", params={"filters": query}) as resp:
        twins = await resp.json() if resp.status == 200 else []
    if twins:
        return twins[0]["Name"]
    local = await engine_network(ctx, ref)  # the twin named as the network
    return local["Name"] if local and local.get("Driver") == labels.PLUGIN_DRIVER else None


async def _attach(ctx: Ctx, ref: str, container: str, user_ep: dict | None,
                  made: list[str]) -> tuple[str, dict, list[str]]:
    """Attach to swarm network ``ref``: (twin name, endpoint config for the engine, DNS servers)."""
    att = await ctx.control.attach(ref, container)
    made.append(att.task_id)
    ep: dict[str, Any] = dict(user_ep or {})
    ep["IPAMConfig"] = {**(ep.get("IPAMConfig") or {}), **att.ipam}
    return att.network, ep, att.dns


@route("POST", "/containers/create", manager=False)
async def create_container(ctx: Ctx, request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw and _attaching(ctx) else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return await ctx.proxy.forward_body(request, raw)
    host = body.get("HostConfig") if isinstance(body.get("HostConfig"), dict) else {}
    net_cfg = body.get("NetworkingConfig") if isinstance(body.get("NetworkingConfig"), dict) else {}
    eps = net_cfg.get("EndpointsConfig") if isinstance(net_cfg.get("EndpointsConfig"), dict) else {}
    mode = host.get("NetworkMode") if isinstance(host.get("NetworkMode"), str) else ""
    refs = [r for r in dict.fromkeys([mode, *eps]) if await _is_swarm_network(ctx, r)]
    if not refs:
        return await ctx.proxy.forward_body(request, raw)
    made: list[str] = []
    try:
        name = request.rel_url.query.get("name", "")
        for ref in refs:
            twin, ep, dns = await _attach(ctx, ref, name, eps.pop(ref, None), made)
            eps[twin] = ep
            if mode == ref:
                host["NetworkMode"] = twin
            if dns and not host.get("Dns"):
                host["Dns"] = dns
        body["HostConfig"], body["NetworkingConfig"] = host, {**net_cfg, "EndpointsConfig": eps}
        resp = await ctx.proxy.forward_body(request, json.dumps(body).encode())
    except BaseException:
        await ctx.control.detach(made)
        raise
    if resp.status >= 300:
        await ctx.control.detach(made)
    return resp


@route("POST", "/networks/{ref}/connect", manager=False)
async def connect_container(ctx: Ctx, request: web.Request, ref: str) -> web.StreamResponse:
    raw = await request.read()
    if not _attaching(ctx) or not await _is_swarm_network(ctx, ref):
        return await ctx.proxy.forward_body(request, raw)
    try:
        body = json.loads(raw) if raw else {}
    except ValueError as e:
        raise APIError(f"invalid JSON: {e}", 400) from None
    container = str((body or {}).get("Container") or "")
    async with ctx.proxy.session.get(f"http://docker/containers/{quote(container, safe='')}/json") as resp:
        if resp.status != 200:
            raise NotFound(f"No such container: {container}")
    made: list[str] = []
    try:
        twin, ep, _dns = await _attach(ctx, ref, container, body.get("EndpointConfig"), made)
        async with ctx.proxy.session.post(f"http://docker/networks/{quote(twin, safe='')}/connect",
                                             json={**body, "EndpointConfig": ep}) as resp:
            status, answer = resp.status, await resp.read()
    except BaseException:
        await ctx.control.detach(made)
        raise
    if status >= 300:
        await ctx.control.detach(made)
        try:
            message = json.loads(answer).get("message") or answer.decode()
        except ValueError:
            message = answer.decode(errors="replace")
        raise APIError(message, status)
    return web.Response(status=status, body=answer or None)


@route("POST", "/networks/{ref}/disconnect", manager=False)
async def disconnect_container(ctx: Ctx, request: web.Request, ref: str) -> web.StreamResponse:
    """Disconnecting names the twin on the engine; the attachment is given back once it is unused."""
    raw = await request.read()
    if not _attaching(ctx) or not await _is_swarm_network(ctx, ref):
        return await ctx.proxy.forward_body(request, raw)
    twin = await _twin_name(ctx, ref)
    if twin is None:
        raise NotFound(f"network {ref} not found")
    async with ctx.proxy.session.post(f"http://docker/networks/{quote(twin, safe='')}/disconnect",
                                         data=raw, headers={"Content-Type": "application/json"}) as resp:
        status, answer = resp.status, await resp.read()
    if status >= 300:
        try:
            raise APIError(json.loads(answer).get("message") or "disconnect failed", status)
        except ValueError:
            raise APIError(answer.decode(errors="replace"), status) from None
    await ctx.control.collect_attachments()  # give the address back now
    return web.Response(status=status, body=answer or None)
