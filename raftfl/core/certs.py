"""Certificates for a cluster: a CA, and one certificate per node or operator, as PEM bytes.

Why one CA per cluster: admission is "holds a certificate signed by this cluster's CA". etcd
checks it on client and peer connections (--client-cert-auth, --peer-client-cert-auth) and
the fleet transport checks it on every worker connection, so a host without one, or with one
from another cluster's CA, is refused before it can read, write, join or train. The
certificate's CN is the identity: etcd uses it as the user name for RBAC (`rbac.py`).

A node certificate serves all three roles (etcd client, etcd peer, fleet server and client),
so it carries both serverAuth and clientAuth and the node's address as its SANs. Keys are
ECDSA P-256: small and fast to handshake on edge devices. No I/O here: `raftfl/tls.py` writes
and reads the files.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raftfl.core.errors import RaftflError

CA_DAYS = 3650
LEAF_DAYS = 825
ROOT_CN = "root"  # etcd's administrative user: the CN of the admin certificate
OPERATOR_PREFIX = "operator-"  # an operator's CN: read-only on the cluster's prefix


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)  # clock skew


def make_ca(cluster: str) -> Issued:
    """A self-signed CA for `cluster` (CN `raftfl <cluster> CA`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"raftfl {cluster} CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"raftfl/{cluster}")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now()).not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    """IP addresses as IP SANs, names as DNS SANs, duplicates dropped, order kept."""
    out: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip("[]") for h in hosts if h):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def issue(ca: Issued, common_name: str, hosts: list[str]) -> Issued:
    """A certificate for `common_name` signed by `ca`, valid as TLS server and client for
    `hosts` (none for an operator, who only connects)."""
    if not common_name or len(common_name) > 64:
        raise RaftflError(f"invalid certificate name {common_name!r}: 1-64 characters")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise RaftflError("the CA key is not an ECDSA key raftfl made")
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(_now())
               .not_valid_after(_now() + datetime.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True,
                                            content_commitment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    sans = san_entries(hosts)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def common_name(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether `cert_pem` was issued by the CA in `ca_pem` (signature checked)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and kin
        return False
    return True


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(ip: str, secured: bool, insecure: bool) -> None:
    """Safe by default: plain text only on loopback, unless the operator says --insecure."""
    if secured or insecure or is_loopback(ip):
        return
    raise RaftflError(
        f"refusing to serve etcd and Flower on {ip} without TLS: create certificates "
        "(raftfl certs init/issue) and pass --certs DIR, or pass --insecure to run unauthenticated")
