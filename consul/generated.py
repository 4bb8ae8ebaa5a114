"""Key material generated once per stack, as Pulumi dynamic resources.

Each resource runs its generator when it is created and keeps the result in the stack's state
as a secret output; later runs reuse it. A resource is replaced (and its material generated
anew) only when one of its inputs changes, e.g. the server certificate when its SANs change,
or when the user asks with ``pulumi up --replace <urn>``.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider

# The generators run where the engine creates the resources (the dynamic-provider process, or
# the test mocks), so the program itself does not load `cryptography`: keys is imported there.
CA_VALIDITY_DAYS = 3650
SERVER_CERT_VALIDITY_DAYS = 825


class _Generator(ResourceProvider, abc.ABC):
    """Generates `outputs` from the other inputs on create; a change of any input replaces the resource."""

    outputs: tuple[str, ...] = ()

    @abc.abstractmethod
    def generate(self, props: Mapping[str, Any]) -> dict[str, Any]: ...

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=str(uuid.uuid4()), outs={**props, **self.generate(props)})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = sorted(k for k in news if not k.startswith("__") and k not in self.outputs and olds.get(k) != news.get(k))
        return DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=False)


class _GossipKeyGenerator(_Generator):
    outputs = ("key",)

    def generate(self, props: Mapping[str, Any]) -> dict[str, Any]:
        from . import keys

        return {"key": keys.gossip_key()}


class _TokenGenerator(_Generator):
    outputs = ("accessor_id", "secret_id")

    def generate(self, props: Mapping[str, Any]) -> dict[str, Any]:
        from . import keys

        return {"accessor_id": keys.token_id(), "secret_id": keys.token_id()}


class _CaGenerator(_Generator):
    outputs = ("cert_pem", "key_pem")

    def generate(self, props: Mapping[str, Any]) -> dict[str, Any]:
        from . import keys

        pair = keys.certificate_authority(props["common_name"], int(props["validity_days"]))
        return {"cert_pem": pair.cert_pem, "key_pem": pair.key_pem}


class _ServerCertGenerator(_Generator):
    outputs = ("cert_pem", "key_pem")

    def generate(self, props: Mapping[str, Any]) -> dict[str, Any]:
        from . import keys

        pair = keys.server_certificate(
            keys.KeyPair(props["ca_cert_pem"], props["ca_key_pem"]),
            props["common_name"],
            props["dns_names"],
            props["ip_addresses"],
            int(props["validity_days"]),
        )
        return {"cert_pem": pair.cert_pem, "key_pem": pair.key_pem}


def _secret_outputs(opts: pulumi.ResourceOptions | None, names: list[str]) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=names))


class GossipKey(Resource):
    """A Consul gossip key (``key``: 32 random bytes, base64; secret)."""

    key: pulumi.Output[str]

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(_GossipKeyGenerator(), name, {"key": None}, _secret_outputs(opts, ["key"]))


class AclToken(Resource):
    """The IDs of one Consul ACL token: ``accessor_id`` (public) and ``secret_id`` (secret)."""

    accessor_id: pulumi.Output[str]
    secret_id: pulumi.Output[str]

    def __init__(self, name: str, description: str, opts: pulumi.ResourceOptions | None = None) -> None:
        props = {"description": description, "accessor_id": None, "secret_id": None}
        super().__init__(_TokenGenerator(), name, props, _secret_outputs(opts, ["secret_id"]))


class CertificateAuthority(Resource):
    """A self-signed ECDSA P-256 CA (``cert_pem``, and ``key_pem`` as a secret)."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]

    def __init__(
        self, name: str, common_name: str, validity_days: int = CA_VALIDITY_DAYS, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        props = {"common_name": common_name, "validity_days": validity_days, "cert_pem": None, "key_pem": None}
        super().__init__(_CaGenerator(), name, props, _secret_outputs(opts, ["key_pem"]))


class ServerCertificate(Resource):
    """A server certificate signed by a CA (``cert_pem``, and ``key_pem`` as a secret)."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        ca_cert_pem: pulumi.Input[str],
        ca_key_pem: pulumi.Input[str],
        common_name: str,
        dns_names: pulumi.Input[Sequence[str]],
        ip_addresses: Sequence[str],
        validity_days: int = SERVER_CERT_VALIDITY_DAYS,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "ca_cert_pem": ca_cert_pem,
            "ca_key_pem": pulumi.Output.secret(ca_key_pem),
            "common_name": common_name,
            "dns_names": dns_names,
            "ip_addresses": list(ip_addresses),
            "validity_days": validity_days,
            "cert_pem": None,
            "key_pem": None,
        }
        super().__init__(_ServerCertGenerator(), name, props, _secret_outputs(opts, ["key_pem"]))
