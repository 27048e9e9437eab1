"""Root CA rotation (``docker swarm ca --rotate [--ca-cert --ca-key]``), as swarmkit does it.

A ``swarm update`` whose ``CAConfig`` asks for a new root (``ForceRotate`` changed, or a
``SigningCACert``/``SigningCAKey`` pair) starts a rotation (:func:`update_ca`): the new root's key is
certified by the current root (a cross-signed intermediate), and from then on every certificate is issued
by the new key with that intermediate after it, so nodes that still trust only the old root accept it.
Each node hears the desired issuer from the dispatcher and renews at once; its description shows the
issuer of its certificate. When every node of the store has a certificate from the new key, the leader's
:class:`RotationReconciler` makes the new root the root: the trust root changes, the join tokens are made
again for it, and the nodes replace their trusted root (the dispatcher tells them). A node that stays
down holds the rotation up, as in Docker: remove it (or bring it back) to finish.
"""

from __future__ import annotations

import datetime
import logging

from cryptography import x509

from shoal.manager import ca
from shoal.manager.controller import Controller
from shoal.manager.membership import cluster_of
from shoal.manager.secrets import Sealer
from shoal.model.errors import InvalidArgument
from shoal.model.ids import now
from shoal.model.views import NodeView
from shoal.store.objects import Objects
from shoal.tls.certs import (
    cert_pem,
    cross_sign,
    issuer_info,
    load_key,
    load_pems,
    make_root_ca,
    same_key,
    utcnow,
)

log = logging.getLogger(__name__)

MIN_ROOT_EXPIRY = datetime.timedelta(days=365)  # swarmkit's minRootExpiration
NO_EXTERNAL_CA = ("there must be at least one valid, reachable external CA corresponding to the desired CA "
                  "certificate")


def _check_root(cert_pem: bytes, key_pem: bytes) -> None:
    """A root given with ``--ca-cert/--ca-key``: one self-signed CA certificate, valid for a year more,
    and its key (swarmkit's checks and messages)."""
    try:
        certs = load_pems(cert_pem)
    except ValueError as e:
        raise InvalidArgument(f"invalid root certificates: {e}") from None
    if len(certs) != 1:
        raise InvalidArgument("the desired CA certificate cannot contain multiple certificates")
    cert = certs[0]
    try:
        cert.verify_directly_issued_by(cert)
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise ValueError("not a CA")
    except Exception as e:
        raise InvalidArgument(f"error while validating Root CA Certificate: x509: {e or 'not a self-signed CA'}") \
            from None
    try:
        load_key(key_pem)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    if not same_key(cert_pem, key_pem):
        raise InvalidArgument("certificate key mismatch")
    if cert.not_valid_after_utc < utcnow() + MIN_ROOT_EXPIRY:
        raise InvalidArgument("CA certificate expires too soon")


def _signing_pair(ca_config: dict) -> tuple[bytes, bytes]:
    """The signing certificate and key a ``CAConfig`` gives (both, or neither; no external CAs)."""
    cert = (ca_config.get("SigningCACert") or "").encode()
    key = (ca_config.get("SigningCAKey") or "").encode()
    if ca_config.get("ExternalCAs"):
        raise InvalidArgument("shoal does not support external CAs: give the new root's certificate and key "
                              "(--ca-cert, --ca-key)")
    if key and not cert:
        raise InvalidArgument("if a signing CA key is provided, the signing CA cert must also be provided")
    if cert and not key:
        raise InvalidArgument(NO_EXTERNAL_CA)
    if cert:
        _check_root(cert, key)
    return cert, key


def root_for_init(ca_config: dict) -> ca.RootCA:
    """``swarm init``'s root: the signing certificate and key given, else a new one."""
    cert, key = _signing_pair(ca_config)
    root = ca.RootCA(cert, key) if cert else ca.new_root_ca()
    root.last_forced = int(ca_config.get("ForceRotate") or 0)
    return root


