"""Orchestration: the controllers that keep each service's tasks as its spec says, and delete the tasks
that are done with.

One module per concern, as swarmkit's ``manager/orchestrator``: ``replicated``, ``global_`` and ``jobs``
(the orchestrators of the service modes), ``restart`` (restart decisions and delays), ``update`` (rolling updates),
``constraint_enforcer`` (when a task must leave its node), ``reaper`` (task deletion) and ``common``.
"""

from __future__ import annotations

from shoal.manager.controller import Controller
from shoal.manager.orchestrator.global_ import GlobalOrchestrator
from shoal.manager.orchestrator.jobs import JobOrchestrator
from shoal.manager.orchestrator.reaper import TaskReaper
from shoal.manager.orchestrator.replicated import ReplicatedOrchestrator
from shoal.manager.orchestrator.update import ServiceWriter
from shoal.store.objects import Objects


def orchestrators(objs: Objects, write_service: ServiceWriter | None = None) -> list[Controller]:
    """The orchestration controllers, in the order they should start (``write_service``: how an
    automatic rollback stores the service, the allocator's ``update_service``)."""
    return [ReplicatedOrchestrator(objs, write_service), GlobalOrchestrator(objs, write_service),
            JobOrchestrator(objs), TaskReaper(objs)]
