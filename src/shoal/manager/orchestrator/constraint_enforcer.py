"""When a task must leave its node: the node was drained, went down or was removed, or no longer satisfies
the task's placement constraints (swarmkit's constraint enforcer).

These are decisions, not a controller: the orchestrators ask them while reconciling, so a task that must
move is shut down and replaced in the same pass (see ``restart.py``). Network attachments, which no
orchestrator restarts, are removed here when their node leaves the swarm.
"""

from __future__ import annotations

from shoal.manager.orchestrator.common import removed, tasks_of
from shoal.model.constraint import node_matches, parse
from shoal.model.views import NodeView, TaskView
from shoal.store.objects import Change, Objects


def must_leave(objs: Objects, task: TaskView) -> bool:
    """The task must move off its node (False for a task not on a node yet)."""
    if not task.node_id:
        return False
    raw = objs.get("nodes", task.node_id)
    if raw is None:
        return True
    node = NodeView(raw)
    if node.availability == "drain" or node.down:
        return True
    exprs = task.constraints
    return bool(exprs) and not node_matches(parse(exprs), raw)


def removed_node_attachments(objs: Objects) -> list[Change]:
    """Desired state ``remove`` for the network attachments of nodes removed from the swarm."""
    return removed(t for t in tasks_of(objs, "") if objs.get("nodes", t.node_id) is None)
