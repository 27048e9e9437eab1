"""The node's description (``Node.Description``): what its engine says about the host."""

from __future__ import annotations

import contextlib
import socket

from shoal.engine import Engine
from shoal.model.labels import PLUGIN_DRIVER
from shoal.model.service import SECOND
from shoal.tls.certs import issuer_of, tls_info
from shoal.tls.files import NodeTLS

# Always listed, whatever networks the engine has at the moment: Docker lists its built-in multi-host
# driver ``overlay``; shoal's own driver (the engine-local twins of swarm networks) is served by this
# shoald. The engine names a network driver in ``/info`` only while a network of it exists, so without
# these the description (and the node's version) would change each time the first twin is made or the
# last one pruned, and a client's inspect-then-update of the node could race it.
NETWORK_DRIVERS = ("overlay", PLUGIN_DRIVER)


async def describe(engine: Engine, tls: NodeTLS) -> dict:
    """Hostname, platform, resources (with the engine's generic resources), engine version, labels and
    plugins (from ``GET /info``, as Docker's executor describes a node: plugins sorted by type and name),
    and the TLS information of the swarm's root CA."""
    info = await engine.get_json("/info")
    labels = {}
    for item in info.get("Labels") or []:
        k, sep, v = item.partition("=")
        if sep:
            labels[k] = v
    plugins = info.get("Plugins") or {}
    named = {(kind, n) for kind in ("Volume", "Network", "Authorization", "Log") for n in plugins.get(kind) or []}
    named |= {("Network", n) for n in NETWORK_DRIVERS}
    engine: dict = {"EngineVersion": info.get("ServerVersion", ""),
                    "Plugins": [{"Type": kind, "Name": n} for kind, n in sorted(named)]}
    if labels:  # none: left out, as Docker answers
        engine["Labels"] = labels
    resources = {"NanoCPUs": int(info.get("NCPU", 1)) * SECOND, "MemoryBytes": int(info.get("MemTotal", 0))}
    if info.get("GenericResources"):  # the engine's node-generic-resources (e.g. gpu=UUID, ssd=2)
        resources["GenericResources"] = info["GenericResources"]
    return {
        "Hostname": info.get("Name") or socket.gethostname(),
        "Platform": {"Architecture": info.get("Architecture", "x86_64"), "OS": info.get("OSType", "linux")},
        "Resources": resources,
        "Engine": engine,
        "TLSInfo": _tls_info(tls),
    }


def _tls_info(tls: NodeTLS) -> dict:
    """The root this node trusts, and the CA that issued its certificate (moby's ``TLSInfo``)."""
    with contextlib.suppress(OSError, ValueError):
        trust = tls.ca.read_bytes()
        return tls_info(trust, issuer_of(tls.cert.read_bytes(), trust))
    return {}
