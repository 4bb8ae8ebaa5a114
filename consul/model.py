"""Typed values the components take. Settings are parsed into these once, at the edge."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Placement(enum.Enum):
    """How strictly a scheduling rule is applied."""

    NONE = "none"
    PREFERRED = "preferred"
    REQUIRED = "required"


class ClientMode(enum.Enum):
    """How client agents are run."""

    DAEMONSET = "daemonset"
    STATEFULSET = "statefulset"


class UiServiceType(enum.Enum):
    """How the UI Service is exposed; NONE declares no UI Service."""

    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    NONE = "None"


@dataclass(frozen=True)
class Resources:
    """Container resources: `requests` and `limits`, each a map of resource name (cpu, memory) to quantity."""

    requests: Mapping[str, str] = field(default_factory=lambda: {"cpu": "100m", "memory": "200Mi"})
    limits: Mapping[str, str] = field(default_factory=lambda: {"cpu": "1", "memory": "200Mi"})


@dataclass(frozen=True)
class Toleration:
    """A Kubernetes pod toleration."""

    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None


@dataclass(frozen=True)
class ClusterSpec:
    """What every Consul agent of one datacenter shares.

    Defaults: image ``hashicorp/consul:2.0.3``, datacenter ``dc1``, domain ``consul``, no recursors.
    """

    image: str = "hashicorp/consul:2.0.3"
    datacenter: str = "dc1"
    domain: str = "consul"
    recursors: tuple[str, ...] = ()
    primary_datacenter: str = ""
    """The primary of a federation this datacenter joins as a secondary; empty: this one is the
    primary (or stands alone)."""

    @property
    def secondary(self) -> bool:
        return bool(self.primary_datacenter)

    @property
    def version(self) -> str:
        """The image tag (the Consul version), or ``digest`` for a digest-pinned image."""
        name = self.image.split("@", 1)[0]
        last = name.rsplit("/", 1)[-1]
        return last.split(":", 1)[1] if ":" in last else "digest"


@dataclass(frozen=True)
class ServerSpec:
    """The Consul server tier.

    Defaults: 3 replicas, a 10Gi volume on the default StorageClass, required anti-affinity
    on nodes, preferred spread over zones, partition 0, chart-sized resources, no
    tolerations, node selector or priority class, no extra config.
    """

    replicas: int = 3
    storage_size: str = "10Gi"
    storage_class: str | None = None
    anti_affinity: Placement = Placement.REQUIRED
    zone_spread: Placement = Placement.PREFERRED
    update_partition: int = 0
    resources: Resources = field(default_factory=Resources)
    tolerations: tuple[Toleration, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    priority_class_name: str | None = None
    extra_config: Mapping[str, Any] = field(default_factory=dict)
    wan: WanSpec = field(default_factory=lambda: WanSpec())


@dataclass(frozen=True)
class WanSpec:
    """The servers' link to other datacenters (WAN federation). Default: none.

    join: addresses of other datacenters' servers (``retry_join_wan``);
    peer_namespaces: namespaces of this cluster whose servers (of this program) are other
        datacenters, admitted to RPC and WAN gossip under the NetworkPolicy;
    peer_cidrs: networks of other datacenters' servers, admitted the same way.
    """

    join: tuple[str, ...] = ()
    peer_namespaces: tuple[str, ...] = ()
    peer_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class SnapshotSpec:
    """Scheduled Raft snapshots into a claim of their own. Defaults: off; hourly, the newest 24
    kept, a 10Gi claim on the default StorageClass."""

    enabled: bool = False
    schedule: str = "0 * * * *"
    retention: int = 24
    storage_size: str = "10Gi"
    storage_class: str | None = None


@dataclass(frozen=True)
class UiSpec:
    """The UI Service in front of the servers, and who may reach the servers' API (the UI's too).

    Defaults: ClusterIP, no annotations; under the NetworkPolicy, only this instance's Jobs reach
    the servers' API from other pods (operators use `kubectl port-forward`). `api_namespaces` adds
    every pod of those namespaces (a Prometheus, an ingress controller), `api_cidrs` those networks
    (a load balancer's, the nodes' for a NodePort).
    """

    service_type: UiServiceType = UiServiceType.CLUSTER_IP
    annotations: Mapping[str, str] = field(default_factory=dict)
    api_namespaces: tuple[str, ...] = ()
    api_cidrs: tuple[str, ...] = ()

    @property
    def exposed(self) -> bool:
        """Reachable from outside the cluster: a NodePort or a LoadBalancer Service."""
        return self.service_type in (UiServiceType.NODE_PORT, UiServiceType.LOAD_BALANCER)


@dataclass(frozen=True)
class ClientSpec:
    """The Consul client tier.

    Defaults: one agent per node (DaemonSet); ``replicas`` (3) is used only in StatefulSet
    mode; workloads reach their node's agent through a node-local Service (no host ports, no
    host network); chart-sized resources; no tolerations, node selector or extra config.
    """

    mode: ClientMode = ClientMode.DAEMONSET
    replicas: int = 3
    host_ports: bool = False
    host_network: bool = False
    resources: Resources = field(
        default_factory=lambda: Resources(requests={"cpu": "100m", "memory": "100Mi"}, limits={"cpu": "500m", "memory": "100Mi"})
    )
    tolerations: tuple[Toleration, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    extra_config: Mapping[str, Any] = field(default_factory=dict)
    api_namespaces: tuple[str, ...] = ()
    """Namespaces whose pods may call the agents' plain-HTTP API (8500) under the NetworkPolicy;
    empty: every namespace. DNS (8600) stays open to every namespace, CoreDNS included."""
    data_host_path: str = ""
    """A directory on each node holding its agent's data dir (in a subdirectory named after the
    node), so that registrations outlive the agent's pod; empty: an emptyDir, lost with the pod."""

    @property
    def uses_host_namespace(self) -> bool:
        """Host ports or host network: the agents are reached at their node's address."""
        return self.host_ports or self.host_network

    @property
    def needs_host_access(self) -> bool:
        """Host ports, the host network or a host path: Pod Security "privileged"."""
        return self.uses_host_namespace or bool(self.data_host_path)


