"""Autolock's unlock key, kept in the cluster object (``docker swarm init --autolock``, ``docker swarm
unlock-key [--rotate]``).

The unlock key is sealed under the cluster's data key (shoal.manager.sealed_fields: a copy of the store's
files alone does not give it away) and is never shown by ``GET /swarm``; each manager's data key is in turn
sealed under the unlock key while autolock is on. swarmkit's rules: a key appears when autolock is
turned on, changes only on rotation, and goes when autolock is turned off. Each manager's own key files
follow it (shoal.node.keylock).
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shoal.manager import sealed_fields
from shoal.manager.secrets import Sealer
from shoal.model.errors import APIError, BadRequest

PREFIX = "SWMKEY-1-"
FIELD = "UnlockKey"  # the sealed field of the cluster object (shoal.manager.sealed_fields)
INVALID_KEY = "swarm could not be unlocked: invalid key provided"


class InvalidUnlockKey(APIError):
    status = 401

    def __init__(self) -> None:
        super().__init__(INVALID_KEY)


def new_key() -> bytes:
    return os.urandom(32)


def human(key: bytes) -> str:
    """``SWMKEY-1-<base64, no padding>``, as Docker shows unlock keys."""
    return PREFIX + base64.b64encode(key).decode().rstrip("=")


def parse(text: str) -> bytes:
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise BadRequest("invalid key string")
    raw = text[len(PREFIX):].strip()
    try:
        return base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except ValueError:
        raise BadRequest("invalid key string") from None


def seal(key: bytes, data: bytes, label: bytes) -> bytes:
    """AES-256-GCM with a fresh nonce, base64."""
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, data, label))


def open_sealed(key: bytes, blob: bytes, label: bytes) -> bytes:
    """What :func:`seal` sealed (InvalidUnlockKey when ``key`` is not the key)."""
    raw = base64.b64decode(blob)
    try:
        return AESGCM(key).decrypt(raw[:12], raw[12:], label)
    except (InvalidTag, ValueError):
        raise InvalidUnlockKey() from None


def _autolock(cluster: dict) -> bool:
    return bool(((cluster.get("Spec") or {}).get("EncryptionConfig") or {}).get("AutoLockManagers"))


def update_cluster(cluster: dict, sealer: Sealer, rotate: bool = False) -> None:
    """Give the cluster object the unlock key its spec asks for (swarmkit's rules: a key appears when
    autolock is turned on, changes only on rotation, and goes when autolock is turned off)."""
    if not _autolock(cluster):
        sealed_fields.put(cluster, sealer, FIELD, None)
    elif not sealed_fields.has(cluster, FIELD) or rotate:
        sealed_fields.put(cluster, sealer, FIELD, new_key())


def unlock_key(cluster: dict, sealer: Sealer) -> bytes | None:
    """The cluster's unlock key (None when autolock is off)."""
    return sealed_fields.get(cluster, sealer, FIELD) if _autolock(cluster) else None
