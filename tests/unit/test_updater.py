"""Rolling updates, rollbacks and jobs on virtual time: the real orchestrators (replicated, global, jobs) on
a MemoryStore, passes run by hand, and a simulated agent that moves every task one step per pass (an image
named ``bad/...`` is rejected as Docker's agent does when the pull fails; ``slow/...`` stays ``starting``
until the test lets it be healthy; ``crash/...`` fails once running). The clock only moves when the test moves it."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import pytest
from fakeclock import FakeClock
from test_control_plane import make_cluster, make_node

from shoal.manager.orchestrator.global_ import GlobalOrchestrator
from shoal.manager.orchestrator.jobs import JobOrchestrator
from shoal.manager.orchestrator.reaper import TaskReaper
from shoal.manager.orchestrator.replicated import ReplicatedOrchestrator
from shoal.model import states
from shoal.model.ids import new_id, now
from shoal.model.service import SECOND, validate_spec
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects

GOOD, NEWER, BAD, SLOW = "shoal/demo-web:latest", "shoal/demo-web:2", "bad/nope:1", "slow/web:1"
NO_IMAGE = "No such image: bad/nope:1"


class Sim:
    """One manager's orchestrators and every node's agent, stepped by hand on a FakeClock."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = MemoryStore()
        self.objs = Objects(self.store)
        self.nodes: list[str] = []
        self.exits: dict[str, int] = {}  # task id -> exit code to end with at the next step
        self.healthy: set[str] = set()  # slow/... tasks allowed to become healthy
        self.job_runs: dict[str, int] = {}  # a job task's steps spent running before it exits 0
        self.rewritten: list[str] = []  # services the updater stored through write_service (rollbacks)
        self.orchestrators = [ReplicatedOrchestrator(self.objs, self._write_service, clock=self.clock),
                              GlobalOrchestrator(self.objs, clock=self.clock),
                              JobOrchestrator(self.objs, clock=self.clock), TaskReaper(self.objs)]
        self._rr = itertools.count()

    async def _write_service(self, svc: dict) -> None:
        """What the allocator's update_service does once the endpoint is allocated."""
        self.rewritten.append(svc["ID"])
        await self.objs.update("services", svc)

    async def start(self, nodes: int = 3) -> None:
        await self.objs.start()
        await self.objs.create("clusters", make_cluster())
        for _ in range(nodes):
            await self.add_node()

    async def add_node(self) -> str:
        node = make_node(len(self.nodes) + 1, role="manager" if not self.nodes else "worker")
        await self.objs.create("nodes", node)
        self.nodes.append(node["ID"])
        return node["ID"]

    async def stop(self) -> None:
        await self.objs.stop()
        await self.store.close()

    # -- the service API, as the control API does it -----------------------------------------------
    async def create(self, name: str, replicas: int = 3, image: str = GOOD, *, update: dict | None = None,
                     rollback: dict | None = None, mode: dict | None = None, restart: dict | None = None) -> str:
        spec: dict = {"Name": name, "TaskTemplate": {
            "ContainerSpec": {"Image": image},
            "RestartPolicy": {"Condition": "any", "Delay": SECOND, **(restart or {})}},
            "Mode": mode or {"Replicated": {"Replicas": replicas}}}
        # as the docker CLI sends them (a Parallelism left out is 0: all at once)
        if update is not None:
            spec["UpdateConfig"] = {"Parallelism": 1, **update}
        if rollback is not None:
            spec["RollbackConfig"] = {"Parallelism": 1, **rollback}
        spec = validate_spec(spec)
        ts = now()
        svc = {"ID": new_id(), "CreatedAt": ts, "UpdatedAt": ts, "Spec": spec, "Endpoint": {"Spec": {"Mode": "vip"}}}
        if "ReplicatedJob" in spec["Mode"] or "GlobalJob" in spec["Mode"]:
            svc["JobStatus"] = {"JobIteration": {"Index": 0}, "LastExecution": ts}
        await self.objs.create("services", svc)
        return svc["ID"]

    async def update(self, sid: str, edit: Callable[[dict], None], rollback: bool = False) -> None:
        svc = copy.deepcopy(self.objs.get("services", sid))
        spec = copy.deepcopy(svc["PreviousSpec"] if rollback else svc["Spec"])
        edit(spec)
        svc["PreviousSpec"], svc["Spec"] = svc["Spec"], validate_spec(spec)
        svc.pop("UpdateStatus", None)
        if rollback:
            svc["UpdateStatus"] = {"State": "rollback_started", "StartedAt": now(),
                                   "Message": "manually requested rollback"}
        if svc.get("JobStatus"):
            svc["JobStatus"] = {"JobIteration": {"Index": svc["JobStatus"]["JobIteration"]["Index"] + 1},
                                "LastExecution": now()}
        await self.objs.update("services", svc)

    async def set_image(self, sid: str, image: str) -> None:
        def edit(spec: dict) -> None:
            spec["TaskTemplate"]["ContainerSpec"]["Image"] = image

        await self.update(sid, edit)

    # -- time passes ------------------------------------------------------------------------------
    async def step(self, dt: float = 0.1) -> None:
        """One pass of every orchestrator, one step of every agent, then ``dt`` virtual seconds."""
        for o in self.orchestrators:
            await o.reconcile(None)
        for t in self.objs.list("tasks"):
            await self._agent(t)
        self.clock.t += dt

    async def run(self, seconds: float, dt: float = 0.1) -> None:
        for _ in range(round(seconds / dt)):
            await self.step(dt)

    async def until(self, pred: Callable[[], bool], what: str, timeout: float = 60, dt: float = 0.1) -> None:
        start = self.clock.t
        while not pred():
            if self.clock.t - start > timeout:
                raise AssertionError(f"not within {timeout} s (virtual): {what}\n{self.dump()}")
            await self.step(dt)

    async def _agent(self, t: dict) -> None:
        state, desired = t["Status"]["State"], t["DesiredState"]
        if states.terminal(state):
            return
        t = copy.deepcopy(t)
        image = t["Spec"]["ContainerSpec"]["Image"]
        if not t.get("NodeID"):
            t["NodeID"] = self.nodes[next(self._rr) % len(self.nodes)]
        new = state
        if not states.before(desired, states.SHUTDOWN):
            new = states.SHUTDOWN
        elif states.before(state, states.READY):
            new = states.READY
            if image.startswith("bad/"):
                new, t["Status"]["Err"] = states.REJECTED, f"No such image: {image}"
        elif desired in (states.RUNNING, states.COMPLETE) and states.before(state, states.RUNNING):
            slow = image.startswith("slow/") and t["ID"] not in self.healthy
            new = states.STARTING if slow else states.RUNNING
        elif state == states.RUNNING:
            code = self.exits.pop(t["ID"], None)
            if code is None and image.startswith("crash/"):
                code = 1
            if code is None and desired == states.COMPLETE:
                self.job_runs[t["ID"]] = self.job_runs.get(t["ID"], 0) + 1
                code = 0 if self.job_runs[t["ID"]] >= 3 else None
            if code is not None:
                new = states.COMPLETE if code == 0 else states.FAILED
        if new == state and t.get("NodeID") == self.objs.get("tasks", t["ID"]).get("NodeID"):
            return
        t["Status"]["State"] = new
        await self.objs.update("tasks", t)

    # -- reading ------------------------------------------------------------------------------------
    def svc(self, sid: str) -> dict:
        return self.objs.get("services", sid)

    def status(self, sid: str) -> tuple[str, str]:
        st = self.svc(sid).get("UpdateStatus") or {}
        return st.get("State", ""), st.get("Message", "")

    def tasks(self, sid: str) -> list[dict]:
        return sorted(self.objs.tasks_of_service(sid), key=lambda t: (t["Slot"], t["CreatedAt"]))

    def running(self, sid: str, image: str | None = None) -> list[dict]:
        return [t for t in self.tasks(sid) if t["Status"]["State"] == states.RUNNING
                and (image is None or t["Spec"]["ContainerSpec"]["Image"] == image)]

    def images(self, sid: str) -> list[str]:
        return [t["Spec"]["ContainerSpec"]["Image"] for t in self.tasks(sid)]

    def dump(self) -> str:
        return "\n".join(f"  {t['ID'][:6]} slot={t['Slot']} desired={t['DesiredState']} "
                         f"state={t['Status']['State']} image={t['Spec']['ContainerSpec']['Image']}"
                         for t in sorted(self.objs.list("tasks"), key=lambda t: (t["Slot"], t["CreatedAt"])))


