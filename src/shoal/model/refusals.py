"""The ServiceSpec fields shoal does not do: a request that sets one is refused with a 400 saying so,
rather than stored and silently ignored (the runtime, Windows isolation and mounts, mount and health
options the engine cannot take; shoal.model.spec_fields checks privileges, log drivers, generic resources
and templates).

Which fields are honoured and which refused, with the test that shows it, is docs/compat-fields.md
(made from the ``field`` markers of the tests by tests/unit/test_field_coverage.py). A field left at
its zero value (absent, ``""``, ``false``, ``0``) is not set, as in Go.
"""

from __future__ import annotations

from collections.abc import Iterator

from shoal.model.errors import InvalidArgument

# moby's Engine API 1.41 (Docker 20.10, the engine shoal is run beside and tested with) has no field for
# these: an engine that does not know a field drops it, so shoal cannot pass them on
_ENGINE_TOO_OLD = "the engine's API (1.41) cannot do it"


def _unsupported(path: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{path} is not supported by shoal: {why}")


def refuse_unsupported(spec: dict) -> None:
    """Raise InvalidArgument for the first field of ServiceSpec ``spec`` (canonical) shoal does not do."""
    tt = spec.get("TaskTemplate") or {}
    if tt.get("PluginSpec") is not None or tt.get("NetworkAttachmentSpec") is not None:
        raise InvalidArgument("TaskSpec: only container runtime is supported")
    if tt.get("Runtime") not in (None, "", "container"):
        raise _unsupported("TaskSpec.Runtime", f"only the container runtime is, not {tt['Runtime']!r}")
    cs = tt.get("ContainerSpec") or {}
    if cs.get("Isolation") not in (None, "", "default"):
        raise _unsupported("ContainerSpec.Isolation", f"{cs['Isolation']!r} is a Windows isolation technology")
    health = cs.get("Healthcheck") or {}
    if health.get("StartInterval"):
        raise _unsupported("HealthConfig.StartInterval", _ENGINE_TOO_OLD)
    for path, why in _mount_refusals(cs.get("Mounts") or []):
        raise _unsupported(path, why)


def _mount_refusals(mounts: list[dict]) -> Iterator[tuple[str, str]]:
    for m in mounts:
        mtype = m.get("Type") or ""
        if mtype in ("npipe", "cluster", "image"):
            why = {"npipe": "named pipes are Windows mounts", "cluster": "shoal has no cluster (CSI) volumes",
                   "image": _ENGINE_TOO_OLD}[mtype]
            yield f"Mount.Type {mtype!r}", why
        bind = m.get("BindOptions") or {}
        for key in ("CreateMountpoint", "ReadOnlyNonRecursive", "ReadOnlyForceRecursive"):
            if bind.get(key):
                yield f"Mount.BindOptions.{key}", "Docker's swarm mode drops it and " + _ENGINE_TOO_OLD
        if (m.get("ImageOptions") or {}).get("Subpath"):
            yield "Mount.ImageOptions.Subpath", _ENGINE_TOO_OLD
        if (m.get("VolumeOptions") or {}).get("Subpath"):
            yield "Mount.VolumeOptions.Subpath", _ENGINE_TOO_OLD
        if (m.get("TmpfsOptions") or {}).get("Options"):
            yield "Mount.TmpfsOptions.Options", _ENGINE_TOO_OLD
