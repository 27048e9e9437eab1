"""Bodies decoded as Docker decodes them (field names case-insensitive, unknown fields dropped), answers
with the fields Docker always returns, query parameters honoured or refused: tried as a user would, with
docker-py, the CLI and raw requests."""

from __future__ import annotations

import json
from urllib.parse import quote

import docker
import pytest
from conftest import running_containers, wait_for

pytestmark = pytest.mark.integration

BUSYBOX = "shoal/demo-busybox:latest"
SLEEP = ["sleep", "3600"]


def test_docker_py_lower_case_rollback_config_and_templating(shoald, docker_engine):
    """docker-py passes the user's dicts on as written; Docker's decoder matches their keys to its
    fields whatever the case."""
    client = shoald.client()
    cfg = client.configs.create(name="lowertmpl", data=b"svc={{.Service.Name}}", templating={"name": "golang"})
    assert client.configs.get(cfg.id).attrs["Spec"]["Templating"] == {"Name": "golang"}
    ref = docker.types.ConfigReference(cfg.id, "lowertmpl", filename="/t")
    client.services.create(BUSYBOX, SLEEP, name="lower", rollback_config={"order": "start-first"}, configs=[ref],
                           stop_grace_period=10**9)
    spec = client.services.get("lower").attrs["Spec"]
    assert spec["RollbackConfig"]["Order"] == "start-first" and "order" not in spec["RollbackConfig"]
    # the template is one: the task's file is expanded
    c = wait_for(lambda: running_containers(docker_engine, "lower"), 60, what="the task running")[0]
    assert c.exec_run(["cat", "/t"]).output == b"svc=lower"
    client.services.get("lower").remove()
    wait_for(lambda: not running_containers(docker_engine, "lower"), 30, what="the container removed")
    cfg.remove()
    client.close()


