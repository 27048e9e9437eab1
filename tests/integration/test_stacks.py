"""``docker stack`` with the real CLI (v28 and v20): the CLI converts the compose file and calls the API;
shoal stores what it sent (with Docker's conversions and defaults), acts on the ``deploy:`` keys, and
refuses what Docker's daemon refuses."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import ClientSession, ClientTimeout, UnixConnector, web
from conftest import DOCKER_V20, DOCKER_V28, running_containers, wait_for

pytestmark = pytest.mark.integration

SECOND = 1_000_000_000

FULL = """
services:
  web:
    image: shoal/demo-web:latest
    ports: ["18080:80"]
    environment: [COLOR=blue]
    deploy:
      replicas: 2
      labels: {tier: front}
      placement:
        constraints: [node.role == manager]
        preferences: [{spread: node.id}]
        max_replicas_per_node: 2
      resources:
        limits: {cpus: "0.5", memory: 64M}
        reservations: {cpus: "0.1", memory: 16M}
      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 3, window: 10s}
      update_config: {parallelism: 2, delay: 1s, order: start-first, failure_action: rollback, monitor: 2s,
                      max_failure_ratio: 0.5}
      rollback_config: {parallelism: 1, order: stop-first}
    networks: [back]
  db:
    image: shoal/demo-busybox:latest
    command: [sleep, "1000000"]
    deploy:
      endpoint_mode: dnsrr
    networks: [back]
  agent:
    image: shoal/demo-busybox:latest
    command: [sleep, "1000000"]
    deploy: {mode: global}
networks:
  back: {driver: overlay}
"""

SIMPLE = """
version: "3.8"
services:
  front:
    image: shoal/demo-web:latest
    ports: ["{port}:80"]
    environment: [COLOR={color}]
    deploy: {{replicas: 2}}
  back:
    image: shoal/demo-busybox:latest
    command: [sleep, "1000000"]
    networks: [inner]
  extra:
    image: shoal/demo-busybox:latest
    command: [sleep, "1000000"]
networks:
  inner: {{}}
"""

# swarmkit's defaults (api/defaults), as `insertDefaults=true` shows them
DEFAULTS = {
    "TaskTemplate": {
        "ContainerSpec": {"StopGracePeriod": 10 * SECOND, "Isolation": "default"},
        "RestartPolicy": {"Condition": "any", "Delay": 5 * SECOND, "MaxAttempts": 0},
        "ForceUpdate": 0, "Runtime": "container",
    },
    "UpdateConfig": {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5 * SECOND, "MaxFailureRatio": 0,
                     "Order": "stop-first"},
    "RollbackConfig": {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5 * SECOND, "MaxFailureRatio": 0,
                       "Order": "stop-first"},
    "EndpointSpec": {"Mode": "vip"},
}


class RecordingProxy:
    """A tiny proxy on a unix socket in front of shoald's: records each request, forwards it unchanged."""

    def __init__(self, target: str, path: str) -> None:
        self.target, self.path = target, path
        self.records: list[tuple[str, str, bytes]] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _stop(self) -> None:
        await self.runner.cleanup()
        await self.http.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.http = http = ClientSession(connector=UnixConnector(path=self.target), timeout=ClientTimeout(total=120),
                             auto_decompress=False)

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            self.records.append((request.method, request.path_qs, body))
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with http.request(request.method, f"http://shoal{request.path_qs}", data=body,
                                    headers=headers) as resp:
                data = await resp.read()
                out = {k: v for k, v in resp.headers.items()
                       if k.lower() not in ("content-length", "transfer-encoding", "connection")}
                return web.Response(status=resp.status, body=data, headers=out)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.UnixSite(self.runner, self.path).start()

    def creates(self) -> list[dict]:
        return [json.loads(body) for method, path, body in self.records
                if method == "POST" and path.split("?")[0].endswith("/services/create")]


def _prune(value):
    """Drop what Docker's JSON leaves out (nulls, empty objects and lists)."""
    if isinstance(value, dict):
        out = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def _merge(defaults: dict, spec: dict) -> dict:
    """mergo.Merge as swarmkit's InterpolateService uses it: defaults fill fields left empty."""
    out = json.loads(json.dumps(spec))
    for k, v in defaults.items():
        if isinstance(v, dict):
            out[k] = _merge(v, out.get(k) or {})
        elif out.get(k) in (None, "", 0):
            out[k] = v
    return out


