"""The swarm's PKI in-process: what a node certificate lets its holder pose as (real TLS handshakes on
loopback), the cross-signed transition of a root rotation as OpenSSL sees it, the cluster port taking a
renewed certificate without a restart, and renewal timing on a virtual clock."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from fakeclock import FakeClock

from shoal.cluster.messages import CAUpdate, RenewAnswer, RenewRequest
from shoal.node.renewal import RENEW_WINDOW, Renewer, renewal_delay
from shoal.tls.certs import (
    Signer,
    chains_to,
    cross_sign,
    identity_of,
    issue_node_cert,
    issuer_info,
    issuer_of,
    key_pem,
    load_pems,
    make_csr,
    make_root_ca,
    new_key,
    validity,
)
from shoal.tls.contexts import ServerContexts, client_context
from shoal.tls.files import NodeTLS

CLUSTER = "c" * 25


def node(tmp: Path, name: str, signer: Signer, trust: bytes, role: str = "worker",
         expiry: datetime.timedelta = datetime.timedelta(hours=1), now: datetime.datetime | None = None) -> NodeTLS:
    """A node's files: a certificate from ``signer`` (CN ``name`` padded to a node ID), trusting ``trust``."""
    tls = NodeTLS(tmp / name / "certificates")
    key = new_key()
    cert = issue_node_cert(signer, make_csr(key), name.ljust(25, "0"), role, CLUSTER, expiry, now)
    tls.write(trust, cert, key_pem(key))
    return tls


async def handshake(server: NodeTLS | ServerContexts, client: NodeTLS, name: str) -> str:
    """Connect ``client`` to a server presenting ``server``'s certificate, checking it for ``name``.
    Returns the client's CN as the server saw it ("" when the server took no client certificate);
    raises ssl.SSLError (or ConnectionError) when the handshake fails."""
    contexts = server if isinstance(server, ServerContexts) else ServerContexts(server)

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peer = w.get_extra_info("peercert") or {}
        cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), "")
        w.write(cn.encode() + b"\n")
        await w.drain()
        w.close()

    srv = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=contexts.context)
    port = srv.sockets[0].getsockname()[1]
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(client), server_hostname=name)
        try:
            line = await r.readline()
        finally:
            w.close()
        if not line:
            raise ConnectionError("the server ended the handshake (it refused the client's certificate)")
        return line.decode().strip()
    finally:
        srv.close()
        await srv.wait_closed()


