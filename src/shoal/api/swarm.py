"""``/swarm``: init, inspect, update, leave, join, unlock."""

from __future__ import annotations

from aiohttp import web

from shoal.api.server import Ctx, json_response, read_json, route
from shoal.model.errors import BadRequest

TRUE, FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")


def _flag(query, name: str) -> bool:
    """A boolean query parameter as Go's strconv.ParseBool reads it (absent: false)."""
    value = query.get(name, "")
    if value in TRUE:
        return True
    if value in FALSE or value == "":
        return False
    raise BadRequest(f"invalid value for {name}: {value}")


@route("POST", "/swarm/init", manager=False)
async def init(ctx: Ctx, request: web.Request) -> web.Response:
    body = await read_json(request) or {}
    if not isinstance(body, dict):
        raise BadRequest("json: cannot unmarshal into Go value of type swarm.InitRequest")
    return json_response(await ctx.control.init_swarm(body))


@route("GET", "/swarm")
async def inspect(ctx: Ctx, request: web.Request) -> web.Response:
    return json_response(ctx.manager.cluster(with_tokens=True))


@route("POST", "/swarm/update")
async def update(ctx: Ctx, request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("json: cannot unmarshal into Go value of type swarm.Spec")
    q = request.rel_url.query
    if "version" not in q:
        raise BadRequest("invalid swarm version '': strconv.ParseUint: parsing \"\": invalid syntax")
    try:
        version = int(q["version"])
    except ValueError:
        raise BadRequest(f"invalid swarm version '{q['version']}'") from None
    manager = ctx.manager
    await manager.update_swarm(body, version, rotate_worker=_flag(q, "rotateWorkerToken"),
                               rotate_manager=_flag(q, "rotateManagerToken"),
                               rotate_unlock=_flag(q, "rotateManagerUnlockKey"))
    return web.Response(status=200)


@route("GET", "/swarm/unlockkey")
async def unlock_key(ctx: Ctx, request: web.Request) -> web.Response:
    return json_response({"UnlockKey": ctx.manager.unlock_key()})


@route("POST", "/swarm/unlock", manager=False)
async def unlock(ctx: Ctx, request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("json: cannot unmarshal into Go value of type swarm.UnlockRequest")
    await ctx.control.unlock_swarm(body.get("UnlockKey") or "")
    return web.Response(status=200)


@route("POST", "/swarm/leave", manager=False)
async def leave(ctx: Ctx, request: web.Request) -> web.Response:
    await ctx.control.leave_swarm(request.rel_url.query.get("force") in ("1", "true", "True"))
    return web.Response(status=200)


@route("POST", "/swarm/join", manager=False)
async def join(ctx: Ctx, request: web.Request) -> web.Response:
    body = await read_json(request) or {}
    if not isinstance(body, dict):
        raise BadRequest("json: cannot unmarshal into Go value of type swarm.JoinRequest")
    await ctx.control.join_swarm(body)
    return web.Response(status=200)
