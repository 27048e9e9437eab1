"""A :class:`~shoal.store.base.Store` backed by an etcd v3 cluster.

Built on aetcd's gRPC stubs and messages (:mod:`aetcd.rpc`) over our own ``grpc.aio`` channel rather
than on ``aetcd.Client``: the client has no TLS, its ``transaction()`` drops the response revision
and its watch yields single events instead of per-revision batches.

Several endpoints may be given; on a connection failure the store moves to the next one. Reads and
watches are retried there; writes only when the error says the request never reached a server
(a write that failed ambiguously surfaces as :class:`~shoal.store.base.StoreError`).

Writes carry a short deadline (``write_timeout``, 3 s): a member that lost quorum would otherwise hold
a proposal for ~7 s before failing it. Cluster membership (:meth:`EtcdStore.member_add`, ...) and
maintenance (:meth:`EtcdStore.status`, :meth:`EtcdStore.snapshot`, ...) calls are here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

from shoal.store.base import (
    KV,
    CompactedError,
    Compare,
    Delete,
    Event,
    Op,
    Put,
    StoreError,
    TxnResult,
)

__all__ = ["EtcdStore", "Member", "initial_cluster"]

T = TypeVar("T")

_MB = 1024 * 1024
_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", 512 * _MB),
    ("grpc.max_send_message_length", 64 * _MB),
    ("grpc.keepalive_time_ms", 10_000),  # etcd refuses pings more often than every 5 s
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]
# Make the member cancel our watches when it loses its leader, so we move to a healthy member.
_WATCH_METADATA = (("hasleader", "true"),)
_CODE = grpc.StatusCode


class _Disconnected(Exception):
    """The watch stream ended without an error status."""


@dataclass(slots=True)
class Member:
    """One etcd cluster member. A member added but not started yet has no name and no client URLs."""

    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    is_learner: bool = False


def _member(m: rpc.Member) -> Member:
    return Member(m.ID, m.name, list(m.peerURLs), list(m.clientURLs), m.isLearner)


def initial_cluster(members: Sequence[Member], joiner: Member, joiner_name: str) -> str:
    """etcd's ``--initial-cluster`` for ``joiner`` (just added by :meth:`EtcdStore.member_add`, to be
    started as ``joiner_name`` with ``--initial-cluster-state=existing``)."""
    parts = []
    for m in members:
        name = joiner_name if m.id == joiner.id else m.name
        if not name:
            raise ValueError(f"member {m.id:x} ({', '.join(m.peer_urls)}) was added but has not started yet")
        parts += [f"{name}={url}" for url in m.peer_urls]
    return ",".join(parts)


class _Conn:
    """One gRPC channel to one endpoint, with the stubs we use."""

    __slots__ = ("endpoint", "channel", "kv", "lease", "watch", "cluster", "maintenance")

    def __init__(self, endpoint: str, channel: grpc.aio.Channel) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.cluster = rpc.ClusterStub(channel)
        self.maintenance = rpc.MaintenanceStub(channel)


def _parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """``"host:port"`` or ``"http(s)://host:port"`` -> (``"host:port"``, is https)."""
    if "://" not in endpoint:
        return endpoint, False
    url = urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"bad etcd endpoint {endpoint!r}")
    return url.netloc, url.scheme == "https"


def _span(prefix: str) -> tuple[bytes, bytes]:
    """``[key, range_end)`` covering every key that starts with ``prefix``."""
    if not prefix:
        return b"\0", b"\0"  # etcd: all keys
    start = prefix.encode()
    end = bytearray(start.rstrip(b"\xff"))
    if not end:
        return start, b"\0"
    end[-1] += 1
    return start, bytes(end)


def _kv(kv: rpc.KeyValue) -> KV:
    return KV(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _event(ev: rpc.Event) -> Event:
    prev = _kv(ev.prev_kv) if ev.HasField("prev_kv") else None
    if ev.type == rpc.Event.DELETE:
        return Event("delete", KV(ev.kv.key.decode(), b"", 0, ev.kv.mod_revision, 0, 0), prev)
    return Event("put", _kv(ev.kv), prev)


def _channel_closed_under_us() -> bool:
    """grpc.aio raises CancelledError in calls whose channel was closed; tell that from a real cancel."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


