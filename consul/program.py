"""The Pulumi program: read the stack's settings, declare Consul, export what consumers need."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from .acl_bootstrap import ConsulAclBootstrap, ConsulAclBootstrapArgs
from .clients import ConsulClients, ConsulClientsArgs
from .generated import CA_WARN_BEFORE_DAYS, expires_within
from .gossip_rotation import ConsulGossipRotation, ConsulGossipRotationArgs
from .labels import APP_NAME
from .namespace import consul_namespace
from .security import ConsulSecurity, ConsulSecurityArgs, declare_key_material
from .servers import ConsulServers, ConsulServersArgs
from .settings import PROJECT, Settings, load_settings, secret_config_keys, stack_config
from .snapshots import ConsulSnapshots, ConsulSnapshotsArgs

INSTANCE = "consul"


def warn_if_ca_expires(not_after: str | None) -> None:
    """Every preview and up warns while the CA has less than a year left."""
    if not_after and expires_within(not_after, CA_WARN_BEFORE_DAYS):
        pulumi.log.warn(
            f"the Consul CA expires on {not_after[:10]}, in less than {CA_WARN_BEFORE_DAYS} days: "
            "rotate it as the README's operations guide says (Certificates)"
        )


def deploy(settings: Settings) -> Mapping[str, pulumi.Output[object]]:
    """Declare every resource for validated settings and return the stack outputs."""
    material = declare_key_material(INSTANCE, settings.security, settings.cluster, settings.namespace, settings.servers.replicas)
    namespace: pulumi.Input[str] = settings.namespace
    if settings.create_namespace:
        ns = consul_namespace(
            settings.namespace,
            {"app.kubernetes.io/part-of": APP_NAME, "app.kubernetes.io/managed-by": "pulumi"},
            host_access=settings.clients.uses_host_namespace,
        )
        namespace = ns.metadata.name
    security = ConsulSecurity(
        INSTANCE,
        ConsulSecurityArgs(
            namespace=namespace,
            namespace_name=settings.namespace,
            cluster=settings.cluster,
            spec=settings.security,
            server_replicas=settings.servers.replicas,
            material=material,
        ),
    )
    security.ca_not_after.apply(warn_if_ca_expires)
    network_policy = settings.security.network_policy
    servers = ConsulServers(
        INSTANCE,
        ConsulServersArgs(
            namespace=namespace,
            cluster=settings.cluster,
            spec=settings.servers,
            ui=settings.ui,
            secrets=security.server_secrets,
            network_policy=network_policy,
        ),
    )
    clients = ConsulClients(
        INSTANCE,
        ConsulClientsArgs(
            namespace=namespace,
            retry_join=servers.retry_join,
            cluster=settings.cluster,
            spec=settings.clients,
            dns=settings.dns,
            secrets=security.client_secrets,
            network_policy=network_policy,
        ),
    )
    if security.acl_tokens is not None:
        ConsulAclBootstrap(
            INSTANCE,
            ConsulAclBootstrapArgs(
                namespace=namespace,
                tokens=security.acl_tokens,
                server_service=servers.service_name,
                ca_secret=security.server_secrets.ca,
                cluster=settings.cluster,
            ),
            opts=pulumi.ResourceOptions(depends_on=[servers]),
        )
    if security.gossip_key is not None and security.server_secrets.gossip is not None:
        ConsulGossipRotation(
            INSTANCE,
            ConsulGossipRotationArgs(
                namespace=namespace,
                gossip_secret=security.server_secrets.gossip,
                gossip_key=security.gossip_key,
                server_service=servers.service_name,
                ca_secret=security.server_secrets.ca,
                tokens_secret=security.acl_tokens.secret_name if security.acl_tokens else None,
                cluster=settings.cluster,
            ),
            opts=pulumi.ResourceOptions(depends_on=[servers]),
        )
    if settings.snapshots.enabled:
        ConsulSnapshots(
            INSTANCE,
            ConsulSnapshotsArgs(
                namespace=namespace,
                server_service=servers.service_name,
                spec=settings.snapshots,
                ca_secret=security.server_secrets.ca,
                tokens_secret=security.acl_tokens.secret_name if security.acl_tokens else None,
                cluster=settings.cluster,
            ),
        )
    return {
        "namespace": servers.namespace,
        "datacenter": servers.datacenter,
        "serverServiceName": servers.service_name,
        "httpAddress": servers.http_address,
        "uiServiceName": servers.ui_service_name,
        "clientMode": clients.mode,
        "clientServiceName": clients.service_name,
        "agentAddress": clients.agent_address,
        "dnsServiceName": clients.dns_service_name,
        "caCertificate": security.ca_cert_pem,
        "aclManagementToken": security.management_token,
    }


def main() -> None:
    """Entry point: validation runs to completion before the first resource is declared."""
    settings = load_settings(stack_config(), secret_config_keys())
    if settings.clients.uses_host_namespace and settings.create_namespace:
        pulumi.log.warn(
            f"{PROJECT}:clientHostPorts/clientHostNetwork need host access: namespace {settings.namespace} enforces "
            'Pod Security "privileged" (and still warns and audits against "restricted").'
        )
    for key, value in deploy(settings).items():
        pulumi.export(key, value)
