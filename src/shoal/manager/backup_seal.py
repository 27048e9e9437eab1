"""Backups sealed under the cluster's data key (``shoal backup`` / ``shoal restore``).

A backup file is ``SHOALBK1`` ‖ a 16-byte salt ‖ chunks; each chunk is a 4-byte big-endian length and
AES-256-GCM of up to 1 MiB of the etcd snapshot. The file's key is HKDF-SHA256 of the data key with the
salt (a fresh key per backup, so chunk numbers can serve as nonces); each chunk's associated data is its
number and whether it is the last, so chunks cannot be reordered, dropped or cut off unnoticed. Only a
manager of the swarm holds the data key (with autolock: sealed under the unlock key).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shoal.tls.files import KEY_MODE, replacing

MAGIC = b"SHOALBK1"
CHUNK = 1 << 20
_TAG = 16


class BackupError(ValueError):
    """Not a shoal backup, another swarm's, or damaged."""


def _cipher(data_key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(hashes.SHA256(), 32, salt=salt, info=b"shoal backup v1").derive(data_key))


def _aad(index: int, last: bool) -> bytes:
    return MAGIC + struct.pack(">QB", index, last)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def seal_file(src: Path, dst: Path, data_key: bytes) -> int:
    """Write ``src`` sealed to ``dst`` (mode 0600); returns the size of ``dst``."""
    salt = os.urandom(16)
    aead = _cipher(data_key, salt)
    size = os.path.getsize(src)
    with open(src, "rb") as inp, replacing(dst, KEY_MODE) as out:
        out.write(MAGIC + salt)
        index, left = 0, size
        while True:
            chunk = inp.read(CHUNK)
            left -= len(chunk)
            last = left <= 0
            ct = aead.encrypt(_nonce(index), chunk, _aad(index, last))
            out.write(struct.pack(">I", len(ct)) + ct)
            index += 1
            if last:
                break
    return os.path.getsize(dst)


def open_file(src: Path, dst: Path, data_key: bytes) -> None:
    """Write what ``src`` seals to ``dst`` (mode 0600); :class:`BackupError` when it cannot be opened."""
    with open(src, "rb") as inp, replacing(dst, KEY_MODE) as out:
        head = inp.read(len(MAGIC) + 16)
        if head[:len(MAGIC)] != MAGIC:
            raise BackupError("not a backup made by `shoal backup`")
        aead = _cipher(data_key, head[len(MAGIC):])
        index = 0
        while True:
            raw = inp.read(4)
            if len(raw) != 4:
                raise BackupError("the backup is cut short")
            (n,) = struct.unpack(">I", raw)
            ct = inp.read(n)
            if len(ct) != n or n < _TAG or n > CHUNK + _TAG:
                raise BackupError("the backup is cut short or damaged")
            last = inp.peek(1) == b""
            try:
                out.write(aead.decrypt(_nonce(index), ct, _aad(index, last)))
            except InvalidTag:
                raise BackupError("the backup was not made with this swarm's data key (or is damaged)") from None
            index += 1
            if last:
                return
