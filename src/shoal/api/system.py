"""``/_ping``, ``/version`` and ``/info``: the engine's answers with shoal's swarm part."""

from __future__ import annotations

from aiohttp import web

from shoal.api.server import MAX_API, Ctx, json_response, route
from shoal.api.shape import complete


def _api_version(ctx: Ctx) -> str:
    major, minor = min(MAX_API, ctx.proxy.engine_api)
    return f"{major}.{minor}"


def _swarm_header(ctx: Ctx) -> str:
    local = ctx.control.local()
    if local.state != "active":
        return local.state  # inactive | pending | locked
    return f"active/{local.role}"


@route("GET", "/_ping", manager=False)
async def ping(ctx: Ctx, request: web.Request) -> web.Response:
    headers = {
        "Api-Version": _api_version(ctx), "Ostype": "linux", "Swarm": _swarm_header(ctx),
        "Docker-Experimental": "false", "Cache-Control": "no-cache, no-store, must-revalidate",
        "Pragma": "no-cache", "Builder-Version": "1",
    }
    body = b"" if request.method == "HEAD" else b"OK"
    return web.Response(body=body, headers=headers, content_type="text/plain")


@route("GET", "/version", manager=False)
async def version(ctx: Ctx, request: web.Request) -> web.Response:
    data = await ctx.proxy.get_json("/version")
    data["ApiVersion"] = _api_version(ctx)
    return json_response(data)


@route("GET", "/info", manager=False)
async def info(ctx: Ctx, request: web.Request) -> web.Response:
    data = await ctx.proxy.get_json("/info")
    data["Swarm"] = complete(ctx.control.swarm_info(), "SwarmInfo")
    return json_response(data)
