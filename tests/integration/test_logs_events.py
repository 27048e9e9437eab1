"""``docker service logs`` and ``docker events`` with the real CLI against shoald."""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import time

import pytest
from conftest import DOCKER_V20, DOCKER_V28, wait_for

pytestmark = pytest.mark.integration

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"
LOOP = 'i=0; while true; do i=$((i+1)); echo "out $i"; echo "err $i" >&2; sleep 0.5; done'


def _tasks(shoald, service: str) -> list[dict]:
    _, _, body = shoald.request("GET", "/tasks?filters=" + json.dumps({"service": [service]}).replace(" ", ""))
    return [t for t in body if t["DesiredState"] == "running"]


def _running(shoald, service: str, n: int) -> list[dict]:
    return wait_for(lambda: (lambda ts: ts if len(ts) == n and all(t["Status"]["State"] == "running" for t in ts)
                             else None)(_tasks(shoald, service)), 60, what=f"{n} running tasks of {service}")


def _read_until(proc: subprocess.Popen, pattern: str, timeout: float) -> str:
    """Read the process's stdout until ``pattern`` matches what was read."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sel.select(0.2):
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
            if re.search(pattern, seen.decode(errors="replace"), re.M):
                return seen.decode()
    raise AssertionError(f"{pattern!r} not seen within {timeout}s; got:\n{seen.decode(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def logsvc(shoald):
    shoald.docker("service", "create", "-d", "--name", "chatty", "--replicas", "2",
                  "shoal/demo-busybox:latest", "sh", "-c", LOOP)
    tasks = _running(shoald, "chatty", 2)
    wait_for(lambda: shoald.docker("service", "logs", "chatty").stdout.count("out 3") == 2, 30, what="3 lines each")
    return tasks


def test_service_logs_prefix_and_streams(shoald, logsvc, docker_engine):
    host = docker_engine.info()["Name"]
    for cli in (DOCKER_V28, DOCKER_V20):
        cp = shoald.docker("service", "logs", "chatty", cli=cli)
        for t in logsvc:
            prefix = rf"^chatty\.{t['Slot']}\.{t['ID'][:12]}@{re.escape(host)} +\| "
            assert re.search(prefix + r"out 1$", cp.stdout, re.M), cp.stdout
            assert re.search(prefix + r"err 1$", cp.stderr, re.M), cp.stderr  # stderr stays stderr
            assert not re.search(r"err \d", cp.stdout)
    cp = shoald.docker("service", "logs", "--no-task-ids", "chatty")
    assert re.search(rf"^chatty\.1@{re.escape(host)} +\| out 2$", cp.stdout, re.M)
    cp = shoald.docker("service", "logs", "--raw", "chatty")
    assert re.search(r"^out 2$", cp.stdout, re.M) and "@" not in cp.stdout
    cp = shoald.docker("service", "logs", "--timestamps", "--no-trunc", "chatty")
    lines = cp.stdout.splitlines()
    assert lines and all(re.match(rf"^{TS} chatty\.\d\.\w{{25}}@", line) for line in lines)


def test_service_logs_tail_and_task(shoald, logsvc):
    cp = shoald.docker("service", "logs", "--tail", "1", "chatty")
    lines = cp.stdout.splitlines() + cp.stderr.splitlines()
    assert len(lines) == 2  # the last line of each task
    assert {re.match(r"chatty\.(\d)", line).group(1) for line in lines} == {"1", "2"}
    cp = shoald.docker("service", "logs", "--tail", "3", "chatty")
    assert len(cp.stdout.splitlines() + cp.stderr.splitlines()) == 6
    one = logsvc[0]
    cp = shoald.docker("service", "logs", "--tail", "4", one["ID"])
    lines = cp.stdout.splitlines() + cp.stderr.splitlines()
    assert len(lines) == 4 and all(line.startswith(f"chatty.{one['Slot']}.{one['ID'][:12]}@") for line in lines)
    # the Engine API's stream shapes: multiplexed (1.42+), raw-stream type before; Docker's errors
    status, headers, _ = shoald.request("GET", "/v1.44/services/chatty/logs?stdout=1&tail=1")
    assert status == 200 and headers["Content-Type"] == "application/vnd.docker.multiplexed-stream"
    status, headers, _ = shoald.request("GET", "/v1.41/services/chatty/logs?stdout=1&tail=1")
    assert status == 200 and headers["Content-Type"] == "application/vnd.docker.raw-stream"
    status, _, body = shoald.request("GET", "/services/chatty/logs")
    assert status == 400 and body["message"] == "Bad parameters: you must choose at least one stream"
    status, _, body = shoald.request("GET", "/services/chatty/logs?stdout=1&tail=x")
    assert (status, body["message"]) == (500, 'tail value must be a positive integer or "all"')
    status, _, body = shoald.request("GET", "/services/chatty/logs?stdout=1&tail=-2")
    assert (status, body["message"]) == (500, "negative tail values not supported")
    cp = shoald.docker("service", "logs", "nosuchthing", check=False)
    assert cp.returncode != 0 and "no such task or service: nosuchthing" in cp.stderr


def test_service_logs_follow_picks_up_new_tasks(shoald, logsvc):
    env = {**os.environ, "DOCKER_HOST": shoald.host}
    proc = subprocess.Popen([DOCKER_V28, "service", "logs", "-f", "--tail", "0", "chatty"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        _read_until(proc, r"^chatty\.1\..*\| out \d+$", 10)
        shoald.docker("service", "scale", "-d", "chatty=3")
        out = _read_until(proc, r"^chatty\.3\..*\| out \d+$", 30)  # a task that started after -f began
        assert re.search(r"^chatty\.2\..*\| out \d+$", out, re.M)
    finally:
        proc.kill()
        proc.wait()
    shoald.docker("service", "scale", "-d", "chatty=2")


def _events(shoald, *args: str) -> list[dict]:
    cp = shoald.docker("events", "--format", "{{json .}}", *args)
    return [json.loads(line) for line in cp.stdout.splitlines() if line.strip()]


def test_events_swarm_objects_with_filters(shoald, tmp_path):
    since = f"{time.time() - 0.5:.9f}"
    shoald.docker("service", "create", "-d", "--name", "evsvc", "--replicas", "1", "shoal/demo-busybox:latest",
                  "sleep", "1000000")
    shoald.docker("service", "scale", "-d", "evsvc=2")
    shoald.docker("network", "create", "-d", "overlay", "evnet")
    _running(shoald, "evsvc", 2)
    shoald.docker("service", "rm", "evsvc")
    shoald.docker("network", "rm", "evnet")
    until = f"{time.time() + 0.5:.9f}"
    time.sleep(0.6)

    evs = _events(shoald, "--since", since, "--until", until, "--filter", "type=service")
    mine = [e for e in evs if e["Actor"]["Attributes"]["name"] == "evsvc"]
    assert [e["Action"] for e in mine][0] == "create" and [e["Action"] for e in mine][-1] == "remove"
    scaled = [e for e in mine if e["Action"] == "update" and "replicas.new" in e["Actor"]["Attributes"]]
    assert scaled and scaled[0]["Actor"]["Attributes"] == {"name": "evsvc", "replicas.old": "1", "replicas.new": "2"}
    for e in mine:
        assert e["Type"] == "service" and e["scope"] == "swarm" and len(e["Actor"]["ID"]) == 25
        assert e["time"] == e["timeNano"] // 1_000_000_000 and float(since) - 1 < e["time"] < float(until) + 1
    assert all(e["Type"] == "service" for e in evs)

    evs = _events(shoald, "--since", since, "--until", until, "--filter", "service=evsvc", "--filter", "event=create")
    # (moby's `service` filter matches any actor named with that prefix: the containers evsvc.N.* too)
    assert [(e["Type"], e["Action"]) for e in evs if e["scope"] == "swarm"] == [("service", "create")]
    assert {e["Type"] for e in evs} <= {"service", "container"}
    evs = _events(shoald, "--since", since, "--until", until, "--filter", "type=network", "--filter", "network=evnet")
    assert [e["Action"] for e in evs] == ["create", "remove"]
    assert all(e["Actor"]["Attributes"]["name"] == "evnet" and e["scope"] == "swarm" for e in evs)
    # the local engine's events come through too (its containers), and scope tells them apart
    evs = _events(shoald, "--since", since, "--until", until, "--filter", "type=container",
                  "--filter", "label=com.docker.swarm.service.name=evsvc")
    assert {"create", "start"} <= {e["Action"] for e in evs} and all(e["scope"] == "local" for e in evs)
    evs = _events(shoald, "--since", since, "--until", until, "--filter", "scope=swarm")
    assert evs and all(e["scope"] == "swarm" for e in evs)
    # nodes and secrets: moby's attributes
    me = shoald.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    shoald.docker("node", "update", "--availability", "pause", me)
    shoald.docker("node", "update", "--availability", "active", me)
    (tmp_path / "s").write_text("x")
    shoald.docker("secret", "create", "evsecret", str(tmp_path / "s"))
    until2 = f"{time.time() + 0.3:.9f}"
    time.sleep(0.4)
    evs = _events(shoald, "--since", until, "--until", until2, "--filter", "scope=swarm")
    nodes = [e for e in evs if e["Type"] == "node" and "availability.new" in e["Actor"]["Attributes"]]
    assert [(e["Actor"]["Attributes"]["availability.old"], e["Actor"]["Attributes"]["availability.new"])
            for e in nodes] == [("active", "pause"), ("pause", "active")]
    assert [(e["Type"], e["Action"], e["Actor"]["Attributes"]["name"]) for e in evs if e["Type"] == "secret"] == [
        ("secret", "create", "evsecret")]
    shoald.docker("secret", "rm", "evsecret")
    # v20's CLI reads the same stream
    cp = shoald.docker("events", "--since", since, "--until", until, "--filter", "type=service",
                       "--filter", "event=remove", cli=DOCKER_V20)
    assert re.search(r"service remove \w{25} \(name=evsvc\)", cp.stdout), cp.stdout


def test_events_live_stream(shoald):
    env = {**os.environ, "DOCKER_HOST": shoald.host}
    proc = subprocess.Popen([DOCKER_V28, "events", "--filter", "type=service", "--format",
                             "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        shoald.docker("service", "create", "-d", "--name", "livesvc", "shoal/demo-busybox:latest", "sleep", "100000")
        _read_until(proc, r"^service create livesvc$", 10)
        shoald.docker("service", "rm", "livesvc")
        _read_until(proc, r"^service remove livesvc$", 10)
    finally:
        proc.kill()
        proc.wait()
    # --until in the future: the stream ends by itself then
    start = time.time()
    cp = shoald.docker("events", "--until", f"{time.time() + 1.5:.3f}", "--filter", "type=node")
    assert 1.0 < time.time() - start < 10 and cp.returncode == 0
