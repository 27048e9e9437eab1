"""``/swarm``: init, inspect, update, leave, join, unlock."""

from __future__ import annotations

from aiohttp import web

from shoal.api.decode import decode
from shoal.api.query import bool_value, parse_bool
from shoal.api.server import Ctx, json_response, read_json, route
from shoal.api.shape import complete
from shoal.model.errors import BadRequest


@route("POST", "/swarm/init", manager=False)
async def init(ctx: Ctx, request: web.Request) -> web.Response:
    body = decode(await read_json(request), "SwarmInitRequest")
    return json_response(await ctx.control.init_swarm(body))


@route("GET", "/swarm")
async def inspect(ctx: Ctx, request: web.Request) -> web.Response:
    return json_response(complete(ctx.manager.cluster(with_tokens=True), "Swarm"))


@route("POST", "/swarm/update")
async def update(ctx: Ctx, request: web.Request) -> web.Response:
    body = decode(await read_json(request), "SwarmSpec")
    q = request.rel_url.query
    if "version" not in q:
        raise BadRequest("invalid swarm version '': strconv.ParseUint: parsing \"\": invalid syntax")
    try:
        version = int(q["version"])
    except ValueError:
        raise BadRequest(f"invalid swarm version '{q['version']}'") from None
    manager = ctx.manager
    await manager.update_swarm(body, version, rotate_worker=parse_bool(q, "rotateWorkerToken", detail=False),
                               rotate_manager=parse_bool(q, "rotateManagerToken", detail=False),
                               rotate_unlock=parse_bool(q, "rotateManagerUnlockKey", detail=False))
    return web.Response(status=200)


@route("GET", "/swarm/unlockkey")
async def unlock_key(ctx: Ctx, request: web.Request) -> web.Response:
    return json_response({"UnlockKey": ctx.manager.unlock_key()})


@route("POST", "/swarm/unlock", manager=False)
async def unlock(ctx: Ctx, request: web.Request) -> web.Response:
    body = decode(await read_json(request), "SwarmUnlockRequest")
    await ctx.control.unlock_swarm(body.get("UnlockKey") or "")
    return web.Response(status=200)


@route("POST", "/swarm/leave", manager=False)
async def leave(ctx: Ctx, request: web.Request) -> web.Response:
    await ctx.control.leave_swarm(bool_value(request.rel_url.query, "force"))
    return web.Response(status=200)


@route("POST", "/swarm/join", manager=False)
async def join(ctx: Ctx, request: web.Request) -> web.Response:
    body = decode(await read_json(request), "SwarmJoinRequest")
    await ctx.control.join_swarm(body)
    return web.Response(status=200)
