"""Every message of the node↔manager protocol on the cluster port (2377, mutual TLS), typed.

Two kinds travel:

- **Session messages**, both ways over an agent's WebSocket (``GET /session``): JSON objects whose
  ``"type"`` names the message.
- **Requests and answers** of the plain HTTPS calls (``/ca``, ``/join``, ``/role``, ``/renew``,
  ``/attachments/*``, ``/logs``, ``/api/*``): JSON bodies of the same shape (the ``"type"`` is carried too).

:func:`encode` and :func:`decode` are the only places that turn them into JSON and back; decoding drops
unknown fields and refuses a message without its required fields or with a field of the wrong JSON type
(:class:`ProtocolError`), so the two
ends may differ by a field as versions move on. docs/protocol.md lists every message.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import orjson

from shoal.model.logs import LogQuery


class ProtocolError(ValueError):
    """A message that is not JSON, of an unknown type, or without a required field."""


_TYPES: dict[str, type[Message]] = {}
M = TypeVar("M", bound="Message")


@dataclass
class Message:
    """Base of every message; ``TYPE`` is its name on the wire."""

    TYPE: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            if cls.TYPE in _TYPES:
                raise TypeError(f"message type {cls.TYPE!r} is taken by {_TYPES[cls.TYPE].__name__}")
            _TYPES[cls.TYPE] = cls

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        for f in dataclasses.fields(self):
            out[f.name] = getattr(self, f.name)
        return out


def encode(msg: Message) -> bytes:
    return orjson.dumps(msg.to_wire())


_JSON_TYPES: dict[Any, tuple[type, ...]] = {str: (str,), int: (int,), float: (int, float), bool: (bool,),
                                             dict: (dict,), list: (list,)}


@functools.cache
def _wire_types(cls: type[Message]) -> dict[str, tuple[type, ...]]:
    """The JSON type each field must have on the wire (fields of other types are not checked)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        kinds = _JSON_TYPES.get(typing.get_origin(hint) or hint)
        if kinds is not None:
            out[name] = kinds
    return out


def from_wire(data: Any, want: type[M] | None = None) -> M:
    """The message a decoded JSON object holds (of type ``want``, when given)."""
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    cls = _TYPES.get(str(data.get("type"))) if want is None else want
    if cls is None:
        raise ProtocolError(f"unknown message type {data.get('type')!r}")
    kwargs = {}
    types = _wire_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            kinds = types.get(f.name)
            if kinds is not None and (not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))):
                raise ProtocolError(f"{cls.TYPE}: {f.name} must be a {kinds[-1].__name__}")
            kwargs[f.name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{cls.TYPE}: {f.name} is required")
    return cls(**kwargs)  # type: ignore[return-value]


def decode(raw: str | bytes, want: type[M] | None = None) -> M:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"not JSON: {e}") from None
    return from_wire(data, want)


# -- the agent's session (WebSocket, GET /session) ------------------------------------------------------

@dataclass
class Hello(Message):
    """Agent → manager, first: the node's description, advertised address and WireGuard public key."""

    TYPE: ClassVar[str] = "hello"
    description: dict = field(default_factory=dict)
    addr: str = ""
    wg_key: str = ""


@dataclass
class Welcome(Message):
    """Manager → agent, the answer to :class:`Hello`: how often to beat and where the managers are."""

    TYPE: ClassVar[str] = "welcome"
    node_id: str = ""
    heartbeat: float = 1.0
    managers: list[str] = field(default_factory=list)


@dataclass
class Heartbeat(Message):
    """Both ways: the agent beats every interval, the manager answers each beat."""

    TYPE: ClassVar[str] = "heartbeat"


@dataclass
class SessionConfig(Message):
    """Manager → agent: the heartbeat interval changed (``docker swarm update --dispatcher-heartbeat``)."""

    TYPE: ClassVar[str] = "config"
    heartbeat: float = 1.0


