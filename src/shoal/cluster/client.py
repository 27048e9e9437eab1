"""The client end of the cluster port: every call a node or a manager makes to another node.

A joining node has no certificate yet (``/ca`` with no verification, checked against the token's digest
by the caller; ``/join`` trusting exactly that CA); every other call presents this node's certificate.
Every call checks who answers: a manager's certificate (``swarm-manager``; ``swarm-ca`` to join) for
everything but ``/logs``, which must come from the node asked for (its ID is in its certificate).
A follower answers a request meant for the leader with 421 and the leader's address: :meth:`request`
follows it. Refusals come back as :class:`~shoal.model.errors.APIError` with the server's message and
status; connection failures as ``aiohttp.ClientError`` / ``TimeoutError``.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import aiohttp

from shoal.cluster.messages import (
    LEADER_HEADER,
    REQUEST_PATHS,
    REVISION_HEADER,
    CAAnswer,
    ForwardedAnswer,
    JoinAnswer,
    JoinRequest,
    LogsRequest,
    Message,
    ProtocolError,
    decode,
    encode,
)
from shoal.model.errors import APIError, Unavailable
from shoal.model.logs import LogLine
from shoal.tls.certs import CA_NAME, MANAGER_NAME
from shoal.tls.contexts import ca_only_context, insecure_context

M = TypeVar("M", bound=Message)
log = logging.getLogger(__name__)


class Redirected(Exception):
    """A manager that does not lead sent us to ``leader``."""

    def __init__(self, leader: str) -> None:
        super().__init__(f"not the leader; the leader is {leader or 'unknown'}")
        self.leader = leader


class SessionRejected(Exception):
    """The manager refused this node's session (removed, or from another swarm)."""


async def _refusal(resp: aiohttp.ClientResponse, what: str) -> APIError:
    try:
        message = (await resp.json(content_type=None)).get("message")
    except (ValueError, AttributeError, aiohttp.ClientError):
        message = None
    return APIError(message or f"{what} refused ({resp.status})", resp.status)


class SessionSocket:
    """The agent's end of its session: typed messages both ways."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def send(self, msg: Message) -> None:
        await self._ws.send_str(encode(msg).decode())

    async def receive(self, timeout: float | None = None) -> Message | None:
        """The next message (None once the session is over); one this node cannot read is skipped."""
        while True:
            raw = await self._ws.receive(timeout=timeout)
            if raw.type != aiohttp.WSMsgType.TEXT:
                return None
            try:
                return decode(raw.data)
            except ProtocolError as e:
                log.warning("session: %s", e)


class ClusterClient:
    """Calls to other nodes' cluster ports, with this node's certificate (``ssl_context`` is asked each
    time: the certificate changes with the node's role)."""

    def __init__(self, ssl_context: Callable[[], ssl.SSLContext]) -> None:
        self._ssl = ssl_context

    async def fetch_ca(self, remote: str) -> bytes:
        """The root CA a manager presents (to check against a join token's digest)."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, http.get(
                    f"https://{remote}/ca", ssl=insecure_context()) as resp:
                return decode(await resp.read(), CAAnswer).ca.encode()
        except (aiohttp.ClientError, TimeoutError, ProtocolError) as e:
            raise Unavailable(f"could not reach the swarm manager at {remote}: {e or type(e).__name__}") from None

    async def join(self, remote: str, ca_pem: bytes, req: JoinRequest) -> JoinAnswer:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http, http.post(
                    f"https://{remote}/join", data=encode(req), ssl=ca_only_context(ca_pem), server_hostname=CA_NAME,
                    headers={"Content-Type": "application/json"}) as resp:
                if resp.status != 200:
                    raise await _refusal(resp, "join")
                return decode(await resp.read(), JoinAnswer)
        except aiohttp.ClientError as e:
            raise Unavailable(f"could not join the swarm at {remote}: {e}") from None

    async def request(self, leader: str, msg: Message, answer: type[M]) -> M:
        """Post a request to the leader (following a redirect from a manager that does not lead)."""
        path = REQUEST_PATHS[type(msg)]
        for _ in range(3):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http, http.post(
                    f"https://{leader}{path}", data=encode(msg), ssl=self._ssl(), server_hostname=MANAGER_NAME,
                    headers={"Content-Type": "application/json"}) as resp:
                if resp.status == 421 and resp.headers.get(LEADER_HEADER):
                    leader = resp.headers[LEADER_HEADER]
                    continue
                if resp.status != 200:
                    raise await _refusal(resp, path)
                return decode(await resp.read(), answer)
        raise Unavailable("could not find the leader")

    async def forward(self, leader: str, method: str, path_qs: str, body: bytes,
                      headers: dict[str, str]) -> ForwardedAnswer:
        """An Engine-API write passed to the leader as it came (see :class:`~shoal.cluster.messages.Forwarded`)."""
        timeout = aiohttp.ClientTimeout(total=60, sock_connect=0.5)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.request(
                method, f"https://{leader}/api{path_qs}", data=body, headers=headers, ssl=self._ssl(),
                server_hostname=MANAGER_NAME) as resp:
            return ForwardedAnswer(status=resp.status, body=await resp.read(),
                                   content_type=resp.headers.get("Content-Type", "application/json"),
                                   revision=int(resp.headers.get(REVISION_HEADER, "0")))

    async def logs(self, addr: str, req: LogsRequest) -> AsyncIterator[LogLine]:
        """The lines node ``req.node``'s shoald reads from its engine."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(
                f"https://{addr}/logs", params=req.params(), ssl=self._ssl(), server_hostname=req.node) as resp:
            if resp.status != 200:
                raise APIError(f"node {addr} refused the log request ({resp.status}): {await resp.text()}",
                               resp.status)
            async for raw in resp.content:
                if raw.strip():
                    yield LogLine.from_json(raw)

    @contextlib.asynccontextmanager
    async def session(self, addr: str) -> AsyncIterator[SessionSocket]:
        """An agent session with the manager at ``addr``: :class:`Redirected` when it does not lead,
        :class:`SessionRejected` when it refuses this node."""
        timeout = aiohttp.ClientTimeout(total=None, connect=3, sock_connect=3)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            try:
                ws = await http.ws_connect(f"https://{addr}/session", ssl=self._ssl(), heartbeat=None,
                                           server_hostname=MANAGER_NAME, max_msg_size=64 * 1024 * 1024)
            except aiohttp.WSServerHandshakeError as e:
                leader = (e.headers or {}).get(LEADER_HEADER) if e.status == 421 else None
                if leader:
                    raise Redirected(leader) from None
                if e.status == 403:
                    raise SessionRejected("this node has been removed from the swarm (or its certificate is "
                                          "not from this swarm)") from None
                raise
            async with ws:
                yield SessionSocket(ws)
