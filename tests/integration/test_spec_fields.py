"""ServiceSpec fields honoured (their effect on the container, the task or the scheduler) or refused (a
400 and nothing made), each test marked with the fields it shows (tests/unit/test_field_coverage.py)."""

from __future__ import annotations

import json

import pytest
from conftest import running_containers, wait_for

pytestmark = pytest.mark.integration

BUSYBOX = "shoal/demo-busybox:latest"
SECOND = 1_000_000_000


def _services(shoald) -> list[str]:
    return sorted(s["Spec"]["Name"] for s in shoald.request("GET", "/services")[2])


def _ps_errors(shoald, service: str) -> str:
    return shoald.docker("service", "ps", "--no-trunc", "--format", "{{.Error}}", service).stdout.strip()


@pytest.mark.field("TaskSpec.ContainerSpec.Command", "TaskSpec.ContainerSpec.Groups", "TaskSpec.ContainerSpec.TTY",
                   "TaskSpec.ContainerSpec.Hosts", "TaskSpec.ContainerSpec.DNSConfig.Nameservers",
                   "TaskSpec.ContainerSpec.DNSConfig.Search", "TaskSpec.ContainerSpec.DNSConfig.Options",
                   "TaskSpec.ContainerSpec.CapabilityDrop", "HealthConfig.Interval", "HealthConfig.Timeout",
                   "HealthConfig.Retries", "HealthConfig.StartPeriod", "Mount.ReadOnly", "Mount.Consistency",
                   "Mount.BindOptions.Propagation", "Mount.BindOptions.NonRecursive", "Mount.TmpfsOptions.SizeBytes",
                   "Mount.TmpfsOptions.Mode", "Mount.VolumeOptions.Labels", "Mount.VolumeOptions.DriverConfig.Name",
                   "Mount.VolumeOptions.DriverConfig.Options", "TaskSpec.Resources.Limits", "Limit.Pids",
                   "EndpointPortConfig.Protocol", "EndpointPortConfig.PublishMode",
                   "EndpointPortConfig.PublishedPort", "EndpointPortConfig.TargetPort", how="honoured")
def test_container_fields_reach_the_container(shoald, docker_engine, tmp_path):
    (tmp_path / "f").write_text("bound\n")
    shoald.docker(
        "service", "create", "-d", "--name", "fields", "--stop-grace-period", "1s", "--entrypoint", "sleep",
        "--group", "1234", "--tty",
        "--host", "db.local:10.1.2.3", "--dns", "10.9.9.9", "--dns-search", "example.test", "--dns-option", "ndots:2",
        "--cap-drop", "MKNOD", "--health-cmd", "true", "--health-interval", "2s", "--health-timeout", "3s",
        "--health-retries", "4", "--health-start-period", "5s", "--limit-pids", "77",
        "--mount", f"type=bind,source={tmp_path},target=/b,readonly,consistency=cached,bind-propagation=private,"
                   "bind-recursive=disabled",
        "--mount", "type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1770",
        "--mount", "type=volume,source=fields-vol,target=/v,volume-label=color=red,volume-driver=local,"
                   "volume-opt=type=tmpfs,volume-opt=device=tmpfs",
        "--publish", "mode=host,target=5353,published=18953,protocol=udp",
        BUSYBOX, "3600")
    c = wait_for(lambda: running_containers(docker_engine, "fields"), 60, what="the task running")[0]
    cfg, host = c.attrs["Config"], c.attrs["HostConfig"]
    assert cfg["Entrypoint"] == ["sleep"] and cfg["Cmd"] == ["3600"] and cfg["Tty"] is True
    assert host["GroupAdd"] == ["1234"] and host["ExtraHosts"] == ["db.local:10.1.2.3"]
    assert "10.9.9.9" in host["Dns"] and host["DnsSearch"] == ["example.test"] and host["DnsOptions"] == ["ndots:2"]
    assert any(cap.endswith("MKNOD") for cap in host["CapDrop"])
    assert {k: cfg["Healthcheck"][k] for k in ("Interval", "Timeout", "Retries", "StartPeriod")} == {
        "Interval": 2 * SECOND, "Timeout": 3 * SECOND, "Retries": 4, "StartPeriod": 5 * SECOND}
    assert host["PidsLimit"] == 77
    assert host["PortBindings"] == {"5353/udp": [{"HostIp": "", "HostPort": "18953"}]}
    asked = {m["Target"]: m for m in host["Mounts"]}
    assert asked["/b"]["ReadOnly"] is True and asked["/b"]["Consistency"] == "cached"
    assert asked["/b"]["BindOptions"] == {"Propagation": "private", "NonRecursive": True}
    made = {m["Destination"]: m for m in c.attrs["Mounts"]}
    assert made["/b"]["RW"] is False and made["/b"]["Propagation"] == "private"
    assert c.exec_run(["cat", "/b/f"]).output == b"bound\n"
    assert c.exec_run(["touch", "/b/x"]).exit_code != 0  # read-only
    assert asked["/t"]["TmpfsOptions"] == {"SizeBytes": 1 << 20, "Mode": 0o1770}
    tmpfs = next(line.split() for line in c.exec_run(["cat", "/proc/mounts"]).output.decode().splitlines()
                 if line.split()[1] == "/t")
    assert "size=1024k" in tmpfs[3].split(",") and "mode=1770" in tmpfs[3].split(",")
    vol = docker_engine.volumes.get("fields-vol").attrs
    assert vol["Driver"] == "local" and vol["Labels"] == {"color": "red"}
    assert vol["Options"] == {"type": "tmpfs", "device": "tmpfs"}
    shoald.docker("service", "rm", "fields")
    wait_for(lambda: not docker_engine.api.containers(all=True, filters={"id": c.id}), 30,
             what="the container removed")
    docker_engine.volumes.get("fields-vol").remove(force=True)


