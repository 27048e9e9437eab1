"""docker-py's swarm API end to end (swarm init/join/update/reload/leave, services, nodes, networks,
tasks, service logs), then the seed's CLI walk-through with the v28 and the v20 client.

test_docker_py.py has the core service scenario with docker-py; test_secrets.py has docker-py's secrets
and configs. Here one manager (networking on) and, for join/leave, one worker share the machine's engine.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import DOCKER_V20, DOCKER_V28, Shoald, free_port, running_containers, wait_for

pytestmark = pytest.mark.integration

WEB = "shoal/demo-web:latest"
BUSYBOX = "shoal/demo-busybox:latest"
SECOND = 10**9


@pytest.fixture(scope="module")
def pyswarm(docker_engine) -> Iterator[tuple[Shoald, Shoald]]:
    """A manager shoald (not yet in a swarm: docker-py initialises it) and a worker shoald."""
    with tempfile.TemporaryDirectory(prefix="shoal-pym-") as m, tempfile.TemporaryDirectory(prefix="shoal-pyw-") as w:
        mgr, wrk = Shoald(Path(m)), Shoald(Path(w), "--no-networking")
        mgr.port = free_port()
        mgr.start()
        wrk.start()
        try:
            yield mgr, wrk
        finally:
            wrk.stop()
            mgr.stop()


def mine(d: Shoald, engine, service: str) -> list:
    """The running containers of ``service`` on this manager's node (not those other runs left)."""
    node = d.request("GET", "/info")[2]["Swarm"]["NodeID"]
    return [c for c in running_containers(engine, service) if c.labels.get("com.docker.swarm.node.id") == node]


def wait_running(d: Shoald, engine, service: str, n: int, timeout: float = 30) -> None:
    """Wait for ``n`` running containers of ``service``; on failure say what `service ps` shows."""
    try:
        wait_for(lambda: len(mine(d, engine, service)) == n, timeout, what=f"{n} running")
    except AssertionError as e:
        ps = d.docker("service", "ps", "--no-trunc", service, check=False)
        nodes = d.docker("node", "ls", check=False)
        raise AssertionError(f"{e}\n{ps.stdout}{ps.stderr}\n{nodes.stdout}") from None


