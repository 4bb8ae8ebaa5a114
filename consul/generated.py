"""Key material generated once per stack, as one Pulumi dynamic resource.

:class:`KeyMaterial` holds everything the program generates (gossip key, CA, server certificate,
ACL token IDs) in the stack's state, as secret outputs. Each `pulumi up` keeps what is there and
generates only what is missing or due: a new token for a new name, the CA when its request
changes, the server certificate when its request or CA changes or when it expires within the
renewal window.

This module is what the dynamic-provider process imports to run the provider, so it imports
nothing beyond `pulumi` and the standard library; `cryptography` (in :mod:`consul.keys`) is
loaded only when a certificate is actually generated.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

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


def _certificate_fields(request: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the certificate itself says: the renewal window is not part of it."""
    return None if request is None else {k: v for k, v in request.items() if k != "renew_before_days"}


def due(olds: Mapping[str, Any], news: Mapping[str, Any], now: datetime.datetime | None = None) -> list[str]:
    """The parts of the material an update must generate anew: ``gossip``, ``ca``, ``server_cert``,
    ``tokens``, or ``dropped`` (a part switched off, or a token no longer asked for)."""
    parts = []
    if news.get("gossip") and not olds.get(GOSSIP_KEY):
        parts.append("gossip")
    wants_ca = news.get("ca") is not None or news.get("brought_ca") is not None
    ca_changed = news.get("ca") != olds.get("ca") or news.get("brought_ca") != olds.get("brought_ca")
    if wants_ca and (ca_changed or not olds.get(CA_CERT)):
        parts.append("ca")
    request = news.get("server_cert")
    if request is not None and (
        "ca" in parts
        or _certificate_fields(request) != _certificate_fields(olds.get("server_cert"))
        or expires_within(olds.get(SERVER_NOT_AFTER), request["renew_before_days"], now)
    ):
        parts.append("server_cert")
    if set(news.get("tokens") or ()) - set(olds.get(TOKEN_SECRETS) or {}):
        parts.append("tokens")
    dropped = (
        (olds.get(GOSSIP_KEY) and not news.get("gossip"))
        or (olds.get(CA_CERT) and not wants_ca)
        or (olds.get(SERVER_CERT) and request is None)
        or set(olds.get(TOKEN_SECRETS) or {}) - set(news.get("tokens") or ())
    )
    if dropped:
        parts.append("dropped")
    return parts


def generate(olds: Mapping[str, Any], news: Mapping[str, Any], parts: Sequence[str]) -> dict[str, Any]:
    """The outputs for inputs `news`: what `parts` names generated anew, the rest kept from `olds`."""
    outs: dict[str, Any] = {name: olds.get(name) for name in OUTPUTS}
    if not news.get("gossip"):
        outs[GOSSIP_KEY] = None
    elif "gossip" in parts:
        from . import keys

        outs[GOSSIP_KEY] = keys.gossip_key()
    if news.get("ca") is None and news.get("brought_ca") is None:
        outs[CA_CERT] = outs[CA_KEY] = outs[CA_NOT_AFTER] = None
    elif "ca" in parts:
        from . import keys

        brought = news.get("brought_ca")
        if brought is not None:
            pair = keys.KeyPair(brought["cert_pem"], brought["key_pem"])
        else:
            pair = keys.certificate_authority(news["ca"]["common_name"], int(news["ca"]["validity_days"]))
        outs[CA_CERT], outs[CA_KEY], outs[CA_NOT_AFTER] = pair.cert_pem, pair.key_pem, keys.not_after(pair.cert_pem)
    request = news.get("server_cert")
    if request is None:
        outs[SERVER_CERT] = outs[SERVER_KEY] = outs[SERVER_NOT_AFTER] = None
    elif "server_cert" in parts:
        from . import keys

        pair = keys.server_certificate(
            keys.KeyPair(outs[CA_CERT], outs[CA_KEY]),
            request["common_name"],
            request["dns_names"],
            request["ip_addresses"],
            int(request["validity_days"]),
        )
        outs[SERVER_CERT], outs[SERVER_KEY], outs[SERVER_NOT_AFTER] = pair.cert_pem, pair.key_pem, keys.not_after(pair.cert_pem)
    old_secrets, old_accessors = olds.get(TOKEN_SECRETS) or {}, olds.get(TOKEN_ACCESSORS) or {}
    names = list(news.get("tokens") or ())
    outs[TOKEN_SECRETS] = {n: old_secrets.get(n) or str(uuid.uuid4()) for n in names}
    outs[TOKEN_ACCESSORS] = {n: old_accessors.get(n) or str(uuid.uuid4()) for n in names}
    return outs


class _KeyMaterialProvider(ResourceProvider):
    """Create generates every part; an update generates only the parts :func:`due` names."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=str(uuid.uuid4()), outs={**props, **generate({}, props, ["gossip", "ca", "server_cert", "tokens"])})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        parts = due(olds, news)
        # The CA stays what it is unless its request changes: kept known in previews, so the
        # program can warn about its expiry even when something else is due.
        stables = [] if "ca" in parts else [CA_CERT, CA_NOT_AFTER]
        return DiffResult(changes=bool(parts), replaces=[], stables=stables, delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, **generate(olds, news, due(olds, news))})


class KeyMaterial(Resource):
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
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS))
        super().__init__(_KeyMaterialProvider(), name, props, opts)
