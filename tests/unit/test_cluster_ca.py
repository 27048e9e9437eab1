"""The cluster's CA and secrets as the managers keep them in the store: sealed under the data key, shown
by the API only as Docker shows them, rotated to a new root (swarmkit's checks and messages) and the
rotation finished by the leader once every node has moved; renewal answers; sealed backups."""

from __future__ import annotations

import asyncio
import copy
import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from fakeclock import settle

from shoal.cluster.messages import RenewRequest
from shoal.manager import ca, membership
from shoal.manager.backup_seal import BackupError, open_file, seal_file
from shoal.manager.ca_rotation import RotationReconciler, update_ca
from shoal.manager.control import ControlAPI
from shoal.manager.secrets import Sealer, new_data_key
from shoal.model.cluster import default_cluster_spec
from shoal.model.errors import APIError, InvalidArgument
from shoal.model.ids import new_id, now
from shoal.store.memory import MemoryStore
from shoal.store.objects import Objects
from shoal.tls.certs import (
    chains_to,
    identity_of,
    issuer_info,
    issuer_of,
    key_pem,
    load_key,
    load_pems,
    make_csr,
    make_root_ca,
    new_key,
    tls_info,
)


class Leader:
    """What the control API needs of its manager, over a memory store."""

    def __init__(self, objs: Objects, data_key: bytes, data_dir: Path) -> None:
        self.objs, self.key, self.data_dir = objs, data_key, data_dir
        self.node_id, self.is_leader, self.allocator, self.events = "m" * 25, True, None, None

    def data_key(self) -> bytes:
        return self.key

    def sealer(self) -> Sealer:
        return Sealer(self.key)

    def cluster_changed(self) -> None:
        pass


async def swarm(tmp_path: Path, nodes: int = 2) -> tuple[Objects, Leader, ca.RootCA]:
    """A store holding a cluster as ``swarm init`` makes it and ``nodes`` nodes described with their
    certificates' issuer."""
    objs = Objects(MemoryStore())
    await objs.start()
    leader = Leader(objs, new_data_key(), tmp_path)
    sealer = leader.sealer()
    root = ca.new_root_ca()
    cluster = {"ID": new_id(), "CreatedAt": now(), "UpdatedAt": now(), "Spec": default_cluster_spec(),
               "TLSInfo": {}, "RootRotationInProgress": False}
    ca.save(cluster, sealer, root)
    ca.new_tokens(cluster, sealer, root.cert)
    await objs.create("clusters", cluster)
    for i in range(nodes):
        await objs.create("nodes", {"ID": f"n{i}".ljust(25, "0"), "Spec": {"Role": "worker"}, "Status": {},
                                    "Description": {"TLSInfo": tls_info(root.cert, load_pems(root.cert)[0])}})
    return objs, leader, root


def cluster(objs: Objects) -> dict:
    return copy.deepcopy(objs.list("clusters")[0])


async def stored_bytes(objs: Objects) -> bytes:
    kvs, _ = await objs.store.range("")
    return b"\n".join(kv.key.encode() + b"=" + kv.value for kv in kvs)


async def test_the_cluster_secrets_are_sealed_in_the_store_and_shown_as_docker_shows_them(tmp_path: Path) -> None:
    objs, leader, root = await swarm(tmp_path)
    try:
        control = ControlAPI(leader)
        shown = control.cluster()
        tokens = shown["JoinTokens"]
        assert set(shown) == {"ID", "Version", "CreatedAt", "UpdatedAt", "Spec", "TLSInfo", "RootRotationInProgress",
                              "JoinTokens"}
        assert tokens["Worker"].startswith("SWMTKN-1-" + ca.ca_digest(root.cert))
        assert tokens["Worker"] != tokens["Manager"]
        assert shown["TLSInfo"]["TrustRoot"] == root.cert.decode() and "JoinTokens" not in control.cluster(False)
        raw = await stored_bytes(objs)
        key_body = b"".join(root.key.splitlines()[1:-1])
        for secret in (tokens["Worker"].encode(), tokens["Manager"].encode(), tokens["Worker"][-25:].encode(),
                       key_body, key_body[:32]):
            assert secret not in raw  # sealed: a copy of the store gives none of them away
        assert b"SWMTKN" not in raw and b"PRIVATE KEY" not in raw

        # swarm update: rotated tokens (with the current root), an expiry below Docker's minimum refused
        version = cluster(objs)["Version"]["Index"]
        await control.update_swarm(default_cluster_spec(), version, True, False, False)
        assert control.cluster()["JoinTokens"]["Worker"] != tokens["Worker"]
        assert control.cluster()["JoinTokens"]["Manager"] == tokens["Manager"]
        spec = {**default_cluster_spec(), "CAConfig": {"NodeCertExpiry": 59 * 60 * 10**9}}
        with pytest.raises(InvalidArgument) as e:
            await control.update_swarm(spec, cluster(objs)["Version"]["Index"], False, False, False)
        assert e.value.message == "rpc error: code = InvalidArgument desc = minimum certificate expiry time is: 1h0m0s"
    finally:
        await objs.stop()