def _store_error(e: grpc.aio.AioRpcError) -> StoreError:
    if "database space exceeded" in (e.details() or ""):
        return StoreError("the cluster store is full (its space quota is reached): writes are refused until "
                          "the managers have compacted it, reads go on")
    return StoreError(f"etcd {e.code().name}: {e.details()}")


def _retryable(e: grpc.aio.AioRpcError, idempotent: bool) -> bool:
    """Whether to try again on the next endpoint."""
    code = e.code()
    if code == _CODE.UNAVAILABLE:
        # "etcdserver: ..." errors (leader changed, request timed out) may have been applied.
        return idempotent or not (e.details() or "").startswith("etcdserver:")
    return idempotent and code == _CODE.DEADLINE_EXCEEDED


class EtcdStore:
    """Store on etcd v3.

    ``endpoints``: one or more ``"host:port"`` (or ``http(s)://host:port``). TLS is used when any of
    ``ca_cert``/``cert``/``key`` (PEM file paths) is given or an endpoint is ``https://``;
    ``tls_server_name`` overrides the name checked in the server certificate. ``timeout`` bounds
    each read, ``write_timeout`` each write (writes, lease and membership changes need a quorum: without
    one they fail with :class:`StoreError` after this long); a broken watch keeps reconnecting for
    ``watch_retry`` seconds before it fails. Ranges are read in pages of ``page_size`` keys, all at one
    revision.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = "127.0.0.1:2379",
        *,
        ca_cert: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        tls_server_name: str | None = None,
        timeout: float = 5.0,
        write_timeout: float = 3.0,
        watch_retry: float = 10.0,
        page_size: int = 5000,
    ) -> None:
        raw = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not raw:
            raise ValueError("no etcd endpoints given")
        parsed = [_parse_endpoint(e) for e in raw]
        self._endpoints = [host for host, _ in parsed]
        self._tls_files: tuple[str | Path | None, ...] | None = None
        if ca_cert or cert or key or any(https for _, https in parsed):
            if bool(cert) != bool(key):
                raise ValueError("a client certificate needs its key, and the other way round")
            self._tls_files = (ca_cert, key, cert)
            self._credentials()  # unreadable files fail here
        self._options: list[tuple[str, int | str]] = list(_CHANNEL_OPTIONS)
        if tls_server_name:
            self._options.append(("grpc.ssl_target_name_override", tls_server_name))
        self._timeout = timeout
        self._write_timeout = write_timeout
        self._watch_retry = watch_retry
        self._page_size = page_size
        self._index = 0
        self._conn: _Conn | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    # ---- connection handling -----------------------------------------------------------------

    def _credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials read from the files now (each new channel reads them again: a renewed client
        certificate is used from the next connection on)."""
        if self._tls_files is None:
            return None
        try:
            ca_cert, key, cert = (Path(f).read_bytes() if f else None for f in self._tls_files)
        except OSError as e:
            raise StoreError(f"cannot read TLS files: {e}") from e
        return grpc.ssl_channel_credentials(root_certificates=ca_cert, private_key=key, certificate_chain=cert)

    def _open(self, endpoint: str) -> _Conn:
        credentials = self._credentials()
        if credentials is not None:
            channel = grpc.aio.secure_channel(endpoint, credentials, options=self._options)
        else:
            channel = grpc.aio.insecure_channel(endpoint, options=self._options)
        return _Conn(endpoint, channel)

    def _connect(self) -> _Conn:
        if self._closed:
            raise StoreError("store is closed")
        conn = self._conn
        if conn is None:
            conn = self._conn = self._open(self._endpoints[self._index])
        return conn

    def _rotate(self, conn: _Conn) -> None:
        """Drop ``conn`` (if still current) and move on to the next endpoint with a fresh channel."""
        if conn is not self._conn:
            return
        self._conn = None
        self._index = (self._index + 1) % len(self._endpoints)
        task = asyncio.get_running_loop().create_task(conn.channel.close(grace=1.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _call(self, fn: Callable[[_Conn], Awaitable[T]], *, idempotent: bool) -> T:
        """Run ``fn`` against the current endpoint, failing over on connection errors."""
        attempts = max(2, len(self._endpoints))
        last: grpc.aio.AioRpcError | None = None
        for _ in range(attempts):
            conn = self._connect()
            try:
                return await fn(conn)
            except grpc.aio.AioRpcError as e:
                if not _retryable(e, idempotent):
                    if e.code() == _CODE.DEADLINE_EXCEEDED:
                        msg = f"etcd DEADLINE_EXCEEDED: {conn.endpoint} did not answer in time (no quorum?)"
                        raise StoreError(msg) from e
                    raise _store_error(e) from e
                last = e
                # A slow answer from our only endpoint: retry on the same channel rather than close it
                # under everyone else's requests.
                if len(self._endpoints) > 1 or e.code() != _CODE.DEADLINE_EXCEEDED:
                    self._rotate(conn)
            except asyncio.CancelledError:
                if not _channel_closed_under_us():
                    raise
                if self._closed or not idempotent:
                    raise StoreError(f"connection to {conn.endpoint} closed during the request") from None
        assert last is not None
        tried = ", ".join(self._endpoints)
        raise StoreError(f"no etcd endpoint answered ({tried}): {last.details()}") from last

    async def _call_at(self, endpoint: str | None, fn: Callable[[_Conn], Awaitable[T]]) -> T:
        """Run ``fn`` against ``endpoint`` (a member that need not be one of ours; same TLS settings) on
        a channel of its own, or with failover when ``endpoint`` is None."""
        if endpoint is None:
            return await self._call(fn, idempotent=True)
        if self._closed:
            raise StoreError("store is closed")
        conn = self._open(_parse_endpoint(endpoint)[0])
        try:
            return await fn(conn)
        except grpc.aio.AioRpcError as e:
            raise StoreError(f"etcd {endpoint}: {e.code().name}: {e.details()}") from e
        finally:
            await conn.channel.close()

    # ---- reads -------------------------------------------------------------------------------

    async def get(self, key: str, *, serializable: bool = False) -> KV | None:
        """``key``'s current value. ``serializable`` reads the member's local copy: no quorum needed (it
        answers on a member cut off from the others), but it may be stale."""

        async def go(conn: _Conn) -> KV | None:
            req = rpc.RangeRequest(key=key.encode(), serializable=serializable)
            resp = await conn.kv.Range(req, timeout=self._timeout)
            return _kv(resp.kvs[0]) if resp.kvs else None

        return await self._call(go, idempotent=True)

    async def range(self, prefix: str, *, serializable: bool = False) -> tuple[list[KV], int]:
        """All keys under ``prefix`` (sorted by key) and the revision they were read at.
        ``serializable``: read the member's local, possibly stale, copy (see :meth:`get`)."""
        start, end = _span(prefix)

        async def go(conn: _Conn) -> tuple[list[KV], int]:
            out: list[KV] = []
            rev = 0
            key = start
            while True:
                req = rpc.RangeRequest(
                    key=key, range_end=end, limit=self._page_size, revision=rev, serializable=serializable
                )
                try:
                    resp = await conn.kv.Range(req, timeout=self._timeout)
                except grpc.aio.AioRpcError as e:
                    if rev and e.code() == _CODE.OUT_OF_RANGE:  # pinned revision compacted: restart
                        out, rev, key = [], 0, start
                        continue
                    raise
                if not rev:
                    rev = resp.header.revision
                out.extend(_kv(kv) for kv in resp.kvs)
                if not resp.more or not resp.kvs:
                    return out, rev
                key = resp.kvs[-1].key + b"\0"

        return await self._call(go, idempotent=True)

    async def revision(self) -> int:
        async def go(conn: _Conn) -> int:
            req = rpc.RangeRequest(key=b"\0", count_only=True)
            return (await conn.kv.Range(req, timeout=self._timeout)).header.revision

        return await self._call(go, idempotent=True)

    # ---- writes ------------------------------------------------------------------------------

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """Apply ``ops`` atomically if every compare holds; on failure report which compares failed."""
        req = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=c.key.encode(),
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.MOD,
                    mod_revision=c.mod_revision,
                )
                for c in compares
            ],
            success=[_request_op(op) for op in ops],
            # On failure read the compared keys back to tell which compare failed.
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=c.key.encode())) for c in compares],
        )

        async def go(conn: _Conn) -> TxnResult:
            resp = await conn.kv.Txn(req, timeout=self._write_timeout)
            if resp.succeeded:
                return TxnResult(True, resp.header.revision)
            failed = []
            for c, r in zip(compares, resp.responses, strict=True):
                kvs = r.response_range.kvs
                if (kvs[0].mod_revision if kvs else 0) != c.mod_revision:
                    failed.append(c.key)
            return TxnResult(False, resp.header.revision, failed)

        return await self._call(go, idempotent=False)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Unconditional put; returns the new revision."""
        req = rpc.PutRequest(key=key.encode(), value=value, lease=lease)

        async def go(conn: _Conn) -> int:
            return (await conn.kv.Put(req, timeout=self._write_timeout)).header.revision

        return await self._call(go, idempotent=False)

    async def delete(self, key: str) -> bool:
        """Delete ``key``; False if it did not exist."""
        req = rpc.DeleteRangeRequest(key=key.encode())

        async def go(conn: _Conn) -> bool:
            return (await conn.kv.DeleteRange(req, timeout=self._write_timeout)).deleted > 0

        return await self._call(go, idempotent=False)

    async def compact(self, revision: int) -> None:
        """Compact history before ``revision``; an already compacted revision is a no-op."""

        async def go(conn: _Conn) -> None:
            try:
                await conn.kv.Compact(rpc.CompactionRequest(revision=revision), timeout=self._write_timeout)
            except grpc.aio.AioRpcError as e:
                if e.code() == _CODE.OUT_OF_RANGE and "has been compacted" in (e.details() or ""):
                    return
                raise

        await self._call(go, idempotent=True)

    # ---- watches -----------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        """Batches of events under ``prefix`` from ``start_revision`` (<= 0: from the next revision).

        A broken stream is resumed, possibly on another endpoint, from the revision after the last
        batch delivered. Raises :class:`CompactedError` if the start revision is compacted.
        """
        key, end = _span(prefix)
        next_rev = max(start_revision, 0)
        loop = asyncio.get_running_loop()
        give_up: float | None = None
        while True:
            conn = self._connect()
            call = conn.watch.Watch(metadata=_WATCH_METADATA)
            try:
                create = rpc.WatchCreateRequest(key=key, range_end=end, start_revision=next_rev, prev_kv=True)
                await call.write(rpc.WatchRequest(create_request=create))
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        raise _Disconnected
                    if resp.compact_revision:
                        raise CompactedError(
                            f"revision {next_rev} is compacted (oldest available {resp.compact_revision})"
                        )
                    if resp.canceled:
                        raise StoreError(f"etcd canceled the watch: {resp.cancel_reason}")
                    give_up = None
                    if resp.created and not next_rev:
                        next_rev = resp.header.revision + 1
                    batch: list[Event] = []
                    for ev in resp.events:
                        rev = ev.kv.mod_revision
                        if batch and rev != batch[0].kv.mod_revision:
                            next_rev = batch[0].kv.mod_revision + 1
                            yield batch
                            batch = []
                        batch.append(_event(ev))
                    if batch:
                        next_rev = batch[0].kv.mod_revision + 1
                        yield batch
            except (grpc.aio.AioRpcError, _Disconnected, asyncio.CancelledError) as e:
                if isinstance(e, asyncio.CancelledError) and not _channel_closed_under_us():
                    raise
                if self._closed:
                    return
                if isinstance(e, grpc.aio.AioRpcError) and e.code() not in (
                    _CODE.UNAVAILABLE,
                    _CODE.CANCELLED,
                    _CODE.DEADLINE_EXCEEDED,
                    _CODE.INTERNAL,
                ):
                    raise _store_error(e) from e
                self._rotate(conn)
                now = loop.time()
                if give_up is None:
                    give_up = now + self._watch_retry
                elif now > give_up:
                    raise StoreError(f"watch on {prefix!r} lost its connection to etcd: {e}") from e
                await asyncio.sleep(0.2)
            finally:
                call.cancel()

    # ---- leases ------------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> int:
        """A lease of ``ttl`` seconds (etcd raises very short TTLs to its minimum, ~2 s)."""

        async def go(conn: _Conn) -> int:
            resp = await conn.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=self._write_timeout)
            if resp.error:
                raise StoreError(f"lease grant failed: {resp.error}")
            return resp.ID

        return await self._call(go, idempotent=False)

    async def lease_keepalive(self, lease: int) -> None:
        """Refresh the lease once. Raises :class:`StoreError` if it has expired."""

        async def go(conn: _Conn) -> None:
            call = conn.lease.LeaseKeepAlive(timeout=self._write_timeout)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                resp = await call.read()
            finally:
                call.cancel()
            if resp is grpc.aio.EOF:
                raise StoreError("lease keepalive stream closed")
            if resp.TTL <= 0:
                raise StoreError(f"lease {lease:x} expired or revoked")

        await self._call(go, idempotent=True)

    async def lease_revoke(self, lease: int) -> None:
        """Revoke the lease (its keys are deleted); an unknown lease is ignored."""

        async def go(conn: _Conn) -> None:
            try:
                await conn.lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease), timeout=self._write_timeout)
            except grpc.aio.AioRpcError as e:
                if e.code() != _CODE.NOT_FOUND:
                    raise

        await self._call(go, idempotent=True)

    # ---- cluster membership ------------------------------------------------------------------

    async def member_list(self) -> list[Member]:
        """The cluster's members, as the member we talk to knows them."""

        async def go(conn: _Conn) -> list[Member]:
            resp = await conn.cluster.MemberList(rpc.MemberListRequest(), timeout=self._timeout)
            return [_member(m) for m in resp.members]

        return await self._call(go, idempotent=True)

    async def member_add(self, peer_urls: Sequence[str], *, learner: bool = False) -> tuple[Member, list[Member]]:
        """Add a member; returns it and the new member list (for :func:`initial_cluster`). Start the new
        member promptly: a voting member that is added but not running counts against the quorum.
        etcd refuses ("etcdserver: unhealthy cluster") unless every voting member has been connected
        for 5 s, and ("... not enough started members") if the addition would risk the quorum."""
        req = rpc.MemberAddRequest(peerURLs=list(peer_urls), isLearner=learner)

        async def go(conn: _Conn) -> tuple[Member, list[Member]]:
            resp = await conn.cluster.MemberAdd(req, timeout=self._write_timeout)
            return _member(resp.member), [_member(m) for m in resp.members]

        return await self._call(go, idempotent=False)

    async def member_remove(self, member_id: int) -> list[Member]:
        """Remove a member (it shuts itself down); returns the remaining members."""

        async def go(conn: _Conn) -> list[Member]:
            req = rpc.MemberRemoveRequest(ID=member_id)
            resp = await conn.cluster.MemberRemove(req, timeout=self._write_timeout)
            return [_member(m) for m in resp.members]

        return await self._call(go, idempotent=False)

    async def member_promote(self, member_id: int) -> list[Member]:
        """Make a learner a voting member (etcd refuses until it has caught up with the leader)."""

        async def go(conn: _Conn) -> list[Member]:
            req = rpc.MemberPromoteRequest(ID=member_id)
            resp = await conn.cluster.MemberPromote(req, timeout=self._write_timeout)
            return [_member(m) for m in resp.members]

        return await self._call(go, idempotent=False)

    # ---- maintenance -------------------------------------------------------------------------
    # ``endpoint`` picks the member to ask ("host:port" or a URL); by default the current endpoint.

    async def status(self, endpoint: str | None = None) -> dict[str, Any]:
        """One member's view (answered locally, also without quorum): ``member_id``, ``leader`` (0:
        none), ``raft_term``, ``raft_index``, ``raft_applied_index``, ``revision``, ``db_size``,
        ``db_size_in_use``, ``is_learner``, ``version``, ``errors``, ``endpoint``."""

        async def go(conn: _Conn) -> dict[str, Any]:
            r = await conn.maintenance.Status(rpc.StatusRequest(), timeout=self._timeout)
            return {
                "endpoint": conn.endpoint,
                "member_id": r.header.member_id,
                "cluster_id": r.header.cluster_id,
                "leader": r.leader,
                "raft_term": r.raftTerm,
                "raft_index": r.raftIndex,
                "raft_applied_index": r.raftAppliedIndex,
                "revision": r.header.revision,
                "db_size": r.dbSize,
                "db_size_in_use": r.dbSizeInUse,
                "is_learner": r.isLearner,
                "version": r.version,
                "errors": list(r.errors),
            }

        return await self._call_at(endpoint, go)

    async def defragment(self, endpoint: str | None = None, timeout: float = 120.0) -> None:
        """Defragment one member's backend (it stalls that member meanwhile: do one at a time)."""

        async def go(conn: _Conn) -> None:
            await conn.maintenance.Defragment(rpc.DefragmentRequest(), timeout=timeout)

        await self._call_at(endpoint, go)

    async def snapshot(self, path: str | Path, endpoint: str | None = None, timeout: float = 600.0) -> int:
        """Stream a member's backend snapshot into ``path`` (written to a temporary file, fsynced, then
        renamed); returns its size. The stream ends with etcd's SHA-256, which restore checks."""
        path = Path(path)
        tmp = path.with_name(path.name + ".part")

        async def go(conn: _Conn) -> int:
            size = 0
            f = await asyncio.to_thread(open, tmp, "wb")
            try:
                async for resp in conn.maintenance.Snapshot(rpc.SnapshotRequest(), timeout=timeout):
                    f.write(resp.blob)
                    size += len(resp.blob)
                f.flush()
                await asyncio.to_thread(os.fsync, f.fileno())
            except BaseException:
                f.close()
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            f.close()
            if not size:
                tmp.unlink()
                raise StoreError(f"etcd {conn.endpoint} sent an empty snapshot")
            tmp.replace(path)
            return size

        return await self._call_at(endpoint, go)

    async def alarms(self) -> list[tuple[int, str]]:
        """Active alarms as (member id, ``"NOSPACE"``/``"CORRUPT"``); needs a quorum."""

        async def go(conn: _Conn) -> list[tuple[int, str]]:
            req = rpc.AlarmRequest(action=rpc.AlarmRequest.GET, memberID=0, alarm=rpc.NONE)
            resp = await conn.maintenance.Alarm(req, timeout=self._write_timeout)
            return [(a.memberID, rpc.AlarmType.Name(a.alarm)) for a in resp.alarms]

        return await self._call(go, idempotent=True)

    async def disarm(self) -> list[tuple[int, str]]:
        """Deactivate every active alarm (after freeing space: compact + defragment); returns them."""
        active = await self.alarms()

        async def go(conn: _Conn) -> None:
            for member_id, name in active:
                req = rpc.AlarmRequest(
                    action=rpc.AlarmRequest.DEACTIVATE, memberID=member_id, alarm=rpc.AlarmType.Value(name)
                )
                await conn.maintenance.Alarm(req, timeout=self._write_timeout)

        if active:
            await self._call(go, idempotent=True)
        return active

    async def close(self) -> None:
        """Close the channel; running watches end."""
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _request_op(op: Op) -> rpc.RequestOp:
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease))
    if isinstance(op, Delete):
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key.encode()))
    raise TypeError(f"not a store op: {op!r}")
