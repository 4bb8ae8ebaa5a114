"""ConsulSecurity: gossip key, CA and server certificate, ACL tokens, and the Secrets that carry them."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes.core.v1 as core

from . import agent_config as cfg
from . import generated
from .labels import Labels
from .model import ClusterSpec, SecuritySpec

GOSSIP_SECRET_KEY = "key"
MANAGEMENT_TOKEN_KEY = "management"


@dataclass(frozen=True)
class TierSecrets:
    """The Secrets one tier mounts or reads; None where the feature is off.

    gossip: Secret holding the gossip key under ``key``.
    ca: Secret holding the CA certificate under ``tls.crt``.
    server_tls: ``kubernetes.io/tls`` Secret with the server certificate (servers only).
    acl_tokens: Secret holding the agent's token config file ``acl-tokens.json``.
    """

    gossip: pulumi.Input[str] | None = None
    ca: pulumi.Input[str] | None = None
    server_tls: pulumi.Input[str] | None = None
    acl_tokens: pulumi.Input[str] | None = None

    @property
    def features(self) -> SecuritySpec:
        """Which protections the agents' config turns on: exactly those whose Secrets exist."""
        return SecuritySpec(
            gossip_encryption=self.gossip is not None,
            tls=self.ca is not None,
            acls=self.acl_tokens is not None,
            network_policy=False,
        )


@dataclass(frozen=True)
class AclTokenIds:
    """Accessor IDs (public) of the agent tokens, and the Secret that holds every token's SecretID."""

    secret_name: pulumi.Input[str]
    server_agent_accessor: pulumi.Input[str]
    client_agent_accessor: pulumi.Input[str]


@dataclass(frozen=True)
class ConsulSecurityArgs:
    """Inputs of :class:`ConsulSecurity`.

    namespace: where the Secrets go (required).
    cluster: datacenter and domain, for the server certificate's ``server.<dc>.<domain>`` SAN.
    spec: which features are on, and any material brought by the user (default: all on, all generated).
    """

    namespace: pulumi.Input[str]
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    spec: SecuritySpec = field(default_factory=SecuritySpec)


def server_dns_names(instance: str, namespace: str, cluster: ClusterSpec) -> list[str]:
    """SANs of the server certificate: the name clients verify, the Services, every pod, localhost."""
    service, ui = f"{instance}-server", f"{instance}-ui"
    return [
        f"server.{cluster.datacenter}.{cluster.domain}",
        "localhost",
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"*.{service}",
        f"*.{service}.{namespace}",
        f"*.{service}.{namespace}.svc",
        ui,
        f"{ui}.{namespace}",
        f"{ui}.{namespace}.svc",
    ]


