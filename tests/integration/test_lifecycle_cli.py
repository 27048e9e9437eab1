"""Rolling updates that fail, rollbacks and jobs through the real docker CLI (v28), against a shoald on the
machine's dockerd: what `docker service update` prints, `UpdateStatus`, `service ps` and `service ls`.

A bad image is a name that does not exist (no registry is reachable, so its pull fails and the task is
rejected, as with Docker)."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import wait_for

pytestmark = pytest.mark.integration

WEB = "shoal/demo-web:latest"
BUSYBOX = "shoal/demo-busybox:latest"
BAD = "shoal/nope:1"


def inspect(shoald, service: str) -> dict:
    return json.loads(shoald.docker("service", "inspect", service).stdout)[0]


def update_status(shoald, service: str) -> dict:
    return inspect(shoald, service).get("UpdateStatus") or {}


def ps(shoald, service: str) -> list[dict]:
    out = shoald.docker("service", "ps", "--no-trunc", "--format", "{{json .}}", service).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def replicas(shoald, service: str) -> str:
    return shoald.docker("service", "ls", "--filter", f"name={service}", "--format", "{{.Replicas}}").stdout.strip()


def running_images(shoald, service: str) -> list[str]:
    return sorted(r["Image"] for r in ps(shoald, service)
                  if r["DesiredState"] == "Running" and r["CurrentState"].startswith("Running"))


def progress_lines(out: str) -> list[str]:
    """The CLI's progress output without a terminal: one line per update, blanks dropped."""
    return [line.strip() for line in re.split(r"[\r\n]+", out) if line.strip()]


def scenario_pause(shoald) -> None:
    """Default failure action: the update pauses on the first rejected task; the CLI says so and fails."""
    shoald.docker("service", "create", "-d", "--name", "upd-pause", "--replicas", "3", "--update-monitor", "3s", WEB)
    wait_for(lambda: running_images(shoald, "upd-pause") == [WEB] * 3, 60, what="3 running")
    cp = shoald.docker("service", "update", "--image", BAD, "upd-pause", check=False)
    st = update_status(shoald, "upd-pause")
    assert st["State"] == "paused", st
    rejected = [r for r in ps(shoald, "upd-pause") if r["CurrentState"].startswith("Rejected")]
    assert rejected and "No such image: shoal/nope:1" in rejected[0]["Error"], rejected
    prefix = "update paused due to failure or early termination of task "
    assert st["Message"].startswith(prefix) and st["Message"][len(prefix):] in {r["ID"] for r in rejected}, st
    assert cp.returncode == 1 and f"service update paused: {st['Message']}" in cp.stderr, cp
    assert running_images(shoald, "upd-pause") == [WEB] * 2
    # (the old task of the failed slot counts as running until it has stopped, as with Docker)
    wait_for(lambda: replicas(shoald, "upd-pause") == "2/3", 20, what="2/3")


def scenario_rollback(shoald) -> None:
    """Failure action rollback: back to the old image, the CLI shows the rollback and converges."""
    shoald.docker("service", "create", "-d", "--name", "upd-rb", "--replicas", "3", "--update-failure-action",
                  "rollback", "--update-monitor", "3s", "--rollback-monitor", "2s", WEB)
    wait_for(lambda: running_images(shoald, "upd-rb") == [WEB] * 3, 60, what="3 running")
    cp = shoald.docker("service", "update", "--image", BAD, "upd-rb")
    lines = progress_lines(cp.stdout)
    # the CLI returns once the tasks ran for the update's Monitor; the rollback's own Monitor may end later
    st = wait_for(lambda: (st := update_status(shoald, "upd-rb"))["State"] != "rollback_started" and st, 15,
                  what="the rollback to end")
    assert st["State"] == "rollback_completed" and st["Message"] == "rollback completed", st
    rolled = [line for line in lines if line.startswith("rollback: update rolled back due to failure or early "
                                                        "termination of task ")]
    assert rolled, lines
    assert "overall progress: rolling back update: 3 out of 3 tasks" in lines, lines
    # (the CLI adds "rollback: rollback completed" only when it sees that before the tasks converged)
    assert lines[-1] == "verify: Service upd-rb converged", lines[-8:]
    svc = inspect(shoald, "upd-rb")
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == WEB and "PreviousSpec" not in svc
    assert running_images(shoald, "upd-rb") == [WEB] * 3


def scenario_continue(shoald) -> None:
    """Failure action continue: every slot gets the new (bad) task and the update completes."""
    shoald.docker("service", "create", "-d", "--name", "upd-cont", "--replicas", "3", "--update-failure-action",
                  "continue", "--update-monitor", "2s", WEB)
    wait_for(lambda: running_images(shoald, "upd-cont") == [WEB] * 3, 60, what="3 running")
    shoald.docker("service", "update", "-d", "--image", BAD, "upd-cont")
    wait_for(lambda: update_status(shoald, "upd-cont").get("State") == "completed", 60, what="completed")
    assert running_images(shoald, "upd-cont") == []
    wait_for(lambda: replicas(shoald, "upd-cont") == "0/3", 20, what="0/3")


