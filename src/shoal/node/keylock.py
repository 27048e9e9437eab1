"""Autolock on this node: a manager's keys encrypted at rest with the swarm's unlock key (``docker swarm
init --autolock``, ``docker swarm unlock``, ``docker swarm unlock-key --rotate``).

With autolock on, a manager's private keys — its node TLS key, the cluster's data key (which seals the
join tokens, the CA key, the unlock key and the secrets in the store) and the etcd CA's key and its etcd
member's TLS key — live only in memory (a directory on ``/dev/shm``, linked from the data dir). On disk
there is a sealed copy (AES-256-GCM under the unlock key, ``<data-dir>/locked-keys.sealed``). A restarted
manager therefore cannot start its etcd member or its cluster port, nor read anything sealed in the store:
it stays ``locked`` until ``POST /swarm/unlock`` brings the right key. A key written while locked (a
renewed certificate's key; a joining manager's keys, when the leader gave it the unlock key first) goes
straight to memory, and the sealed copy is made again (:meth:`KeyLock.reseal`).

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
from shoal.tls.files import DIR_MODE, KEY_MODE, private_dir, write_file

KEY_FILES = ("certificates/swarm-node.key", "certificates/swarm-data.key", "certificates/etcd-ca.key")
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
        """``<data-dir>/rel`` becomes a link into memory (what it held moves there)."""
        path, target = self.data_dir / rel, self.runtime / rel
        private_dir(target if is_dir else target.parent)
        if path.is_symlink():
            if path.readlink() == target:
                return
            path.unlink()
        elif path.is_dir():
            for child in path.iterdir():
                shutil.move(str(child), target / child.name)
            path.rmdir()
        elif path.exists():
            write_file(target, path.read_bytes(), KEY_MODE)
            path.unlink()
        private_dir(path.parent)
        path.symlink_to(target)

    def enable(self, key: bytes) -> None:
        """Keep the key files in memory (those there are move; those to come will be written there) and a
        copy on disk sealed under ``key``."""
        private_dir(self.runtime)
        for rel in KEY_FILES:
            self._link(rel, is_dir=False)
        for rel in KEY_DIRS:
            self._link(rel, is_dir=True)
        self.seal(key)

    def reseal(self) -> None:
        """After a key file changed: make the sealed copy again (nothing to do when autolock is off)."""
        if self.enabled and self.key is not None:
            self.seal(self.key)

    def seal(self, key: bytes) -> None:
        """(Re)write the sealed copy of the key files under ``key``."""
        bundle = {rel: base64.b64encode((self.runtime / rel).read_bytes()).decode()
                  for rel in KEY_FILES if (self.runtime / rel).exists()}
        write_file(self.sealed, seal(key, json.dumps(bundle).encode(), b"shoal manager keys"), KEY_MODE)
        self.key = key

    def read_sealed(self, key: bytes) -> dict[str, bytes]:
        """The key files of the sealed copy, opened with ``key`` (InvalidUnlockKey when it is not the key)."""
        bundle = json.loads(open_sealed(key, self.sealed.read_bytes(), b"shoal manager keys"))
        return {rel: base64.b64decode(data) for rel, data in bundle.items()}

    def unlock(self, key: bytes) -> None:
        """Open the sealed copy with ``key`` (InvalidUnlockKey when it is not the key) into memory."""
        bundle = self.read_sealed(key)
        private_dir(self.runtime)
        for rel, data in bundle.items():
            write_file(self.runtime / rel, data, KEY_MODE)
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
                path.chmod(DIR_MODE)
            elif target.exists():
                write_file(path, target.read_bytes(), KEY_MODE)
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