def docker_stores(sent: dict, network_ids: dict[str, str]) -> dict:
    """What Docker's daemon gives back for a spec it was sent (moby daemon/cluster/convert): network
    names resolved to IDs, empty enums at their zero value, the runtime explicit."""
    spec = json.loads(json.dumps(sent))
    mode = spec.get("Mode") or {}
    if not any(mode.get(k) is not None for k in ("Global", "ReplicatedJob", "GlobalJob")):
        spec["Mode"] = {"Replicated": {"Replicas": (mode.get("Replicated") or {}).get("Replicas", 1)}}
    tt = spec["TaskTemplate"]
    tt["Runtime"] = "container"
    tt["ContainerSpec"]["Isolation"] = tt["ContainerSpec"].get("Isolation") or "default"
    for n in tt.get("Networks") or []:
        n["Target"] = network_ids.get(n["Target"], n["Target"])
    if tt.get("RestartPolicy") is not None:
        tt["RestartPolicy"].setdefault("Condition", "any")
        tt["RestartPolicy"].setdefault("MaxAttempts", 0)
    for key in ("UpdateConfig", "RollbackConfig"):
        if spec.get(key) is not None:
            cfg = spec[key]
            cfg["FailureAction"] = cfg.get("FailureAction") or "pause"
            cfg["Order"] = cfg.get("Order") or "stop-first"
            cfg.setdefault("MaxFailureRatio", 0)
    if spec.get("EndpointSpec") is not None:
        ep = spec["EndpointSpec"]
        ep["Mode"] = ep.get("Mode") or "vip"
        for p in ep.get("Ports") or []:
            p["Protocol"] = p.get("Protocol") or "tcp"
            p["PublishMode"] = p.get("PublishMode") or "ingress"
    return spec


def _deploy(shoald, tmp_path: Path, name: str, text: str, *flags: str, cli: str = DOCKER_V28, check: bool = True):
    f = tmp_path / f"{name}.yml"
    f.write_text(text)
    return shoald.docker("stack", "deploy", *flags, "-c", str(f), name, cli=cli, check=check)


def _services(shoald, stack: str) -> dict[str, dict]:
    flt = quote(json.dumps({"label": [f"com.docker.stack.namespace={stack}"]}))
    status, _, body = shoald.request("GET", f"/services?filters={flt}")
    assert status == 200
    return {s["Spec"]["Name"]: s for s in body}


def _running_tasks(shoald, service: str) -> set[str]:
    flt = quote(json.dumps({"service": [service], "desired-state": ["running"]}))
    _, _, body = shoald.request("GET", f"/tasks?filters={flt}")
    return {t["ID"] for t in body if t["Status"]["State"] == "running"}


def _converged(shoald, stack: str, want: dict[str, int]):
    def check():
        return all(len(_running_tasks(shoald, f"{stack}_{svc}")) == n for svc, n in want.items())
    wait_for(check, 60, what=f"stack {stack} converged to {want}")


def assert_stored_as_sent(shoald, tmp_path: Path, stack: str, text: str) -> dict[str, dict]:
    """Deploy through a recording proxy; every spec the CLI sent comes back as Docker's daemon would give
    it, with and without ``insertDefaults``. Returns the stored services by name."""
    with RecordingProxy(shoald.sock, str(tmp_path / "rec.sock")) as rec:
        shoald.docker("-H", f"unix://{rec.path}", "stack", "deploy", "-c",
                      str(_write(tmp_path, text, f"{stack}.yml")), stack)
    sent = {s["Name"]: s for s in rec.creates()}
    nets = {n["Name"]: n["Id"] for n in shoald.client().api.networks()}
    stored = _services(shoald, stack)
    assert set(sent) == set(stored) and sent
    for name, spec in sent.items():
        _, _, plain = shoald.request("GET", f"/services/{stored[name]['ID']}")
        _, _, full = shoald.request("GET", f"/services/{stored[name]['ID']}?insertDefaults=true")
        expected = docker_stores(spec, nets)
        assert _prune(plain["Spec"]) == _prune(expected), name
        assert _prune(full["Spec"]) == _prune(_merge(DEFAULTS, expected)), name
    return stored


