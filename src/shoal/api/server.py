"""The Engine-API server: swarm endpoints answered by shoal, everything else proxied to the engine.

Handlers see this node only through :class:`shoal.control.Control` (and a manager's view of the swarm
through :meth:`Control.manager`). Paths may carry a version prefix (``/v1.41/...``); it is stripped before
routing. Errors are Docker's ``{"message": ...}`` with Docker's status codes. A write to a manager endpoint
made on a follower is passed to the leader as it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import pkgutil
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from shoal.api.proxy import EngineProxy
from shoal.control import Control, ManagerControl
from shoal.model.errors import APIError, BadRequest, StoreError

log = logging.getLogger(__name__)

_VERSION = re.compile(r"/v(\d+)\.(\d+)(/.*)", re.S)
MIN_API = (1, 24)
MAX_API = (1, 50)
FORWARDED_HEADERS = ("content-type", "x-registry-auth")  # what a write passed to the leader keeps


@dataclass(frozen=True)
class Ctx:
    """What a handler works with: this node, and the engine behind it."""

    control: Control
    proxy: EngineProxy

    @property
    def manager(self) -> ManagerControl:
        return self.control.manager()


Handler = Callable[..., Awaitable[web.StreamResponse]]
# what make_app keeps in its application: the dispatcher (shoald serves forwarded writes with it), the
# handlers' context, the task that learns the engine's API version
DISPATCH = web.AppKey("dispatch", Callable[[web.Request], Awaitable[web.StreamResponse]])
CTX = web.AppKey("ctx", Ctx)
LEARN_VERSION = web.AppKey("learn_version", asyncio.Task)
_routes: list[tuple[str, re.Pattern, Handler, bool]] = []


def route(method: str, pattern: str, manager: bool = True) -> Callable[[Handler], Handler]:
    """Register a handler for ``method`` and a path pattern with ``{name}`` parts.
    ``manager``: the endpoint needs this node to be an active swarm manager (and its writes the leader)."""
    rx = re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern))

    def deco(fn: Handler) -> Handler:
        _routes.append((method, rx, fn, manager))
        return fn

    return deco


def json_response(data: Any, status: int = 200) -> web.Response:
    # exactly "application/json": the docker CLI only parses error bodies with that content type
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={"Content-Type": "application/json"})


def error_response(message: str, status: int) -> web.Response:
    return json_response({"message": message}, status)


async def read_json(request: web.Request) -> Any:
    body = await request.read()
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError as e:
        raise BadRequest(f"invalid JSON: {e}") from None


def split_version(path: str) -> tuple[tuple[int, int] | None, str]:
    m = _VERSION.fullmatch(path)
    if not m:
        return None, path
    return (int(m.group(1)), int(m.group(2))), m.group(3)


def is_write(request: web.Request) -> bool:
    return request.method not in ("GET", "HEAD")


async def forward(manager: ManagerControl, request: web.Request) -> web.Response:
    """A write made on a follower, answered by the leader."""
    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
    answer = await manager.forward(request.method, request.rel_url.path_qs, await request.read(), headers)
    return web.Response(status=answer.status, body=answer.body, headers={"Content-Type": answer.content_type})


def make_app(control: Control) -> web.Application:
    import shoal.api

    for mod in pkgutil.iter_modules(shoal.api.__path__):  # each module registers its routes on import
        importlib.import_module(f"shoal.api.{mod.name}")
    ctx = Ctx(control, EngineProxy(control.engine_socket))

    async def dispatch(request: web.Request) -> web.StreamResponse:
        version, path = split_version(request.path)
        if version is not None and version < MIN_API:
            return error_response(
                f"client version {version[0]}.{version[1]} is too old. Minimum supported API version "
                f"is {MIN_API[0]}.{MIN_API[1]}, please upgrade your client to a newer version", 400)
        if version is not None and version > MAX_API:
            return error_response(
                f"client version {version[0]}.{version[1]} is too new. Maximum supported API version "
                f"is {MAX_API[0]}.{MAX_API[1]}", 400)
        request["api_version"] = version or MAX_API
        for method, rx, fn, manager in _routes:
            if method != request.method and not (method == "GET" and request.method == "HEAD"):
                continue
            m = rx.fullmatch(path)
            if not m:
                continue
            try:
                if manager:
                    mc = control.manager()
                    if is_write(request) and not mc.is_leader:
                        return await forward(mc, request)
                return await fn(ctx, request, **m.groupdict())
            except APIError as e:
                return error_response(e.message, e.status)
            except StoreError as e:
                return error_response(f"shoal: the cluster store is unavailable, try again: {e}", 503)
            except web.HTTPException:
                raise
            except Exception as e:  # a bug: say so in Docker's shape rather than drop the connection
                log.exception("%s %s", request.method, request.path)
                return error_response(f"shoal: internal error: {e}", 500)
        return await ctx.proxy.handle(request)

    async def started(app: web.Application) -> None:
        app[LEARN_VERSION] = asyncio.create_task(ctx.proxy.learn_version(), name="engine-version")

    async def cleanup(app: web.Application) -> None:
        task = app.get(LEARN_VERSION)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await ctx.proxy.close()

    app = web.Application(client_max_size=64 * 1024 * 1024)
    if os.environ.get("SHOAL_API_RECORD"):  # tests: keep every JSON answer to check it against the OpenAPI doc
        from shoal.api.record import recorder

        app.middlewares.append(recorder(os.environ["SHOAL_API_RECORD"]))
    app.router.add_route("*", r"/{tail:[\s\S]*}", dispatch)  # any path, newlines included
    app.on_startup.append(started)
    app.on_cleanup.append(cleanup)
    app[DISPATCH] = dispatch
    app[CTX] = ctx
    return app