@dataclass
class Assignments(Message):
    """Manager → agent: the node's tasks (all of them with ``full``, else what changed) with the secrets and
    configs they need (each once per session; ``removed_deps`` lists those no task needs any more)."""

    TYPE: ClassVar[str] = "assignments"
    full: bool = False
    tasks: list[dict] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    secrets: list[dict] = field(default_factory=list)
    configs: list[dict] = field(default_factory=list)
    removed_deps: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class NetworkMap(Message):
    """Manager → agent: everything the node needs to wire its networks (see shoal.manager.netmap)."""

    TYPE: ClassVar[str] = "netmap"
    map: dict = field(default_factory=dict)


@dataclass
class StatusReport(Message):
    """Agent → manager: a task's observed status; acknowledged by ``seq``."""

    TYPE: ClassVar[str] = "status"
    id: str = ""
    status: dict = field(default_factory=dict)
    seq: int = 0


@dataclass
class Ack(Message):
    """Manager → agent: the status report ``seq`` is stored."""

    TYPE: ClassVar[str] = "ack"
    seq: int = 0


@dataclass
class Nack(Message):
    """Manager → agent: the status report ``seq`` could not be stored; send it again."""

    TYPE: ClassVar[str] = "nack"
    seq: int = 0


@dataclass
class Refused(Message):
    """Manager → agent: the status report ``seq`` is refused for good (the task is not assigned to this
    node); the agent drops it."""

    TYPE: ClassVar[str] = "status-refused"
    seq: int = 0
    message: str = ""


@dataclass
class Description(Message):
    """Agent → manager: the node's description changed (engine labels, resources, plugins...)."""

    TYPE: ClassVar[str] = "description"
    description: dict = field(default_factory=dict)


@dataclass
class DescribeAgain(Message):
    """Manager → agent: the description could not be stored; send it at the next period."""

    TYPE: ClassVar[str] = "describe-again"


@dataclass
class RoleChange(Message):
    """Manager → agent: the node's desired role differs from its certificate's; ask the leader for the new
    role (:class:`RoleRequest`)."""

    TYPE: ClassVar[str] = "role"
    role: str = ""


@dataclass
class CAUpdate(Message):
    """Manager → agent, when the session opens and whenever the cluster's CA changes: the root to trust and
    the CA whose certificates nodes should have (base64 of its DER subject and public key, as
    ``TLSInfo`` shows them). A node whose certificate has another issuer renews at once; a node whose
    trusted root differs takes the new one once its certificate chains to it."""

    TYPE: ClassVar[str] = "ca-update"
    trust_root: str = ""
    issuer_subject: str = ""
    issuer_public_key: str = ""


@dataclass
class SessionError(Message):
    """Manager → agent: the session is refused or over (e.g. the node was removed)."""

    TYPE: ClassVar[str] = "error"
    message: str = ""


# -- requests and answers -------------------------------------------------------------------------------

@dataclass
class CAAnswer(Message):
    """``GET /ca`` (no client certificate): the root CA, which a joining node checks against its token."""

    TYPE: ClassVar[str] = "ca"
    ca: str = ""


@dataclass
class JoinRequest(Message):
    """``POST /join`` (no client certificate): a join token and a CSR; the node's own addresses."""

    TYPE: ClassVar[str] = "join"
    token: str
    csr: str
    addr: str = ""
    peer_url: str = ""
    cluster_addr: str = ""
    availability: str = "active"
    description: dict = field(default_factory=dict)


@dataclass
class ManagerKeys(Message):
    """What a node becoming a manager receives (in :class:`JoinAnswer` and :class:`RoleAnswer`): the
    cluster's data key (base64), the unlock key while autolock is on (``SWMKEY-1-…``, so that its keys
    are sealed before they touch its disk), the managers' etcd CA and the etcd cluster to join."""

    TYPE: ClassVar[str] = "manager-keys"
    data_key: str = ""
    unlock_key: str = ""
    etcd_ca: str = ""
    etcd_ca_key: str = ""
    etcd_cluster: str = ""


