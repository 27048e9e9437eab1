"""Swarm events for ``docker events``, derived from the store's changes on every manager.

A watcher on the object cache compares each changed service, node, network, secret and config with the
version seen before and records Docker's event for it (Type, Action create|update|remove, Actor with
``name`` and, for updates, the ``*.old``/``*.new`` attributes moby's daemon adds, scope ``swarm``).
The last events are kept for ``--since``; subscribers get new ones as they happen. A subscriber that falls
``BACKLOG`` events behind is cut off (its queue ends with ``None``); publishing never waits for anyone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING

from shoal.model.views import NodeView, ServiceView

if TYPE_CHECKING:
    from shoal.store.objects import Objects

KINDS = {"services": "service", "nodes": "node", "networks": "network", "secrets": "secret", "configs": "config"}
HISTORY = 1024
BACKLOG = 1024  # events a subscriber may have unread before it is cut off


def parse_time_ns(value: str | None) -> int | None:
    """An RFC 3339 timestamp (nanoseconds allowed) as Unix nanoseconds."""
    if not value:
        return None
    head, dot, frac = value.rstrip("Z").partition(".")
    tz = ""
    for sign in ("+", "-"):
        if sign in frac:
            frac, _, tz = frac.partition(sign)
            tz = sign + tz
    try:
        base = datetime.fromisoformat(head + (tz or "+00:00"))
    except ValueError:
        return None
    return int(base.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9] if dot else 0)


def _lower(value: object) -> str:
    return str(value).lower()


def _node_changes(old_raw: dict, new_raw: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    old, new = NodeView(old_raw), NodeView(new_raw)
    pairs = (("availability", old.spec.get("Availability"), new.spec.get("Availability")),
             ("role", old.spec.get("Role"), new.spec.get("Role")),
             ("state", old.status.get("State"), new.status.get("State")))
    for key, a, b in pairs:
        if a != b:
            out[f"{key}.old"], out[f"{key}.new"] = _lower(a or ""), _lower(b or "")
    oms, nms = old.manager_status, new.manager_status
    if oms and nms:
        if bool(oms.get("Leader")) != bool(nms.get("Leader")):
            out["leader.old"], out["leader.new"] = _lower(bool(oms.get("Leader"))), _lower(bool(nms.get("Leader")))
        if oms.get("Reachability") != nms.get("Reachability"):
            out["reachability.old"], out["reachability.new"] = oms.get("Reachability", ""), nms.get("Reachability", "")
    return out


def _image(svc: ServiceView) -> str:
    return (svc.task_template.get("ContainerSpec") or {}).get("Image") or ""


def _service_changes(old_raw: dict, new_raw: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    old, new = ServiceView(old_raw), ServiceView(new_raw)
    if _image(old) != _image(new):
        out["image.old"], out["image.new"] = _image(old), _image(new)
    if old.mode == new.mode == "replicated" and old.replicas != new.replicas:
        out["replicas.old"], out["replicas.new"] = str(old.replicas), str(new.replicas)
    ous, nus = old.update_status, new.update_status
    if nus:
        if not ous:
            out["updatestate.new"] = nus.get("State", "")
        elif ous.get("State") != nus.get("State"):
            out["updatestate.old"], out["updatestate.new"] = ous.get("State", ""), nus.get("State", "")
    return out


def make_event(kind: str, action: str, obj: dict, old: dict | None) -> dict:
    """Docker's events.Message for a change of a swarm object."""
    etype = KINDS[kind]
    name = NodeView(obj).name if kind == "nodes" else (obj.get("Spec") or {}).get("Name", "")
    attrs = {"name": name}
    if action == "update" and old is not None:
        if kind == "nodes":
            attrs.update(_node_changes(old, obj))
        elif kind == "services":
            attrs.update(_service_changes(old, obj))
    ts = {"create": parse_time_ns(obj.get("CreatedAt")), "update": parse_time_ns(obj.get("UpdatedAt"))}.get(action)
    if ts is None:
        ts = time.time_ns()
    return {"Type": etype, "Action": action, "Actor": {"ID": obj["ID"], "Attributes": attrs},
            "scope": "swarm", "time": ts // 1_000_000_000, "timeNano": ts}


class SwarmEvents:
    """Records swarm events from one manager's object cache; a ring of the last ones plus subscribers."""

    def __init__(self, history: int = HISTORY, backlog: int = BACKLOG) -> None:
        self.history: deque[dict] = deque(maxlen=history)
        self.backlog = backlog
        self._subscribers: set[asyncio.Queue[dict | None]] = set()

    def subscribe(self) -> asyncio.Queue[dict | None]:
        """New events from now on; ``None`` ends them (this subscriber was cut off)."""
        q: asyncio.Queue[dict | None] = asyncio.Queue(maxsize=self.backlog + 1)  # + 1: room for the end
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict | None]) -> None:
        self._subscribers.discard(q)

    def publish(self, event: dict) -> None:
        self.history.append(event)
        for q in list(self._subscribers):
            if q.qsize() < self.backlog:
                q.put_nowait(event)
            else:  # a reader that fell this far behind is cut off, never silently short of events
                q.put_nowait(None)
                self._subscribers.discard(q)

    async def run(self, objs: Objects) -> None:
        """Follow the cache until cancelled (one run per store; the history outlives it)."""
        seen = {kind: {o["ID"]: o for o in objs.list(kind)} for kind in KINDS}
        watcher = objs.watcher(KINDS)
        try:
            while True:
                changes = await watcher.wait()
                for kind, oid in sorted(changes):
                    old, new = seen[kind].get(oid), objs.get(kind, oid)
                    if new is None:
                        if old is not None:
                            del seen[kind][oid]
                            self.publish(make_event(kind, "remove", old, None))
                        continue
                    seen[kind][oid] = new
                    if old is None:
                        self.publish(make_event(kind, "create", new, None))
                    elif old.get("Version") != new.get("Version"):
                        self.publish(make_event(kind, "update", new, old))
        finally:
            objs.unwatch(watcher)
