"""Secrets at rest and on their way to nodes.

A secret's data is sealed with AES-256-GCM before it reaches the store: the object keeps
``"Sealed": "v1:<base64 of nonce ‖ ciphertext ‖ tag>"`` and no ``Spec.Data``; the object's kind and ID
are the associated data, so a sealed value cannot be moved to another object. The key is the cluster's
data key: 32 random bytes made at ``swarm init``, handed to each manager when it joins (over mutual
TLS) and kept in ``<data-dir>/certificates/swarm-data.key`` (mode 0600; with autolock only in memory and
sealed under the unlock key), never given to workers. The cluster's own secrets (join tokens, the CA
key, the unlock key) are sealed with it too (shoal.manager.sealed_fields). Configs are not secret and
are stored as given.

The dispatcher hands a node the secrets and configs of the tasks assigned to it (see
:func:`needed`, :func:`payload`), decrypted, over the node's mutual-TLS session.

A service's registry credentials (``X-Registry-Auth``) are sealed the same way (associated data: the
service's ID), kept with the service and its tasks, and opened only for the node a task is assigned to
(:func:`task_registry_auth`).
"""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import Iterable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shoal.model import states
from shoal.model.errors import InvalidArgument
from shoal.model.secrets import references
from shoal.model.service import SEALED_AUTH
from shoal.store.objects import Objects

_PREFIX = "v1:"


class SealError(Exception):
    """A sealed value could not be opened (wrong key, or tampered with)."""


def new_data_key() -> bytes:
    """A new cluster data key (``swarm init``)."""
    return os.urandom(32)


class Sealer:
    """AES-256-GCM with a fresh 96-bit nonce per value."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, kind: str, oid: str, data: bytes) -> str:
        nonce = os.urandom(12)
        blob = nonce + self._aead.encrypt(nonce, data, f"{kind}/{oid}".encode())
        return _PREFIX + base64.b64encode(blob).decode()

    def open(self, kind: str, oid: str, sealed: str) -> bytes:
        if not sealed.startswith(_PREFIX):
            raise SealError("unknown sealed-value format")
        try:
            blob = base64.b64decode(sealed[len(_PREFIX):], validate=True)
            return self._aead.decrypt(blob[:12], blob[12:], f"{kind}/{oid}".encode())
        except Exception as e:
            raise SealError(f"cannot open {kind}/{oid}: {type(e).__name__}") from None


def reveal(sealer: Sealer | None, kind: str, obj: dict) -> bytes:
    """The plain data of a stored secret or config."""
    if kind == "secrets":
        if sealer is None:
            raise SealError("no data key on this node")
        return sealer.open(kind, obj["ID"], obj.get("Sealed") or "")
    return base64.b64decode((obj.get("Spec") or {}).get("Data") or "")


def needs_files(task: dict) -> bool:
    """Whether a node still needs a task's secrets and configs (the task may yet run)."""
    return not states.terminal(task["Status"]["State"]) and \
        states.rank(task.get("DesiredState", states.RUNNING)) <= states.rank(states.COMPLETE)


def needed(tasks: Iterable[dict]) -> dict[str, set[str]]:
    """IDs of the secrets and configs that the tasks which may still run refer to."""
    out: dict[str, set[str]] = {"secrets": set(), "configs": set()}
    for t in tasks:
        if not needs_files(t):
            continue
        for kind in ("secrets", "configs"):
            one = kind[:-1].title()
            out[kind].update(r[f"{one}ID"] for r in references(t.get("Spec") or {}, kind)  # type: ignore[arg-type]
                             if r.get(f"{one}ID"))
    return out


def payload(objs: Objects, sealer: Sealer | None, kind: str, oid: str) -> dict | None:
    """What a node gets of one secret or config: ``{"ID", "Name", "Data": base64}`` (None if it is gone
    or cannot be opened here; the agent then refuses the task)."""
    obj = objs.get(kind, oid)
    if obj is None:
        return None
    try:
        data = reveal(sealer, kind, obj)
    except SealError:
        return None
    out = {"ID": oid, "Name": obj["Spec"]["Name"], "Data": base64.b64encode(data).decode()}
    if obj["Spec"].get("Templating"):
        out["Templating"] = obj["Spec"]["Templating"]
    return out


AUTH_KIND = "registry-auth"


def seal_registry_auth(sealer: Sealer, service_id: str, encoded: str) -> str:
    """The client's encoded registry credentials, sealed for the service's record."""
    return sealer.seal(AUTH_KIND, service_id, encoded.encode())


def task_registry_auth(sealer: Sealer | None, task: dict) -> str:
    """The encoded credentials a task's node pulls its image with ("" when it has none, when it no longer
    may run, or when they cannot be opened here)."""
    sealed = task.get(SEALED_AUTH)
    if not sealed or sealer is None or not needs_files(task):
        return ""
    try:
        return sealer.open(AUTH_KIND, task.get("ServiceID") or "", sealed).decode()
    except SealError:
        return ""


@functools.lru_cache(maxsize=4)
def cached_sealer(data_key: bytes) -> Sealer:
    return Sealer(data_key)


def check_refs(objs: Objects, spec: dict) -> None:
    """A service's secret and config references must name existing objects (ID and name both), as
    swarmkit checks them: ``secret not found: a`` / ``secrets not found: a, b`` (InvalidArgument)."""
    for kind in ("secrets", "configs"):
        one = kind[:-1]
        missing = []
        for ref in references(spec, kind):  # type: ignore[arg-type]
            obj = objs.get(kind, ref.get(f"{one.title()}ID") or "")
            name = ref.get(f"{one.title()}Name") or ""
            if obj is None or obj["Spec"].get("Name") != name:
                missing.append(name)
        if missing:
            word = kind if len(missing) > 1 else one
            raise InvalidArgument(f"{word} not found: {', '.join(missing)}")


def users_of(objs: Objects, kind: str, oid: str) -> list[str]:
    """Names of the services whose spec refers to a secret or config."""
    one = kind[:-1].title()
    return [svc["Spec"]["Name"] for svc in objs.list("services")
            if any(ref.get(f"{one}ID") == oid for ref in references(svc["Spec"], kind))]  # type: ignore[arg-type]
