"""Highly available etcd: live membership changes, quorum loss, forced recovery, TLS clusters,
leader election and backup/restore, on real etcd members (random loopback ports, tmp dirs)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from shoal.manager.ca import make_root_ca
from shoal.store import EtcdMember, EtcdStore, Put, StoreError
from shoal.store.backup import ETCDCTL_BINARY, backup, restore
from shoal.store.election import Election
from shoal.store.etcd_member import ETCD_BINARY
from shoal.store.etcd_tls import issue_etcd_cert

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(ETCD_BINARY, os.X_OK), reason=f"{ETCD_BINARY} not installed"),
]

T = TypeVar("T")
TTL = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url(scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{free_port()}"


@pytest.fixture
async def members() -> AsyncIterator[list[EtcdMember]]:
    """Every member a test starts goes in here and is stopped afterwards, one at a time and the
    first (usually the raft leader) first: a stopping leader hands leadership to a live member then;
    handing it to a member that has just stopped stalls the stop for seconds."""
    started: list[EtcdMember] = []
    yield started
    for m in started:
        await m.stop(grace=3.0)


@pytest.fixture
async def stores() -> AsyncIterator[list[EtcdStore]]:
    opened: list[EtcdStore] = []
    yield opened
    await asyncio.gather(*(s.close() for s in opened))


async def new_cluster(tmp: Path, members: list[EtcdMember], n: int) -> list[EtcdMember]:
    """``n`` members started together as a new cluster (fast; growing one live is tested below)."""
    names = [f"m{i + 1}" for i in range(n)]
    peers = {name: url() for name in names}
    cluster = ",".join(f"{name}={peer}" for name, peer in peers.items())
    ms = [EtcdMember(name, tmp / name, url(), peers[name], cluster, "new") for name in names]
    members.extend(ms)
    await asyncio.gather(*(m.start() for m in ms))
    return ms


async def retry(what: Callable[[], Awaitable[T]], within: float = 15.0) -> T:
    """Call ``what`` until it stops raising StoreError (etcd's 5 s health window, elections)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await what()
        except StoreError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.3)


async def join(via: EtcdStore, tmp: Path, name: str, members: list[EtcdMember], **kwargs: object) -> EtcdMember:
    scheme = "https" if "client_tls" in kwargs else "http"

    async def attempt() -> EtcdMember:
        return await EtcdMember.join(via, name, tmp / name, url(scheme), url(scheme), **kwargs)

    m = await retry(attempt)
    members.append(m)
    return m


