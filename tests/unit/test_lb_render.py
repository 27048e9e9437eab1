"""The nftables ruleset rendered from a network map (no kernel needed)."""

from __future__ import annotations

import re

from shoal.network.lb import bridge_name, render

ING = "ingressnet0123456789"
APP = "appnet00001234567890"
OTHER = "othernet001234567890"

NETMAP = {
    "node": {"id": "n1", "addr": "192.168.77.10"},
    "networks": {
        ING: {"name": "ingress", "vni": 4096, "subnet": "10.0.0.0/24", "gateway": "10.0.0.1", "ingress": True,
              "internal": False, "local_addr": "10.0.0.3/24"},
        APP: {"name": "app", "vni": 4097, "subnet": "10.0.1.0/24", "gateway": "10.0.1.1", "ingress": False,
              "internal": False, "local_addr": "10.0.1.3/24"},
        OTHER: {"name": "other", "vni": 4098, "subnet": "10.0.2.0/24", "gateway": "10.0.2.1", "ingress": False,
                "internal": False, "local_addr": None},
    },
    "peers": {},
    "services": [
        {"id": "s1", "name": "web", "aliases": {}, "mode": "vip",
         "vips": {ING: "10.0.0.2", APP: "10.0.1.2"},
         "backends": {ING: ["10.0.0.7", "10.0.0.8", "10.0.0.9"], APP: ["10.0.1.7", "10.0.1.8", "10.0.1.9"]},
         "ports": [{"protocol": "tcp", "target": 80, "published": 8080, "mode": "ingress"},
                   {"protocol": "tcp", "target": 443, "published": 8443, "mode": "host"}]},
        {"id": "s2", "name": "db", "aliases": {}, "mode": "dnsrr", "vips": {},
         "backends": {APP: ["10.0.1.20", "10.0.1.21"]}, "ports": []},
        {"id": "s3", "name": "empty", "aliases": {}, "mode": "vip", "vips": {APP: "10.0.1.4", ING: "10.0.0.4"},
         "backends": {}, "ports": [{"protocol": "udp", "target": 53, "published": 5353, "mode": "ingress"}]},
        {"id": "s4", "name": "far", "aliases": {}, "mode": "vip", "vips": {OTHER: "10.0.2.2"},
         "backends": {OTHER: ["10.0.2.7"]}, "ports": []},
    ],
}


def chain(text: str, name: str) -> list[str]:
    """The rules of one chain of the rendered text."""
    body = re.search(rf"chain {name} {{\n(.*?)\n\t}}", text, re.S)
    assert body, f"no chain {name}"
    return [line.strip() for line in body.group(1).splitlines()[1:]]


def test_whole_table_is_recreated_in_one_script() -> None:
    text = render(NETMAP)
    assert text.startswith("table ip shoal\ndelete table ip shoal\ntable ip shoal {\n")
    assert render(NETMAP) == text  # deterministic: unchanged maps are not re-applied


def test_vip_dnat_round_robin_per_network() -> None:
    pre = chain(render(NETMAP), "prerouting")
    br = bridge_name(APP)
    assert br == "sbr-appnet0000"
    assert (f'iifname "{br}" ip daddr 10.0.1.2 meta l4proto {{ tcp, udp, sctp }} dnat to numgen inc mod 3 '
            'map { 0 : 10.0.1.7, 1 : 10.0.1.8, 2 : 10.0.1.9 } comment "web"') in pre
    assert any(f'iifname "{bridge_name(ING)}" ip daddr 10.0.0.2' in r and "10.0.0.9" in r for r in pre)
    out = chain(render(NETMAP), "output")
    assert any(r.startswith("ip daddr 10.0.1.2 ") and "numgen inc mod 3" in r for r in out)


def test_dnsrr_service_has_no_vip_rules() -> None:
    text = render(NETMAP)
    assert "10.0.1.20" not in text and '"db"' not in text


def test_ingress_port_dnat_to_target_port() -> None:
    text = render(NETMAP)
    # the mesh answers on the node's own addresses, never on overlay VIPs or bridge addresses
    rule = ("fib daddr type local ip daddr != { 10.0.0.2, 10.0.0.4, 10.0.1.2, 10.0.1.3, 10.0.1.4 } "
            "tcp dport 8080 dnat to numgen inc mod 3 "
            'map { 0 : 10.0.0.7, 1 : 10.0.0.8, 2 : 10.0.0.9 } : 80 comment "web 8080/tcp"')
    assert rule in chain(text, "prerouting")
    assert rule in chain(text, "output")
    assert "8443" not in text  # mode=host ports are the engine's business


def test_snat_to_own_address_per_network() -> None:
    post = chain(render(NETMAP), "postrouting")
    assert f'oifname "{bridge_name(APP)}" ct status dnat snat to 10.0.1.3' in post
    assert f'oifname "{bridge_name(ING)}" ct status dnat snat to 10.0.0.3' in post
    assert not any(bridge_name(OTHER) in r for r in post)


def test_no_backends_rejects() -> None:
    text = render(NETMAP)
    assert "10.0.1.4" not in chain(text, "prerouting")
    inp = chain(text, "input")
    assert "ip daddr { 10.0.0.2, 10.0.0.4, 10.0.1.2, 10.0.1.4 } meta l4proto tcp reject with tcp reset" in inp
    assert "ip daddr { 10.0.0.2, 10.0.0.4, 10.0.1.2, 10.0.1.4 } meta l4proto { udp, sctp } reject" in inp
    assert 'udp dport 5353 reject comment "empty 5353/udp"' in inp
    assert "dport 5353" not in "\n".join(chain(text, "prerouting"))


def test_network_without_own_address_gets_no_vip() -> None:
    text = render(NETMAP)
    assert "10.0.2.2" not in text and "10.0.2.7" not in text


def test_isolation_between_bridges() -> None:
    fwd = chain(render(NETMAP), "forward")
    assert fwd[0] == 'oifname "sbr-*" ct state established,related accept'
    for nid in (ING, APP, OTHER):
        br = bridge_name(nid)
        assert f'oifname "{br}" iifname != "{br}" ct status & dnat == 0 drop' in fwd


def test_empty_map() -> None:
    text = render({"node": {"id": "n1", "addr": ""}, "networks": {}, "peers": {}, "services": []})
    assert chain(text, "prerouting") == [] and chain(text, "postrouting") == []
