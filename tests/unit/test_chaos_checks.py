"""The chaos suite's judges: the history checker (nothing acknowledged lost, nothing refused applied,
an unknown outcome either way) and the invariants polled after a fault is healed."""

from __future__ import annotations

from pathlib import Path

from shoal.lab.history import Op, State, check_history, load_history, outcome_of, possible_states, save_history
from shoal.lab.invariants import address_problems, container_problems, node_problems, task_problems
from shoal.lab.workload import service_spec, state_of

A, B, C = State(1, "a"), State(2, "b"), State(3, "c")


def op(kind: str, outcome: str, state: State | None = None, t: float = 0.0, name: str = "s") -> Op:
    return Op(kind, name, state, "manager1", t, t + 0.1, outcome, {"ok": 200, "refused": 400, "unknown": 0}[outcome])


def test_outcomes_from_status() -> None:
    assert [outcome_of(s) for s in (200, 201, 400, 404, 409, 500, 503, 0)] == \
        ["ok", "ok", "refused", "refused", "refused", "unknown", "unknown", "unknown"]


def test_acknowledged_state_must_be_there() -> None:
    ops = [op("create", "ok", A, 0), op("scale", "ok", B, 1)]
    assert check_history(ops, {"s": B}) == []
    lost = check_history(ops, {"s": A})
    assert len(lost) == 1 and "replicas=1 token=a" in lost[0] and "replicas=2 token=b" in lost[0]
    assert check_history(ops, {}) and "no service" in check_history(ops, {})[0]


def test_refused_changes_nothing() -> None:
    ops = [op("create", "ok", A, 0), op("update", "refused", C, 1), op("remove", "refused", None, 2)]
    assert check_history(ops, {"s": A}) == []
    assert check_history(ops, {"s": C}) != []
    assert check_history(ops, {}) != []
    assert check_history([op("create", "refused", A)], {"s": A}) != []
    assert check_history([op("create", "refused", A)], {}) == []


def test_unknown_may_go_either_way() -> None:
    ops = [op("create", "ok", A, 0), op("scale", "unknown", B, 1)]
    assert possible_states(ops) == {A, B}
    ops.append(op("remove", "unknown", None, 2))
    assert possible_states(ops) == {A, B, None}
    for seen in ({"s": A}, {"s": B}, {}):
        assert check_history(ops, seen) == []
    assert check_history(ops, {"s": C}) != []
    # an acknowledged op after unknown ones settles it
    ops.append(op("remove", "ok", None, 3))
    assert possible_states(ops) == {None}


def test_only_the_services_of_the_history_are_judged() -> None:
    assert check_history([op("create", "ok", A, name="x")], {"x": A, "other": B}) == []


def test_history_round_trips(tmp_path: Path) -> None:
    ops = [op("create", "ok", A), op("remove", "unknown", None, 1)]
    save_history(tmp_path / "h.jsonl", ops)
    assert load_history(tmp_path / "h.jsonl") == ops


def test_spec_state_round_trip() -> None:
    spec = service_spec("s", B)
    assert state_of(spec) == B
    assert spec["EndpointSpec"]["Ports"] and service_spec("s", B, dnsrr=True)["EndpointSpec"] == {"Mode": "dnsrr"}
    assert state_of({"Mode": {"Global": {}}, "TaskTemplate": {"ContainerSpec": {}}}) is None


def node(name: str, state: str = "ready", manager: str | None = None, leader: bool = False) -> dict:
    n = {"ID": name, "Description": {"Hostname": name}, "Status": {"State": state}}
    if manager:
        n["ManagerStatus"] = {"Reachability": manager, "Leader": leader}
    return n


def test_nodes_ready_and_one_leader() -> None:
    good = [node("m1", manager="reachable", leader=True), node("m2", manager="reachable"), node("w1")]
    assert node_problems(good, ["m1", "m2", "w1"]) == []
    bad = [node("m1", manager="reachable"), node("m2", manager="unreachable"), node("w1", "down"), node("w1")]
    found = node_problems(bad, ["m1", "m2", "w1", "w2"])
    assert {"host w1 is 2 nodes", "host w2 is no node", "node w1 is down, not ready", "manager m2 is unreachable",
            "0 leaders (none)"} == set(found)


def svc(name: str, replicas: int, token: str = "a") -> dict:
    return {"ID": f"id-{name}", "Spec": service_spec(name, State(replicas, token))}


