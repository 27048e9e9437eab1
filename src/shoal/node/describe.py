"""The node's description (``Node.Description``): what its engine says about the host."""

from __future__ import annotations

import contextlib
import socket

from shoal.engine import Engine
from shoal.model.service import SECOND
from shoal.tls.certs import issuer_of, tls_info
from shoal.tls.files import NodeTLS


async def describe(engine: Engine, tls: NodeTLS) -> dict:
    """Hostname, platform, resources, engine version, labels and plugins (from ``GET /info``), and the
    TLS information of the swarm's root CA."""
    info = await engine.get_json("/info")
    labels = {}
    for item in info.get("Labels") or []:
        k, _, v = item.partition("=")
        labels[k] = v
    plugins = info.get("Plugins") or {}
    return {
        "Hostname": info.get("Name") or socket.gethostname(),
        "Platform": {"Architecture": info.get("Architecture", "x86_64"), "OS": info.get("OSType", "linux")},
        "Resources": {"NanoCPUs": int(info.get("NCPU", 1)) * SECOND, "MemoryBytes": int(info.get("MemTotal", 0))},
        "Engine": {"EngineVersion": info.get("ServerVersion", ""), "Labels": labels,
                   "Plugins": [{"Type": kind, "Name": n} for kind in ("Log", "Network", "Volume")
                               for n in plugins.get(kind) or []]},
        "TLSInfo": _tls_info(tls),
    }


def _tls_info(tls: NodeTLS) -> dict:
    """The root this node trusts, and the CA that issued its certificate (moby's ``TLSInfo``)."""
    with contextlib.suppress(OSError, ValueError):
        trust = tls.ca.read_bytes()
        return tls_info(trust, issuer_of(tls.cert.read_bytes(), trust))
    return {}