def test_unknown_fields_and_modes_are_dropped_as_docker_does(shoald):
    spec = {"name": "dropped", "Bogus": {"x": 1}, "Mode": {"Sometimes": {}},
            "taskTemplate": {"containerSpec": {"image": BUSYBOX, "args": SLEEP, "Extra": True}}}
    status, _, body = shoald.request("POST", "/services/create", spec)
    assert status == 201, body
    _, _, svc = shoald.request("GET", "/services/dropped")
    assert "Bogus" not in svc["Spec"] and "Extra" not in svc["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert svc["Spec"]["Mode"] == {"Replicated": {"Replicas": 1}}  # Docker: no mode it knows → one replica
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"] == SLEEP
    status, _, body = shoald.request("POST", "/services/create", {
        "Name": "badtype", "Mode": {"Replicated": {"Replicas": "2"}}, "TaskTemplate": {"ContainerSpec": {
            "Image": BUSYBOX}}})
    assert (status, body["message"]) == (400, "invalid JSON: json: cannot unmarshal string into Go struct field "
                                              "ReplicatedService.Mode.Replicated.Replicas of type uint64")
    assert shoald.request("GET", "/services/badtype")[0] == 404
    shoald.request("DELETE", "/services/dropped")


def test_fields_docker_always_returns(shoald):
    """Fields Go writes even at their zero value are there, whoever created the object."""
    client = shoald.client()
    svc = client.services.create(BUSYBOX, SLEEP, name="zeroes")  # docker-py sends no ForceUpdate, no Labels
    got = client.api.inspect_service(svc.id)
    assert got["Spec"]["TaskTemplate"]["ForceUpdate"] == 0 and got["Spec"]["Labels"] == {}
    assert got["Endpoint"]["Spec"] == {"Mode": "vip"}
    [task] = wait_for(lambda: client.api.tasks(filters={"service": "zeroes"}), 30, what="the task")
    assert task["Spec"]["ForceUpdate"] == 0 and task["Labels"] == {} and "PortStatus" in task["Status"]
    [listed] = client.api.services(filters={"name": "zeroes"}, status=True)
    assert set(listed["ServiceStatus"]) == {"RunningTasks", "DesiredTasks", "CompletedTasks"}
    node = client.api.inspect_node(client.info()["Swarm"]["NodeID"])
    assert node["Spec"]["Labels"] == {} and set(node["Description"]) >= {"Platform", "Resources", "Engine", "TLSInfo"}
    assert "Attachments" not in node  # the node's own addresses: kept by swarmkit, not shown by Docker
    swarm = client.api.inspect_swarm()
    assert swarm["Spec"]["Labels"] == {} and swarm["Spec"]["TaskDefaults"] == {}
    assert swarm["Spec"]["EncryptionConfig"] == {"AutoLockManagers": False}
    assert {"RootRotationInProgress", "DataPathPort", "SubnetSize", "DefaultAddrPool"} <= set(swarm)
    svc.remove()
    client.close()


def test_network_inspect_scope_verbose_and_dangling(shoald):
    client = shoald.client()
    net = client.networks.create("scoped", driver="overlay")
    assert client.api.inspect_network("scoped")["Id"] == net.id
    assert client.api.inspect_network("scoped", scope="swarm")["Id"] == net.id
    with pytest.raises(docker.errors.NotFound):  # Docker: a swarm network's name is not a local network's
        client.api.inspect_network("scoped", scope="local")
    assert client.api.inspect_network(net.id[:12], scope="local")["Id"] == net.id  # an ID prefix always finds it
    assert client.api.inspect_network("scoped", verbose=True)["Id"] == net.id
    # dangling: no service is on it (ingress is always in use)
    assert "scoped" in {n.name for n in client.networks.list(filters={"dangling": True})}
    assert "ingress" not in {n.name for n in client.networks.list(filters={"dangling": True})}
    assert "scoped" not in {n.name for n in client.networks.list(filters={"dangling": False})}
    status, _, body = shoald.request("GET", "/networks?filters=" + quote(json.dumps({"dangling": ["maybe"]})))
    assert status == 400 and body["message"].startswith("invalid value for filter 'dangling'")
    status, _, body = shoald.request("GET", "/networks/scoped?verbose=maybe")
    assert (status, body["message"]) == (400, 'invalid value for verbose: maybe: strconv.ParseBool: parsing "maybe": '
                                              "invalid syntax")
    net.remove()
    client.close()


def test_query_parameters_as_moby_reads_them(shoald):
    shoald.docker("service", "create", "-d", "--name", "queried", BUSYBOX, *SLEEP)
    status, _, body = shoald.request("GET", "/services?status=maybe")
    assert (status, body["message"]) == (400, 'invalid value for status: maybe: strconv.ParseBool: parsing "maybe": '
                                              "invalid syntax")
    flt = quote(json.dumps({"name": ["queried"]}))
    [svc] = shoald.request("GET", f"/services?status=t&filters={flt}")[2]  # ParseBool's "t"
    assert "ServiceStatus" in svc
    [old] = shoald.request("GET", f"/v1.40/services?status=1&filters={flt}")[2]  # before API 1.41: ignored
    assert "ServiceStatus" not in old
    full = shoald.request("GET", "/services/queried?insertDefaults=TRUE")[2]
    assert full["Spec"]["UpdateConfig"]["Monitor"] == 5_000_000_000  # a default, so insertDefaults was honoured
    status, _, body = shoald.request("GET", "/services/queried?insertDefaults=2")
    assert status == 400 and body["message"].startswith("invalid value for insertDefaults: 2")
    version = svc["Version"]["Index"]
    for query, message in (("rollback=later", "unrecognized rollback option later"),
                           ("registryAuthFrom=nowhere", "unsupported registryAuthFrom value"),
                           ("registryAuthFrom=previous-spec", "service does not have a previous spec")):
        status, _, body = shoald.request("POST", f"/services/queried/update?version={version}&{query}", svc["Spec"])
        assert (status, body["message"]) == (400, message), query
    assert shoald.request("GET", "/services/queried")[2]["Version"]["Index"] == version
    shoald.docker("service", "rm", "queried")
