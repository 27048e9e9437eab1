"""Task-spec fields shoal honours or refuses (issue 11, items 4 and 5), in process: templates of a
ContainerSpec (Go's own output and errors, checked against Go 1.19's text/template), the refusals of the
spec validation, what the executor asks of the engine, generic resources in the scheduler, and the
registry credentials (sealed in the store, opened only for the task's node)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shoal.agent.executor.docker import container_config, port_status
from shoal.agent.runner import expanded
from shoal.manager.allocator import Allocator
from shoal.manager.control import ControlAPI
from shoal.manager.dispatcher import for_node
from shoal.manager.orchestrator.common import new_task
from shoal.manager.scheduler.scheduler import Scheduler
from shoal.manager.secrets import Sealer, new_data_key
from shoal.model.errors import APIError
from shoal.model.service import PREVIOUS_SEALED_AUTH, SEALED_AUTH, validate_spec
from shoal.model.task import REGISTRY_AUTH, public
from shoal.model.template import TemplateError, context, expand, expand_container_spec
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects

TASK = {"ID": "tid", "ServiceID": "sid", "NodeID": "nid", "Slot": 1,
        "ServiceAnnotations": {"Name": "web", "Labels": {"a": "1", "b": "x y"}}}
NODE = {"Hostname": "host", "Platform": {"Architecture": "x86_64", "OS": "linux"}}


def ctx() -> Any:
    return context(TASK, NODE, "web.1.tid")


# -- templates: Go's text/template answers, as Go 1.19 gives them -------------------------------------------

@pytest.mark.parametrize(("text", "out"), [
    ("{{.Node.Hostname}}-{{.Task.Slot}}", "host-1"),
    ("{{ .Service.ID }}/{{.Service.Name}} {{.Task.Name}} {{.Task.ID}}", "sid/web web.1.tid tid"),
    ("{{.Node.Platform.OS}}/{{.Node.Platform.Architecture}} {{.Node.ID}}", "linux/x86_64 nid"),
    ("{{.Service.Labels}} {{.Service.Labels.a}} {{index .Service.Labels \"zz\"}}.", "map[a:1 b:x y] 1 ."),
    ('{{join "," .Service.Name .Task.Slot}} {{`raw`}} {{"a\\tb"}}', "web,1 raw a\tb"),
    ("a  {{- .Task.ID -}}  \n b{{/* c */}}", "atidb"),
    ("{{ . }}", "{{sid web map[a:1 b:x y]} {nid host {x86_64 linux}} {tid web.1.tid 1}}"),
    ("{{.Node.Platform}} a}}b", "{x86_64 linux} a}}b"),
])
def test_templates_expand_as_go_does(text, out):
    assert expand(text, ctx()) == out


@pytest.mark.parametrize(("text", "err"), [
    ("{{.Service.Labels.foo}}",
     'template: expansion:1:10: executing "expansion" at <.Service.Labels.foo>: map has no entry for key "foo"'),
    ("{{.Foo}}", 'template: expansion:1:2: executing "expansion" at <.Foo>: can\'t evaluate field Foo in type '
                 "*template.Context"),
    ("x{{.Service.Foo}}", 'template: expansion:1:11: executing "expansion" at <.Service.Foo>: can\'t evaluate '
                          "field Foo in type struct { ID string; Name string; Labels map[string]string }"),
    ("{{.Node.Platform.Foo}}", 'template: expansion:1:7: executing "expansion" at <.Node.Platform.Foo>: can\'t '
                               "evaluate field Foo in type template.Platform"),
    ("{{.Service.Name.X}}", 'template: expansion:1:10: executing "expansion" at <.Service.Name.X>: can\'t '
                            "evaluate field X in type string"),
    ("a\nb{{ .Task.Bar }}", 'template: expansion:2:9: executing "expansion" at <.Task.Bar>: can\'t evaluate field '
                            "Bar in type struct { ID string; Name string; Slot string }"),
    ('{{env "X"}}', 'template: expansion:1: function "env" not defined'),
    ("{{.Foo}}{{bar}}", 'template: expansion:1: function "bar" not defined'),  # parsed before it runs
    ("{{.Node", "template: expansion:1: unclosed action"),
])
def test_template_errors_are_gos(text, err):
    with pytest.raises(TemplateError) as e:
        expand(text, ctx())
    assert str(e.value) == err


@pytest.mark.parametrize("text", ['{{printf "%d" 1}}', "{{if .Task.Slot}}y{{end}}", "{{.Task.ID | len}}"])
def test_go_builtins_shoal_lacks_are_refused_by_name(text):
    with pytest.raises(TemplateError, match="shoal cannot expand"):
        expand(text, ctx())


def test_a_container_spec_expands_env_mounts_and_hostname():
    cs = {"Image": "x", "Hostname": "{{.Node.Hostname}}-{{.Task.Slot}}",
          "Env": ["SVC={{.Service.Name}}", "PLAIN", "EMPTY="],
          "Mounts": [{"Type": "volume", "Source": "data-{{.Task.Slot}}", "Target": "/d/{{.Service.Name}}",
                      "VolumeOptions": {"Labels": {"node": "{{.Node.ID}}"},
                                        "DriverConfig": {"Name": "local", "Options": {"o": "{{.Task.ID}}"}}}},
                     {"Type": "tmpfs", "Target": "/t"}]}
    out = expand_container_spec(cs, ctx())
    assert out["Hostname"] == "host-1" and out["Env"] == ["SVC=web", "PLAIN", "EMPTY="]
    assert out["Mounts"][0] == {"Type": "volume", "Source": "data-1", "Target": "/d/web", "VolumeOptions": {
        "Labels": {"node": "nid"}, "DriverConfig": {"Name": "local", "Options": {"o": "tid"}}}}
    assert out["Mounts"][1] == {"Type": "tmpfs", "Target": "/t"}
    assert cs["Hostname"].startswith("{{")  # the spec itself is left as it is


def test_the_runner_expands_for_its_node_and_the_create_body_carries_it():
    task = {**TASK, "Spec": {"ContainerSpec": {"Image": "x", "Hostname": "{{.Node.Hostname}}-{{.Task.Slot}}",
                                               "Env": ["N={{.Node.Platform.OS}}"]}}}
    cfg = container_config(expanded(task, NODE), "nid")
    assert cfg["Hostname"] == "host-1" and cfg["Env"] == ["N=linux"]


@pytest.mark.parametrize(("cs", "desc"), [
    ({"Env": ["X={{.Foo}}"]}, 'expanding env failed: expanding env "X={{.Foo}}": template: expansion:1:2: '
                              'executing "expansion" at <.Foo>: can\'t evaluate field Foo in type *template.Context'),
    ({"Hostname": "{{.Service.Labels.x}}"}, 'expanding hostname failed: template: expansion:1:10: executing '
                                            '"expansion" at <.Service.Labels.x>: map has no entry for key "x"'),
    ({"Mounts": [{"Type": "volume", "Source": "{{.Nope}}", "Target": "/d"}]},
     'expanding mounts failed: expanding mount source "{{.Nope}}": template: expansion:1:2: executing '
     '"expansion" at <.Nope>: can\'t evaluate field Nope in type *template.Context'),
    ({"Env": ['X={{secret "s"}}']}, 'expanding env failed: expanding env "X={{secret \\"s\\"}}": template: '
                                    'expansion:1: function "secret" not defined'),
])
def test_bad_templates_are_refused_at_create_as_swarmkit_does(cs, desc):
    spec = {"Name": "t", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", **cs}}}
    with pytest.raises(APIError) as e:
        validate_spec(spec)
    assert (e.value.status, e.value.message) == (400, f"rpc error: code = InvalidArgument desc = {desc}")


# -- refusals -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cs", "tt", "message"), [
    ({"Privileges": {"AppArmor": {"Mode": "default"}}}, {}, "AppArmor cannot be honoured"),
    ({"Privileges": {"SELinuxContext": {"User": "u"}}}, {}, "SELinuxContext cannot be honoured"),
    ({"Privileges": {"CredentialSpec": {"File": "spec.json"}}}, {}, "credential specs are for Windows"),
    ({"Privileges": {"Seccomp": {"Mode": "strict"}}}, {}, "unrecognized mode 'strict'"),
    ({"Privileges": {"Seccomp": {"Mode": "custom"}}}, {}, "mode custom needs a Profile"),
    ({"Privileges": {"Seccomp": {"Mode": "custom", "Profile": "{"}}}, {}, "Profile is not JSON"),
    ({"Privileges": {"Seccomp": {"Mode": "default", "Profile": "{}"}}}, {}, "only used with mode custom"),
    ({"OomScoreAdj": 1001}, {}, "Invalid value 1001, range for oom score adj is [-1000, 1000]"),
    ({}, {"Resources": {"Reservations": {"GenericResources": [{"NamedResourceSpec": {"Kind": "gpu", "Value": "A"}}]}}},
     "Named Generic Resources is not supported"),
    ({}, {"Resources": {"Reservations": {"GenericResources": [{"DiscreteResourceSpec": {"Kind": "gpu",
                                                                                        "Value": -1}}]}}},
     "cannot ask for negative resource gpu"),
])
def test_fields_shoal_cannot_honour_are_refused(cs, tt, message):
    spec = {"Name": "t", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", **cs}, **tt}}
    with pytest.raises(APIError) as e:
        validate_spec(spec)
    assert e.value.status == 400 and message in e.value.message


def test_what_can_be_honoured_passes():
    spec = {"Name": "t", "TaskTemplate": {
        "ContainerSpec": {"Image": "busybox", "OomScoreAdj": -500, "Privileges": {
            "NoNewPrivileges": True, "Seccomp": {"Mode": "custom", "Profile": '{"defaultAction": "SCMP_ACT_ALLOW"}'},
            "SELinuxContext": {"Disable": False}, "CredentialSpec": {}}},
        "LogDriver": {"Name": "json-file", "Options": {"max-size": "1m"}},
        "Networks": [{"Target": "n", "DriverOpts": {"k": "v"}}],
        "Resources": {"Reservations": {"GenericResources": [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 1}}]}}}}
    assert validate_spec(spec)["TaskTemplate"]["ContainerSpec"]["OomScoreAdj"] == -500


# -- what the engine is asked -----------------------------------------------------------------------------------

def test_the_create_body_carries_the_fields():
    task = {**TASK, "GenericResources": [{"NamedResourceSpec": {"Kind": "gpu", "Value": "A"}},
                                         {"NamedResourceSpec": {"Kind": "gpu", "Value": "B"}},
                                         {"DiscreteResourceSpec": {"Kind": "ssd", "Value": 2}}],
            "Spec": {"ContainerSpec": {"Image": "x", "Env": ["A=1"], "OomScoreAdj": 300, "Privileges": {
                "NoNewPrivileges": True, "Seccomp": {"Mode": "unconfined"}}},
                "LogDriver": {"Name": "json-file", "Options": {"max-size": "1m"}},
                "Resources": {"Limits": {"MemoryBytes": 64 << 20}, "Reservations": {"MemoryBytes": 128 << 20}}}}
    cfg = container_config(task, "nid")
    host = cfg["HostConfig"]
    assert cfg["Env"] == ["A=1", "DOCKER_RESOURCE_GPU=A,B", "DOCKER_RESOURCE_SSD=2"]
    assert host["OomScoreAdj"] == 300
    assert host["SecurityOpt"] == ["seccomp=unconfined", "no-new-privileges=true"]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
    assert (host["Memory"], host["MemoryReservation"]) == (64 << 20, 64 << 20)  # never above the limit
    bare = container_config({**TASK, "Spec": {"ContainerSpec": {"Image": "x"}}}, "nid")["HostConfig"]
    assert not {"OomScoreAdj", "SecurityOpt", "LogConfig", "MemoryReservation"} & set(bare)


def test_port_status_lists_every_host_binding():
    info = {"NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
                                          "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "30001"}], "443/tcp": None}}}
    assert port_status(info) == {"Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"},
        {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 30001, "PublishMode": "host"}]}
    assert port_status({"NetworkSettings": {"Ports": {}}}) == {}


# -- generic resources in the scheduler ------------------------------------------------------------------------

def gnode(node_id: str, generic: list[dict]) -> dict:
    return {"ID": node_id, "Spec": {"Role": "worker", "Availability": "active"},
            "Description": {"Hostname": node_id, "Platform": {"OS": "linux", "Architecture": "x86_64"},
                            "Resources": {"NanoCPUs": 4 * 10**9, "MemoryBytes": 8 << 30, "GenericResources": generic}},
            "Status": {"State": "ready"}}


def gtasks(n: int, service: str, **kinds: int) -> list[dict]:
    res = [{"DiscreteResourceSpec": {"Kind": k, "Value": v}} for k, v in kinds.items()]
    return [{"ID": f"{service}.{i}", "ServiceID": service, "Slot": i + 1, "Status": {"State": "pending"},
             "DesiredState": "running", "Spec": {"ContainerSpec": {"Image": "x"},
                                                 "Resources": {"Reservations": {"GenericResources": res}}}}
            for i in range(n)]


GPUS = [{"NamedResourceSpec": {"Kind": "gpu", "Value": v}} for v in ("A", "B", "C")]
SSD = [{"DiscreteResourceSpec": {"Kind": "ssd", "Value": 3}}]


def test_named_resources_are_given_out_by_value_and_back():
    sched = Scheduler([gnode("g", GPUS), gnode("plain", [])])
    assigned, errors = sched.schedule(gtasks(2, "ml", gpu=1))
    assert assigned == {"ml.0": "g", "ml.1": "g"} and not errors
    held = [sched.generic_resources(t) for t in ("ml.0", "ml.1")]
    assert sorted(r[0]["NamedResourceSpec"]["Value"] for r in held) == ["A", "B"]
    assigned, errors = sched.schedule(gtasks(1, "big", gpu=2))
    assert not assigned and errors == {"big.0": "no suitable node (insufficient resources on 2 nodes)"}
    sched.remove_task("ml.0")  # the task ended: its GPU is free again
    assigned, _ = sched.schedule(gtasks(1, "big", gpu=2))
    assert assigned == {"big.0": "g"}
    assert sorted(r["NamedResourceSpec"]["Value"] for r in sched.generic_resources("big.0")) == \
        sorted({"A", "C"} if held[0][0]["NamedResourceSpec"]["Value"] == "A" else {"B", "C"})


def test_discrete_resources_are_counted_and_a_stored_assignment_is_kept():
    sched = Scheduler([gnode("s", SSD)])
    assigned, _ = sched.schedule(gtasks(2, "db", ssd=1))
    assert len(assigned) == 2 and sched.generic_resources("db.0") == [{"DiscreteResourceSpec": {"Kind": "ssd",
                                                                                                 "Value": 1}}]
    _, errors = sched.schedule(gtasks(1, "more", ssd=2))
    assert errors == {"more.0": "no suitable node (insufficient resources on 1 node)"}
    # the task comes back from the store with what it was given: it keeps it (no second claim)
    stored = {**gtasks(1, "db", ssd=1)[0], "NodeID": "s", "Status": {"State": "running"},
              "GenericResources": sched.generic_resources("db.0")}
    sched.update_task(stored)
    assert sched.node_info("s").generic_free == {"ssd": 1}


def test_a_node_without_the_kind_does_not_fit():
    sched = Scheduler([gnode("plain", [])])
    _, errors = sched.schedule(gtasks(1, "ml", gpu=1))
    assert errors == {"ml.0": "no suitable node (insufficient resources on 1 node)"}


# -- registry credentials ------------------------------------------------------------------------------------------

class Leader:
    """Just what the control API needs of its manager to create and update services."""

    def __init__(self, objs: Objects) -> None:
        self.objs = objs
        self.node_id = "m"
        self.allocator = Allocator(objs)
        self.is_leader = True
        self._sealer = Sealer(new_data_key())

    def sealer(self) -> Sealer:
        return self._sealer


async def test_registry_auth_is_sealed_kept_across_updates_and_opened_only_for_the_tasks_node():
    store = MemoryStore()
    objs = Objects(store)
    await objs.start()
    try:
        leader = Leader(objs)
        api = ControlAPI(leader)  # type: ignore[arg-type]
        auth = "eyJ1c2VybmFtZSI6InUiLCJwYXNzd29yZCI6InNlY3JldC1wdyJ9"  # {"username":"u","password":"secret-pw"}
        spec = validate_spec({"Name": "p", "TaskTemplate": {"ContainerSpec": {"Image": "127.0.0.1:5000/x"}}})
        sid = await api.create_service(copy.deepcopy(spec), auth)
        svc = objs.get("services", sid)
        assert auth not in repr(svc) and auth not in repr(store._kv)  # sealed at rest
        sealer = leader.sealer()
        task = {**new_task(svc, 1, "node1"), "Status": {"State": "assigned"}}
        assert SEALED_AUTH in task and SEALED_AUTH not in public(task)  # never shown by the API
        assert for_node(sealer, task)[REGISTRY_AUTH] == auth and SEALED_AUTH not in for_node(sealer, task)
        assert REGISTRY_AUTH not in for_node(sealer, {**task, "Status": {"State": "shutdown"}})  # may not run
        assert REGISTRY_AUTH not in for_node(None, task)  # nothing opens without the key

        async def update(registry_auth: str = "", **kw: Any) -> dict:
            cur = objs.get("services", sid)
            await api.update_service(cur, cur["Version"]["Index"], copy.deepcopy(spec), kw.pop("rollback", False),
                                     registry_auth, **kw)
            return objs.get("services", sid)

        svc = await update()  # no header: the spec's credentials stay
        assert sealer.open("registry-auth", sid, svc[SEALED_AUTH]).decode() == auth
        other = "eyJ1c2VybmFtZSI6InYifQ"
        svc = await update(other)
        assert sealer.open("registry-auth", sid, svc[SEALED_AUTH]).decode() == other
        assert sealer.open("registry-auth", sid, svc[PREVIOUS_SEALED_AUTH]).decode() == auth
        svc = await update(previous_auth=True)  # registryAuthFrom=previous-spec
        assert sealer.open("registry-auth", sid, svc[SEALED_AUTH]).decode() == auth
        svc = await update(rollback=True)  # the previous spec's credentials come back with it
        assert sealer.open("registry-auth", sid, svc[SEALED_AUTH]).decode() == other
    finally:
        await objs.stop()
        await store.close()
