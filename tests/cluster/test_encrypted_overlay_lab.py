"""Encrypted overlay networks (``docker network create --opt encrypted``) across lab hosts: the traffic
between nodes is captured on the LAN and holds no cleartext of a request body (a clear network's does,
in the same capture), the keys are rotated while the service keeps answering, and a fresh handshake
after the rotations works with the current key. The leader here rotates every few seconds
(``SHOAL_OVERLAY_KEY_ROTATION``) instead of every 12 h."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import module_lab, wait_for

from shoal.lab.lab import Lab
from shoal.lab.lan import BRIDGE, LAN_NS

pytestmark = pytest.mark.lab

WEB = "shoal/demo-web:latest"
BOX = "shoal/demo-busybox:latest"
ROTATION = 3  # seconds between two keys of a network


@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    old = os.environ.get("SHOAL_OVERLAY_KEY_ROTATION")
    os.environ["SHOAL_OVERLAY_KEY_ROTATION"] = str(ROTATION)  # the lab's shoalds take the test's environment
    try:
        with module_lab(workers=2, swarm=True) as the_lab:
            yield the_lab
    finally:
        if old is None:
            os.environ.pop("SHOAL_OVERLAY_KEY_ROTATION", None)
        else:
            os.environ["SHOAL_OVERLAY_KEY_ROTATION"] = old


def mgr(lab: Lab, *args: str, check: bool = True):
    return lab.docker("manager", *args, check=check)


def container_of(lab: Lab, host: str, service: str) -> str:
    cp = lab.engine_docker(host, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}",
                           check=False)
    return cp.stdout.split()[0] if cp.stdout.split() else ""


def wg(lab: Lab, host: str, *args: str) -> str:
    return lab.exec(host, "wg", "show", *args, check=True).stdout


def psk_of(lab: Lab, host: str, iface: str) -> set[str]:
    return {line.split()[1] for line in wg(lab, host, iface, "preshared-keys").splitlines()}


def post(lab: Lab, host: str, cid: str, url: str, body: str) -> str:
    # busybox's wget -T crashes here: the image's timeout applet bounds it instead
    cp = lab.engine_docker(host, "exec", cid, "timeout", "5", "wget", "-qO-", f"--post-data={body}", url, check=False)
    return cp.stdout.strip() if cp.returncode == 0 else f"FAIL {cp.stderr.strip()[-200:]}"


class Capture:
    """tcpdump on the lab's LAN bridge, every UDP packet, whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        argv = ["ip", "netns", "exec", LAN_NS, "tcpdump", "-i", BRIDGE, "--immediate-mode", "-U", "-s", "0",
                "-w", str(path), "udp"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on lan0 ..." once it captures
        assert "listening on" in line, line

    def stop(self) -> bytes:
        time.sleep(0.5)  # what is still on its way through the LAN
        self.proc.terminate()
        self.proc.wait(timeout=10)
        return self.path.read_bytes()

    def count(self, expr: str) -> int:
        cp = subprocess.run(["tcpdump", "-nn", "-r", str(self.path), expr], capture_output=True, text=True,
                            check=True)
        return len(cp.stdout.splitlines())


def test_encrypted_network_traffic_is_never_clear_and_survives_rotation(lab: Lab, tmp_path: Path) -> None:
    mgr(lab, "network", "create", "-d", "overlay", "--opt", "encrypted", "sec")
    mgr(lab, "network", "create", "-d", "overlay", "plain")
    sec_id = mgr(lab, "network", "inspect", "-f", "{{.Id}}", "sec").stdout.strip()
    assert "encrypted" in json.loads(mgr(lab, "network", "inspect", "-f", "{{json .Options}}", "sec").stdout)
    iface = "swg-" + sec_id[:10]
    # the server on worker1, the client on worker2: every request crosses the LAN
    mgr(lab, "service", "create", "--detach", "--name", "web", "--network", "sec", "--network", "plain",
        "--constraint", "node.hostname==worker1", WEB)
    mgr(lab, "service", "create", "--detach", "--name", "client", "--network", "sec", "--network", "plain",
        "--constraint", "node.hostname==worker2", BOX, "sleep", "3600")
    wait_for(lambda: container_of(lab, "worker1", "web"), 60, "the web task")
    client = wait_for(lambda: container_of(lab, "worker2", "client"), 60, "the client task")
    vips = {v["NetworkID"]: v["Addr"].split("/")[0] for v in json.loads(
        mgr(lab, "service", "inspect", "-f", "{{json .Endpoint.VirtualIPs}}", "web").stdout)}
    plain_id = mgr(lab, "network", "inspect", "-f", "{{.Id}}", "plain").stdout.strip()
    # the page that answers a POST: a CGI script
    sec_url, plain_url = (f"http://{vips[n]}/cgi-bin/index.cgi" for n in (sec_id, plain_id))
    wait_for(lambda: post(lab, "worker2", client, sec_url, "warm-up").startswith("Hello from"), 30,
             "the web service over the encrypted network")

    # each node on the network has its tunnel, with the other as peer and the same pre-shared key
    peers1, peers2 = wg(lab, "worker1", iface, "endpoints"), wg(lab, "worker2", iface, "endpoints")
    assert "192.168.77.12:" in peers1 and "192.168.77.11:" in peers2
    # the manager runs no task on the network: no tunnel there (its map has no key: test_encrypted_overlay.py)
    assert lab.exec("manager", "wg", "show", iface, check=False).returncode != 0
    first = psk_of(lab, "worker1", iface)

    capture = Capture(tmp_path / "lan.pcap")
    secret_body, clear_body = f"sec-{secrets.token_hex(16)}", f"plain-{secrets.token_hex(16)}"
    # requests every ~0.1 s for 3 rotation periods: none fails while the keys change
    answers, deadline = [], time.monotonic() + 3 * ROTATION + 1
    while time.monotonic() < deadline:
        answers.append(post(lab, "worker2", client, sec_url, secret_body))
    assert answers and all(a.startswith("Hello from") for a in answers), [a for a in answers if "Hello" not in a]
    assert post(lab, "worker2", client, plain_url, clear_body).startswith("Hello from")
    data = capture.stop()

    assert clear_body.encode() in data  # the capture sees the LAN: the clear network's body is in it
    assert secret_body.encode() not in data
    assert data.count(b"Hello from") <= 2  # the clear network's one answer (perhaps resent), none of the others
    assert capture.count("udp portrange 51820-51900") >= 2 * len(answers)  # request and answer, as WireGuard
    # the keys changed, and every node got the same one
    rotated = wait_for(lambda: (k := psk_of(lab, "worker1", iface)) != first and k == psk_of(lab, "worker2", iface)
                       and k, 15, "a rotated key on both nodes")
    assert len(rotated) == 1

    # a fresh handshake works with the current key: drop worker2's session, shoald puts the peer back
    key1 = wg(lab, "worker1", iface, "public-key").strip()
    lab.exec("worker2", "wg", "set", iface, "peer", key1, "remove", check=True)
    wait_for(lambda: key1 in wg(lab, "worker2", iface, "peers"), 15, "the peer restored by the resync")
    assert wait_for(lambda: post(lab, "worker2", client, sec_url, "after").startswith("Hello from"), 20,
                    "an answer after a new handshake")
    handshakes = {line.split()[0]: int(line.split()[1]) for line in
                  wg(lab, "worker2", iface, "latest-handshakes").splitlines()}
    assert time.time() - handshakes[key1] < 30
