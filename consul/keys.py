"""Checks of the key material a stack brings in its settings (gossip key, CA).

The material the program generates comes from the consul-keys provider (provider/); these checks
run in the settings, before anything is declared, so bad material is refused with a clear message.
"""

from __future__ import annotations

import base64
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


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


_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def ca_certificates(bundle: str) -> list[str]:
    """The PEM certificates of a bundle, in order."""
    return _PEM_CERTIFICATE.findall(bundle)


def check_ca_bundle(bundle: str) -> str | None:
    """Why a bundle of PEM certificates is not a list of CA certificates, or None when it is."""
    found = ca_certificates(bundle)
    if not found or _PEM_CERTIFICATE.sub("", bundle).strip():
        return "must be one or more PEM certificates (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----) and nothing else"
    for number, pem in enumerate(found, 1):
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except (ValueError, x509.ExtensionNotFound):
            return f"certificate {number} is not a CA certificate (PEM X.509 with basicConstraints CA:TRUE)"
        if not constraints.ca:
            return f"certificate {number} is not a CA certificate (basicConstraints CA:FALSE)"
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
