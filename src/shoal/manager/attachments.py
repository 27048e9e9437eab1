"""Network attachments: standalone containers (`docker run --network NET`, `docker network connect`) on
attachable swarm networks.

As in swarmkit, an attachment is a task with no service whose spec is a ``NetworkAttachmentSpec``: it
is created running on the node that asked, with its address allocated at once by the leader, so that
the address stays taken across leader changes (the allocator reloads it from the store), the node's
network map carries the network while the container is there, and other nodes learn the address as a
VXLAN peer. Orchestrators, the scheduler and the dispatcher leave such tasks alone; `GET /tasks` lists
them only with the filter ``runtime=attachment``. The node gives an attachment back when its container
is gone; one whose node was removed from the swarm is removed by the orchestrator.
"""

from __future__ import annotations

from shoal.manager.allocator import Allocator
from shoal.model import states
from shoal.model.errors import APIError, NotFound
from shoal.model.ids import new_id, now
from shoal.model.views import ATTACHMENT_SPEC, NetworkView, NodeView, TaskView
from shoal.store.objects import Objects


def _refused(target: str, code: str, desc: str, status: int) -> APIError:
    """Docker's wording: the daemon wraps the manager's gRPC error."""
    return APIError(f"Could not attach to network {target}: rpc error: code = {code} desc = {desc}", status)


def find_network(objs: Objects, target: str) -> dict:
    """The swarm network ``target`` names (ID, then a unique name), as swarmkit looks it up."""
    net = objs.get("networks", target)
    if net is None:
        named = [n for n in objs.list("networks") if n["Spec"]["Name"] == target]
        net = named[0] if len(named) == 1 else None
    if net is None:
        raise _refused(target, "NotFound", f"network {target} not found", 404)
    return net


async def attach(objs: Objects, allocator: Allocator, node_id: str, target: str, container: str) -> dict:
    """Make node ``node_id``'s attachment of ``container`` to network ``target`` (leader only)."""
    net = find_network(objs, target)
    if not NetworkView(net).attachable or NetworkView(net).ingress:
        raise _refused(target, "PermissionDenied", f"network {target} not manually attachable", 403)
    raw = objs.get("nodes", node_id)
    if raw is None:
        raise NotFound(f"node {node_id} not found")
    node = NodeView(raw)
    if node.availability != "active":
        raise _refused(target, "FailedPrecondition", f"node {node_id} is not available for new attachments "
                       f"(availability {node.availability})", 400)
    if not allocator.has_subnet(net["ID"]):
        raise _refused(target, "FailedPrecondition", f"network {target} has no subnet allocated", 400)
    ts = now()
    task = {
        "ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Labels": {},
        "Spec": {ATTACHMENT_SPEC: {"ContainerID": container}},
        "ServiceID": "", "Slot": 0, "NodeID": node_id,
        "Status": {"Timestamp": ts, "State": states.RUNNING, "Message": "started", "PortStatus": {}},
        "DesiredState": states.RUNNING,
    }
    await allocator.create_attachment(task, net)
    return task


async def detach(objs: Objects, allocator: Allocator, node_id: str, task_id: str) -> bool:
    """Remove node ``node_id``'s attachment ``task_id`` (its address is freed at once)."""
    task = objs.get("tasks", task_id)
    if task is None or not TaskView(task).is_attachment or task.get("NodeID") != node_id:
        return False
    return await allocator.remove_attachment(task)