async def started(nodes: int = 3) -> Sim:
    sim = Sim()
    await sim.start(nodes)
    return sim


async def service_of_three(sim: Sim, **kw: dict) -> str:
    sid = await sim.create("web", 3, **kw)
    await sim.until(lambda: len(sim.running(sid)) == 3, "3 running")
    return sid


# ---- failure actions ---------------------------------------------------------------------------

async def test_a_bad_image_pauses_the_update_and_the_other_tasks_keep_running() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Monitor": 3 * SECOND})
    await sim.set_image(sid, BAD)
    await sim.until(lambda: sim.status(sid)[0] == "paused", "paused")
    rejected = [t for t in sim.tasks(sid) if t["Status"]["State"] == states.REJECTED]
    assert sim.status(sid)[1] == f"update paused due to failure or early termination of task {rejected[0]['ID']}"
    await sim.run(20)
    assert len(sim.running(sid, GOOD)) == 2  # the others were never touched
    assert {t["Slot"] for t in sim.tasks(sid) if t["Spec"]["ContainerSpec"]["Image"] == BAD} == {rejected[0]["Slot"]}
    assert sim.status(sid)[0] == "paused"
    await sim.stop()


async def test_failure_action_rollback_brings_every_slot_back_to_the_previous_spec() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Monitor": 3 * SECOND, "FailureAction": "rollback"})
    states_seen: list[str] = []
    await sim.set_image(sid, BAD)
    while sim.status(sid)[0] != "rollback_completed":
        if not states_seen or states_seen[-1] != sim.status(sid)[0]:
            states_seen.append(sim.status(sid)[0])
        assert sim.clock.t < 60, sim.dump()
        await sim.step()
    assert states_seen == ["", "updating", "rollback_started"]
    assert sim.rewritten == [sid]  # through the allocator
    assert sim.status(sid)[1] == "rollback completed"
    assert len(sim.running(sid, GOOD)) == 3 and not sim.running(sid, BAD)
    svc = sim.svc(sid)
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == GOOD and "PreviousSpec" not in svc
    assert svc["UpdateStatus"]["CompletedAt"] >= svc["UpdateStatus"]["StartedAt"]
    await sim.stop()


