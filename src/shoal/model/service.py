"""Service specs: validation (swarmkit's messages) and the defaults Docker fills in."""

from __future__ import annotations

import copy
import re

from shoal.model.constraint import validate as validate_constraints
from shoal.model.errors import BadRequest, InvalidArgument
from shoal.model.refusals import refuse_unsupported
from shoal.model.spec_fields import check_task_fields

SECOND = 1_000_000_000

# swarmkit api/defaults: what `insertDefaults=true` shows and what the orchestrators act on.
DEFAULT_RESTART = {"Condition": "any", "Delay": 5 * SECOND, "MaxAttempts": 0}
DEFAULT_UPDATE = {
    "Parallelism": 1, "FailureAction": "pause", "Monitor": 5 * SECOND, "MaxFailureRatio": 0,
    "Order": "stop-first",
}
DEFAULT_STOP_GRACE = 10 * SECOND

# The client's registry credentials (``X-Registry-Auth``, ``--with-registry-auth``), sealed, kept with the
# service for its spec and its previous spec (swarmkit keeps them in each spec's PullOptions) and copied
# to the tasks made from it; never shown by the API.
SEALED_AUTH = "SealedRegistryAuth"
PREVIOUS_SEALED_AUTH = "PreviousSealedRegistryAuth"
INTERNAL_SERVICE_FIELDS = (SEALED_AUTH, PREVIOUS_SEALED_AUTH)

_NAME_RE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-_.]{0,61}[a-zA-Z0-9])?")
_MOUNT_TYPES = {"bind", "volume", "tmpfs", "npipe", "cluster", "image"}
_RESTART_CONDITIONS = {"none", "on-failure", "any"}


def mode_of(spec: dict) -> str:
    """``replicated``, ``global``, ``replicated-job`` or ``global-job``."""
    mode = spec.get("Mode") or {}
    for key, name in (("Global", "global"), ("ReplicatedJob", "replicated-job"), ("GlobalJob", "global-job")):
        if mode.get(key) is not None:
            return name
    return "replicated"


def validate_spec(spec: dict) -> dict:
    """Check a ServiceSpec as Docker's daemon does; return it normalised (mode made explicit).

    ``spec`` is canonical (decoded as Docker decodes it: shoal.api.decode): known keys in Docker's
    spelling, values of the right JSON types. Fields shoal does not do are refused (model.refusals)."""
    spec = copy.deepcopy(spec)
    name = spec.get("Name") or ""
    if not name:
        raise InvalidArgument("meta: name must be provided")
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(f"name must be valid as a DNS name component: {name!r}")
    mode = spec.get("Mode") or {}
    if sum(mode.get(k) is not None for k in ("Replicated", "Global", "ReplicatedJob", "GlobalJob")) > 1:
        raise BadRequest("must specify only one service mode")
    if not any(mode.get(k) is not None for k in ("Global", "ReplicatedJob", "GlobalJob")):
        # no mode, or one Docker does not know (dropped when decoded): one replica, as Docker does
        replicas = (mode.get("Replicated") or {}).get("Replicas")
        mode = {"Replicated": {"Replicas": 1 if replicas is None else replicas}}
    elif mode.get("ReplicatedJob") is not None:
        mode["ReplicatedJob"] = _replicated_job(mode["ReplicatedJob"])
    spec["Mode"] = mode
    if mode_of(spec).endswith("-job") and spec.get("UpdateConfig") is not None:
        raise InvalidArgument("Jobs may not have an update config")

    tt = spec.get("TaskTemplate")
    if not tt:
        raise InvalidArgument("ContainerSpec: image reference must be provided")
    refuse_unsupported(spec)
    _validate_task_template(tt)
    for key in ("UpdateConfig", "RollbackConfig"):
        cfg = spec.get(key)
        if cfg is None:
            continue
        if (cfg.get("Delay") or 0) < 0:
            raise InvalidArgument("TaskSpec: update-delay cannot be negative")
        if (cfg.get("Monitor") or 0) < 0:
            raise InvalidArgument("TaskSpec: update-monitor cannot be negative")
        if not 0 <= (cfg.get("MaxFailureRatio") or 0) <= 1:
            raise InvalidArgument("TaskSpec: update-maxfailureratio cannot be less than 0 or bigger than 1")
        if cfg.get("FailureAction") not in (None, "", "pause", "continue", "rollback"):
            raise InvalidArgument(f"UpdateConfig: unrecognized failure action {cfg['FailureAction']!r}")
        if cfg.get("Order") not in (None, "", "stop-first", "start-first"):
            raise InvalidArgument(f"UpdateConfig: unrecognized order {cfg['Order']!r}")
    _validate_endpoint(spec.get("EndpointSpec"))
    docker_form(spec)
    return spec


