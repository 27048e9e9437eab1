"""Secrets and configs in the lab.

- shoal's swarm (manager, worker1, worker2): only the node that runs a task gets its secret, in a tmpfs
  of that host, never on any host's disk and never in the store in the clear.
- Differential: the same docker CLI commands and raw API calls against Docker's own swarm mode (worker3's
  dockerd) and against shoald give the same output, messages and status codes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import unix_http
from labtools import module_lab, wait_for

from shoal.lab.lab import Lab

pytestmark = pytest.mark.lab

HOSTS = ("manager", "worker1", "worker2")
BOX = "shoal/demo-busybox:latest"
LOOP = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    """shoal's swarm on manager, worker1, worker2; Docker's own swarm on worker3's dockerd."""
    with module_lab(workers=3, swarm=False) as the_lab:
        first = the_lab.host("manager")
        the_lab.docker("manager", "swarm", "init", "--advertise-addr", first.ip)
        token = the_lab.docker("manager", "swarm", "join-token", "-q", "worker").stdout.strip()
        for w in ("worker1", "worker2"):
            the_lab.docker(w, "swarm", "join", "--token", token, "--advertise-addr", the_lab.host(w).ip,
                           f"{first.ip}:2377")
        the_lab.engine_docker("worker3", "swarm", "init", "--advertise-addr", the_lab.host("worker3").ip)
        wait_for(lambda: the_lab.docker("manager", "node", "ls", "--format", "{{.Status}}").stdout.split()
                 == ["Ready"] * 3, 30, "3 ready nodes")
        yield the_lab


def containers(lab: Lab, host: str, service: str) -> list[str]:
    cp = lab.engine_docker(host, "ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={service}")
    return cp.stdout.split()


def on_disk(path: Path, needle: bytes) -> list[str]:
    """Files under path (as the machine's own mount namespace sees them: no host's tmpfs) holding needle."""
    cp = subprocess.run(["grep", "-rlaF", "--", needle.decode(), str(path)], capture_output=True, text=True)
    return cp.stdout.split()


def test_secret_reaches_only_the_node_of_its_task(lab: Lab, tmp_path: Path) -> None:
    marker = "lab-secret-" + base64.b32encode(os.urandom(10)).decode()
    (tmp_path / "secret").write_text(marker)
    lab.docker("manager", "secret", "create", "lab_secret", str(tmp_path / "secret"))
    lab.docker("manager", "service", "create", "-d", "--name", "sec", "--constraint", "node.hostname==worker1",
               "--secret", "source=lab_secret,mode=0400", BOX, *LOOP)
    [cid] = wait_for(lambda: containers(lab, "worker1", "sec"), 40, "the task on worker1")
    wait_for(lambda: lab.engine_docker("worker1", "exec", cid, "cat", "/run/secrets/lab_secret",
                                       check=False).stdout == marker, 20, "the secret readable in the task")
    stat = lab.engine_docker("worker1", "exec", cid, "stat", "-c", "%a %u %g", "/run/secrets/lab_secret").stdout
    assert stat.split() == ["400", "0", "0"]
    mount = lab.engine_docker("worker1", "exec", cid, "grep", " /run/secrets/lab_secret ", "/proc/mounts").stdout
    assert mount.split()[2] == "tmpfs"
    # worker1 keeps it in a tmpfs of its own mount namespace
    files = lab.host("worker1").dir / "shoal" / "task-files"
    cp = lab.exec("worker1", "sh", "-c", f"grep -rlF {marker} {files}; grep ' {files} ' /proc/mounts", check=True)
    assert len(cp.stdout.splitlines()) == 2 and " tmpfs " in cp.stdout.splitlines()[1]

    for h in HOSTS:  # nothing on any host's disk: not the task's node, not the others, not the manager's etcd
        assert on_disk(lab.host(h).dir, marker.encode()) == [], h
        assert on_disk(lab.host(h).dir, base64.b64encode(marker.encode())) == [], h
    for h in ("manager", "worker2"):  # no copy in the tmpfs of nodes without a task of the service
        other = lab.host(h).dir / "shoal" / "task-files"
        cp = lab.exec(h, "sh", "-c", f"grep -rlF {marker} {other} 2>/dev/null; true", check=True)
        assert cp.stdout.strip() == "", h

    [info] = json.loads(lab.docker("manager", "secret", "inspect", "lab_secret").stdout)
    assert "Data" not in info["Spec"]

    lab.docker("manager", "service", "rm", "sec")
    wait_for(lambda: containers(lab, "worker1", "sec") == [], 30, "the task's container removed")
    wait_for(lambda: lab.exec("worker1", "sh", "-c", f"grep -rlF {marker} {files} 2>/dev/null; true",
                              check=True).stdout.strip() == "", 10, "the secret's file removed on worker1")
    lab.docker("manager", "secret", "rm", "lab_secret")


# -- differential: Docker's swarm mode (worker3's dockerd, Docker 20.10) vs shoald (manager) --------------

