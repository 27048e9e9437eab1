"""Failing updates, rollbacks and jobs side by side with Docker's own swarm mode: the same docker CLI
commands on a 3-host lab whose shoalds form the swarm, then on a lab whose dockerds (Debian's 20.10) form
Docker's; what users see must be the same — UpdateStatus, what `docker service update` prints about the
failure and the rollback, `service ls` REPLICAS, the tasks' states and errors.

A bad image is a name that does not exist: no registry is reachable, its pull fails. The table of what
each side showed is printed (and is in docs/orchestrator.md)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from labtools import module_lab

pytestmark = pytest.mark.lab

WEB = "shoal/demo-web:latest"
BUSYBOX = "shoal/demo-busybox:latest"
BAD = "shoal/nope:1"
ID = re.compile(r"\b[0-9a-z]{25}\b")

Docker = Callable[..., object]  # the docker CLI against one side's manager


def normal(text: str) -> str:
    """Task and service IDs differ between the sides."""
    return ID.sub("<ID>", text.strip())


def until(pred: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Side:
    def __init__(self, docker: Docker) -> None:
        self.docker = docker

    def run(self, *args: str, check: bool = True, timeout: float = 120):
        return self.docker(*args, check=check, timeout=timeout)

    def inspect(self, service: str) -> dict:
        return json.loads(self.run("service", "inspect", service).stdout)[0]

    def status(self, service: str) -> str:
        st = self.inspect(service).get("UpdateStatus") or {}
        return f"{st.get('State', '-')}: {normal(st.get('Message', ''))}"

    def replicas(self, service: str) -> str:
        return self.run("service", "ls", "--filter", f"name={service}", "--format", "{{.Replicas}}").stdout.strip()

    def ps(self, service: str) -> list[dict]:
        out = self.run("service", "ps", "--no-trunc", "--format", "{{json .}}", service).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def running(self, service: str) -> str:
        """How many tasks run, per image."""
        rows = [r for r in self.ps(service)
                if r["DesiredState"] == "Running" and r["CurrentState"].startswith("Running")]
        images = sorted({r["Image"].split("@")[0] for r in rows})
        return ", ".join(f"{sum(r['Image'].split('@')[0] == i for r in rows)}× {i}" for i in images) or "none"

    def errors(self, service: str) -> str:
        return "; ".join(sorted({f"{r['CurrentState'].split()[0]} {r['Error']}" for r in self.ps(service)
                                 if r["Error"]}))

    def settle(self, service: str) -> None:
        """Wait until the tasks that were told to stop have (demo-web takes its stop grace period)."""
        until(lambda: not [r for r in self.ps(service)
                           if r["DesiredState"] == "Shutdown" and r["CurrentState"].startswith("Running")],
              60, f"{service}'s old tasks to stop")

    def service(self, name: str, *flags: str, image: str = WEB, replicas: str = "3") -> None:
        self.run("service", "create", "-d", "--name", name, "--replicas", replicas, *flags, image)
        until(lambda: self.running(name) == f"{replicas}× {image}", 90, f"{name} running")


def cli_lines(cp) -> list[str]:
    """What `docker service update` printed that says how it went (the progress lines about the
    rollback and verification, and the error), IDs masked."""
    text = cp.stdout + cp.stderr
    keep = ("rollback:", "verify: Service", "Error", "service update paused", "service rollback paused")
    return [normal(line) for line in (x.strip() for x in re.split(r"[\r\n]+", text))
            if line.startswith(keep)]


def bad_update(side: Side, name: str, *flags: str) -> dict:
    side.service(name, "--update-monitor", "3s", *flags)
    cp = side.run("service", "update", "--image", BAD, name, check=False, timeout=180)
    lines = cli_lines(cp)
    state = side.status(name)
    if state.startswith(("updating", "rollback_started")):  # the CLI gave up first: wait for the end
        until(lambda: not side.status(name).startswith(("updating", "rollback_started")), 90, "an end state")
    side.settle(name)
    return {"UpdateStatus": side.status(name), "update exit": str(cp.returncode),
            "update said": " / ".join(dict.fromkeys(lines)), "ls": side.replicas(name),
            "running": side.running(name), "errors": side.errors(name)}


def scenario_pause(side: Side) -> dict:
    return bad_update(side, "bad-pause")


def scenario_rollback(side: Side) -> dict:
    return bad_update(side, "bad-rollback", "--update-failure-action", "rollback")


def scenario_continue(side: Side) -> dict:
    side.service("bad-continue", "--update-monitor", "2s", "--update-failure-action", "continue")
    side.run("service", "update", "-d", "--image", BAD, "bad-continue")
    until(lambda: side.status("bad-continue").startswith("completed"), 120, "completed")
    side.settle("bad-continue")
    return {"UpdateStatus": side.status("bad-continue"), "ls": side.replicas("bad-continue"),
            "running": side.running("bad-continue")}


def scenario_start_first(side: Side) -> dict:
    name = "bad-start-first"
    side.service(name, "--update-monitor", "3s", "--update-order", "start-first")
    side.run("service", "update", "-d", "--image", BAD, name)
    until(lambda: side.status(name).startswith("paused"), 120, "paused")
    side.settle(name)
    return {"UpdateStatus": side.status(name), "ls": side.replicas(name), "running": side.running(name)}


def scenario_rollback_config(side: Side) -> dict:
    name = "rollback-config"
    side.service(name, "--update-monitor", "1s", "--rollback-parallelism", "0", "--rollback-monitor", "1s",
                 "--rollback-order", "start-first", replicas="2")
    side.run("service", "update", "--env-add", "V=2", name)
    cp = side.run("service", "rollback", name, check=False)
    return {"UpdateStatus": side.status(name), "rollback exit": str(cp.returncode),
            "rollback said": " / ".join(dict.fromkeys(cli_lines(cp))), "running": side.running(name)}


def last_line(cp) -> str:
    return [x.strip() for x in re.split(r"[\r\n]+", cp.stdout) if x.strip()][-1]


def tasks(side: Side, service: str) -> str:
    """The tasks' states, counted."""
    states = [r["CurrentState"].split()[0] for r in side.ps(service)]
    return ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))


