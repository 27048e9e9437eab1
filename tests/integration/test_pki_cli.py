"""The swarm's PKI through the docker CLI (v28 and v20) on one shoald: `--cert-expiry` checked and
honoured, `docker swarm ca --rotate` (a new root, or one given with --ca-cert/--ca-key) converging with
Docker's progress output, and a locked manager whose data directory and backup reveal neither the join
tokens nor the CA key (a backup restored with the unlock key)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import DOCKER_V20, DOCKER_V28, SHOAL, free_port, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shoal.tls.certs import chains_to, load_pems, make_root_ca, validity

pytestmark = pytest.mark.integration


def swarm(d) -> dict:
    return d.request("GET", "/swarm")[2]


def node_tls(d) -> dict:
    return d.request("GET", "/nodes")[2][0]["Description"]["TLSInfo"]


def node_cert(d) -> bytes:
    return (d.data / "certificates" / "swarm-node.crt").read_bytes()


def test_cert_expiry_is_checked_and_used_for_the_next_certificate(shoald):
    cp = shoald.docker("swarm", "update", "--cert-expiry", "59m", check=False)
    assert cp.returncode != 0
    assert "minimum certificate expiry time is: 1h0m0s" in cp.stderr, cp.stderr
    status, _, body = shoald.request("POST", f"/swarm/update?version={swarm(shoald)['Version']['Index']}",
                                     {**swarm(shoald)["Spec"], "CAConfig": {"NodeCertExpiry": 10**9}})
    assert (status, body["message"]) == (
        400, "rpc error: code = InvalidArgument desc = minimum certificate expiry time is: 1h0m0s")
    shoald.docker("swarm", "update", "--cert-expiry", "3h")
    assert swarm(shoald)["Spec"]["CAConfig"]["NodeCertExpiry"] == 3 * 3600 * 10**9
    before = node_cert(shoald)
    shoald.docker("swarm", "ca", "--rotate", "-q")  # the node's next certificate has the new expiry
    nb, na = validity(node_cert(shoald))
    assert node_cert(shoald) != before and na - nb == datetime.timedelta(hours=3, minutes=5)
    shoald.docker("swarm", "update", "--cert-expiry", "2160h")


@pytest.mark.parametrize("cli", [DOCKER_V28, DOCKER_V20], ids=["v28", "v20"])
def test_swarm_ca_rotate(shoald, cli):
    before = swarm(shoald)
    tokens = before["JoinTokens"]
    assert node_tls(shoald) == before["TLSInfo"]
    cp = shoald.docker("swarm", "ca", "--rotate", cli=cli, timeout=60)
    after = swarm(shoald)
    root = after["TLSInfo"]["TrustRoot"]
    assert root != before["TLSInfo"]["TrustRoot"] and after["RootRotationInProgress"] is False
    assert len(load_pems(root.encode())) == 1  # the old root is dropped once every node has moved
    assert after["Spec"]["CAConfig"]["ForceRotate"] == before["Spec"]["CAConfig"].get("ForceRotate", 0) + 1
    # Docker's progress (two bars, converged), then the new root
    digest = hashlib.sha256(root.encode()).hexdigest()  # of the root it converged to (non-TTY: no bars)
    assert f"desired root digest: sha256:{digest}" in cp.stdout, cp.stdout
    assert "rotated TLS certificates" in cp.stdout and "rotated CA certificates" in cp.stdout
    assert cp.stdout.rstrip().endswith(root.strip())
    assert node_tls(shoald) == after["TLSInfo"]  # the node's certificate is from the new root, which it trusts
    pretty = shoald.docker("node", "inspect", "--pretty", "self", cli=cli).stdout
    assert after["TLSInfo"]["CertIssuerPublicKey"] in pretty and after["TLSInfo"]["CertIssuerSubject"] in pretty
    assert chains_to(node_cert(shoald), root.encode())
    for role in ("Worker", "Manager"):  # join tokens change with the root
        assert after["JoinTokens"][role].split("-")[2] != tokens[role].split("-")[2]
    assert shoald.docker("swarm", "join-token", "-q", "worker", cli=cli).stdout.strip() == after["JoinTokens"]["Worker"]
    shoald.docker("service", "ls", cli=cli)  # the manager still answers with its new identity


def root_files(tmp: Path) -> tuple[Path, Path, bytes, bytes]:
    cert, key = make_root_ca()
    (tmp / "ca.crt").write_bytes(cert)
    (tmp / "ca.key").write_bytes(key)
    return tmp / "ca.crt", tmp / "ca.key", cert, key


def test_swarm_ca_rotate_to_a_given_root(shoald, tmp_path):
    cert_file, key_file, cert, _key = root_files(tmp_path)
    cp = shoald.docker("swarm", "ca", "--rotate", "--ca-cert", str(cert_file), "--ca-key", str(key_file),
                       cli=DOCKER_V20, timeout=60)
    assert cp.stdout.rstrip().endswith(cert.decode().strip())
    assert swarm(shoald)["TLSInfo"]["TrustRoot"] == cert.decode()
    assert "SigningCAKey" not in json.dumps(swarm(shoald))  # never kept in the spec, never shown
    spec, version = swarm(shoald)["Spec"], swarm(shoald)["Version"]["Index"]
    for ca_config, message in (({"SigningCACert": cert.decode()}, "there must be at least one valid, reachable "
                                "external CA corresponding to the desired CA certificate"),
                               ({"SigningCAKey": "x"}, "if a signing CA key is provided, the signing CA cert must "
                                "also be provided")):
        status, _, body = shoald.request("POST", f"/swarm/update?version={version}",
                                         {**spec, "CAConfig": {**spec["CAConfig"], **ca_config}})
        assert (status, body["message"]) == (400, f"rpc error: code = InvalidArgument desc = {message}")
    cp = shoald.docker("swarm", "ca", "--ca-cert", str(cert_file), check=False)  # the CLI's own check
    assert cp.returncode != 0 and "--rotate" in cp.stderr


def private_bytes(key_pem: bytes) -> list[bytes]:
    """What of a private key must never be found: its PEM body lines and its raw private value."""
    key = serialization.load_pem_private_key(key_pem, None)
    body = [line for line in key_pem.splitlines() if line and not line.startswith(b"-----")]
    scalar = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    return [*body, scalar, base64.b64encode(scalar)]


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            found += [f"{p.relative_to(root)}: {n[:12]!r}" for n in needles if n in data]
    return found


def test_a_locked_manager_reveals_no_token_and_no_ca_key(fresh_shoald, tmp_path):
    d = fresh_shoald
    port = free_port()
    d.docker("swarm", "init", "--autolock", "--listen-addr", f"127.0.0.1:{port}",
             "--advertise-addr", f"127.0.0.1:{port}")
    unlock_key = d.docker("swarm", "unlock-key", "-q").stdout.strip()
    first_tokens = swarm(d)["JoinTokens"]  # those of swarm init: never in clear, even in etcd's history
    cert_file, key_file, cert, key = root_files(tmp_path)  # a root whose key the test knows
    d.docker("swarm", "ca", "--rotate", "--ca-cert", str(cert_file), "--ca-key", str(key_file), "-q", timeout=60)
    tokens = swarm(d)["JoinTokens"]
    backup = tmp_path / "swarm.backup"
    cp = subprocess.run([*SHOAL, "backup", str(backup), "--socket", d.sock], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert backup.stat().st_mode & 0o777 == 0o600 and backup.read_bytes()[:8] == b"SHOALBK1"

    d.kill(signal.SIGTERM)  # stopped: locked; what its disk holds
    needles = [t[-25:].encode() for t in (*tokens.values(), *first_tokens.values())]  # their secret parts
    needles += [unlock_key.encode(), unlock_key.removeprefix("SWMKEY-1-").encode(), *private_bytes(key)]
    assert files_holding(d.data, needles) == []
    assert [n[:12] for n in needles if n in backup.read_bytes()] == []
    assert (d.data / "etcd" / "member" / "snap" / "db").stat().st_size > 0  # etcd's own copy was searched too

    # a restore needs the data key: sealed under the unlock key while autolock is on
    restore = [*SHOAL, "restore", str(backup), "--data-dir", str(d.data)]
    cp = subprocess.run(restore, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1 and "--unlock-key" in cp.stderr
    cp = subprocess.run([*restore, "--unlock-key", "SWMKEY-1-" + "A" * 43], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1 and "invalid key provided" in cp.stderr
    cp = subprocess.run([*restore, "--unlock-key", unlock_key], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    d.start()
    cp = subprocess.run([DOCKER_V28, "swarm", "unlock"], input=unlock_key + "\n", capture_output=True, text=True,
                        env={**os.environ, "DOCKER_HOST": d.host}, timeout=120)
    assert cp.returncode == 0, cp.stderr
    wait_for(lambda: (r := d.request("GET", "/swarm"))[0] == 200 and r[2]["JoinTokens"] == tokens, 60,
             what="the restored swarm, its tokens opened with the restored data key")
    assert swarm(d)["TLSInfo"]["TrustRoot"] == cert.decode()
    assert x509.load_pem_x509_certificate(cert).subject == load_pems(node_cert(d))[0].issuer
