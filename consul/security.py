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

    gossip: Secret holding the gossip key under ``key`` and as the config file ``gossip.json``.
    ca: Secret holding the CA certificate under ``tls.crt``.
    server_tls: ``kubernetes.io/tls`` Secret with the server certificate (servers only).
    acl_tokens: Secret holding the agents' token config files.
    acl_file: which file of ``acl_tokens`` an agent loads; ``$(POD_NAME).json`` gives every server
        a token of its own (default: ``acl-tokens.json``, one file for the tier).
    """

    gossip: pulumi.Input[str] | None = None
    ca: pulumi.Input[str] | None = None
    server_tls: pulumi.Input[str] | None = None
    acl_tokens: pulumi.Input[str] | None = None
    acl_file: str = cfg.ACL_TOKENS_FILE_NAME
    checksum: pulumi.Input[str] | None = None
    """A digest of the Secrets' contents above but the gossip key's (not secret itself): in the pod
    template, so a new certificate or token file rolls the tier."""

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
    """Accessor IDs (public) of the tokens the ACL Job creates, and the Secret holding every SecretID.

    secret_name: the Secret with every token's SecretID, one key each (``token_key``).
    server_agents: (server node name, accessor ID): one agent token per server, with that node's
        identity only.
    client_agent_accessor: the client agents' token.
    services: (service name, accessor ID): one token per ``serviceTokens`` entry, with that
        service's identity.
    snapshot_accessor: the snapshot CronJob's token (key ``snapshot``), when snapshots are on.
    metrics_accessor: the metrics scrapers' token (key ``metrics``; policy ``consul-metrics``:
        agent:read, what /v1/agent/metrics asks).
    replication_accessor: the secondaries' ACL replication token (key ``replication``; policy
        ``consul-replication``), in the primary of a federation.
    """

    secret_name: pulumi.Input[str]
    server_agents: tuple[tuple[str, pulumi.Input[str]], ...]
    client_agent_accessor: pulumi.Input[str]
    services: tuple[tuple[str, pulumi.Input[str]], ...] = ()
    snapshot_accessor: pulumi.Input[str] | None = None
    metrics_accessor: pulumi.Input[str] | None = None
    replication_accessor: pulumi.Input[str] | None = None

    @staticmethod
    def server_key(node: str) -> str:
        return f"agent-{node}"

    @staticmethod
    def service_key(service: str) -> str:
        return f"service-{service}"


CLIENT_AGENT_KEY = "agent-client"
SNAPSHOT_TOKEN_KEY = "snapshot"
REPLICATION_TOKEN_KEY = "replication"
METRICS_TOKEN_KEY = "metrics"
SERVICE_TOKEN_KEY = "token"


def metrics_token_secret(instance: str) -> str:
    """The Secret a metrics scraper reads its token from (key ``token``)."""
    return f"{instance}-metrics-token"


def service_token_secret(instance: str, service: str) -> str:
    """The Secret a workload reads its service token from (key ``token``)."""
    return f"{instance}-service-token-{service}"


@dataclass(frozen=True)
class ConsulSecurityArgs:
    """Inputs of :class:`ConsulSecurity`.

    namespace: where the Secrets go (required).
    namespace_name: the namespace's name, for the server certificate's SANs (required).
    cluster: datacenter and domain, for the server certificate's ``server.<dc>.<domain>`` SAN.
    spec: which features are on, and any material brought by the user (default: all on, all generated).
    server_replicas: how many servers get an agent token of their own (default: 3).
    material: the generated material from :func:`declare_key_material` for the same inputs
        (default: declared here, as a child).
    """

    namespace: pulumi.Input[str]
    namespace_name: str
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    spec: SecuritySpec = field(default_factory=SecuritySpec)
    server_replicas: int = 3
    material: generated.KeyMaterial | None = None


def server_node_names(instance: str, replicas: int) -> list[str]:
    return [f"{instance}-server-{i}" for i in range(replicas)]


def acl_token_names(instance: str, spec: SecuritySpec, server_replicas: int) -> list[str]:
    """The ACL tokens generated for a cluster: management (unless brought), one per server, the
    clients', one per ``serviceTokens`` entry; none without ACLs."""
    if not spec.acls:
        return []
    return [
        *([] if spec.management_token else [MANAGEMENT_TOKEN_KEY]),
        *[AclTokenIds.server_key(node) for node in server_node_names(instance, server_replicas)],
        CLIENT_AGENT_KEY,
        *[AclTokenIds.service_key(service) for service in spec.service_tokens],
        METRICS_TOKEN_KEY,
        *([SNAPSHOT_TOKEN_KEY] if spec.snapshot_token else []),
        *([REPLICATION_TOKEN_KEY] if spec.declares_replication_token else []),
    ]