async def test_a_root_rotation_finishes_once_every_node_has_a_certificate_of_the_new_root(tmp_path: Path) -> None:
    objs, leader, old = await swarm(tmp_path, nodes=2)
    sealer = leader.sealer()
    control = ControlAPI(leader)
    signer = ca.ClusterCA(lambda: objs, lambda: sealer)
    reconciler = asyncio.create_task(RotationReconciler(objs, sealer).run())
    try:
        tokens = control.cluster()["JoinTokens"]
        spec = {**default_cluster_spec(), "CAConfig": {"ForceRotate": 1}}  # `docker swarm ca --rotate`
        await control.update_swarm(spec, cluster(objs)["Version"]["Index"], False, False, False)
        await settle()
        c = control.cluster()
        assert c["RootRotationInProgress"] is True and c["TLSInfo"]["TrustRoot"] == old.cert.decode()
        assert c["Spec"]["CAConfig"]["ForceRotate"] == 1 and c["JoinTokens"] == tokens
        new = ca.load(cluster(objs), sealer).rotation
        assert new is not None and c["TLSInfo"]["CertIssuerPublicKey"] == issuer_info(load_pems(new.cert)[0])[1]

        # each node renews: a certificate of the new key, with the cross-signed root after it
        for i in range(2):
            key = new_key()
            chain = signer.sign(make_csr(key), f"n{i}".ljust(25, "0"), "worker")
            assert len(load_pems(chain)) == 2 and chains_to(chain, old.cert) and chains_to(chain, new.cert)
            assert identity_of(chain) == (f"n{i}".ljust(25, "0"), "worker", cluster(objs)["ID"])

            def described(n: dict, chain: bytes = chain) -> None:
                n["Description"] = {"TLSInfo": tls_info(old.cert, issuer_of(chain, old.cert))}

            await objs.modify("nodes", f"n{i}".ljust(25, "0"), described)
            await settle()
            assert control.cluster()["RootRotationInProgress"] is (i == 0)  # one node left, then none

        c = control.cluster()
        assert c["TLSInfo"] == tls_info(new.cert, load_pems(new.cert)[0])
        assert c["JoinTokens"]["Worker"].split("-")[2] == ca.ca_digest(new.cert) != tokens["Worker"].split("-")[2]
        assert c["JoinTokens"]["Manager"] != tokens["Manager"]
        after = signer.sign(make_csr(new_key()), "n0".ljust(25, "0"), "worker")
        assert len(load_pems(after)) == 1 and chains_to(after, new.cert) and not chains_to(after, old.cert)
    finally:
        reconciler.cancel()
        await objs.stop()


def _root_with(days: int = 3650) -> tuple[bytes, bytes]:
    return make_root_ca(expiry=datetime.timedelta(days=days))


def reissued(cert_pem: bytes, key: bytes) -> bytes:
    """A new self-signed certificate of the same name and key (a later expiry, say)."""
    old, k = load_pems(cert_pem)[0], load_key(key)
    start = datetime.datetime.now(datetime.UTC)
    new = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.subject).public_key(k.public_key())
           .serial_number(x509.random_serial_number()).not_valid_before(start)
           .not_valid_after(start + datetime.timedelta(days=4000))
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(k, hashes.SHA256()))
    return new.public_bytes(serialization.Encoding.PEM)


