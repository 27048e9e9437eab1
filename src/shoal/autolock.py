"""Autolock: a manager's keys encrypted at rest with the swarm's unlock key (``docker swarm init
--autolock``, ``docker swarm unlock``, ``docker swarm unlock-key --rotate``).

With autolock on, a manager's private keys — its node TLS key, the cluster CA key (from which the store's
secret-sealing key is derived) and its etcd member's TLS key — live only in memory (a directory on
``/dev/shm``, linked from the data dir). On disk there is a sealed copy (AES-256-GCM under the unlock key,
``<data-dir>/locked-keys.sealed``). A restarted manager therefore cannot start its etcd member or its
cluster port: it stays ``locked`` until ``POST /swarm/unlock`` brings the right key.

The unlock key itself is kept in the cluster object, sealed under a key derived from the CA key (so a copy
of the store's files alone does not give it away), and is never shown by ``GET /swarm``. Every manager
follows the cluster object: it locks its own keys when autolock is turned on, reseals them when the key is
rotated, and unlocks them for good when autolock is turned off.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shoal.model.errors import NOT_A_MANAGER, WORKER_NOT_MANAGER, APIError, BadRequest, Conflict, Unavailable

if TYPE_CHECKING:
    from shoal.daemon import Daemon

log = logging.getLogger(__name__)

PREFIX = "SWMKEY-1-"
FIELD = "ShoalUnlockKey"  # in the cluster object: the unlock key sealed under the CA key; never shown
KEY_FILES = ("certificates/swarm-node.key", "certificates/swarm-root-ca.key")
KEY_DIRS = ("etcd-tls",)
SEALED = "locked-keys.sealed"
RUNTIME_ROOT = Path("/dev/shm")

LOCKED = ('Swarm is encrypted and needs to be unlocked before it can be used. Please use "docker swarm unlock" '
          "to unlock it.")
LEAVE_LOCKED = "Swarm is encrypted and locked. Please unlock it first or use `--force` to ignore this message."
NOT_LOCKED = "swarm is not locked"
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


def _seal(key: bytes, data: bytes, label: bytes) -> bytes:
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, data, label))


def _open(key: bytes, blob: bytes, label: bytes) -> bytes:
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
        cluster[FIELD] = _seal(_store_key(ca_key_pem), new_key(), b"unlock key").decode()


def unlock_key(cluster: dict, ca_key_pem: bytes) -> bytes | None:
    """The cluster's unlock key (None when autolock is off)."""
    blob = cluster.get(FIELD)
    if not blob or not (cluster.get("Spec", {}).get("EncryptionConfig") or {}).get("AutoLockManagers"):
        return None
    return _open(_store_key(ca_key_pem), blob.encode(), b"unlock key")


