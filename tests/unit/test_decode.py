"""Request bodies decoded as Docker decodes them (Go's encoding/json into moby's types): field names
case-insensitive, unknown fields dropped, Go's messages for values of the wrong type."""

from __future__ import annotations

import pytest

from shoal.api.decode import decode
from shoal.model.errors import BadRequest
from shoal.model.secrets import validate_spec as validate_secret
from shoal.model.service import validate_spec

IMAGE = {"ContainerSpec": {"Image": "shoal/demo-web:latest"}}


def service(**fields) -> dict:
    return validate_spec(decode({"Name": "s", "TaskTemplate": IMAGE, **fields}, "ServiceSpec"))


def test_docker_py_lower_case_update_and_rollback_configs():
    """docker-py sends the dict the user wrote: ``rollback_config={'order': 'start-first'}``."""
    spec = service(RollbackConfig={"order": "start-first", "parallelism": 2}, updateconfig={"Delay": 10**9},
                   rollback_config={"Order": "x"})
    assert spec["RollbackConfig"] == {"Order": "start-first", "Parallelism": 2, "FailureAction": "pause",
                                      "MaxFailureRatio": 0}
    assert spec["UpdateConfig"]["Delay"] == 10**9
    assert "rollback_config" not in spec  # no field of Docker's (Go's names have no underscores): dropped


def test_docker_py_lower_case_templating():
    spec, data = validate_secret("configs", decode({"name": "c", "data": "eA==", "templating": {"name": "golang"}},
                                                   "ConfigSpec"))
    assert spec == {"Name": "c", "Labels": {}, "Templating": {"Name": "golang"}} and data == b"x"


def test_unknown_fields_are_dropped_at_every_depth():
    body = {"Name": "s", "Bogus": 1, "Mode": {"replicated": {"replicas": 3, "x": 1}},
            "TaskTemplate": {"containerspec": {"IMAGE": "busybox", "Extra": [1], "Mounts": [
                {"type": "tmpfs", "TARGET": "/t", "weird": True}]}, "Nope": {}},
            "EndpointSpec": {"ports": [{"targetport": 80, "Junk": "x"}]}}
    assert decode(body, "ServiceSpec") == {
        "Name": "s", "Mode": {"Replicated": {"Replicas": 3}},
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Mounts": [{"Type": "tmpfs", "Target": "/t"}]}},
        "EndpointSpec": {"Ports": [{"TargetPort": 80}]}}


def test_docker_spells_the_health_check_healthcheck():
    spec = decode({"TaskTemplate": {"ContainerSpec": {"HealthCheck": {"test": ["CMD", "true"]}}}}, "ServiceSpec")
    assert spec["TaskTemplate"]["ContainerSpec"] == {"Healthcheck": {"Test": ["CMD", "true"]}}


def test_map_keys_are_kept_as_sent():
    spec = decode({"Labels": {"Tier": "a", "tier": "b"}, "TaskTemplate": {"ContainerSpec": {"Sysctls": {"A.b": "1"}}}},
                  "ServiceSpec")
    assert spec["Labels"] == {"Tier": "a", "tier": "b"}
    assert spec["TaskTemplate"]["ContainerSpec"]["Sysctls"] == {"A.b": "1"}


def test_a_field_given_twice_later_wins_and_objects_merge():
    spec = decode({"UpdateConfig": {"Order": "stop-first", "Delay": 5}, "updateconfig": {"order": "start-first"}},
                  "ServiceSpec")
    assert spec["UpdateConfig"] == {"Order": "start-first", "Delay": 5}


def test_null_leaves_a_field_unset():
    spec = decode({"Name": None, "Labels": None, "TaskTemplate": {"ContainerSpec": {"Env": ["A=1", None],
                                                                                   "Init": None}}}, "ServiceSpec")
    assert spec == {"TaskTemplate": {"ContainerSpec": {"Env": ["A=1", ""]}}}
    assert decode(None, "NodeSpec") == {}


@pytest.mark.parametrize(("body", "message"), [
    ({"Mode": {"Replicated": {"Replicas": -1}}},
     "cannot unmarshal number -1 into Go struct field ReplicatedService.Mode.Replicated.Replicas of type uint64"),
    ({"TaskTemplate": {"ContainerSpec": {"Env": "A=1"}}},
     "cannot unmarshal string into Go struct field ContainerSpec.TaskTemplate.ContainerSpec.Env of type []string"),
    ({"TaskTemplate": {"Resources": {"Limits": {"NanoCPUs": 1.5}}}},
     "cannot unmarshal number 1.5 into Go struct field Limit.TaskTemplate.Resources.Limits.NanoCPUs of type int64"),
    ({"EndpointSpec": {"Ports": [{"TargetPort": 80}, {"PublishedPort": 2**32}]}},
     "cannot unmarshal number 4294967296 into Go struct field PortConfig.EndpointSpec.Ports.PublishedPort of type "
     "uint32"),
    ({"Labels": {"a": True}}, "cannot unmarshal bool into Go struct field ServiceSpec.Labels of type string"),
    ({"UpdateConfig": {"Parallelism": "2"}},
     "cannot unmarshal string into Go struct field UpdateConfig.UpdateConfig.Parallelism of type uint64"),
    ({"TaskTemplate": {"ContainerSpec": {"Mounts": {"Type": "bind"}}}},
     "cannot unmarshal object into Go struct field ContainerSpec.TaskTemplate.ContainerSpec.Mounts of type "
     "[]mount.Mount"),
    ([], "cannot unmarshal array into Go value of type swarm.ServiceSpec"),
])
def test_wrong_types_get_gos_message(body, message):
    with pytest.raises(BadRequest) as e:
        decode(body, "ServiceSpec")
    assert e.value.status == 400 and e.value.message == f"invalid JSON: json: {message}"


def test_other_bodies():
    assert decode({"role": "worker", "AVAILABILITY": "drain", "labels": {"A": "b"}}, "NodeSpec") == {
        "Role": "worker", "Availability": "drain", "Labels": {"A": "b"}}
    assert decode({"listenaddr": "0.0.0.0:2377", "spec": {"dispatcher": {"heartbeatperiod": 10**9}},
                   "autolockmanagers": True}, "SwarmInitRequest") == {
        "ListenAddr": "0.0.0.0:2377", "Spec": {"Dispatcher": {"HeartbeatPeriod": 10**9}}, "AutoLockManagers": True}
    with pytest.raises(BadRequest) as e:
        decode({"Raft": {"SnapshotInterval": -5}}, "SwarmSpec")
    assert e.value.message.endswith("into Go struct field RaftConfig.Raft.SnapshotInterval of type uint64")
