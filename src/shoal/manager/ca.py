"""The cluster root CA and join tokens (``SWMTKN-1-<CA digest>-<secret>``)."""

from __future__ import annotations

import datetime
import hashlib
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.model.ids import base36
from shoal.tls import NodeTLS, sign_csr

ROOT_CN = "swarm-ca"
CA_EXPIRY = datetime.timedelta(days=20 * 365)


def make_root_ca() -> tuple[bytes, bytes]:
    """A new self-signed root CA: (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN)])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + CA_EXPIRY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def ca_digest(cert_pem: bytes) -> str:
    """The CA certificate's SHA-256 digest in base36, as join tokens carry it (50 characters)."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return base36(int.from_bytes(hashlib.sha256(der).digest(), "big"), 50)


def join_token(cert_pem: bytes) -> str:
    return f"SWMTKN-1-{ca_digest(cert_pem)}-{base36(secrets.randbits(128), 25)}"


def tls_info(cert_pem: bytes) -> dict:
    cert = x509.load_pem_x509_certificate(cert_pem)
    pub = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    return {
        "TrustRoot": cert_pem.decode(),
        "CertIssuerSubject": base64.b64encode(cert.subject.public_bytes()).decode(),
        "CertIssuerPublicKey": base64.b64encode(pub).decode(),
    }


class ClusterCA:
    """The swarm's root CA as a manager holds it: the certificate and key files in its TLS directory."""

    def __init__(self, tls: NodeTLS) -> None:
        self.tls = tls

    def cert_pem(self) -> bytes:
        return self.tls.ca.read_bytes()

    def key_pem(self) -> bytes:
        return self.tls.ca_key.read_bytes()

    def sign(self, csr_pem: bytes, node_id: str, role: str, cluster_id: str) -> bytes:
        """A node certificate (CN = node ID, OU = role, O = cluster ID); ValueError for a bad CSR."""
        return sign_csr(csr_pem, self.cert_pem(), self.key_pem(), node_id, role, cluster_id)
