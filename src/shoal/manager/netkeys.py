"""The encrypted overlays' keys (``docker network create --opt encrypted``), made and rotated by the leader.

- Per encrypted network a ``netkeys`` object (its ID is the network's): the WireGuard pre-shared key,
  sealed like a secret's data (:class:`~shoal.manager.secrets.Sealer`: AES-256-GCM under the cluster's
  data key, kind and ID as associated data), the tunnels' UDP port (unique among encrypted
  networks, from 51820) and when the key was made. A new key replaces it every ``rotation`` seconds
  (Docker rotates its IPsec keys every 12 h); a network's removal removes its keys.
- Per node a ``nodekeys`` object (its ID is the node's): its WireGuard public key, as its agent sent it
  when its session opened (written by the dispatcher; the private key never leaves the node). A removed
  node's is removed.

Only :func:`shoal.manager.netmap.compute` opens a pre-shared key, for a node on that network.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable

from shoal.manager.controller import Controller, commit_all
from shoal.manager.secrets import Sealer, SealError
from shoal.model.ids import now
from shoal.model.views import NetworkView
from shoal.store.objects import Change, Objects

log = logging.getLogger(__name__)

ROTATION = 12 * 3600.0  # seconds between two pre-shared keys of a network (Docker: 12 h)
BASE_PORT = 51820  # the first tunnels' UDP port (WireGuard's usual)


def new_psk() -> bytes:
    return base64.b64encode(os.urandom(32))


def open_psk(objs: Objects, sealer: Sealer | None, net_id: str) -> tuple[str, int] | None:
    """A network's pre-shared key (base64, as ``wg`` takes it) and port; None without keys yet."""
    keys = objs.get("netkeys", net_id)
    if keys is None or sealer is None:
        return None
    try:
        return sealer.open("netkeys", net_id, keys["Sealed"]).decode(), int(keys["Port"])
    except (SealError, KeyError, ValueError) as e:
        log.error("netkeys: cannot open the key of network %s: %s", net_id, e)
        return None


def node_public_keys(objs: Objects) -> dict[str, str]:
    """Node ID → its WireGuard public key."""
    return {k["ID"]: k["PublicKey"] for k in objs.list("nodekeys") if k.get("PublicKey")}


async def set_node_key(objs: Objects, node_id: str, public_key: str) -> None:
    """Record a node's public key (no write when it is the one recorded)."""
    cur = objs.get("nodekeys", node_id)
    if cur is None:
        await objs.create("nodekeys", {"ID": node_id, "CreatedAt": now(), "UpdatedAt": now(),
                                       "PublicKey": public_key})
    elif cur.get("PublicKey") != public_key:
        await objs.update("nodekeys", {**cur, "PublicKey": public_key, "UpdatedAt": now()})


class NetworkKeys(Controller):
    """Makes each encrypted network's keys, rotates them, removes those of networks and nodes gone."""

    kinds = ("networks", "netkeys", "nodes", "nodekeys")
    name = "netkeys"

    def __init__(self, objs: Objects, sealer: Sealer | None, rotation: float = ROTATION,
                 wall: Callable[[], float] = time.time) -> None:
        super().__init__(objs)
        self.sealer = sealer
        self.rotation = rotation
        self.wall = wall  # seconds since the epoch: a key's age outlives a change of leader

    def next_timer(self) -> float | None:
        if self.sealer is None:  # no data key: nothing can be rotated here
            return None
        due = [k.get("RotatedAt", 0.0) + self.rotation for k in self.objs.list("netkeys")]
        return max(0.0, min(due) - self.wall()) if due else None

    def _keys(self, net_id: str, port: int, created: str | None = None) -> dict:
        assert self.sealer is not None
        ts = now()
        return {"ID": net_id, "CreatedAt": created or ts, "UpdatedAt": ts, "Port": port,
                "Sealed": self.sealer.seal("netkeys", net_id, new_psk()), "RotatedAt": self.wall()}

    async def reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        encrypted = {n["ID"] for n in self.objs.list("networks") if NetworkView(n).encrypted}
        keys = {k["ID"]: k for k in self.objs.list("netkeys")}
        out: list[Change] = []
        for nid, k in keys.items():
            if nid not in encrypted:
                out.append(Change("netkeys", k, delete=True))
            elif self.sealer is not None and self.wall() >= k.get("RotatedAt", 0.0) + self.rotation:
                log.info("netkeys: rotating the key of network %s", nid)
                out.append(Change("netkeys", {**self._keys(nid, k["Port"], k.get("CreatedAt")),
                                              "Version": k.get("Version")}))
        missing = sorted(encrypted - set(keys))
        if missing and self.sealer is None:
            log.error("netkeys: no data key on this leader: encrypted networks get no keys (and no traffic)")
            missing = []
        used = {k.get("Port") for k in keys.values()}
        port = BASE_PORT
        for nid in missing:
            while port in used:
                port += 1
            used.add(port)
            out.append(Change("netkeys", self._keys(nid, port), create=True))
        nodes = {n["ID"] for n in self.objs.list("nodes")}
        out += [Change("nodekeys", k, delete=True) for k in self.objs.list("nodekeys") if k["ID"] not in nodes]
        if out:
            await commit_all(self.objs, out)
