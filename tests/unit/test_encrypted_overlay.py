"""Encrypted overlays, in process: the leader's keys (made, sealed, rotated, removed), what each node's
network map carries (a network's pre-shared key only for nodes on it), the node's tunnel configuration
and the overlay it implies (VXLAN through the tunnel, never in clear). The kernel side runs in the lab
(tests/cluster/test_encrypted_overlay_lab.py)."""

from __future__ import annotations

import base64
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shoal.cluster.messages import Hello
from shoal.manager import netmap
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.netkeys import BASE_PORT, NetworkKeys, open_psk
from shoal.manager.secrets import Sealer, new_data_key
from shoal.model.ids import new_id, now
from shoal.model.labels import VXLAN_ID
from shoal.model.network import valid_wg_key
from shoal.network.overlay import desired_state
from shoal.network.wireguard import desired_tunnels, inner_addr, load_or_make_key, public_key
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects

ROTATION = 100.0


def wg_pub() -> str:
    return base64.b64encode(X25519PrivateKey.generate().public_key().public_bytes_raw()).decode()


def network(name: str, vni: int, encrypted: bool) -> dict:
    return {"ID": new_id(), "CreatedAt": now(), "UpdatedAt": now(),
            "Spec": {"Name": name, "DriverConfiguration": {"Name": "overlay",
                                                           "Options": {"encrypted": ""} if encrypted else {}}},
            "DriverState": {"Name": "overlay", "Options": {VXLAN_ID: str(vni)}},
            "IPAMOptions": {"Configs": [{"Subnet": f"10.0.{vni % 256}.0/24", "Gateway": f"10.0.{vni % 256}.1"}]}}


def node(addr: str, nets: dict[str, str]) -> dict:
    """A ready node at ``addr`` with its own address on each network of ``nets`` (ID → address)."""
    return {"ID": new_id(), "CreatedAt": now(), "UpdatedAt": now(),
            "Spec": {"Role": "worker", "Availability": "active"}, "Description": {"Hostname": addr},
            "Status": {"State": "ready", "Addr": addr},
            "Attachments": [{"Network": {"ID": nid}, "Addresses": [ip]} for nid, ip in nets.items()]}


def task(node_id: str, net_id: str, ip: str) -> dict:
    return {"ID": new_id(), "CreatedAt": now(), "UpdatedAt": now(), "ServiceID": "s" * 25, "Slot": 1,
            "NodeID": node_id, "DesiredState": "running", "Spec": {},
            "Status": {"State": "running", "Timestamp": now()},
            "NetworksAttachments": [{"Network": {"ID": net_id}, "Addresses": [ip]}]}


class Wall:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def objs() -> AsyncIterator[Objects]:
    o = Objects(MemoryStore())
    await o.start()
    try:
        yield o
    finally:
        await o.stop()


@pytest.fixture(scope="module")
def sealer() -> Sealer:
    return Sealer(new_data_key())


async def test_the_leader_makes_seals_rotates_and_removes_network_keys(objs: Objects, sealer: Sealer) -> None:
    wall = Wall()
    keys = NetworkKeys(objs, sealer, rotation=ROTATION, wall=wall)
    sec = await objs.create("networks", network("sec", 4097, True))
    await objs.create("networks", network("plain", 4098, False))
    await keys.reconcile(None)
    assert [k["ID"] for k in objs.list("netkeys")] == [sec["ID"]]  # only the encrypted network has keys
    stored = objs.get("netkeys", sec["ID"])
    psk, port = open_psk(objs, sealer, sec["ID"])  # type: ignore[misc]
    assert port == BASE_PORT and valid_wg_key(psk)
    assert psk not in str(stored) and stored["Sealed"].startswith("v1:")  # sealed at rest
    assert open_psk(objs, None, sec["ID"]) is None  # no CA key: nothing opens
    # a second encrypted network: its own key and port
    sec2 = await objs.create("networks", network("sec2", 4099, True))
    await keys.reconcile(None)
    psk2, port2 = open_psk(objs, sealer, sec2["ID"])  # type: ignore[misc]
    assert port2 == BASE_PORT + 1 and psk2 != psk
    assert keys.next_timer() == pytest.approx(ROTATION)

    wall.t += ROTATION / 2
    await keys.reconcile(None)
    assert open_psk(objs, sealer, sec["ID"]) == (psk, port)  # not due yet
    assert keys.next_timer() == pytest.approx(ROTATION / 2)
    wall.t += ROTATION / 2
    await keys.reconcile(None)
    rotated = open_psk(objs, sealer, sec["ID"])
    assert rotated is not None and rotated[0] != psk and rotated[1] == port  # a new key, the same port
    assert objs.get("netkeys", sec["ID"])["CreatedAt"] == stored["CreatedAt"]

    # the network's removal removes its keys; a removed node's public key goes too
    nd = await objs.create("nodes", node("192.168.77.11", {}))
    await objs.create("nodekeys", {"ID": nd["ID"], "PublicKey": wg_pub()})
    await objs.create("nodekeys", {"ID": new_id(), "PublicKey": wg_pub()})
    await objs.delete("networks", objs.get("networks", sec["ID"]))
    await keys.reconcile(None)
    assert [k["ID"] for k in objs.list("netkeys")] == [sec2["ID"]]
    assert [k["ID"] for k in objs.list("nodekeys")] == [nd["ID"]]


