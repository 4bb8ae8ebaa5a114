"""Key material generated once per stack, as one resource of this project's own provider.

:class:`KeyMaterial` holds everything the program generates (gossip key, CA, server certificate,
ACL token IDs) in the stack's state, as secret outputs. Each `pulumi up` keeps what is there and
generates only what is missing or due: a new token for a new name, the CA when its request
changes, the server certificate when its request or CA changes or when it expires within the
renewal window.

The provider is the Go plugin in provider/ (pulumi-resource-consul-keys), which
scripts/install-engine.sh builds and installs at PROVIDER_VERSION. A compiled plugin starts in
milliseconds; a Python dynamic provider costs every preview a second Python process that imports
gRPC and the Pulumi SDK before it answers (about half a second).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pulumi

# The provider plugin and its resource type; install-engine.sh installs the plugin at this version.
PROVIDER = "consul-keys"
PROVIDER_VERSION = "1.1.0"
RESOURCE_TYPE = f"{PROVIDER}:index:KeyMaterial"
PREVIOUS_TYPE = "pulumi-python:dynamic:Resource"

CA_VALIDITY_DAYS = 3650
SERVER_CERT_VALIDITY_DAYS = 825
SERVER_CERT_RENEW_BEFORE_DAYS = 30
CA_WARN_BEFORE_DAYS = 365

# Outputs (everything else in the state is the inputs, echoed).
GOSSIP_KEY = "gossip_key"
CA_CERT, CA_KEY, CA_NOT_AFTER = "ca_cert_pem", "ca_key_pem", "ca_not_after"
SERVER_CERT, SERVER_KEY, SERVER_NOT_AFTER = "server_cert_pem", "server_key_pem", "server_cert_not_after"
TOKEN_ACCESSORS, TOKEN_SECRETS = "token_accessors", "token_secrets"
OUTPUTS = (GOSSIP_KEY, CA_CERT, CA_KEY, CA_NOT_AFTER, SERVER_CERT, SERVER_KEY, SERVER_NOT_AFTER, TOKEN_ACCESSORS, TOKEN_SECRETS)
SECRET_OUTPUTS = [GOSSIP_KEY, CA_KEY, SERVER_KEY, TOKEN_SECRETS, "brought_ca"]


@dataclass(frozen=True)
class CertificateRequest:
    """What the server certificate says and how long it lives."""

    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    validity_days: int = SERVER_CERT_VALIDITY_DAYS
    renew_before_days: int = SERVER_CERT_RENEW_BEFORE_DAYS


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def expires_within(not_after: str | None, days: float, now: datetime.datetime | None = None) -> bool:
    """Whether an ISO-8601 expiry is less than `days` away (True when there is none)."""
    if not not_after:
        return True
    return datetime.datetime.fromisoformat(not_after) - (now or _now()) < datetime.timedelta(days=days)


class KeyMaterial(pulumi.CustomResource):
    """Every generated secret of one Consul cluster, kept (encrypted) in the stack's state.

    gossip: generate a gossip key (``gossip_key``).
    ca_common_name: generate a CA with this name (``ca_cert_pem``, ``ca_key_pem``, ``ca_not_after``),
        unless `brought_ca` (cert_pem, key_pem) gives one.
    server_cert: issue a server certificate from the CA (``server_cert_pem``, ``server_key_pem``,
        ``server_cert_not_after``), re-issued when it expires within ``renew_before_days``.
    tokens: names of ACL tokens to generate IDs for (``token_accessors``, ``token_secrets``: name -> UUID).
    """

    gossip_key: pulumi.Output[str | None]
    ca_cert_pem: pulumi.Output[str | None]
    ca_key_pem: pulumi.Output[str | None]
    ca_not_after: pulumi.Output[str | None]
    server_cert_pem: pulumi.Output[str | None]
    server_key_pem: pulumi.Output[str | None]
    server_cert_not_after: pulumi.Output[str | None]
    token_accessors: pulumi.Output[dict[str, str]]
    token_secrets: pulumi.Output[dict[str, str]]

    def __init__(
        self,
        name: str,
        *,
        gossip: bool = False,
        ca_common_name: str | None = None,
        brought_ca: tuple[str, pulumi.Input[str]] | None = None,
        server_cert: CertificateRequest | None = None,
        tokens: Sequence[str] = (),
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {name: None for name in OUTPUTS}
        props.update(
            gossip=gossip,
            ca={"common_name": ca_common_name, "validity_days": CA_VALIDITY_DAYS} if ca_common_name and not brought_ca else None,
            brought_ca={"cert_pem": brought_ca[0], "key_pem": brought_ca[1]} if brought_ca else None,
            server_cert={**asdict(server_cert), "dns_names": list(server_cert.dns_names), "ip_addresses": list(server_cert.ip_addresses)}
            if server_cert
            else None,
            tokens=list(tokens),
        )
        opts = pulumi.ResourceOptions.merge(
            opts,
            pulumi.ResourceOptions(
                additional_secret_outputs=SECRET_OUTPUTS,
                version=PROVIDER_VERSION,
                # Stacks deployed before this provider hold the same material as a Python dynamic
                # resource of the same name: the engine takes that state over, and the provider
                # finds nothing due, so no key, certificate or token changes.
                aliases=[pulumi.Alias(type_=PREVIOUS_TYPE)],
            ),
        )
        super().__init__(RESOURCE_TYPE, name, props, opts)