class CoreDnsForward(enum.Enum):
    """The Consul domain's server block in the cluster's CoreDNS Corefile."""

    OFF = "off"  # CoreDNS is neither read nor changed
    ON = "on"  # the block is in the Corefile, forwarding the domain to consul-dns
    REMOVED = "removed"  # the block is taken out again (the step before pulumi destroy)


class DnsTrafficDistribution(enum.Enum):
    """Which client agents a DNS lookup through consul-dns reaches (the Service's trafficDistribution)."""

    ANY = ""  # any Ready agent in the cluster (Kubernetes' default)
    SAME_NODE = "PreferSameNode"  # the caller's own node's agent while it is Ready, any other otherwise (Kubernetes 1.34+)
    SAME_ZONE = "PreferSameZone"  # an agent in the caller's zone while one is Ready (Kubernetes 1.34+)
    CLOSE = "PreferClose"  # the older name of PreferSameZone (Kubernetes 1.31+)


@dataclass(frozen=True)
class DnsSpec:
    """The DNS Service (53 -> 8600, UDP and TCP) and the cluster DNS's forward of the Consul
    domain to it. Defaults: declared, cluster-assigned IP, any Ready agent, CoreDNS untouched."""

    enabled: bool = True
    cluster_ip: str | None = None
    coredns_forward: CoreDnsForward = CoreDnsForward.OFF
    traffic_distribution: DnsTrafficDistribution = DnsTrafficDistribution.ANY


@dataclass(frozen=True)
class SecretText:
    """A secret string from stack config. Its repr never shows the value."""

    value: str = field(repr=False)


@dataclass(frozen=True)
class CertificateSpec:
    """The generated server certificate's lifetime, and how long before its expiry `pulumi up`
    re-issues it (both in days)."""

    validity_days: int = 825
    renew_before_days: int = 30


@dataclass(frozen=True)
class KubernetesAuthSpec:
    """Consul's `kubernetes` auth method: a pod logs in with its service account's token and gets a
    Consul token with the service identity of the account's name.

    token_ttl: how long a login's token lives, as Go prints a duration ("1h0m0s"; 1m to 24h).
    namespaces: the namespaces whose service accounts may log in (empty: any, set as ``["*"]``).
    """

    token_ttl: str = "1h0m0s"
    namespaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecuritySpec:
    """Gossip encryption, TLS, ACLs and NetworkPolicies: all on by default.

    The optional material (a gossip key, a CA certificate and key, a management token) replaces
    what the program would generate; None means generate it once and keep it in the stack.
    """

    gossip_encryption: bool = True
    tls: bool = True
    acls: bool = True
    network_policy: bool = True
    gossip_key: SecretText | None = None
    ca_cert: str | None = None
    ca_key: SecretText | None = None
    trusted_ca_certs: tuple[str, ...] = ()
    """More CA certificates every agent trusts besides the signing CA: a CA rotation's other CA."""
    management_token: SecretText | None = None
    service_tokens: tuple[str, ...] = ()
    """Services that get an ACL token with that service's identity, in a Secret of their own."""
    certificates: CertificateSpec = field(default_factory=CertificateSpec)
    snapshot_token: bool = False
    """A token for the snapshot CronJob (policy ``acl = "write"``, what a snapshot needs)."""
    declares_replication_token: bool = False
    """The primary of a federation: a token for the secondaries' ACL replication (the output
    ``aclReplicationToken``)."""
    replication_token: SecretText | None = None
    """A secondary: the primary's replication token, which its servers replicate ACLs with."""
    kubernetes_auth: KubernetesAuthSpec | None = None
    """The `kubernetes` auth method, when on (needs ACLs)."""
