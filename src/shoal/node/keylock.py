"""Autolock on this node: a manager's keys encrypted at rest with the swarm's unlock key (``docker swarm
init --autolock``, ``docker swarm unlock``, ``docker swarm unlock-key --rotate``).

With autolock on, a manager's private keys — its node TLS key, the cluster CA key (from which the store's
secret-sealing key is derived) and its etcd member's TLS key — live only in memory (a directory on
``/dev/shm``, linked from the data dir). On disk there is a sealed copy (AES-256-GCM under the unlock key,
``<data-dir>/locked-keys.sealed``). A restarted manager therefore cannot start its etcd member or its
cluster port: it stays ``locked`` until ``POST /swarm/unlock`` brings the right key.

The unlock key itself is kept in the cluster object (shoal.manager.autolock). Every manager follows the
cluster object (:meth:`KeyLock.follow`): it locks its own keys when autolock is turned on, reseals them when
the key is rotated, and unlocks them for good when autolock is turned off.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
from pathlib import Path

from shoal.manager.autolock import open_sealed, seal

KEY_FILES = ("certificates/swarm-node.key", "certificates/swarm-root-ca.key")
KEY_DIRS = ("etcd-tls",)
SEALED = "locked-keys.sealed"
RUNTIME_ROOT = Path("/dev/shm")
log = logging.getLogger(__name__)

LOCKED = ('Swarm is encrypted and needs to be unlocked before it can be used. Please use "docker swarm unlock" '
          "to unlock it.")
LEAVE_LOCKED = "Swarm is encrypted and locked. Please unlock it first or use `--force` to ignore this message."
NOT_LOCKED = "swarm is not locked"


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
        tmp.write_bytes(seal(key, json.dumps(bundle).encode(), b"shoal manager keys"))
        tmp.chmod(0o600)
        tmp.replace(self.sealed)
        self.key = key

    def unlock(self, key: bytes) -> None:
        """Open the sealed copy with ``key`` (InvalidUnlockKey when it is not the key) into memory."""
        bundle = json.loads(open_sealed(key, self.sealed.read_bytes(), b"shoal manager keys"))
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

    def follow(self, key: bytes | None) -> None:
        """Make the key files match the cluster's autolock setting: ``key`` is its unlock key (None: off)."""
        if key is None and self.enabled:
            log.info("autolock is off: the manager keys are plain files again")
            self.disable()
        elif key is not None and not self.enabled:
            log.info("autolock is on: the manager keys are kept in memory and sealed on disk")
            self.enable(key)
        elif key is not None and self.key != key:
            log.info("the unlock key changed: resealing the manager keys")
            self.seal(key)
