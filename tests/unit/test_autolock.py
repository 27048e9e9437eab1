"""Autolock's key handling on a data dir: keys in memory, sealed on disk, unlock, rotation, turn off."""

from __future__ import annotations

import pytest

from shoal.manager import autolock
from shoal.manager.secrets import Sealer, SealError, new_data_key
from shoal.model.errors import BadRequest
from shoal.node.keylock import KeyLock
from shoal.tls.files import write_file


def _data_dir(tmp_path):
    data = tmp_path / "data"
    (data / "certificates").mkdir(parents=True)
    (data / "certificates" / "swarm-node.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnode\n")
    (data / "certificates" / "swarm-data.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\ndata\n")
    (data / "certificates" / "swarm-node.crt").write_bytes(b"cert")
    (data / "etcd-tls").mkdir()
    (data / "etcd-tls" / "n.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\netcd\n")
    return data


def _plain(data) -> list[str]:
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")
                  if p.is_file() and not p.is_symlink() and b"PRIVATE KEY" in p.read_bytes())


def test_human_key_round_trip():
    key = autolock.new_key()
    text = autolock.human(key)
    assert text.startswith("SWMKEY-1-") and "=" not in text
    assert autolock.parse(text) == key
    for bad in ("", "SWMKEY-2-abc", "SWMKEY-1-!!!"):
        with pytest.raises(BadRequest, match="invalid key string"):
            autolock.parse(bad)


def test_lock_unlock_rotate_disable(tmp_path):
    data = _data_dir(tmp_path)
    lock = KeyLock(data, runtime_root=tmp_path / "shm")
    key = autolock.new_key()
    lock.enable(key)
    assert lock.enabled and _plain(data) == []
    assert (data / "certificates" / "swarm-data.key").read_bytes().endswith(b"data\n")  # through the link
    assert (data / "etcd-tls" / "n.key").read_bytes().endswith(b"etcd\n")

    lock.wipe()  # a stop: the keys are gone from memory
    assert not (data / "certificates" / "swarm-node.key").exists()
    with pytest.raises(autolock.InvalidUnlockKey):
        lock.unlock(autolock.new_key())
    lock.unlock(key)
    assert (data / "certificates" / "swarm-node.key").read_bytes().endswith(b"node\n")
    assert (data / "etcd-tls").is_dir()  # etcd's certificate is issued again at each start

    new = autolock.new_key()
    lock.seal(new)
    lock.wipe()
    with pytest.raises(autolock.InvalidUnlockKey):
        lock.unlock(key)
    lock.unlock(new)
    lock.disable()
    assert not lock.enabled and not lock.runtime.exists() and (data / "etcd-tls").is_dir()
    assert _plain(data) == ["certificates/swarm-data.key", "certificates/swarm-node.key"]


def test_cluster_unlock_key_follows_the_spec():
    sealer = Sealer(new_data_key())
    cluster = {"ID": "c1", "Spec": {"EncryptionConfig": {"AutoLockManagers": False}}}
    autolock.update_cluster(cluster, sealer)
    assert autolock.unlock_key(cluster, sealer) is None
    cluster["Spec"]["EncryptionConfig"]["AutoLockManagers"] = True
    autolock.update_cluster(cluster, sealer)
    first = autolock.unlock_key(cluster, sealer)
    assert first and len(first) == 32 and autolock.human(first)[9:] not in str(cluster)  # sealed in the object
    autolock.update_cluster(cluster, sealer)
    assert autolock.unlock_key(cluster, sealer) == first  # unchanged without rotation
    autolock.update_cluster(cluster, sealer, rotate=True)
    assert autolock.unlock_key(cluster, sealer) not in (None, first)
    with pytest.raises(SealError):
        autolock.unlock_key(cluster, Sealer(new_data_key()))  # another swarm's data key
    cluster["Spec"]["EncryptionConfig"]["AutoLockManagers"] = False
    autolock.update_cluster(cluster, sealer)
    assert cluster["ShoalSealed"] == {}


def test_keys_written_while_locked_go_to_memory_and_are_sealed_again(tmp_path):
    """A manager joining a swarm with autolock (or renewing its key) writes its keys through the links:
    nothing plain reaches the data dir, and the sealed copy holds the new key."""
    data = tmp_path / "data"
    lock = KeyLock(data, runtime_root=tmp_path / "shm")
    key = autolock.new_key()
    lock.enable(key)  # before any key file exists
    write_file(data / "certificates" / "swarm-node.key", b"-----BEGIN PRIVATE KEY-----\nfirst\n")
    write_file(data / "certificates" / "swarm-data.key", b"-----BEGIN PRIVATE KEY-----\ndata\n")
    lock.reseal()
    assert _plain(data) == [] and (data / "certificates" / "swarm-node.key").is_symlink()
    write_file(data / "certificates" / "swarm-node.key", b"-----BEGIN PRIVATE KEY-----\nrenewed\n")
    lock.reseal()
    assert lock.read_sealed(key)["certificates/swarm-node.key"].endswith(b"renewed\n")
    for d in (data / "certificates", lock.runtime, lock.runtime / "certificates"):
        assert d.stat().st_mode & 0o777 == 0o700, d
    for f in (lock.runtime / "certificates" / "swarm-node.key", lock.sealed):
        assert f.stat().st_mode & 0o777 == 0o600, f