def scenario_replicated_job(side: Side) -> dict:
    cp = side.run("service", "create", "--name", "job", "--mode", "replicated-job", "--replicas", "3",
                  "--max-concurrent", "2", BUSYBOX, "sh", "-c", "echo done", timeout=120)
    first = {"create said last": last_line(cp), "ls": side.replicas("job"), "tasks": tasks(side, "job")}
    cp = side.run("service", "update", "--force", "job", timeout=120)  # runs it again
    return {**first, "update --force said last": last_line(cp), "ls after": side.replicas("job"),
            "tasks after": tasks(side, "job"),
            "JobIteration after": json.dumps(side.inspect("job")["JobStatus"]["JobIteration"])}


def scenario_global_job(side: Side) -> dict:
    cp = side.run("service", "create", "--name", "gjob", "--mode", "global-job", BUSYBOX, "true", timeout=120)
    return {"create said last": last_line(cp), "ls": side.replicas("gjob"), "tasks": tasks(side, "gjob")}


SCENARIOS = {"bad image, failure action pause": scenario_pause,
             "bad image, failure action rollback": scenario_rollback,
             "bad image, failure action continue": scenario_continue,
             "bad image, start-first": scenario_start_first,
             "rollback with RollbackConfig": scenario_rollback_config,
             "replicated job (3, max 2)": scenario_replicated_job,
             "global job (3 nodes)": scenario_global_job}


def observe(side: Side) -> dict[str, dict]:
    with ThreadPoolExecutor(len(SCENARIOS)) as pool:
        futures = {name: pool.submit(fn, side) for name, fn in SCENARIOS.items()}
        return {name: f.result() for name, f in futures.items()}


def test_lifecycle_as_docker_swarm_mode(docker_engine):
    with module_lab(workers=2, swarm=True) as lab:
        shoal = observe(Side(lambda *a, **k: lab.docker("manager", *a, **k)))
    with module_lab(workers=2, swarm=False) as lab:
        lab.docker_swarm()
        docker = observe(Side(lambda *a, **k: lab.engine_docker("manager", *a, **k)))
    rows = ["| scenario | what | Docker 20.10 | shoal |", "|---|---|---|---|"]
    diffs = []
    for name in SCENARIOS:
        for key, theirs in docker[name].items():
            ours = shoal[name].get(key)
            rows.append(f"| {name} | {key} | {theirs} | {ours} |")
            if ours != theirs:
                diffs.append(f"{name} / {key}: Docker {theirs!r}, shoal {ours!r}")
    print("\n".join(rows), file=sys.stderr)
    assert not diffs, "\n".join(diffs)