def scenario_start_first(shoald) -> None:
    """start-first: the failing new task never takes its old task down."""
    shoald.docker("service", "create", "-d", "--name", "upd-sf", "--replicas", "3", "--update-order",
                  "start-first", "--update-monitor", "3s", WEB)
    wait_for(lambda: running_images(shoald, "upd-sf") == [WEB] * 3, 60, what="3 running")
    shoald.docker("service", "update", "-d", "--image", BAD, "upd-sf")
    wait_for(lambda: update_status(shoald, "upd-sf").get("State") == "paused", 60, what="paused")
    assert running_images(shoald, "upd-sf") == [WEB] * 3
    assert replicas(shoald, "upd-sf") == "3/3"


def scenario_manual_rollback(shoald) -> None:
    """`docker service rollback` follows RollbackConfig (here all at once) and prints Docker's messages."""
    shoald.docker("service", "create", "-d", "--name", "upd-man", "--replicas", "2", "--update-monitor", "1s",
                  "--rollback-parallelism", "0", "--rollback-monitor", "1s", WEB)
    wait_for(lambda: running_images(shoald, "upd-man") == [WEB] * 2, 60, what="2 running")
    shoald.docker("service", "update", "--env-add", "V=2", "upd-man")
    assert update_status(shoald, "upd-man")["State"] == "completed"
    cp = shoald.docker("service", "rollback", "upd-man")
    lines = progress_lines(cp.stdout)
    assert "rollback: manually requested rollback" in lines, lines
    assert "overall progress: rolling back update: 2 out of 2 tasks" in lines, lines
    assert lines[-1] == "verify: Service upd-man converged", lines
    wait_for(lambda: update_status(shoald, "upd-man").get("Message") == "rollback completed", 10, what="completed")
    assert update_status(shoald, "upd-man")["State"] == "rollback_completed"
    svc = inspect(shoald, "upd-man")
    assert "V=2" not in (svc["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or [])
    assert svc["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["V=2"]


@pytest.mark.field("ServiceSpec.UpdateConfig.FailureAction", "ServiceSpec.UpdateConfig.Monitor",
                   "ServiceSpec.UpdateConfig.Order", "ServiceSpec.RollbackConfig.Monitor",
                   "ServiceSpec.RollbackConfig.Parallelism", how="honoured")
def test_failing_updates_and_rollbacks(shoald):
    scenarios = (scenario_pause, scenario_rollback, scenario_continue, scenario_start_first, scenario_manual_rollback)
    with ThreadPoolExecutor(len(scenarios)) as pool:
        for f in [pool.submit(s, shoald) for s in scenarios]:
            f.result()


@pytest.mark.field("ServiceSpec.Mode.ReplicatedJob.MaxConcurrent", "ServiceSpec.Mode.ReplicatedJob.TotalCompletions",
                   how="honoured")
def test_replicated_job_runs_to_completion_and_again_on_force(shoald):
    cp = shoald.docker("service", "create", "--name", "job3", "--mode", "replicated-job", "--replicas", "3",
                       "--max-concurrent", "2", BUSYBOX, "sh", "-c", "echo done", timeout=90)
    lines = progress_lines(cp.stdout)  # (without a terminal the CLI leaves out its bars)
    assert lines[-2:] == ["active tasks: 0 out of 0 tasks", "job complete"], lines
    active = [line for line in lines if line.startswith("active tasks: ")]
    assert "active tasks: 2 out of 2 tasks" in active and all(" 3 out of" not in a for a in active), lines
    assert replicas(shoald, "job3") == "0/2 (3/3 completed)"
    rows = ps(shoald, "job3")
    assert len(rows) == 3 and all(r["CurrentState"].startswith("Complete") for r in rows), rows
    assert all(r["DesiredState"] == "Complete" for r in rows), rows
    svc = inspect(shoald, "job3")
    assert svc["JobStatus"]["JobIteration"] == {}  # Index 0, left out by the CLI's encoding
    assert svc["Spec"]["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 3}}

    shoald.docker("service", "update", "--force", "job3", timeout=90)
    assert inspect(shoald, "job3")["JobStatus"]["JobIteration"] == {"Index": 1}
    rows = ps(shoald, "job3")
    assert len(rows) == 6 and all(r["CurrentState"].startswith("Complete") for r in rows), rows
    assert replicas(shoald, "job3") == "0/2 (3/3 completed)"


@pytest.mark.field("ServiceSpec.Mode.GlobalJob", how="honoured")
def test_failed_job_task_is_retried_and_global_job_runs_once_per_node(shoald):
    shoald.docker("service", "create", "-d", "--name", "flaky", "--mode", "replicated-job", "--restart-delay", "1s",
                  "--restart-max-attempts", "2", BUSYBOX, "sh", "-c", "exit 3")
    cp = shoald.docker("service", "create", "--name", "gjob", "--mode", "global-job", BUSYBOX, "true", timeout=90)
    assert progress_lines(cp.stdout)[-1] == "job complete", cp.stdout
    assert replicas(shoald, "gjob") == "0/0 (1/1 completed)"
    assert [r["CurrentState"].split()[0] for r in ps(shoald, "gjob")] == ["Complete"]
    # the first try and two restarts, then the slot keeps its failed task
    wait_for(lambda: [r["CurrentState"].split()[0] for r in ps(shoald, "flaky")] == ["Failed"] * 3, 90,
             what="three failed tries")
    rows = ps(shoald, "flaky")
    assert all("task: non-zero exit (3)" in r["Error"] for r in rows), rows
    assert replicas(shoald, "flaky") == "0/1 (0/1 completed)"
