"""ConsulClients: client agents that workloads register with, and the DNS Service they serve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes.apps.v1 as apps
import pulumi_kubernetes.core.v1 as core
import pulumi_kubernetes.meta.v1 as meta

from . import agent_config as cfg
from . import network_policy, pods
from .labels import Labels
from .model import ClientMode, ClientSpec, ClusterSpec, DnsSpec, Placement, Resources
from .security import TierSecrets

# A client fails its liveness check only for what a restart fixes (STRANDED_LIVENESS_SCRIPT), and is
# restarted once it has failed for this long (period x threshold): minutes, not a server election.
LIVENESS_PERIOD_SECONDS = 30
LIVENESS_FAILURE_THRESHOLD = 10
# A client agent forwards /v1/status/leader to a server: while its servers vanish it answers only
# after a dial to a gone address (up to 10 s) or its retries (rpc_hold_timeout, 7 s). The check
# waits this long for its own agent's answer, and a later one goes on to ask the servers.
LOCAL_ANSWER_SECONDS = 10
# The local call, then a connection of up to 2 s to each of at most 7 servers, and some slack.
LIVENESS_TIMEOUT_SECONDS = LOCAL_ANSWER_SECONDS + 7 * 2 + 6
# Kubernetes' maximum ClientIP affinity: a workload keeps talking to one agent all day.
STICKY_SECONDS = 86400
# The Kubernetes provider's annotation for an object whose rollout it must not await.
SKIP_AWAIT = "pulumi.com/skipAwait"
DNS_PORT = 53
# The agent's node ID, derived from the datacenter and its node name (the -node argument) and
# written where Consul looks for it (data_dir/node-id) before the agent starts: a replaced agent
# (a roll, an eviction, a restart after a restore) comes back under the same name with the same ID.
# With a random ID on its emptyDir it came back as a rename, which Consul refuses while the old
# entry is healthy in the catalog ("Error while renaming Node ID"), as it is after a restore.
STABLE_NODE_ID_SCRIPT = r"""for arg in "$@"; do case "$arg" in -node=*) node=${arg#-node=};; esac; done
printf '%s/%s' "$DATACENTER" "$node" | sha256sum \
  | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/' | tr -d '\n' > DATA_DIR/node-id
exec consul "$@"
""".replace("DATA_DIR", cfg.DATA_DIR)


# The client agents' liveness check. A restart helps an agent only when it is hung, or stranded:
# it knows no server while servers run at addresses its gossip no longer holds (retry_join runs only
# while an agent starts, consul #3902). It does nothing for an outage of every server or a cluster
# without a leader, and costs the node its agent (and, on an emptyDir, every registration), so:
#   - /v1/status/leader answers 200 (a leader, or "" from servers without one): the agent reaches
#     its servers, pass;
#   - otherwise (500 "No known Consul servers", an RPC error, or no answer within
#     LOCAL_ANSWER_SECONDS: the agent may be hung, or waiting on a server that is gone): fail only
#     if a server of its retry_join list accepts a TCP connection on its gossip port (curl's
#     telnet:// connects and sends nothing; an empty stream is no error to memberlist), where a
#     restart joins again; none answers: every server is down, pass. A hung agent is so restarted
#     once a server runs, and no agent for an outage of every server.
# Its own API asked first: the servers are asked only while it has no leader to report. An image
# without curl fails the check, naming the cause, rather than passing it without asking anything.
STRANDED_LIVENESS_SCRIPT = (
    r"""command -v curl >/dev/null || { echo "this image has no curl: the check can ask neither the agent nor its servers"; exit 1; }
code=$(curl -s -o /dev/null -m LOCAL_ANSWER_SECONDS -w '%{http_code}' LOCAL_HTTP_URL/v1/status/leader) || true
if [ "$code" = 200 ]; then exit 0; fi
if [ "$code" = 000 ]; then said="no answer within LOCAL_ANSWER_SECONDS s"; else said="HTTP $code"; fi
set -f
for server in $(tr -d '\n' < JOIN_FILE | sed 's/[][{}" ]//g; s/.*retry_join://' | tr ',' ' '); do
  if [ "$(curl -s -o /dev/null --connect-timeout 2 -m 2 -w '%{num_connects}' "telnet://$server" </dev/null)" = 1 ]; then
    echo "this agent reports no leader ($said) while $server accepts connections: stranded or hung, a restart joins again"
    exit 1
  fi
done
echo "this agent reports no leader ($said) and no server accepts connections: every server is down, which a restart cannot fix"
""".replace("LOCAL_ANSWER_SECONDS", str(LOCAL_ANSWER_SECONDS))
    .replace("LOCAL_HTTP_URL", cfg.LOCAL_HTTP_URL)
    .replace("JOIN_FILE", f"{cfg.CONFIG_DIR}/{cfg.CLUSTER_SIZE_FILE}")
)


def stable_node_id_command(datacenter: str) -> list[str]:
    """The agent container's command: the node ID written, then ``consul`` with the arguments."""
    return ["/bin/sh", "-ec", STABLE_NODE_ID_SCRIPT.replace("$DATACENTER", datacenter), "consul-agent"]


# A node's agent restarts in seconds; 10% of the nodes at a time (at least one) keeps a rollout of
# a few hundred nodes well inside ROLLOUT_TIMEOUTS, while 90% of the nodes keep their agent.
DAEMONSET_MAX_UNAVAILABLE = "10%"
DATA_OWNER_RESOURCES = Resources(requests={"cpu": "10m", "memory": "16Mi"}, limits={"cpu": "100m", "memory": "32Mi"})
ROLLOUT_TIMEOUTS = pulumi.CustomTimeouts(create="30m", update="30m")


@dataclass(frozen=True)
class ConsulClientsArgs:
    """Inputs of :class:`ConsulClients`.

    namespace: the namespace to deploy into (required).
    retry_join: the servers' join addresses (required; pass ``ConsulServers.retry_join``).
    cluster: image, datacenter, domain and recursors shared by every agent (defaults: see
        :class:`~consul.model.ClusterSpec`).
    spec: the client tier's shape (default: a DaemonSet, see :class:`~consul.model.ClientSpec`).
    dns: the DNS Service (default: declared, cluster-assigned IP).
    secrets: the Secrets that switch on gossip encryption, TLS (auto_encrypt) and ACLs
        (default: none, all off; pass ``ConsulSecurity.client_secrets``).
    network_policy: admit only the traffic client agents need (default: False).
    hold_roll: a staged server upgrade is under way (``serverUpdatePartition`` above 0): the agents'
        pods are not replaced (update strategy ``OnDelete``, nothing to await) until its last step
        returns the strategy to ``RollingUpdate``, when the clients roll after the servers, in
        Consul's upgrade order (default: False).
    """

    namespace: pulumi.Input[str]
    retry_join: pulumi.Input[Sequence[str]]
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    spec: ClientSpec = field(default_factory=ClientSpec)
    dns: DnsSpec = field(default_factory=DnsSpec)
    secrets: TierSecrets = field(default_factory=TierSecrets)
    network_policy: bool = False
    hold_roll: bool = False


def client_ports(spec: ClientSpec) -> list[core.ContainerPortArgs]:
    """The agent's ports; with host ports, the API and DNS are also bound on the node's address.
    No HTTPS: an auto_encrypt certificate chains to Connect's CA, which workloads cannot verify."""
    host = spec.host_ports

    def port(name: str, number: int, protocol: str, on_host: bool = False) -> core.ContainerPortArgs:
        return core.ContainerPortArgs(name=name, container_port=number, protocol=protocol, host_port=number if host and on_host else None)

    return [
        port("http", cfg.HTTP_PORT, "TCP", on_host=True),
        port("serflan-tcp", cfg.SERF_LAN_PORT, "TCP"),
        port("serflan-udp", cfg.SERF_LAN_PORT, "UDP"),
        port("dns-tcp", cfg.DNS_PORT, "TCP", on_host=True),
        port("dns-udp", cfg.DNS_PORT, "UDP", on_host=True),
    ]


class ConsulClients(pulumi.ComponentResource):
    """Consul client agents: a DaemonSet (one per node) or a StatefulSet, and how workloads reach them.

    Outputs:
        mode: ``daemonset`` or ``statefulset``.
        service_name: the client Service workloads call.
        agent_address: what an application sets as ``CONSUL_HTTP_ADDR`` to reach the agent that
            owns its registrations (``http://$(HOST_IP):8500`` with host ports: expand HOST_IP from
            ``status.hostIP``).
        dns_service_name: the DNS Service for a CoreDNS stub domain, or None when disabled.
        dns_cluster_ip: the DNS Service's clusterIP, or None when disabled.
    """

    mode: pulumi.Output[str]
    service_name: pulumi.Output[str]
    agent_address: pulumi.Output[str]
    dns_service_name: pulumi.Output[str | None]
    dns_cluster_ip: pulumi.Output[str | None]

    def __init__(self, name: str, args: ConsulClientsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("consul:index:ConsulClients", name, None, opts)
        spec, cluster = args.spec, args.cluster
        features = args.secrets.features
        full_name = f"{name}-client"
        labels = Labels(instance=name, component="client", version=cluster.version)
        namespace = pulumi.Output.from_input(args.namespace)
        child = pulumi.ResourceOptions(parent=self)

        files = pulumi.Output.from_input(args.retry_join).apply(
            lambda join: cfg.config_files(cfg.client_config(cluster, join, features), spec.extra_config)
        )
        account = core.ServiceAccount(
            full_name, metadata=labels.metadata(full_name, namespace), automount_service_account_token=False, opts=child
        )
        config_map = core.ConfigMap(
            f"{full_name}-config", metadata=labels.metadata(f"{full_name}-config", namespace), data=files, opts=child
        )
        template = core.PodTemplateSpecArgs(
            metadata=meta.ObjectMetaArgs(labels=labels.all, annotations=pods.checksum_annotations(files, args.secrets)),
            spec=_pod_spec(labels, cluster, spec, args.secrets, account.metadata.name, config_map.metadata.name),
        )
        selector = meta.LabelSelectorArgs(match_labels=labels.selector)
        workload_opts = pulumi.ResourceOptions(parent=self, depends_on=[config_map], custom_timeouts=ROLLOUT_TIMEOUTS)

        service_ports = [
            core.ServicePortArgs(name="http", port=cfg.HTTP_PORT, target_port="http", protocol="TCP"),
            core.ServicePortArgs(name="dns-tcp", port=cfg.DNS_PORT, target_port="dns-tcp", protocol="TCP"),
            core.ServicePortArgs(name="dns-udp", port=cfg.DNS_PORT, target_port="dns-udp", protocol="UDP"),
        ]
        # While a staged server upgrade holds servers back, nothing replaces a client agent (and
        # nothing is awaited): OnDelete. Its last step rolls the clients.
        held = {SKIP_AWAIT: "true"} if args.hold_roll else None
        if spec.mode is ClientMode.DAEMONSET:
            apps.DaemonSet(
                full_name,
                metadata=labels.metadata(full_name, namespace, held),
                spec=apps.DaemonSetSpecArgs(
                    selector=selector,
                    update_strategy=apps.DaemonSetUpdateStrategyArgs(type="OnDelete")
                    if args.hold_roll
                    else apps.DaemonSetUpdateStrategyArgs(
                        type="RollingUpdate", rolling_update=apps.RollingUpdateDaemonSetArgs(max_unavailable=DAEMONSET_MAX_UNAVAILABLE)
                    ),
                    template=template,
                ),
                opts=workload_opts,
            )
            # Node-local: a call reaches the agent on the caller's own node, or fails; it never
            # lands on an agent that does not own the caller's registrations.
            client_service = core.ServiceSpecArgs(selector=labels.selector, internal_traffic_policy="Local", ports=service_ports)
        else:
            pods_service = core.Service(
                f"{full_name}-pods",
                metadata=labels.metadata(f"{full_name}-pods", namespace),
                spec=core.ServiceSpecArgs(
                    cluster_ip="None",
                    publish_not_ready_addresses=True,
                    selector=labels.selector,
                    ports=[core.ServicePortArgs(name="http", port=cfg.HTTP_PORT, target_port="http", protocol="TCP")],
                ),
                opts=child,
            )
            apps.StatefulSet(
                full_name,
                metadata=labels.metadata(full_name, namespace, held),
                spec=apps.StatefulSetSpecArgs(
                    service_name=pods_service.metadata.name,
                    replicas=spec.replicas,
                    pod_management_policy="Parallel",
                    selector=selector,
                    update_strategy=apps.StatefulSetUpdateStrategyArgs(type="OnDelete" if args.hold_roll else "RollingUpdate"),
                    template=template,
                ),
                opts=workload_opts,
            )
            # Fewer agents than nodes: stick each caller to one agent instead.
            client_service = core.ServiceSpecArgs(
                selector=labels.selector,
                session_affinity="ClientIP",
                session_affinity_config=core.SessionAffinityConfigArgs(client_ip=core.ClientIPConfigArgs(timeout_seconds=STICKY_SECONDS)),
                ports=service_ports,
            )
        service = core.Service(full_name, metadata=labels.metadata(full_name, namespace), spec=client_service, opts=child)

        dns_name: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        dns_ip: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        if args.dns.enabled:
            dns = core.Service(
                f"{name}-dns",
                metadata=Labels(name, "dns", cluster.version).metadata(f"{name}-dns", namespace),
                spec=core.ServiceSpecArgs(
                    type="ClusterIP",
                    cluster_ip=args.dns.cluster_ip,
                    traffic_distribution=args.dns.traffic_distribution.value or None,
                    selector=labels.selector,
                    ports=[
                        core.ServicePortArgs(name="dns-udp", port=DNS_PORT, target_port="dns-udp", protocol="UDP"),
                        core.ServicePortArgs(name="dns-tcp", port=DNS_PORT, target_port="dns-tcp", protocol="TCP"),
                    ],
                ),
                opts=child,
            )
            dns_name = dns.metadata.name
            # Unknown until the Service exists (a preview of its creation shows its inputs, no clusterIP).
            dns_ip = pulumi.Output.all(dns.id, dns.spec.cluster_ip).apply(lambda values: values[1])

        if args.network_policy:
            servers = Labels(instance=name, component="server", version=cluster.version)
            network_policy.ingress_policy(
                full_name, namespace, labels, network_policy.client_rules(servers, labels, spec.api_namespaces), child
            )

        self.mode = pulumi.Output.from_input(spec.mode.value)
        self.service_name = service.metadata.name
        if spec.uses_host_namespace:
            self.agent_address = pulumi.Output.from_input(f"http://$(HOST_IP):{cfg.HTTP_PORT}")
        else:
            self.agent_address = pulumi.Output.concat("http://", service.metadata.name, ".", namespace, f".svc:{cfg.HTTP_PORT}")
        self.dns_service_name = dns_name
        self.dns_cluster_ip = dns_ip
        self.register_outputs(
            {
                "mode": self.mode,
                "service_name": self.service_name,
                "agent_address": self.agent_address,
                "dns_service_name": self.dns_service_name,
            }
        )


# With clientDataHostPath each agent's data dir is its namespace's and node's own subdirectory of
# it: two stacks on one cluster given the same path never share one.
NODE_SUBDIRECTORY = "$(POD_NAMESPACE)/$(NODE_NAME)"


def _data_volume(spec: ClientSpec) -> core.VolumeArgs:
    if not spec.data_host_path:
        return core.VolumeArgs(name="data", empty_dir=core.EmptyDirVolumeSourceArgs())
    return core.VolumeArgs(name="data", host_path=core.HostPathVolumeSourceArgs(path=spec.data_host_path, type="DirectoryOrCreate"))


def _subdirectory_env() -> list[core.EnvVarArgs]:
    return [pods.field_env("NODE_NAME", "spec.nodeName"), pods.field_env("POD_NAMESPACE", "metadata.namespace")]


def _data_owner(image: str) -> core.ContainerArgs:
    """The init container that gives the node's data directory (created by the kubelet, owned by
    root) to the consul user, mode 0700: root with CHOWN and FOWNER only, no other capability."""
    return core.ContainerArgs(
        name="data-owner",
        image=image,
        command=["/bin/sh", "-ec", f"chown {pods.CONSUL_UID}:{pods.CONSUL_GID} {cfg.DATA_DIR}; chmod 0700 {cfg.DATA_DIR}"],
        env=_subdirectory_env(),
        security_context=core.SecurityContextArgs(
            run_as_user=0,
            run_as_non_root=False,
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            capabilities=core.CapabilitiesArgs(drop=["ALL"], add=["CHOWN", "FOWNER"]),
            seccomp_profile=core.SeccompProfileArgs(type="RuntimeDefault"),
        ),
        resources=pods.resource_requirements(DATA_OWNER_RESOURCES),
        volume_mounts=[core.VolumeMountArgs(name="data", mount_path=cfg.DATA_DIR, sub_path_expr=NODE_SUBDIRECTORY)],
    )


def _pod_spec(
    labels: Labels,
    cluster: ClusterSpec,
    spec: ClientSpec,
    secrets: TierSecrets,
    service_account: pulumi.Input[str],
    config_map: pulumi.Input[str],
) -> core.PodSpecArgs:
    daemonset = spec.mode is ClientMode.DAEMONSET
    wiring = pods.secret_wiring(secrets)
    affinity = None if daemonset else pods.node_anti_affinity(labels, Placement.PREFERRED)
    return core.PodSpecArgs(
        service_account_name=service_account,
        automount_service_account_token=False,
        termination_grace_period_seconds=10,
        security_context=pods.pod_security_context(),
        host_network=spec.host_network or None,
        dns_policy="ClusterFirstWithHostNet" if spec.host_network else None,
        node_selector=dict(spec.node_selector) or None,
        tolerations=pods.tolerations(spec.tolerations) or None,
        affinity=affinity,
        volumes=pods.agent_volumes(config_map, wiring, data=_data_volume(spec)),
        init_containers=[_data_owner(cluster.image)] if spec.data_host_path else None,
        containers=[
            pods.agent_container(
                cluster.image,
                node_name="$(NODE_NAME)" if daemonset else "$(POD_NAME)",
                env=[
                    pods.field_env("NODE_NAME", "spec.nodeName"),
                    pods.field_env("HOST_IP", "status.hostIP"),
                    *([pods.field_env("POD_NAMESPACE", "metadata.namespace")] if spec.data_host_path else []),
                ],
                ports=client_ports(spec),
                readiness_probe=pods.serving_readiness_probe("http"),
                liveness_probe=pods.exec_probe(
                    STRANDED_LIVENESS_SCRIPT,
                    period=LIVENESS_PERIOD_SECONDS,
                    failure_threshold=LIVENESS_FAILURE_THRESHOLD,
                    initial_delay=60,
                    timeout=LIVENESS_TIMEOUT_SECONDS,
                ),
                resources=spec.resources,
                wiring=wiring,
                command=stable_node_id_command(cluster.datacenter),
                data_sub_path_expr=NODE_SUBDIRECTORY if spec.data_host_path else None,
            )
        ],
    )
