"""X.509 for the swarm: keys, CSRs, root CAs, cross-signing, node certificates and what they say.

A node certificate names its node as swarmkit's do: CN = node ID, OU = ``swarm-worker`` or
``swarm-manager``, O = cluster ID; its DNS names are the role's OU and the node ID, and for a manager
also ``swarm-ca``. A client that must reach a manager checks the server for the name ``swarm-manager``
(a worker's certificate does not carry it). Every CA certificate carries a subject key identifier and
every certificate it issues the matching authority key identifier, so that a verifier holding two roots
of the same name (the old and the new one during a root rotation) picks the right issuer.
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLE_OU = {"worker": "swarm-worker", "manager": "swarm-manager"}
MANAGER_NAME = ROLE_OU["manager"]  # the name a client checks in a manager's certificate
CA_NAME = "swarm-ca"  # the name a joining node checks (managers only: they sign certificates)
ROOT_CN = "swarm-ca"
CA_EXPIRY = datetime.timedelta(days=20 * 365)
NODE_CERT_EXPIRY = datetime.timedelta(days=90)  # Docker's default (CAConfig.NodeCertExpiry)
BACKDATE = datetime.timedelta(minutes=5)  # against clocks a little behind (at most a tenth of the life)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> PrivateKey:
    """A PEM private key (ECDSA or RSA, unencrypted); ValueError otherwise."""
    try:
        key = serialization.load_pem_private_key(pem, None)
    except (TypeError, ValueError) as e:
        raise ValueError(f"malformed private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("malformed private key: only ECDSA and RSA keys are supported")
    return key


def make_csr(key: PrivateKey) -> bytes:
    """A CSR with no subject: the CA decides the node's identity."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def load_pems(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (ValueError when there is none or one is malformed)."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise ValueError(f"invalid certificate: {e}") from None


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    """The CA's subject key identifier: its own if it has one (an imported root may use another method)."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())  # type: ignore[arg-type]


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(issuer))


def _ca_extensions(builder: x509.CertificateBuilder, ski: x509.SubjectKeyIdentifier) -> x509.CertificateBuilder:
    return (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False))


def make_root_ca(cn: str = ROOT_CN, expiry: datetime.timedelta = CA_EXPIRY) -> tuple[bytes, bytes]:
    """A new self-signed root CA (ECDSA P-256): (certificate PEM, private key PEM)."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = utcnow() - BACKDATE
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(start + expiry))
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = _ca_extensions(builder, ski).sign(key, hashes.SHA256())
    return cert_pem(cert), key_pem(key)


def cross_sign(new_root_pem: bytes, old_root_pem: bytes, old_key_pem: bytes) -> bytes:
    """``new_root_pem``'s subject and key certified by the old root: the intermediate that lets nodes which
    trust only the old root verify certificates the new root issues (a root rotation's transition)."""
    new, old = load_pems(new_root_pem)[0], load_pems(old_root_pem)[0]
    old_key = load_key(old_key_pem)
    builder = (x509.CertificateBuilder().subject_name(new.subject).issuer_name(old.subject)
               .public_key(new.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(new.not_valid_before_utc).not_valid_after(new.not_valid_after_utc)
               .add_extension(_aki(old), critical=False))
    return cert_pem(_ca_extensions(builder, _ski(new)).sign(old_key, hashes.SHA256()))


@dataclass(frozen=True)
class Signer:
    """What issues certificates: the CA certificate and key, and the certificates (a cross-signed
    intermediate) sent after each leaf so that every node can build a chain to the root it trusts."""

    cert: bytes
    key: bytes
    chain: bytes = b""

    def issue(self, csr_pem: bytes, subject: x509.Name, sans: list[x509.GeneralName],
              expiry: datetime.timedelta, now: datetime.datetime | None = None) -> bytes:
        """A leaf for the CSR's key (server and client auth): its PEM followed by :attr:`chain`."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise ValueError(f"malformed CSR: {e}") from None
        if not csr.is_signature_valid:
            raise ValueError("invalid CSR signature")
        ca, ca_key = load_pems(self.cert)[0], load_key(self.key)
        start = (now or utcnow()) - min(BACKDATE, expiry / 10)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(ca.subject).public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after((now or utcnow()) + expiry)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(_aki(ca), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return cert_pem(builder.sign(ca_key, hashes.SHA256())) + self.chain


def node_sans(node_id: str, role: str) -> list[x509.GeneralName]:
    names = [ROLE_OU[role], node_id] + ([CA_NAME] if role == "manager" else [])
    return [x509.DNSName(n) for n in names]


def issue_node_cert(signer: Signer, csr_pem: bytes, node_id: str, role: str, cluster_id: str,
                    expiry: datetime.timedelta = NODE_CERT_EXPIRY, now: datetime.datetime | None = None) -> bytes:
    """A node certificate (CN = node ID, OU = role, O = cluster ID) for ``csr_pem``'s key."""
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, node_id),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_OU[role]),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
    ])
    return signer.issue(csr_pem, subject, node_sans(node_id, role), expiry, now)


def identity_of(cert_pem: bytes) -> tuple[str, str, str]:
    """(node ID, role, cluster ID) of a node certificate (the first of a chain)."""
    cert = load_pems(cert_pem)[0]

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


def validity(cert_pem: bytes) -> tuple[datetime.datetime, datetime.datetime]:
    """(not before, not after) of the first certificate, in UTC."""
    cert = load_pems(cert_pem)[0]
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def same_key(cert_pem: bytes, key_pem_: bytes) -> bool:
    """Whether the first certificate is for this private key."""
    cert = load_pems(cert_pem)[0]
    return _spki(cert) == load_key(key_pem_).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def issuer_of(chain_pem: bytes, trust_pem: bytes) -> x509.Certificate | None:
    """The certificate (from the chain after the leaf, or from the trusted roots) that signed the leaf."""
    leaf, *rest = load_pems(chain_pem)
    return next((c for c in rest + load_pems(trust_pem) if _signed_by(leaf, c)), None)


def chains_to(chain_pem: bytes, trust_pem: bytes, now: datetime.datetime | None = None) -> bool:
    """Whether the leaf of ``chain_pem`` (with the certificates after it as intermediates) leads to one of
    the roots of ``trust_pem`` by valid signatures, every certificate on the way in its validity period."""
    at = now or utcnow()
    leaf, *intermediates = load_pems(chain_pem)
    roots = load_pems(trust_pem)

    def current(c: x509.Certificate) -> bool:
        return c.not_valid_before_utc <= at <= c.not_valid_after_utc

    cert, seen = leaf, 0
    while current(cert) and seen <= len(intermediates):
        if any(_signed_by(cert, r) and current(r) for r in roots):
            return True
        nxt = next((i for i in intermediates if _signed_by(cert, i)), None)
        if nxt is None:
            return False
        cert, seen = nxt, seen + 1
    return False


def issuer_info(cert: x509.Certificate) -> tuple[str, str]:
    """(subject, public key) of an issuing CA as Docker's ``TLSInfo`` shows them: base64 of the DER."""
    return (base64.b64encode(cert.subject.public_bytes()).decode(), base64.b64encode(_spki(cert)).decode())


def tls_info(trust_pem: bytes, issuer: x509.Certificate | None) -> dict:
    """Docker's ``TLSInfo``: the trusted root(s) as PEM, and the subject and public key of the CA that
    issued (or, for the cluster, issues) the node certificates."""
    subject, public_key = issuer_info(issuer) if issuer is not None else ("", "")
    return {"TrustRoot": trust_pem.decode(), "CertIssuerSubject": subject, "CertIssuerPublicKey": public_key}