async def test_rollback_message_names_the_failed_task() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Monitor": 3 * SECOND, "FailureAction": "rollback"})
    await sim.set_image(sid, BAD)
    await sim.until(lambda: sim.status(sid)[0] == "rollback_started", "rollback started")
    rejected = [t for t in sim.tasks(sid) if t["Status"]["State"] == states.REJECTED][0]
    assert sim.status(sid)[1] == f"update rolled back due to failure or early termination of task {rejected['ID']}"
    await sim.stop()


async def test_failure_action_continue_replaces_every_slot() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Monitor": 2 * SECOND, "FailureAction": "continue"})
    await sim.set_image(sid, BAD)
    await sim.until(lambda: sim.status(sid)[0] == "completed", "completed")
    assert not sim.running(sid, GOOD)
    assert {t["Slot"] for t in sim.tasks(sid) if t["Status"]["State"] == states.REJECTED} == {1, 2, 3}
    await sim.stop()


@pytest.mark.field("ServiceSpec.UpdateConfig.MaxFailureRatio", how="honoured")
async def test_max_failure_ratio_tolerates_that_share_of_failed_slots() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Monitor": 2 * SECOND, "MaxFailureRatio": 0.4})
    await sim.set_image(sid, BAD)
    await sim.until(lambda: sim.status(sid)[0] == "paused", "paused")
    # 1 of 3 failed is within 0.4; the second is not
    bad_slots = {t["Slot"] for t in sim.tasks(sid) if t["Spec"]["ContainerSpec"]["Image"] == BAD}
    assert len(bad_slots) == 2 and len(sim.running(sid, GOOD)) == 1
    await sim.stop()


async def test_start_first_a_failing_new_task_never_takes_its_old_task_down() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Order": "start-first", "Monitor": 2 * SECOND})
    await sim.set_image(sid, BAD)
    low = 3
    while sim.status(sid)[0] != "paused":
        low = min(low, len(sim.running(sid, GOOD)))
        assert sim.clock.t < 30, sim.dump()
        await sim.step()
    await sim.run(10)
    assert low == 3 and len(sim.running(sid, GOOD)) == 3
    await sim.stop()


async def test_start_first_starts_the_new_task_before_stopping_the_old() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Order": "start-first", "Monitor": SECOND})
    await sim.set_image(sid, NEWER)
    most = 0
    while sim.status(sid)[0] != "completed":
        most = max(most, len(sim.running(sid)))
        assert len(sim.running(sid)) >= 3, sim.dump()  # the old task runs until its new one does
        assert sim.clock.t < 30, sim.dump()
        await sim.step()
    assert most == 4 and len(sim.running(sid, NEWER)) == 3
    await sim.stop()


