"""The cluster port (2377): one HTTPS server with mutual TLS, serving every node and, on a manager, the
managers' side of the protocol. It holds the transport only: each endpoint decodes its message
(:mod:`shoal.cluster.messages`), checks who asks (the client certificate: CN = node ID, OU = role,
O = cluster ID) and calls the node's or the manager's handler.

- ``GET /logs`` (any node; managers of this swarm ask) — this node's task logs, as JSON lines;
- ``GET /ca``, ``POST /join`` (managers; no client certificate: the joining node has none yet);
- ``GET /session`` (managers) — an agent's session (WebSocket), handed to the dispatcher while leading,
  else answered 421 with the leader's address;
- ``POST /role``, ``POST /renew``, ``POST /attachments/attach|detach`` (the leader) — a node's requests;
- ``* /api/<path>`` (the leader; managers ask) — an Engine-API write forwarded by another manager.

A manager checks the asker against its store at every request, not only its certificate: a removed
node is refused everything (403), and only a node that is a manager in the store now may forward writes
or read logs through a manager (a demoted manager keeps a manager's certificate for a while).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import WSMsgType, web

from shoal.cluster.messages import (
    LEADER_HEADER,
    REQUEST_PATHS,
    REVISION_HEADER,
    CAAnswer,
    ErrorAnswer,
    Hello,
    JoinAnswer,
    JoinRequest,
    LogsRequest,
    Message,
    NotLeader,
    ProtocolError,
    SessionError,
    decode,
    encode,
)
from shoal.model.errors import NO_LONGER_LEADER, APIError, StoreError
from shoal.model.logs import LogLine, LogQuery
from shoal.tls.certs import peer_identity

log = logging.getLogger(__name__)

REMOVED = "rpc error: code = PermissionDenied desc = node has been removed from the swarm"
JOIN_BODY_LIMIT = 1 << 20  # a join request is a CSR and the node's description: a few KiB


async def read_at_most(request: web.Request, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it is known to exceed ``limit`` bytes: from its
    Content-Length, before anything is read, or while it is read."""
    too_large = APIError(f"request body exceeds {limit} bytes", 413)
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


@dataclass(frozen=True)
class Peer:
    """Who is asking: the identity in its client certificate, and its address."""

    node_id: str
    role: str
    cluster_id: str
    addr: str


class Channel:
    """The manager's end of one agent's session: typed messages out, one at a time."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._lock = asyncio.Lock()

    async def send(self, msg: Message) -> None:
        async with self._lock:
            await self._ws.send_str(encode(msg).decode())

    async def close(self) -> None:
        await self._ws.close()


class Sessions(Protocol):
    """The dispatcher, as the session transport sees it."""

    async def open(self, node_id: str, role: str, channel: Channel, hello: Hello, addr: str) -> object:
        """A new session (any older one of the node ends); its ``closed`` says it was refused."""
        ...

    async def receive(self, session: object, msg: Message) -> None: ...

    def close(self, session: object) -> None: ...


class NodeEndpoints(Protocol):
    """What every node answers on its cluster port."""

    @property
    def node_id(self) -> str: ...

    def local_logs(self, query: LogQuery) -> AsyncGenerator[LogLine, None]: ...


class ManagerEndpoints(Protocol):
    """What a manager answers on its cluster port."""

    def ca_pem(self) -> bytes: ...

    def cluster_id(self) -> str: ...

    def has_node(self, node_id: str) -> bool: ...

    def role_of(self, node_id: str) -> str | None:
        """The node's role in the store now; None when it was removed."""
        ...

    def leader(self) -> str | None:
        """None while this manager leads; else the leader's cluster address (``""`` when unknown)."""
        ...

    def sessions(self) -> Sessions | None:
        """The dispatcher, while this manager leads."""
        ...

    async def join(self, req: JoinRequest, peer_addr: str) -> JoinAnswer: ...

    async def request(self, peer: Peer, msg: Message) -> Message:
        """A node's request to the leader (role change, attachments)."""
        ...

    async def api(self, request: web.Request) -> web.StreamResponse:
        """An Engine-API write forwarded by another manager, answered as if asked here."""
        ...

    @property
    def revision(self) -> int:
        """The store revision this manager has read up to."""
        ...


def _answer(msg: Message, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=encode(msg), status=status, content_type="application/json", headers=headers)


def _error(message: str, status: int) -> web.Response:
    return _answer(ErrorAnswer(message), status)


def _peer(request: web.Request) -> Peer | None:
    transport = request.transport
    ident = peer_identity(transport.get_extra_info("peercert") if transport else None)
    if ident is None:
        return None
    peername = transport.get_extra_info("peername") if transport else None
    return Peer(*ident, addr=peername[0] if peername else "")


def _not_leader(leader: str) -> web.Response:
    return _answer(NotLeader(leader), 421, {LEADER_HEADER: leader})