@pytest.mark.field("ServiceSpec.Networks", "NetworkAttachmentConfig.Target", "TaskSpec.ContainerSpec.OpenStdin",
                   "ServiceSpec.EndpointSpec", "EndpointSpec.Ports", "EndpointPortConfig.Name", how="honoured")
def test_deprecated_service_networks_open_stdin_and_port_name(shoald, docker_engine):
    """Through the API as an older client sends it: the networks in ServiceSpec.Networks (deprecated since
    API 1.44, still read by Docker) attach the task."""
    net = shoald.client().networks.create("fieldnet", driver="overlay")
    spec = {"Name": "oldnets", "Networks": [{"Target": "fieldnet"}],
            "TaskTemplate": {"ContainerSpec": {"Image": BUSYBOX, "Args": ["sleep", "3600"], "OpenStdin": True,
                                               "StopGracePeriod": SECOND}},
            "EndpointSpec": {"Ports": [{"Name": "web", "TargetPort": 80, "PublishedPort": 18954}]}}
    status, _, body = shoald.request("POST", "/services/create", spec)
    assert status == 201, body
    c = wait_for(lambda: running_containers(docker_engine, "oldnets"), 60, what="the task running")[0]
    assert c.attrs["Config"]["OpenStdin"] is True
    assert "fieldnet" in c.attrs["NetworkSettings"]["Networks"]
    _, _, svc = shoald.request("GET", "/services/oldnets")
    assert [n["Target"] for n in svc["Spec"]["TaskTemplate"]["Networks"]] == [net.id]
    assert svc["Endpoint"]["Ports"] == [{"Name": "web", "Protocol": "tcp", "TargetPort": 80, "PublishedPort": 18954,
                                         "PublishMode": "ingress"}]
    shoald.docker("service", "rm", "oldnets")
    wait_for(lambda: not running_containers(docker_engine, "oldnets"), 30, what="the container removed")
    net.remove()


@pytest.mark.field("TaskSpec.Placement.Platforms", "Platform.OS", "Platform.Architecture",
                   "TaskSpec.Resources.Reservations", "ResourceObject.NanoCPUs", how="honoured")
