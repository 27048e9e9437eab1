"""Certificates for etcd members and clients.

etcd checks peer and client-port certificates against the addresses in its URLs, so an etcd certificate
carries IP SANs (127.0.0.1 and the member's address). One ECDSA P-256 key and certificate serve as server,
peer and client certificate (etcd dials its peers, and its own client port, with it). shoald's managers
issue them from a CA of their own (not the swarm's root CA, whose certificates every worker holds), with
the common name :data:`MEMBER_CN` that etcd's ``--peer-cert-allowed-cn`` asks of every peer.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from shoal.store.etcd_member import EtcdTLS
from shoal.tls.certs import Signer, key_pem, make_csr, new_key
from shoal.tls.files import CERT_MODE, KEY_MODE, private_dir, write_file

CERT_EXPIRY = datetime.timedelta(days=90)
MEMBER_CN = "shoal-etcd-member"  # the CN of every manager's etcd certificate (--peer-cert-allowed-cn)


def issue_etcd_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    directory: str | Path,
    ips: Sequence[str] = ("127.0.0.1",),
    *,
    name: str = "etcd",
    cn: str = "",
    dns_names: Sequence[str] = (),
    expiry: datetime.timedelta = CERT_EXPIRY,
) -> tuple[EtcdTLS, EtcdTLS]:
    """Issue ``<name>.crt``/``<name>.key`` (CN ``cn``, or ``name``; SANs ``ips`` and ``dns_names``; server
    and client auth) signed by the CA, write them and ``ca.crt`` into ``directory`` (mode 0700, the key
    created 0600, each file replaced whole: etcd reads them again at each new connection), and return the
    (client, peer) :class:`EtcdTLS` for :class:`~shoal.store.etcd_member.EtcdMember` (both use the same
    files). For a client only, pass ``ips=()``."""
    key = new_key()
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    sans += [x509.DNSName(d) for d in dns_names]
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn or name)])
    cert = Signer(ca_cert_pem, ca_key_pem).issue(make_csr(key), subject, sans, expiry)
    out = private_dir(Path(directory))
    ca_path, cert_path, key_path = out / "ca.crt", out / f"{name}.crt", out / f"{name}.key"
    write_file(key_path, key_pem(key), KEY_MODE)
    write_file(cert_path, cert, CERT_MODE)
    write_file(ca_path, ca_cert_pem, CERT_MODE)
    tls = EtcdTLS(cert_path, key_path, ca_path)
    return tls, tls
