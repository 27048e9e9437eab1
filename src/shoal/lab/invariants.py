"""What must hold once a fault is healed and the swarm has had time to converge (the chaos suite polls
these until they do): every node Ready, one leader; each replicated service runs exactly its replica
count, one container per slot, on the latest spec; no two tasks share an overlay address; the routing
mesh answers on every host. Each check takes the JSON the Engine API returns and lists what is wrong."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

SERVICE_LABEL = "com.docker.swarm.service.name"
TASK_NAME_LABEL = "com.docker.swarm.task.name"
LOCAL_NETWORKS = ("bridge", "docker_gwbridge", "host", "none")


def node_problems(nodes: Sequence[dict], hosts: Sequence[str]) -> list[str]:
    """Every host is one node, Ready and Active; managers are reachable; exactly one leads."""
    problems = []
    names = Counter(n.get("Description", {}).get("Hostname", "?") for n in nodes)
    for name, k in names.items():
        if k > 1:
            problems.append(f"host {name} is {k} nodes")
    for h in sorted(set(hosts) - set(names)):
        problems.append(f"host {h} is no node")
    leaders = []
    for n in nodes:
        name = n.get("Description", {}).get("Hostname", n.get("ID", "?"))
        state = n.get("Status", {}).get("State")
        if state != "ready":
            problems.append(f"node {name} is {state}, not ready")
        ms = n.get("ManagerStatus")
        if ms:
            if ms.get("Reachability") != "reachable":
                problems.append(f"manager {name} is {ms.get('Reachability')}")
            if ms.get("Leader"):
                leaders.append(name)
    if len(leaders) != 1:
        problems.append(f"{len(leaders)} leaders ({', '.join(leaders) or 'none'})")
    return problems


def _token(spec: Mapping) -> tuple:
    cs = spec.get("ContainerSpec") or {}
    return tuple(cs.get("Env") or ())


def task_problems(services: Sequence[dict], tasks: Sequence[dict]) -> list[str]:
    """Each replicated service has exactly its replica count of running tasks, on distinct slots, all of
    the service's current task spec, and no task that should run but does not."""
    problems = []
    by_service: dict[str, list[dict]] = defaultdict(list)
    for t in tasks:
        if t.get("DesiredState") == "running":
            by_service[t.get("ServiceID", "")].append(t)
    for svc in services:
        mode = svc["Spec"].get("Mode", {})
        if "Replicated" not in mode:
            continue
        name, want = svc["Spec"]["Name"], mode["Replicated"].get("Replicas", 1)
        mine = by_service.get(svc["ID"], [])
        not_running = [t for t in mine if t.get("Status", {}).get("State") != "running"]
        if not_running:
            states = Counter(t.get("Status", {}).get("State") for t in not_running)
            problems.append(f"service {name}: tasks to run that are {dict(states)}")
        if len(mine) != want:
            problems.append(f"service {name}: {len(mine)} tasks to run, wants {want}")
        slots = Counter(t.get("Slot") for t in mine)
        dup = sorted(s for s, k in slots.items() if k > 1)
        if dup:
            problems.append(f"service {name}: slots {dup} have more than one task to run")
        old = [t for t in mine if _token(t.get("Spec", {})) != _token(svc["Spec"].get("TaskTemplate", {}))]
        if old:
            problems.append(f"service {name}: {len(old)} tasks of an older spec")
    return problems


def container_problems(services: Sequence[dict], containers: Mapping[str, Sequence[dict]]) -> list[str]:
    """On the engines (host → running containers): each service runs exactly its replica count of
    containers, no slot twice; no container runs for a service that is gone."""
    problems = []
    want = {s["Spec"]["Name"]: s["Spec"]["Mode"]["Replicated"].get("Replicas", 1)
            for s in services if "Replicated" in s["Spec"].get("Mode", {})}
    known = {s["Spec"]["Name"] for s in services}
    slots: dict[str, Counter] = defaultdict(Counter)
    where: dict[str, list[str]] = defaultdict(list)
    for host, cs in containers.items():
        for c in cs:
            labels = c.get("Labels") or {}
            svc = labels.get(SERVICE_LABEL)
            if svc is None:
                continue
            if svc not in known:
                problems.append(f"host {host}: container {c.get('Id', '?')[:12]} runs for service {svc}, "
                                "which is gone")
                continue
            parts = labels.get(TASK_NAME_LABEL, "").split(".")
            slots[svc][parts[1] if len(parts) == 3 else "?"] += 1
            where[svc].append(host)
    for name, n in sorted(want.items()):
        running = sum(slots[name].values())
        if running != n:
            problems.append(f"service {name}: {running} containers running ({', '.join(sorted(where[name]))}), "
                            f"wants {n}")
        dup = sorted(s for s, k in slots[name].items() if k > 1)
        if dup:
            problems.append(f"service {name}: slot(s) {', '.join(dup)} running more than once")
    return problems


def address_problems(tasks: Sequence[dict], containers: Mapping[str, Sequence[dict]]) -> list[str]:
    """No overlay address is held by two tasks that should run (in the store), nor by two running
    containers (on the engines)."""
    problems = []
    held: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        if t.get("DesiredState") != "running":
            continue
        for att in t.get("NetworksAttachments") or []:
            for addr in att.get("Addresses") or []:
                held[addr.split("/")[0]].append(t.get("ID", "?")[:12])
    for ip, who in sorted(held.items()):
        if len(who) > 1:
            problems.append(f"address {ip} is held by tasks {', '.join(who)}")
    seen: dict[str, list[str]] = defaultdict(list)
    for host, cs in containers.items():
        if not cs:
            continue
        for c in cs:
            if SERVICE_LABEL not in (c.get("Labels") or {}):
                continue
            for net_name, net in ((c.get("NetworkSettings") or {}).get("Networks") or {}).items():
                ip = (net or {}).get("IPAddress")
                if net_name in LOCAL_NETWORKS:
                    continue  # each engine's own bridges: the same address on two hosts is no clash
                if ip:
                    seen[ip].append(f"{host}/{c.get('Id', '?')[:12]}")
    for ip, who in sorted(seen.items()):
        if len(who) > 1:
            problems.append(f"address {ip} is on containers {', '.join(who)}")
    return problems


def mesh_problems(answers: Mapping[str, str]) -> list[str]:
    """The routing mesh's answers (host → "ok" or the error) from every host."""
    return [f"the routing mesh does not answer on {h}: {a}" for h, a in sorted(answers.items()) if a != "ok"]