@pytest.mark.field("TaskSpec.Resources.Limits", "Limit.NanoCPUs", "Limit.MemoryBytes", "EndpointSpec.Mode",
                   "EndpointPortConfig.PublishedPort", how="honoured")
def test_deploy_keys_stored_as_sent_and_acted_on(shoald, tmp_path, docker_engine):
    stored = assert_stored_as_sent(shoald, tmp_path, "full", FULL)
    assert set(stored) == {"full_web", "full_db", "full_agent"}
    web_spec = stored["full_web"]["Spec"]
    tt = web_spec["TaskTemplate"]
    assert web_spec["Labels"]["tier"] == "front" and web_spec["Labels"]["com.docker.stack.namespace"] == "full"
    assert tt["Placement"] == {"Constraints": ["node.role == manager"],
                               "Preferences": [{"Spread": {"SpreadDescriptor": "node.id"}}], "MaxReplicas": 2}
    assert tt["Resources"] == {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 * 1024 * 1024},
                               "Reservations": {"NanoCPUs": 100_000_000, "MemoryBytes": 16 * 1024 * 1024}}
    assert tt["RestartPolicy"] == {"Condition": "on-failure", "Delay": 2 * SECOND, "MaxAttempts": 3,
                                   "Window": 10 * SECOND}
    assert web_spec["UpdateConfig"] == {"Parallelism": 2, "Delay": SECOND, "FailureAction": "rollback",
                                        "Monitor": 2 * SECOND, "MaxFailureRatio": 0.5, "Order": "start-first"}
    assert web_spec["RollbackConfig"]["Order"] == "stop-first" and web_spec["RollbackConfig"]["Parallelism"] == 1
    assert stored["full_db"]["Spec"]["EndpointSpec"]["Mode"] == "dnsrr"
    assert stored["full_agent"]["Spec"]["Mode"] == {"Global": {}}
    # ... and they act
    _converged(shoald, "full", {"web": 2, "db": 1, "agent": 1})
    c = running_containers(docker_engine, "full_web")[0]
    assert c.attrs["HostConfig"]["NanoCpus"] == 500_000_000 and c.attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert "COLOR=blue" in c.attrs["Config"]["Env"]
    _, _, db = shoald.request("GET", f"/services/{stored['full_db']['ID']}")
    assert not db["Endpoint"].get("VirtualIPs")
    _, _, web_svc = shoald.request("GET", f"/services/{stored['full_web']['ID']}")
    assert {p["PublishedPort"] for p in web_svc["Endpoint"]["Ports"]} == {18080}
    shoald.docker("stack", "rm", "full")
    wait_for(lambda: not _services(shoald, "full"), 30, what="stack full removed")