def _handles(fn: Callable[..., Awaitable[web.StreamResponse]]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Errors of a handler in Docker's shape."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except APIError as e:
            return _error(e.message, e.status)
        except ProtocolError as e:
            return _error(f"invalid request: {e}", 400)
        except StoreError as e:
            return _error(f"rpc error: code = Unavailable desc = the cluster store is unavailable: {e}", 503)

    return run


class ClusterServer:
    """The cluster port of one node; ``manager`` is given while the node is a manager."""

    def __init__(self, node: NodeEndpoints, manager: ManagerEndpoints | None, ssl_ctx: ssl.SSLContext,
                 host: str, port: int) -> None:
        self.node, self.manager = node, manager
        self.ssl, self.host, self.port = ssl_ctx, host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/logs", _handles(self._logs))
        if self.manager is not None:
            app.router.add_route("*", "/api/{tail:.*}", _handles(self._api))
            app.router.add_get("/ca", _handles(self._ca))
            app.router.add_post("/join", _handles(self._join))
            app.router.add_get("/session", self._session)
            for path in REQUEST_PATHS.values():
                app.router.add_post(path, _handles(self._request))
        # a worker's only requests are log streams, which end with their client; a manager finishes every
        # request it took (a forwarded write is never cut half way)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=self.manager is None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host or "0.0.0.0", self.port, ssl_context=self.ssl,
                           reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self.stop()
            raise
        log.info("cluster port listening on %s:%d (mutual TLS)", self.host or "0.0.0.0", self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- every node --------------------------------------------------------------------------------
    async def _logs(self, request: web.Request) -> web.StreamResponse:
        peer = _peer(request)
        if peer is None or peer.role != "manager" or (self.manager is not None and
                                                      self.manager.role_of(peer.node_id) != "manager"):
            return _error("only managers of this swarm may read logs", 403)
        req = LogsRequest.from_params(dict(request.rel_url.query))
        if req.node != self.node.node_id:
            return _error("the logs asked for are another node's", 409)
        if not req.query.service and not req.query.task:
            return _error("a service or a task is required", 400)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        lines = self.node.local_logs(req.query)
        try:
            async for line in lines:
                await resp.write((line.to_json() + "\n").encode())
        finally:
            with contextlib.suppress(Exception):
                await lines.aclose()
        await resp.write_eof()
        return resp

    # -- managers ----------------------------------------------------------------------------------
    def _member(self, request: web.Request) -> Peer | web.Response:
        """The asking node, if its certificate is from this swarm."""
        assert self.manager is not None
        peer = _peer(request)
        if peer is None or peer.cluster_id != self.manager.cluster_id():
            return _error("a client certificate from this swarm is required", 401)
        if self.manager.role_of(peer.node_id) is None:
            return _error(REMOVED, 403)
        return peer

    async def _ca(self, request: web.Request) -> web.Response:
        assert self.manager is not None
        return _answer(CAAnswer(self.manager.ca_pem().decode()))

    async def _join(self, request: web.Request) -> web.Response:
        assert self.manager is not None
        try:
            req = decode(await read_at_most(request, JOIN_BODY_LIMIT), JoinRequest)
        except ProtocolError:
            return _error("invalid join request", 400)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return _answer(await self.manager.join(req, peer[0] if peer else ""))

    async def _request(self, request: web.Request) -> web.Response:
        assert self.manager is not None
        peer = self._member(request)
        if isinstance(peer, web.Response):
            return peer
        leader = self.manager.leader()
        if leader is not None:
            return _not_leader(leader)
        want = next(cls for cls, path in REQUEST_PATHS.items() if path == request.path)
        try:
            msg = decode(await request.read(), want)
        except ProtocolError:
            return _error(f"invalid {want.TYPE} request", 400)
        return _answer(await self.manager.request(peer, msg))

    async def _api(self, request: web.Request) -> web.StreamResponse:
        assert self.manager is not None
        peer = self._member(request)
        if isinstance(peer, web.Response):
            return peer
        if peer.role != "manager" or self.manager.role_of(peer.node_id) != "manager":
            return _error("only managers of this swarm may forward API calls", 403)
        if self.manager.leader() is not None:
            return _error(NO_LONGER_LEADER, 503)
        inner = request.clone(rel_url=request.rel_url.path_qs[len("/api"):] or "/")
        resp = await self.manager.api(inner)
        if not resp.prepared:  # the store revision after this write: the follower waits for it
            resp.headers[REVISION_HEADER] = str(self.manager.revision)
        return resp

    async def _session(self, request: web.Request) -> web.StreamResponse:
        manager = self.manager
        assert manager is not None
        peer = _peer(request)
        if peer is None:
            return _error("a client certificate from this swarm is required", 401)
        if peer.cluster_id != manager.cluster_id():
            return _error("certificate is from another swarm", 403)
        if not manager.has_node(peer.node_id):
            return _error(REMOVED, 403)
        sessions = manager.sessions()
        if sessions is None:  # not the leader: send the agent there
            return _not_leader(manager.leader() or "")
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        channel = Channel(ws)
        first = await ws.receive(timeout=10)
        try:
            hello = decode(first.data, Hello) if first.type == WSMsgType.TEXT else None
        except ProtocolError:
            hello = None
        if hello is None:
            await ws.close()
            return ws
        s = await sessions.open(peer.node_id, peer.role, channel, hello, peer.addr)
        try:
            if getattr(s, "closed", False):
                return ws
            async for raw in ws:
                if raw.type != WSMsgType.TEXT:
                    break
                if not manager.has_node(peer.node_id):
                    await channel.send(SessionError(REMOVED))
                    break
                try:
                    msg = decode(raw.data)
                except ProtocolError as e:
                    log.warning("session of %s: %s", peer.node_id, e)
                    continue
                await sessions.receive(s, msg)
                if getattr(s, "closed", False):
                    break
        finally:
            sessions.close(s)
            await ws.close()
        return ws