def test_platforms_and_cpu_reservations_place_tasks(shoald, docker_engine):
    arch = docker_engine.info()["Architecture"]
    base = {"TaskTemplate": {"ContainerSpec": {"Image": BUSYBOX, "Args": ["sleep", "3600"]}}}

    def create(name: str, **template) -> None:
        spec = json.loads(json.dumps({"Name": name, **base}))
        spec["TaskTemplate"].update(template)
        status, _, body = shoald.request("POST", "/services/create", spec)
        assert status == 201, body

    create("plat-win", Placement={"Platforms": [{"OS": "windows", "Architecture": "amd64"}]})
    create("plat-here", Placement={"Platforms": [{"OS": "windows", "Architecture": "amd64"},
                                                 {"OS": "linux", "Architecture": arch}]})
    create("greedy", Resources={"Reservations": {"NanoCPUs": 1000 * SECOND}})
    wait_for(lambda: running_containers(docker_engine, "plat-here"), 60, what="the linux task running")
    assert "no suitable node (unsupported platform on 1 node)" in wait_for(
        lambda: _ps_errors(shoald, "plat-win"), 15, what="a reason")
    assert "no suitable node (insufficient resources on 1 node)" in wait_for(
        lambda: _ps_errors(shoald, "greedy"), 15, what="a reason")
    assert not running_containers(docker_engine, "plat-win") and not running_containers(docker_engine, "greedy")
    shoald.docker("service", "rm", "plat-win", "plat-here", "greedy")


@pytest.mark.field("TaskSpec.RestartPolicy.MaxAttempts", "TaskSpec.RestartPolicy.Window", how="honoured")
def test_restart_max_attempts_within_a_window(shoald):
    """Two failing services: ``--restart-max-attempts 2`` stops after two restarts (three tasks); with a
    1 s window only the restarts of the last second count, and a task living 2 s is restarted again and
    again."""
    common = ["--restart-condition", "on-failure", "--restart-delay", "100ms", BUSYBOX, "sh", "-c"]
    shoald.docker("service", "create", "-d", "--name", "twice", "--restart-max-attempts", "2",
                  *common, "exit 1")
    shoald.docker("service", "create", "-d", "--name", "windowed", "--restart-max-attempts", "1",
                  "--restart-window", "1s", *common, "sleep 2; exit 1")

    def tasks(name: str) -> list[str]:
        return shoald.docker("service", "ps", "-q", name).stdout.split()

    wait_for(lambda: len(tasks("windowed")) >= 4, 40, what="the windowed service restarted thrice")
    failed = shoald.docker("service", "ps", "--format", "{{.CurrentState}}", "twice").stdout.splitlines()
    assert len(failed) == 3 and all(s.startswith("Failed") for s in failed), failed
    shoald.docker("service", "rm", "twice", "windowed")


