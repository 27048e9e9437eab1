"""Task-spec fields through the real docker CLI (and the API where the CLI has no flag): each either
reaches the task's container, its task or ``docker service ps`` (``how="honoured"``), or is refused with
a 400 that leaves nothing behind (``how="refused"``). Templates are expanded as Docker's swarm does."""

from __future__ import annotations

import json
import urllib.request

import docker
import pytest
from conftest import DOCKER_V20, DOCKER_V28, free_port, ps_rows, running_containers, wait_for

pytestmark = pytest.mark.integration

WEB = "shoal/demo-web:latest"
BUSYBOX = "shoal/demo-busybox:latest"
# a task that stops at once on SIGTERM (busybox sleep as PID 1 would wait out the grace period)
LOOP = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


def containers(engine: docker.DockerClient, service: str, n: int = 1) -> list:
    return wait_for(lambda: (lambda cs: cs if len(cs) == n else None)(running_containers(engine, service)),
                    30, what=f"{n} running task(s) of {service}")


def sh(container, script: str) -> str:
    code, out = container.exec_run(["sh", "-c", script])
    assert code == 0, out
    return out.decode().strip()


def remove(shoald, engine: docker.DockerClient, *services: str) -> None:
    shoald.docker("service", "rm", *services, check=False)
    for s in services:
        label = f"com.docker.swarm.service.name={s}"
        wait_for(lambda label=label: not engine.api.containers(all=True, filters={"label": label}), 30,
                 what=f"the containers of {s} removed")


def service_names(shoald) -> set[str]:
    return set(shoald.docker("service", "ls", "--format", "{{.Name}}").stdout.split())


def create_by_api(shoald, name: str, container_spec: dict, **task_template: object) -> tuple[int, dict]:
    spec = {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": BUSYBOX, "Command": LOOP, **container_spec},
                                           **task_template}}
    status, _, body = shoald.request("POST", "/services/create", spec)
    return status, body


# -- templates ------------------------------------------------------------------------------------------------

@pytest.mark.field("TaskSpec.ContainerSpec.Hostname", "TaskSpec.ContainerSpec.Env", "Mount.Source", "Mount.Target",
                   how="honoured")
def test_templates_expand_in_hostname_env_and_mounts(shoald, docker_engine):
    """Docker's swarm expands these per task on its node: the hostname, env values and mount source and
    target of every task are its own; the service keeps the templates."""
    hostname = docker_engine.info()["Name"]
    shoald.docker("service", "create", "-d", "--name", "tmpl", "--replicas", "2", "--label", "tier=web",
                  "--hostname", "{{.Node.Hostname}}-{{.Task.Slot}}",
                  "--env", "SVC={{.Service.Name}}/{{.Service.ID}}", "--env", "LABELS={{.Service.Labels}}",
                  "--env", "NODE={{.Node.ID}} {{.Node.Platform.OS}}/{{.Node.Platform.Architecture}}",
                  "--env", "TASK={{.Task.Name}} {{.Task.ID}} {{.Task.Slot}}",
                  "--mount", "type=volume,source=tmpl-{{.Task.Slot}},target=/data/{{.Service.Name}}",
                  BUSYBOX, *LOOP)
    try:
        [svc] = json.loads(shoald.docker("service", "inspect", "tmpl").stdout)
        assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Hostname"] == "{{.Node.Hostname}}-{{.Task.Slot}}"
        node_id = json.loads(shoald.docker("node", "inspect", "self").stdout)[0]["ID"]
        info = docker_engine.info()
        for c in containers(docker_engine, "tmpl", 2):
            slot = c.labels["com.docker.swarm.task.name"].split(".")[1]
            task_id = c.labels["com.docker.swarm.task.id"]
            assert sh(c, "hostname") == f"{hostname}-{slot}"
            env = dict(line.split("=", 1) for line in sh(c, "env").splitlines() if "=" in line)
            assert env["SVC"] == f"tmpl/{svc['ID']}"
            assert env["LABELS"] == "map[tier:web]"
            assert env["NODE"] == f"{node_id} {info['OSType']}/{info['Architecture']}"
            assert env["TASK"] == f"tmpl.{slot}.{task_id} {task_id} {slot}"
            [mount] = [m for m in c.attrs["Mounts"] if m["Type"] == "volume"]
            assert (mount["Name"], mount["Destination"]) == (f"tmpl-{slot}", "/data/tmpl")
    finally:
        remove(shoald, docker_engine, "tmpl")
        for slot in (1, 2):
            docker_engine.volumes.get(f"tmpl-{slot}").remove(force=True)


