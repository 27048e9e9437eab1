"""A compose stack on the three-host lab (manager, worker1, worker2): `docker stack deploy` converges
(a web service with 3 replicas publishing a port, one per host; a back-end on an overlay network placed
on workers only, with a secret and a config; update_config), `stack ps/services` show it, `docker service
logs -f` streams lines from tasks on all three hosts, gathered over the cluster port; a re-deploy of a
changed file replaces only the changed service's tasks, and `stack rm` removes all of it."""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import module_lab, wait_for

from shoal.lab.hosts import DOCKER_CLI
from shoal.lab.lab import Lab

pytestmark = pytest.mark.lab

HOSTS = ("manager", "worker1", "worker2")
STACK = """
version: "3.8"
services:
  web:
    image: shoal/demo-web:latest
    ports: ["8080:80"]
    deploy:
      replicas: 3
      placement:
        max_replicas_per_node: 1
      update_config: {parallelism: 1, delay: 1s, order: start-first}
    networks: [front]
  api:
    image: shoal/demo-busybox:latest
    command: [sh, -c, "while true; do echo api on $$(hostname); sleep 0.5; done"]
    deploy:
      replicas: 2
      placement:
        constraints: [node.role == worker]
    networks: [front, back]
    environment: [API_MODE=one]
    secrets: [apikey]
    configs: [{source: apiconf, target: /etc/api.conf, mode: 0440}]
  ticker:
    image: shoal/demo-busybox:latest
    command: [sh, -c, "i=0; while true; do i=$$((i+1)); echo tick $$i; sleep 0.3; done"]
    deploy:
      mode: global
    networks: [back]
networks:
  front: {driver: overlay}
  back: {driver: overlay}
secrets:
  apikey: {file: ./apikey.txt}
configs:
  apiconf: {file: ./api.conf}
"""


@pytest.fixture(scope="module")
def lab(docker_engine) -> Iterator[Lab]:
    with module_lab(workers=2, swarm=True) as the_lab:
        yield the_lab


def hosts_of(lab: Lab, service: str) -> list[str]:
    out = lab.docker("manager", "service", "ps", service, "--filter", "desired-state=running",
                     "--format", "{{.Node}} {{.CurrentState}}").stdout
    return sorted(line.split()[0] for line in out.splitlines() if "Running" in line)


def containers(lab: Lab, host: str, service: str) -> list[str]:
    return sorted(lab.engine_docker(host, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}")
                  .stdout.split())


def test_stack_deploys_converges_and_streams_logs_from_every_host(lab: Lab, tmp_path: Path) -> None:
    compose = tmp_path / "stack.yml"
    compose.write_text(STACK)
    (tmp_path / "apikey.txt").write_text("s3cr3t-key")
    (tmp_path / "api.conf").write_text("listen 80\n")
    cp = lab.docker("manager", "stack", "deploy", "-c", str(compose), "shop")
    assert "Creating network shop_back" in cp.stdout and "Creating service shop_web" in cp.stdout
    wait_for(lambda: hosts_of(lab, "shop_web") == sorted(HOSTS), 90, "web: one task on each host")
    wait_for(lambda: hosts_of(lab, "shop_ticker") == sorted(HOSTS), 60, "ticker on each host")
    wait_for(lambda: hosts_of(lab, "shop_api") == ["worker1", "worker2"], 60, "api on the workers")
    svcs = lab.docker("manager", "stack", "services", "--format", "{{.Name}} {{.Replicas}}", "shop").stdout
    assert sorted(svcs.split("\n")[:-1]) == ["shop_api 2/2", "shop_ticker 3/3", "shop_web 3/3 (max 1 per node)"]
    web = json.loads(lab.docker("manager", "service", "inspect", "shop_web").stdout)[0]
    assert web["Spec"]["UpdateConfig"]["Order"] == "start-first"
    assert [p["PublishedPort"] for p in web["Endpoint"]["Ports"]] == [8080]
    # the published port answers on every host's address (the routing mesh)
    for h in HOSTS:
        page = lab.exec("manager", "wget", "-qO-", "-T", "5", f"http://{lab.host(h).ip}:8080/").stdout
        assert page, f"no answer on {h}:8080"

    # docker service logs -f: lines from the tasks on all three hosts
    env = {**os.environ, "DOCKER_HOST": lab.host("manager").docker_host}
    env.pop("DOCKER_CONTEXT", None)
    proc = subprocess.Popen([DOCKER_CLI, "service", "logs", "-f", "--tail", "2", "shop_ticker"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: dict[str, int] = {}
    buf = b""
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.time() + 30
        while time.time() < deadline and not (len(seen) == 3 and min(seen.values()) >= 5):
            if not sel.select(0.5):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *lines, rest = buf.split(b"\n")
            buf = rest
            for line in lines:
                m = re.match(rb"^shop_ticker\.\d+\.\w{12}@(\S+) +\| tick \d+$", line)
                assert m, line
                host = m.group(1).decode()
                seen[host] = seen.get(host, 0) + 1
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert set(seen) == set(HOSTS), (seen, err)
    assert min(seen.values()) >= 5, seen  # still streaming: more than the 2 lines of --tail from each

    # and the api back-end's logs come from the two workers
    cp = lab.docker("manager", "service", "logs", "--tail", "1", "shop_api")
    assert sorted(re.findall(r"@(\S+) +\| api on", cp.stdout)) == ["worker1", "worker2"]

    # the api tasks see their secret and config; a re-deploy of a changed file replaces only api's tasks
    for h in ("worker1", "worker2"):
        cid = containers(lab, h, "shop_api")[0]
        assert lab.engine_docker(h, "exec", cid, "cat", "/run/secrets/apikey").stdout == "s3cr3t-key"
        assert lab.engine_docker(h, "exec", cid, "stat", "-c", "%a", "/etc/api.conf").stdout.strip() == "440"
    before = {svc: {h: containers(lab, h, svc) for h in HOSTS} for svc in ("shop_web", "shop_ticker", "shop_api")}
    compose.write_text(STACK.replace("API_MODE=one", "API_MODE=two"))
    lab.docker("manager", "stack", "deploy", "-c", str(compose), "shop")
    wait_for(lambda: all(containers(lab, h, "shop_api") and not set(containers(lab, h, "shop_api"))
                         & set(before["shop_api"][h]) for h in ("worker1", "worker2")), 60, "api tasks replaced")
    for svc in ("shop_web", "shop_ticker"):
        assert {h: containers(lab, h, svc) for h in HOSTS} == before[svc], f"{svc} was disturbed"

    cp = lab.docker("manager", "stack", "rm", "shop")
    assert "Removing service shop_web" in cp.stdout and "Removing network shop_front" in cp.stdout
    wait_for(lambda: not any(lab.engine_docker(h, "ps", "-q", "--filter", "label=com.docker.stack.namespace=shop")
                             .stdout.strip() for h in HOSTS), 60, "no stack containers left")
    assert lab.docker("manager", "secret", "ls", "-q").stdout.strip() == ""
    assert lab.docker("manager", "config", "ls", "-q").stdout.strip() == ""
