"""Swarm-scoped networks: validating create requests, and the Engine API's view of them."""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import re

from shoal.model.errors import BadRequest, Conflict, InvalidArgument
from shoal.model.ids import new_id, now

INGRESS_NAME = "ingress"
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


def spec_from_request(req: dict) -> dict:
    """A network spec from ``POST /networks/create`` for the overlay driver (the request canonical, as
    shoal.api.decode makes it)."""
    name = req.get("Name") or ""
    if not name:
        raise BadRequest("network name is required")
    if not _NAME_RE.fullmatch(name):
        raise BadRequest(f'invalid name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed')
    if req.get("EnableIPv6"):
        raise InvalidArgument("IPv6 is not supported on shoal's overlay networks yet")
    ipam = req.get("IPAM") or {}
    configs = []
    for cfg in ipam.get("Config") or []:
        subnet = cfg.get("Subnet") or ""
        try:
            net = ipaddress.ip_network(subnet, strict=False) if subnet else None
        except ValueError:
            raise BadRequest(f"invalid subnet {subnet} : invalid CIDR address: {subnet}") from None
        if net is not None and net.version != 4:
            raise InvalidArgument("IPv6 is not supported on shoal's overlay networks yet")
        if net is not None and net.prefixlen > 29:
            raise InvalidArgument(f"subnet {subnet} is too small for a swarm network")
        gw = cfg.get("Gateway") or ""
        if gw:
            try:
                gwa = ipaddress.ip_address(gw)
            except ValueError:
                raise BadRequest(f"invalid gateway address {gw}") from None
            if net is not None and gwa not in net:
                raise BadRequest(f"gateway {gw} is not in subnet {subnet}")
        out = {"Subnet": str(net) if net else ""}
        if gw:
            out["Gateway"] = gw
        if cfg.get("IPRange"):
            out["Range"] = cfg["IPRange"]
        configs.append(out)
    if len(configs) > 1:
        raise InvalidArgument("shoal's overlay networks take a single subnet")
    return {
        "Name": name,
        "Labels": dict(req.get("Labels") or {}),
        "DriverConfiguration": {"Name": "overlay", "Options": dict(req.get("Options") or {})},
        "IPAMOptions": {"Driver": {"Name": (ipam.get("Driver") or "default"),
                                   "Options": ipam.get("Options") or {}}, "Configs": configs},
        "Attachable": bool(req.get("Attachable")),
        "Ingress": bool(req.get("Ingress")),
        "Internal": bool(req.get("Internal")),
        "Scope": "swarm",
    }


def new_network(spec: dict) -> dict:
    ts = now()
    return {"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": spec}


def ingress_spec() -> dict:
    """The ``ingress`` network made at ``swarm init``: as swarmkit's, no subnet of its own — the allocator
    gives it the first subnet of the default address pool (10.0.0.0/24 with Docker's 10.0.0.0/8)."""
    return spec_from_request({"Name": INGRESS_NAME, "Ingress": True})


def resource(net: dict) -> dict:
    """The Engine API's NetworkResource for a swarm network (``docker network ls/inspect``)."""
    spec = net["Spec"]
    ipam = net.get("IPAMOptions") or spec.get("IPAMOptions") or {}
    options = dict(spec["DriverConfiguration"].get("Options") or {})
    options.update((net.get("DriverState") or {}).get("Options") or {})
    return {
        "Name": spec["Name"],
        "Id": net["ID"],
        "Created": net.get("CreatedAt", ""),
        "Scope": "swarm",
        "Driver": "overlay",
        "EnableIPv6": False,
        "IPAM": {"Driver": (ipam.get("Driver") or {}).get("Name", "default"),
                 "Options": (ipam.get("Driver") or {}).get("Options") or None,
                 "Config": [{k: v for k, v in c.items() if k in ("Subnet", "Gateway")}
                            for c in ipam.get("Configs") or []]},
        "Internal": spec.get("Internal", False),
        "Attachable": spec.get("Attachable", False),
        "Ingress": spec.get("Ingress", False),
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": None,
        "Options": options,
        "Labels": copy.deepcopy(spec.get("Labels") or {}),
    }


def name_conflict(name: str) -> Conflict:
    return Conflict(f"network with name {name} already exists")


def valid_wg_key(text: object) -> bool:
    """A WireGuard key as ``wg`` writes it (a node's public key, a pre-shared key): 32 bytes in base64."""
    if not isinstance(text, str):
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False
