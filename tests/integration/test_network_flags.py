"""Network flags through the real v28 CLI against one shoald: the ingress network at init (default and
from ``--default-addr-pool``), ``network create -d overlay --gateway/--attachable/--label``, a subnet from
the pool when none is given, and a published-port conflict on ``service update``."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator

import pytest
from conftest import Shoald, started_shoald

pytestmark = pytest.mark.integration

IMAGE = "shoal/demo-busybox:latest"


@pytest.fixture(scope="module")
def d(docker_engine) -> Iterator[Shoald]:
    """A shoald not yet in a swarm (the tests init it themselves, in order)."""
    with started_shoald() as daemon:
        yield daemon


def inspect(d: Shoald, *args: str) -> dict:
    return json.loads(d.docker(*args, "--format", "{{json .}}").stdout)


def test_ingress_at_init(d: Shoald) -> None:
    d.docker("swarm", "init")
    ing = inspect(d, "network", "inspect", "ingress")
    assert ing["Ingress"] is True and ing["Driver"] == "overlay" and ing["Scope"] == "swarm"
    assert ing["IPAM"]["Config"] == [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]
    d.docker("swarm", "leave", "--force")


def test_default_addr_pool(d: Shoald) -> None:
    """As swarmkit: the ingress network has no subnet of its own, so it gets the pool's first one too."""
    d.docker("swarm", "init", "--default-addr-pool", "10.20.0.0/16", "--default-addr-pool-mask-length", "26")
    info = json.loads(d.docker("info", "--format", "{{json .Swarm.Cluster}}").stdout)
    assert info["DefaultAddrPool"] == ["10.20.0.0/16"] and info["SubnetSize"] == 26
    ing = inspect(d, "network", "inspect", "ingress")
    assert ing["IPAM"]["Config"] == [{"Subnet": "10.20.0.0/26", "Gateway": "10.20.0.1"}]
    d.docker("network", "create", "-d", "overlay", "pooled")
    cfg = inspect(d, "network", "inspect", "pooled")["IPAM"]["Config"]
    assert cfg == [{"Subnet": "10.20.0.64/26", "Gateway": "10.20.0.65"}]
    d.docker("service", "create", "-d", "--name", "onpool", "--replicas", "0", "--network", "pooled", IMAGE,
             "sleep", "600")
    vips = json.loads(d.docker("service", "inspect", "onpool", "--format", "{{json .Endpoint.VirtualIPs}}").stdout)
    assert len(vips) == 1 and ipaddress.ip_interface(vips[0]["Addr"]).ip in ipaddress.ip_network("10.20.0.64/26")


def test_gateway_attachable_label(d: Shoald) -> None:
    d.docker("network", "create", "-d", "overlay", "--subnet", "172.28.0.0/24", "--gateway", "172.28.0.254",
             "--attachable", "--label", "team=blue", "--label", "tier=back", "gwnet")
    net = inspect(d, "network", "inspect", "gwnet")
    assert net["IPAM"]["Config"] == [{"Subnet": "172.28.0.0/24", "Gateway": "172.28.0.254"}]
    assert net["Attachable"] is True and net["Ingress"] is False
    assert net["Labels"] == {"team": "blue", "tier": "back"}
    assert d.docker("network", "ls", "--filter", "label=team=blue", "--format", "{{.Name}} {{.Driver}} {{.Scope}}"
                    ).stdout.split("\n")[0] == "gwnet overlay swarm"
    assert inspect(d, "network", "inspect", "pooled")["Attachable"] is False
    d.docker("service", "create", "-d", "--name", "ongw", "--replicas", "0", "--network", "gwnet", IMAGE,
             "sleep", "600")
    vip = json.loads(d.docker("service", "inspect", "ongw", "--format", "{{json .Endpoint.VirtualIPs}}").stdout)
    addr = ipaddress.ip_interface(vip[0]["Addr"])
    assert addr.network == ipaddress.ip_network("172.28.0.0/24") and str(addr.ip) != "172.28.0.254"


def test_port_conflict_on_update(d: Shoald) -> None:
    """``service update --publish-add`` of a port another service publishes: Docker's error, nothing changed."""
    d.docker("service", "create", "-d", "--name", "holder", "--replicas", "0", "-p", "8085:80", IMAGE, "sleep", "600")
    d.docker("service", "create", "-d", "--name", "other", "--replicas", "0", "-p", "8086:80", IMAGE, "sleep", "600")
    holder_id = d.docker("service", "inspect", "holder", "--format", "{{.ID}}").stdout.strip()
    before = inspect(d, "service", "inspect", "other")
    cp = d.docker("service", "update", "--publish-add", "8085:81", "other", check=False)
    assert cp.returncode == 1
    assert (f"port '8085' is already in use by service 'holder' ({holder_id}) as an ingress port"
            in cp.stderr), cp.stderr
    after = inspect(d, "service", "inspect", "other")
    assert after["Version"] == before["Version"] and after["Spec"] == before["Spec"]
    assert after["Endpoint"] == before["Endpoint"]
    # replacing its own port (--publish-rm takes the target port) by the holder's: still refused
    cp = d.docker("service", "update", "--publish-rm", "80", "--publish-add", "8085:80", "other", check=False)
    assert cp.returncode == 1 and "port '8085' is already in use by service 'holder'" in cp.stderr
    assert inspect(d, "service", "inspect", "other")["Endpoint"] == before["Endpoint"]
    # once the holder lets it go, the update goes through
    d.docker("service", "update", "-d", "--publish-rm", "80", "holder")
    d.docker("service", "update", "-d", "--publish-add", "8085:81", "other")
    ports = inspect(d, "service", "inspect", "other")["Endpoint"]["Ports"]
    assert {(p["PublishedPort"], p["TargetPort"]) for p in ports} == {(8085, 81), (8086, 80)}
