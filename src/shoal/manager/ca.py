"""The swarm's root CA as the managers keep it, and its join tokens (``SWMTKN-1-<CA digest>-<secret>``).

It lives in the cluster object, so every manager signs with the same CA and a rotation reaches them all:
``ShoalCA`` (never shown by the API) holds the root certificate, during a root rotation the next root
and its cross-signed intermediate, and the ``ForceRotate`` value last acted on; the keys and the join
tokens are sealed under the cluster's data key (shoal.manager.sealed_fields). ``TLSInfo`` and
``RootRotationInProgress`` are kept in step for ``docker swarm inspect``. Root rotation itself is in
shoal.manager.ca_rotation.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shoal.manager import sealed_fields
from shoal.manager.secrets import Sealer
from shoal.model.errors import InvalidArgument, Unavailable
from shoal.model.ids import base36
from shoal.store.objects import Objects
from shoal.tls.certs import NODE_CERT_EXPIRY, Signer, issue_node_cert, load_pems, make_root_ca, tls_info

CA_FIELD = "ShoalCA"
MIN_NODE_CERT_EXPIRY = datetime.timedelta(hours=1)  # swarmkit's MinNodeCertExpiration
# a test-only floor below Docker's 1 h (seconds), so that a test can watch certificates renew
TEST_MIN_EXPIRY_ENV = "SHOAL_TEST_MIN_CERT_EXPIRY"


def ca_digest(cert_pem: bytes) -> str:
    """The CA certificate's SHA-256 digest in base36, as join tokens carry it (50 characters)."""
    der = load_pems(cert_pem)[0].public_bytes(serialization.Encoding.DER)
    return base36(int.from_bytes(hashlib.sha256(der).digest(), "big"), 50)


def join_token(cert_pem: bytes) -> str:
    return f"SWMTKN-1-{ca_digest(cert_pem)}-{base36(secrets.randbits(128), 25)}"


@dataclass
class Rotation:
    """The root a rotation moves to: its certificate and key, and the certificate of its key signed by
    the current root (the intermediate sent with the certificates it issues meanwhile)."""

    cert: bytes
    key: bytes
    cross_signed: bytes


@dataclass
class RootCA:
    """The cluster's CA, opened."""

    cert: bytes
    key: bytes
    rotation: Rotation | None = None
    last_forced: int = 0  # the CAConfig.ForceRotate last acted on

    def signer(self) -> Signer:
        """What issues node certificates: the next root during a rotation (with its cross-signed
        intermediate), else the root."""
        r = self.rotation
        return Signer(r.cert, r.key, r.cross_signed) if r else Signer(self.cert, self.key)

    def issuer(self) -> x509.Certificate:
        """The CA whose certificates every node should have."""
        return load_pems(self.rotation.cert if self.rotation else self.cert)[0]

    def tls_info(self) -> dict:
        """The cluster's ``TLSInfo`` (moby: the root as trust root, the issuer the rotation's target)."""
        return tls_info(self.cert, self.issuer())


def new_root_ca() -> RootCA:
    cert, key = make_root_ca()
    return RootCA(cert, key)


def load(cluster: dict, sealer: Sealer) -> RootCA:
    """The cluster's CA (Unavailable when the cluster object has none)."""
    public = cluster.get(CA_FIELD) or {}
    key = sealed_fields.get(cluster, sealer, "CAKey")
    if not public.get("CACert") or key is None:
        raise Unavailable("shoal: the cluster object holds no root CA")
    rot = public.get("Rotation")
    rotation = None
    if rot:
        rot_key = sealed_fields.get(cluster, sealer, "RotationCAKey") or b""
        rotation = Rotation(rot["CACert"].encode(), rot_key, rot["CrossSignedCACert"].encode())
    return RootCA(public["CACert"].encode(), key, rotation, int(public.get("LastForcedRotation") or 0))


