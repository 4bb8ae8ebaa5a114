"""Key material: the gossip key, the CA, server certificates and ACL token IDs.

Pure functions over the `cryptography` package; :mod:`consul.generated` runs them once per
stack inside a Pulumi dynamic resource, so the results live (encrypted) in the stack's state.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .generated import CA_VALIDITY_DAYS, SERVER_CERT_VALIDITY_DAYS

GOSSIP_KEY_BYTES = 32


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM (PKCS#8) private key."""

    cert_pem: str
    key_pem: str


def gossip_key() -> str:
    """A Consul gossip encryption key: 32 random bytes, base64."""
    return base64.b64encode(secrets.token_bytes(GOSSIP_KEY_BYTES)).decode()


def token_id() -> str:
    """A Consul ACL token SecretID or AccessorID (a random UUID)."""
    return str(uuid.uuid4())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def certificate_authority(common_name: str, validity_days: int = CA_VALIDITY_DAYS) -> KeyPair:
    """A self-signed ECDSA P-256 CA, allowed to sign certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _private_key_pem(key))


def server_certificate(
    ca: KeyPair,
    common_name: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    validity_days: int = SERVER_CERT_VALIDITY_DAYS,
) -> KeyPair:
    """An ECDSA P-256 certificate for the servers, signed by `ca`, for server and client auth."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _private_key_pem(key))


def not_after(cert_pem: str) -> str:
    """When a PEM certificate expires, as ISO 8601 (UTC)."""
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc.isoformat()


def check_gossip_key(text: str) -> str | None:
    """Why `text` is not a usable Consul gossip key, or None when it is (base64 of 16, 24 or 32 bytes)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return "is not base64"
    if len(raw) not in (16, 24, 32):
        return f"decodes to {len(raw)} bytes; Consul takes 16, 24 or 32 (generate one with `consul keygen`)"
    if base64.b64encode(raw).decode() != text:
        # Consul lists keys re-encoded: a key written otherwise could never be matched to it.
        return "is not in canonical base64 (generate one with `consul keygen`)"
    return None


def check_ca(cert_pem: str, key_pem: str) -> str | None:
    """Why a CA certificate and key cannot sign our server certificates, or None when they can."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return "the certificate is not a PEM X.509 certificate"
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        return "the key is not an unencrypted PEM private key"
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return "the key must be an ECDSA key"
    if cert.public_key() != key.public_key():
        return "the key does not belong to the certificate"
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "the certificate is not a CA (no basicConstraints)"
    if not constraints.ca:
        return "the certificate is not a CA (basicConstraints CA:FALSE)"
    return None