async def test_without_a_ca_key_no_network_gets_keys(objs: Objects, sealer: Sealer) -> None:
    await objs.create("networks", network("sec", 4097, True))
    await NetworkKeys(objs, None).reconcile(None)
    assert objs.list("netkeys") == []
    # a leader without the CA key, after one that had it: the keys stay, and no overdue timer spins
    wall = Wall()
    await NetworkKeys(objs, sealer, rotation=ROTATION, wall=wall).reconcile(None)
    sealed = objs.list("netkeys")[0]["Sealed"]
    wall.t += 2 * ROTATION
    keyless = NetworkKeys(objs, None, rotation=ROTATION, wall=wall)
    await keyless.reconcile(None)
    assert objs.list("netkeys")[0]["Sealed"] == sealed and keyless.next_timer() is None


async def test_a_networks_key_reaches_only_the_nodes_on_it(objs: Objects, sealer: Sealer) -> None:
    sec = await objs.create("networks", network("sec", 4097, True))
    plain = await objs.create("networks", network("plain", 4098, False))
    a = await objs.create("nodes", node("192.168.77.11", {sec["ID"]: "10.0.1.3/24"}))
    b = await objs.create("nodes", node("192.168.77.12", {sec["ID"]: "10.0.1.4/24"}))
    c = await objs.create("nodes", node("192.168.77.13", {plain["ID"]: "10.0.2.3/24"}))
    await objs.create("tasks", task(a["ID"], sec["ID"], "10.0.1.5/24"))
    await objs.create("tasks", task(b["ID"], sec["ID"], "10.0.1.6/24"))
    await objs.create("tasks", task(c["ID"], plain["ID"], "10.0.2.5/24"))
    keys_of = {n["ID"]: wg_pub() for n in (a, b, c)}
    for nid, k in keys_of.items():
        await objs.create("nodekeys", {"ID": nid, "PublicKey": k})

    m = netmap.compute(objs, a["ID"], sealer)
    assert m["networks"][sec["ID"]]["encryption"] is None  # no keys made yet: the node keeps it closed
    await NetworkKeys(objs, sealer).reconcile(None)
    psk, port = open_psk(objs, sealer, sec["ID"])  # type: ignore[misc]
    m = netmap.compute(objs, a["ID"], sealer)
    net = m["networks"][sec["ID"]]
    assert net["encrypted"] is True
    assert net["encryption"] == {"psk": psk, "port": port,
                                 "peers": [{"addr": "192.168.77.12", "key": keys_of[b["ID"]]}]}
    assert netmap.compute(objs, b["ID"], sealer)["networks"][sec["ID"]]["encryption"]["peers"] == [
        {"addr": "192.168.77.11", "key": keys_of[a["ID"]]}]
    c_map = netmap.compute(objs, c["ID"], sealer)
    assert sec["ID"] not in c_map["networks"] and psk not in str(c_map)  # C is not on the network
    assert c_map["networks"][plain["ID"]]["encrypted"] is False and "encryption" not in c_map["networks"][plain["ID"]]
    assert netmap.compute(objs, a["ID"])["networks"][sec["ID"]]["encryption"] is None  # no sealer, no key

    # the node side: one tunnel, B as its only peer, the key only in the configuration read from stdin
    tunnels = desired_tunnels(m)
    t = tunnels[sec["ID"]]
    assert list(tunnels) == [sec["ID"]] and t.name == "swg-" + sec["ID"][:10] and t.port == port
    assert t.local == inner_addr(4097, "192.168.77.11") == "fd53:6f61:0:1001::c0a8:4d0b"
    config = t.config("PRIVATE")
    assert f"PresharedKey = {psk}" in config and f"Endpoint = 192.168.77.12:{port}" in config
    assert f"AllowedIPs = {inner_addr(4097, '192.168.77.12')}/128" in config and f"ListenPort = {port}" in config
    # ... and its overlay: VXLAN between inner addresses, only once the tunnel is up
    st = desired_state(m, {sec["ID"]})[sec["ID"]]
    assert st.local == t.local and not st.blocked
    assert set(st.fdb.values()) == {inner_addr(4097, "192.168.77.12")}
    closed = desired_state(m, set())[sec["ID"]]
    assert closed.blocked  # no tunnel: the bridge stays, no VXLAN device, nothing in clear


async def test_a_sessions_hello_records_the_nodes_public_key(objs: Objects) -> None:
    class Quiet:
        async def send(self, msg: object) -> None:
            pass

        async def close(self) -> None:
            pass

    nd = await objs.create("nodes", node("192.168.77.11", {}))
    d = Dispatcher(objs)
    key = wg_pub()
    await d.open(nd["ID"], "worker", Quiet(), Hello(addr="192.168.77.11", wg_key=key), "192.168.77.11")
    assert objs.get("nodekeys", nd["ID"])["PublicKey"] == key
    await d.open(nd["ID"], "worker", Quiet(), Hello(addr="192.168.77.11", wg_key="not-a-key"), "192.168.77.11")
    assert objs.get("nodekeys", nd["ID"])["PublicKey"] == key  # an invalid key is not stored
    await d.shutdown()


def test_a_nodes_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "wireguard.key"
    key = load_or_make_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_make_key(path) == key and valid_wg_key(key) and valid_wg_key(public_key(key))
    path.write_text("garbage\n")
    assert load_or_make_key(path) != key  # an unreadable key is replaced