@pytest.mark.parametrize(("flag", "value", "desc"), [
    ("--env", "X={{.Foo}}", 'expanding env failed: expanding env "X={{.Foo}}": template: expansion:1:2: '
     'executing "expansion" at <.Foo>: can\'t evaluate field Foo in type *template.Context'),
    ("--hostname", "{{.Node.Name}}", 'expanding hostname failed: template: expansion:1:7: executing "expansion" '
     "at <.Node.Name>: can't evaluate field Name in type struct { ID string; Hostname string; Platform "
     "template.Platform }"),
    ("--env", 'X={{env "HOME"}}', 'expanding env failed: expanding env "X={{env \\"HOME\\"}}": template: '
     'expansion:1: function "env" not defined'),
])
def test_a_bad_template_is_refused_at_create_as_docker_does(shoald, flag, value, desc):
    cp = shoald.docker("service", "create", "-d", "--name", "badtmpl", flag, value, BUSYBOX, *LOOP, check=False)
    assert cp.returncode != 0
    assert cp.stderr.strip() == f"Error response from daemon: rpc error: code = InvalidArgument desc = {desc}"
    assert "badtmpl" not in service_names(shoald)


# -- log driver, OOM score, memory reservation -------------------------------------------------------------

@pytest.mark.field("TaskSpec.LogDriver.Name", "TaskSpec.LogDriver.Options", how="honoured")
def test_log_driver_and_options_reach_the_container(shoald, docker_engine):
    shoald.docker("service", "create", "-d", "--name", "logs", "--log-driver", "json-file",
                  "--log-opt", "max-size=1k", "--log-opt", "max-file=2", BUSYBOX, "sh", "-c",
                  "trap 'exit 0' TERM; while true; do echo line; sleep 1; done")
    try:
        [c] = containers(docker_engine, "logs")
        assert c.attrs["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "2",
                                                                                       "max-size": "1k"}}
        shoald.docker("service", "update", "-d", "--log-driver", "none", "logs")
        [c2] = wait_for(lambda: [x for x in running_containers(docker_engine, "logs") if x.id != c.id] or None, 30,
                        what="the updated task")
        assert c2.attrs["HostConfig"]["LogConfig"] == {"Type": "none", "Config": {}}
        with pytest.raises(docker.errors.APIError, match="configured logging driver does not support reading"):
            c2.logs()
    finally:
        remove(shoald, docker_engine, "logs")


@pytest.mark.field("TaskSpec.ContainerSpec.OomScoreAdj", how="honoured")
def test_oom_score_adj_is_the_containers(shoald, docker_engine):
    status, body = create_by_api(shoald, "oom", {"OomScoreAdj": 444})
    assert status == 201, body
    try:
        [c] = containers(docker_engine, "oom")
        assert sh(c, "cat /proc/1/oom_score_adj") == "444"
        status, body = create_by_api(shoald, "oom2", {"OomScoreAdj": 1001})
        assert (status, body["message"]) == (400, "rpc error: code = InvalidArgument desc = Invalid value 1001, "
                                                  "range for oom score adj is [-1000, 1000]")
        assert "oom2" not in service_names(shoald)
    finally:
        remove(shoald, docker_engine, "oom")


@pytest.mark.field("ResourceObject.MemoryBytes", how="honoured")
def test_reserved_memory_is_the_containers_soft_limit(shoald, docker_engine):
    shoald.docker("service", "create", "-d", "--name", "resv", "--reserve-memory", "48m", BUSYBOX, *LOOP)
    try:
        [c] = containers(docker_engine, "resv")
        assert c.attrs["HostConfig"]["MemoryReservation"] == 48 << 20
        assert sh(c, "cat /sys/fs/cgroup/memory/memory.soft_limit_in_bytes 2>/dev/null || "
                     "cat /sys/fs/cgroup/memory.low") == str(48 << 20)
    finally:
        remove(shoald, docker_engine, "resv")


