"""A node's certificate and key files, written so that no key is ever readable by others, not even for a
moment: each file is created with its final mode (a key 0600) in a 0700 directory and renamed into place
(a reader sees the old file or the new one, never half of one). A path that is a link (autolock keeps a
manager's keys in memory, see shoal.node.keylock) is written where it points.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700


def make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each of mode 0700 (existing ones are left as they are)."""
    for d in reversed([path, *path.parents]):
        if not d.exists():
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=DIR_MODE)


def private_dir(path: Path) -> Path:
    """``path`` as a directory of mode 0700 (its missing parents too)."""
    make_dirs(path)
    path.chmod(DIR_MODE)
    return path


@contextlib.contextmanager
def replacing(path: Path, mode: int = KEY_MODE) -> Iterator[BinaryIO]:
    """A file to write that replaces ``path`` (or the file its link points to) once the block ends
    without an error: created with ``mode`` beside it (missing directories are made 0700), synced, then
    renamed into place; on an error it is removed and ``path`` is left as it was."""
    target = path.resolve() if path.is_symlink() else path
    make_dirs(target.parent)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; never adds any beyond mode
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)


def write_file(path: Path, data: bytes, mode: int = KEY_MODE) -> None:
    """Replace ``path`` (or the file its link points to) with ``data``, created with ``mode``."""
    with replacing(path, mode) as f:
        f.write(data)


@dataclass
class NodeTLS:
    """A node's files under ``<data-dir>/certificates``: the trusted root, its certificate (followed by
    any intermediate) and key; on a manager also the cluster's data key and the etcd CA."""

    dir: Path

    @property
    def ca(self) -> Path:
        """The root CA this node trusts (PEM)."""
        return self.dir / "swarm-root-ca.crt"

    @property
    def cert(self) -> Path:
        return self.dir / "swarm-node.crt"

    @property
    def key(self) -> Path:
        return self.dir / "swarm-node.key"

    @property
    def data_key_file(self) -> Path:
        """The cluster's data key (managers): it seals the cluster's secrets in the store and backups."""
        return self.dir / "swarm-data.key"

    @property
    def etcd_ca(self) -> Path:
        return self.dir / "etcd-ca.crt"

    @property
    def etcd_ca_key(self) -> Path:
        """The key of the managers' own CA for etcd's member certificates (managers only)."""
        return self.dir / "etcd-ca.key"

    def write(self, ca_pem: bytes, cert_pem: bytes, key: bytes) -> None:
        """The node's identity: key first (a certificate never names a key that is not there yet)."""
        private_dir(self.dir)
        write_file(self.key, key, KEY_MODE)
        write_file(self.cert, cert_pem, CERT_MODE)
        write_file(self.ca, ca_pem, CERT_MODE)

    def write_trust(self, ca_pem: bytes) -> None:
        write_file(self.ca, ca_pem, CERT_MODE)

    def write_manager_keys(self, data_key: bytes, etcd_ca_pem: bytes, etcd_ca_key: bytes) -> None:
        private_dir(self.dir)
        write_file(self.data_key_file, base64.b64encode(data_key), KEY_MODE)
        write_file(self.etcd_ca_key, etcd_ca_key, KEY_MODE)
        write_file(self.etcd_ca, etcd_ca_pem, CERT_MODE)

    def remove_manager_keys(self) -> None:
        for path in (self.data_key_file, self.etcd_ca_key, self.etcd_ca):
            path.unlink(missing_ok=True)

    def data_key(self) -> bytes:
        """The cluster's data key (OSError when this node has none: a worker, or a locked manager)."""
        return base64.b64decode(self.data_key_file.read_bytes())