def task(service: str, slot: int, state: str = "running", token: str = "a", ip: str = "10.0.1.2") -> dict:
    return {"ID": f"t-{service}-{slot}-{state}-{ip}", "ServiceID": f"id-{service}", "Slot": slot,
            "DesiredState": "running", "Status": {"State": state},
            "Spec": service_spec(service, State(1, token))["TaskTemplate"],
            "NetworksAttachments": [{"Addresses": [f"{ip}/24"]}]}


def test_tasks_converged() -> None:
    services = [svc("web", 2)]
    assert task_problems(services, [task("web", 1, ip="10.0.1.2"), task("web", 2, ip="10.0.1.3")]) == []
    found = task_problems(services, [task("web", 1), task("web", 1, "starting"), task("web", 2, token="old")])
    assert "service web: tasks to run that are {'starting': 1}" in found
    assert "service web: 3 tasks to run, wants 2" in found
    assert "service web: slots [1] have more than one task to run" in found
    assert "service web: 1 tasks of an older spec" in found


def container(service: str, slot: int, ip: str) -> dict:
    return {"Id": f"c{service}{slot}{ip}", "Labels": {"com.docker.swarm.service.name": service,
                                                    "com.docker.swarm.task.name": f"{service}.{slot}.x"},
            "NetworkSettings": {"Networks": {"chaos-net": {"IPAddress": ip}}}}


def test_containers_one_per_slot_and_none_of_gone_services() -> None:
    services = [svc("web", 2)]
    ok = {"h1": [container("web", 1, "10.0.1.2")], "h2": [container("web", 2, "10.0.1.3")]}
    assert container_problems(services, ok) == []
    bad = {"h1": [container("web", 1, "10.0.1.2"), container("old", 1, "10.0.1.9")],
           "h2": [container("web", 1, "10.0.1.3")]}
    found = container_problems(services, bad)
    assert any("which is gone" in p for p in found)
    assert "service web: slot(s) 1 running more than once" in found


def test_no_address_twice() -> None:
    tasks = [task("web", 1, ip="10.0.1.2"), task("web", 2, ip="10.0.1.2")]
    cs = {"h1": [container("web", 1, "10.0.1.5")], "h2": [container("web", 2, "10.0.1.5")]}
    found = address_problems(tasks, cs)
    assert len(found) == 2 and "10.0.1.2" in found[0] and "10.0.1.5" in found[1]
    assert address_problems([task("web", 1, ip="10.0.1.2")], {"h1": [container("web", 1, "10.0.1.2")]}) == []


def test_a_read_may_only_see_what_was_written() -> None:
    ops = [op("create", "ok", A, 0), op("read", "ok", A, 1), op("update", "refused", B, 2),
           op("read", "ok", B, 3), op("update", "ok", C, 4)]
    found = check_history(ops, {"s": C})  # the end state is right, but a refused write was seen
    assert len(found) == 1 and "a read via manager1 at 3.0s saw replicas=2 token=b" in found[0]
    ops[2] = op("update", "unknown", B, 2)
    assert check_history(ops, {"s": C}) == []
    # a stale read (an older acknowledged state) is no violation
    stale = [op("create", "ok", A, 0), op("update", "ok", B, 1), op("read", "ok", A, 2)]
    assert check_history(stale, {"s": B}) == []


def test_report_of_runs(tmp_path: Path) -> None:
    import json
    from dataclasses import asdict

    from shoal.lab.chaos import Round, report

    for target, rounds in (("shoal", [Round(0, "leader-kill", "m1", 4.0, {"ok": 10, "unknown": 1}),
                                      Round(1, "leader-kill", "m2", 6.0, {"ok": 5, "refused": 2})]),
                           ("docker", [Round(0, "leader-kill", "m1", 20.0, {"ok": 7})])):
        d = tmp_path / target
        d.mkdir()
        (d / "rounds.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for r in rounds))
        (d / "summary.json").write_text(json.dumps({"target": target, "seeds": [3]}))
    table = report([tmp_path / "docker", tmp_path / "shoal"]).splitlines()
    assert table[0] == "| | shoal | docker |"
    assert "| operations acknowledged | 15 | 7 |" in table
    assert "| refused / unknown outcome | 2 / 1 | 0 / 0 |" in table
    assert "| leader-kill: rounds, converged median / max | 2, 5.0 / 6.0 s | 1, 20.0 / 20.0 s |" in table
