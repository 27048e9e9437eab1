"""The orchestrators (temporary: replaced by the split by concern)."""

from __future__ import annotations

from shoal.manager.controller import Controller
from shoal.store.objects import Objects


def orchestrators(objs: Objects) -> list[Controller]:
    from shoal.manager.orchestrator.orchestrator import Orchestrator
    from shoal.manager.reaper import Reaper

    return [Orchestrator(objs), Reaper(objs)]
