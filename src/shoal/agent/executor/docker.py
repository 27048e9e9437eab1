"""Run tasks as containers on the local Docker Engine (aiodocker).

Containers are named ``<service>.<slot>.<taskid>`` (global: ``<service>.<nodeid>.<taskid>``) and carry
the ``com.docker.swarm.*`` labels Docker's own executor sets, so existing tools recognise them and a
restarted agent finds them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from shoal.model import labels
from shoal.model.service import DEFAULT_STOP_GRACE
from shoal.model.task import task_name

log = logging.getLogger(__name__)
# what a call to an engine that is down or restarting raises (aiodocker reports a refused connection as a
# DockerError with status 900)
ENGINE_ERRORS = (DockerError, aiohttp.ClientError, OSError, asyncio.TimeoutError)

class ExecutorError(Exception):
    """The engine refused; ``message`` is the engine's own text."""


def _mount(m: dict) -> dict:
    out: dict[str, Any] = {"Type": m["Type"], "Target": m["Target"]}
    for key in ("Source", "ReadOnly", "Consistency", "BindOptions", "VolumeOptions", "TmpfsOptions"):
        if m.get(key) not in (None, "", {}):
            out[key] = m[key]
    return out


def security_options(privileges: dict | None) -> list[str]:
    """``HostConfig.SecurityOpt`` for a ContainerSpec's Privileges, as Docker's executor words them (the API
    refuses what the engines here cannot do: AppArmor, SELinux labels, credential specs)."""
    priv = privileges or {}
    out = []
    seccomp = priv.get("Seccomp") or {}
    if seccomp.get("Mode") == "unconfined":
        out.append("seccomp=unconfined")
    elif seccomp.get("Mode") == "custom":
        out.append(f"seccomp={seccomp.get('Profile') or ''}")
    if priv.get("NoNewPrivileges"):
        out.append("no-new-privileges=true")
    return out


def memory_reservation(resources: dict) -> int:
    """The container's soft memory limit: the task's reserved memory (never above its hard limit, which the
    engine would refuse)."""
    reserved = int((resources.get("Reservations") or {}).get("MemoryBytes") or 0)
    limit = int((resources.get("Limits") or {}).get("MemoryBytes") or 0)
    return min(reserved, limit) if limit else reserved


def generic_resource_env(assigned: list[dict] | None) -> list[str]:
    """``DOCKER_RESOURCE_<KIND>=v1,v2`` for the generic resources the scheduler gave the task (swarmkit's
    ``EnvFormat``: named values joined, a discrete count as its number)."""
    values: dict[str, list[str]] = {}
    for res in assigned or []:
        spec = res.get("NamedResourceSpec") or res.get("DiscreteResourceSpec") or {}
        values.setdefault(spec.get("Kind", ""), []).append(str(spec.get("Value", "")))
    return [f"DOCKER_RESOURCE_{kind.upper()}={','.join(v)}" for kind, v in values.items()]


def port_status(info: dict) -> dict:
    """The task's ``PortStatus``: the host ports its container is bound to, one entry per binding, as
    Docker's executor reports them (``docker service ps`` shows them)."""
    ports = []
    for key, bindings in ((info.get("NetworkSettings") or {}).get("Ports") or {}).items():
        port, _, proto = key.partition("/")
        for b in bindings or []:
            ports.append({"Protocol": proto or "tcp", "TargetPort": int(port), "PublishedPort": int(b["HostPort"]),
                          "PublishMode": "host"})
    return {"Ports": ports} if ports else {}


