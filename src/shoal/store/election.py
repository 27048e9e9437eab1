"""Leader election on a :class:`~shoal.store.base.Store` (etcd or memory).

A candidate holds a lease and campaigns by creating the leader key with it ("create if absent"); if
the key is taken it watches it until it is deleted and tries again. The lease is kept alive every
``ttl / 3`` seconds, and while leading the key is read back each time (on etcd a linearizable read,
which fails on a member without quorum). The leader stops being leader — :attr:`Election.lost` is
set — as soon as a keepalive or that read fails, the lease's TTL (less a 10 % margin) runs out
locally without both confirmed (the clock starts when the keepalive was *sent*, so the local
deadline comes before the store's), or the key is deleted or replaced.

When a leader process dies, its lease expires within ``ttl`` seconds (etcd checks expiry every 0.5 s)
and a waiting candidate takes over. If the etcd raft leader changes meanwhile, etcd extends every
lease (by ttl plus its election timeout), so losing the etcd leader too can add ~2 s.

The leader key's ``create_revision`` (:attr:`Election.fencing_token`) grows with every new term:
attach it to writes made as leader (e.g. compare against a record of it) so a deposed leader that
has not noticed yet cannot overwrite its successor's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from shoal.store.base import KV, Compare, Put, Store, StoreError

__all__ = ["Election"]

log = logging.getLogger(__name__)


LEADER_KEY = "/shoal/leader"  # the elected leader's key (its value says who and where)


class Election:
    """One candidate for ``key``. ``value`` (e.g. this manager's address) is what :meth:`leader` shows.

    Use: ``token = await election.campaign()``; act as leader until ``election.lost`` is set (or
    :attr:`is_leader` turns False); :meth:`resign` to step down. :meth:`campaign` raises
    :class:`StoreError` when the store fails or the lease is lost before winning; call it again.
    """

    def __init__(self, store: Store, key: str = LEADER_KEY, ttl: int = 2, value: bytes = b"") -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.store = store
        self.key = key
        self.ttl = ttl
        self.value = value
        self.lost = asyncio.Event()  # set when leadership ends (also on resign)
        self.lost_reason: str | None = None
        self._lease = 0
        self._token: int | None = None
        self._lease_dead = asyncio.Event()
        self._keepalive_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None

    # ---- state -------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._token is not None and not self.lost.is_set()

    @property
    def fencing_token(self) -> int | None:
        """The leader key's create_revision while this candidate leads, else None."""
        return self._token if self.is_leader else None

    @property
    def lease(self) -> int:
        """The current lease ID (0 when not campaigning or leading)."""
        return self._lease

    async def leader(self) -> bytes | None:
        """The current leader's value, or None when there is no leader."""
        kv = await self.store.get(self.key)
        return kv.value if kv is not None else None

    async def leader_kv(self) -> KV | None:
        """The leader key itself (its create_revision is the current term's fencing token)."""
        return await self.store.get(self.key)

    # ---- campaigning -------------------------------------------------------------------------

    async def campaign(self) -> int:
        """Return once this candidate holds the leader key; returns the fencing token."""
        if self.is_leader:
            assert self._token is not None
            return self._token
        await self._stop()
        self.lost.clear()
        self.lost_reason = None
        self._token = None
        self._lease_dead = asyncio.Event()
        loop = asyncio.get_running_loop()
        granted_at = loop.time()
        self._lease = lease = await self.store.lease_grant(self.ttl)
        self._keepalive_task = loop.create_task(self._keepalive(lease, granted_at), name=f"election-ka-{self.key}")
        try:
            while True:
                self._check_lease()
                res = await self.store.txn([Compare(self.key, 0)], [Put(self.key, self.value, lease)])
                if res.succeeded:
                    return self._won(res.revision)
                kv = await self.store.get(self.key)
                if kv is None:
                    continue
                if kv.lease == lease:  # ours already (a retried campaign)
                    return self._won(kv.create_revision)
                await self._wait_for_vacancy(kv.mod_revision + 1)
        except BaseException:
            await self._stop()
            await self._revoke(lease)
            raise

    async def resign(self) -> None:
        """Step down (or stop campaigning): revoke the lease, which deletes the key if we hold it."""
        lease = self._lease
        if self._token is not None:
            self._set_lost("resigned")
        await self._stop()
        if lease:
            await self._revoke(lease)

    # ---- internals ---------------------------------------------------------------------------

    def _won(self, revision: int) -> int:
        self._token = revision
        log.info("won election for %s (fencing token %d)", self.key, revision)
        loop = asyncio.get_running_loop()
        self._watch_task = loop.create_task(self._watch_key(revision), name=f"election-watch-{self.key}")
        return revision

    def _check_lease(self) -> None:
        if self._lease_dead.is_set():
            raise StoreError(f"election {self.key}: lease lost while campaigning ({self.lost_reason})")

    def _set_lost(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        if self._token is not None:
            log.warning("lost leadership of %s: %s", self.key, reason)
            self.lost.set()

    async def _wait_for_vacancy(self, from_revision: int) -> None:
        """Wait until the leader key is deleted (from ``from_revision`` on) or our lease dies."""
        watcher = asyncio.ensure_future(self._deleted(from_revision))
        dead = asyncio.ensure_future(self._lease_dead.wait())
        try:
            await asyncio.wait((watcher, dead), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (watcher, dead):
                fut.cancel()
            await asyncio.gather(watcher, dead, return_exceptions=True)
        if watcher.done() and not watcher.cancelled() and watcher.exception() is not None:
            raise watcher.exception()  # type: ignore[misc]
        self._check_lease()

    async def _deleted(self, from_revision: int) -> None:
        watch = self.store.watch(self.key, from_revision)
        try:
            async for batch in watch:
                if any(ev.type == "delete" and ev.kv.key == self.key for ev in batch):
                    return
        finally:
            await watch.aclose()  # type: ignore[attr-defined]
        raise StoreError(f"election {self.key}: watch ended (store closed?)")

    async def _keepalive(self, lease: int, granted_at: float) -> None:
        """Refresh the lease every ttl/3; on a failure or a local expiry mark the lease dead."""
        loop = asyncio.get_running_loop()
        margin = self.ttl / 10  # step down a little before the store could expire the lease
        expires = granted_at + self.ttl - margin
        reason = "keepalive stopped"
        try:
            while True:
                await asyncio.sleep(max(0.0, min(self.ttl / 3, expires - loop.time())))
                sent = loop.time()
                if sent >= expires:
                    reason = "lease expired before a keepalive was confirmed"
                    break
                try:
                    async with asyncio.timeout_at(expires):
                        await self.store.lease_keepalive(lease)
                        if self._token is not None and not await self._still_holding(lease):
                            reason = "leader key deleted or taken over"
                            break
                except TimeoutError:
                    reason = "no keepalive answer before the lease ran out"
                    break
                except StoreError as e:
                    reason = f"keepalive failed: {e}"
                    break
                expires = sent + self.ttl - margin
        finally:
            self.lost_reason = self.lost_reason or reason
            self._lease_dead.set()
        self._set_lost(reason)
        if self._watch_task is not None:
            self._watch_task.cancel()
        # The lease may still be alive in the store: free the key early if we can reach it.
        with contextlib.suppress(StoreError, TimeoutError):
            await asyncio.wait_for(self.store.lease_revoke(lease), self.ttl)

    async def _still_holding(self, lease: int) -> bool:
        """Read the key back (linearizably on etcd). etcd 3.4 renews leases on a raft leader that has
        lost its quorum without noticing, until it steps down; a quorum read does notice."""
        kv = await self.store.get(self.key)
        return kv is not None and kv.lease == lease and kv.create_revision == self._token

    async def _watch_key(self, token: int) -> None:
        """While leading: notice the key being deleted or taken over (then drop the lease too)."""
        reason = None
        try:
            watch = self.store.watch(self.key, token + 1)
            try:
                async for batch in watch:
                    for ev in batch:
                        if ev.kv.key == self.key and (ev.type == "delete" or ev.kv.create_revision != token):
                            reason = "leader key deleted" if ev.type == "delete" else "leader key replaced"
                            break
                    if reason:
                        break
            finally:
                await watch.aclose()  # type: ignore[attr-defined]
        except StoreError as e:  # the keepalive decides about connectivity
            log.debug("election watch on %s ended: %s", self.key, e)
        if reason is None:
            return
        self._set_lost(reason)
        keepalive, self._keepalive_task = self._keepalive_task, None
        if keepalive is not None:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)
        if self._lease:
            await self._revoke(self._lease)

    async def _stop(self) -> None:
        """Stop the keepalive and key watch (without touching the lease)."""
        tasks = [t for t in (self._keepalive_task, self._watch_task) if t is not None]
        self._keepalive_task = self._watch_task = None
        me = asyncio.current_task()
        for t in tasks:
            if t is not me:
                t.cancel()
        await asyncio.gather(*(t for t in tasks if t is not me), return_exceptions=True)

    async def _revoke(self, lease: int) -> None:
        if self._lease == lease:
            self._lease = 0
        with contextlib.suppress(StoreError, TimeoutError):
            await asyncio.wait_for(self.store.lease_revoke(lease), self.ttl)
