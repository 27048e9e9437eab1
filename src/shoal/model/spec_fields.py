"""Checks of the task-spec fields that reach the engine or the scheduler: each is honoured (see
shoal.agent.executor.docker, the scheduler) or refused here with a 400, never stored and ignored.

- ``Privileges``: ``NoNewPrivileges`` and ``Seccomp`` are given to the engine; ``AppArmor`` (this kernel
  has none), ``SELinuxContext`` (the engines run without SELinux) and ``CredentialSpec`` (Windows only)
  cannot be, so a spec that sets them is refused.
- ``OomScoreAdj`` in the kernel's range; ``LogDriver`` options and a network attachment's
  ``DriverOpts`` as string maps; generic resource reservations as counts (``--generic-resource gpu=1``).
- Templates in ``Hostname``, ``Env`` and ``Mounts``, expanded for swarmkit's placeholder task as its
  control API does, so a bad template is refused at create rather than failing every task.
"""

from __future__ import annotations

import json
from typing import Any

from shoal.model.errors import BadRequest, InvalidArgument
from shoal.model.template import TemplateError, check_container_spec

SECCOMP_MODES = ("", "default", "unconfined", "custom")
OOM_SCORE_ADJ = (-1000, 1000)


def check_task_fields(tt: dict) -> None:
    """Refuse what shoal cannot honour in a TaskTemplate (called after its basic validation)."""
    cs = tt.get("ContainerSpec") or {}
    check_privileges(cs.get("Privileges"))
    check_oom_score_adj(cs.get("OomScoreAdj"))
    check_log_driver(tt.get("LogDriver"))
    check_generic_reservations(((tt.get("Resources") or {}).get("Reservations") or {}).get("GenericResources"))
    for n in tt.get("Networks") or []:
        if isinstance(n, dict):
            _string_map(n.get("DriverOpts"), "NetworkAttachmentConfig.TaskSpec.Networks.DriverOpts")
    check_templates(cs)


def check_templates(cs: dict) -> None:
    """Expand the templated fields for swarmkit's placeholder task: a template that cannot expand is a 400."""
    if not isinstance(cs.get("Hostname", ""), str):
        raise BadRequest("json: cannot unmarshal into Go struct field ContainerSpec.TaskTemplate.ContainerSpec"
                         ".Hostname of type string")
    for m in cs.get("Mounts") or []:
        vo = m.get("VolumeOptions") or {}
        if not isinstance(m.get("Source", ""), str) or not isinstance(vo, dict):
            raise BadRequest("json: cannot unmarshal into Go struct field ContainerSpec.TaskTemplate.ContainerSpec"
                             ".Mounts of type mount.Mount")
        _string_map(vo.get("Labels"), "VolumeOptions.TaskTemplate.ContainerSpec.Mounts.VolumeOptions.Labels")
        driver = vo.get("DriverConfig") or {}
        if not isinstance(driver, dict):
            raise BadRequest("json: cannot unmarshal into Go struct field VolumeOptions.TaskTemplate.ContainerSpec"
                             ".Mounts.VolumeOptions.DriverConfig of type mount.Driver")
        _string_map(driver.get("Options"), "Driver.TaskTemplate.ContainerSpec.Mounts.VolumeOptions.DriverConfig"
                                           ".Options")
    try:
        check_container_spec(cs)
    except TemplateError as e:
        raise InvalidArgument(str(e)) from None


def _object(value: Any, go_field: str, go_type: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"json: cannot unmarshal into Go struct field {go_field} of type {go_type}")
    return value


def _string_map(value: Any, go_field: str) -> None:
    if value is not None and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
        raise BadRequest(f"json: cannot unmarshal into Go struct field {go_field} of type map[string]string")


