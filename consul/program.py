"""The Pulumi program: read the stack's settings, declare Consul, export what consumers need."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi

from .acl_bootstrap import ConsulAclBootstrap, ConsulAclBootstrapArgs
from .change_guard import guard_changes
from .clients import ConsulClients, ConsulClientsArgs
from .coredns import ConsulCoreDnsForward, ConsulCoreDnsForwardArgs
from .generated import CA_WARN_BEFORE_DAYS, KeyMaterial, expires_within
from .gossip_rotation import ConsulGossipRotation, ConsulGossipRotationArgs
from .kubernetes_auth import ConsulKubernetesAuth, ConsulKubernetesAuthArgs
from .labels import APP_NAME
from .model import CoreDnsForward
from .namespace import consul_namespace
from .security import ConsulSecurity, ConsulSecurityArgs, declare_key_material
from .servers import ConsulServers, ConsulServersArgs
from .settings import PROJECT, Settings, load_settings, secret_config_keys, stack_config
from .snapshots import ConsulSnapshots, ConsulSnapshotsArgs

INSTANCE = "consul"
# How long before the server certificate's renewal window opens preview and up start to warn.
SERVER_CERT_NOTICE_DAYS = 30


def warn_if_ca_expires(not_after: str | None) -> None:
    """Every preview and up warns while the CA has less than a year left."""
    if not_after and expires_within(not_after, CA_WARN_BEFORE_DAYS):
        pulumi.log.warn(
            f"the Consul CA expires on {not_after[:10]}, in less than {CA_WARN_BEFORE_DAYS} days: "
            "rotate it as the README's operations guide says (Certificates)"
        )


def warn_if_server_cert_expires(not_after: str | None, renew_before_days: int) -> None:
    """Every preview and up warns from SERVER_CERT_NOTICE_DAYS before the server certificate's
    renewal window opens: only an `up` inside the window re-issues it, and nothing else does."""
    if not_after and expires_within(not_after, renew_before_days + SERVER_CERT_NOTICE_DAYS):
        pulumi.log.warn(
            f"the Consul server certificate expires on {not_after[:10]}: the first pulumi up in its last "
            f"{renew_before_days} days re-issues it and rolls the servers; make sure one runs "
            "(the README's workflow runs up weekly)"
        )


@dataclass(frozen=True)
class Foundation:
    """What the rest of the cluster is declared on: the key material and the namespace."""

    material: KeyMaterial | None
    namespace: pulumi.Input[str]


def declare_foundation(settings: Settings) -> Foundation:
    """The key material and the namespace: they wait for nothing, and the engine needs a provider
    plugin for each (consul-keys, Kubernetes), so the program sends them first."""
    material = declare_key_material(INSTANCE, settings.security, settings.cluster, settings.namespace, settings.servers.replicas)
    namespace: pulumi.Input[str] = settings.namespace
    if settings.create_namespace:
        ns = consul_namespace(
            settings.namespace,
            {"app.kubernetes.io/part-of": APP_NAME, "app.kubernetes.io/managed-by": "pulumi"},
            host_access=settings.clients.needs_host_access,
        )
        namespace = ns.metadata.name
    return Foundation(material, namespace)


def declare_cluster(settings: Settings, foundation: Foundation, cluster_reachable: bool = True) -> Mapping[str, pulumi.Output[object]]:
    """Declare everything else on `foundation` and return the stack outputs."""
    material, namespace = foundation.material, foundation.namespace
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
    renew_before = settings.security.certificates.renew_before_days
    security.server_cert_not_after.apply(lambda not_after: warn_if_server_cert_expires(not_after, renew_before))
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
            hold_roll=settings.servers.update_partition > 0,
        ),
        # Consul's upgrade order, servers then clients: a change that rolls both tiers (an image,
        # the CA) rolls the clients once the servers' rollout is done. An up that changes only
        # the clients waits for nothing: an unchanged StatefulSet has no rollout to await.
        opts=pulumi.ResourceOptions(depends_on=[servers]),
    )
    forward = settings.dns.coredns_forward
    if forward is not CoreDnsForward.OFF:
        if cluster_reachable:
            ConsulCoreDnsForward(
                INSTANCE,
                ConsulCoreDnsForwardArgs(
                    forward=forward, namespace=settings.namespace, domain=settings.cluster.domain, dns_ip=clients.dns_cluster_ip
                ),
            )
        else:
            pulumi.log.warn(f"{PROJECT}:coreDnsForward {forward.value}: a render reads no cluster, so the CoreDNS patch is left out")
    if security.acl_tokens is not None:
        auth = settings.security.kubernetes_auth
        auth_objects = (
            ConsulKubernetesAuth(
                INSTANCE,
                ConsulKubernetesAuthArgs(namespace=namespace, namespace_name=settings.namespace, version=settings.cluster.version),
            )
            if auth is not None
            else None
        )
        ConsulAclBootstrap(
            INSTANCE,
            ConsulAclBootstrapArgs(
                namespace=namespace,
                tokens=security.acl_tokens,
                server_service=servers.service_name,
                ca_secret=security.server_secrets.ca,
                secrets_checksum=security.server_secrets.checksum,
                kubernetes_auth=auth,
                all_servers_updated=settings.servers.update_partition == 0,
                reviewer_secret=auth_objects.reviewer_secret if auth_objects else None,
                cluster=settings.cluster,
            ),
            opts=pulumi.ResourceOptions(depends_on=[servers, *([auth_objects] if auth_objects else [])]),
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
        "serverApiAddress": servers.api_address,
        "uiServiceName": servers.ui_service_name,
        "clientMode": clients.mode,
        "clientServiceName": clients.service_name,
        "agentAddress": clients.agent_address,
        "dnsServiceName": clients.dns_service_name,
        "caCertificate": security.ca_cert_pem,
        "aclManagementToken": security.management_token,
        # Only the primary of a federation has one.
        **({"aclReplicationToken": security.replication_token} if settings.security.declares_replication_token else {}),
    }


def deploy(settings: Settings) -> Mapping[str, pulumi.Output[object]]:
    """Declare every resource for validated settings and return the stack outputs."""
    return declare_cluster(settings, declare_foundation(settings))


# Event-loop turns that take a registration from its declaration to its RPC in flight.
_TURNS_TO_SEND = 20


async def _send_declared() -> None:
    """Let the Pulumi runtime send what is declared so far. Registrations go out only when the
    program yields to the event loop (a synchronous program sends nothing until it returns), and
    each waits for its parent's URN: the stack's, registered just before the program started."""
    root = pulumi.runtime.get_root_resource()
    if root is not None:
        await root.urn.future()
    for _ in range(_TURNS_TO_SEND):
        await asyncio.sleep(0)


async def main() -> None:
    """Entry point (`pulumi.run(main)`, or the Automation API's inline program): validation runs to
    completion before the first resource is declared, and the guard of disruptive changes is
    checked by the engine before the rest is declared. The foundation is sent before the rest is
    declared, so the engine loads its provider plugins while the program is still running."""
    settings = load_settings(stack_config(), secret_config_keys())
    renders = pulumi.Config("kubernetes").get("renderYamlToDirectory") is not None
    # A render writes files and has no cluster to disrupt: only a deployment guards its changes.
    if not renders:
        await guard_changes(INSTANCE, settings)
    if settings.clients.needs_host_access and settings.create_namespace:
        pulumi.log.warn(
            f"{PROJECT}:clientHostPorts/clientHostNetwork/clientDataHostPath need host access: namespace {settings.namespace} enforces "
            'Pod Security "privileged" (and still warns and audits against "restricted").'
        )
    foundation = declare_foundation(settings)
    await _send_declared()
    for key, value in declare_cluster(settings, foundation, cluster_reachable=not renders).items():
        pulumi.export(key, value)