def dns_names(cert_pem: bytes) -> list[str]:
    san = load_pems(cert_pem)[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


async def test_a_worker_certificate_cannot_pose_as_a_manager(tmp_path: Path) -> None:
    root = make_root_ca()
    signer = Signer(*root)
    worker = node(tmp_path, "worker", signer, root[0])
    manager = node(tmp_path, "manager", signer, root[0], role="manager")
    other = node(tmp_path, "other", signer, root[0])
    assert dns_names(worker.cert.read_bytes()) == ["swarm-worker", "worker".ljust(25, "0")]
    assert dns_names(manager.cert.read_bytes()) == ["swarm-manager", "manager".ljust(25, "0"), "swarm-ca"]
    assert identity_of(worker.cert.read_bytes()) == ("worker".ljust(25, "0"), "worker", CLUSTER)

    assert await handshake(manager, other, "swarm-manager") == "other".ljust(25, "0")
    assert await handshake(manager, other, "swarm-ca") == "other".ljust(25, "0")
    for name in ("swarm-manager", "swarm-ca", "manager".ljust(25, "0")):  # a worker posing as a manager
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake(worker, other, name)
    assert await handshake(worker, other, "worker".ljust(25, "0")) == "other".ljust(25, "0")  # its own name

    stranger_root = make_root_ca()  # another swarm's manager
    stranger = node(tmp_path, "stranger", Signer(*stranger_root), stranger_root[0], role="manager")
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(stranger, other, "swarm-manager")
    with pytest.raises((ssl.SSLError, ConnectionError)):  # and its certificate opens nothing here
        await handshake(manager, stranger, "swarm-manager")


async def test_the_cross_signed_transition_of_a_root_rotation(tmp_path: Path) -> None:
    """Old root A, new root B of the same name. During the rotation certificates come from B's key with
    B cross-signed by A after them: nodes that trust only A and nodes already on B both accept them; a
    node that trusts only B refuses a certificate of A (why the rotation waits for every node)."""
    a, b = make_root_ca(), make_root_ca()
    assert load_pems(a[0])[0].subject == load_pems(b[0])[0].subject
    during = Signer(b[0], b[1], cross_sign(b[0], a[0], a[1]))
    old = node(tmp_path, "old", Signer(*a), a[0])  # not renewed yet
    renewed = node(tmp_path, "renewed", during, a[0])  # renewed, still trusting A
    switched = node(tmp_path, "switched", during, b[0])  # renewed, trusting B (rotation over)
    after = node(tmp_path, "after", Signer(*b), b[0])  # issued after the rotation

    for server, client in ((renewed, old), (old, renewed), (renewed, switched), (switched, renewed),
                           (switched, after), (after, switched), (renewed, renewed)):
        assert await handshake(server, client, client_name(server)) == client_name(client)
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(old, after, client_name(old))  # a certificate of A, to a node trusting only B
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(after, old, client_name(after))

    # what nodes and the leader make of it (TLSInfo, the checks before trusting B)
    assert issuer_info(issuer_of(renewed.cert.read_bytes(), a[0])) == issuer_info(load_pems(b[0])[0])
    assert issuer_info(issuer_of(old.cert.read_bytes(), a[0])) == issuer_info(load_pems(a[0])[0])
    assert chains_to(renewed.cert.read_bytes(), a[0]) and chains_to(renewed.cert.read_bytes(), b[0])
    assert not chains_to(old.cert.read_bytes(), b[0]) and not chains_to(after.cert.read_bytes(), a[0])


def client_name(tls: NodeTLS) -> str:
    return identity_of(tls.cert.read_bytes())[0]


async def test_the_cluster_port_takes_a_renewed_certificate_at_the_next_handshake(tmp_path: Path) -> None:
    root = make_root_ca()
    server = node(tmp_path, "server", Signer(*root), root[0], role="manager")
    client = node(tmp_path, "client", Signer(*root), root[0])
    contexts = ServerContexts(server)

    async def served_serial() -> int:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(client),
                                             server_hostname="swarm-manager")
        der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
        w.close()
        return x509.load_der_x509_certificate(der).serial_number

    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=contexts.context)
    port = srv.sockets[0].getsockname()[1]
    try:
        first = await served_serial()
        assert first == load_pems(server.cert.read_bytes())[0].serial_number
        renewed = node(tmp_path, "server", Signer(*root), root[0], role="manager")  # same files, new identity
        assert await served_serial() == first  # not reloaded yet
        contexts.reload()
        assert await served_serial() == load_pems(renewed.cert.read_bytes())[0].serial_number != first
    finally:
        srv.close()
        await srv.wait_closed()


def test_renewal_comes_between_half_and_four_fifths_of_a_certificate_life() -> None:
    nb = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    na = nb + datetime.timedelta(hours=100)
    assert renewal_delay(nb, na, nb, 0.5) == 50 * 3600
    assert renewal_delay(nb, na, nb + datetime.timedelta(hours=79), 0.8) == 3600
    assert renewal_delay(nb, na, na, 0.5) == 0
    assert RENEW_WINDOW == (0.5, 0.8)