def _replicated_job(job: dict) -> dict:
    """A ReplicatedJob as Docker's daemon stores it: MaxConcurrent defaults to 1, TotalCompletions to
    MaxConcurrent (the decoder has checked the types)."""
    concurrent = 1 if job.get("MaxConcurrent") is None else job["MaxConcurrent"]
    total = concurrent if job.get("TotalCompletions") is None else job["TotalCompletions"]
    return {"MaxConcurrent": concurrent, "TotalCompletions": total}


def docker_form(spec: dict) -> None:
    """What Docker's daemon stores for a spec (its conversion to swarmkit's types and back): enum fields
    left empty take their zero value, zero durations are dropped, the runtime is made explicit."""
    tt = spec.get("TaskTemplate") or {}
    if tt.get("ContainerSpec") is not None:
        tt.setdefault("Runtime", "container")
        tt["ContainerSpec"]["Isolation"] = tt["ContainerSpec"].get("Isolation") or "default"
    rp = tt.get("RestartPolicy")
    if isinstance(rp, dict):
        rp["Condition"] = rp.get("Condition") or "any"
        rp["MaxAttempts"] = rp.get("MaxAttempts") or 0
    for key in ("UpdateConfig", "RollbackConfig"):
        cfg = spec.get(key)
        if isinstance(cfg, dict):
            cfg["Parallelism"] = cfg.get("Parallelism") or 0
            cfg["FailureAction"] = cfg.get("FailureAction") or "pause"
            cfg["Order"] = cfg.get("Order") or "stop-first"
            cfg["MaxFailureRatio"] = cfg.get("MaxFailureRatio") or 0
            for dur in ("Delay", "Monitor"):
                if not cfg.get(dur):
                    cfg.pop(dur, None)
    ep = spec.get("EndpointSpec")
    if isinstance(ep, dict):
        ep["Mode"] = ep.get("Mode") or "vip"
        for p in ep.get("Ports") or []:
            p["Protocol"] = p.get("Protocol") or "tcp"
            p["PublishMode"] = p.get("PublishMode") or "ingress"


def _validate_task_template(tt: dict) -> None:
    cs = tt.get("ContainerSpec") or {}
    image = cs.get("Image") or ""
    if not image.strip():
        raise InvalidArgument("ContainerSpec: image reference must be provided")
    if any(c.isspace() for c in image):
        raise InvalidArgument(f"ContainerSpec: {image!r} is not a valid repository/tag")
    _validate_mounts(cs.get("Mounts") or [])
    restart = tt.get("RestartPolicy") or {}
    if restart.get("Condition") not in (None, "", *_RESTART_CONDITIONS):
        raise InvalidArgument(f"RestartPolicy: unrecognized condition {restart['Condition']!r}")
    if (restart.get("Delay") or 0) < 0:
        raise InvalidArgument("TaskSpec: restart-delay cannot be negative")
    if (restart.get("Window") or 0) < 0:
        raise InvalidArgument("TaskSpec: restart-window cannot be negative")
    placement = tt.get("Placement") or {}
    try:
        validate_constraints(placement.get("Constraints") or [])
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    res = tt.get("Resources") or {}
    for part in ("Limits", "Reservations"):
        for key in ("NanoCPUs", "MemoryBytes"):
            if ((res.get(part) or {}).get(key) or 0) < 0:
                raise InvalidArgument(f"TaskSpec: {part} {key} cannot be negative")
    check_task_fields(tt)  # the fields shoal honours or refuses (shoal.model.spec_fields)


