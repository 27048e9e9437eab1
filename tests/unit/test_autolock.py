"""Autolock's key handling on a data dir: keys in memory, sealed on disk, unlock, rotation, turn off."""

from __future__ import annotations

import pytest

from shoal.manager import autolock
from shoal.manager.ca import make_root_ca
from shoal.model.errors import BadRequest
from shoal.node.keylock import KeyLock


def _data_dir(tmp_path):
    data = tmp_path / "data"
    (data / "certificates").mkdir(parents=True)
    (data / "certificates" / "swarm-node.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnode\n")
    (data / "certificates" / "swarm-root-ca.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nca\n")
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
    assert (data / "certificates" / "swarm-root-ca.key").read_bytes().endswith(b"ca\n")  # through the link
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
    assert _plain(data) == ["certificates/swarm-node.key", "certificates/swarm-root-ca.key"]


def test_cluster_unlock_key_follows_the_spec():
    _, ca_key = make_root_ca()
    cluster = {"Spec": {"EncryptionConfig": {"AutoLockManagers": False}}}
    autolock.update_cluster(cluster, ca_key)
    assert autolock.FIELD not in cluster and autolock.unlock_key(cluster, ca_key) is None
    cluster["Spec"]["EncryptionConfig"]["AutoLockManagers"] = True
    autolock.update_cluster(cluster, ca_key)
    first = autolock.unlock_key(cluster, ca_key)
    assert first and len(first) == 32
    autolock.update_cluster(cluster, ca_key)
    assert autolock.unlock_key(cluster, ca_key) == first  # unchanged without rotation
    autolock.update_cluster(cluster, ca_key, rotate=True)
    assert autolock.unlock_key(cluster, ca_key) not in (None, first)
    _, other_ca = make_root_ca()
    with pytest.raises(autolock.InvalidUnlockKey):
        autolock.unlock_key(cluster, other_ca)
    cluster["Spec"]["EncryptionConfig"]["AutoLockManagers"] = False
    autolock.update_cluster(cluster, ca_key)
    assert autolock.FIELD not in cluster
