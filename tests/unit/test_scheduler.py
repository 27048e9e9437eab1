"""Behaviour tests for the pure scheduling core (shoal.manager.scheduler)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from shoal.manager.scheduler.filters import ReadyFilter, ResourceFilter
from shoal.manager.scheduler.nodeinfo import MAX_FAILURES
from shoal.manager.scheduler.scheduler import Scheduler
from shoal.model.constraint import node_matches, parse

GiB = 2**30
CPU = 10**9


def node(
    node_id: str,
    *,
    state: str = "ready",
    availability: str = "active",
    role: str = "worker",
    labels: dict[str, str] | None = None,
    engine_labels: dict[str, str] | None = None,
    cpus: int = 4,
    mem_gib: int = 8,
    os: str = "linux",
    arch: str = "x86_64",
) -> dict[str, Any]:
    return {
        "ID": node_id,
        "Spec": {"Role": role, "Availability": availability, "Labels": labels or {}},
        "Description": {
            "Hostname": f"host-{node_id}",
            "Platform": {"OS": os, "Architecture": arch},
            "Resources": {"NanoCPUs": cpus * CPU, "MemoryBytes": mem_gib * GiB},
            "Engine": {"EngineVersion": "27.0.0", "Labels": engine_labels or {}},
        },
        "Status": {"State": state, "Addr": "10.0.0.1"},
    }


def tasks(
    n: int,
    service: str = "svc",
    *,
    constraints: list[str] | None = None,
    preferences: list[str] | None = None,
    max_replicas: int = 0,
    cpus: float = 0,
    mem_gib: float = 0,
    host_port: int | None = None,
    strategy: str | None = None,
    platforms: list[dict[str, str]] | None = None,
) -> list[dict[str, Any]]:
    placement: dict[str, Any] = {}
    if constraints:
        placement["Constraints"] = constraints
    if preferences:
        placement["Preferences"] = [{"Spread": {"SpreadDescriptor": d}} for d in preferences]
    if max_replicas:
        placement["MaxReplicas"] = max_replicas
    if platforms:
        placement["Platforms"] = platforms
    out = []
    for i in range(n):
        t: dict[str, Any] = {
            "ID": f"{service}.{i}",
            "ServiceID": service,
            "Slot": i + 1,
            "Spec": {
                "ContainerSpec": {"Image": "busybox"},
                "Resources": {
                    "Reservations": {"NanoCPUs": int(cpus * CPU), "MemoryBytes": int(mem_gib * GiB)}
                },
                "Placement": placement,
            },
            "Status": {"State": "pending"},
            "DesiredState": "running",
        }
        if host_port:
            t["Endpoint"] = {
                "Ports": [
                    {"PublishMode": "host", "PublishedPort": host_port, "TargetPort": 80, "Protocol": "tcp"}
                ]
            }
        if strategy:
            t["ServiceLabels"] = {"shoal.strategy": strategy}
        out.append(t)
    return out


def three_nodes(**kw: Any) -> Scheduler:
    return Scheduler([node("n1", **kw), node("n2", **kw), node("n3", **kw)])


def per_node(assigned: dict[str, str]) -> Counter[str]:
    return Counter(assigned.values())


def test_spread_evenly_over_three_nodes() -> None:
    sched = three_nodes()
    assigned, errors = sched.schedule(tasks(4))
    assert not errors and len(assigned) == 4
    counts = per_node(assigned)
    assert set(counts) == {"n1", "n2", "n3"} and max(counts.values()) == 2


def test_spread_prefers_fewer_tasks_of_service_then_fewer_total() -> None:
    sched = three_nodes()
    sched.schedule(tasks(1, "other"))  # lands on n1
    assigned, _ = sched.schedule(tasks(2))
    assert sorted(assigned.values()) == ["n2", "n3"]  # n1 has more tasks in total
    assigned, _ = sched.schedule(tasks(3, "svc2"))
    assert sorted(assigned.values()) == ["n1", "n2", "n3"]


def test_spread_accounts_for_running_tasks() -> None:
    sched = three_nodes()
    for i in range(2):
        sched.update_task(
            {"ID": f"run{i}", "ServiceID": "svc", "NodeID": "n1", "Status": {"State": "running"}}
        )
    assigned, _ = sched.schedule(tasks(4))
    assert per_node(assigned) == {"n2": 2, "n3": 2}


@pytest.mark.parametrize(
    "kw",
    [{"availability": "drain"}, {"availability": "pause"}, {"state": "down"}, {"state": "disconnected"}],
)
def test_unavailable_nodes_excluded(kw: dict[str, str]) -> None:
    sched = Scheduler([node("n1"), node("n2", **kw), node("n3", **kw)])
    assigned, errors = sched.schedule(tasks(3))
    assert set(assigned.values()) == {"n1"} and not errors


def test_no_ready_node_message() -> None:
    sched = Scheduler([node("n1", state="down")])
    _, errors = sched.schedule(tasks(1))
    assert errors == {"svc.0": "no suitable node (1 node not available for new tasks)"}
    sched = three_nodes(availability="drain")
    _, errors = sched.schedule(tasks(1))
    assert errors["svc.0"] == "no suitable node (3 nodes not available for new tasks)"


def test_no_nodes_at_all() -> None:
    assigned, errors = Scheduler().schedule(tasks(2))
    assert not assigned and errors == {"svc.0": "no suitable node", "svc.1": "no suitable node"}


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ("node.role==manager", {"n1"}),
        ("node.role != manager", {"n2", "n3"}),
        ("node.labels.zone==a", {"n1", "n2"}),
        ("node.labels.zone==A", {"n1", "n2"}),  # values compare case-insensitively
        ("node.labels.zone!=a", {"n3"}),
        ("node.labels.ssd!=true", {"n1", "n3"}),  # missing label matches !=
        ("node.id==n2", {"n2"}),
        ("node.hostname==host-n3", {"n3"}),
        ("node.hostname!=host-n3", {"n1", "n2"}),
        ("node.platform.os==linux", {"n1", "n2", "n3"}),
        ("engine.labels.gpu==yes", {"n3"}),
        ("NODE.LABELS.zone==b", {"n3"}),  # key prefix is case-insensitive
    ],
)
def test_constraints(constraint: str, expected: set[str]) -> None:
    sched = Scheduler(
        [
            node("n1", role="manager", labels={"zone": "a"}),
            node("n2", labels={"zone": "a", "ssd": "true"}),
            node("n3", labels={"zone": "b"}, engine_labels={"gpu": "yes"}),
        ]
    )
    assigned, errors = sched.schedule(tasks(6, constraints=[constraint]))
    assert not errors and set(assigned.values()) == expected


def test_multiple_constraints_all_apply() -> None:
    sched = Scheduler([node("n1", labels={"zone": "a"}), node("n2", labels={"zone": "a"}, role="manager")])
    assigned, _ = sched.schedule(tasks(2, constraints=["node.labels.zone==a", "node.role==worker"]))
    assert set(assigned.values()) == {"n1"}


def test_unknown_label_reports_constraints() -> None:
    sched = three_nodes()
    assigned, errors = sched.schedule(tasks(2, constraints=["node.labels.nope==x"]))
    assert not assigned
    assert errors == {t: "no suitable node (scheduling constraints not satisfied on 3 nodes)" for t in errors}
    assert len(errors) == 2


def test_explanations_sorted_by_count() -> None:
    sched = Scheduler([node("n1", state="down"), node("n2"), node("n3"), node("n4", labels={"zone": "x"})])
    sched.schedule(tasks(1, "hog", cpus=4, constraints=["node.labels.zone==x"]))  # fills n4
    _, errors = sched.schedule(tasks(1, constraints=["node.labels.zone==x"], cpus=1))
    assert errors["svc.0"] == (
        "no suitable node (scheduling constraints not satisfied on 2 nodes; "
        "1 node not available for new tasks; insufficient resources on 1 node)"
    )


def test_max_replicas_per_node() -> None:
    sched = three_nodes()
    assigned, errors = sched.schedule(tasks(8, max_replicas=2))
    assert len(assigned) == 6 and max(per_node(assigned).values()) == 2
    assert set(errors.values()) == {"no suitable node (max replicas per node limit exceed)"}
    assert len(errors) == 2


def test_host_port_conflicts() -> None:
    sched = three_nodes()
    assigned, errors = sched.schedule(tasks(4, host_port=8080))
    assert len(assigned) == 3 and len(set(assigned.values())) == 3
    assert list(errors.values()) == ["no suitable node (host-mode port already in use on 3 nodes)"]
    # another service on the same port cannot go anywhere; a different port can
    _, errors = sched.schedule(tasks(1, "web2", host_port=8080))
    assert errors["web2.0"] == "no suitable node (host-mode port already in use on 3 nodes)"
    assigned, errors = sched.schedule(tasks(1, "web3", host_port=8081))
    assert len(assigned) == 1 and not errors


def test_host_port_freed_when_task_removed() -> None:
    sched = Scheduler([node("n1")])
    assigned, _ = sched.schedule(tasks(1, host_port=80))
    sched.update_task({"ID": "svc.0", "ServiceID": "svc", "NodeID": "n1", "Status": {"State": "shutdown"}})
    assigned, errors = sched.schedule(tasks(1, "web2", host_port=80))
    assert assigned == {"web2.0": "n1"} and not errors


def test_resource_reservations() -> None:
    sched = Scheduler([node("n1", cpus=2, mem_gib=8), node("n2", cpus=4, mem_gib=2)])
    assigned, errors = sched.schedule(tasks(5, cpus=1, mem_gib=1))
    # n1 fits 2 (CPU-bound), n2 fits 2 (memory-bound)
    assert per_node(assigned) == {"n1": 2, "n2": 2}
    assert list(errors.values()) == ["no suitable node (insufficient resources on 2 nodes)"]
    ni = sched.node_info("n1")
    assert ni is not None and ni.available_nano_cpus == 0 and ni.available_memory_bytes == 6 * GiB
    sched.remove_task(next(t for t, n in assigned.items() if n == "n1"))
    assert ni.available_nano_cpus == CPU
    too_big, errors = sched.schedule(tasks(1, "big", mem_gib=9))
    assert not too_big and errors["big.0"] == "no suitable node (insufficient resources on 2 nodes)"


def test_node_update_keeps_reservations() -> None:
    sched = Scheduler([node("n1", cpus=2)])
    sched.schedule(tasks(1, cpus=1))
    sched.update_node(node("n1", cpus=8))
    ni = sched.node_info("n1")
    assert ni is not None and ni.available_nano_cpus == 7 * CPU and ni.active_tasks == 1


def test_placement_preference_spreads_over_label_values() -> None:
    sched = Scheduler(
        [
            node("a1", labels={"zone": "a"}),
            node("a2", labels={"zone": "a"}),
            node("a3", labels={"zone": "a"}),
            node("b1", labels={"zone": "b"}),
            node("x1"),  # no label: its own group
        ]
    )
    assigned, errors = sched.schedule(tasks(9, preferences=["node.labels.zone"]))
    assert not errors
    zone = {"a1": "a", "a2": "a", "a3": "a", "b1": "b", "x1": ""}
    assert Counter(zone[n] for n in assigned.values()) == {"a": 3, "b": 3, "": 3}
    assert per_node(assigned)["b1"] == 3 and per_node(assigned)["x1"] == 3


def test_placement_preference_counts_existing_tasks_and_full_groups() -> None:
    sched = Scheduler([node("a1", labels={"zone": "a"}), node("b1", labels={"zone": "b"})])
    for i in range(3):
        sched.update_task(
            {"ID": f"old{i}", "ServiceID": "svc", "NodeID": "a1", "Status": {"State": "running"}}
        )
    assigned, _ = sched.schedule(tasks(5, preferences=["node.labels.zone"]))
    assert per_node(assigned) == {"a1": 1, "b1": 4}
    # a zone whose nodes are full hands its share to the others
    sched = Scheduler([node("a1", labels={"zone": "a"}, cpus=1), node("b1", labels={"zone": "b"}, cpus=8)])
    assigned, errors = sched.schedule(tasks(6, preferences=["node.labels.zone"], cpus=1))
    assert per_node(assigned) == {"a1": 1, "b1": 5} and not errors


def test_nested_placement_preferences() -> None:
    sched = Scheduler(
        [
            node(f"{dc}{rack}{i}", labels={"dc": dc, "rack": rack})
            for dc in "xy"
            for rack in "12"
            for i in range(2)
        ]
    )
    assigned, _ = sched.schedule(tasks(16, preferences=["node.labels.dc", "node.labels.rack"]))
    assert set(per_node(assigned).values()) == {2}


def test_binpack_fills_one_node_first() -> None:
    sched = three_nodes(cpus=4)
    assigned, errors = sched.schedule(tasks(6, cpus=1, strategy="binpack"))
    assert not errors
    counts = per_node(assigned)
    assert sorted(counts.values()) == [2, 4]


def test_binpack_prefers_fullest_node() -> None:
    sched = three_nodes(cpus=4)
    sched.update_task(
        {
            "ID": "x",
            "ServiceID": "other",
            "NodeID": "n2",
            "Status": {"State": "running"},
            "Spec": {"Resources": {"Reservations": {"NanoCPUs": 2 * CPU}}},
        }
    )
    assigned, _ = sched.schedule(tasks(2, cpus=1, strategy="binpack"))
    assert set(assigned.values()) == {"n2"}


def test_unknown_strategy_is_an_error() -> None:
    sched = three_nodes()
    assigned, errors = sched.schedule(tasks(1, strategy="random"))
    assert not assigned and errors["svc.0"].startswith("unknown scheduling strategy 'random'")


def test_recent_failures_push_node_last() -> None:
    now = [1000.0]
    sched = Scheduler([node("n1"), node("n2")], clock=lambda: now[0])
    for i in range(MAX_FAILURES):
        sched.update_task({"ID": f"f{i}", "ServiceID": "svc", "NodeID": "n1", "Status": {"State": "running"}})
        sched.update_task({"ID": f"f{i}", "ServiceID": "svc", "NodeID": "n1", "Status": {"State": "failed"}})
    assigned, _ = sched.schedule(tasks(2))
    assert set(assigned.values()) == {"n2"}
    now[0] += 301  # failures expire
    assigned, _ = sched.schedule(tasks(3)[2:])
    assert assigned == {"svc.2": "n1"}


def test_preassigned_tasks_only_check_their_node() -> None:
    sched = Scheduler([node("n1", cpus=1), node("n2", availability="drain"), node("n3")])
    glob = [
        {**t, "ID": f"g.{n}", "NodeID": n}
        for t, n in zip(tasks(3, "g", cpus=1), ["n1", "n2", "n3"], strict=True)
    ]
    glob.append({**tasks(1, "g", cpus=1)[0], "ID": "g.gone", "NodeID": "n9"})
    assigned, errors = sched.schedule(glob)
    assert assigned == {"g.n1": "n1", "g.n3": "n3"}
    assert errors["g.n2"] == "1 node not available for new tasks"
    assert errors["g.gone"] == "node n9 not found"
    # n1 is now full
    _, errors = sched.schedule([{**tasks(1, "h", cpus=1)[0], "NodeID": "n1"}])
    assert errors == {"h.0": "insufficient resources on 1 node"}


def test_platform_filter() -> None:
    sched = Scheduler([node("n1", arch="aarch64"), node("n2", os="windows"), node("n3")])
    assigned, _ = sched.schedule(tasks(3, platforms=[{"OS": "linux", "Architecture": "amd64"}]))
    assert set(assigned.values()) == {"n3"}
    assigned, errors = sched.schedule(tasks(1, "x", platforms=[{"OS": "darwin"}]))
    assert errors["x.0"] == "no suitable node (unsupported platform on 3 nodes)"


def test_removed_node_and_task_bookkeeping() -> None:
    sched = three_nodes()
    assigned, _ = sched.schedule(tasks(3))
    assert sched.remove_node("n1")
    assigned2, _ = sched.schedule(tasks(2, "other"))
    assert "n1" not in assigned2.values()
    sched.add_node(node("n1"))  # comes back with its task still accounted
    ni = sched.node_info("n1")
    assert ni is not None and ni.active_tasks == 1
    task_on_n1 = next(t for t, n in assigned.items() if n == "n1")
    assert sched.remove_task(task_on_n1) and ni.active_tasks == 0
    assert not sched.remove_task(task_on_n1)


def test_invalid_constraints_raise() -> None:
    with pytest.raises(ValueError, match="constraint expected one operator from ==, !="):
        parse(["node.labels.zone"])
    with pytest.raises(ValueError, match="key 'no de' is invalid"):
        parse(["no de==x"])
    with pytest.raises(ValueError, match="value 'a>b' is invalid"):
        parse(["node.labels.x==a>b"])
    with pytest.raises(ValueError, match="value '' is invalid"):
        parse(["node.role=="])


def test_constraint_parse_and_match() -> None:
    (c,) = parse(["  node.labels.Zone ==  East "])
    assert c.key == "node.labels.Zone" and c.exp == "East"
    n = node("n1", labels={"Zone": "east"})
    assert node_matches([c], n)
    assert not node_matches(parse(["node.labels.zone==east"]), n)  # label name is case-sensitive
    assert node_matches(parse(["node.ip==10.0.0.1", "node.ip!=192.168.0.0/16"]), n)
    assert not node_matches(parse(["unknown.key==x"]), n)


def test_filter_explanations_singular_plural() -> None:
    assert ReadyFilter().explain(1) == "1 node not available for new tasks"
    assert ResourceFilter().explain(1) == "insufficient resources on 1 node"
    assert ResourceFilter().explain(3) == "insufficient resources on 3 nodes"