async def test_grow_cluster_live_then_remove_a_member(
    tmp_path: Path, members: list[EtcdMember], stores: list[EtcdStore]
) -> None:
    m1 = EtcdMember("m1", tmp_path / "m1", url(), (peer := url()), f"m1={peer}")
    members.append(m1)
    await m1.start()
    s1 = m1.store()
    stores.append(s1)
    await s1.put("/ha/before", b"0")
    m2 = await join(s1, tmp_path, "m2", members)  # 1 -> 2 members: allowed at once
    with pytest.raises(StoreError, match="etcdserver: unhealthy cluster"):  # m2 connected for < 5 s
        await s1.member_add([url()])
    m3 = await join(s1, tmp_path, "m3", members)
    listed = await s1.member_list()
    assert sorted(m.name for m in listed) == ["m1", "m2", "m3"]
    assert not any(m.is_learner for m in listed)
    assert {u for m in listed for u in m.client_urls} == {m1.client_url, m2.client_url, m3.client_url}

    rev = await s1.put("/ha/k", b"v")
    for m in (m1, m2, m3):
        s = m.store()
        stores.append(s)
        for serializable in (False, True):
            kv = await retry(lambda s=s, ser=serializable: s.get("/ha/k", serializable=ser), 5)
            assert kv is not None and kv.value == b"v" and kv.mod_revision == rev
        assert [kv.key for kv in (await s.range("/ha/"))[0]] == ["/ha/before", "/ha/k"]
    statuses = [await s1.status(m.client_url) for m in (m1, m2, m3)]
    assert len({st["leader"] for st in statuses}) == 1 and statuses[0]["leader"] != 0
    assert {st["member_id"] for st in statuses} == {m.id for m in listed}

    m3_id = next(m.id for m in listed if m.name == "m3")
    remaining = await retry(lambda: s1.member_remove(m3_id))  # once m3 has been up for etcd's 5 s
    assert sorted(m.name for m in remaining) == ["m1", "m2"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not m3.removed:  # it shuts down by itself and the supervisor leaves it down
        assert loop.time() < deadline, "removed member still running"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    assert m3.pid is None and m3.restarts == 0
    assert (await s1.put("/ha/after", b"1")) > rev
    assert sorted(m.name for m in await m2.store().member_list()) == ["m1", "m2"]


async def test_quorum_loss_fails_writes_fast_then_recovers(
    tmp_path: Path, members: list[EtcdMember], stores: list[EtcdStore]
) -> None:
    m1, m2, m3 = await new_cluster(tmp_path, members, 3)
    s1 = EtcdStore(m1.client_endpoint, timeout=1.0)  # write_timeout: the default 3 s
    stores.append(s1)
    await s1.put("/q/a", b"1")
    election = Election(s1, ttl=TTL, value=b"m1")
    await election.campaign()
    loop = asyncio.get_running_loop()
    lost_at: list[float] = []
    lost_watch = asyncio.create_task(election.lost.wait())
    lost_watch.add_done_callback(lambda _: lost_at.append(loop.time()))

    await m2.stop()
    await m3.stop()
    quorum_lost = t0 = loop.time()
    with pytest.raises(StoreError) as put_err:
        await s1.put("/q/b", b"2")
    put_fail = loop.time() - t0
    t0 = loop.time()
    with pytest.raises(StoreError) as txn_err:
        await s1.txn([], [Put("/q/b", b"2")])
    txn_fail = loop.time() - t0
    print(f"without quorum: put failed after {put_fail:.2f}s ({put_err.value})")
    print(f"without quorum: txn failed after {txn_fail:.2f}s ({txn_err.value})")
    assert put_fail < 3.5 and txn_fail < 3.5
    await asyncio.wait_for(lost_watch, 1)  # long since: its lease deadline is < ttl after quorum loss
    print(f"leader lost its lease {lost_at[0] - quorum_lost:.2f}s after quorum loss: {election.lost_reason}")
    assert lost_at[0] - quorum_lost < TTL and not election.is_leader

    kv = await s1.get("/q/a", serializable=True)  # the member's local copy still answers
    assert kv is not None and kv.value == b"1"
    with pytest.raises(StoreError):
        await s1.get("/q/a")  # a linearizable read needs the quorum
    assert (await s1.status())["leader"] == 0

    t0 = loop.time()
    await m2.start()  # 2 of 3: quorum again
    rev = await retry(lambda: s1.put("/q/c", b"3"), 10)
    print(f"writes back {loop.time() - t0:.1f}s after restarting a second member")
    assert (await s1.get("/q/c")).mod_revision == rev  # type: ignore[union-attr]
    await retry(election.campaign, 10)
    assert election.is_leader


async def test_force_new_cluster_on_the_last_survivor(
    tmp_path: Path, members: list[EtcdMember], stores: list[EtcdStore]
) -> None:
    m1, m2, m3 = await new_cluster(tmp_path, members, 3)
    s = m1.store()
    rev = await s.put("/fnc/a", b"kept")
    await s.close()
    for m in (m2, m3, m1):
        await m.stop()
    survivor = EtcdMember(
        "m1", m1.data_dir, m1.client_url, m1.peer_url, m1.initial_cluster, force_new_cluster=True
    )
    members.append(survivor)
    await survivor.start()
    s = survivor.store()
    stores.append(s)
    kv = await s.get("/fnc/a")
    assert kv is not None and kv.value == b"kept" and kv.mod_revision == rev
    assert [m.name for m in await s.member_list()] == ["m1"]
    await s.put("/fnc/b", b"new")

    old_pid = survivor.pid
    assert old_pid is not None
    assert b"--force-new-cluster" in Path(f"/proc/{old_pid}/cmdline").read_bytes()
    os.kill(old_pid, signal.SIGKILL)  # crash: the supervisor restarts it without the flag
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while survivor.pid in (None, old_pid):
        assert loop.time() < deadline, "not restarted"
        await asyncio.sleep(0.05)
    assert b"--force-new-cluster" not in Path(f"/proc/{survivor.pid}/cmdline").read_bytes()
    await survivor.wait_ready(10)
    assert (await retry(lambda: s.get("/fnc/b"), 10)).value == b"new"  # type: ignore[union-attr]


async def test_tls_cluster(tmp_path: Path, members: list[EtcdMember], stores: list[EtcdStore]) -> None:
    ca_cert, ca_key = make_root_ca()
    tls1, peer1 = issue_etcd_cert(ca_cert, ca_key, tmp_path / "pki-m1", ["127.0.0.1"], name="m1")
    tls2, peer2 = issue_etcd_cert(ca_cert, ca_key, tmp_path / "pki-m2", ["127.0.0.1"], name="m2")
    peer = url("https")
    m1 = EtcdMember("m1", tmp_path / "m1", url("https"), peer, f"m1={peer}", client_tls=tls1, peer_tls=peer1)
    members.append(m1)
    await m1.start()
    s1 = m1.store()
    stores.append(s1)
    m2 = await join(s1, tmp_path, "m2", members, client_tls=tls2, peer_tls=peer2)
    assert all(u.startswith("https://") for m in await s1.member_list() for u in m.peer_urls)
    rev = await s1.put("/tls/a", b"secret")

    client, _ = issue_etcd_cert(ca_cert, ca_key, tmp_path / "pki-client", (), name="client")
    s2 = EtcdStore(m2.client_url, ca_cert=client.ca, cert=client.cert, key=client.key)
    stores.append(s2)
    kv = await s2.get("/tls/a")
    assert kv is not None and kv.value == b"secret" and kv.mod_revision == rev

    anonymous = EtcdStore(m2.client_url, ca_cert=client.ca, timeout=2.0)
    stores.append(anonymous)
    with pytest.raises(StoreError):
        await anonymous.get("/tls/a")
    other_ca_cert, other_ca_key = make_root_ca()
    stranger, _ = issue_etcd_cert(other_ca_cert, other_ca_key, tmp_path / "pki-other", (), name="stranger")
    foreign = EtcdStore(m2.client_url, ca_cert=client.ca, cert=stranger.cert, key=stranger.key, timeout=2.0)
    stores.append(foreign)
    with pytest.raises(StoreError):
        await foreign.get("/tls/a")


async def test_election_failover_when_leader_dies(
    tmp_path: Path, members: list[EtcdMember], stores: list[EtcdStore]
) -> None:
    (m1,) = await new_cluster(tmp_path, members, 1)
    sa, sb = m1.store(), m1.store()
    stores += [sa, sb]
    a, b = Election(sa, ttl=TTL, value=b"a"), Election(sb, ttl=TTL, value=b"b")
    token_a = await a.campaign()
    pending = asyncio.create_task(b.campaign())
    await asyncio.sleep(3 * TTL / 2)  # a keeps its lease alive past the TTL
    assert not pending.done() and a.is_leader and await b.leader() == b"a"
    assert (await sb.get("/shoal/leader")).create_revision == token_a  # type: ignore[union-attr]

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await sa.close()  # a "dies": no more keepalives, no resign
    token_b = await asyncio.wait_for(pending, 5)
    failover = loop.time() - t0
    print(f"failover after {failover:.2f}s (ttl {TTL}s)")
    assert failover < TTL + 1.0
    assert a.lost.is_set() and not a.is_leader
    assert token_b > token_a and await b.leader() == b"b"
    await b.resign()
    assert await b.leader() is None


async def test_election_lost_when_leader_member_stops(
    tmp_path: Path, members: list[EtcdMember], stores: list[EtcdStore]
) -> None:
    m1, m2, m3 = await new_cluster(tmp_path, members, 3)
    sa = EtcdStore(m1.client_endpoint)  # a talks to m1 only
    sb = EtcdStore([m2.client_endpoint, m3.client_endpoint])
    stores += [sa, sb]
    a, b = Election(sa, ttl=TTL, value=b"a"), Election(sb, ttl=TTL, value=b"b")
    await a.campaign()
    pending = asyncio.create_task(b.campaign())
    await asyncio.sleep(0.5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await m1.stop()
    stopped = loop.time() - t0
    await asyncio.wait_for(a.lost.wait(), TTL)
    lost = loop.time() - t0
    await asyncio.wait_for(pending, TTL + 5)
    won = loop.time() - t0
    print(f"member stop took {stopped:.2f}s; a lost after {lost:.2f}s ({a.lost_reason}); b won after {won:.2f}s")
    assert lost < TTL
    assert won < 2 * TTL + 2  # a's lease outlives it by up to ttl + etcd's re-election and lease extension
    assert b.is_leader and await b.leader() == b"b"


async def test_backup_restore_round_trip(tmp_path: Path, members: list[EtcdMember], stores: list[EtcdStore]) -> None:
    if not os.access(ETCDCTL_BINARY, os.X_OK):
        pytest.skip(f"{ETCDCTL_BINARY} not installed")
    (m1,) = await new_cluster(tmp_path, members, 1)
    s = m1.store()
    stores.append(s)
    for i in range(50):
        await s.put(f"/b/{i:02d}", f"v{i}".encode())
    await s.delete("/b/07")
    before, rev = await s.range("/b/")
    assert await s.alarms() == [] and await s.disarm() == []
    await s.defragment(m1.client_url)
    st = await s.status()
    assert st["revision"] == rev and st["db_size"] > 0 and st["version"].startswith("3.")

    snap = tmp_path / "backup.db"
    size = await backup(s, snap)
    assert size == snap.stat().st_size > 0
    peer = url()
    data = await asyncio.to_thread(restore, snap, tmp_path / "restored", "r1", peer)
    with pytest.raises(StoreError, match="not empty"):
        restore(snap, data, "r1", peer)
    r1 = EtcdMember("r1", data, url(), peer, f"r1={peer}")
    members.append(r1)
    await r1.start()
    rs = r1.store()
    stores.append(rs)
    after, rev_after = await rs.range("/b/")
    assert after == before and rev_after == rev
    assert [m.name for m in await rs.member_list()] == ["r1"]
    assert await rs.put("/b/new", b"x") == rev + 1