def check_privileges(priv: Any) -> None:
    if priv is None:
        return
    if not isinstance(priv, dict):
        raise BadRequest("json: cannot unmarshal into Go struct field ContainerSpec.TaskTemplate.ContainerSpec"
                         ".Privileges of type swarm.Privileges")
    where = "Privileges.TaskTemplate.ContainerSpec.Privileges"
    if priv.get("AppArmor") is not None:
        raise InvalidArgument("Privileges.AppArmor cannot be honoured: the kernel of shoal's nodes has no "
                              "AppArmor; remove the AppArmor setting")
    selinux = _object(priv.get("SELinuxContext"), f"{where}.SELinuxContext", "swarm.SELinuxContext")
    if any(selinux.get(k) for k in ("Disable", "User", "Role", "Type", "Level")):
        raise InvalidArgument("Privileges.SELinuxContext cannot be honoured: SELinux is not enabled on shoal's "
                              "nodes; remove the SELinux labels")
    cred = _object(priv.get("CredentialSpec"), f"{where}.CredentialSpec", "swarm.CredentialSpec")
    if any(cred.get(k) for k in ("File", "Registry", "Config")):
        raise InvalidArgument("Privileges.CredentialSpec cannot be honoured: credential specs are for Windows "
                              "containers (gMSA) and shoal's nodes run Linux")
    if not isinstance(priv.get("NoNewPrivileges", False), bool):
        raise BadRequest(f"json: cannot unmarshal into Go struct field {where}.NoNewPrivileges of type bool")
    if priv.get("Seccomp") is not None:
        seccomp = _object(priv["Seccomp"], f"{where}.Seccomp", "swarm.SeccompOpts")
        mode = seccomp.get("Mode") or ""
        profile = seccomp.get("Profile") or ""
        if not isinstance(mode, str) or not isinstance(profile, str):
            raise BadRequest(f"json: cannot unmarshal into Go struct field {where}.Seccomp of type string")
        if mode not in SECCOMP_MODES:
            raise InvalidArgument(f"Privileges.Seccomp: unrecognized mode {mode!r} (default, unconfined or custom)")
        if mode == "custom":
            if not profile:
                raise InvalidArgument("Privileges.Seccomp: mode custom needs a Profile")
            try:
                json.loads(profile)
            except ValueError as e:
                raise InvalidArgument(f"Privileges.Seccomp: the custom Profile is not JSON: {e}") from None
        elif profile:
            raise InvalidArgument("Privileges.Seccomp: a Profile is only used with mode custom")


def check_oom_score_adj(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("json: cannot unmarshal into Go struct field ContainerSpec.TaskTemplate.ContainerSpec"
                         ".OomScoreAdj of type int64")
    low, high = OOM_SCORE_ADJ
    if not low <= value <= high:
        raise InvalidArgument(f"Invalid value {value}, range for oom score adj is [{low}, {high}]")


def check_log_driver(driver: Any) -> None:
    if driver is None:
        return
    if not isinstance(driver, dict) or not isinstance(driver.get("Name", ""), str):
        raise BadRequest("json: cannot unmarshal into Go struct field TaskSpec.TaskTemplate.LogDriver of type "
                         "swarm.Driver")
    _string_map(driver.get("Options"), "Driver.TaskTemplate.LogDriver.Options")


def check_generic_reservations(resources: Any) -> None:
    """A task reserves counts of a kind (``DiscreteResourceSpec``); named ones are what nodes advertise."""
    if resources is None:
        return
    if not isinstance(resources, list):
        raise BadRequest("json: cannot unmarshal into Go struct field ResourceObject.TaskTemplate.Resources"
                         ".Reservations.GenericResources of type swarm.GenericResources")
    for item in resources:
        if not isinstance(item, dict):
            raise BadRequest("json: cannot unmarshal into Go struct field ResourceObject.TaskTemplate.Resources"
                             ".Reservations.GenericResources of type swarm.GenericResource")
        named = item.get("NamedResourceSpec")
        if named:
            named = named if isinstance(named, dict) else {}
            raise InvalidArgument(f"invalid generic-resource request {named.get('Kind', '')}="
                                  f"{named.get('Value', '')}: Named Generic Resources is not supported for "
                                  "service create or update")
        disc = _object(item.get("DiscreteResourceSpec"), "GenericResource.DiscreteResourceSpec",
                       "swarm.DiscreteGenericResource")
        kind, value = disc.get("Kind"), disc.get("Value", 0)
        if not isinstance(kind, str) or not kind:
            raise InvalidArgument("generic resource: a Kind must be given")
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest("json: cannot unmarshal into Go struct field DiscreteGenericResource.Value of "
                             "type int64")
        if value < 0:
            raise InvalidArgument(f"could not parse GenericResource: cannot ask for negative resource {kind}")