class KeyLock:
    """The key files of one data dir: in memory and sealed on disk (locked), or plain files."""

    def __init__(self, data_dir: Path, runtime_root: Path = RUNTIME_ROOT) -> None:
        self.data_dir = data_dir
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
        self.runtime = runtime_root / f"shoal-keys-{digest}"
        self.key: bytes | None = None  # the key the sealed copy is under, once known

    @property
    def sealed(self) -> Path:
        return self.data_dir / SEALED

    @property
    def enabled(self) -> bool:
        return self.sealed.exists()

    def wipe(self) -> None:
        """Forget the keys in memory (a stopped or restarted manager is locked)."""
        shutil.rmtree(self.runtime, ignore_errors=True)
        self.key = None

    def _link(self, rel: str, is_dir: bool) -> None:
        path, target = self.data_dir / rel, self.runtime / rel
        if is_dir:
            target.mkdir(parents=True, exist_ok=True, mode=0o700)
        else:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.is_symlink():
            if path.readlink() == target:
                return
            path.unlink()
        elif path.is_dir():
            for child in path.iterdir():
                shutil.move(str(child), target / child.name)
            path.rmdir()
        elif path.exists():
            target.write_bytes(path.read_bytes())
            target.chmod(0o600)
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)

    def enable(self, key: bytes) -> None:
        """Move the key files into memory and keep a copy on disk sealed under ``key``."""
        self.runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.runtime.chmod(0o700)
        for rel in KEY_FILES:
            if (self.data_dir / rel).exists():
                self._link(rel, is_dir=False)
        for rel in KEY_DIRS:
            self._link(rel, is_dir=True)
        self.seal(key)

    def seal(self, key: bytes) -> None:
        """(Re)write the sealed copy of the key files under ``key``."""
        bundle = {rel: base64.b64encode((self.runtime / rel).read_bytes()).decode()
                  for rel in KEY_FILES if (self.runtime / rel).exists()}
        tmp = self.sealed.with_suffix(".tmp")
        tmp.write_bytes(_seal(key, json.dumps(bundle).encode(), b"shoal manager keys"))
        tmp.chmod(0o600)
        tmp.replace(self.sealed)
        self.key = key

    def unlock(self, key: bytes) -> None:
        """Open the sealed copy with ``key`` (InvalidUnlockKey when it is not the key) into memory."""
        bundle = json.loads(_open(key, self.sealed.read_bytes(), b"shoal manager keys"))
        self.runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        for rel, data in bundle.items():
            target = self.runtime / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            target.write_bytes(base64.b64decode(data))
            target.chmod(0o600)
            self._link(rel, is_dir=False)
        for rel in KEY_DIRS:
            self._link(rel, is_dir=True)
        self.key = key

    def disable(self) -> None:
        """Autolock off: the key files become plain files again."""
        for rel in (*KEY_FILES, *KEY_DIRS):
            path = self.data_dir / rel
            if not path.is_symlink():
                continue
            target = path.readlink()
            path.unlink()
            if target.is_dir():
                shutil.copytree(target, path)
            elif target.exists():
                path.write_bytes(target.read_bytes())
                path.chmod(0o600)
        self.sealed.unlink(missing_ok=True)
        self.wipe()

    def forget(self) -> None:
        """Leaving the swarm: no keys anywhere."""
        for rel in (*KEY_FILES, *KEY_DIRS):
            path = self.data_dir / rel
            if path.is_symlink():
                path.unlink()
        self.sealed.unlink(missing_ok=True)
        self.wipe()


def apply(daemon: Daemon) -> None:
    """Make this manager's keys match the cluster's autolock setting and unlock key."""
    lock = daemon.keylock
    if daemon.objs is None or daemon.state != "active" or daemon.role != "manager":
        return
    key = unlock_key(daemon.cluster(), daemon.ca_key_pem())
    if key is None and lock.enabled:
        log.info("autolock is off: the manager keys are plain files again")
        lock.disable()
    elif key is not None and not lock.enabled:
        log.info("autolock is on: the manager keys are kept in memory and sealed on disk")
        lock.enable(key)
    elif key is not None and lock.key != key:
        log.info("the unlock key changed: resealing the manager keys")
        lock.seal(key)


async def follow(daemon: Daemon) -> None:
    """Every manager follows the cluster object (another manager may have changed it)."""
    while True:
        try:
            apply(daemon)
        except Exception as e:  # the store may be briefly unavailable; try again
            log.debug("autolock: %s", e)
        await asyncio.sleep(0.5)


async def unlock(daemon: Daemon, text: str) -> None:
    """``POST /swarm/unlock``: open a locked manager's keys and start it."""
    if daemon.state != "locked":
        if daemon.state == "active" and daemon.role == "manager":
            raise Conflict(NOT_LOCKED)
        if daemon.state == "inactive":
            raise Unavailable("This node is not part of a swarm")
        raise Unavailable(WORKER_NOT_MANAGER if daemon.state == "active" else NOT_A_MANAGER)
    key = parse(text)
    daemon.keylock.unlock(key)
    daemon.state = "pending"
    await daemon.resume()


async def leave_locked(daemon: Daemon, force: bool) -> None:
    """``swarm leave`` on a locked manager: only with ``--force``; nothing of the swarm stays."""
    if not force:
        raise Unavailable(LEAVE_LOCKED)
    daemon.keylock.forget()
    daemon.state_file.unlink(missing_ok=True)
    for sub in ("etcd", "certificates", "etcd-tls"):
        shutil.rmtree(daemon.opts.data_dir / sub, ignore_errors=True)
    daemon.state, daemon.role, daemon.node_id, daemon.managers = "inactive", "worker", "", []
