"""Highly available managers in the lab: 3 managers and 2 workers. Leader election, failover during a
scale, a partitioned leader, quorum loss and recovery."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest
from labtools import module_lab, wait_for

from shoal.lab.lab import Lab
from shoal.tls.certs import identity_of
from shoal.tls.files import NodeTLS

pytestmark = pytest.mark.lab

MANAGERS = ("manager1", "manager2", "manager3")
WEB = "shoal/demo-web:latest"




@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    with module_lab(workers=2, managers=3, swarm=True) as the_lab:
        yield the_lab


def statuses(lab: Lab, via: str) -> dict[str, str]:
    out = lab.docker(via, "node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}", check=False).stdout
    return {line.split()[0]: (line.split() + [""])[1] for line in out.splitlines() if line.strip()}


def leader(lab: Lab, via: str) -> str | None:
    return next((h for h, s in statuses(lab, via).items() if s == "Leader"), None)


def running(lab: Lab, via: str, service: str) -> int:
    out = lab.docker(via, "service", "ps", service, "--filter", "desired-state=running", "--format",
                     "{{.CurrentState}}", check=False).stdout
    return sum(1 for line in out.splitlines() if line.startswith("Running"))


def engine_containers(lab: Lab, service: str, hosts) -> int:
    total = 0
    for h in hosts:
        cp = lab.engine_docker(h, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}",
                               check=False)
        total += len(cp.stdout.split())
    return total


def node_id(lab: Lab, via: str, host: str) -> str:
    return lab.docker(via, "node", "inspect", "--format", "{{.ID}}", host).stdout.strip()


def cert_identity(lab: Lab, host: str) -> tuple[str, str]:
    """(CN, role from the OU) of the host's node certificate, as its shoald keeps it in its data dir."""
    cn, role, _cluster = identity_of(NodeTLS(lab.host(host).dir / "shoal" / "certificates").cert.read_bytes())
    return cn, role


def test_one_leader_two_reachable_from_any_manager(lab: Lab) -> None:
    for m in MANAGERS:
        st = statuses(lab, m)
        assert sorted(st[x] for x in MANAGERS) == ["Leader", "Reachable", "Reachable"], (m, st)
        assert st["worker1"] == "" and st["worker2"] == ""
    # writes through a follower are forwarded to the leader; reads answer everywhere
    follower = next(m for m in MANAGERS if m != leader(lab, "manager1"))
    lab.docker(follower, "service", "create", "--name", "ha-web", "--replicas=3", WEB)
    for m in MANAGERS:
        assert "3/3" in lab.docker(m, "service", "ls", "--filter", "name=ha-web").stdout


def test_leader_killed_during_scale(lab: Lab) -> None:
    old = leader(lab, "manager1")
    survivor = next(m for m in MANAGERS if m != old)
    lab.docker(survivor, "service", "scale", "-d", "ha-web=20")
    t0 = time.monotonic()
    lab.kill(old)
    new = wait_for(lambda: (who := leader(lab, survivor)) and who != old and who, 30, "a new leader")
    took = time.monotonic() - t0
    print(f"new leader {new} {took:.1f}s after the old one was killed", file=sys.stderr)
    # the acknowledged scale survives and completes, exactly 20 tasks on the remaining hosts
    alive = [h.name for h in lab.hosts if h.name != old]
    wait_for(lambda: running(lab, survivor, "ha-web") == 20, 90, "20 running tasks")
    wait_for(lambda: engine_containers(lab, "ha-web", alive) == 20, 30, "20 containers")
    time.sleep(3)
    assert engine_containers(lab, "ha-web", alive) == 20
    assert statuses(lab, survivor)[old] == "Unreachable"
    lab.start(old)
    wait_for(lambda: statuses(lab, survivor).get(old) == "Reachable", 60, "the old leader back as Reachable")
    wait_for(lambda: engine_containers(lab, "ha-web", [h.name for h in lab.hosts]) == 20, 30,
             "still exactly 20 containers")


def test_partitioned_leader(lab: Lab) -> None:
    old = leader(lab, "manager1")
    others = [m for m in MANAGERS if m != old]
    lab.partition(old)
    new = wait_for(lambda: (who := leader(lab, others[0])) and who != old and who, 30, "the others to elect a leader")
    lab.docker(others[1], "service", "create", "--name", "during-partition", WEB)
    lab.heal(old)
    time.sleep(5)
    views = {m: leader(lab, m) for m in MANAGERS}
    assert set(views.values()) == {new}, views
    for m in MANAGERS:
        assert "during-partition" in lab.docker(m, "service", "ls").stdout


def test_quorum_loss_and_recovery(lab: Lab) -> None:
    for m in MANAGERS:  # whatever an earlier test left
        lab.heal(m)
    lead = wait_for(lambda: leader(lab, "manager1"), 30, "a leader")
    stay = next(m for m in MANAGERS if m != lead)
    gone = [m for m in MANAGERS if m != stay]
    for m in gone:
        lab.kill(m)
    time.sleep(3)
    cp = lab.docker(stay, "service", "create", "--name", "no-quorum", WEB, check=False, timeout=60)
    assert cp.returncode != 0
    assert "Unavailable" in cp.stderr or "unavailable" in cp.stderr, cp.stderr
    # reads still answer
    assert "ha-web" in lab.docker(stay, "service", "ls").stdout
    lab.start(gone[0])
    wait_for(lambda: lab.docker(stay, "service", "create", "-d", "--name", "quorum-back", WEB,
                                check=False).returncode == 0, 60, "writes to work again", interval=1)
    lab.start(gone[1])
    wait_for(lambda: sorted(statuses(lab, stay)[m] for m in MANAGERS) == ["Leader", "Reachable", "Reachable"],
             60, "all three managers back")
    names = lab.docker(stay, "service", "ls", "--format", "{{.Name}}").stdout.split()
    assert "no-quorum" not in names and "quorum-back" in names and "ha-web" in names