ID_RE = re.compile(r"\b[a-z0-9]{25}\b")
AGO_RE = re.compile(r"(Less than a second|About a minute|About an hour|\d+ (seconds|minutes|hours)) ago")
TIME_RE = re.compile(r"\d{4}-\d\d-\d\d[ T][0-9:.]+( \+0000 utc|Z)?")


def norm(text: str) -> str:
    text = TIME_RE.sub("<TIME>", AGO_RE.sub("<AGO>", ID_RE.sub("<ID>", text)))
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines())


def both(lab: Lab, *args: str) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr), normalised, of the CLI against Docker's swarm, then against shoald."""
    return [(cp.returncode, norm(cp.stdout), norm(cp.stderr))
            for cp in (lab.engine_docker("worker3", *args, check=False), lab.docker("manager", *args, check=False))]


def same(lab: Lab, *args: str) -> tuple[int, str, str]:
    docker, shoal = both(lab, *args)
    assert shoal == docker, args
    return shoal


def inspected(lab: Lab, host: str, *args: str) -> list:
    run = lab.engine_docker if host == "worker3" else lab.docker
    out = json.loads(run(host, *args).stdout)
    for o in out:
        o["ID"], o["Version"], o["CreatedAt"], o["UpdatedAt"] = "<ID>", "<V>", "<T>", "<T>"
    return out


def as_docker_28(status: int, message: object) -> tuple[int, object]:
    """The lab's dockerd is Docker 20.10; shoal answers as Docker 28 does. Since moby 23 a request body that
    does not decode is reported as ``invalid JSON: <decoder error>``, and filter errors are lower-case
    (moby v28 api/types/filters/errors.go); the statuses are the same."""
    if isinstance(message, str) and message.startswith(("illegal base64", "json: cannot unmarshal")):
        message = f"invalid JSON: {message}"
    if isinstance(message, str) and message.startswith("Invalid filter"):
        message = "i" + message[1:]
    return status, message


def api(sock: Path, method: str, path: str, body: object = None) -> tuple[int, object]:
    status, _headers, parsed = unix_http.request(str(sock), method, path, body)
    return status, parsed