# ---- pace: Parallelism, Delay, Monitor, health --------------------------------------------------

@pytest.mark.field("ServiceSpec.UpdateConfig.Parallelism", how="honoured")
async def test_parallelism_zero_replaces_every_slot_at_once() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Parallelism": 0, "Monitor": SECOND})
    await sim.set_image(sid, NEWER)
    await sim.step()
    assert sim.images(sid).count(NEWER) == 3
    await sim.until(lambda: sim.status(sid)[0] == "completed", "completed")
    await sim.stop()


@pytest.mark.field("ServiceSpec.UpdateConfig.Delay", "ServiceSpec.UpdateConfig.Monitor", how="honoured")
async def test_delay_waits_between_slots_and_monitor_before_completing() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Delay": 4 * SECOND, "Monitor": 2 * SECOND})
    await sim.set_image(sid, NEWER)
    made: dict[str, float] = {}
    done_at = 0.0
    while sim.status(sid)[0] != "completed":
        for t in sim.tasks(sid):
            made.setdefault(t["ID"], sim.clock.t)
        if sim.running(sid, NEWER) and len(sim.running(sid, NEWER)) == 3 and not done_at:
            done_at = sim.clock.t
        assert sim.clock.t < 60, sim.dump()
        await sim.step()
    new = sorted(v for k, v in made.items() if sim.objs.get("tasks", k)["Spec"]["ContainerSpec"]["Image"] == NEWER)
    assert len(new) == 3 and new[1] - new[0] >= 4 and new[2] - new[1] >= 4
    # Delay >= Monitor: swarmkit monitors Delay + 1 s after the last slot's delay
    assert sim.clock.t - done_at >= 4 + 5 - 0.5
    await sim.stop()


async def test_a_task_failing_within_monitor_is_a_failure_and_after_it_is_not() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Monitor": 3 * SECOND, "Delay": 10 * SECOND})
    await sim.set_image(sid, NEWER)
    await sim.until(lambda: len(sim.running(sid, NEWER)) == 1, "first new task runs")
    await sim.run(4)  # past Monitor: its failure no longer counts
    first = sim.running(sid, NEWER)[0]
    sim.exits[first["ID"]] = 1
    await sim.until(lambda: len(sim.running(sid, NEWER)) == 2, "second new task runs", timeout=30)
    assert sim.status(sid)[0] == "updating"
    second = [t for t in sim.running(sid, NEWER) if t["Slot"] != first["Slot"]][0]
    await sim.run(1)
    sim.exits[second["ID"]] = 1
    await sim.until(lambda: sim.status(sid)[0] == "paused", "paused")
    assert sim.status(sid)[1].endswith(second["ID"])
    await sim.stop()


async def test_a_task_counts_as_updated_once_healthy() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Monitor": SECOND})
    await sim.set_image(sid, SLOW)
    await sim.run(10)
    slow = [t for t in sim.tasks(sid) if t["Spec"]["ContainerSpec"]["Image"] == SLOW]
    assert len(slow) == 1 and slow[0]["Status"]["State"] == states.STARTING  # the next slot waits
    sim.healthy.add(slow[0]["ID"])
    await sim.until(lambda: len([t for t in sim.tasks(sid) if t["Spec"]["ContainerSpec"]["Image"] == SLOW]) == 2,
                    "the next slot")
    await sim.stop()


# ---- rollback ------------------------------------------------------------------------------------

@pytest.mark.field("ServiceSpec.RollbackConfig.Parallelism", "ServiceSpec.RollbackConfig.Monitor", how="honoured")
async def test_manual_rollback_uses_the_rollback_config() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Monitor": SECOND}, rollback={"Parallelism": 0, "Monitor": SECOND})
    await sim.set_image(sid, NEWER)
    await sim.until(lambda: sim.status(sid)[0] == "completed", "completed")
    await sim.update(sid, lambda spec: None, rollback=True)
    await sim.step()
    assert sum(1 for t in sim.tasks(sid) if t["Spec"]["ContainerSpec"]["Image"] == GOOD
               and t["DesiredState"] != states.SHUTDOWN) == 3  # all at once
    await sim.until(lambda: sim.status(sid)[0] == "rollback_completed", "rollback completed")
    assert sim.status(sid)[1] == "rollback completed" and len(sim.running(sid, GOOD)) == 3
    await sim.stop()