async def test_rotation_to_a_given_root_is_checked_as_swarmkit_checks_it(tmp_path: Path) -> None:
    objs, leader, old = await swarm(tmp_path, nodes=0)
    sealer = leader.sealer()
    try:
        c = cluster(objs)
        given = _root_with()
        other_key = key_pem(new_key())
        for cfg, message in (
            ({"SigningCAKey": given[1].decode()},
             "if a signing CA key is provided, the signing CA cert must also be provided"),
            ({"SigningCACert": given[0].decode()},
             "there must be at least one valid, reachable external CA corresponding to the desired CA certificate"),
            ({"SigningCACert": given[0].decode(), "SigningCAKey": other_key.decode()}, "certificate key mismatch"),
            ({"SigningCACert": (given[0] + old.cert).decode(), "SigningCAKey": given[1].decode()},
             "the desired CA certificate cannot contain multiple certificates"),
            ({"ExternalCAs": [{"Protocol": "cfssl", "URL": "https://ca.example"}]},
             "shoal does not support external CAs"),
        ):
            with pytest.raises(InvalidArgument) as e:
                update_ca(c, sealer, cfg)
            assert message in e.value.message, (cfg, e.value.message)
        short = _root_with(days=100)
        with pytest.raises(InvalidArgument, match="CA certificate expires too soon"):
            update_ca(c, sealer, {"SigningCACert": short[0].decode(), "SigningCAKey": short[1].decode()})
        assert ca.load(c, sealer).rotation is None  # nothing was changed by a refused update

        update_ca(c, sealer, {"SigningCACert": given[0].decode(), "SigningCAKey": given[1].decode()})
        rot = ca.load(c, sealer).rotation
        assert rot is not None and rot.cert == given[0] and rot.key == given[1]
        update_ca(c, sealer, {"SigningCACert": old.cert.decode(), "SigningCAKey": old.key.decode()})
        assert ca.load(c, sealer).rotation is None  # back to the current root: the rotation is abandoned
        again = reissued(old.cert, old.key)  # another certificate of the current root's key
        with pytest.raises(InvalidArgument, match="Cannot update to a cert with an identical key"):
            update_ca(c, sealer, {"SigningCACert": again.decode(), "SigningCAKey": old.key.decode()})
    finally:
        await objs.stop()


async def test_renewal_keeps_the_role_a_node_holds_and_refuses_a_removed_node(tmp_path: Path) -> None:
    objs, leader, root = await swarm(tmp_path, nodes=1)
    signer = ca.ClusterCA(lambda: objs, leader.sealer)
    nid = "n0".ljust(25, "0")
    try:
        req = RenewRequest(csr=make_csr(new_key()).decode())
        assert membership.renew(objs, signer, nid, "worker", req).role == "worker"
        assert membership.renew(objs, signer, nid, "manager", req).role == "worker"  # no longer an etcd member

        def manager(n: dict) -> None:
            n["Spec"]["Role"] = "manager"
            n["ManagerStatus"] = {"Leader": False, "Reachability": "reachable", "Addr": "10.0.0.9:2377"}

        await objs.modify("nodes", nid, manager)
        answer = membership.renew(objs, signer, nid, "manager", req)
        assert answer.role == "manager" and identity_of(answer.cert.encode())[1] == "manager"
        assert answer.trust_root == root.cert.decode()
        assert membership.renew(objs, signer, nid, "worker", req).role == "worker"  # promoted: /role, not /renew
        await objs.delete("nodes", objs.get("nodes", nid))
        with pytest.raises(APIError) as e:
            membership.renew(objs, signer, nid, "worker", req)
        assert e.value.status == 403 and "removed" in e.value.message
    finally:
        await objs.stop()


def test_a_backup_is_sealed_under_the_data_key(tmp_path: Path) -> None:
    plain, sealed, back = tmp_path / "snap.db", tmp_path / "backup", tmp_path / "back.db"
    data = os.urandom(2 * (1 << 20) + 77)  # three chunks
    plain.write_bytes(data)
    key = new_data_key()
    size = seal_file(plain, sealed, key)
    blob = sealed.read_bytes()
    assert size == len(blob) and data[:64] not in blob and sealed.stat().st_mode & 0o777 == 0o600
    open_file(sealed, back, key)
    assert back.read_bytes() == data and back.stat().st_mode & 0o777 == 0o600
    with pytest.raises(BackupError, match="not made with this swarm's data key"):
        open_file(sealed, back, new_data_key())
    for damaged in (blob[:-1], blob[: 8 + 16 + 4 + (1 << 20) + 16], blob[:100] + b"x" + blob[101:]):
        sealed.write_bytes(damaged)
        with pytest.raises(BackupError):
            open_file(sealed, back, key)
    sealed.write_bytes(b"not a backup")
    with pytest.raises(BackupError, match="not a backup made by `shoal backup`"):
        open_file(sealed, back, key)
