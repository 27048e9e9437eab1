"""The core scenario with the real docker CLI: replicated services as real containers, kept at
their count, scaled, updated and removed."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
import time

import pytest
from conftest import DOCKER_V20, DOCKER_V28, running_containers, wait_for

pytestmark = pytest.mark.integration

IMAGE = "shoal/demo-web:latest"


def _ps(shoald, service: str) -> list[dict]:
    out = shoald.docker("service", "ps", "--no-trunc", "--format", "{{json .}}", service).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _tasks(shoald, service: str) -> list[dict]:
    status, _, body = shoald.request("GET", "/tasks?filters=" + json.dumps({"service": [service]}))
    assert status == 200
    return body


def _docker_tty(shoald, *args: str, timeout: float = 120) -> str:
    """Run the v28 CLI on a terminal, as a user does (the CLI draws its progress bars only on one); the
    output without terminal control sequences."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    env = {**os.environ, "DOCKER_HOST": shoald.host, "TERM": "xterm"}
    proc = subprocess.Popen([DOCKER_V28, *args], stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the CLI exited and closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(max(1.0, deadline - time.time())) == 0, b"".join(chunks).decode(errors="replace")
    text = b"".join(chunks).decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


@pytest.mark.field("ServiceSpec.Name", "ServiceSpec.Mode.Replicated.Replicas", "ServiceSpec.TaskTemplate",
                   "TaskSpec.ContainerSpec.Image", how="honoured")
def test_create_four_replicas(shoald, docker_engine):
    out = _docker_tty(shoald, "service", "create", "--name", "web4", "--replicas", "4", IMAGE)
    lines = {part.strip() for part in re.split(r"[\r\n]+", out)}
    assert "overall progress: 4 out of 4 tasks" in lines, out
    for i in range(1, 5):  # each task's bar drawn in full
        assert f"{i}/4: running   [{'=' * 50}>]" in lines, out
    assert re.search(r"^verify: Service \S+ converged$", out.strip().splitlines()[-1].strip()), out
    ls = shoald.docker("service", "ls", "--format", "{{.Name}} {{.Replicas}} {{.Mode}}").stdout
    assert "web4 4/4 replicated" in ls
    rows = _ps(shoald, "web4")
    assert len(rows) == 4
    hostname = docker_engine.info()["Name"]
    assert all(r["CurrentState"].startswith("Running") and r["DesiredState"] == "Running" for r in rows)
    assert all(r["Node"] == hostname for r in rows)
    assert sorted(r["Name"] for r in rows) == [f"web4.{i}" for i in range(1, 5)]
    containers = running_containers(docker_engine, "web4")
    assert len(containers) == 4
    for c in containers:
        labels = c.labels
        task_id = labels["com.docker.swarm.task.id"]
        assert c.name == labels["com.docker.swarm.task.name"]
        assert c.name.startswith("web4.") and c.name.endswith(task_id)
        assert labels["com.docker.swarm.service.name"] == "web4"
        assert labels["com.docker.swarm.node.id"]
    # the same containers, seen through shoald's proxy with `docker ps` and answering HTTP
    ps = shoald.docker("ps", "--filter", "label=com.docker.swarm.service.name=web4", "--format", "{{.Names}}").stdout
    assert sorted(ps.split()) == sorted(c.name for c in containers)
    answer = shoald.docker("exec", containers[0].id, "wget", "-qO-", "http://127.0.0.1/").stdout
    assert containers[0].id[:12] in answer


@pytest.mark.field("TaskSpec.RestartPolicy.Delay", how="honoured")
def test_killed_container_is_replaced_in_its_slot(shoald, docker_engine):
    shoald.docker("service", "create", "-d", "--name", "phoenix", "--replicas", "2",
                  "--restart-delay", "1s", IMAGE)
    wait_for(lambda: len(running_containers(docker_engine, "phoenix")) == 2, 30, what="2 running")
    victim = running_containers(docker_engine, "phoenix")[0]
    slot = victim.name.split(".")[1]
    killed_at = time.time()
    victim.kill()

    def replaced():
        for c in running_containers(docker_engine, "phoenix"):
            if c.name.split(".")[1] == slot and c.id != victim.id:
                return c
        return None

    new = wait_for(replaced, 1 + 2 + 5, interval=0.1, what="a new task in the same slot")
    assert time.time() - killed_at < 1 + 2 + 1  # restart delay + 2 s (+1 s polling slack)
    assert new.name != victim.name
    # the task reports the container it runs in: its ID and the PID the engine gives
    new_task_id = new.labels["com.docker.swarm.task.id"]

    def running_task() -> dict | None:
        _, _, task = shoald.request("GET", f"/tasks/{new_task_id}")
        return task if task["Status"]["State"] == "running" else None

    task = wait_for(running_task, 10, what="the new task running")
    new.reload()
    assert new.attrs["State"]["Running"] and new.attrs["State"]["Pid"] > 0
    assert task["Status"]["ContainerStatus"]["PID"] == new.attrs["State"]["Pid"]
    assert task["Status"]["ContainerStatus"]["ContainerID"] == new.id
    assert task["Slot"] == int(slot)
    rows = _ps(shoald, "phoenix")
    old = [r for r in rows if r["ID"] == victim.labels["com.docker.swarm.task.id"]]
    assert old and old[0]["CurrentState"].startswith("Failed") and old[0]["DesiredState"] == "Shutdown"
    assert "non-zero exit (137)" in old[0]["Error"]


def test_default_restart_delay_is_five_seconds(shoald, docker_engine):
    shoald.docker("service", "create", "-d", "--name", "slowphoenix", IMAGE)
    wait_for(lambda: len(running_containers(docker_engine, "slowphoenix")) == 1, 30)
    victim = running_containers(docker_engine, "slowphoenix")[0]
    killed_at = time.time()
    victim.kill()
    time.sleep(3)
    assert running_containers(docker_engine, "slowphoenix") == []

    def replacement_running() -> dict | None:
        rows = [r for r in _ps(shoald, "slowphoenix") if r["DesiredState"] == "Running"]
        return rows[0] if rows and rows[0]["CurrentState"].startswith("Running") else None

    row = wait_for(replacement_running, 5 + 2 + 1, interval=0.1, what="the replacement running")
    elapsed = time.time() - killed_at
    assert 5 <= elapsed <= 5 + 2, f"kill → new task running took {elapsed:.1f} s"  # restart delay + 2 s
    assert row["ID"] != victim.labels["com.docker.swarm.task.id"]
    assert len(running_containers(docker_engine, "slowphoenix")) == 1


def test_scale_update_and_remove(shoald, docker_engine):
    shoald.docker("service", "create", "-d", "--name", "scaly", "--replicas", "4", IMAGE)
    wait_for(lambda: len(running_containers(docker_engine, "scaly")) == 4, 30)
    shoald.docker("service", "scale", "scaly=2")
    wait_for(lambda: len(running_containers(docker_engine, "scaly")) == 2, 15, what="scale down to 2")
    assert "2/2" in shoald.docker("service", "ls", "--filter", "name=scaly").stdout
    shoald.docker("service", "scale", "scaly=6")
    wait_for(lambda: len(running_containers(docker_engine, "scaly")) == 6, 30, what="scale up to 6")
    slots = sorted(int(c.name.split(".")[1]) for c in running_containers(docker_engine, "scaly"))
    assert len(set(slots)) == 6

    before = {c.id for c in running_containers(docker_engine, "scaly")}
    cp = shoald.docker("service", "update", "--env-add", "X=1", "scaly")
    assert "verify: Service scaly converged" in cp.stdout
    after = running_containers(docker_engine, "scaly")
    assert len(after) == 6 and not before & {c.id for c in after}
    for c in after:
        assert "X=1" in c.attrs["Config"]["Env"]

    shoald.docker("service", "rm", "scaly")
    gone_at = time.time()
    wait_for(lambda: docker_engine.api.containers(
        all=True, filters={"label": "com.docker.swarm.service.name=scaly"}) == [], 5, what="containers removed")
    assert time.time() - gone_at <= 5
    assert shoald.docker("service", "ps", "scaly", check=False).returncode != 0


@pytest.mark.field("ServiceSpec.Mode.Global", how="honoured")
def test_global_mode_runs_one_task_on_the_node(shoald, docker_engine):
    shoald.docker("service", "create", "--name", "everywhere", "--mode", "global", IMAGE)
    assert len(running_containers(docker_engine, "everywhere")) == 1
    ls = shoald.docker("service", "ls", "--filter", "name=everywhere", "--format", "{{.Mode}} {{.Replicas}}").stdout
    assert ls.strip() == "global 1/1"
    c = running_containers(docker_engine, "everywhere")[0]
    node_id = c.labels["com.docker.swarm.node.id"]
    assert c.name.startswith(f"everywhere.{node_id}.")


@pytest.mark.field("TaskSpec.RestartPolicy.Condition", how="honoured")
def test_restart_condition_none_leaves_exited_task(shoald, docker_engine):
    shoald.docker("service", "create", "-d", "--name", "oneshot", "--restart-condition", "none",
                  "shoal/demo-busybox:latest", "sh", "-c", "sleep 1; exit 3")

    def finished():
        rows = _ps(shoald, "oneshot")
        return rows if rows and rows[0]["CurrentState"].startswith("Failed") else None

    rows = wait_for(finished, 30, what="the task to fail")
    time.sleep(3)
    rows = _ps(shoald, "oneshot")
    assert len(rows) == 1, rows
    assert "non-zero exit (3)" in rows[0]["Error"]
    assert "0/1" in shoald.docker("service", "ls", "--filter", "name=oneshot").stdout


@pytest.mark.field("TaskSpec.ContainerSpec.Env", "TaskSpec.ContainerSpec.Dir", "TaskSpec.ContainerSpec.User",
                   "TaskSpec.ContainerSpec.Hostname", "TaskSpec.ContainerSpec.Labels",
                   "TaskSpec.ContainerSpec.StopSignal", "TaskSpec.ContainerSpec.StopGracePeriod",
                   "TaskSpec.ContainerSpec.Args", "TaskSpec.ContainerSpec.ReadOnly",
                   "TaskSpec.ContainerSpec.Init", "TaskSpec.ContainerSpec.CapabilityAdd",
                   "TaskSpec.ContainerSpec.Sysctls", "TaskSpec.ContainerSpec.Ulimits.Name",
                   "TaskSpec.ContainerSpec.Ulimits.Soft", "TaskSpec.ContainerSpec.Ulimits.Hard",
                   "TaskSpec.ContainerSpec.HealthCheck", "HealthConfig.Test", "HealthConfig.Interval",
                   "TaskSpec.ContainerSpec.Mounts", "Mount.Type", "Mount.Source", "Mount.Target",
                   "Mount.VolumeOptions.NoCopy", how="honoured")
def test_container_spec_reaches_the_container(shoald, docker_engine):
    shoald.docker(
        "service", "create", "--name", "specced", "--env", "A=b", "--workdir", "/tmp", "--user", "nobody",
        "--hostname", "myhost", "--container-label", "team=blue", "--read-only", "--init",
        "--stop-signal", "SIGUSR1", "--stop-grace-period", "7s", "--cap-add", "NET_ADMIN",
        "--sysctl", "net.ipv4.ip_forward=1", "--ulimit", "nofile=1024:2048",
        "--health-cmd", "true", "--health-interval", "1s",
        "--mount", "type=tmpfs,target=/scratch", "--mount", "type=volume,source=specced-vol,target=/data",
        "--mount", "type=volume,target=/anon,volume-nocopy",
        "shoal/demo-busybox:latest", "sleep", "3600")
    c = running_containers(docker_engine, "specced")[0]
    cfg, host = c.attrs["Config"], c.attrs["HostConfig"]
    assert "A=b" in cfg["Env"] and cfg["WorkingDir"] == "/tmp" and cfg["User"] == "nobody"
    assert cfg["Hostname"] == "myhost" and cfg["Labels"]["team"] == "blue"
    assert cfg["StopSignal"] == "SIGUSR1" and cfg["StopTimeout"] == 7
    assert cfg["Cmd"] == ["sleep", "3600"]
    assert host["ReadonlyRootfs"] and host["Init"]
    assert any(cap.endswith("NET_ADMIN") for cap in host["CapAdd"])
    assert host["Sysctls"] == {"net.ipv4.ip_forward": "1"}
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    assert cfg["Healthcheck"]["Test"] == ["CMD-SHELL", "true"] and cfg["Healthcheck"]["Interval"] == 10**9
    mounts = {m["Destination"]: m for m in c.attrs["Mounts"]}
    assert mounts["/data"]["Name"] == "specced-vol" and mounts["/data"]["Type"] == "volume"
    assert mounts["/anon"]["Type"] == "volume"
    assert next(m for m in host["Mounts"] if m["Target"] == "/anon")["VolumeOptions"]["NoCopy"] is True
    assert any(m["Target"] == "/scratch" and m["Type"] == "tmpfs" for m in host["Mounts"])
    assert docker_engine.volumes.get("specced-vol")


def test_missing_bind_source_rejects_the_task(shoald):
    cp = shoald.docker("service", "create", "--name", "badbind", "--detach", "--mount",
                       "type=bind,source=/nonexistent/shoal-src,target=/x", IMAGE)
    assert cp.returncode == 0

    def rejected():
        rows = _ps(shoald, "badbind")
        return [r for r in rows if r["CurrentState"].startswith("Rejected")]

    rows = wait_for(rejected, 30, what="a rejected task")
    assert ('invalid mount config for type "bind": bind source path does not exist: /nonexistent/shoal-src'
            in rows[0]["Error"])
    shoald.docker("service", "rm", "badbind")


def test_image_that_cannot_be_pulled_is_rejected(shoald):
    shoald.docker("service", "create", "-d", "--name", "noimage", "shoal/does-not-exist:1")

    def rejected():
        return [r for r in _ps(shoald, "noimage") if r["CurrentState"].startswith("Rejected")]

    rows = wait_for(rejected, 60, what="a rejected task")
    # as Docker: the failed pull is only logged, the container create then fails with the engine's error
    assert rows[0]["Error"] == '"No such image: shoal/does-not-exist:1"', rows[0]
    _, _, task = shoald.request("GET", f"/tasks/{rows[0]['ID']}")
    status = task["Status"]
    assert (status["State"], status["Message"], status["Err"]) == (
        "rejected", "preparing", "No such image: shoal/does-not-exist:1"), status
    assert "ContainerStatus" not in status or not status["ContainerStatus"].get("ContainerID"), status
    shoald.docker("service", "rm", "noimage")


def test_node_ls_and_inspect(shoald, docker_engine):
    out = shoald.docker("node", "ls", "--format", "{{.Self}} {{.Hostname}} {{.Status}} {{.Availability}} "
                        "{{.ManagerStatus}} {{.EngineVersion}}").stdout.strip()
    info = docker_engine.info()
    assert out == f"true {info['Name']} Ready Active Leader {info['ServerVersion']}"
    node = json.loads(shoald.docker("node", "inspect", "self").stdout)[0]
    assert node["Description"]["Resources"]["NanoCPUs"] == info["NCPU"] * 10**9
    assert node["Spec"]["Role"] == "manager"
    sw = json.loads(shoald.docker("info", "--format", "{{json .Swarm}}").stdout)
    assert sw["LocalNodeState"] == "active" and sw["ControlAvailable"] and sw["Managers"] == 1


def test_v20_client(shoald, docker_engine):
    cp = shoald.docker("service", "create", "--name", "oldcli", "--replicas", "2", IMAGE, cli=DOCKER_V20)
    assert "converged" in cp.stdout + cp.stderr
    assert "2/2" in shoald.docker("service", "ls", cli=DOCKER_V20).stdout
    assert len(shoald.docker("service", "ps", "-q", "oldcli", cli=DOCKER_V20).stdout.split()) == 2
    shoald.docker("service", "rm", "oldcli", cli=DOCKER_V20)


def test_ping_headers(shoald):
    status, headers, body = shoald.request("GET", "/_ping")
    assert status == 200 and body == "OK"
    assert headers["Swarm"] == "active/manager" and headers["Ostype"] == "linux"
    assert headers["Api-Version"].startswith("1.")
    status, _, _ = shoald.request("GET", "/v1.41/services")
    assert status == 200



def test_proxy_streams_and_attaches(shoald, docker_engine):
    """Non-swarm calls go to the engine untouched: attach (docker run), streaming logs, exec with stdin."""
    cp = shoald.docker("run", "--rm", "shoal/demo-busybox:latest", "echo", "through shoald")
    assert cp.stdout.strip() == "through shoald"
    cp = subprocess.run([DOCKER_V28, "-H", shoald.host, "run", "--rm", "-i", "shoal/demo-busybox:latest", "cat"],
                        input="piped in\n", capture_output=True, text=True, timeout=60)
    assert cp.stdout.strip() == "piped in"
    name = "shoal-proxy-logs"
    shoald.docker("run", "-d", "--name", name, "shoal/demo-busybox:latest", "sh", "-c",
                  "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.5; done")
    try:
        follow = subprocess.Popen([DOCKER_V28, "-H", shoald.host, "logs", "-f", name], stdout=subprocess.PIPE,
                                  text=True)
        first = follow.stdout.readline().strip()  # arrives while the container still runs
        assert first == "line1"
        rest = follow.communicate(timeout=30)[0].split()
        assert rest == [f"line{i}" for i in range(2, 7)]
    finally:
        docker_engine.api.remove_container(name, force=True)


@pytest.mark.field("EndpointSpec.Ports", "EndpointPortConfig.TargetPort", "EndpointPortConfig.PublishMode",
                   how="honoured")
def test_published_port_without_number_gets_one_from_the_range(shoald):
    shoald.docker("service", "create", "-d", "--name", "autoport", "--publish", "target=80", IMAGE)
    ports = json.loads(shoald.docker("service", "inspect", "autoport", "--format",
                                     "{{json .Endpoint.Ports}}").stdout)
    assert len(ports) == 1 and 30000 <= ports[0]["PublishedPort"] <= 32767
    assert ports[0]["TargetPort"] == 80 and ports[0]["PublishMode"] == "ingress"
    shoald.docker("service", "rm", "autoport")
