"""The allocator: gives new tasks what they need before scheduling (network attachments come with
the networking work) and moves them from ``new`` to ``pending``."""

from __future__ import annotations

from shoal.manager.controller import Controller, commit_all
from shoal.model import states
from shoal.model.ids import now
from shoal.store.objects import Change


def _pending(task: dict) -> dict:
    t = dict(task)
    ts = now()
    t["Status"] = {**task["Status"], "State": states.PENDING, "Message": states.MESSAGES[states.PENDING],
                   "Timestamp": ts}
    t["UpdatedAt"] = ts
    return t


class Allocator(Controller):
    kinds = ("tasks",)
    name = "allocator"

    async def reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        tasks = self.objs.cache["tasks"]
        ids = tasks.keys() if changes is None else [oid for _, oid in changes]
        out = []
        for oid in ids:
            t = tasks.get(oid)
            if t is not None and t["Status"]["State"] == states.NEW and t["DesiredState"] != states.REMOVE:
                out.append(Change("tasks", _pending(t)))
        await commit_all(self.objs, out)
