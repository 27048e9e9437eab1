"""Every ``/tasks`` filter, through the API and the v28 CLI, with moby's answers for unknown or ambiguous
services and nodes."""

from __future__ import annotations

import json
import os
import stat
from urllib.parse import quote

import pytest
from conftest import wait_for

pytestmark = pytest.mark.integration

IMAGE = "shoal/demo-web:latest"


def q(obj: object) -> str:
    return quote(json.dumps(obj))


def _tasks(shoald, filters: dict) -> list[dict]:
    status, _, body = shoald.request("GET", "/tasks?filters=" + q(filters))
    assert status == 200, body
    return body


def _ids(tasks: list[dict]) -> set[str]:
    return {t["ID"] for t in tasks}


def _error(shoald, path: str) -> tuple[int, str]:
    status, _, body = shoald.request("GET", path)
    assert isinstance(body, dict) and set(body) == {"message"}, body
    return status, body["message"]


def _ps(shoald, *args: str) -> list[dict]:
    out = shoald.docker(*args, "--no-trunc", "--format", "{{json .}}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cluster(shoald):
    """tf-web: 3 running tasks, service label tier=web; tf-other: one shut-down task (its spec was updated)
    and one running, a *container* label tier=web but no service label."""
    shoald.docker("service", "create", "-d", "--name", "tf-web", "--replicas", "3", "--label", "tier=web", IMAGE)
    shoald.docker("service", "create", "-d", "--name", "tf-other", "--container-label", "tier=web", IMAGE)
    wait_for(lambda: len([t for t in _tasks(shoald, {"desired-state": ["running"]})
                          if t["Status"]["State"] == "running"]) == 4, 60, what="4 running tasks")
    shoald.docker("service", "update", "--env-add", "X=1", "tf-other")  # waits until converged
    web, other = (shoald.request("GET", f"/services/{n}")[2] for n in ("tf-web", "tf-other"))
    tasks = _tasks(shoald, {})
    return {
        "web": web, "other": other, "node": shoald.request("GET", "/nodes")[2][0],
        "web_tasks": [t for t in tasks if t["ServiceID"] == web["ID"]],
        "other_tasks": sorted((t for t in tasks if t["ServiceID"] == other["ID"]), key=lambda t: t["Version"]["Index"]),
    }


def test_socket_mode_is_0660(shoald):
    assert stat.S_IMODE(os.stat(shoald.sock).st_mode) == 0o660


def test_service_filter_by_name_id_and_prefix(shoald, cluster):
    web = cluster["web"]
    expected = _ids(cluster["web_tasks"])
    assert len(expected) == 3
    for ref in ("tf-web", web["ID"], web["ID"][:6]):
        assert _ids(_tasks(shoald, {"service": [ref]})) == expected
    both = _tasks(shoald, {"service": ["tf-web", "tf-other"]})
    assert len(both) == 5


def test_unknown_service_or_node_is_404(shoald, cluster):
    assert _error(shoald, "/tasks?filters=" + q({"service": ["nope"]})) == (404, "service nope not found")
    # one unknown value spoils the whole request, as in moby
    assert _error(shoald, "/tasks?filters=" + q({"service": ["tf-web", "nope"]})) == (404, "service nope not found")
    assert _error(shoald, "/tasks?filters=" + q({"node": ["nope"]})) == (404, "node nope not found")
    # "self" is the CLI's word, resolved by the client; the daemon looks it up like any other name
    assert _error(shoald, "/tasks?filters=" + q({"node": ["self"]})) == (404, "node self not found")
    cp = shoald.docker("service", "ps", "nope", check=False)
    assert cp.returncode == 1 and "no such service: nope" in cp.stderr
    cp = shoald.docker("node", "ps", "nope", check=False)
    assert cp.returncode == 1 and "node nope not found" in cp.stderr


def test_node_filter_by_id_hostname_prefix_and_self(shoald, cluster):
    node = cluster["node"]
    everything = _ids(_tasks(shoald, {}))
    assert len(everything) == 5
    for ref in (node["ID"], node["Description"]["Hostname"], node["ID"][:5]):
        assert _ids(_tasks(shoald, {"node": [ref]})) == everything
    rows = _ps(shoald, "service", "ps", "--filter", "node=self", "tf-web")
    assert {r["ID"] for r in rows} == _ids(cluster["web_tasks"])
    assert {r["Node"] for r in rows} == {node["Description"]["Hostname"]}


def test_docker_node_ps(shoald, cluster):
    hostname = cluster["node"]["Description"]["Hostname"]
    for args in (("node", "ps"), ("node", "ps", "self"), ("node", "ps", hostname)):
        rows = _ps(shoald, *args)
        assert {r["ID"] for r in rows} == _ids(_tasks(shoald, {})), args
        assert {r["Node"] for r in rows} == {hostname}
        running = [r for r in rows if r["DesiredState"] == "Running"]
        assert sorted(r["Name"] for r in running) == ["tf-other.1", "tf-web.1", "tf-web.2", "tf-web.3"]
        assert all(r["CurrentState"].startswith("Running") for r in running)
    rows = _ps(shoald, "node", "ps", "--filter", "desired-state=shutdown", "self")
    assert [r["ID"] for r in rows] == [cluster["other_tasks"][0]["ID"]]


def test_name_filter_is_a_prefix_of_swarmkits_task_name(shoald, cluster):
    web_tasks = cluster["web_tasks"]
    assert _ids(_tasks(shoald, {"name": ["tf-web"]})) == _ids(web_tasks)
    assert len(_tasks(shoald, {"name": ["tf-"]})) == 5
    one = next(t for t in web_tasks if t["Slot"] == 2)
    assert _ids(_tasks(shoald, {"name": ["tf-web.2"]})) == {one["ID"]}
    # swarmkit names a task <service>.<slot>.<task id>; the filter matches any prefix of that
    assert _ids(_tasks(shoald, {"name": [f"tf-web.2.{one['ID'][:4]}"]})) == {one["ID"]}
    assert _tasks(shoald, {"name": ["web"]}) == []
    rows = _ps(shoald, "service", "ps", "--filter", "name=tf-web.2", "tf-web")
    assert [r["ID"] for r in rows] == [one["ID"]]


def test_id_filter_is_a_prefix(shoald, cluster):
    a, b = cluster["web_tasks"][:2]
    assert _ids(_tasks(shoald, {"id": [a["ID"][:10]]})) == {a["ID"]}
    assert _ids(_tasks(shoald, {"id": [a["ID"], b["ID"][:10]]})) == {a["ID"], b["ID"]}
    assert _tasks(shoald, {"id": ["-no-such-id"]}) == []
    rows = _ps(shoald, "service", "ps", "--filter", f"id={a['ID'][:10]}", "tf-web")
    assert [r["ID"] for r in rows] == [a["ID"]]


@pytest.mark.field("ServiceSpec.Labels", how="honoured")
def test_label_filter_matches_the_services_labels(shoald, cluster):
    web = _ids(cluster["web_tasks"])
    assert _ids(_tasks(shoald, {"label": ["tier"]})) == web
    assert _ids(_tasks(shoald, {"label": ["tier=web"]})) == web
    assert _tasks(shoald, {"label": ["tier=db"]}) == []
    # tf-other's containers carry tier=web, but the filter only looks at service labels
    assert not _ids(_tasks(shoald, {"label": ["tier=web"]})) & _ids(cluster["other_tasks"])
    rows = _ps(shoald, "node", "ps", "--filter", "label=tier=web")
    assert {r["ID"] for r in rows} == web


def test_desired_state_and_up_to_date(shoald, cluster):
    old, new = cluster["other_tasks"]
    assert old["DesiredState"] == "shutdown" and new["DesiredState"] == "running"
    svc = {"service": ["tf-other"]}
    assert _ids(_tasks(shoald, {**svc, "desired-state": ["running"]})) == {new["ID"]}
    assert _ids(_tasks(shoald, {**svc, "desired-state": ["shutdown"]})) == {old["ID"]}
    assert _ids(_tasks(shoald, {**svc, "desired-state": ["running", "shutdown"]})) == {old["ID"], new["ID"]}
    assert _tasks(shoald, {**svc, "desired-state": ["accepted"]}) == []
    assert _error(shoald, "/tasks?filters=" + q({"desired-state": ["bogus"]})) == (
        400, "Invalid desired-state filter: 'bogus'")
    # the CLI's own progress filter: only tasks whose spec matches the service's current one
    assert _ids(_tasks(shoald, {**svc, "_up-to-date": ["true"]})) == {new["ID"]}
    assert _ids(_tasks(shoald, {"service": ["tf-web"], "_up-to-date": ["true"]})) == _ids(cluster["web_tasks"])
    rows = _ps(shoald, "service", "ps", "--filter", "desired-state=shutdown", "tf-other")
    assert [r["ID"] for r in rows] == [old["ID"]]
    assert rows[0]["DesiredState"] == "Shutdown" and rows[0]["CurrentState"].startswith("Shutdown")
    status, _, body = shoald.request("GET", "/tasks?filters=" + q({"up-to-date": ["true"]}))
    assert (status, body) == (400, {"message": "invalid filter 'up-to-date'"})


def test_ambiguous_prefix_and_exact_name_beats_prefix(shoald, cluster):
    made: list[dict] = []
    try:
        by_first: dict[str, str] = {}
        clash = None
        for i in range(60):  # IDs are random base-36: two soon share a first character
            status, _, body = shoald.request("POST", "/services/create", {
                "Name": f"amb{i}", "TaskTemplate": {"ContainerSpec": {"Image": IMAGE}},
                "Mode": {"Replicated": {"Replicas": 0}}})
            assert status == 201, body
            made.append(body)
            first = body["ID"][0]
            if first in by_first:
                clash = first
                break
            by_first[first] = body["ID"]
        assert clash is not None
        matches = sum(1 for s in shoald.request("GET", "/services")[2] if s["ID"].startswith(clash))
        want = (400, f"service {clash} is ambiguous ({matches} matches found)")
        assert _error(shoald, f"/services/{clash}") == want
        assert _error(shoald, "/tasks?filters=" + q({"service": [clash]})) == want
        # a service named like another's ID prefix: the exact name wins
        target = made[0]["ID"]
        status, _, named = shoald.request("POST", "/services/create", {
            "Name": target[:4], "TaskTemplate": {"ContainerSpec": {"Image": IMAGE}},
            "Mode": {"Replicated": {"Replicas": 0}}})
        assert status == 201
        made.append(named)
        assert shoald.request("GET", f"/services/{target[:4]}")[2]["ID"] == named["ID"]
        assert shoald.request("GET", f"/services/{target[:5]}")[2]["ID"] == target
        inspect = json.loads(shoald.docker("service", "inspect", target[:4]).stdout)[0]
        assert inspect["ID"] == named["ID"]
    finally:
        for s in made:
            shoald.request("DELETE", f"/services/{s['ID']}")
