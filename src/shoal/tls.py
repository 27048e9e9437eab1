"""Node identities: keys, CSRs, certificates signed by the cluster CA, and the TLS contexts of the
cluster port (mutual TLS: CN = node ID, OU = role, O = cluster ID, as swarmkit does)."""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROLE_OU = {"worker": "swarm-worker", "manager": "swarm-manager"}
CERT_EXPIRY = datetime.timedelta(days=90)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR with no subject: the CA decides the node's identity."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def sign_csr(csr_pem: bytes, ca_cert_pem: bytes, ca_key_pem: bytes, node_id: str, role: str,
             cluster_id: str) -> bytes:
    """Issue a node certificate for ``csr_pem``'s key."""
    csr = x509.load_pem_x509_csr(csr_pem)
    if not csr.is_signature_valid:
        raise ValueError("invalid CSR signature")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, node_id),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_OU[role]),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
    ])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca_cert.subject).public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + CERT_EXPIRY)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(ROLE_OU[role]), x509.DNSName(node_id), x509.DNSName("swarm-ca")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                              x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def identity_of(cert_pem: bytes) -> tuple[str, str, str]:
    """(node ID, role, cluster ID) of a node certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)

    def attr(oid: x509.ObjectIdentifier) -> str:
        vals = cert.subject.get_attributes_for_oid(oid)
        return str(vals[0].value) if vals else ""

    ou = attr(NameOID.ORGANIZATIONAL_UNIT_NAME)
    role = next((r for r, o in ROLE_OU.items() if o == ou), "")
    return attr(NameOID.COMMON_NAME), role, attr(NameOID.ORGANIZATION_NAME)


def peer_identity(peercert: dict | None) -> tuple[str, str, str] | None:
    """(node ID, role, cluster ID) from ``ssl``'s decoded peer certificate, or None."""
    if not peercert:
        return None
    fields: dict[str, str] = {}
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            fields[key] = value
    role = next((r for r, o in ROLE_OU.items() if o == fields.get("organizationalUnitName")), "")
    return fields.get("commonName", ""), role, fields.get("organizationName", "")


@dataclass
class NodeTLS:
    """A node's certificate files under ``<data-dir>/certificates``."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "swarm-root-ca.crt"

    @property
    def cert(self) -> Path:
        return self.dir / "swarm-node.crt"

    @property
    def key(self) -> Path:
        return self.dir / "swarm-node.key"

    @property
    def ca_key(self) -> Path:
        """The root CA's key: on managers only."""
        return self.dir / "swarm-root-ca.key"

    def write_ca_key(self, key_pem: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key.write_bytes(key_pem)
        self.ca_key.chmod(0o600)

    def remove_ca_key(self) -> None:
        self.ca_key.unlink(missing_ok=True)

    def write(self, ca_pem: bytes, cert_pem: bytes, key: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca.write_bytes(ca_pem)
        self.cert.write_bytes(cert_pem)
        self.key.write_bytes(key)
        self.key.chmod(0o600)

    def server_context(self) -> ssl.SSLContext:
        """Cluster-port server: presents the node certificate; client certificates are checked
        when sent (joining nodes have none yet; every other endpoint requires one)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.check_hostname = False  # node certificates name node IDs, not addresses
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def ca_only_context(ca_pem: bytes) -> ssl.SSLContext:
    """Trust exactly this CA (a joining node, before it has a certificate)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode())
    ctx.check_hostname = False
    return ctx


def insecure_context() -> ssl.SSLContext:
    """Only for fetching the CA certificate, which is then checked against the join token's digest."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