def test_swarm_init_update_reload_join(pyswarm):
    mgr, wrk = pyswarm
    client = mgr.client()
    addr = f"127.0.0.1:{mgr.port}"
    node_id = client.swarm.init(listen_addr=addr, advertise_addr=addr, task_history_retention_limit=4,
                                dispatcher_heartbeat_period=4 * SECOND, node_cert_expiry=30 * 24 * 3600 * SECOND)
    assert isinstance(node_id, str) and len(node_id) == 25
    client.swarm.reload()
    attrs = client.swarm.attrs
    assert attrs["ID"] == client.swarm.id and attrs["Version"]["Index"] == client.swarm.version
    spec = attrs["Spec"]
    assert spec["Orchestration"]["TaskHistoryRetentionLimit"] == 4
    assert spec["Dispatcher"]["HeartbeatPeriod"] == 4 * SECOND
    assert spec["CAConfig"]["NodeCertExpiry"] == 30 * 24 * 3600 * SECOND
    assert spec["Raft"]["ElectionTick"] == 10 and spec["Raft"]["HeartbeatTick"] == 1  # defaults kept
    tokens = attrs["JoinTokens"]
    assert tokens["Worker"].startswith("SWMTKN-1-") and tokens["Worker"] != tokens["Manager"]

    assert client.swarm.update(rotate_worker_token=True, task_history_retention_limit=6) is True
    client.swarm.reload()
    assert client.swarm.attrs["JoinTokens"]["Worker"] != tokens["Worker"]
    assert client.swarm.attrs["JoinTokens"]["Manager"] == tokens["Manager"]
    assert client.swarm.attrs["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 6
    assert client.api.get_unlock_key() == {"UnlockKey": ""}
    with pytest.raises(docker.errors.APIError) as err:
        client.swarm.init(listen_addr=addr)
    assert err.value.status_code == 503 and "already part of a swarm" in str(err.value)

    worker = wrk.client()
    assert worker.swarm.join(remote_addrs=[addr], join_token=client.swarm.attrs["JoinTokens"]["Worker"],
                             listen_addr=f"127.0.0.1:{free_port()}") is True
    assert worker.info()["Swarm"]["LocalNodeState"] == "active"
    assert not worker.info()["Swarm"]["ControlAvailable"]
    with pytest.raises(docker.errors.APIError) as err:
        worker.services.list()
    assert err.value.status_code == 503
    wait_for(lambda: sorted(n.attrs["Status"]["State"] for n in client.nodes.list()) == ["ready", "ready"], 30,
             what="two ready nodes")
    client.close()
    worker.close()


def test_nodes(pyswarm):
    mgr, wrk = pyswarm
    client = mgr.client()
    nodes = client.nodes.list()
    assert len(nodes) == 2
    managers = client.nodes.list(filters={"role": "manager"})
    assert len(managers) == 1 and managers[0].attrs["ManagerStatus"]["Leader"] is True
    worker_id = wrk.client().info()["Swarm"]["NodeID"]
    node = client.nodes.get(worker_id)
    assert node.id == worker_id and node.attrs["Spec"]["Role"] == "worker"
    assert node.update({"Availability": "drain", "Role": "worker", "Labels": {"storage": "ssd"}}) is True
    node.reload()
    assert node.attrs["Spec"]["Availability"] == "drain" and node.attrs["Spec"]["Labels"] == {"storage": "ssd"}
    assert [n.id for n in client.nodes.list(filters={"node.label": "storage=ssd"})] == [worker_id]
    stale = node.version
    node.update({"Availability": "active", "Role": "worker", "Labels": {"storage": "ssd"}})
    node.attrs["Version"]["Index"] = stale
    with pytest.raises(docker.errors.APIError) as err:
        node.update({"Availability": "pause", "Role": "worker"})
    assert err.value.status_code == 400 and "update out of sequence" in str(err.value)
    with pytest.raises(docker.errors.NotFound):
        client.nodes.get("no-such-node")
    # this worker shares the manager's host and has no networking of its own: keep tasks off it
    node.reload()
    node.update({"Availability": "drain", "Role": "worker", "Labels": {}})
    client.close()


@pytest.mark.field("TaskSpec.Networks", "NetworkAttachmentConfig.Target", how="honoured")
def test_networks_services_tasks_logs(pyswarm, docker_engine):
    mgr, _ = pyswarm
    client = mgr.client()
    net = client.networks.create("pynet", driver="overlay", labels={"team": "py"})
    assert net.attrs["Scope"] == "swarm" and net.attrs["Driver"] == "overlay"
    assert [n.name for n in client.networks.list(filters={"label": "team=py"})] == ["pynet"]
    assert client.networks.get("pynet").id == net.id

    svc = client.services.create(
        BUSYBOX, command=["sh", "-c", "echo hello-from-docker-py; exec sleep 3600"], name="pysvc",
        networks=["pynet"], labels={"app": "py"}, env=["A=1"],
        mode=docker.types.ServiceMode("replicated", replicas=2),
        endpoint_spec=docker.types.EndpointSpec(ports={18765: 80}),
        update_config=docker.types.UpdateConfig(parallelism=1, order="start-first"),
        restart_policy=docker.types.RestartPolicy(condition="any", delay=SECOND))
    wait_running(mgr, docker_engine, "pysvc", 2)
    assert [s.id for s in client.services.list(filters={"label": "app=py"})] == [svc.id]
    got = client.services.get("pysvc")
    spec = got.attrs["Spec"]
    assert spec["TaskTemplate"]["Networks"][0]["Target"] == net.id
    assert spec["UpdateConfig"]["Order"] == "start-first"
    assert got.attrs["Endpoint"]["Ports"][0]["PublishedPort"] == 18765
    assert got.attrs["Endpoint"]["VirtualIPs"] and {v["NetworkID"] for v in got.attrs["Endpoint"]["VirtualIPs"]} >= {
        net.id}
    wait_for(lambda: client.services.list(filters={"name": "pysvc"}, status=True)[0].attrs["ServiceStatus"]
             == {"RunningTasks": 2, "DesiredTasks": 2, "CompletedTasks": 0}, 20, what="ServiceStatus 2/2")

    tasks = svc.tasks(filters={"desired-state": "running"})
    assert len(tasks) == 2 and {t["Slot"] for t in tasks} == {1, 2}
    api_tasks = client.api.tasks(filters={"service": "pysvc", "desired-state": "running"})
    assert {t["ID"] for t in api_tasks} == {t["ID"] for t in tasks}
    task = client.api.inspect_task(tasks[0]["ID"])
    assert task["ServiceID"] == svc.id and task["Status"]["State"] == "running"
    assert any(a["Network"]["ID"] == net.id for a in task["NetworksAttachments"])

    lines = wait_for(lambda: b"".join(svc.logs(stdout=True, stderr=True)).count(b"hello-from-docker-py") == 2,
                     30, what="both tasks' log lines")
    assert lines

    svc.scale(3)
    wait_running(mgr, docker_engine, "pysvc", 3)
    svc.reload()
    assert svc.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 3
    assert svc.update(env=["A=2"], fetch_current_spec=True) == {"Warnings": None}
    wait_for(lambda: all("A=2" in c.attrs["Config"]["Env"] for c in mine(mgr, docker_engine, "pysvc"))
             and len(mine(mgr, docker_engine, "pysvc")) == 3, 60, what="updated tasks")
    svc.reload()
    before = {t["ID"] for t in svc.tasks(filters={"desired-state": "running"})}
    assert svc.force_update() == {"Warnings": None}  # Docker answers so too (docker-py passes it on)
    wait_for(lambda: len({t["ID"] for t in svc.tasks(filters={"desired-state": "running"})} - before) == 3, 60,
             what="force update to replace every task")
    svc.reload()
    assert svc.attrs["Spec"]["TaskTemplate"]["ForceUpdate"] == 1
    assert svc.attrs["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["A=2"]

    with pytest.raises(docker.errors.APIError) as err:
        client.networks.get("pynet").remove()
    assert err.value.status_code == 400 and "is in use by service" in str(err.value)
    svc.remove()
    label = {"label": "com.docker.swarm.service.name=pysvc"}
    wait_for(lambda: not docker_engine.api.containers(all=True, filters=label), 30, what="containers removed")
    with pytest.raises(docker.errors.NotFound):
        client.services.get("pysvc")
    net.remove()
    assert not client.networks.list(filters={"name": "pynet"})
    client.close()


def test_worker_leaves_and_is_removed(pyswarm):
    mgr, wrk = pyswarm
    client, worker = mgr.client(), wrk.client()
    worker_id = worker.info()["Swarm"]["NodeID"]
    assert worker.swarm.leave() is True
    assert worker.info()["Swarm"]["LocalNodeState"] == "inactive"
    node = client.nodes.get(worker_id)
    assert node.remove(force=True) is True
    assert [n.id for n in client.nodes.list()] == [client.info()["Swarm"]["NodeID"]]
    with pytest.raises(docker.errors.APIError) as err:
        client.swarm.leave()
    assert err.value.status_code == 503 and "--force" in str(err.value)
    client.close()
    worker.close()


# -- the seed's walk-through with the real CLI, v28 and v20 ---------------------------------------------
@pytest.mark.parametrize("cli", [DOCKER_V28, DOCKER_V20], ids=["v28", "v20"])
def test_seed_walkthrough(pyswarm, docker_engine, cli):
    mgr, _ = pyswarm
    v = "28" if cli == DOCKER_V28 else "20"

    def docker_cli(*args: str, **kw):
        return mgr.docker(*args, cli=cli, **kw)

    rows = docker_cli("network", "ls").stdout
    assert any(r.split()[1:] == ["ingress", "overlay", "swarm"] for r in rows.splitlines()[1:])

    port = 18100 + int(v)
    docker_cli("service", "create", "--name", f"test-app{v}", "-p", f"{port}:80", "--replicas=4", WEB)
    wait_running(mgr, docker_engine, f"test-app{v}", 4)
    ps = mgr.docker("ps", "--format", "table {{.ID}}\t{{.Status}}\t{{.Image}}").stdout
    assert ps.splitlines()[0].split() == ["CONTAINER", "ID", "STATUS", "IMAGE"] and WEB in ps

    host_port = 18200 + int(v)
    docker_cli("service", "create", "-d", "--publish", f"mode=host,target=80,published={host_port},protocol=tcp",
               "--name", f"nginx{v}", WEB)
    ports = mgr.request("GET", f"/services/nginx{v}")[2]["Endpoint"]["Ports"]
    assert ports == [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": host_port, "PublishMode": "host"}]

    subnet = "172.24.0.0/24" if v == "28" else "172.25.0.0/24"
    docker_cli("network", "create", "--subnet", subnet, "-d", "overlay", f"test-overlay{v}")
    row = next(r for r in docker_cli("network", "ls").stdout.splitlines() if f"test-overlay{v}" in r)
    assert row.split()[1:] == [f"test-overlay{v}", "overlay", "swarm"]
    # the seed's `{{.Endpoint.VirtualIPs}}`: one VIP on ingress and one on the overlay the service joins
    ids = {n: docker_cli("network", "inspect", n, "--format", "{{.Id}}").stdout.strip()
           for n in ("ingress", f"test-overlay{v}")}
    docker_cli("service", "update", "-d", "--network-add", f"test-overlay{v}", f"test-app{v}")
    vips = docker_cli("service", "inspect", f"test-app{v}", "--format", "{{.Endpoint.VirtualIPs}}").stdout.strip()
    overlay_net = re.escape(subnet.rsplit(".", 1)[0])
    assert re.fullmatch(rf"\[\{{{ids['ingress']} 10\.0\.0\.\d+/24\}} \{{{ids[f'test-overlay{v}']} "
                        rf"{overlay_net}\.\d+/24\}}\]", vips), vips

    with tempfile.TemporaryDirectory(prefix="shoal-seed-") as logdir:
        docker_cli("service", "create", "-d", "--name", f"bind{v}", "--mount",
                   f"type=bind,source={logdir},target=/var/log/nginx", "--replicas=2", WEB)
        docker_cli("service", "create", "-d", "--name", f"vol{v}", "--mount",
                   f"type=volume,source=nginx-log{v},target=/var/log/nginx", "--replicas=2", WEB)
        wait_running(mgr, docker_engine, f"bind{v}", 2)
        mounts = mine(mgr, docker_engine, f"bind{v}")[0].attrs["Mounts"]
        assert any(m["Source"] == logdir and m["Destination"] == "/var/log/nginx" for m in mounts)
        wait_running(mgr, docker_engine, f"vol{v}", 2)
        assert f"nginx-log{v}" in mgr.docker("volume", "ls").stdout
        docker_cli("service", "rm", f"bind{v}", f"vol{v}")

    me = json.loads(docker_cli("info", "--format", "{{json .Swarm}}").stdout)["NodeID"]
    header = docker_cli("node", "ls").stdout.splitlines()[0]
    assert header.split() == ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER", "STATUS", "ENGINE", "VERSION"]
    for avail in ("drain", "pause", "active"):
        docker_cli("node", "update", "--availability", avail, me)
        assert docker_cli("node", "inspect", me, "--format", "{{.Spec.Availability}}").stdout.strip() == avail
    wait_running(mgr, docker_engine, f"test-app{v}", 4, 60)

    docker_cli("node", "update", "--label-add", "storage=hdd", me)
    docker_cli("service", "create", "-d", "--name", f"label_nginx{v}", "--constraint", "node.labels.storage == hdd",
               "--replicas=5", WEB)
    docker_cli("service", "create", "-d", "--name", f"label_nginx2{v}", "--constraint", f"node.id == {me}",
               "--replicas=5", WEB)
    for name in (f"label_nginx{v}", f"label_nginx2{v}"):
        wait_running(mgr, docker_engine, name, 5)
        nodes = docker_cli("service", "ps", "--filter", "desired-state=running", "--format", "{{.Node}}",
                           name).stdout.split()
        assert len(nodes) == 5
    docker_cli("service", "create", "-d", "--name", f"nolabel{v}", "--constraint", "node.labels.storage == ssd",
               WEB)
    time.sleep(1)
    err = docker_cli("service", "ps", "--format", "{{.Error}}", "--no-trunc", f"nolabel{v}").stdout
    assert "no suitable node" in err
    docker_cli("node", "update", "--label-rm", "storage", me)

    names = [f"test-app{v}", f"nginx{v}", f"label_nginx{v}", f"label_nginx2{v}", f"nolabel{v}"]
    docker_cli("service", "rm", *names)
    wait_for(lambda: not any(mine(mgr, docker_engine, n) for n in names), 30, what="all removed")
    docker_cli("network", "rm", f"test-overlay{v}")
    mgr.docker("volume", "rm", f"nginx-log{v}", check=False)