class ConsulSecurity(pulumi.ComponentResource):
    """Key material (generated once per stack, or brought by the user) and the Secrets carrying it.

    Outputs:
        server_secrets / client_secrets: the Secrets each tier uses (:class:`TierSecrets`).
        acl_tokens: the agent tokens' accessor IDs and their Secret, for the ACL bootstrap Job.
        management_token: the initial management token's SecretID (a Pulumi secret).
        ca_cert_pem: the CA certificate (public), for clients of the HTTPS API.
    """

    server_secrets: TierSecrets
    client_secrets: TierSecrets
    acl_tokens: AclTokenIds | None
    management_token: pulumi.Output[str | None]
    ca_cert_pem: pulumi.Output[str | None]

    def __init__(self, name: str, args: ConsulSecurityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("consul:index:ConsulSecurity", name, None, opts)
        spec, cluster = args.spec, args.cluster
        namespace = pulumi.Output.from_input(args.namespace)
        child = pulumi.ResourceOptions(parent=self)
        labels = Labels(instance=name, component="security", version=cluster.version)

        def secret(object_name: str, string_data: dict[str, pulumi.Input[str]], secret_type: str = "Opaque") -> core.Secret:
            return core.Secret(
                object_name,
                metadata=labels.metadata(object_name, namespace),
                type=secret_type,
                string_data={k: pulumi.Output.secret(v) for k, v in string_data.items()},
                opts=child,
            )

        gossip_name = ca_name = server_tls_name = server_acl = client_acl = None
        self.acl_tokens = None
        self.management_token = pulumi.Output.from_input(None)
        self.ca_cert_pem = pulumi.Output.from_input(None)

        if spec.gossip_encryption:
            key: pulumi.Input[str] = spec.gossip_key.value if spec.gossip_key else generated.GossipKey(f"{name}-gossip-key", opts=child).key
            gossip_name = secret(f"{name}-gossip", {GOSSIP_SECRET_KEY: key}).metadata.name

        if spec.tls:
            if spec.ca_cert and spec.ca_key:
                ca_cert: pulumi.Input[str] = spec.ca_cert
                ca_key: pulumi.Input[str] = pulumi.Output.secret(spec.ca_key.value)
            else:
                ca = generated.CertificateAuthority(f"{name}-ca", common_name=f"Consul CA {cluster.datacenter}", opts=child)
                ca_cert, ca_key = ca.cert_pem, ca.key_pem
            certificate = generated.ServerCertificate(
                f"{name}-server-cert",
                ca_cert_pem=ca_cert,
                ca_key_pem=ca_key,
                common_name=f"server.{cluster.datacenter}.{cluster.domain}",
                dns_names=namespace.apply(lambda ns: server_dns_names(name, ns, cluster)),
                ip_addresses=["127.0.0.1"],
                opts=child,
            )
            # The CA certificate is public, but kept in a Secret beside the rest.
            ca_name = secret(f"{name}-ca-cert", {"tls.crt": ca_cert}).metadata.name
            server_tls_name = secret(
                f"{name}-server-cert",
                {"tls.crt": certificate.cert_pem, "tls.key": certificate.key_pem},
                "kubernetes.io/tls",
            ).metadata.name
            self.ca_cert_pem = pulumi.Output.from_input(ca_cert)

        if spec.acls:
            management = (
                pulumi.Output.secret(spec.management_token.value)
                if spec.management_token
                else generated.AclToken(f"{name}-management-token", "initial management token", opts=child).secret_id
            )
            server_agent = generated.AclToken(f"{name}-server-agent-token", "agent token of the servers", opts=child)
            client_agent = generated.AclToken(f"{name}-client-agent-token", "agent token of the client agents", opts=child)
            tokens = secret(
                f"{name}-acl-tokens",
                {MANAGEMENT_TOKEN_KEY: management, "server-agent": server_agent.secret_id, "client-agent": client_agent.secret_id},
            )
            server_file = pulumi.Output.all(management, server_agent.secret_id).apply(
                lambda ids: cfg.acl_tokens_file({"initial_management": ids[0], "agent": ids[1]})
            )
            client_file = client_agent.secret_id.apply(lambda token: cfg.acl_tokens_file({"agent": token}))
            server_acl = secret(f"{name}-server-acl-config", {cfg.ACL_TOKENS_FILE_NAME: server_file}).metadata.name
            client_acl = secret(f"{name}-client-acl-config", {cfg.ACL_TOKENS_FILE_NAME: client_file}).metadata.name
            self.acl_tokens = AclTokenIds(
                secret_name=tokens.metadata.name,
                server_agent_accessor=server_agent.accessor_id,
                client_agent_accessor=client_agent.accessor_id,
            )
            self.management_token = pulumi.Output.secret(management)

        self.server_secrets = TierSecrets(gossip=gossip_name, ca=ca_name, server_tls=server_tls_name, acl_tokens=server_acl)
        self.client_secrets = TierSecrets(gossip=gossip_name, ca=ca_name, acl_tokens=client_acl)
        self.register_outputs({"management_token": self.management_token, "ca_cert_pem": self.ca_cert_pem})