def declare_key_material(
    instance: str,
    spec: SecuritySpec,
    cluster: ClusterSpec,
    namespace_name: str,
    server_replicas: int,
    opts: pulumi.ResourceOptions | None = None,
) -> generated.KeyMaterial | None:
    """The one resource holding everything generated for `spec`, or None when nothing is.

    A program declares it first: it does not wait for any Kubernetes object, so the engine
    starts its provider while the rest of the program is still being declared.
    """
    generates_gossip = spec.gossip_encryption and spec.gossip_key is None
    if not (generates_gossip or spec.tls or spec.acls):
        return None
    brought_ca = (spec.ca_cert, pulumi.Output.secret(spec.ca_key.value)) if spec.tls and spec.ca_cert and spec.ca_key else None
    return generated.KeyMaterial(
        f"{instance}-key-material",
        gossip=generates_gossip,
        ca_common_name=f"Consul CA {cluster.datacenter}" if spec.tls else None,
        brought_ca=brought_ca,
        server_cert=generated.CertificateRequest(
            common_name=f"server.{cluster.datacenter}.{cluster.domain}",
            dns_names=tuple(server_dns_names(instance, namespace_name, cluster)),
            ip_addresses=("127.0.0.1",),
            validity_days=spec.certificates.validity_days,
            renew_before_days=spec.certificates.renew_before_days,
        )
        if spec.tls
        else None,
        tokens=acl_token_names(instance, spec, server_replicas),
        opts=opts,
    )