@dataclass
class JoinAnswer(Message):
    """The new node's identity and certificate (followed by any intermediate); a manager also gets its
    :class:`ManagerKeys` (as a wire object in ``keys``)."""

    TYPE: ClassVar[str] = "joined"
    node_id: str
    role: str
    cert: str
    ca: str = ""
    managers: list[str] = field(default_factory=list)
    keys: dict = field(default_factory=dict)


@dataclass
class RoleRequest(Message):
    """``POST /role`` (to the leader): a promoted or demoted node asks for what its new role needs."""

    TYPE: ClassVar[str] = "role-request"
    csr: str
    peer_url: str = ""
    cluster_addr: str = ""


@dataclass
class RoleAnswer(Message):
    """A certificate for the node's desired role; for a new manager its :class:`ManagerKeys` (``keys``)."""

    TYPE: ClassVar[str] = "role-answer"
    role: str
    cert: str = ""
    managers: list[str] = field(default_factory=list)
    keys: dict = field(default_factory=dict)


@dataclass
class RenewRequest(Message):
    """``POST /renew`` (to the leader): a node's CSR for a new certificate of its current role, before the
    one it has expires (or at once when the cluster's CA changed)."""

    TYPE: ClassVar[str] = "renew"
    csr: str


@dataclass
class RenewAnswer(Message):
    """The new certificate (followed by any intermediate) and the root the cluster trusts now."""

    TYPE: ClassVar[str] = "renewed"
    cert: str
    role: str
    trust_root: str = ""


@dataclass
class AttachRequest(Message):
    """``POST /attachments/attach`` (to the leader): an address for a standalone container on an
    attachable swarm network."""

    TYPE: ClassVar[str] = "attach"
    network: str
    container: str = ""


@dataclass
class AttachAnswer(Message):
    """The attachment: a task with no service, its address allocated."""

    TYPE: ClassVar[str] = "attached"
    task: dict


@dataclass
class DetachRequest(Message):
    """``POST /attachments/detach`` (to the leader): give an attachment back."""

    TYPE: ClassVar[str] = "detach"
    id: str


@dataclass
class DetachAnswer(Message):
    TYPE: ClassVar[str] = "detached"
    detached: bool = False


@dataclass
class LogsRequest(Message):
    """``GET /logs`` (from a manager, to any node): the lines of this node's containers of a service or a
    task, as JSON lines (:class:`shoal.model.logs.LogLine`); sent as query parameters."""

    TYPE: ClassVar[str] = "logs"
    node: str
    query: LogQuery

    def params(self) -> dict[str, str]:
        return {**self.query.params(), "node": self.node}

    @classmethod
    def from_params(cls, q: dict[str, str]) -> LogsRequest:
        return cls(node=q.get("node", ""), query=LogQuery.from_params(q))


@dataclass
class Forwarded(Message):
    """``/api/<path>`` (manager → leader): an Engine-API write made on a follower, passed on as it came
    (method, path, body and the headers that matter); the answer is the leader's HTTP answer with the
    store revision of the write in ``X-Shoal-Revision`` (the follower waits until it has read it)."""

    TYPE: ClassVar[str] = "forwarded"
    method: str
    path_qs: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ForwardedAnswer(Message):
    TYPE: ClassVar[str] = "forwarded-answer"
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    revision: int = 0


@dataclass
class ErrorAnswer(Message):
    """Any refused request: Docker's ``{"message": ...}`` (with the HTTP status)."""

    TYPE: ClassVar[str] = "refused"
    message: str


@dataclass
class NotLeader(Message):
    """HTTP 421 (and ``X-Shoal-Leader``): this manager is not the leader; ask ``leader``."""

    TYPE: ClassVar[str] = "not-leader"
    leader: str = ""
    message: str = "not the leader"


# where each request to the leader is posted
REQUEST_PATHS: dict[type[Message], str] = {
    RoleRequest: "/role", RenewRequest: "/renew", AttachRequest: "/attachments/attach",
    DetachRequest: "/attachments/detach",
}
REVISION_HEADER = "X-Shoal-Revision"
LEADER_HEADER = "X-Shoal-Leader"
