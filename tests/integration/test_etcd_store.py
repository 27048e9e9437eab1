"""EtcdStore against a real etcd run by EtcdMember: the shared store checks, failover, supervision, TLS."""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.store import EtcdMember, EtcdStore, EtcdTLS, StoreError
from shoal.store.etcd_member import ETCD_BINARY


def _load_checks() -> type:
    """Import StoreChecks from tests/unit/test_memory_store.py (tests/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "unit" / "test_memory_store.py"
    spec = importlib.util.spec_from_file_location("shoal_store_checks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.StoreChecks


StoreChecks = _load_checks()

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, scope="module")
def _etcd_installed() -> None:
    """No etcd is a broken set-up (``make test`` installs it), never a reason to skip."""
    assert os.access(ETCD_BINARY, os.X_OK), f"{ETCD_BINARY} is not installed: run `make test` (it installs etcd-server)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_member(data_dir: Path, scheme: str = "http", **kwargs: object) -> EtcdMember:
    client, peer = f"{scheme}://127.0.0.1:{free_port()}", f"{scheme}://127.0.0.1:{free_port()}"
    return EtcdMember("m1", data_dir, client, peer, f"m1={peer}", "new", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def member(tmp_path: Path) -> AsyncIterator[EtcdMember]:
    m = new_member(tmp_path / "etcd")
    await m.start()
    yield m
    await m.stop()


class TestEtcdStore(StoreChecks):  # type: ignore[misc, valid-type]
    @pytest.fixture
    async def store(self, member: EtcdMember) -> AsyncIterator[EtcdStore]:
        s = EtcdStore(member.client_endpoint)
        yield s
        await s.close()

    async def test_paged_range_reads_one_revision(self, member: EtcdMember) -> None:
        s = EtcdStore(member.client_endpoint, page_size=7)
        try:
            for i in range(30):
                await s.put(f"/pg/{i:02d}", b"v")
            kvs, rev = await s.range("/pg/")
            assert [kv.key for kv in kvs] == [f"/pg/{i:02d}" for i in range(30)]
            assert rev == await s.revision()
        finally:
            await s.close()


async def test_failover_to_next_endpoint(member: EtcdMember) -> None:
    dead = f"127.0.0.1:{free_port()}"
    s = EtcdStore([dead, member.client_endpoint], timeout=2.0)
    try:
        rev = await s.put("/f/a", b"1")  # refused by the dead endpoint: never sent, safe to retry
        assert (await s.get("/f/a")).mod_revision == rev  # type: ignore[union-attr]
        watch = aiter(s.watch("/f/", rev))
        assert [e.kv.key for e in await asyncio.wait_for(anext(watch), 10)] == ["/f/a"]
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await s.close()


async def test_unreachable_store_raises_store_error() -> None:
    s = EtcdStore([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], timeout=1.0)
    try:
        with pytest.raises(StoreError):
            await s.get("/x")
        with pytest.raises(StoreError):
            await s.put("/x", b"")
    finally:
        await s.close()


async def test_supervisor_restarts_killed_etcd(member: EtcdMember) -> None:
    s = EtcdStore(member.client_endpoint, watch_retry=15.0)
    try:
        rev = await s.put("/sup/a", b"before")
        watch = aiter(s.watch("/sup/", rev + 1))
        first = asyncio.create_task(anext(watch))
        await asyncio.sleep(0.3)
        old_pid = member.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while member.pid in (None, old_pid):
            assert loop.time() < deadline, "etcd was not restarted"
            await asyncio.sleep(0.05)
        assert member.restarts == 1
        await member.wait_ready(5.0)
        kv = await s.get("/sup/a")
        assert kv is not None and kv.value == b"before" and kv.mod_revision == rev
        await s.put("/sup/b", b"after")
        batch = await asyncio.wait_for(first, 15)  # the watch resumed on the new process
        assert [(e.kv.key, e.kv.value) for e in batch] == [("/sup/b", b"after")]
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await s.close()
    await member.stop()
    assert member.pid is None


def _write_certs(directory: Path) -> tuple[EtcdTLS, EtcdTLS]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def make(name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, ca: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_name, issuer_key = issuer if issuer else (subject, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        cert = builder.sign(issuer_key, hashes.SHA256())
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return subject, key, cert_path, key_path

    directory.mkdir(parents=True, exist_ok=True)
    ca_name, ca_key, ca_path, _ = make("ca", None, True)
    _, _, server_cert, server_key = make("server", (ca_name, ca_key), False)
    _, _, client_cert, client_key = make("client", (ca_name, ca_key), False)
    return EtcdTLS(server_cert, server_key, ca_path), EtcdTLS(client_cert, client_key, ca_path)


async def test_tls_member_and_store(tmp_path: Path) -> None:
    server, client = _write_certs(tmp_path / "pki")
    m = new_member(tmp_path / "etcd", "https", client_tls=server, peer_tls=server)
    await m.start()
    try:
        s = EtcdStore(m.client_url, ca_cert=client.ca, cert=client.cert, key=client.key)
        try:
            rev = await s.put("/tls/a", b"secret")
            assert (await s.get("/tls/a")).mod_revision == rev  # type: ignore[union-attr]
        finally:
            await s.close()
        anonymous = EtcdStore(m.client_url, ca_cert=client.ca, timeout=2.0)  # no client certificate
        try:
            with pytest.raises(StoreError):
                await anonymous.get("/tls/a")
        finally:
            await anonymous.close()
    finally:
        await m.stop()


async def test_three_member_cluster_survives_losing_one(tmp_path: Path) -> None:
    names = ["m1", "m2", "m3"]
    peers = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    cluster = ",".join(f"{n}={url}" for n, url in peers.items())
    clients = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    members = [EtcdMember(n, tmp_path / n, clients[n], peers[n], cluster, "new") for n in names]
    await asyncio.gather(*(m.start() for m in members))  # each waits for a quorum
    s = EtcdStore([m.client_endpoint for m in members], timeout=3.0)
    try:
        rev = await s.put("/ha/a", b"1")
        watch = aiter(s.watch("/ha/", rev + 1))
        first = asyncio.create_task(anext(watch))
        await asyncio.sleep(0.3)
        await members[0].stop()  # the endpoint the store is talking to
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:  # a write may fail while a new leader is elected
            try:
                await s.put("/ha/b", b"2")
                break
            except StoreError:
                assert loop.time() < deadline
                await asyncio.sleep(0.2)
        assert (await s.get("/ha/a")).value == b"1"  # type: ignore[union-attr]
        batch = await asyncio.wait_for(first, 15)
        assert [e.kv.key for e in batch] == ["/ha/b"]
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await s.close()
        await asyncio.gather(*(m.stop(grace=3.0) for m in members))  # no quorum left: may be slow