def _present(value: str | None) -> str:
    """A generated value the program asked for (the resource has it once created)."""
    return value or ""


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
        ca_not_after / server_cert_not_after: when they expire (ISO 8601), or None without TLS.
    """

    server_secrets: TierSecrets
    client_secrets: TierSecrets
    acl_tokens: AclTokenIds | None
    management_token: pulumi.Output[str | None]
    replication_token: pulumi.Output[str | None]
    ca_cert_pem: pulumi.Output[str | None]
    ca_not_after: pulumi.Output[str | None]
    server_cert_not_after: pulumi.Output[str | None]

    def __init__(self, name: str, args: ConsulSecurityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("consul:index:ConsulSecurity", name, None, opts)
        spec, cluster = args.spec, args.cluster
        namespace = pulumi.Output.from_input(args.namespace)
        child = pulumi.ResourceOptions(parent=self)
        labels = Labels(instance=name, component="security", version=cluster.version)

        contents: dict[str, dict[str, pulumi.Input[str]]] = {}

        def secret(object_name: str, string_data: dict[str, pulumi.Input[str]], secret_type: str = "Opaque") -> core.Secret:
            contents[object_name] = string_data
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
        self.replication_token = pulumi.Output.from_input(None)
        self.ca_cert_pem = pulumi.Output.from_input(None)
        self.ca_not_after = pulumi.Output.from_input(None)
        self.gossip_key: pulumi.Output[str] | None = None
        self.server_cert_not_after = pulumi.Output.from_input(None)

        server_nodes = server_node_names(name, args.server_replicas)
        token_names = acl_token_names(name, spec, args.server_replicas)
        material = args.material or declare_key_material(name, spec, cluster, args.namespace_name, args.server_replicas, child)

        if spec.gossip_encryption:
            key: pulumi.Input[str] = ""
            if spec.gossip_key is not None:
                key = spec.gossip_key.value
            elif material is not None:
                key = material.gossip_key.apply(_present)
            gossip_file = pulumi.Output.from_input(key).apply(cfg.gossip_file)
            gossip_name = secret(f"{name}-gossip", {GOSSIP_SECRET_KEY: key, cfg.GOSSIP_FILE_NAME: gossip_file}).metadata.name
            self.gossip_key = pulumi.Output.secret(key)

        if spec.tls and material is not None:
            # The signing CA, then the other CAs every agent trusts (a CA rotation's other CA).
            trusted = spec.trusted_ca_certs
            ca_cert = material.ca_cert_pem.apply(
                lambda pem: "".join(c.strip() + "\n" for c in (_present(pem), *trusted)) if trusted else _present(pem)
            )
            # The CA certificate is public, but kept in a Secret beside the rest.
            ca_name = secret(f"{name}-ca-cert", {"tls.crt": ca_cert}).metadata.name
            server_tls_name = secret(
                f"{name}-server-cert",
                {"tls.crt": material.server_cert_pem.apply(_present), "tls.key": material.server_key_pem.apply(_present)},
                "kubernetes.io/tls",
            ).metadata.name
            self.ca_cert_pem = pulumi.Output.from_input(ca_cert)
            self.ca_not_after = material.ca_not_after
            self.server_cert_not_after = material.server_cert_not_after

        if spec.acls and material is not None:
            token_secrets, token_accessors = material.token_secrets, material.token_accessors

            def secret_id(token: str) -> pulumi.Output[str]:
                return token_secrets.apply(lambda ids: ids[token])

            def accessor_id(token: str) -> pulumi.Output[str]:
                return pulumi.Output.unsecret(token_accessors.apply(lambda ids: ids[token]))

            management = pulumi.Output.secret(spec.management_token.value) if spec.management_token else secret_id(MANAGEMENT_TOKEN_KEY)
            tokens = secret(
                f"{name}-acl-tokens",
                {MANAGEMENT_TOKEN_KEY: management, **{token: secret_id(token) for token in token_names if token != MANAGEMENT_TOKEN_KEY}},
            )

            # A secondary datacenter's servers replicate ACLs (and have their Connect CA signed by
            # the primary) with the primary's replication token.
            replication: dict[str, pulumi.Output[str]] = (
                {"replication": pulumi.Output.secret(spec.replication_token.value)} if spec.replication_token else {}
            )

            def server_file(node: str) -> pulumi.Output[str]:
                tokens = pulumi.Output.all(initial_management=management, agent=secret_id(AclTokenIds.server_key(node)), **replication)
                return tokens.apply(cfg.acl_tokens_file)

            client_file = secret_id(CLIENT_AGENT_KEY).apply(lambda token: cfg.acl_tokens_file({"agent": token}))
            server_acl = secret(f"{name}-server-acl-config", {f"{node}.json": server_file(node) for node in server_nodes}).metadata.name
            # What of the servers' token files rolls them: only what they share (the management
            # token). A file added for a new server when scaling up must not restart the others.
            contents[f"{name}-server-acl-config"] = {MANAGEMENT_TOKEN_KEY: management, **replication}
            client_acl = secret(f"{name}-client-acl-config", {cfg.ACL_TOKENS_FILE_NAME: client_file}).metadata.name
            for service in spec.service_tokens:
                secret(service_token_secret(name, service), {SERVICE_TOKEN_KEY: secret_id(AclTokenIds.service_key(service))})
            secret(metrics_token_secret(name), {SERVICE_TOKEN_KEY: secret_id(METRICS_TOKEN_KEY)})
            self.acl_tokens = AclTokenIds(
                secret_name=tokens.metadata.name,
                server_agents=tuple((node, accessor_id(AclTokenIds.server_key(node))) for node in server_nodes),
                client_agent_accessor=accessor_id(CLIENT_AGENT_KEY),
                services=tuple((service, accessor_id(AclTokenIds.service_key(service))) for service in spec.service_tokens),
                snapshot_accessor=accessor_id(SNAPSHOT_TOKEN_KEY) if spec.snapshot_token else None,
                metrics_accessor=accessor_id(METRICS_TOKEN_KEY),
                replication_accessor=accessor_id(REPLICATION_TOKEN_KEY) if spec.declares_replication_token else None,
            )
            self.management_token = pulumi.Output.secret(management)
            if spec.declares_replication_token:
                self.replication_token = pulumi.Output.secret(secret_id(REPLICATION_TOKEN_KEY))

        def checksum(*names: str) -> pulumi.Output[str] | None:
            mounted = {n: contents[n] for n in names if n in contents}
            if not mounted:
                return None
            flat = [(n, k, v) for n, data in sorted(mounted.items()) for k, v in sorted(data.items())]
            digest = pulumi.Output.all(*[v for _, _, v in flat]).apply(
                lambda values: cfg.checksum({f"{n}/{k}": str(v) for (n, k, _), v in zip(flat, values, strict=True)})
            )
            # A SHA-256 of high-entropy material reveals none of it; kept visible so diffs show a roll.
            return pulumi.Output.unsecret(digest)

        # Not the gossip key: a new key reaches running agents through their keyring (see
        # consul.gossip_rotation), and restarting agents on it before that would cut them off.
        ca_secret = f"{name}-ca-cert"
        self.server_secrets = TierSecrets(
            gossip=gossip_name,
            ca=ca_name,
            server_tls=server_tls_name,
            acl_tokens=server_acl,
            acl_file="$(POD_NAME).json",
            checksum=checksum(ca_secret, f"{name}-server-cert", f"{name}-server-acl-config"),
        )
        self.client_secrets = TierSecrets(
            gossip=gossip_name, ca=ca_name, acl_tokens=client_acl, checksum=checksum(ca_secret, f"{name}-client-acl-config")
        )
        self.register_outputs(
            {
                "management_token": self.management_token,
                "ca_cert_pem": self.ca_cert_pem,
                "ca_not_after": self.ca_not_after,
                "server_cert_not_after": self.server_cert_not_after,
            }
        )