def any_leader(lab: Lab) -> str | None:
    """The leader, as whichever manager answers first sees it (managers change in these tests)."""
    for h in lab.hosts:
        if who := leader(lab, h.name):
            return who
    return None


def container_ids(lab: Lab, service: str) -> dict[str, set[str]]:
    out = {}
    for h in lab.hosts:
        cp = lab.engine_docker(h.name, "ps", "-q", "--no-trunc", "--filter",
                               f"label=com.docker.swarm.service.name={service}", check=False)
        out[h.name] = set(cp.stdout.split())
    return out


def test_promote_and_demote_disturb_no_task(lab: Lab) -> None:
    lab.docker("manager1", "service", "create", "-d", "--name", "steady", "--mode", "global", WEB)
    wait_for(lambda: all(container_ids(lab, "steady").values()), 60, "a steady task on every host")
    before = container_ids(lab, "steady")
    lead = wait_for(lambda: leader(lab, "manager1"), 30, "a leader")
    lab.docker(lead, "node", "promote", "worker1")
    wait_for(lambda: statuses(lab, lead).get("worker1") == "Reachable", 60, "worker1 to be a reachable manager")
    # the new manager answers manager calls itself and sees four managers
    wait_for(lambda: lab.docker("worker1", "node", "ls", check=False).returncode == 0, 30, "worker1 to serve node ls")
    assert sorted(statuses(lab, "worker1")[m] for m in (*MANAGERS, "worker1")) == \
        ["Leader", "Reachable", "Reachable", "Reachable"]
    # its certificate now says manager (OU swarm-manager), for the same node ID (CN)
    w1 = node_id(lab, lead, "worker1")
    wait_for(lambda: cert_identity(lab, "worker1") == (w1, "manager"), 30, "worker1's manager certificate")
    demoted = next(m for m in MANAGERS if m != lead)
    lab.docker(lead, "node", "demote", demoted)
    wait_for(lambda: statuses(lab, lead).get(demoted) == "", 60, f"{demoted} to be a worker")
    cp = wait_for(lambda: (c := lab.docker(demoted, "node", "ls", check=False)).returncode != 0 and c, 30,
                  f"{demoted} to stop serving manager calls")
    assert "This node is not a swarm manager" in cp.stderr
    d_id = node_id(lab, lead, demoted)
    wait_for(lambda: cert_identity(lab, demoted) == (d_id, "worker"), 30, f"{demoted}'s worker certificate")
    lab.docker(lead, "service", "update", "-d", "--label-add", "after=promote", "steady")
    time.sleep(3)
    assert container_ids(lab, "steady") == before
    assert running(lab, lead, "steady") == len(lab.hosts)


def test_demote_refused_without_quorum(lab: Lab) -> None:
    lead = wait_for(lambda: any_leader(lab), 30, "a leader")
    managers = [h for h, s in statuses(lab, lead).items() if s in ("Leader", "Reachable")]
    assert len(managers) == 3, statuses(lab, lead)
    down, other = [m for m in managers if m != lead]
    lab.kill(down)
    wait_for(lambda: statuses(lab, lead).get(down) == "Unreachable", 30, f"{down} unreachable")
    cp = lab.docker(lead, "node", "demote", other, check=False)
    assert cp.returncode != 0
    assert "can't remove member from the raft: this would result in a loss of quorum" in cp.stderr, cp.stderr
    cp = lab.docker(other, "swarm", "leave", check=False)
    assert "Removing this node leaves 1 managers out of 3" in cp.stderr, cp.stderr
    assert statuses(lab, lead)[other] == "Reachable"
    # a manager that is down for good: demote it (its member goes; the two left are a quorum), remove it
    lab.docker(lead, "node", "demote", down)
    wait_for(lambda: statuses(lab, lead).get(down) == "", 30, f"{down} demoted")
    lab.docker(lead, "node", "rm", down)
    assert down not in statuses(lab, lead)
    lab.docker(other, "service", "create", "-d", "--name", "two-managers", WEB)


def test_force_new_cluster(lab: Lab) -> None:
    lead = wait_for(lambda: any_leader(lab), 30, "a leader")
    managers = [h for h, s in statuses(lab, lead).items() if s in ("Leader", "Reachable")]
    stay = next(m for m in managers if m != lead)
    gone = [m for m in managers if m != stay]
    services = set(lab.docker(stay, "service", "ls", "--format", "{{.Name}}").stdout.split())
    for m in gone:
        lab.kill(m)
    time.sleep(3)
    assert lab.docker(stay, "service", "create", "-d", "--name", "lost", WEB, check=False, timeout=60).returncode != 0
    lab.docker(stay, "swarm", "init", "--force-new-cluster")
    wait_for(lambda: leader(lab, stay) == stay, 30, f"{stay} to lead alone")
    lab.docker(stay, "service", "create", "-d", "--name", "reborn", WEB)
    names = set(lab.docker(stay, "service", "ls", "--format", "{{.Name}}").stdout.split())
    assert names == services | {"reborn"}
    st = statuses(lab, stay)
    assert [h for h, s in st.items() if s] == [stay], st
