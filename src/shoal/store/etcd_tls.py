"""Certificates for etcd members and clients, issued by the cluster CA.

Node certificates (:mod:`shoal.tls`) name node IDs only; etcd checks peer and client-port certificates
against the addresses in its URLs, so an etcd certificate carries IP SANs (127.0.0.1 and the member's
address). One ECDSA P-256 key and certificate serve as server, peer and client certificate (etcd dials
its peers, and its own client port, with it).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.store.etcd_member import EtcdTLS

__all__ = ["issue_etcd_cert"]

CERT_EXPIRY = datetime.timedelta(days=90)


def issue_etcd_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    directory: str | Path,
    ips: Sequence[str] = ("127.0.0.1",),
    *,
    name: str = "etcd",
    dns_names: Sequence[str] = (),
    expiry: datetime.timedelta = CERT_EXPIRY,
) -> tuple[EtcdTLS, EtcdTLS]:
    """Issue ``<name>.crt``/``<name>.key`` (CN ``name``, SANs ``ips`` and ``dns_names``, server and
    client auth) signed by the CA, write them and ``ca.crt`` into ``directory``, and return the
    (client, peer) :class:`EtcdTLS` for :class:`~shoal.store.etcd_member.EtcdMember` (both use the same
    files). For a client only, pass ``ips=()``."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the CA key must be an ECDSA or RSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    sans += [x509.DNSName(d) for d in dns_names]
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + expiry)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = out / "ca.crt", out / f"{name}.crt", out / f"{name}.key"
    ca_path.write_bytes(ca_cert_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.chmod(0o600)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    tls = EtcdTLS(cert_path, key_path, ca_path)
    return tls, tls
