"""Autolock's unlock key, kept in the cluster object (``docker swarm init --autolock``, ``docker swarm
unlock-key [--rotate]``).

The unlock key is sealed under a key derived from the CA key (so a copy of the store's files alone does not
give it away) and is never shown by ``GET /swarm``. swarmkit's rules: a key appears when autolock is turned
on, changes only on rotation, and goes when autolock is turned off. Each manager's own key files follow it
(shoal.node.keylock).
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shoal.model.errors import APIError, BadRequest

PREFIX = "SWMKEY-1-"
FIELD = "ShoalUnlockKey"  # in the cluster object: the unlock key sealed under the CA key; never shown
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


def _store_key(ca_key_pem: bytes) -> bytes:
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    der = ca_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"shoal unlock key in the store").derive(der)


def update_cluster(cluster: dict, ca_key_pem: bytes, rotate: bool = False) -> None:
    """Give the cluster object the unlock key its spec asks for (swarmkit's rules: a key appears when
    autolock is turned on, changes only on rotation, and goes when autolock is turned off)."""
    spec = cluster.get("Spec") or {}
    if not (spec.get("EncryptionConfig") or {}).get("AutoLockManagers"):
        cluster.pop(FIELD, None)
        return
    if FIELD not in cluster or rotate:
        cluster[FIELD] = seal(_store_key(ca_key_pem), new_key(), b"unlock key").decode()


def unlock_key(cluster: dict, ca_key_pem: bytes) -> bytes | None:
    """The cluster's unlock key (None when autolock is off)."""
    blob = cluster.get(FIELD)
    if not blob or not (cluster.get("Spec", {}).get("EncryptionConfig") or {}).get("AutoLockManagers"):
        return None
    return open_sealed(_store_key(ca_key_pem), blob.encode(), b"unlock key")


