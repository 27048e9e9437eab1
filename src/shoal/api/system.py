"""``/_ping``, ``/version`` and ``/info``: the engine's answers with shoal's swarm part."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from shoal.api.server import MAX_API, json_response, route

if TYPE_CHECKING:
    from shoal.daemon import Daemon


def _api_version(daemon: Daemon) -> str:
    major, minor = min(MAX_API, daemon.proxy.engine_api)
    return f"{major}.{minor}"


def _swarm_header(daemon: Daemon) -> str:
    if daemon.state != "active":
        return daemon.state  # inactive | pending
    return f"active/{daemon.role}"


@route("GET", "/_ping", manager=False)
async def ping(daemon: Daemon, request: web.Request) -> web.Response:
    headers = {
        "Api-Version": _api_version(daemon), "Ostype": "linux", "Swarm": _swarm_header(daemon),
        "Docker-Experimental": "false", "Cache-Control": "no-cache, no-store, must-revalidate",
        "Pragma": "no-cache", "Builder-Version": "1",
    }
    body = b"" if request.method == "HEAD" else b"OK"
    return web.Response(body=body, headers=headers, content_type="text/plain")


@route("GET", "/version", manager=False)
async def version(daemon: Daemon, request: web.Request) -> web.Response:
    data = await daemon.proxy.get_json("/version")
    data["ApiVersion"] = _api_version(daemon)
    return json_response(data)


@route("GET", "/info", manager=False)
async def info(daemon: Daemon, request: web.Request) -> web.Response:
    data = await daemon.proxy.get_json("/info")
    data["Swarm"] = daemon.swarm_info()
    return json_response(data)
