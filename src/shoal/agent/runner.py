"""One task's life on this node: prepare, start, watch, stop — reporting every state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shoal.agent.executor.docker import DockerExecutor, ExecutorError, port_status
from shoal.agent.files import FilesError, TaskFiles
from shoal.model import states
from shoal.model.ids import now
from shoal.model.service import DEFAULT_STOP_GRACE
from shoal.model.task import REGISTRY_AUTH, task_name
from shoal.model.template import TemplateError, context, expand_container_spec
from shoal.network.agent import NetworkAgent, NetworkError

log = logging.getLogger(__name__)
UNBIND_DELAY = 1.0  # s between a networked task leaving the load balancers and its container's stop

Report = Callable[[str, dict], Awaitable[None]]


def expanded(task: dict, node: dict) -> dict:
    """The task with its ContainerSpec's templates expanded for this node (swarmkit's ExpandContainerSpec:
    ``node`` is the node's description, as it last described itself)."""
    spec = task.get("Spec") or {}
    cs = expand_container_spec(spec.get("ContainerSpec") or {}, context(task, node, task_name(task)))
    return {**task, "Spec": {**spec, "ContainerSpec": cs}}


class TaskRunner:
    """Drives one task toward its desired state. :meth:`poke` after the task or its container changed."""

    def __init__(self, task: dict, node_id: str, executor: DockerExecutor, report: Report,
                 container: dict | None = None, network: NetworkAgent | None = None,
                 files: TaskFiles | None = None, node: Callable[[], dict] | None = None) -> None:
        self.task = task
        self.node = node or dict  # this node's description (templates expand .Node.Hostname/.Platform)
        self.node_id = node_id
        self.ex = executor
        self.network = network  # None: containers get no swarm networks
        self.files = files  # None: secrets and configs are not delivered
        self._report = report
        self.cid: str | None = container["Id"] if container else None
        self.observed = task["Status"]["State"]
        self._wake = asyncio.Event()
        self._job: asyncio.Task | None = None

    def start(self) -> None:
        self._job = asyncio.create_task(self._run(), name=f"task-{self.task['ID']}")

    def update(self, task: dict) -> None:
        self.task = task
        if states.before(self.observed, task["Status"]["State"]):
            self.observed = task["Status"]["State"]
        self._wake.set()

    def poke(self) -> None:
        self._wake.set()

    async def cancel(self) -> None:
        if self._job:
            self._job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._job

    async def remove(self) -> None:
        """The task is gone from the store: remove its container."""
        await self.cancel()
        if self.cid:
            with contextlib.suppress(ExecutorError):
                await self.ex.remove(self.cid)
        if self.files is not None:
            self.files.release(self.task["ID"])

    async def report(self, state: str, message: str = "", err: str = "", exit_code: int | None = None,
                     pid: int = 0, ports: dict | None = None) -> None:
        status: dict = {"Timestamp": now(), "State": state, "Message": message or states.MESSAGES[state]}
        if err:
            status["Err"] = err
        if ports is not None or states.terminal(state):  # a stopped container publishes nothing
            status["PortStatus"] = ports or {}
        if self.cid:
            cs: dict = {"ContainerID": self.cid, "PID": pid}
            if exit_code is not None:
                cs["ExitCode"] = exit_code
            status["ContainerStatus"] = cs
        self.observed = state
        await self._report(self.task["ID"], status)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except ExecutorError as e:
                await self._fail(str(e))
            except Exception as e:
                log.exception("task %s", self.task["ID"])
                await self._fail(f"shoal: {e}")
            await self._wake.wait()

    async def _fail(self, err: str) -> None:
        """As swarmkit's agent: rejected before running, failed after, keeping the message of the state the
        error happened in (a task whose image is missing shows ``preparing`` with the engine's error)."""
        state = states.REJECTED if states.before(self.observed, states.RUNNING) else states.FAILED
        if not states.terminal(self.observed):
            await self.report(state, message=states.MESSAGES[self.observed], err=err)

    async def _step(self) -> None:
        desired = self.task["DesiredState"]
        if states.rank(desired) >= states.rank(states.SHUTDOWN):
            await self._shutdown()
            return
        if states.terminal(self.observed):
            return
        if states.before(self.observed, states.ACCEPTED):
            await self.report(states.ACCEPTED)
        if states.before(self.observed, states.READY) or self.cid is None:
            if self.cid is None:
                await self.report(states.PREPARING)
                self.cid = await self._prepare()
            await self.report(states.READY)
        if desired != states.RUNNING:
            return
        info = await self.ex.inspect(self.cid) if self.cid else None
        if info is None:
            await self.report(states.FAILED if self.observed == states.RUNNING else states.REJECTED,
                              err="task: container removed")
            return
        st = info["State"]
        if not st.get("Running") and states.before(self.observed, states.RUNNING):
            if st.get("StartedAt", "").startswith("0001") or not st.get("StartedAt"):
                await self.report(states.STARTING)
                self._files()  # (re)written: a restarted shoald starts with an empty tmpfs
                await self.ex.start(self.cid)
                info = await self.ex.inspect(self.cid)
                if info is None:
                    return
                st = info["State"]
        if st.get("Running"):
            health = (st.get("Health") or {}).get("Status")
            if health == "starting":
                if self.observed != states.STARTING:
                    await self.report(states.STARTING)
                asyncio.get_running_loop().call_later(0.5, self._wake.set)
                return
            if health == "unhealthy":
                await self.ex.stop(self.cid, 0)
                await self.report(states.FAILED, err="task: unhealthy container", exit_code=st.get("ExitCode"))
                return
            if self.observed != states.RUNNING:
                await self.report(states.RUNNING, pid=st.get("Pid", 0), ports=port_status(info))
            return
        # the container has exited
        code = st.get("ExitCode", 0)
        if code == 0 and not st.get("OOMKilled"):
            await self.report(states.COMPLETE, exit_code=0)
        else:
            err = st.get("Error") or f"task: non-zero exit ({code})"
            await self.report(states.FAILED, err=err, exit_code=code)

    async def _prepare(self) -> str:
        try:
            task = expanded(self.task, self.node())
        except TemplateError as e:
            raise ExecutorError(str(e)) from None
        image = task["Spec"]["ContainerSpec"]["Image"]
        if not await self.ex.image_present(image):
            try:
                await self.ex.pull(image, self.task.get(REGISTRY_AUTH) or "")
            except ExecutorError as e:  # as Docker: logged; the create below reports the missing image
                log.warning("task %s: pulling image %s failed: %s", self.task["ID"], image, e)
        mounts = self._files()
        if self.network is None:
            return await self.ex.create(task, self.node_id, {"HostConfig": {"Mounts": mounts}} if mounts else None)
        try:
            extra = await self.network.prepare_task(self.task)
        except NetworkError as e:
            raise ExecutorError(str(e)) from None
        if mounts:
            extra = {**(extra or {}), "HostConfig": {**(extra or {}).get("HostConfig", {}), "Mounts": mounts}}
        cid = await self.ex.create(task, self.node_id, extra)
        try:
            await self.network.connect_extra(self.task, cid)
        except NetworkError as e:
            with contextlib.suppress(ExecutorError):
                await self.ex.remove(cid)
            raise ExecutorError(str(e)) from None
        return cid

    def _files(self) -> list[dict]:
        """Write the task's secret and config files; their bind mounts for the container."""
        if self.files is None:
            return []
        try:
            return self.files.prepare(self.task)
        except (FilesError, OSError) as e:
            raise ExecutorError(str(e)) from None

    async def _shutdown(self) -> None:
        code = None
        if self.cid:
            info = await self.ex.inspect(self.cid)
            if info and info["State"].get("Running"):
                if self.task.get("ServiceID") and self.task.get("NetworksAttachments"):
                    # as Docker's executor (2 s gossip delay): the managers took the task out of every
                    # node's load balancer when its desired state changed; let that reach the nodes
                    # before its process stops, so no new connection is sent to a stopping task
                    await asyncio.sleep(UNBIND_DELAY)
                cs = self.task["Spec"].get("ContainerSpec") or {}
                grace = (cs.get("StopGracePeriod") or DEFAULT_STOP_GRACE) / 1e9
                await self.ex.stop(self.cid, grace)
                info = await self.ex.inspect(self.cid)
            if info:
                code = info["State"].get("ExitCode")
        if not states.terminal(self.observed):
            await self.report(states.SHUTDOWN, exit_code=code)