IMAGE_SPEC = {"Image": BUSYBOX, "Args": ["sleep", "3600"]}
REFUSED = [
    pytest.param({"PluginSpec": {"Name": "x"}}, "TaskSpec: only container runtime is supported",
                 marks=pytest.mark.field("TaskSpec.PluginSpec", how="refused"), id="PluginSpec"),
    pytest.param({"NetworkAttachmentSpec": {"ContainerID": "x"}}, "TaskSpec: only container runtime is supported",
                 marks=pytest.mark.field("TaskSpec.NetworkAttachmentSpec", how="refused"), id="NetworkAttachmentSpec"),
    pytest.param({"Runtime": "plugin"}, "TaskSpec.Runtime is not supported by shoal",
                 marks=pytest.mark.field("TaskSpec.Runtime", how="refused"), id="Runtime"),
    pytest.param({"ContainerSpec": {**IMAGE_SPEC, "Isolation": "hyperv"}},
                 "ContainerSpec.Isolation is not supported by shoal: 'hyperv' is a Windows isolation technology",
                 marks=pytest.mark.field("TaskSpec.ContainerSpec.Isolation", how="refused"), id="Isolation"),
    pytest.param({"ContainerSpec": {**IMAGE_SPEC, "Healthcheck": {"Test": ["CMD", "true"], "StartInterval": SECOND}}},
                 "HealthConfig.StartInterval is not supported by shoal",
                 marks=pytest.mark.field("HealthConfig.StartInterval", how="refused"), id="StartInterval"),
    pytest.param({"ContainerSpec": {**IMAGE_SPEC, "Configs": [
        {"ConfigID": "x", "ConfigName": "x", "Runtime": {}}]}}, "config references with a runtime target",
                 marks=pytest.mark.field("TaskSpec.ContainerSpec.Configs.Runtime", how="refused"), id="ConfigRuntime"),
    *(pytest.param({"ContainerSpec": {**IMAGE_SPEC, "Mounts": [{"Type": "bind", "Source": "/tmp", "Target": "/x",
                                                                 "BindOptions": {path.rsplit(".", 1)[1]: True}}]}},
                   f"{path} is not supported by shoal", marks=mark, id=path)
      for path, mark in (
          ("Mount.BindOptions.CreateMountpoint",
           pytest.mark.field("Mount.BindOptions.CreateMountpoint", how="refused")),
          ("Mount.BindOptions.ReadOnlyNonRecursive",
           pytest.mark.field("Mount.BindOptions.ReadOnlyNonRecursive", how="refused")),
          ("Mount.BindOptions.ReadOnlyForceRecursive",
           pytest.mark.field("Mount.BindOptions.ReadOnlyForceRecursive", how="refused")))),
    pytest.param({"ContainerSpec": {**IMAGE_SPEC, "Mounts": [{"Type": "volume", "Source": "v", "Target": "/x",
                                                              "VolumeOptions": {"Subpath": "a"}}]}},
                 "Mount.VolumeOptions.Subpath is not supported by shoal",
                 marks=pytest.mark.field("Mount.VolumeOptions.Subpath", how="refused"), id="VolumeSubpath"),
    pytest.param({"ContainerSpec": {**IMAGE_SPEC, "Mounts": [{"Type": "tmpfs", "Target": "/x",
                                                              "ImageOptions": {"Subpath": "bin"}}]}},
                 "Mount.ImageOptions.Subpath is not supported by shoal",
                 marks=pytest.mark.field("Mount.ImageOptions.Subpath", how="refused"), id="ImageSubpath"),
    pytest.param({"ContainerSpec": {**IMAGE_SPEC, "Mounts": [{"Type": "image", "Source": BUSYBOX, "Target": "/x"}]}},
                 "Mount.Type 'image' is not supported by shoal", id="ImageMount"),
    pytest.param({"ContainerSpec": {**IMAGE_SPEC, "Mounts": [{"Type": "tmpfs", "Target": "/x",
                                                              "TmpfsOptions": {"Options": [["exec"]]}}]}},
                 "Mount.TmpfsOptions.Options is not supported by shoal",
                 marks=pytest.mark.field("Mount.TmpfsOptions.Options", how="refused"), id="TmpfsOptions"),
    pytest.param({"ContainerSpec": {**IMAGE_SPEC, "Mounts": [{"Type": "npipe", "Source": r"\\.\pipe\x",
                                                              "Target": "/x"}]}},
                 "Mount.Type 'npipe' is not supported by shoal: named pipes are Windows mounts", id="npipe"),
]


@pytest.mark.parametrize(("template", "message"), REFUSED)
def test_refused_fields_are_400_and_make_nothing(shoald, template, message):
    before = _services(shoald)
    spec = {"Name": "refused", "TaskTemplate": {"ContainerSpec": IMAGE_SPEC, **template}}
    status, headers, body = shoald.request("POST", "/services/create", spec)
    assert (status, headers["Content-Type"]) == (400, "application/json") and set(body) == {"message"}, body
    assert body["message"].startswith("rpc error: code = InvalidArgument desc = ") and message in body["message"]
    assert _services(shoald) == before
    # an update that sets the field is refused too, and the service keeps its spec
    status, _, created = shoald.request("POST", "/services/create", {"Name": "refused", "TaskTemplate": {
        "ContainerSpec": IMAGE_SPEC}})
    assert status == 201, created
    _, _, svc = shoald.request("GET", "/services/refused")
    status, _, body = shoald.request("POST", f"/services/refused/update?version={svc['Version']['Index']}", spec)
    assert status == 400 and message in body["message"]
    assert shoald.request("GET", "/services/refused")[2]["Spec"] == svc["Spec"]
    shoald.request("DELETE", "/services/refused")


@pytest.mark.field("TaskSpec.ContainerSpec.Isolation", how="refused")
def test_the_cli_user_sees_the_refusal(shoald):
    cp = shoald.docker("service", "create", "--name", "isolated", "--isolation", "process", BUSYBOX, check=False)
    assert cp.returncode != 0
    assert ("Error response from daemon: rpc error: code = InvalidArgument desc = ContainerSpec.Isolation is not "
            "supported by shoal: 'process' is a Windows isolation technology") in cp.stderr
    assert "isolated" not in _services(shoald)
