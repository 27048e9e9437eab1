"""Fuzz the swarm endpoints with schemathesis, driven by shoal's own OpenAPI document, against a real
shoald: no answer is a 5xx, every answer matches the document, and afterwards the cluster is consistent
(no half-created objects)."""

from __future__ import annotations

import copy
import os
import time
from collections import Counter

import pytest
import requests
import schemathesis
from conftest import Shoald, wait_for
from docker.transport import UnixHTTPAdapter
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from shoal.api.openapi import document

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 12  # per operation: the whole module stays around a minute


def fuzz_document() -> dict:
    """The document, narrowed where a fuzzer would reach past shoal: networks it creates are overlay
    networks (the others go to the machine's engine), and calls that end the swarm are left out."""
    doc = copy.deepcopy(document())
    doc["components"]["schemas"]["NetworkCreateRequest"]["properties"]["Driver"] = {"const": "overlay"}
    doc["components"]["schemas"]["NetworkCreateRequest"]["required"] = ["Name", "Driver"]
    mode = doc["components"]["schemas"]["ServiceSpec"]["properties"]["Mode"]["properties"]
    mode["Replicated"]["properties"]["Replicas"]["maximum"] = 3  # Docker too would start a billion tasks
    for key in ("MaxConcurrent", "TotalCompletions"):
        mode["ReplicatedJob"]["properties"][key]["maximum"] = 3
    return doc


schema = schemathesis.openapi.from_dict(fuzz_document()).exclude(operation_id=[
    "SwarmInit", "SwarmJoin", "SwarmLeave",  # would end or replace the swarm under test
    "SwarmUpdate",  # could turn autolock on or set a 1 ns heartbeat: checked by test_swarm_api.py instead
    "NetworkDelete",  # an ID prefix may name one of the machine engine's own networks
    "DistributionInspect",  # proxied to the engine, which answers 500 when no registry is reachable
    "ShoalOpenAPI",
])
schema.config.update(base_url="http://localhost", continue_on_failure=True)
schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])

_daemon: Shoald | None = None
# the fixture's own service and node, by kind: shoal resolves {id} by full ID, name or unique ID prefix (as
# Docker does), so a generated "0" is fuzzweb whenever its random ID starts with 0 (DELETE /services/0 removed it)
_own_refs: dict[str, list[str]] = {}


@pytest.fixture(scope="module")
def fuzz_shoald(shoald):
    global _daemon, _own_refs
    shoald.docker("network", "create", "-d", "overlay", "fuzznet")
    shoald.docker("service", "create", "-d", "--name", "fuzzweb", "--replicas", "2", "--network", "fuzznet",
                  "-p", "18080:80", "shoal/demo-web:latest")
    _daemon = shoald
    _own_refs = {kind: [o["ID"] for o in shoald.request("GET", f"/{kind}")[2]] for kind in ("services", "nodes")}
    _own_refs["services"].append("fuzzweb")
    yield shoald
    _daemon, _own_refs = None, {}


@pytest.fixture(scope="module")
def session(fuzz_shoald):
    s = requests.Session()
    s.mount("http://localhost", UnixHTTPAdapter(f"http+unix://{fuzz_shoald.sock}", timeout=30))
    yield s
    s.close()


@schema.parametrize()
# the same examples on every run (CI must not fail by chance); SHOAL_FUZZ_RANDOM=1 explores new ones
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
          derandomize=not os.environ.get("SHOAL_FUZZ_RANDOM"))
def test_fuzz(case, session):
    if case.operation.label == "POST /networks/create" and (
            not isinstance(case.body, dict) or case.body.get("Driver") != "overlay"):
        return  # the machine's engine would make it (or answer for it): not shoal's to fuzz
    refs = [str(v) for v in (case.path_parameters or {}).values() if str(v)]
    own = _own_refs.get(case.operation.path.split("/")[1], [])
    if case.method != "GET" and any(o.startswith(ref) for ref in refs for o in own):
        return  # would delete or change the fixture's own objects, which the last test checks are intact
    case.call_and_validate(session=session,
                           checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])