def _write(tmp_path: Path, text: str, name: str = "compose.yml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


@pytest.mark.parametrize("cli", [DOCKER_V28, DOCKER_V20], ids=["v28", "v20"])
def test_stack_walkthrough(shoald, tmp_path, docker_engine, cli):
    name = "walk28" if cli == DOCKER_V28 else "walk20"
    port = 18081 if cli == DOCKER_V28 else 18082
    cp = _deploy(shoald, tmp_path, name, SIMPLE.format(port=port, color="red"), cli=cli)
    assert f"Creating network {name}_inner" in cp.stdout and f"Creating network {name}_default" in cp.stdout
    assert f"Creating service {name}_front" in cp.stdout
    _converged(shoald, name, {"front": 2, "back": 1, "extra": 1})
    ls = shoald.docker("stack", "ls", "--format", "{{.Name}} {{.Services}}", cli=cli).stdout
    assert f"{name} 3" in ls.splitlines()
    svcs = shoald.docker("stack", "services", "--format", "{{.Name}} {{.Mode}} {{.Replicas}} {{.Ports}}", name,
                         cli=cli).stdout.splitlines()
    assert sorted(svcs) == sorted([f"{name}_back replicated 1/1 ", f"{name}_extra replicated 1/1 ",
                                   f"{name}_front replicated 2/2 *:{port}->80/tcp"])
    ps = shoald.docker("stack", "ps", "--format", "{{.Name}} {{.DesiredState}} {{.CurrentState}}", name,
                       cli=cli).stdout.splitlines()
    assert sorted(line.split()[0] for line in ps) == sorted([f"{name}_back.1", f"{name}_extra.1",
                                                             f"{name}_front.1", f"{name}_front.2"])
    assert all(line.split()[1] == "Running" and line.split()[2] == "Running" for line in ps)
    net = shoald.client().api.inspect_network(f"{name}_inner")
    assert net["Driver"] == "overlay" and net["Scope"] == "swarm"
    assert net["Labels"] == {"com.docker.stack.namespace": name}

    # re-deploy with only `front` changed: its tasks are replaced, the others keep theirs
    before = {svc: _running_tasks(shoald, f"{name}_{svc}") for svc in ("front", "back", "extra")}
    _deploy(shoald, tmp_path, name, SIMPLE.format(port=port, color="green"), cli=cli)

    def front_replaced():
        now = _running_tasks(shoald, f"{name}_front")
        return len(now) == 2 and not (now & before["front"])
    wait_for(front_replaced, 60, what="front's tasks replaced")
    assert _running_tasks(shoald, f"{name}_back") == before["back"]
    assert _running_tasks(shoald, f"{name}_extra") == before["extra"]
    env = running_containers(docker_engine, f"{name}_front")[0].attrs["Config"]["Env"]
    assert "COLOR=green" in env

    # --prune removes a service dropped from the file
    pruned = SIMPLE.format(port=port, color="green").replace(
        '  extra:\n    image: shoal/demo-busybox:latest\n    command: [sleep, "1000000"]\n', "")
    cp = _deploy(shoald, tmp_path, name, pruned, "--prune", cli=cli)
    assert f"Removing service {name}_extra" in cp.stdout
    assert set(_services(shoald, name)) == {f"{name}_front", f"{name}_back"}

    cp = shoald.docker("stack", "rm", name, cli=cli)
    assert f"Removing service {name}_front" in cp.stdout and f"Removing network {name}_inner" in cp.stdout
    assert not _services(shoald, name)
    names = {n["Name"] for n in shoald.client().api.networks()}
    assert f"{name}_inner" not in names and f"{name}_default" not in names
    wait_for(lambda: not running_containers(docker_engine, f"{name}_front"), 30, what="containers gone")
    assert name not in shoald.docker("stack", "ls", cli=cli).stdout


BAD_CONSTRAINT = """
services:
  a:
    image: shoal/demo-busybox:latest
    command: [sleep, "1000000"]
    deploy:
      placement:
        constraints: ["node.role = manager"]
"""

DUP_PORT = """
services:
  a:
    image: shoal/demo-busybox:latest
    command: [sleep, "1000000"]
    ports: ["18091:80", "18091:81"]
"""


def test_bad_input(shoald, tmp_path):
    # malformed: the CLI refuses it and calls nothing that creates
    cp = _deploy(shoald, tmp_path, "malformed", "services:\n  a:\n    image: [x\n", check=False)
    assert cp.returncode != 0 and "yaml" in cp.stderr
    assert not _services(shoald, "malformed")
    # the daemon's refusals, with its message (and status, seen on the API)
    cp = _deploy(shoald, tmp_path, "badc", BAD_CONSTRAINT, check=False)
    assert cp.returncode != 0
    assert ("failed to create service badc_a: Error response from daemon: rpc error: code = InvalidArgument "
            "desc = constraint expected one operator from ==, !=") in cp.stderr
    assert not _services(shoald, "badc")
    cp = _deploy(shoald, tmp_path, "dupp", DUP_PORT, check=False)
    assert cp.returncode != 0
    assert "rpc error: code = InvalidArgument desc = EndpointSpec: duplicate published ports provided" in cp.stderr
    assert not _services(shoald, "dupp")
    spec = {"Name": "raw-bad", "TaskTemplate": {"ContainerSpec": {"Image": "shoal/demo-busybox:latest"},
                                                "Placement": {"Constraints": ["node.role = manager"]}}}
    status, _, body = shoald.request("POST", "/services/create", spec)
    assert status == 400 and body["message"].endswith("constraint expected one operator from ==, !=")
    # nothing half-made: the refused port is free for the next service
    ok = DUP_PORT.replace('"18091:80", "18091:81"', '"18091:80"')
    _deploy(shoald, tmp_path, "dupp", ok)
    assert set(_services(shoald, "dupp")) == {"dupp_a"}
    # a port another stack's service already publishes: refused with the daemon's message
    cp = _deploy(shoald, tmp_path, "dupq", ok, check=False)
    assert cp.returncode != 0
    assert "port '18091' is already in use by service 'dupp_a'" in cp.stderr
    assert not _services(shoald, "dupq")
    for stack in ("dupp", "dupq", "badc"):
        shoald.docker("stack", "rm", stack)


WITH_SECRETS = """
version: "3.8"
services:
  app:
    image: shoal/demo-busybox:latest
    command: [sh, -c, "trap 'exit 0' TERM; cat /run/secrets/pw /cfg; while true; do sleep 1; done"]
    secrets: [pw]
    configs: [{source: cfg, target: /cfg}]
secrets:
  pw: {file: ./pw.txt}
configs:
  cfg: {file: ./cfg.txt}
"""


def test_stack_with_secret_and_config(shoald, tmp_path):
    (tmp_path / "pw.txt").write_text("hunter2\n")
    (tmp_path / "cfg.txt").write_text("conf=1\n")
    cp = _deploy(shoald, tmp_path, "sec", WITH_SECRETS)
    assert "Creating secret sec_pw" in cp.stdout and "Creating config sec_cfg" in cp.stdout
    secret = json.loads(shoald.docker("secret", "inspect", "sec_pw").stdout)[0]
    assert secret["Spec"]["Labels"] == {"com.docker.stack.namespace": "sec"}
    wait_for(lambda: shoald.docker("service", "logs", "sec_app").stdout.count("|") == 2, 30, what="files read")
    out = shoald.docker("service", "logs", "--raw", "sec_app").stdout
    assert out.splitlines() == ["hunter2", "conf=1"]
    cp = shoald.docker("stack", "rm", "sec")
    assert "Removing secret sec_pw" in cp.stdout and "Removing config sec_cfg" in cp.stdout
    assert "sec_pw" not in shoald.docker("secret", "ls").stdout
    assert "sec_cfg" not in shoald.docker("config", "ls").stdout


RICH = """
version: "3.8"
services:
  rich:
    image: shoal/demo-busybox:latest
    command: [sleep, "100000"]
    environment: {A: "1", B: two}
    labels: {container.label: x}
    hostname: richhost
    user: "0:0"
    working_dir: /tmp
    stop_grace_period: 3s
    stop_signal: SIGTERM
    init: true
    cap_add: [NET_ADMIN]
    cap_drop: [MKNOD]
    sysctls: {net.core.somaxconn: "1024"}
    ulimits: {nofile: {soft: 1024, hard: 2048}}
    extra_hosts: ["db.local:10.1.2.3"]
    healthcheck: {test: ["CMD", "true"], interval: 5s, timeout: 2s, retries: 2, start_period: 1s}
    logging: {driver: json-file, options: {max-size: 1m}}
    volumes: [{type: tmpfs, target: /cache, tmpfs: {size: 1048576}}, {type: volume, source: richdata, target: /data}]
    ports: [{target: 80, published: 18095, protocol: udp, mode: host}]
    deploy:
      replicas: 1
      labels: {a.b: c}
      rollback_config: {failure_action: continue, monitor: 3s}
volumes:
  richdata: {}
"""


@pytest.mark.parametrize("which", ["simple", "rich", "secrets"])
def test_more_specs_stored_as_sent(shoald, tmp_path, which):
    (tmp_path / "pw.txt").write_text("hunter2\n")
    (tmp_path / "cfg.txt").write_text("conf=1\n")
    text = {"simple": SIMPLE.format(port=18096, color="x"), "rich": RICH, "secrets": WITH_SECRETS}[which]
    assert_stored_as_sent(shoald, tmp_path, f"rt{which}", text)
