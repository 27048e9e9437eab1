"""The overlay between two "nodes" made of network namespaces of our own (root; no dockerd needed).

Topology (every namespace is this test's own, removed at the end)::

    [e1a 10.50.0.10] [e2a 10.50.0.30]          [e1b 10.50.0.20] [e2b 10.50.0.40]
         | net1          | net2                       | net1          | net2
    node A: sbr/svx per network  ==== veth underlay ====  node B: sbr/svx per network
            192.168.88.1                                  192.168.88.2

Overlay.sync runs inside each node namespace (a small driver script under ``ip netns exec``) with a
hand-written network map; the endpoint namespaces play the containers (MAC derived from the IP, as the
plugin does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.network.overlay import bridge_name, mac_of, vxlan_name

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TAG = f"sho{os.getpid() % 100000}"
NODE_A, NODE_B = f"{TAG}-a", f"{TAG}-b"
NET1 = "ovlnet1aaaa" + "0" * 14
NET2 = "ovlnet2bbbb" + "0" * 14
VTEP_A, VTEP_B = "192.168.88.1", "192.168.88.2"
# endpoint name -> (node namespace, network, ip)
ENDPOINTS = {
    "e1a": (NODE_A, NET1, "10.50.0.10"), "e2a": (NODE_A, NET2, "10.50.0.30"),
    "e1b": (NODE_B, NET1, "10.50.0.20"), "e2b": (NODE_B, NET2, "10.50.0.40"),
}
DRIVER = """
import asyncio, json, sys
from shoal.network.overlay import Overlay
asyncio.run(Overlay().sync(json.load(sys.stdin)) if sys.argv[1] == "sync" else Overlay().clear())
"""


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    cp = subprocess.run(args, capture_output=True, text=True, input=input, timeout=60)
    if check and cp.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({cp.returncode}): {cp.stdout}{cp.stderr}")
    return cp


def overlay(ns: str, action: str, netmap: dict | None = None) -> None:
    env_path = f"PYTHONPATH={ROOT / 'src'}"
    sh("ip", "netns", "exec", ns, "env", env_path, sys.executable, "-c", DRIVER, action,
       input=json.dumps(netmap or {}))


def netmap(node: str, peers1: list[tuple[str, str]], peers2: list[tuple[str, str]]) -> dict:
    addr, local = (VTEP_A, "10.50.0.2/24") if node == NODE_A else (VTEP_B, "10.50.0.3/24")
    return {
        "node": {"id": node, "addr": addr},
        "networks": {
            NET1: {"name": "net1", "vni": 5001, "subnet": "10.50.0.0/24", "gateway": "10.50.0.1",
                   "ingress": False, "internal": False, "local_addr": local},
            # the same subnet on purpose, without a node address: only the VNI keeps the two apart
            NET2: {"name": "net2", "vni": 5002, "subnet": "10.50.0.0/24", "gateway": "10.50.0.1",
                   "ingress": False, "internal": False, "local_addr": None},
        },
        "peers": {NET1: [{"ip": ip, "vtep": vtep} for ip, vtep in peers1],
                  NET2: [{"ip": ip, "vtep": vtep} for ip, vtep in peers2]},
        "services": [{"id": "svc1", "name": "web", "aliases": {}, "mode": "vip", "vips": {NET1: "10.50.0.5"},
                      "backends": {}, "ports": []}],
    }


MAP_A = netmap(NODE_A, [("10.50.0.20", VTEP_B), ("10.50.0.3", VTEP_B)],
               # the lie: A believes e1b is on net2; its frames then reach B with net2's VNI
               [("10.50.0.40", VTEP_B), ("10.50.0.20", VTEP_B)])
MAP_B = netmap(NODE_B, [("10.50.0.10", VTEP_A), ("10.50.0.2", VTEP_A)], [("10.50.0.30", VTEP_A)])


def ping(ns: str, ip: str, tries: int = 3) -> bool:
    return any(sh("ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "1", ip, check=False).returncode == 0
               for _ in range(tries))


def rx_packets(ns: str, dev: str) -> int:
    return int(sh("ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/rx_packets").stdout)


@pytest.fixture(scope="module")
def nodes() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces)", pytrace=False)
    names = [NODE_A, NODE_B, *(f"{TAG}-{e}" for e in ENDPOINTS)]
    try:
        for ns in names:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", NODE_A, "link", "add", "under", "type", "veth", "peer", "name", "under", "netns", NODE_B)
        for ns, addr in ((NODE_A, VTEP_A), (NODE_B, VTEP_B)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "under")
            sh("ip", "-n", ns, "link", "set", "under", "up")
        overlay(NODE_A, "sync", MAP_A)
        overlay(NODE_B, "sync", MAP_B)
        for ep, (node, net, ip) in ENDPOINTS.items():
            ens = f"{TAG}-{ep}"
            sh("ip", "-n", node, "link", "add", ep, "type", "veth", "peer", "name", "eth0", "netns", ens)
            sh("ip", "-n", node, "link", "set", ep, "master", bridge_name(net), "mtu", "1450", "up")
            sh("ip", "-n", ens, "link", "set", "eth0", "address", mac_of(ip), "mtu", "1450", "up")
            sh("ip", "-n", ens, "addr", "add", f"{ip}/24", "dev", "eth0")
        yield
    finally:
        for ns in names:
            sh("ip", "netns", "del", ns, check=False)


def test_links_match_the_map(nodes: None) -> None:
    links = sh("ip", "-n", NODE_A, "-d", "link", "show", vxlan_name(NET1)).stdout
    assert "vxlan id 5001" in links and f"local {VTEP_A}" in links and "dstport 4789" in links
    assert "nolearning" in links and "proxy" in links and f"master {bridge_name(NET1)}" in links
    addrs = sh("ip", "-n", NODE_A, "-4", "-o", "addr", "show", bridge_name(NET1)).stdout
    assert "10.50.0.2/24" in addrs and "10.50.0.5/32" in addrs  # own address and the service VIP
    assert mac_of("10.50.0.2") in sh("ip", "-n", NODE_A, "link", "show", bridge_name(NET1)).stdout
    fdb = sh("bridge", "-n", NODE_A, "fdb", "show", "dev", vxlan_name(NET1)).stdout
    assert f"{mac_of('10.50.0.20')} dst {VTEP_B}" in fdb and f"{mac_of('10.50.0.3')} dst {VTEP_B}" in fdb
    neigh = sh("ip", "-n", NODE_A, "neigh", "show", "dev", vxlan_name(NET1)).stdout
    assert f"10.50.0.20 lladdr {mac_of('10.50.0.20')} PERMANENT" in neigh
    assert sh("ip", "netns", "exec", NODE_A, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    redirects = f"/proc/sys/net/ipv4/conf/{bridge_name(NET1)}/send_redirects"
    assert sh("ip", "netns", "exec", NODE_A, "cat", redirects).stdout.strip() == "0"


def test_sync_is_idempotent(nodes: None) -> None:
    before = sh("bridge", "-n", NODE_A, "fdb", "show").stdout, sh("ip", "-n", NODE_A, "neigh", "show").stdout
    overlay(NODE_A, "sync", MAP_A)
    after = sh("bridge", "-n", NODE_A, "fdb", "show").stdout, sh("ip", "-n", NODE_A, "neigh", "show").stdout
    assert sorted(before[0].splitlines()) == sorted(after[0].splitlines())
    assert {line for line in before[1].splitlines() if "PERMANENT" in line} == \
        {line for line in after[1].splitlines() if "PERMANENT" in line}


def test_ping_across_vxlan(nodes: None) -> None:
    assert ping(f"{TAG}-e1a", "10.50.0.20"), "endpoint on A cannot reach endpoint on B over net1"
    assert ping(f"{TAG}-e1b", "10.50.0.10")
    assert ping(f"{TAG}-e1a", "10.50.0.3"), "endpoint on A cannot reach node B's own address on net1"
    assert ping(f"{TAG}-e2a", "10.50.0.40"), "net2 does not work between the nodes"


def test_networks_are_isolated(nodes: None) -> None:
    rx = rx_packets(NODE_B, vxlan_name(NET2))
    assert not ping(f"{TAG}-e2a", "10.50.0.20", tries=1), "net2 traffic reached an endpoint of net1"
    assert rx_packets(NODE_B, vxlan_name(NET2)) > rx, "the frames should have reached B on net2's VNI"
    assert not ping(f"{TAG}-e2a", "10.50.0.10", tries=1)  # same node, other network


def test_removed_peer_is_forgotten(nodes: None) -> None:
    smaller = netmap(NODE_A, [("10.50.0.3", VTEP_B)], [("10.50.0.40", VTEP_B)])
    overlay(NODE_A, "sync", smaller)
    fdb = sh("bridge", "-n", NODE_A, "fdb", "show", "dev", vxlan_name(NET1)).stdout
    neigh = sh("ip", "-n", NODE_A, "neigh", "show", "dev", vxlan_name(NET1)).stdout
    assert mac_of("10.50.0.20") not in fdb and "10.50.0.20 " not in neigh
    assert mac_of("10.50.0.3") in fdb and "10.50.0.3 " in neigh
    assert mac_of("10.50.0.20") not in sh("bridge", "-n", NODE_A, "fdb", "show", "dev", vxlan_name(NET2)).stdout
    assert not ping(f"{TAG}-e1a", "10.50.0.20", tries=1)
    assert ping(f"{TAG}-e1a", "10.50.0.3")


def test_network_removed_from_the_map(nodes: None) -> None:
    only1 = netmap(NODE_A, [("10.50.0.3", VTEP_B)], [])
    del only1["networks"][NET2], only1["peers"][NET2]
    overlay(NODE_A, "sync", only1)
    links = sh("ip", "-n", NODE_A, "-o", "link", "show").stdout
    assert bridge_name(NET2) not in links and vxlan_name(NET2) not in links
    assert bridge_name(NET1) in links
    overlay(NODE_A, "clear")
    links = sh("ip", "-n", NODE_A, "-o", "link", "show").stdout
    assert "sbr-" not in links and "svx-" not in links