def save(cluster: dict, sealer: Sealer, root: RootCA) -> None:
    """Write ``root`` into the cluster object (and its ``TLSInfo`` and ``RootRotationInProgress``)."""
    r = root.rotation
    cluster[CA_FIELD] = {
        "CACert": root.cert.decode(), "LastForcedRotation": root.last_forced,
        "Rotation": {"CACert": r.cert.decode(), "CrossSignedCACert": r.cross_signed.decode()} if r else None,
    }
    sealed_fields.put(cluster, sealer, "CAKey", root.key)
    sealed_fields.put(cluster, sealer, "RotationCAKey", r.key if r else None)
    cluster["TLSInfo"] = root.tls_info()
    cluster["RootRotationInProgress"] = r is not None


def tokens(cluster: dict, sealer: Sealer) -> dict[str, str]:
    """The join tokens, opened: ``{"Worker": ..., "Manager": ...}``."""
    raw = sealed_fields.get(cluster, sealer, "JoinTokens")
    return json.loads(raw) if raw else {"Worker": "", "Manager": ""}


def new_tokens(cluster: dict, sealer: Sealer, root_pem: bytes, which: tuple[str, ...] = ("Worker", "Manager")) -> None:
    """New join tokens (``which`` of them) for the root ``root_pem``."""
    current = tokens(cluster, sealer)
    for role in which:
        current[role] = join_token(root_pem)
    sealed_fields.put(cluster, sealer, "JoinTokens", json.dumps(current).encode())


def go_duration(td: datetime.timedelta) -> str:
    """A whole number of seconds as Go prints a time.Duration (``1h0m0s``, ``1m30s``, ``45s``)."""
    s = int(td.total_seconds())
    h, m, sec = s // 3600, s // 60 % 60, s % 60
    return f"{h}h{m}m{sec}s" if h else f"{m}m{sec}s" if m else f"{sec}s"


def min_node_cert_expiry() -> datetime.timedelta:
    """Docker's minimum (1 h), unless a test lowered it with ``SHOAL_TEST_MIN_CERT_EXPIRY``."""
    floor = os.environ.get(TEST_MIN_EXPIRY_ENV, "")
    return datetime.timedelta(seconds=float(floor)) if floor else MIN_NODE_CERT_EXPIRY


def check_node_cert_expiry(spec: dict) -> None:
    """``CAConfig.NodeCertExpiry`` (nanoseconds) must be at least the minimum (swarmkit's message)."""
    ns = (spec.get("CAConfig") or {}).get("NodeCertExpiry")
    if ns is None:
        return
    floor = min_node_cert_expiry()
    if not isinstance(ns, int) or datetime.timedelta(microseconds=ns / 1000) < floor:
        raise InvalidArgument(f"minimum certificate expiry time is: {go_duration(floor)}")


def node_cert_expiry(cluster: dict) -> datetime.timedelta:
    ns = ((cluster.get("Spec") or {}).get("CAConfig") or {}).get("NodeCertExpiry")
    return datetime.timedelta(microseconds=ns / 1000) if ns else NODE_CERT_EXPIRY


class ClusterCA:
    """The CA as one manager signs with it: read from its object cache, opened with the data key."""

    def __init__(self, objs: Callable[[], Objects], sealer: Callable[[], Sealer]) -> None:
        self._objs = objs
        self._sealer = sealer

    def _cluster(self) -> dict:
        clusters = self._objs().list("clusters")
        if not clusters:
            raise Unavailable("shoal: the cluster object is missing from the store")
        return clusters[0]

    def root(self) -> RootCA:
        return load(self._cluster(), self._sealer())

    def cert_pem(self) -> bytes:
        """The root every node trusts (a joining node checks it against its token)."""
        return (self._cluster().get(CA_FIELD) or {}).get("CACert", "").encode()

    def sign(self, csr_pem: bytes, node_id: str, role: str) -> bytes:
        """A node certificate with the cluster's expiry (ValueError for a bad CSR), and its chain."""
        cluster = self._cluster()
        root = load(cluster, self._sealer())
        return issue_node_cert(root.signer(), csr_pem, node_id, role, cluster["ID"], node_cert_expiry(cluster))
