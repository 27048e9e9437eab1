"""VIP and ingress load balancing with real nftables, in network namespaces made (and removed) here.

Topology (all namespaces are this test's own; nothing touches the host's interfaces)::

    client 10.60.0.20 ─┐                      ┌─ c1 10.60.0.11  (HTTP :8000, answers "<name> <peer>")
                       ├─ node: sbr-testnet00 ├─ c2 10.60.0.12
    (VIP 10.60.0.2/32) ┘   10.60.0.1/24       └─ c3 10.60.0.13
    outside 192.168.99.2 ── node 192.168.99.1 (ingress published port 8080 → 8000)
    stranger 10.62.0.10 ─── node: sbr-othernet0 10.62.0.1/24 (another network)

``LoadBalancer.sync`` runs inside the node namespace (``ip netns exec`` + a small driver).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.network.lb import render

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NET, OTHER = "testnet00", "othernet0"  # bridges sbr-testnet00 and sbr-othernet0
VIP, EMPTY_VIP = "10.60.0.2", "10.60.0.3"
BACKENDS = ["10.60.0.11", "10.60.0.12", "10.60.0.13"]

SERVER = r"""
import http.server, sys
name = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{name} {self.client_address[0]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""

CLIENT = r"""
import http.client, json, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    try:
        c = http.client.HTTPConnection(host, port, timeout=2)
        c.request("GET", "/", headers={"Connection": "close"})
        out.append(c.getresponse().read().decode())
        c.close()
    except OSError as e:
        out.append("error " + type(e).__name__)
print(json.dumps(out))
"""

DRIVER = "import asyncio, json, sys\nfrom shoal.network.lb import LoadBalancer\n" \
         "asyncio.run(LoadBalancer().sync(json.load(sys.stdin)))\n"


def sh(*args: str, ns: str | None = None, input: str | None = None, timeout: float = 60) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    proc = subprocess.run(cmd, input=input, text=True, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    return proc.stdout


def netmap(backends: list[str], ingress_backends: bool = True) -> dict:
    return {
        "node": {"id": "node1", "addr": "192.168.99.1"},
        "networks": {
            NET: {"name": "testnet", "vni": 4100, "subnet": "10.60.0.0/24", "gateway": "10.60.0.1",
                  "ingress": True, "internal": False, "local_addr": "10.60.0.1/24"},
            OTHER: {"name": "othernet", "vni": 4101, "subnet": "10.62.0.0/24", "gateway": "10.62.0.1",
                    "ingress": False, "internal": False, "local_addr": "10.62.0.1/24"},
        },
        "peers": {NET: [], OTHER: []},
        "services": [
            {"id": "s1", "name": "web", "aliases": {}, "mode": "vip", "vips": {NET: VIP},
             "backends": {NET: backends} if ingress_backends else {},
             "ports": [{"protocol": "tcp", "target": 8000, "published": 8080, "mode": "ingress"}]},
            {"id": "s2", "name": "empty", "aliases": {}, "mode": "vip", "vips": {NET: EMPTY_VIP}, "backends": {},
             "ports": [{"protocol": "tcp", "target": 8000, "published": 8081, "mode": "ingress"}]},
        ],
    }


class Lab:
    """The namespaces and server processes of one test run."""

    def __init__(self) -> None:
        tag = f"slbt{os.getpid()}"
        self.ns = {n: f"{tag}-{n}" for n in ("node", "client", "outside", "stranger", "c1", "c2", "c3")}
        self.procs: list[subprocess.Popen] = []

    def build(self) -> None:
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        node = self.ns["node"]
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=node)
        for br, addrs in (("sbr-testnet00", ["10.60.0.1/24", f"{VIP}/32", f"{EMPTY_VIP}/32"]),
                          ("sbr-othernet0", ["10.62.0.1/24"])):
            sh("ip", "link", "add", br, "type", "bridge", ns=node)
            for a in addrs:
                sh("ip", "addr", "add", a, "dev", br, ns=node)
            sh("ip", "link", "set", br, "up", ns=node)
        ends = [("c1", "sbr-testnet00", "10.60.0.11/24", "10.60.0.1"),
                ("c2", "sbr-testnet00", "10.60.0.12/24", "10.60.0.1"),
                ("c3", "sbr-testnet00", "10.60.0.13/24", "10.60.0.1"),
                ("client", "sbr-testnet00", "10.60.0.20/24", None),
                ("stranger", "sbr-othernet0", "10.62.0.10/24", "10.62.0.1"),
                ("outside", None, "192.168.99.2/24", None)]
        for name, br, addr, gw in ends:
            host_end = f"v-{name}"
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", self.ns[name], ns=node)
            if br:
                sh("ip", "link", "set", host_end, "master", br, ns=node)
            else:
                sh("ip", "addr", "add", "192.168.99.1/24", "dev", host_end, ns=node)
            sh("ip", "link", "set", host_end, "up", ns=node)
            sh("ip", "addr", "add", addr, "dev", "eth0", ns=self.ns[name])
            sh("ip", "link", "set", "eth0", "up", ns=self.ns[name])
            if gw:
                sh("ip", "route", "add", "default", "via", gw, ns=self.ns[name])
        for name in ("c1", "c2", "c3"):
            self.procs.append(subprocess.Popen(["ip", "netns", "exec", self.ns[name], sys.executable, "-c", SERVER,
                                                name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        for ip in BACKENDS:
            while not self.get("node", ip, 8000, 1)[0].startswith("c"):
                assert time.monotonic() < deadline, f"backend {ip} did not start"
                time.sleep(0.2)

    def get(self, ns: str, host: str, port: int, n: int) -> list[str]:
        """``n`` HTTP GETs (new connection each) from namespace ``ns``: bodies or ``error <Exception>``."""
        return json.loads(sh(sys.executable, "-c", CLIENT, host, str(port), str(n), ns=self.ns[ns]))

    def sync(self, netmap: dict) -> None:
        """Apply ``netmap`` with :class:`LoadBalancer` inside the node namespace."""
        sh("env", f"PYTHONPATH={ROOT / 'src'}", sys.executable, "-c", DRIVER, ns=self.ns["node"],
           input=json.dumps(netmap))

    def teardown(self) -> None:
        for p in self.procs:  # ip netns exec execs the server: the PID is the server's
            p.kill()
            p.wait(timeout=10)
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()


def names(bodies: list[str]) -> Counter:
    return Counter(b.split()[0] for b in bodies)


def test_nft_accepts_the_rendered_ruleset() -> None:
    """``nft -c`` (check only) parses a ruleset with every kind of rule, in a throw-away network namespace."""
    script = render(netmap(BACKENDS)) + render(netmap([], ingress_backends=False))
    proc = subprocess.run(["unshare", "-n", "nft", "-c", "-f", "-"], input=script, text=True,
                          capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_isolation_before_rules(lab: Lab) -> None:
    """Without rules the stranger network can reach a backend through the node (proves the test below)."""
    assert lab.get("stranger", "10.60.0.11", 8000, 1)[0].startswith("c1 10.62.0.10")


def test_vip_round_robin(lab: Lab) -> None:
    lab.sync(netmap(BACKENDS))
    bodies = lab.get("client", VIP, 8000, 30)
    counts = names(bodies)
    assert set(counts) == {"c1", "c2", "c3"} and all(8 <= c <= 12 for c in counts.values()), bodies
    assert {b.split()[1] for b in bodies} == {"10.60.0.1"}  # SNAT to the node's own address


def test_scale_down_follows_at_once(lab: Lab) -> None:
    lab.sync(netmap(BACKENDS[:2]))
    counts = names(lab.get("client", VIP, 8000, 30))
    assert counts == Counter({"c1": 15, "c2": 15})
    lab.sync(netmap(BACKENDS))
    assert set(names(lab.get("client", VIP, 8000, 9))) == {"c1", "c2", "c3"}


def test_vip_without_backends_is_refused(lab: Lab) -> None:
    assert lab.get("client", EMPTY_VIP, 8000, 1) == ["error ConnectionRefusedError"]


def test_ingress_from_another_namespace(lab: Lab) -> None:
    bodies = lab.get("outside", "192.168.99.1", 8080, 30)
    counts = names(bodies)
    assert set(counts) == {"c1", "c2", "c3"} and all(8 <= c <= 12 for c in counts.values()), bodies
    assert {b.split()[1] for b in bodies} == {"10.60.0.1"}
    assert lab.get("outside", "192.168.99.1", 8081, 1) == ["error ConnectionRefusedError"]


def test_ingress_from_the_node_itself(lab: Lab) -> None:
    assert set(names(lab.get("node", "127.0.0.1", 8080, 6))) == {"c1", "c2", "c3"}
    assert set(names(lab.get("node", "192.168.99.1", 8080, 3))) == {"c1", "c2", "c3"}


def test_isolation_between_networks(lab: Lab) -> None:
    assert lab.get("stranger", "10.60.0.11", 8000, 1) == ["error TimeoutError"]  # forward: dropped
    assert lab.get("stranger", VIP, 8000, 1) == ["error ConnectionRefusedError"]  # VIP of another network
    # the routing mesh is for everyone, on the node's own addresses — not on overlay addresses
    assert lab.get("stranger", "192.168.99.1", 8080, 1)[0].startswith("c")
    assert lab.get("stranger", "10.62.0.1", 8080, 1) == ["error ConnectionRefusedError"]


RESYNC_DRIVER = """
import asyncio, json, subprocess, sys
from shoal.network.lb import LoadBalancer
async def main(m):
    lb = LoadBalancer()
    await lb.sync(m)
    subprocess.run(["nft", "delete", "table", "ip", "shoal"], check=True)
    await lb.sync(m)  # an unchanged map alone does not look at the kernel
    gone = subprocess.run(["nft", "list", "table", "ip", "shoal"], capture_output=True).returncode != 0
    await lb.sync(m, verify=True)  # the periodic resync does
    print(json.dumps({"gone": gone}))
asyncio.run(main(json.load(sys.stdin)))
"""


def test_resync_repairs_a_deleted_table(lab: Lab) -> None:
    out = sh("env", f"PYTHONPATH={ROOT / 'src'}", sys.executable, "-c", RESYNC_DRIVER, ns=lab.ns["node"],
             input=json.dumps(netmap(BACKENDS)))
    assert json.loads(out) == {"gone": True}
    assert set(names(lab.get("client", VIP, 8000, 6))) == {"c1", "c2", "c3"}


RETRY_DRIVER = """
import asyncio, json, subprocess, tempfile
from pathlib import Path
from shoal.network.agent import NetworkAgent

def table() -> str:
    return subprocess.run(["nft", "list", "table", "ip", "shoal"], capture_output=True, text=True).stdout

async def main():
    # another process owns table ip shoal (nft's owner flag): shoal's transaction is refused until it exits
    owner = subprocess.Popen(["nft", "-i"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    owner.stdin.write("add table ip shoal { flags owner; }\\n")
    owner.stdin.flush()
    while "table ip shoal" not in table():
        await asyncio.sleep(0.05)
    agent = NetworkAgent("n1", "unix:///nonexistent/engine.sock", Path(tempfile.mkdtemp()))
    await agent.start()
    await agent.apply({"node": {"id": "n1", "addr": ""}, "networks": {}, "peers": {}, "services": []})
    failed = "chain prerouting" not in table()
    owner.stdin.close()
    owner.wait()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while "chain prerouting" not in table() and loop.time() - t0 < 5:
        await asyncio.sleep(0.05)
    print(json.dumps({"failed_first": failed, "applied": "chain prerouting" in table(),
                      "after": round(loop.time() - t0, 2)}))
    await agent.stop()

asyncio.run(main())
"""


def test_failed_apply_is_retried() -> None:
    """A NetworkAgent whose nftables apply is refused retries on its own (every second) until it succeeds."""
    proc = subprocess.run(["unshare", "-n", "env", f"PYTHONPATH={ROOT / 'src'}", sys.executable, "-c", RETRY_DRIVER],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["failed_first"] and out["applied"], out
    assert out["after"] <= 2.5, out  # RETRY = 1 s


def test_clear_removes_the_table(lab: Lab) -> None:
    sh("env", f"PYTHONPATH={ROOT / 'src'}", sys.executable, "-c",
       "import asyncio\nfrom shoal.network.lb import LoadBalancer\nasyncio.run(LoadBalancer().clear())",
       ns=lab.ns["node"])
    assert "shoal" not in sh("nft", "list", "tables", ns=lab.ns["node"])