@pytest.mark.field("ServiceSpec.RollbackConfig.FailureAction", how="honoured")
@pytest.mark.parametrize(("action", "said"), [("pause", "update paused"), ("rollback", "rollback paused")])
async def test_a_failing_rollback_pauses_whatever_its_failure_action(action: str, said: str) -> None:
    sim = await started()
    sid = await sim.create("web", 3, image=BAD, update={"Monitor": SECOND, "FailureAction": "continue"},
                           rollback={"Monitor": SECOND, "FailureAction": action})
    await sim.run(3)  # its tasks are rejected
    await sim.set_image(sid, GOOD)
    await sim.until(lambda: sim.status(sid)[0] == "completed", "completed")
    await sim.update(sid, lambda spec: None, rollback=True)  # back to the bad image
    await sim.until(lambda: sim.status(sid)[0] == "rollback_paused", "rollback paused")
    assert sim.status(sid)[1].startswith(f"{said} due to failure or early termination of task ")
    assert len(sim.running(sid, GOOD)) == 2
    await sim.stop()


async def rolled_back_to_good(sim: Sim, rollback: dict) -> str:
    """A service of three updated to NEWER, then rolled back (to GOOD) by hand with ``rollback``."""
    sid = await service_of_three(sim, update={"Parallelism": 0, "Monitor": SECOND}, rollback=rollback)
    await sim.set_image(sid, NEWER)
    await sim.until(lambda: sim.status(sid)[0] == "completed", "completed")
    await sim.update(sid, lambda spec: None, rollback=True)
    return sid


@pytest.mark.field("ServiceSpec.RollbackConfig.Delay", how="honoured")
async def test_rollback_waits_its_own_delay_between_slots() -> None:
    sim = await started()
    sid = await rolled_back_to_good(sim, {"Delay": 4 * SECOND, "Monitor": SECOND})
    made: dict[str, float] = {}
    while sim.status(sid)[0] != "rollback_completed":
        for t in sim.tasks(sid):
            made.setdefault(t["ID"], sim.clock.t)
        assert sim.clock.t < 60, sim.dump()
        await sim.step()
    back = sorted(v for k, v in made.items()
                  if sim.objs.get("tasks", k)["Spec"]["ContainerSpec"]["Image"] == GOOD and v > 0)
    back = back[-3:]  # the tasks the rollback made
    assert back[1] - back[0] >= 4 and back[2] - back[1] >= 4, back
    await sim.stop()


@pytest.mark.field("ServiceSpec.RollbackConfig.Order", how="honoured")
async def test_rollback_start_first_keeps_every_slot_running() -> None:
    sim = await started()
    sid = await rolled_back_to_good(sim, {"Order": "start-first", "Monitor": SECOND})
    most = 0
    while sim.status(sid)[0] != "rollback_completed":
        most = max(most, len(sim.running(sid)))
        assert len(sim.running(sid)) >= 3, sim.dump()  # the NEWER task runs until its GOOD one does
        assert sim.clock.t < 30, sim.dump()
        await sim.step()
    assert most == 4 and len(sim.running(sid, GOOD)) == 3
    await sim.stop()


@pytest.mark.field("ServiceSpec.RollbackConfig.MaxFailureRatio", how="honoured")
@pytest.mark.parametrize(("ratio", "paused"), [(0, True), (0.5, False)])
async def test_rollback_tolerates_its_own_max_failure_ratio(ratio: float, paused: bool) -> None:
    """A rollback to an image that fails on one of three slots: paused at ratio 0, completed at 0.5."""
    sim = await started()
    sid = await service_of_three(sim, update={"Parallelism": 0, "Monitor": SECOND},
                                 rollback={"Monitor": 2 * SECOND, "MaxFailureRatio": ratio,
                                           "FailureAction": "pause"})
    await sim.set_image(sid, NEWER)
    await sim.until(lambda: sim.status(sid)[0] == "completed", "completed")
    await sim.update(sid, lambda spec: None, rollback=True)
    await sim.until(lambda: any(t["Spec"]["ContainerSpec"]["Image"] == GOOD and t["DesiredState"] == states.RUNNING
                                for t in sim.tasks(sid) if t["Status"]["State"] == states.RUNNING), "one back")
    first = next(t for t in sim.running(sid, GOOD))
    sim.exits[first["ID"]] = 1  # fails within the rollback's Monitor
    want = "rollback_paused" if paused else "rollback_completed"
    await sim.until(lambda: sim.status(sid)[0] in ("rollback_paused", "rollback_completed"), "the rollback ends")
    assert sim.status(sid)[0] == want, sim.status(sid)
    await sim.stop()


