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


_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "Name": (str, "string"), "Driver": (str, "string"), "Scope": (str, "string"),
    "Internal": (bool, "bool"), "Attachable": (bool, "bool"), "Ingress": (bool, "bool"),
    "ConfigOnly": (bool, "bool"), "EnableIPv4": (bool, "bool"), "EnableIPv6": (bool, "bool"),
    "IPAM": (dict, "network.IPAM"), "ConfigFrom": (dict, "network.ConfigReference"),
    "Options": (dict, "map[string]string"), "Labels": (dict, "map[string]string"),
}


def _json_type(v: object) -> str:
    if isinstance(v, bool):
        return "bool"
    return {dict: "object", list: "array", str: "string"}.get(type(v), "number")


def _unmarshal_error(v: object, where: str, go_type: str) -> BadRequest:
    """What Go's JSON decoder says when a field has the wrong type (dockerd answers 400 with it)."""
    return BadRequest(f"json: cannot unmarshal {_json_type(v)} into Go struct field {where} of type {go_type}")


def _check_types(req: dict) -> None:
    for key, (want, go_type) in _FIELDS.items():
        v = req.get(key)
        if v is not None and (not isinstance(v, want) or (want is not bool and isinstance(v, bool))):
            raise _unmarshal_error(v, f"NetworkCreateRequest.{key}", go_type)
    for key in ("Options", "Labels"):
        for v in (req.get(key) or {}).values():
            if not isinstance(v, str):
                raise _unmarshal_error(v, f"NetworkCreateRequest.{key}", "string")
    ipam = req.get("IPAM") or {}
    for key, go_type in (("Driver", "string"), ("Config", "[]network.IPAMConfig"), ("Options", "map[string]string")):
        v = ipam.get(key)
        want = list if key == "Config" else dict if key == "Options" else str
        if v is not None and not isinstance(v, want):
            raise _unmarshal_error(v, f"IPAM.{key}", go_type)
    for cfg in ipam.get("Config") or []:
        if not isinstance(cfg, dict):
            raise _unmarshal_error(cfg, "IPAM.Config", "network.IPAMConfig")
        for key in ("Subnet", "IPRange", "Gateway"):
            v = cfg.get(key)
            if v is not None and not isinstance(v, str):
                raise _unmarshal_error(v, f"IPAMConfig.{key}", "string")


def spec_from_request(req: object) -> dict:
    """A network spec from ``POST /networks/create`` for the overlay driver."""
    if not isinstance(req, dict):
        raise BadRequest("json: cannot unmarshal into Go value of type types.NetworkCreateRequest")
    _check_types(req)
    name = req.get("Name") or ""
    if not isinstance(name, str) or not name:
        raise BadRequest("network name is required") if not name else BadRequest("invalid network name")
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
    labels = req.get("Labels") or {}
    if not isinstance(labels, dict):
        raise BadRequest("json: cannot unmarshal into Go struct field NetworkCreateRequest.Labels")
    return {
        "Name": name,
        "Labels": labels,
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
