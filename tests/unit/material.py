"""Key material for tests: what the consul-keys provider makes, made here with `cryptography`.

The unit tests' mocks answer the key-material resource with it, and the live tests use it for a
CA the cluster does not trust. The provider itself is tested in provider/ (go test).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consul.generated import CA_VALIDITY_DAYS, SERVER_CERT_VALIDITY_DAYS

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


def create(inputs: dict[str, Any]) -> dict[str, Any]:
    """The outputs the provider's Create gives for the program's inputs (provider/material.go)."""
    outs: dict[str, Any] = {"gossip_key": gossip_key() if inputs.get("gossip") else None}
    ca: KeyPair | None = None
    if inputs.get("brought_ca"):
        ca = KeyPair(inputs["brought_ca"]["cert_pem"], inputs["brought_ca"]["key_pem"])
    elif inputs.get("ca"):
        ca = certificate_authority(inputs["ca"]["common_name"], int(inputs["ca"]["validity_days"]))
    outs |= {"ca_cert_pem": ca and ca.cert_pem, "ca_key_pem": ca and ca.key_pem, "ca_not_after": ca and not_after(ca.cert_pem)}
    request = inputs.get("server_cert")
    server = None
    if request and ca:
        server = server_certificate(
            ca, request["common_name"], request["dns_names"], request["ip_addresses"], int(request["validity_days"])
        )
    outs |= {
        "server_cert_pem": server and server.cert_pem,
        "server_key_pem": server and server.key_pem,
        "server_cert_not_after": server and not_after(server.cert_pem),
    }
    names = list(inputs.get("tokens") or ())
    return outs | {"token_secrets": {n: token_id() for n in names}, "token_accessors": {n: token_id() for n in names}}