def test_cluster_consistent_after_fuzzing(fuzz_shoald):
    """Run last in this module: whatever the fuzzer created is whole, and the originals still work."""
    d = fuzz_shoald
    # the fuzzer may have drained or paused the node: give it back
    # (read-modify-write, as the CLI does; the node may change in between — a status or description write —
    # so retry on "update out of sequence" instead of going on with a drained node)
    for _ in range(10):
        node = d.request("GET", "/nodes")[2][0]
        status, _, answer = d.request("POST", f"/nodes/{node['ID']}/update?version={node['Version']['Index']}",
                                      {**node["Spec"], "Availability": "active", "Role": "manager"})
        if status == 200:
            break
        assert "update out of sequence" in str(answer), answer
    assert d.request("GET", "/nodes")[2][0]["Spec"]["Availability"] == "active"

    _, _, services = d.request("GET", "/services")
    _, _, networks = d.request("GET", "/networks")
    assert len({s["Spec"]["Name"] for s in services}) == len(services), "service names are unique"
    names = Counter(n["Name"] for n in networks if n.get("Scope") == "swarm")
    assert all(c == 1 for c in names.values()), f"swarm network names are unique: {names}"
    swarm_nets = {n["Id"] for n in networks if n.get("Scope") == "swarm"}
    published = Counter()
    for svc in services:
        spec, ep = svc["Spec"], svc.get("Endpoint") or {}
        for att in (spec.get("TaskTemplate") or {}).get("Networks") or spec.get("Networks") or []:
            assert att["Target"] in swarm_nets, f"{spec['Name']}: network {att['Target']} exists"
        want_ports = ((spec.get("EndpointSpec") or {}).get("Ports")) or []
        ports = ep.get("Ports") or []
        assert len(ports) == len(want_ports), f"{spec['Name']}: every port allocated ({ports} for {want_ports})"
        for p in ports:
            if p.get("PublishMode", "ingress") == "ingress":
                assert p.get("PublishedPort"), f"{spec['Name']}: {p} has a published port"
                published[(p.get("Protocol", "tcp"), p["PublishedPort"])] += 1
        if (spec.get("EndpointSpec") or {}).get("Mode", "vip") == "vip" and want_ports:
            assert ep.get("VirtualIPs"), f"{spec['Name']}: has virtual IPs"
    assert all(c == 1 for c in published.values()), f"published ports are unique: {published}"

    def problems() -> list[str]:
        _, _, tasks = d.request("GET", "/tasks")
        _, _, services = d.request("GET", "/services")
        ids = {s["ID"] for s in services}
        out = [f"task {t['ID']} of no service" for t in tasks
               if t["ServiceID"] not in ids and t["DesiredState"] == "running"]
        for s in services:
            mode = s["Spec"].get("Mode") or {"Replicated": {}}
            if "Replicated" not in mode:
                continue
            want = (mode["Replicated"] or {}).get("Replicas", 1)
            have = {t.get("Slot") for t in tasks if t["ServiceID"] == s["ID"]}
            if not set(range(1, want + 1)) <= have:
                out.append(f"{s['Spec']['Name']}: tasks in slots {sorted(have)} of {want}")
        return out

    deadline = time.time() + 60
    while (left := problems()) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, f"services without their tasks: {left}"

    # the services the fuzzer did not touch still run, and the API still answers
    assert wait_for(lambda: d.docker("service", "ls", "--filter", "name=fuzzweb").stdout.count("2/2"), 60,
                    what="fuzzweb 2/2")
    for svc in services:  # clean up what the fuzzer made
        d.request("DELETE", f"/services/{svc['ID']}")
    time.sleep(0.5)
    for n in d.request("GET", "/networks")[2]:
        if n.get("Scope") == "swarm" and n["Name"] != "ingress":
            d.request("DELETE", f"/networks/{n['Id']}")