# -- privileges -------------------------------------------------------------------------------------------------

def status_field(container, name: str) -> str:
    return sh(container, f"grep '^{name}:' /proc/1/status").split()[1]


@pytest.mark.field("TaskSpec.ContainerSpec.Privileges.NoNewPrivileges",
                   "TaskSpec.ContainerSpec.Privileges.Seccomp.Mode",
                   "TaskSpec.ContainerSpec.Privileges.Seccomp.Profile", how="honoured")
def test_no_new_privileges_and_seccomp_reach_the_container(shoald, docker_engine):
    deny_mkdir = {"defaultAction": "SCMP_ACT_ALLOW",
                  "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
    specs = {
        "p-default": {"Privileges": {"Seccomp": {"Mode": "default"}}},
        "p-unconfined": {"Privileges": {"NoNewPrivileges": True, "Seccomp": {"Mode": "unconfined"}}},
        "p-custom": {"Privileges": {"Seccomp": {"Mode": "custom", "Profile": json.dumps(deny_mkdir)}}},
    }
    try:
        for name, cs in specs.items():
            status, body = create_by_api(shoald, name, cs)
            assert status == 201, body
        [default], [unconfined], [custom] = (containers(docker_engine, n) for n in specs)
        assert (status_field(default, "Seccomp"), status_field(default, "NoNewPrivs")) == ("2", "0")
        assert (status_field(unconfined, "Seccomp"), status_field(unconfined, "NoNewPrivs")) == ("0", "1")
        assert status_field(custom, "Seccomp") == "2"
        code, out = custom.exec_run(["mkdir", "/tmp/x"])
        assert code != 0 and b"Operation not permitted" in out
        assert default.exec_run(["mkdir", "/tmp/x"])[0] == 0
    finally:
        remove(shoald, docker_engine, *specs)


@pytest.mark.field("TaskSpec.ContainerSpec.Privileges.AppArmor.Mode", how="refused")
def test_apparmor_is_refused(shoald):
    status, body = create_by_api(shoald, "aa", {"Privileges": {"AppArmor": {"Mode": "disabled"}}})
    assert (status, body["message"]) == (400, "rpc error: code = InvalidArgument desc = Privileges.AppArmor cannot "
                                              "be honoured: the kernel of shoal's nodes has no AppArmor; remove the "
                                              "AppArmor setting")
    assert "aa" not in service_names(shoald)


@pytest.mark.field("TaskSpec.ContainerSpec.Privileges.SELinuxContext.User",
                   "TaskSpec.ContainerSpec.Privileges.SELinuxContext.Type", how="refused")
def test_selinux_labels_are_refused(shoald):
    client = shoald.client()
    try:
        with pytest.raises(docker.errors.APIError) as e:
            client.services.create(BUSYBOX, LOOP, name="selinux", privileges=docker.types.Privileges(
                selinux_user="system_u", selinux_type="svirt_lxc_net_t"))
        assert e.value.status_code == 400
        assert "Privileges.SELinuxContext cannot be honoured: SELinux is not enabled on shoal's nodes" in str(e.value)
    finally:
        client.close()
    assert "selinux" not in service_names(shoald)


@pytest.mark.field("TaskSpec.ContainerSpec.Privileges.CredentialSpec.File", how="refused")
def test_credential_specs_are_refused(shoald):
    for cli in (DOCKER_V28, DOCKER_V20):
        cp = shoald.docker("service", "create", "-d", "--name", "gmsa", "--credential-spec", "file://spec.json",
                           BUSYBOX, *LOOP, cli=cli, check=False)
        assert cp.returncode != 0
        assert cp.stderr.strip() == ("Error response from daemon: rpc error: code = InvalidArgument desc = "
                                     "Privileges.CredentialSpec cannot be honoured: credential specs are for "
                                     "Windows containers (gMSA) and shoal's nodes run Linux")
    assert "gmsa" not in service_names(shoald)


# -- networks and ports -------------------------------------------------------------------------------------------

@pytest.mark.field("NetworkAttachmentConfig.DriverOpts", how="honoured")
def test_driver_options_reach_the_tasks_endpoint(shoald, docker_engine):
    shoald.docker("network", "create", "-d", "overlay", "optnet")
    try:
        shoald.docker("service", "create", "-d", "--name", "opts", "--network",
                      "name=optnet,driver-opt=com.example.mtu=1400,driver-opt=com.example.tier=db", BUSYBOX, *LOOP)
        [c] = containers(docker_engine, "opts")
        endpoints = [ep for ep in c.attrs["NetworkSettings"]["Networks"].values() if ep.get("DriverOpts")]
        assert [ep["DriverOpts"] for ep in endpoints] == [{"com.example.mtu": "1400", "com.example.tier": "db"}]
        net_id = json.loads(shoald.docker("network", "inspect", "optnet").stdout)[0]["Id"]
        [svc] = json.loads(shoald.docker("service", "inspect", "opts").stdout)
        assert svc["Spec"]["TaskTemplate"]["Networks"] == [{"Target": net_id, "DriverOpts": {
            "com.example.mtu": "1400", "com.example.tier": "db"}}]
    finally:
        remove(shoald, docker_engine, "opts")
        shoald.docker("network", "rm", "optnet", check=False)


@pytest.mark.field("EndpointPortConfig.PublishMode", "EndpointPortConfig.PublishedPort", how="honoured")
def test_host_mode_ports_show_in_service_ps(shoald, docker_engine):
    """``docker service ps`` shows each task's host-mode ports (its PortStatus), the fixed one and the
    one the engine chose, and the task answers on them."""
    port = free_port()
    shoald.docker("service", "create", "-d", "--name", "hostport", "--hostname", "{{.Service.Name}}-{{.Task.Slot}}",
                  "--publish", f"mode=host,target=80,published={port}", "--publish", "mode=host,target=8080",
                  "--env", "PORT=80", WEB)
    try:
        [c] = containers(docker_engine, "hostport")
        bound = wait_for(lambda: (lambda p: p if p.get("8080/tcp") else None)(
            docker_engine.containers.get(c.id).attrs["NetworkSettings"]["Ports"]), 10, what="the ports bound")
        dynamic = {int(b["HostPort"]) for b in bound["8080/tcp"]}
        [row] = wait_for(lambda: [r for r in ps_rows(shoald, "hostport") if r["Ports"]] or None, 30,
                         what="the task's ports in service ps")
        shown = row["Ports"].split(",")
        assert f"*:{port}->80/tcp" in shown and {f"*:{p}->8080/tcp" for p in dynamic} <= set(shown)
        assert set(shown) <= {f"*:{port}->80/tcp"} | {f"*:{p}->8080/tcp" for p in dynamic}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.read().decode().strip() == "Hello from hostport-1"
        client = shoald.client()
        try:
            [task] = client.api.tasks(filters={"service": "hostport"})
        finally:
            client.close()
        assert {(p["TargetPort"], p["PublishMode"]) for p in task["Status"]["PortStatus"]["Ports"]} == \
            {(80, "host"), (8080, "host")}
    finally:
        remove(shoald, docker_engine, "hostport")


# -- generic resources --------------------------------------------------------------------------------------------

@pytest.mark.field("ResourceObject.GenericResources", how="honoured")
def test_a_generic_resource_no_node_has_keeps_the_task_pending(shoald, docker_engine):
    """This engine advertises no generic resources: a task that reserves one is not placed, and says why
    (tests/cluster/test_generic_resources_lab.py runs them on nodes that have them)."""
    shoald.docker("service", "create", "-d", "--name", "gpu", "--generic-resource", "gpu=1", BUSYBOX, *LOOP)
    try:
        [row] = wait_for(lambda: [r for r in ps_rows(shoald, "gpu") if r["Error"]] or None, 30,
                         what="the scheduler's answer")
        assert row["CurrentState"].startswith("Pending")
        assert row["Error"] == "no suitable node (insufficient resources on 1 node)"
        assert not running_containers(docker_engine, "gpu")
    finally:
        remove(shoald, docker_engine, "gpu")
