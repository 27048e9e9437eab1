"""This node's certificate over time (swarmkit's ca/renewer.go): renewed before it expires, at once when
the cluster wants certificates from another CA (a root rotation), and the trusted root following the
cluster's.

The renewal comes at a random point between 50 % and 80 % of the certificate's life (so that a swarm's
nodes do not all renew together): a new key and a CSR to the leader (:class:`RenewRequest`), which signs a
certificate of the node's current role. The answer is checked (it must be for our key and chain to a
root we trust or the cluster's), then the key and certificate are replaced whole, the cluster port takes
them for the next handshake and the node describes itself again (its ``TLSInfo``). A failure is retried
after 1 s, doubling up to 30 s, for as long as the certificate lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
from collections.abc import Awaitable, Callable

from shoal.aio import MONOTONIC, Clock
from shoal.cluster.messages import CAUpdate, RenewAnswer, RenewRequest
from shoal.tls.certs import chains_to, issuer_info, issuer_of, key_pem, make_csr, new_key, same_key, utcnow, validity
from shoal.tls.files import NodeTLS

log = logging.getLogger(__name__)

RENEW_WINDOW = (0.5, 0.8)  # swarmkit's CertLowerRotationRange, CertUpperRotationRange
RETRY_FIRST, RETRY_MAX = 1.0, 30.0


def renewal_delay(not_before: datetime.datetime, not_after: datetime.datetime, now: datetime.datetime,
                  fraction: float) -> float:
    """Seconds from ``now`` until ``fraction`` of the certificate's life has passed (0 when past)."""
    at = not_before + (not_after - not_before) * fraction
    return max(0.0, (at - now).total_seconds())


class Renewer:
    """Keeps a node's certificate current. ``ask`` sends a renewal to the leader; ``written`` is called
    right after a new key is written (autolock seals it again), ``changed`` once the certificate or the
    trusted root changed; ``lock`` is the node's membership lock (a role change and a renewal never write
    the node's identity at the same time)."""

    def __init__(self, tls: NodeTLS, ask: Callable[[RenewRequest], Awaitable[RenewAnswer]],
                 changed: Callable[[], Awaitable[None]], lock: asyncio.Lock, *,
                 written: Callable[[], None] = lambda: None, clock: Clock = MONOTONIC,
                 wall: Callable[[], datetime.datetime] = utcnow,
                 fraction: Callable[[], float] = lambda: random.uniform(*RENEW_WINDOW)) -> None:
        self.tls = tls
        self.ask = ask
        self.changed = changed
        self.written = written
        self.lock = lock
        self.clock = clock
        self.wall = wall
        self.fraction = fraction
        self.wanted: CAUpdate | None = None  # what the cluster last said about its CA
        self.renewals = 0
        self._plan: tuple[bytes, float] | None = None  # (certificate, the fraction of its life to renew at)
        self._wake = asyncio.Event()

    def due_in(self) -> float:
        """Seconds until the next renewal: 0 when the cluster wants a certificate from another CA."""
        chain = self.tls.cert.read_bytes()
        if self.wanted is not None and self.wanted.issuer_public_key:
            issuer = issuer_of(chain, self.tls.ca.read_bytes())
            if issuer is None or issuer_info(issuer) != (self.wanted.issuer_subject, self.wanted.issuer_public_key):
                return 0.0
        nb, na = validity(chain)
        if self._plan is None or self._plan[0] != chain:  # one random point per certificate
            self._plan = (chain, self.fraction())
            log.info("this node's certificate valid until %s renews at %.1f %% of its life (%s)", na.isoformat(),
                     self._plan[1] * 100, (nb + (na - nb) * self._plan[1]).isoformat())
        return renewal_delay(nb, na, self.wall(), self._plan[1])

    def ca_update(self, msg: CAUpdate) -> None:
        """The cluster's CA as the dispatcher tells it: renew or change the trusted root, if needed."""
        self.wanted = msg
        self._wake.set()

    def certificate_changed(self) -> None:
        """The certificate was replaced by other means (a role change): plan the next renewal from it."""
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, or less if woken."""
        self._wake.clear()
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (sleeper, waker):
                f.cancel()

    async def run(self) -> None:
        retry = RETRY_FIRST
        while True:
            try:
                await self._follow_trust_root()
                delay = self.due_in()
                if delay > 0:
                    await self._sleep(delay)
                    continue
                await self.renew()
                retry = RETRY_FIRST
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("renewing this node's certificate failed (%s); again in %.0f s", e, retry)
                await self._sleep(retry)
                retry = min(retry * 2, RETRY_MAX)

    async def renew(self) -> None:
        """A new key and certificate from the leader, checked and put in place."""
        key = new_key()
        async with self.lock:
            answer = await self.ask(RenewRequest(csr=make_csr(key).decode()))
            cert = answer.cert.encode()
            if not same_key(cert, key_pem(key)):
                raise ValueError("the certificate received is not for this node's key")
            trust, at = self.tls.ca.read_bytes(), self.wall()
            if not chains_to(cert, trust, at):
                cluster_root = answer.trust_root.encode()
                if not cluster_root or not chains_to(cert, cluster_root, at):
                    raise ValueError("the certificate received does not chain to a trusted root")
                trust = cluster_root
            self.tls.write(trust, cert, key_pem(key))
            self.written()
            self.renewals += 1
        nb, na = validity(cert)
        log.info("this node's certificate was renewed (valid %s to %s)", nb.isoformat(), na.isoformat())
        await self.changed()

    async def _follow_trust_root(self) -> None:
        """Trust the cluster's root once this node's certificate chains to it (after a root rotation)."""
        wanted = self.wanted
        if wanted is None or not wanted.trust_root:
            return
        root = wanted.trust_root.encode()
        if root == self.tls.ca.read_bytes():
            return
        with contextlib.suppress(ValueError):
            if chains_to(self.tls.cert.read_bytes(), root, self.wall()):
                async with self.lock:
                    self.tls.write_trust(root)
                log.info("this node now trusts the cluster's new root CA")
                await self.changed()
