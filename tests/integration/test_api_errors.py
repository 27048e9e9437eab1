"""Bad input gets Docker's error shape and status, and changes nothing."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from conftest import wait_for

pytestmark = pytest.mark.integration

GOOD = {"Name": "errsvc", "TaskTemplate": {"ContainerSpec": {"Image": "shoal/demo-web:latest"}},
        "Mode": {"Replicated": {"Replicas": 1}}}


def q(obj: object) -> str:
    return quote(json.dumps(obj))


def _spec(**over) -> dict:
    spec = json.loads(json.dumps(GOOD))
    spec.update(over)
    return spec


def _services(shoald) -> list[str]:
    status, _, body = shoald.request("GET", "/services")
    assert status == 200
    return sorted(s["Spec"]["Name"] for s in body)


def _assert_error(resp, status: int, *fragments: str) -> None:
    code, headers, body = resp
    assert code == status, body
    assert headers["Content-Type"].startswith("application/json")
    assert isinstance(body, dict) and set(body) == {"message"}, body
    for f in fragments:
        assert f in body["message"], body["message"]


def test_swarm_endpoints_before_init_are_503(fresh_shoald):
    for path in ("/services", "/nodes", "/tasks", "/swarm"):
        _assert_error(fresh_shoald.request("GET", path), 503, "This node is not a swarm manager",
                      'Use "docker swarm init" or "docker swarm join"')
    _assert_error(fresh_shoald.request("POST", "/services/create", GOOD), 503, "not a swarm manager")
    _, headers, _ = fresh_shoald.request("GET", "/_ping")
    assert headers["Swarm"] == "inactive"
    cp = fresh_shoald.docker("service", "ls", check=False)
    assert cp.returncode != 0 and "This node is not a swarm manager" in cp.stderr
    info = json.loads(fresh_shoald.docker("info", "--format", "{{json .Swarm}}").stdout)
    assert info["LocalNodeState"] == "inactive"


def test_unknown_service_is_404(shoald):
    _assert_error(shoald.request("GET", "/services/nope"), 404, "service nope not found")
    _assert_error(shoald.request("DELETE", "/services/nope"), 404, "service nope not found")
    _assert_error(shoald.request("POST", "/services/nope/update?version=1", GOOD), 404, "not found")
    _assert_error(shoald.request("GET", "/tasks/nope"), 404, "task nope not found")
    _assert_error(shoald.request("GET", "/nodes/nope"), 404, "node nope not found")
    cp = shoald.docker("service", "inspect", "nope", check=False)
    assert cp.returncode != 0 and "nope" in cp.stderr


def test_invalid_specs_are_400_and_change_nothing(shoald):
    before = _services(shoald)
    cases = [
        (_spec(Mode={"Replicated": {"Replicas": -1}}), "Replicas"),
        (_spec(Mode={"Replicated": {"Replicas": 1}, "Global": {}}), "only one service mode"),
        (_spec(TaskTemplate={"ContainerSpec": {"Image": ""}}), "image reference must be provided"),
        (_spec(TaskTemplate={"ContainerSpec": {}}), "image reference must be provided"),
        (_spec(TaskTemplate={"ContainerSpec": {"Image": "x", "Mounts": [{"Type": "bind", "Target": "/x"}]}}),
         "Source"),
        (_spec(TaskTemplate={"ContainerSpec": {"Image": "x", "Mounts": [{"Type": "floppy", "Target": "/x"}]}}),
         "mount type"),
        (_spec(TaskTemplate={"ContainerSpec": {"Image": "x", "Mounts": [{"Type": "volume", "Target": "rel"}]}}),
         "absolute path"),
        (_spec(TaskTemplate={"ContainerSpec": {"Image": "x"}, "Placement": {"Constraints": ["node.role"]}}),
         "constraint"),
        (_spec(Name="bad name!"), "name"),
        (_spec(TaskTemplate={"ContainerSpec": {"Image": "x"}, "RestartPolicy": {"Condition": "sometimes"}}),
         "condition"),
    ]
    for spec, fragment in cases:
        _assert_error(shoald.request("POST", "/services/create", spec), 400, fragment)
    _assert_error(shoald.request("POST", "/services/create", raw=b"{not json"), 400, "invalid JSON")
    assert _services(shoald) == before


def test_name_conflict_is_409(shoald):
    status, _, body = shoald.request("POST", "/services/create", _spec(Name="twin"))
    assert status == 201 and body["ID"]
    _assert_error(shoald.request("POST", "/services/create", _spec(Name="twin")), 409,
                  "name conflicts with an existing object", "service twin already exists")
    assert _services(shoald).count("twin") == 1
    cp = shoald.docker("service", "create", "--name", "twin", "shoal/demo-web:latest", check=False)
    assert cp.returncode != 0 and "already exists" in cp.stderr
    shoald.request("DELETE", "/services/twin")


def test_stale_version_is_400_and_changes_nothing(shoald):
    status, _, body = shoald.request("POST", "/services/create", _spec(Name="versioned"))
    assert status == 201
    _, _, svc = shoald.request("GET", "/services/versioned")
    version = svc["Version"]["Index"]
    newer = _spec(Name="versioned", Labels={"a": "1"})
    assert shoald.request("POST", f"/services/versioned/update?version={version}", newer)[0] == 200
    stale = _spec(Name="versioned", Labels={"a": "2"})
    _assert_error(shoald.request("POST", f"/services/versioned/update?version={version}", stale), 400,
                  "update out of sequence")
    _assert_error(shoald.request("POST", "/services/versioned/update?version=abc", stale), 400, "version")
    _, _, svc = shoald.request("GET", "/services/versioned")
    assert svc["Spec"]["Labels"] == {"a": "1"}
    _assert_error(shoald.request("POST", f"/services/versioned/update?version={svc['Version']['Index']}",
                                 _spec(Name="renamed")), 501, "renaming services is not supported")
    shoald.request("DELETE", "/services/versioned")


def test_stale_node_version_is_400_and_changes_nothing(shoald):
    _, _, [node] = shoald.request("GET", "/nodes")
    version, spec = node["Version"]["Index"], node["Spec"]
    newer = {**spec, "Labels": {"stale": "no"}}
    assert shoald.request("POST", f"/nodes/{node['ID']}/update?version={version}", newer)[0] == 200
    stale = {**spec, "Labels": {"stale": "yes"}, "Availability": "drain"}
    _assert_error(shoald.request("POST", f"/nodes/{node['ID']}/update?version={version}", stale), 400,
                  "update out of sequence")
    _, _, after = shoald.request("GET", f"/nodes/{node['ID']}")
    assert after["Spec"]["Labels"] == {"stale": "no"} and after["Spec"]["Availability"] == "active"
    assert after["Version"]["Index"] > version
    cp = shoald.docker("node", "inspect", "self", "--format", "{{json .Spec.Labels}} {{.Spec.Availability}}")
    assert cp.stdout.strip() == '{"stale":"no"} active'
    assert shoald.request("POST", f"/nodes/{node['ID']}/update?version={after['Version']['Index']}", spec)[0] == 200


def test_inspect_insert_defaults_and_resolution(shoald):
    status, _, body = shoald.request("POST", "/services/create", _spec(Name="defaults"))
    sid = body["ID"]
    _, _, raw = shoald.request("GET", f"/services/{sid}")
    assert "RestartPolicy" not in raw["Spec"]["TaskTemplate"]
    _, _, full = shoald.request("GET", f"/services/{sid[:8]}?insertDefaults=true")
    tt = full["Spec"]["TaskTemplate"]
    assert tt["RestartPolicy"] == {"Condition": "any", "Delay": 5_000_000_000, "MaxAttempts": 0}
    assert full["Spec"]["UpdateConfig"]["Order"] == "stop-first"
    assert tt["ContainerSpec"]["StopGracePeriod"] == 10_000_000_000
    _, _, by_name = shoald.request("GET", "/services/defaults")
    assert by_name["ID"] == sid
    shoald.request("DELETE", f"/services/{sid}")


def test_swarm_init_twice_is_refused(shoald):
    _assert_error(shoald.request("POST", "/swarm/init", {}), 503, "already part of a swarm")


def test_filters(shoald):
    shoald.request("POST", "/services/create", _spec(Name="filt-a", Labels={"tier": "web"}))
    shoald.request("POST", "/services/create", _spec(Name="filt-b"))
    _, _, body = shoald.request("GET", "/services?filters=" + q({"label": {"tier=web": True}}))
    assert [s["Spec"]["Name"] for s in body] == ["filt-a"]
    _, _, body = shoald.request("GET", "/services?filters=" + q({"name": ["filt-"]}))
    assert sorted(s["Spec"]["Name"] for s in body) == ["filt-a", "filt-b"]
    _assert_error(shoald.request("GET", "/services?filters=" + q({"bogus": ["x"]})), 400, "bogus")
    running = "/tasks?filters=" + q({"service": ["filt-a"], "desired-state": ["running"]})
    body = wait_for(lambda: shoald.request("GET", running)[2], 30, what="filt-a's task")
    assert len(body) == 1 and body[0]["DesiredState"] == "running"
    _, _, filt_a = shoald.request("GET", "/services/filt-a")
    assert body[0]["ServiceID"] == filt_a["ID"]
    shut = "/tasks?filters=" + q({"service": ["filt-a"], "desired-state": ["shutdown"]})
    assert shoald.request("GET", shut)[2] == []
    for name in ("filt-a", "filt-b"):
        shoald.request("DELETE", f"/services/{name}")
