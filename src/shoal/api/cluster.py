"""The cluster port (2377): mutual TLS between nodes and managers.

- ``GET /ca`` — the root CA certificate (a joining node checks it against its token's digest).
- ``POST /join`` — a token and a CSR in, a node certificate out (the only call without a client
  certificate besides ``/ca``).
- ``GET /session`` — an agent's session (WebSocket): assignments out, status reports and heartbeats in.
- ``GET /logs`` — this node's task logs for a manager answering ``docker service logs`` (workers serve
  only this one).
Every other request needs a client certificate from this cluster whose node still exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from shoal.agent.logs import make_logs_handler
from shoal.manager import attachments
from shoal.model.errors import APIError
from shoal.model.ids import new_id, now
from shoal.tls import peer_identity, sign_csr

if TYPE_CHECKING:
    from shoal.daemon import Daemon

log = logging.getLogger(__name__)

INVALID_TOKEN = "rpc error: code = InvalidArgument desc = A valid join token is necessary to join this cluster"
REMOVED = "rpc error: code = PermissionDenied desc = node has been removed from the swarm"


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _identity(request: web.Request) -> tuple[str, str, str] | None:
    transport = request.transport
    return peer_identity(transport.get_extra_info("peercert") if transport else None)


def make_cluster_app(daemon: Daemon) -> web.Application:
    async def ca(request: web.Request) -> web.Response:
        return web.json_response({"ca": daemon.ca_cert_pem().decode()})

    async def join(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            token, csr = body["token"], body["csr"].encode()
        except (ValueError, KeyError, AttributeError):
            return _error("invalid join request", 400)
        cluster = daemon.cluster()
        tokens = cluster.get("JoinTokens") or {}
        role = next((r for r, key in (("worker", "Worker"), ("manager", "Manager"))
                     if hmac.compare_digest(str(token), tokens.get(key, ""))), None)
        if role is None:
            return _error(INVALID_TOKEN, 400)
        node_id = new_id()
        try:
            cert = sign_csr(csr, daemon.ca_cert_pem(), daemon.ca_key_pem(), node_id, role, cluster["ID"])
        except ValueError as e:
            return _error(f"invalid certificate request: {e}", 400)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        addr = body.get("addr") or (peer[0] if peer else "")
        ts = now()
        avail = body.get("availability") or "active"
        if avail not in ("active", "pause", "drain"):
            return _error(f"invalid Availability: {avail!r}", 400)
        node = {
            "ID": node_id, "CreatedAt": ts, "UpdatedAt": ts,
            "Spec": {"Labels": {}, "Role": role, "Availability": avail},
            "Description": body.get("description") or {},
            "Status": {"State": "unknown", "Addr": addr},
        }
        answer = {"node_id": node_id, "role": role, "cert": cert.decode(), "ca": daemon.ca_cert_pem().decode(),
                  "managers": daemon.manager_addrs()}
        if role == "manager":
            node["ManagerStatus"] = {"Leader": False, "Reachability": "reachable",
                                     "Addr": body.get("cluster_addr") or f"{addr}:2377"}
        # the node first: once its etcd member is added, writes wait for it to start (quorum)
        await daemon.objs.create("nodes", node)
        if role == "manager":
            try:
                answer["etcd_cluster"] = await daemon.add_etcd_member(node_id, body["peer_url"])
            except Exception:
                with contextlib.suppress(Exception):
                    await daemon.objs.delete("nodes", daemon.objs.get("nodes", node_id) or node)
                raise
            answer["ca_key"] = daemon.ca_key_pem().decode()
        return web.json_response(answer)

    async def session(request: web.Request) -> web.StreamResponse:
        ident = _identity(request)
        if ident is None:
            return _error("a client certificate from this swarm is required", 401)
        node_id, cert_role, cluster_id = ident
        if cluster_id != daemon.cluster()["ID"]:
            return _error("certificate is from another swarm", 403)
        if daemon.objs.get("nodes", node_id) is None:
            return _error(REMOVED, 403)
        dispatcher = daemon.dispatcher
        if dispatcher is None:  # not the leader: send the agent there
            return web.json_response({"message": "not the leader", "leader": daemon.leader_addr}, status=421,
                                     headers={"X-Shoal-Leader": daemon.leader_addr})
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        lock = asyncio.Lock()

        async def send(msg: dict) -> None:
            async with lock:
                await ws.send_str(json.dumps(msg))

        first = await ws.receive(timeout=10)
        if first.type != WSMsgType.TEXT:
            await ws.close()
            return ws
        hello = json.loads(first.data)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        s = await dispatcher.open(node_id, send, hello, peer[0] if peer else "", cert_role)
        s.hangup = ws.close
        pump = asyncio.gather(dispatcher.pump(s), dispatcher.net_pump(s))
        try:
            if s.closed:
                return ws
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                if daemon.objs.get("nodes", node_id) is None:
                    await send({"type": "error", "message": REMOVED})
                    break
                await dispatcher.handle(s, json.loads(msg.data))
                if s.closed:
                    break
        finally:
            dispatcher.close(s)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            await ws.close()
        return ws

    async def leader_request(request: web.Request, what: str) -> tuple[tuple[str, str, str], dict] | web.Response:
        """A node's request to the leader: (its identity, the JSON object it sent), or the answer refusing it
        (no certificate of this swarm, not the leader: where it is, not a JSON object)."""
        ident = _identity(request)
        if ident is None or ident[2] != daemon.cluster()["ID"]:
            return _error("a client certificate from this swarm is required", 401)
        if not daemon.is_leader:
            return web.json_response({"message": "not the leader", "leader": daemon.leader_addr}, status=421,
                                     headers={"X-Shoal-Leader": daemon.leader_addr})
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(f"invalid {what} request", 400)
        return ident, body

    async def role(request: web.Request) -> web.Response:
        """A promoted or demoted node asks the leader for what its new role needs."""
        asked = await leader_request(request, "role")
        if isinstance(asked, web.Response):
            return asked
        (node_id, cert_role, _cluster), body = asked
        try:
            return web.json_response(await daemon.role_request(node_id, cert_role, body))
        except APIError as e:
            return _error(e.message, e.status)

    async def attachment(request: web.Request) -> web.Response:
        """A node asks for, or gives back, a standalone container's attachment to a swarm network."""
        asked = await leader_request(request, "attachment")
        if isinstance(asked, web.Response):
            return asked
        (node_id, _role, _cluster), body = asked
        try:
            if request.match_info["action"] == "attach":
                task = await attachments.attach(daemon, node_id, str(body.get("network") or ""),
                                                str(body.get("container") or ""))
                return web.json_response({"task": task})
            return web.json_response({"detached": await attachments.detach(daemon, node_id, str(body.get("id")))})
        except APIError as e:
            return _error(e.message, e.status)

    async def api(request: web.Request) -> web.StreamResponse:
        """An Engine-API write forwarded by another manager: answered as if asked here."""
        ident = _identity(request)
        if ident is None or ident[1] != "manager" or ident[2] != daemon.cluster()["ID"]:
            return _error("only managers of this swarm may forward API calls", 403)
        if not daemon.is_leader:
            return _error("rpc error: code = Unavailable desc = this manager is no longer the leader", 503)
        inner = request.clone(rel_url=request.rel_url.path_qs[len("/api"):] or "/")
        resp = await daemon.api_dispatch(inner)
        if not resp.prepared:  # the store revision after this write: the follower waits for it
            resp.headers["X-Shoal-Revision"] = str(daemon.objs.revision)
        return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/api/{tail:.*}", api)
    app.router.add_get("/ca", ca)
    app.router.add_post("/join", join)
    app.router.add_get("/session", session)
    app.router.add_get("/logs", make_logs_handler(daemon))  # this node's task logs, for managers
    app.router.add_post("/role", role)
    app.router.add_post("/attachments/{action:attach|detach}", attachment)
    return app