def container_config(task: dict, node_id: str, extra: dict | None = None) -> dict:
    """The Engine API create body for a task's ContainerSpec (its templates already expanded)."""
    spec = task.get("Spec") or {}
    cs = spec.get("ContainerSpec") or {}
    name = task_name(task)
    svc = task.get("ServiceAnnotations") or {}
    container_labels = dict(cs.get("Labels") or {})
    container_labels.update({
        labels.NODE_ID: node_id, labels.SERVICE_ID: task["ServiceID"], labels.SERVICE_NAME: svc.get("Name", ""),
        labels.TASK: "", labels.TASK_ID: task["ID"], labels.TASK_NAME: name,
    })
    res = spec.get("Resources") or {}
    limits = res.get("Limits") or {}
    dns = cs.get("DNSConfig") or {}
    log_driver = spec.get("LogDriver")  # --log-driver/--log-opt (else the engine's default)
    host: dict[str, Any] = {
        "Mounts": [_mount(m) for m in cs.get("Mounts") or []],
        "RestartPolicy": {"Name": "no"},
        "ReadonlyRootfs": bool(cs.get("ReadOnly")),
        "CapAdd": cs.get("CapabilityAdd"),
        "CapDrop": cs.get("CapabilityDrop"),
        "Sysctls": cs.get("Sysctls"),
        "Ulimits": cs.get("Ulimits"),
        "GroupAdd": cs.get("Groups"),
        "ExtraHosts": [_host_entry(h) for h in cs.get("Hosts") or []] or None,
        "Dns": dns.get("Nameservers"),
        "DnsSearch": dns.get("Search"),
        "DnsOptions": dns.get("Options"),
        "NanoCpus": limits.get("NanoCPUs") or 0,
        "Memory": limits.get("MemoryBytes") or 0,
        "MemoryReservation": memory_reservation(res) or None,
        "PidsLimit": limits.get("Pids") or None,
        "OomScoreAdj": cs.get("OomScoreAdj") or None,
        "SecurityOpt": security_options(cs.get("Privileges")) or None,
        "LogConfig": {"Type": log_driver.get("Name") or "", "Config": log_driver.get("Options") or {}}
        if log_driver else None,
        "Init": cs.get("Init"),
        "Isolation": "" if cs.get("Isolation") in (None, "default") else cs["Isolation"],
    }
    host_ports = [p for p in (task.get("Endpoint") or {}).get("Ports") or
                  ((task.get("Endpoint") or {}).get("Spec") or {}).get("Ports") or []
                  if p.get("PublishMode") == "host"]
    if host_ports:  # `--publish mode=host`: the engine binds the port on this node only
        host["PortBindings"] = {
            f"{p['TargetPort']}/{p.get('Protocol') or 'tcp'}": [{"HostPort": str(p.get("PublishedPort") or "")}]
            for p in host_ports}
    cfg: dict[str, Any] = {
        "ExposedPorts": {f"{p['TargetPort']}/{p.get('Protocol') or 'tcp'}": {} for p in host_ports},
        "Image": cs["Image"],
        "Labels": container_labels,
        "Env": (cs.get("Env") or []) + generic_resource_env(task.get("GenericResources")),
        "WorkingDir": cs.get("Dir") or "",
        "User": cs.get("User") or "",
        "Hostname": cs.get("Hostname") or "",
        "Tty": bool(cs.get("TTY")),
        "OpenStdin": bool(cs.get("OpenStdin")),
        "StopTimeout": int((cs.get("StopGracePeriod") or DEFAULT_STOP_GRACE) / 1e9),
        "HostConfig": {k: v for k, v in host.items() if v is not None},
    }
    if cs.get("Command"):
        cfg["Entrypoint"] = cs["Command"]
    if cs.get("Args"):
        cfg["Cmd"] = cs["Args"]
    if cs.get("StopSignal"):
        cfg["StopSignal"] = cs["StopSignal"]
    if cs.get("Healthcheck"):
        cfg["Healthcheck"] = cs["Healthcheck"]
    if extra:
        _merge(cfg, extra)
    return cfg


def _merge(cfg: dict, extra: dict) -> None:
    """Add ``extra`` (e.g. network settings) to a create body; its HostConfig keys go into HostConfig and
    its ``Dns`` servers come before the task's own."""
    for key, value in extra.items():
        if key != "HostConfig":
            cfg[key] = value
            continue
        host = cfg["HostConfig"]
        for hkey, hvalue in value.items():
            if hkey == "Dns":
                host["Dns"] = list(hvalue) + [d for d in host.get("Dns") or [] if d not in hvalue]
            elif hkey == "Mounts":  # secret and config files come after the task's own mounts
                host["Mounts"] = list(host.get("Mounts") or []) + list(hvalue)
            else:
                host[hkey] = hvalue


def _host_entry(h: str) -> str:
    """Swarm's ``IP host...`` form to Docker's ``host:IP``."""
    parts = h.split()
    if len(parts) >= 2:
        return f"{parts[1]}:{parts[0]}"
    return h