async def test_a_new_update_after_a_pause_goes_on() -> None:
    sim = await started()
    sid = await service_of_three(sim, update={"Monitor": SECOND})
    await sim.set_image(sid, BAD)
    await sim.until(lambda: sim.status(sid)[0] == "paused", "paused")
    await sim.set_image(sid, NEWER)
    await sim.until(lambda: sim.status(sid)[0] == "completed", "completed")
    assert len(sim.running(sid, NEWER)) == 3
    await sim.stop()


# ---- jobs ------------------------------------------------------------------------------------------

def live_job_tasks(sim: Sim, sid: str) -> int:
    return sum(1 for t in sim.tasks(sid) if t["DesiredState"] == states.COMPLETE
               and t["Status"]["State"] != states.COMPLETE)


async def test_replicated_job_completes_total_tasks_at_most_max_concurrent_at_once() -> None:
    sim = await started()
    sid = await sim.create("job", mode={"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 3}})
    most = 0
    while sum(t["Status"]["State"] == states.COMPLETE for t in sim.tasks(sid)) < 3:
        most = max(most, live_job_tasks(sim, sid))
        assert sim.clock.t < 30, sim.dump()
        await sim.step()
    await sim.run(5)
    tasks = sim.tasks(sid)
    assert most == 2 and len(tasks) == 3 and sorted(t["Slot"] for t in tasks) == [0, 1, 2]
    assert all(t["JobIteration"] == {"Index": 0} and t["DesiredState"] == states.COMPLETE for t in tasks)
    await sim.stop()


async def test_a_failed_job_task_is_retried_and_condition_none_is_not() -> None:
    sim = await started()
    sid = await sim.create("job", mode={"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}})
    await sim.until(lambda: any(t["Status"]["State"] == states.RUNNING for t in sim.tasks(sid)), "running")
    sim.exits[sim.tasks(sid)[0]["ID"]] = 1
    await sim.until(lambda: any(t["Status"]["State"] == states.COMPLETE for t in sim.tasks(sid)), "complete")
    assert [t["Status"]["State"] for t in sim.tasks(sid)] == [states.FAILED, states.COMPLETE]

    once = await sim.create("once", mode={"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}},
                            restart={"Condition": "none"})
    await sim.until(lambda: any(t["Status"]["State"] == states.RUNNING for t in sim.tasks(once)), "running")
    sim.exits[sim.tasks(once)[0]["ID"]] = 1
    await sim.run(10)
    assert [t["Status"]["State"] for t in sim.tasks(once)] == [states.FAILED]
    await sim.stop()


async def test_an_update_of_a_job_runs_it_again() -> None:
    sim = await started()
    sid = await sim.create("job", mode={"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 2}})
    await sim.until(lambda: sum(t["Status"]["State"] == states.COMPLETE for t in sim.tasks(sid)) == 2, "done")

    def force(spec: dict) -> None:
        spec["TaskTemplate"]["ForceUpdate"] = 1

    await sim.update(sid, force)
    await sim.until(lambda: sum(t["Status"]["State"] == states.COMPLETE for t in sim.tasks(sid)) == 4, "again")
    assert sorted(t["JobIteration"]["Index"] for t in sim.tasks(sid)) == [0, 0, 1, 1]
    await sim.stop()


async def test_global_job_runs_once_on_every_node_and_on_nodes_that_join() -> None:
    sim = await started(2)
    sid = await sim.create("gjob", mode={"GlobalJob": {}})
    await sim.until(lambda: sum(t["Status"]["State"] == states.COMPLETE for t in sim.tasks(sid)) == 2, "done")
    await sim.run(5)
    assert len(sim.tasks(sid)) == 2
    late = await sim.add_node()
    await sim.until(lambda: sum(t["Status"]["State"] == states.COMPLETE for t in sim.tasks(sid)) == 3, "late node")
    assert sorted(t["NodeID"] for t in sim.tasks(sid)) == sorted(sim.nodes) and late in sim.nodes
    await sim.stop()


async def test_a_replicated_jobs_slot_keeps_the_task_history_retention_limit() -> None:
    sim = await started()
    sid = await sim.create("crashy", image="crash/job:1", mode={"ReplicatedJob": {}})
    await sim.run(30)  # a try every restart delay (1 s), on one node after the other
    tasks = sim.tasks(sid)
    assert {t["Slot"] for t in tasks} == {0} and len({t["NodeID"] for t in tasks}) == 3
    assert len(tasks) == 5  # the cluster's TaskHistoryRetentionLimit, for the slot (not per node)
    await sim.stop()