class Leader:
    """The leader's side of renewals: signs with ``signer`` at the virtual wall time; can be made to fail."""

    def __init__(self, signer: Signer, trust: bytes, wall, expiry: datetime.timedelta) -> None:
        self.signer, self.trust, self.wall, self.expiry = signer, trust, wall, expiry
        self.failing = False
        self.asked: list[float] = []

    async def __call__(self, req: RenewRequest) -> RenewAnswer:
        self.asked.append(self.wall().timestamp())
        if self.failing:
            raise ConnectionError("no leader")
        cert = issue_node_cert(self.signer, req.csr.encode(), "n".ljust(25, "0"), "worker", CLUSTER, self.expiry,
                               self.wall())
        return RenewAnswer(cert=cert.decode(), role="worker", trust_root=self.trust.decode())


async def test_a_node_renews_at_the_planned_point_and_retries_with_backoff(tmp_path: Path) -> None:
    clock = FakeClock()
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0)  # certificates keep whole seconds

    def wall() -> datetime.datetime:
        return start + datetime.timedelta(seconds=clock.now())

    root = make_root_ca()
    life = datetime.timedelta(seconds=100)  # backdated by a tenth: valid from -10 s to +100 s
    tls = node(tmp_path, "n", Signer(*root), root[0], expiry=life, now=wall())
    leader = Leader(Signer(*root), root[0], wall, life)
    changes = []

    async def changed() -> None:
        changes.append(validity(tls.cert.read_bytes()))

    renewer = Renewer(tls, leader, changed, asyncio.Lock(), clock=clock, wall=wall, fraction=lambda: 0.6)
    task = asyncio.create_task(renewer.run())
    try:
        await clock.advance(55.5, step=0.25)  # 60 % of 110 s from -10 s: at 56 s
        assert leader.asked == [] and renewer.renewals == 0
        await clock.advance(1)
        assert renewer.renewals == 1 and len(changes) == 1
        assert changes[0][1] - changes[0][0] == datetime.timedelta(seconds=110)  # the same life again
        assert chains_to(tls.cert.read_bytes(), root[0], wall())

        leader.failing = True  # the next one (valid from 46 s: at 46 + 66 s) fails: again after 1, 2, 4 s
        await clock.advance(63, step=0.25)
        asked = [round(t - start.timestamp()) for t in leader.asked]
        assert asked == [56, 112, 113, 115, 119], asked
        leader.failing = False
        await clock.advance(8, step=0.25)
        assert renewer.renewals == 2 and len(changes) == 2
    finally:
        task.cancel()


async def test_a_node_renews_at_once_for_a_new_issuer_then_trusts_the_new_root(tmp_path: Path) -> None:
    clock = FakeClock()
    a, b = make_root_ca(), make_root_ca()
    tls = node(tmp_path, "n", Signer(*a), a[0], expiry=datetime.timedelta(days=90))
    leader = Leader(Signer(b[0], b[1], cross_sign(b[0], a[0], a[1])), a[0], lambda: datetime.datetime.now(
        datetime.UTC), datetime.timedelta(days=90))
    changes = 0

    async def changed() -> None:
        nonlocal changes
        changes += 1

    renewer = Renewer(tls, leader, changed, asyncio.Lock(), clock=clock)
    task = asyncio.create_task(renewer.run())
    try:
        await clock.advance(1)
        assert renewer.renewals == 0  # nothing is due for months
        subject, public_key = issuer_info(load_pems(b[0])[0])
        renewer.ca_update(CAUpdate(trust_root=a[0].decode(), issuer_subject=subject, issuer_public_key=public_key))
        await clock.advance(0.1)
        assert renewer.renewals == 1 and tls.ca.read_bytes() == a[0]  # renewed; still trusting A
        assert issuer_info(issuer_of(tls.cert.read_bytes(), a[0])) == (subject, public_key)

        renewer.ca_update(CAUpdate(trust_root=b[0].decode(), issuer_subject=subject, issuer_public_key=public_key))
        await clock.advance(0.1)
        assert tls.ca.read_bytes() == b[0] and renewer.renewals == 1 and changes == 2  # the rotation is over
    finally:
        task.cancel()