def _validate_mounts(mounts: list[dict]) -> None:
    targets: set[str] = set()
    for m in mounts:
        mtype = m.get("Type") or ""
        if mtype not in _MOUNT_TYPES:
            raise InvalidArgument(f"ContainerSpec: invalid mount type {mtype!r}" if mtype
                                  else "ContainerSpec: mount type must be provided")
        target = m.get("Target") or ""
        if not target:
            raise InvalidArgument(f"ContainerSpec: invalid mount config for type \"{mtype}\": field Target must "
                                  "not be empty")
        if not target.startswith("/"):
            raise InvalidArgument(f"ContainerSpec: invalid mount target, must be an absolute path: {target}")
        if target in targets:
            raise InvalidArgument(f"ContainerSpec: duplicate mount point: {target}")
        targets.add(target)
        source = m.get("Source") or ""
        if mtype == "bind":
            if not source:
                raise InvalidArgument('ContainerSpec: invalid mount config for type "bind": field Source must '
                                      "not be empty")
            if not source.startswith("/"):
                raise InvalidArgument(f"ContainerSpec: invalid bind mount source, must be an absolute path: {source}")
        if mtype == "tmpfs" and source:
            raise InvalidArgument('ContainerSpec: invalid mount config for type "tmpfs": field Source must be empty')
        if mtype != "volume" and m.get("VolumeOptions"):
            raise InvalidArgument(f'ContainerSpec: invalid mount config for type "{mtype}": '
                                  "field VolumeOptions must not be specified")


def _validate_endpoint(ep: dict | None) -> None:
    if ep is None:
        return
    if ep.get("Mode") not in (None, "", "vip", "dnsrr"):
        raise InvalidArgument(f"EndpointSpec: unrecognized mode {ep['Mode']!r}")
    seen: set[tuple] = set()
    for p in ep.get("Ports") or []:
        if p.get("PublishMode", "ingress") == "ingress" and ep.get("Mode") == "dnsrr" and p.get("PublishedPort"):
            raise InvalidArgument("EndpointSpec: port published with ingress mode can't be used with dnsrr mode")
        key = (p.get("PublishedPort"), p.get("Protocol") or "tcp")
        if p.get("PublishedPort") and key in seen:
            raise InvalidArgument("EndpointSpec: duplicate published ports provided")
        seen.add(key)


def with_defaults(spec: dict) -> dict:
    """The spec as ``insertDefaults=true`` shows it (and as the orchestrators read it)."""
    spec = copy.deepcopy(spec)
    tt = spec.setdefault("TaskTemplate", {})
    cs = tt.setdefault("ContainerSpec", {})
    cs.setdefault("StopGracePeriod", DEFAULT_STOP_GRACE)
    cs.setdefault("DNSConfig", {})
    cs.setdefault("Isolation", "default")
    tt.setdefault("Resources", {"Limits": {}, "Reservations": {}})
    tt["RestartPolicy"] = {**DEFAULT_RESTART, **(tt.get("RestartPolicy") or {})}
    tt.setdefault("Placement", {})
    tt.setdefault("ForceUpdate", 0)
    tt.setdefault("Runtime", "container")
    if mode_of(spec) in ("replicated", "global"):
        spec["UpdateConfig"] = {**DEFAULT_UPDATE, **(spec.get("UpdateConfig") or {})}
        spec["RollbackConfig"] = {**DEFAULT_UPDATE, **(spec.get("RollbackConfig") or {})}
    ep = spec.setdefault("EndpointSpec", {})
    ep.setdefault("Mode", "vip")
    return spec


def restart_policy(task_spec: dict) -> dict:
    """A task's restart policy with defaults applied."""
    return {**DEFAULT_RESTART, **(task_spec.get("RestartPolicy") or {})}