def test_same_as_docker_swarm(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter2")
    (tmp_path / "conf").write_text("a = 1\n")
    (tmp_path / "empty").write_text("")
    (tmp_path / "big_secret").write_bytes(b"x" * (500 * 1024))
    (tmp_path / "big_config").write_bytes(b"x" * (1000 * 1024))
    (tmp_path / "tmpl").write_text('svc={{.Service.Name}} slot={{.Task.Slot}} os={{.Node.Platform.OS}} '
                                   'arch={{.Node.Platform.Architecture}} env={{env "GREETING"}} '
                                   'label={{index .Service.Labels "tier"}} pw={{secret "db_pw"}}\n')
    pw, conf = str(tmp_path / "pw"), str(tmp_path / "conf")

    assert same(lab, "secret", "create", "--label", "team=a", "db_pw", pw)[0] == 0
    assert same(lab, "config", "create", "app_conf", conf)[0] == 0
    assert same(lab, "config", "create", "--template-driver", "golang", "tmpl_conf", str(tmp_path / "tmpl"))[0] == 0
    for cmd in (("secret", "create", "db_pw", pw), ("config", "create", "app_conf", conf),
                ("secret", "create", "too_big", str(tmp_path / "big_secret")),
                ("config", "create", "too_big", str(tmp_path / "big_config")),
                ("secret", "create", "empty", str(tmp_path / "empty")),
                ("secret", "create", "bad name", pw), ("config", "create", "x" * 65, conf),
                ("secret", "inspect", "nope"), ("config", "inspect", "nope"), ("secret", "rm", "nope"),
                ("service", "create", "--name", "ghostly", "--secret", "ghost", BOX)):
        assert same(lab, *cmd)[0] != 0, cmd
    for cmd in (("secret", "ls"), ("config", "ls"), ("secret", "ls", "--filter", "label=team=a"),
                ("secret", "ls", "--filter", "name=db"), ("config", "inspect", "--pretty", "app_conf"),
                ("secret", "inspect", "--pretty", "db_pw")):
        assert same(lab, *cmd)[0] == 0, cmd
    for what in (("secret", "inspect", "db_pw"), ("config", "inspect", "app_conf"), ("config", "inspect", "tmpl_conf")):
        assert inspected(lab, "manager", *what) == inspected(lab, "worker3", *what), what

    # a service using both: the task's files look the same, and rm of what it uses is refused alike
    # (two references to one secret share its file in Docker, with either reference's mode: not compared)
    same(lab, "service", "create", "-d", "--name", "user", "--secret", "db_pw",
         "--config", "source=app_conf,target=/etc/app.conf,mode=0440,uid=5,gid=6",
         "--config", "source=tmpl_conf,target=/etc/t",
         "--env", "GREETING=hi", "--label", "tier=front", BOX, *LOOP)
    script = ("for f in /run/secrets/db_pw /etc/app.conf /etc/t; do cat $f; echo; stat -c '%a %u %g' $f; "
              "grep \" $f \" /proc/mounts | cut -d' ' -f3,4 | cut -d, -f1; done")
    facts = []
    for host, engines in (("worker3", ("worker3",)), ("manager", ("manager", "worker1", "worker2"))):
        cid, eng = wait_for(lambda engines=engines: next(
            ((c, e) for e in engines for c in containers(lab, e, "user")), None), 40, f"the task ({host})")
        facts.append(wait_for(lambda cid=cid, eng=eng: lab.engine_docker(eng, "exec", cid, "sh", "-c", script,
                                                                          check=False).stdout, 20, "file facts"))
    assert facts[1] == facts[0]
    assert "hunter2\n444 0 0\ntmpfs ro\n" in facts[1]
    assert "a = 1\n\n440 5 6\ntmpfs ro\n" in facts[1]
    assert "svc=user slot=1 os= arch= env=hi label=front pw=hunter2\n" in facts[1]  # templated (no node info)
    assert same(lab, "secret", "rm", "db_pw")[0] != 0
    assert same(lab, "config", "rm", "app_conf")[0] != 0

    # the raw API: statuses and messages
    docker_sock, shoal_sock = lab.host("worker3").docker_sock, lab.host("manager").shoal_sock
    sid = {s: api(sock, "GET", "/v1.41/secrets/db_pw")[1]["ID"] for s, sock in (("d", docker_sock), ("s", shoal_sock))}
    calls = [
        ("POST", "/v1.41/secrets/create", {"Name": "b64", "Data": "not base64!"}),
        ("POST", "/v1.41/secrets/create", {"Name": "b64", "Data": "YWJj="}),
        ("POST", "/v1.41/configs/create", {"Name": "-x", "Data": "eA=="}),
        ("POST", "/v1.41/secrets/create", {"Data": "eA=="}),
        ("POST", "/v1.41/services/create", {"Name": "ghostly", "TaskTemplate": {"ContainerSpec": {
            "Image": BOX, "Secrets": [{"SecretID": "0" * 25, "SecretName": "ghost", "File": {
                "Name": "ghost", "UID": "0", "GID": "0", "Mode": 292}}]}}}),
        ("POST", "/v1.41/services/create", {"Name": "ghostly", "TaskTemplate": {"ContainerSpec": {
            "Image": BOX, "Configs": [{"ConfigID": "0" * 25, "ConfigName": "phantom", "File": {
                "Name": "/p", "UID": "0", "GID": "0", "Mode": 292}}]}}}),
        ("POST", "/v1.41/services/create", {"Name": "clash", "TaskTemplate": {"ContainerSpec": {
            "Image": BOX, "Secrets": [{"SecretID": "{d}", "SecretName": "db_pw", "File": {"Name": "t"}},
                                      {"SecretID": "{d}", "SecretName": "db_pw", "File": {"Name": "t"}}]}}}),
        ("POST", "/v1.41/services/create", {"Name": "bad", "TaskTemplate": {"ContainerSpec": {
            "Image": BOX, "Secrets": [{"SecretID": "{d}", "SecretName": "db_pw"}]}}}),
        ("POST", "/v1.41/services/create", {"Name": "bad", "TaskTemplate": {"ContainerSpec": {
            "Image": BOX, "Secrets": [{"SecretID": "{d}", "File": {"Name": "x"}}]}}}),
        ("POST", "/v1.41/services/create", {"Name": "bad", "TaskTemplate": {"ContainerSpec": {
            "Image": BOX, "Configs": [{"ConfigID": "c", "ConfigName": "n", "File": {"Name": ""}}]}}}),
        ("POST", "/v1.41/secrets/db_pw/update?version=1", {"Name": "db_pw", "Data": "b3RoZXI="}),
        ("POST", "/v1.41/secrets/db_pw/update?version=1", {"Name": "renamed"}),
        ("POST", "/v1.41/secrets/db_pw/update?version=abc", {"Name": "db_pw"}),
        ("POST", "/v1.41/configs/nope/update?version=1", {"Name": "nope"}),
        ("POST", "/v1.41/secrets/nope/update?version=x", {"Name": "nope", "Data": "!"}),
        ("GET", "/v1.41/secrets/nope", None),
        ("DELETE", "/v1.41/configs/nope", None),
        ("DELETE", "/v1.41/secrets/db_pw", None),
        ("GET", "/v1.41/secrets?filters=" + "%7B%22bogus%22%3A%5B%22x%22%5D%7D", None),
    ]
    for method, path, body in calls:
        answers = []
        for key, sock in (("d", docker_sock), ("s", shoal_sock)):
            text = json.dumps(body).replace("{d}", sid[key]) if body is not None else None
            status, reply = api(sock, method, path, None if text is None else json.loads(text))
            answers.append((status, norm(reply["message"]) if isinstance(reply, dict) else reply))
        assert answers[1] == as_docker_28(*answers[0]), (method, path, body)

    same(lab, "service", "rm", "user")
    for e in HOSTS + ("worker3",):
        wait_for(lambda e=e: containers(lab, e, "user") == [], 30, f"the task's container gone ({e})")
    assert same(lab, "secret", "rm", "db_pw")[0] == 0
    assert same(lab, "config", "rm", "app_conf", "tmpl_conf")[0] == 0
    assert same(lab, "secret", "ls")[0] == 0