class DockerExecutor:
    """Container operations for the agent, plus a stream of container events."""

    def __init__(self, url: str = "unix:///var/run/docker.sock") -> None:
        self.url = url
        self.docker = aiodocker.Docker(url=url)
        self._events_task: asyncio.Task | None = None

    async def close(self) -> None:
        if self._events_task:
            self._events_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events_task
        await self.docker.close()

    async def info(self) -> dict:
        return await self.docker.system.info()

    async def version(self) -> dict:
        return await self.docker.version()

    def watch_events(self, node_id: str, callback: Callable[[str, str, dict], None]) -> None:
        """Call ``callback(task_id, action, event)`` for every container event of our tasks."""
        self._events_task = asyncio.create_task(self._events(node_id, callback), name="docker-events")

    async def _events(self, node_id: str, callback: Callable[[str, str, dict], None]) -> None:
        filters = {"type": ["container"], "label": [f"{labels.NODE_ID}={node_id}"]}
        while True:
            try:
                async with self.docker._query(
                    "events", method="GET", params={"filters": json.dumps(filters)},
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
                ) as resp:
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        try:
                            ev = json.loads(line)
                        except ValueError:
                            continue
                        attrs = (ev.get("Actor") or {}).get("Attributes") or {}
                        tid = attrs.get(labels.TASK_ID)
                        if tid:
                            callback(tid, ev.get("Action") or ev.get("status", ""), ev)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the engine went away: reconnect
                log.warning("docker events stream ended (%s); reconnecting", e)
                callback("", "reconnect", {})
                await asyncio.sleep(0.5)

    async def containers(self, node_id: str) -> dict[str, dict]:
        """Our containers by task ID (running or not)."""
        items = await self.docker.containers.list(
            all=True, filters={"label": [f"{labels.NODE_ID}={node_id}"]})
        out = {}
        for c in items:
            tid = (c._container.get("Labels") or {}).get(labels.TASK_ID)
            if tid:
                out[tid] = c._container
        return out

    async def image_present(self, image: str) -> bool:
        try:
            await self.docker.images.inspect(image)
            return True
        except DockerError:
            return False

    async def pull(self, image: str, registry_auth: str = "") -> None:
        """Pull ``image`` (``:latest`` when it names no tag), with the client's encoded credentials
        (``X-Registry-Auth``) when the service was created with them."""
        ref = image if (":" in image.rsplit("/", 1)[-1] or "@" in image) else f"{image}:latest"
        headers = {"X-Registry-Auth": registry_auth} if registry_auth else {}
        try:
            async with self.docker._query(
                "images/create", method="POST", params={"fromImage": ref}, headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
            ) as resp:
                async for line in resp.content:  # the progress stream ends with the error, if any
                    with contextlib.suppress(ValueError):
                        if isinstance(msg := json.loads(line), dict) and msg.get("error"):
                            raise ExecutorError(str(msg["error"]))
        except DockerError as e:
            raise ExecutorError(e.message) from None

    async def create(self, task: dict, node_id: str, extra: dict | None = None) -> str:
        cfg = container_config(task, node_id, extra)
        try:
            c = await self.docker.containers.create(cfg, name=task_name(task))
        except DockerError as e:
            if e.status == 409:  # created before a crash: adopt it
                info = await self.inspect(task_name(task))
                if info and (info["Config"]["Labels"] or {}).get(labels.TASK_ID) == task["ID"]:
                    return info["Id"]
            raise ExecutorError(e.message) from None
        return c.id

    async def start(self, cid: str) -> None:
        try:
            await self.docker.containers.container(cid).start()
        except DockerError as e:
            raise ExecutorError(e.message) from None

    async def inspect(self, cid: str) -> dict | None:
        try:
            return await self.docker.containers.container(cid).show()
        except DockerError as e:
            if e.status == 404:
                return None
            raise ExecutorError(e.message) from None

    async def stop(self, cid: str, grace: float) -> None:
        try:
            await self.docker.containers.container(cid).stop(t=int(grace))
        except DockerError as e:
            if e.status not in (304, 404):
                raise ExecutorError(e.message) from None

    async def remove(self, cid: str) -> None:
        try:
            await self.docker.containers.container(cid).delete(force=True, v=False)
        except DockerError as e:
            if e.status not in (404, 409):
                raise ExecutorError(e.message) from None