def _rotate_to(root: ca.RootCA, cert: bytes, key: bytes, force: int) -> ca.RootCA:
    return ca.RootCA(root.cert, root.key, ca.Rotation(cert, key, cross_sign(cert, root.cert, root.key)), force)


def update_ca(cluster: dict, sealer: Sealer, ca_config: dict) -> None:
    """Apply a ``swarm update``'s ``CAConfig`` to the cluster's CA (swarmkit's validateCAConfig, without
    external CAs): ``ForceRotate`` changed → rotate to a new root; a signing cert and key → rotate to it
    (the current root: end any rotation; the rotation's root: keep it)."""
    cert, key = _signing_pair(ca_config)
    force = int(ca_config.get("ForceRotate") or 0)
    root = ca.load(cluster, sealer)
    if not cert:
        if force != root.last_forced:
            new_cert, new_key = make_root_ca()
            ca.save(cluster, sealer, _rotate_to(root, new_cert, new_key, force))
        return
    norm = cert_pem(load_pems(cert)[0])
    if norm == cert_pem(load_pems(root.cert)[0]):  # the current root: no rotation (any is abandoned)
        ca.save(cluster, sealer, ca.RootCA(root.cert, key, None, force))
        return
    if same_key(root.cert, key):
        raise InvalidArgument("Cannot update to a cert with an identical key")
    if root.rotation and norm == cert_pem(load_pems(root.rotation.cert)[0]):
        ca.save(cluster, sealer, ca.RootCA(root.cert, root.key, ca.Rotation(root.rotation.cert, key,
                                                                            root.rotation.cross_signed), force))
        return
    ca.save(cluster, sealer, _rotate_to(root, norm, key, force))


def has_issuer(node: NodeView, issuer: tuple[str, str]) -> bool:
    """Whether the node's description says its certificate was issued by ``issuer``."""
    info = (node.raw.get("Description") or {}).get("TLSInfo") or {}
    return (info.get("CertIssuerSubject"), info.get("CertIssuerPublicKey")) == issuer


def unconverged(objs: Objects, issuer: tuple[str, str]) -> list[str]:
    """IDs of the nodes whose certificate is not from ``issuer`` yet."""
    return [n.id for n in map(NodeView, objs.list("nodes")) if not has_issuer(n, issuer)]


def finish(cluster: dict, sealer: Sealer) -> None:
    """The rotation's root becomes the root; new join tokens for it."""
    root = ca.load(cluster, sealer)
    assert root.rotation is not None
    new = ca.RootCA(root.rotation.cert, root.rotation.key, None, root.last_forced)
    ca.save(cluster, sealer, new)
    ca.new_tokens(cluster, sealer, new.cert)


class RotationReconciler(Controller):
    """Leader only: finishes a root rotation once every node has a certificate from the new root."""

    kinds = ("nodes", "clusters")
    name = "ca-rotation"

    def __init__(self, objs: Objects, sealer: Sealer) -> None:
        super().__init__(objs)
        self.sealer = sealer

    async def reconcile(self, changes: set[tuple[str, str]] | None) -> None:
        cluster = cluster_of(self.objs)
        rotation = (cluster.get(ca.CA_FIELD) or {}).get("Rotation")
        if not rotation:
            return
        issuer = issuer_info(load_pems(rotation["CACert"].encode())[0])
        waiting = unconverged(self.objs, issuer)
        if waiting:
            log.debug("root rotation: %d nodes still have certificates from the old root", len(waiting))
            return

        def apply(c: dict) -> bool:
            if (c.get(ca.CA_FIELD) or {}).get("Rotation") != rotation:
                return False  # another rotation began meanwhile
            finish(c, self.sealer)
            c["UpdatedAt"] = now()
            return True

        await self.objs.modify("clusters", cluster["ID"], apply)
        log.info("root rotation complete: every node has a certificate from the new root")
