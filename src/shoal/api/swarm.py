"""``/swarm``: init, inspect, update, leave."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from shoal import autolock
from shoal.api.server import json_response, read_json, route
from shoal.model.errors import APIError, BadRequest

if TYPE_CHECKING:
    from shoal.daemon import Daemon


TRUE, FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")


def _flag(query, name: str) -> bool:
    """A boolean query parameter as Go's strconv.ParseBool reads it (absent: false)."""
    value = query.get(name, "")
    if value in TRUE:
        return True
    if value in FALSE or value == "":
        return False
    raise BadRequest(f"invalid value for {name}: {value}")


def _refuse_ca_rotation(daemon: Daemon, spec: dict) -> None:
    """Root CA rotation (`docker swarm ca --rotate`, a new signing CA) is not implemented: say so rather
    than accept a spec that claims it happened."""
    ca = spec.get("CAConfig") or {}
    current = (daemon.cluster()["Spec"].get("CAConfig") or {}).get("ForceRotate", 0)
    if ca.get("SigningCACert") or ca.get("SigningCAKey") or (ca.get("ForceRotate") or 0) != current:
        raise APIError("rpc error: code = Unimplemented desc = shoal cannot rotate the swarm's root CA yet", 501)


@route("POST", "/swarm/init", manager=False)
async def init(daemon: Daemon, request: web.Request) -> web.Response:
    body = await read_json(request) or {}
    if not isinstance(body, dict):
        raise BadRequest("json: cannot unmarshal into Go value of type swarm.InitRequest")
    node_id = await daemon.init_swarm(body)
    return json_response(node_id)


@route("GET", "/swarm")
async def inspect(daemon: Daemon, request: web.Request) -> web.Response:
    return json_response(daemon.cluster_view(with_tokens=True))


@route("POST", "/swarm/update")
async def update(daemon: Daemon, request: web.Request) -> web.Response:
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
    _refuse_ca_rotation(daemon, body)
    await daemon.update_swarm(body, version, rotate_worker=_flag(q, "rotateWorkerToken"),
                              rotate_manager=_flag(q, "rotateManagerToken"),
                              rotate_unlock=_flag(q, "rotateManagerUnlockKey"))
    return web.Response(status=200)


@route("GET", "/swarm/unlockkey")
async def unlock_key(daemon: Daemon, request: web.Request) -> web.Response:
    key = autolock.unlock_key(daemon.cluster(), daemon.ca_key_pem())
    return json_response({"UnlockKey": autolock.human(key) if key else ""})


@route("POST", "/swarm/unlock", manager=False)
async def unlock(daemon: Daemon, request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("json: cannot unmarshal into Go value of type swarm.UnlockRequest")
    await autolock.unlock(daemon, body.get("UnlockKey") or "")
    return web.Response(status=200)


@route("POST", "/swarm/leave", manager=False)
async def leave(daemon: Daemon, request: web.Request) -> web.Response:
    force = request.rel_url.query.get("force") in ("1", "true", "True")
    await daemon.leave(force)
    return web.Response(status=200)


@route("POST", "/swarm/join", manager=False)
async def join(daemon: Daemon, request: web.Request) -> web.Response:
    body = await read_json(request) or {}
    if not isinstance(body, dict):
        raise BadRequest("json: cannot unmarshal into Go value of type swarm.JoinRequest")
    await daemon.join_swarm(body)
    return web.Response(status=200)
