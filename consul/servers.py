"""ConsulServers: the Consul server tier as a StatefulSet with everything it needs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes.apps.v1 as apps
import pulumi_kubernetes.core.v1 as core
import pulumi_kubernetes.meta.v1 as meta
import pulumi_kubernetes.policy.v1 as policy

from . import agent_config as cfg
from . import network_policy, pods
from .labels import Labels
from .model import ClusterSpec, Resources, ServerSpec, UiServiceType, UiSpec
from .security import TierSecrets

UI_HTTP_PORT = 80
UI_HTTPS_PORT = 443
# A rollout replaces one server at a time (each: stop, start, rejoin, Ready): up to 7 servers, and
# image pulls, take longer than the provider's default 10-minute await.
ROLLOUT_TIMEOUTS = pulumi.CustomTimeouts(create="30m", update="30m")
# How long a starting server may take to open its HTTP API (restoring a large snapshot) before
# the kubelet restarts it, and how often the startup probe asks meanwhile.
SERVER_START_BUDGET = 1200
STARTUP_PERIOD = 2


def rollout_await(spec: ServerSpec) -> dict[str, str]:
    """What `pulumi up` waits for after a change to the StatefulSet: the pods at and above the
    partition run the update revision, and every pod is Ready.

    Written as a `pulumi.com/waitFor` condition, which the provider checks only once the
    StatefulSet's `.status.observedGeneration` has caught up with the change. Its built-in await does
    not (provider 4.25, pulumi-kubernetes#4094): it could read the status of the previous roll and
    return while the servers were still rolling, and the clients, which wait for this await, rolled
    early. While the pods below a partition keep an older revision (`currentRevision` is not the
    `updateRevision`), the pods above it must be updated; otherwise every pod must be, which also
    covers a partition raised with no template change (all already updated) and a staged upgrade
    reverted (the old revision is the update revision again, and the reverted pods must roll back).
    With the partition at `serverReplicas` nothing is to be updated, and the status omits a zero
    count. (`>` rather than `>=`: the provider splits the condition at a single "=".)
    """
    replicas = spec.replicas
    to_update = replicas - spec.update_partition
    if to_update == 0:
        return {"pulumi.com/waitFor": json.dumps([f"jsonpath={{.status.readyReplicas}}={replicas}"])}
    same = "@.currentRevision == @.updateRevision"
    if spec.update_partition == 0:
        status = f"$[?@.updatedReplicas > {replicas - 1}]"
    else:
        status = f"$[?({same} && @.updatedReplicas > {replicas - 1}) || (!({same}) && @.updatedReplicas > {to_update - 1})]"
    return {"pulumi.com/waitFor": json.dumps([f"jsonpath={{{status}.readyReplicas}}={replicas}"])}


@dataclass(frozen=True)
class ConsulServersArgs:
    """Inputs of :class:`ConsulServers`.

    namespace: the namespace to deploy into (required; pass the Namespace's name output so
        the servers wait for it).
    cluster: image, datacenter, domain and recursors shared by every agent (defaults: see
        :class:`~consul.model.ClusterSpec`).
    spec: the server tier's shape (defaults: see :class:`~consul.model.ServerSpec`).
    ui: the UI Service in front of the servers (default: ClusterIP, port 80, or 443 with TLS).
    secrets: the Secrets that switch on gossip encryption, TLS and ACLs (default: none, all off;
        pass ``ConsulSecurity.server_secrets``).
    network_policy: admit only the traffic servers need (default: False).
    """

    namespace: pulumi.Input[str]
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    spec: ServerSpec = field(default_factory=ServerSpec)
    ui: UiSpec = field(default_factory=UiSpec)
    secrets: TierSecrets = field(default_factory=TierSecrets)
    network_policy: bool = False


def server_ports(tls: bool) -> list[tuple[str, int, str]]:
    """(name, port, protocol) of every port a server serves beyond its pod; serf gossips over TCP and UDP.

    With TLS, plain HTTP is bound to the pod's loopback only, and HTTPS is the API port.
    """
    api = ("https", cfg.HTTPS_PORT, "TCP") if tls else ("http", cfg.HTTP_PORT, "TCP")
    return [
        api,
        ("server", cfg.SERVER_RPC_PORT, "TCP"),
        ("serflan-tcp", cfg.SERF_LAN_PORT, "TCP"),
        ("serflan-udp", cfg.SERF_LAN_PORT, "UDP"),
        ("serfwan-tcp", cfg.SERF_WAN_PORT, "TCP"),
        ("serfwan-udp", cfg.SERF_WAN_PORT, "UDP"),
        ("dns-tcp", cfg.DNS_PORT, "TCP"),
        ("dns-udp", cfg.DNS_PORT, "UDP"),
    ]


class ConsulServers(pulumi.ComponentResource):
    """Consul servers: a Parallel StatefulSet behind a headless Service, with a disruption budget.

    Outputs:
        namespace: the namespace the servers run in.
        service_name: the headless governing Service (also the per-pod DNS subdomain).
        api_address: the servers' in-cluster API address (``https://<service>.<namespace>.svc:8501``), for operators and the Jobs; workloads use the client agents.
        datacenter: the Consul datacenter name.
        retry_join: the stable per-pod join addresses (``<pod>.<service>.<namespace>.svc:8301``).
        ui_service_name: the UI Service, or None when ``ui.service_type`` is NONE.
    """

    namespace: pulumi.Output[str]
    service_name: pulumi.Output[str]
    api_address: pulumi.Output[str]
    datacenter: pulumi.Output[str]
    retry_join: pulumi.Output[list[str]]
    ui_service_name: pulumi.Output[str | None]

    def __init__(self, name: str, args: ConsulServersArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("consul:index:ConsulServers", name, None, opts)
        spec, cluster = args.spec, args.cluster
        features = args.secrets.features
        ports = server_ports(features.tls)
        full_name = f"{name}-server"
        labels = Labels(instance=name, component="server", version=cluster.version)
        namespace = pulumi.Output.from_input(args.namespace)
        child = pulumi.ResourceOptions(parent=self)

        join_addresses = namespace.apply(
            lambda ns: {f"{full_name}-{i}": f"{full_name}-{i}.{full_name}.{ns}.svc:{cfg.SERF_LAN_PORT}" for i in range(spec.replicas)}
        )
        retry_join = join_addresses.apply(lambda addresses: list(addresses.values()))
        files = pulumi.Output.from_input(cfg.config_files(cfg.server_config(cluster, spec, features), spec.extra_config))

        account = core.ServiceAccount(
            full_name,
            metadata=labels.metadata(full_name, namespace),
            automount_service_account_token=False,
            opts=child,
        )
        config_map = core.ConfigMap(
            f"{full_name}-config", metadata=labels.metadata(f"{full_name}-config", namespace), data=files, opts=child
        )
        # Follows the server count like the cluster-size file: outside the pod template's checksum.
        join_map = core.ConfigMap(
            f"{full_name}-join",
            metadata=labels.metadata(f"{full_name}-join", namespace),
            data=join_addresses.apply(cfg.server_join_files),
            opts=child,
        )
        service = core.Service(
            full_name,
            metadata=labels.metadata(full_name, namespace),
            spec=core.ServiceSpecArgs(
                cluster_ip="None",
                publish_not_ready_addresses=True,
                selector=labels.selector,
                ports=[
                    core.ServicePortArgs(name=port_name, port=port, target_port=port_name, protocol=protocol)
                    for port_name, port, protocol in ports
                ],
            ),
            opts=child,
        )
        core_opts = pulumi.ResourceOptions(parent=self, depends_on=[config_map, join_map], custom_timeouts=ROLLOUT_TIMEOUTS)
        apps.StatefulSet(
            full_name,
            metadata=labels.metadata(full_name, namespace, rollout_await(spec)),
            spec=apps.StatefulSetSpecArgs(
                service_name=service.metadata.name,
                replicas=spec.replicas,
                pod_management_policy="Parallel",
                selector=meta.LabelSelectorArgs(match_labels=labels.selector),
                update_strategy=apps.StatefulSetUpdateStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=apps.RollingUpdateStatefulSetStrategyArgs(partition=spec.update_partition),
                ),
                persistent_volume_claim_retention_policy=apps.StatefulSetPersistentVolumeClaimRetentionPolicyArgs(
                    when_deleted="Retain", when_scaled="Retain"
                ),
                template=core.PodTemplateSpecArgs(
                    metadata=meta.ObjectMetaArgs(
                        labels=labels.all,
                        annotations=pods.checksum_annotations(files, args.secrets),
                    ),
                    spec=_pod_spec(
                        labels, cluster, spec, args.secrets, account.metadata.name, config_map.metadata.name, join_map.metadata.name
                    ),
                ),
                volume_claim_templates=[
                    core.PersistentVolumeClaimArgs(
                        # Selector labels only: volumeClaimTemplates cannot change, and a version
                        # label here would replace the StatefulSet (every server at once) on upgrade.
                        metadata=meta.ObjectMetaArgs(name="data", labels=labels.selector),
                        spec=core.PersistentVolumeClaimSpecArgs(
                            access_modes=["ReadWriteOnce"],
                            storage_class_name=spec.storage_class,
                            resources=core.VolumeResourceRequirementsArgs(requests={"storage": spec.storage_size}),
                        ),
                    )
                ],
            ),
            opts=core_opts,
        )
        policy.PodDisruptionBudget(
            full_name,
            metadata=labels.metadata(full_name, namespace),
            spec=policy.PodDisruptionBudgetSpecArgs(
                # One server at a time: never below quorum, and never 0, which blocks every node drain.
                max_unavailable=1,
                selector=meta.LabelSelectorArgs(match_labels=labels.selector),
            ),
            opts=child,
        )

        ui_name: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        if args.ui.service_type is not UiServiceType.NONE:
            ui = core.Service(
                f"{name}-ui",
                metadata=Labels(name, "ui", cluster.version).metadata(f"{name}-ui", namespace, args.ui.annotations),
                spec=core.ServiceSpecArgs(
                    type=args.ui.service_type.value,
                    # Under the NetworkPolicy the servers admit serverApiCidrs: keep the callers'
                    # addresses, which kube-proxy would otherwise replace with a node's.
                    external_traffic_policy="Local" if args.network_policy and args.ui.exposed else None,
                    selector=labels.selector,
                    ports=[
                        core.ServicePortArgs(name="https", port=UI_HTTPS_PORT, target_port="https", protocol="TCP")
                        if features.tls
                        else core.ServicePortArgs(name="http", port=UI_HTTP_PORT, target_port="http", protocol="TCP")
                    ],
                ),
                opts=child,
            )
            ui_name = ui.metadata.name

        self.namespace = namespace
        self.service_name = service.metadata.name
        if args.network_policy:
            clients = Labels(instance=name, component="client", version=cluster.version)
            network_policy.ingress_policy(
                full_name, namespace, labels, network_policy.server_rules(labels, clients, features.tls, args.ui, spec.wan), child
            )
        scheme, api_port = ("https", cfg.HTTPS_PORT) if features.tls else ("http", cfg.HTTP_PORT)
        self.api_address = pulumi.Output.concat(f"{scheme}://", service.metadata.name, ".", namespace, f".svc:{api_port}")
        self.datacenter = pulumi.Output.from_input(cluster.datacenter)
        self.retry_join = retry_join
        self.ui_service_name = ui_name
        self.register_outputs(
            {
                "namespace": self.namespace,
                "service_name": self.service_name,
                "api_address": self.api_address,
                "datacenter": self.datacenter,
                "retry_join": self.retry_join,
                "ui_service_name": self.ui_service_name,
            }
        )


def management_token_from_file(prefix: str = "") -> str:
    """A shell command that prints the management token from this pod's own token file, after
    `prefix` (a header name for curl's stdin): never onto a command line or into the environment."""
    return f'sed -n \'s/.*"initial_management": *"\\([^"]*\\)".*/{prefix}\\1/p\' "{cfg.ACL_DIR}/$POD_NAME.json"'


# How often the stopping leader asks for a transfer before it stops as leader, each answer bounded
# (Raft itself gives a transfer one election timeout, 1 s at raft_multiplier 1) and followed
# by a pause of two election timeouts, so that a transfer still under way is not raced by the next;
# every try fits in the pod's grace period (TERMINATION_GRACE_SECONDS).
HANDOFF_TRIES = 3
HANDOFF_TRY_SECONDS = 3
HANDOFF_PAUSE_SECONDS = 2
# How long a stopped server's address is held at most (address_hold): past memberlist's longest
# suspicion on these clusters (about 25 s, with no other member confirming it).
ADDRESS_HOLD_SECONDS = 30
# The pod's grace period: the handoff's tries (about 25 s at most), the agent's stop, and the
# address hold after it, whose last round asks up to six other servers, 3 s each.
TERMINATION_GRACE_SECONDS = 90


def leadership_handoff(acls: bool) -> str:
    """The server's preStop: when this pod is the Raft leader, it hands leadership to an
    up-to-date follower before it stops, so stopping it (a roll, a drain) costs no election
    timeout. Other servers do nothing. Raft gives a transfer one election timeout, which a
    busy machine can miss: while this pod leads it asks again (HANDOFF_TRIES in all), going by who
    leads after each try and a pause, not by the transfer's answer (a success can leave it leading:
    a request that reached it just after it lost leadership is forwarded to the new leader, which
    gives leadership away; a failure or a timeout can still move it). The transfer needs
    operator:write: the management token is read from the pod's own token file into curl's stdin,
    never onto a command line or into the environment. A leader that could not hand over fails
    the hook, which the kubelet records as an event (FailedPreStopHook), and stops as leader; a
    single server (its own address the only one in /v1/status/peers) does so at once, without
    tries that cannot succeed. Consul names the leader `"ip:8300"`, an IPv6 address in brackets."""
    port = cfg.SERVER_RPC_PORT
    leads = (
        "leads() {\n"
        f'  case "$(curl -s -m 2 {cfg.LOCAL_HTTP_URL}/v1/status/leader)" in\n'
        f'    "\\"$POD_IP:{port}\\"" | "\\"[$POD_IP]:{port}\\"") return 0 ;;\n'
        "  esac\n"
        "  return 1\n"
        "}\n"
    )
    transfer = f"curl -sSf -m {HANDOFF_TRY_SECONDS} -X POST{{header}} {cfg.LOCAL_HTTP_URL}/v1/operator/raft/transfer-leader"
    transfer = (
        management_token_from_file("X-Consul-Token: ") + " | " + transfer.format(header=" -H @-") if acls else transfer.format(header="")
    )
    # Asked once, before the first try, of the agent that has just answered: one server in its
    # Raft configuration (a JSON list without a comma; Consul answers it without a leader or a
    # token) has nobody to hand over to.
    alone = (
        f'  [ "$try" -gt 0 ] || case "$(curl -s -m 1 {cfg.LOCAL_HTTP_URL}/v1/status/peers)" in ' + "'[\"'*,*) ;; '[\"'*) exit 1 ;; esac\n"
    )
    return (
        leads
        + "try=0\n"
        + "while leads; do\n"
        + f'  [ "$try" -lt {HANDOFF_TRIES} ] || exit 1\n'
        + alone
        + "  try=$((try + 1))\n"
        + f"  {transfer} || :\n"
        + f"  sleep {HANDOFF_PAUSE_SECONDS}\n"
        + "done\n"
    )


def address_hold(tls: bool, acls: bool, max_seconds: int = ADDRESS_HOLD_SECONDS) -> str:
    """The preStop of the server pod's `address-hold` sidecar: once the agent has stopped, the
    pod's address stays up, refusing connections, until every other server sees this server
    failed or gone (`consul members`), and a second more for that news to reach the client
    agents; `max_seconds` at most. The kubelet runs every container's preStop as the pod starts
    to stop (a sidecar's SIGTERM alone waits for the agent), so the hook first waits until the
    agent no longer listens on the server port in the pod's network namespace.

    A client agent calls one server and keeps its connection. A call that finds that connection
    closed makes the agent move to another server at once; a dial to the server's vanished pod
    IP waits for the kernel's neighbour timeout or the pool's fixed 10 s instead, and the
    agent's other calls to it wait behind that dial. An agent dials again when it has no
    connection left to reuse, and its periodic rebalance pings a server it may not have used
    since; refused, the dial fails at once. Once the servers' gossip declares this server
    failed, every client agent has dropped it.

    A server that is down (connection refused, no such host: every server stopped at once)
    holds nothing; one that answers neither yes nor no (a timeout, a 403, a TLS error, a table
    without its own row) holds the address, as a server that sees it alive does. Held to the
    end, the hook fails, which the kubelet records as an event (FailedPreStopHook) with what
    held it."""
    scheme, port = ("https", cfg.HTTPS_PORT) if tls else ("http", cfg.HTTP_PORT)
    ca = f" -ca-file={cfg.CA_FILE}" if tls else ""
    listening = f":{cfg.SERVER_RPC_PORT:04X} [0-9A-F]+:0000 0A"
    return (
        'errors=$(mktemp)\ntoken=""\n'
        + 'trap \'rm -f "$errors" ${token:+"$token"}\' EXIT\n'
        + "set -f\n"
        + f"while grep -qE '{listening}' /proc/net/tcp /proc/net/tcp6 2>/dev/null; do sleep 1; done\n"
        + token_file_for_cli(acls)
        + join_hosts()
        + f"""start=$(date +%s)
while :; do
  hold=""
  for host in $hosts; do
    if ! table=$(timeout 3 consul members -http-addr={scheme}://$host:{port}{ca} $auth 2>"$errors"); then
      [ -s "$errors" ] || echo "no answer within 3 s" > "$errors"
      grep -qE 'connection refused|no such host' "$errors" || hold="$host: $(head -c 200 "$errors" | tr '\\n' ' ')"
      continue
    fi
    printf '%s\\n' "$table" | awk -v self="${{host%%.*}}" '$1 == self {{found = 1}} END {{exit !found}}' || {{
      hold="$host: its members table does not list it"
      continue
    }}
    status=$(printf '%s\\n' "$table" | awk -v me="$POD_NAME" '$1 == me {{print $3}}')
    case "$status" in failed | left | "") ;; *) hold="$host sees $POD_NAME $status" ;; esac
  done
  if [ -z "$hold" ]; then
    sleep 1
    echo "address held $(($(date +%s) - start)) s"
    exit 0
  fi
  [ $(($(date +%s) - start)) -lt {max_seconds} ] || break
  sleep 1
done
echo "stopping after $(($(date +%s) - start)) s although $hold"
exit 1
"""
    )


# The address-hold sidecar idles until Kubernetes stops it (its preStop does the work): it asks
# for little for the pod's life, and its limit has room for the consul CLI the hook runs once a
# second, as the rejoin wait does.
ADDRESS_HOLD_IDLE = "trap 'exit 0' TERM\nwhile :; do sleep 3600 & wait $!; done\n"
ADDRESS_HOLD_RESOURCES = Resources(requests={"cpu": "5m", "memory": "32Mi"}, limits={"cpu": "200m", "memory": "128Mi"})


def voter_readiness(acls: bool) -> str:
    """The server's readiness check, one call to its own Raft configuration (`?stale`: as this
    server holds it): Ready when it names a leader and lists this server as a voter. A server that
    joined afresh is a non-voter until autopilot promotes it; a roll that went on meanwhile would
    leave fewer voters than a quorum. Reading the configuration needs operator:read: the
    management token goes from the pod's own token file into curl's stdin. Refused (403: a token
    that does not resolve yet, as in a secondary datacenter before ACL replication works), the
    check falls back to "sees a leader", so that no server is held NotReady for good by its
    token. The JSON's layout (pretty or not) does not matter."""
    header, token = (" -H @-", management_token_from_file("X-Consul-Token: ") + " | ") if acls else ("", "")
    url = cfg.LOCAL_HTTP_URL
    return (
        f"out=$({token}curl -s -m 2{header} -w ' %{{http_code}}' '{url}/v1/operator/raft/configuration?stale') || exit 1\n"
        + 'case "${out##* }" in\n'
        + "  200) ;;\n"
        + f"  403) curl -s -m 2 {url}/v1/status/leader | grep -qE '\".+\"'; exit ;;\n"
        + "  *) exit 1 ;;\n"
        + "esac\n"
        + "servers=$(printf '%s' \"${out% *}\" | tr -d ' \\t\\n' | tr '{' '\\n')\n"
        + "printf '%s\\n' \"$servers\" | grep -qF '\"Leader\":true'\n"
        + 'printf \'%s\\n\' "$servers" | grep -F "\\"Node\\":\\"$POD_NAME\\"" | grep -qF \'"Voter":true\''
    )


def join_hosts() -> str:
    """A shell line that sets `hosts` to the servers in this pod's join file (its `retry_join`
    list, ports dropped), separated by spaces."""
    return (
        f"""hosts=$(tr -d '\\n' < "{cfg.JOIN_DIR}/$POD_NAME.json" | sed 's/[][{{}}" ]//g; s/.*retry_join://;"""
        + """ s/,retry_interval:.*//; s/:[0-9]*//g' | tr ',' ' ')\n"""
    )


def token_file_for_cli(acls: bool) -> str:
    """Shell lines that set `auth` to the consul CLI's token option: the management token copied
    from the pod's own token file into a temporary file (`token`, which the caller's EXIT trap
    removes), never onto a command line or into the environment; empty without ACLs."""
    if not acls:
        return 'auth=""\n'
    return "token=$(mktemp)\n" + management_token_from_file() + ' > "$token"\nauth="-token-file=$token"\n'


# Memberlist's dead-node reclaim time in Consul (30 s, not configurable), and a margin: the others
# accept a failed member's new address only once it has been dead this long.
RECLAIM_SECONDS = 32
# How long a returning server waits at most for the others to let go of its old address.
REJOIN_WAIT_SECONDS = 150
# How long a server that answers neither yes nor no (a timeout, a 403, a TLS error: the
# NetworkPolicy agent may not admit a new pod's address yet) is asked again before the others'
# answers are taken without it.
UNSURE_SECONDS = 15
# The consul CLI, once a second: a little CPU, and room for the binary.
REJOIN_WAIT_RESOURCES = Resources(requests={"cpu": "20m", "memory": "64Mi"}, limits={"cpu": "200m", "memory": "128Mi"})
# What the init container reads: the CA to verify the servers' API, the token file to ask them.
REJOIN_WAIT_VOLUMES = ("tls-ca", "acl-tokens")


def rejoin_wait(
    tls: bool,
    acls: bool,
    reclaim_seconds: int = RECLAIM_SECONDS,
    max_seconds: int = REJOIN_WAIT_SECONDS,
    unsure_seconds: int = UNSURE_SECONDS,
) -> str:
    """The init container's script: a server that comes back at a new pod IP starts only once the
    other servers have let go of its old address.

    Until then memberlist refuses its new address as a name conflict (the old one is alive or
    suspect, then dead for the reclaim time), the leader keeps replicating to the old address,
    and the returning server, hearing no leader, starts an election every 1 to 2 s. Consul 1.16's
    Raft has no pre-vote: each election raises the term, and when the leader reaches the server
    at last the higher term makes it step down (seconds without a leader, failed writes).

    So the script asks each other server (`consul members` against its API) how it sees this
    pod's name: not a member (a new server) or at this pod's address (a restart in place) lets it
    start; alive at another address (serf shows a suspect member as alive) makes it wait; failed
    or left makes it wait out the reclaim time from when that server first answered so (a
    force-leave changes serf's status, not memberlist's dead-node timer). Only a server that has a leader holds it back: without one
    there is no leader to depose, and this server may be needed for a quorum. A server that is
    down (connection refused, no such host: a first formation, every server restarted together)
    holds nothing back; one that answers neither yes nor no (a timeout, a 403, a TLS error, a
    table without its own row, as a token without node:read gets) is asked again for
    `unsure_seconds`. It starts after two rounds in a row in which nothing held it, and after
    `max_seconds` whatever it sees. SIGTERM ends the wait at once.

    Memberlist letting go is not enough: the leader's heartbeat to the old address may be in the
    middle of a dial to the vanished pod IP, which waits out the Raft transport's fixed 10 s, and
    Raft keeps that dial when autopilot updates the address. So just before it starts, when nothing
    held it back, the script has the leader remove this server's entry at its old address
    (`remove-peer`, through any server with a leader), if every other server is a voter and alive:
    until its promotion this server can't vote, and the others must hold the quorum alone. After
    `max_seconds` it starts without removing anything (the old instance may still be alive). When it joins, autopilot adds it afresh as a non-voter, the leader
    replicates to the new address at once, and autopilot promotes it after its stabilization
    time; until then the readiness probe (`voter_readiness`) holds the pod not Ready, so a roll
    never stops the next server while this one is a non-voter."""
    scheme, port = ("https", cfg.HTTPS_PORT) if tls else ("http", cfg.HTTP_PORT)
    ca = f" -ca-file={cfg.CA_FILE}" if tls else ""
    return (
        'errors=$(mktemp)\ntoken=""\n'
        # The token file is on the pod's /tmp, which the agent's container mounts too.
        + 'trap \'rm -f "$errors" ${token:+"$token"}\' EXIT\n'
        + "trap 'exit 143' TERM INT\n"
        # Nothing here is a file pattern: an IPv6 address in brackets is not one either.
        + "set -f\n"
        + token_file_for_cli(acls)
        + join_hosts()
        + f"""# The leader's Raft entry for this server at its old address goes, through the first server
# that has a leader: the leader stops replicating to that address (each dial to a vanished pod
# IP waits out the transport's 10 s), and when this server joins at its new address autopilot
# adds it afresh and replicates to it at once, before its own election timer (1 to 2 s) fires.
let_go_of_old_entry() {{
  for host in $hosts; do
    api="-http-addr={scheme}://$host:{port}{ca}"
    peers=$(timeout 3 consul operator raft list-peers $api $auth 2>/dev/null) || continue
    set -- $(printf '%s\n' "$peers" | awk -v me="$POD_NAME" '$1 == me {{print $2, $3}}')
    [ $# -eq 2 ] || return 0
    address=${{2%:*}}; address=${{address#[}}; address=${{address%]}}
    [ "$address" = "$POD_IP" ] && return 0
    # Until autopilot promotes it again this server can't vote: every other server must be a
    # voter, alive, or the entry stays (and the leader may still be deposed once).
    members=$(timeout 3 consul members $api $auth 2>/dev/null) || members=""
    weak=$(printf '%s\n' "$peers" | awk -v me="$POD_NAME" 'NR > 1 && $1 != me {{print $1, $5}}' | while read -r name voter; do
      [ "$voter" = true ] && printf '%s\n' "$members" | awk -v n="$name" '$1 == n && $3 == "alive" {{f = 1}} END {{exit !f}}' || printf '%s ' "$name"
    done)
    if [ -n "$weak" ]; then
      echo "$host's leader keeps $POD_NAME's Raft entry at $2: not every other server is an alive voter (${{weak% }})"
      return 0
    fi
    if timeout 10 consul operator raft remove-peer $api $auth -id="$1" >/dev/null 2>"$errors"; then
      echo "$host's leader let go of $POD_NAME's Raft entry at $2: it replicates to $POD_IP afresh"
    else
      echo "$host's leader kept $POD_NAME's Raft entry at $2: $(head -c 200 "$errors" | tr '\n' ' ')"
    fi
    return 0
  done
}}
start=$(date +%s)
failed_since=""
clear=0
said=-10
while :; do
  now=$(date +%s)
  hold=""
  unsure=""
  for host in $hosts; do
    api="-http-addr={scheme}://$host:{port}{ca}"
    if ! table=$(timeout 3 consul members $api $auth 2>"$errors"); then
      [ -s "$errors" ] || echo "no answer within 3 s" > "$errors"
      grep -qE 'connection refused|no such host' "$errors" || unsure="$host: $(head -c 200 "$errors" | tr '\\n' ' ')"
      continue
    fi
    # A server lists itself; a table without it was filtered (a token without node:read).
    printf '%s\\n' "$table" | awk -v self="${{host%%.*}}" '$1 == self {{found = 1}} END {{exit !found}}' || {{
      unsure="$host: its members table does not list it"
      continue
    }}
    seen=$(date +%s)
    set -- $(printf '%s\\n' "$table" | awk -v me="$POD_NAME" '$1 == me {{print $2, $3}}')
    [ $# -eq 2 ] || continue
    address=${{1%:*}}; address=${{address#[}}; address=${{address%]}}
    [ "$address" = "$POD_IP" ] && continue
    # Without a leader there is no one to depose, and this server may be needed for a quorum.
    timeout 3 consul operator raft list-peers $api $auth >/dev/null 2>&1 || continue
    case "$2" in
      failed|left)
        since=$(printf '%s\\n' $failed_since | awk -F= -v h="$host" '$1 == h {{print $2}}')
        [ -n "$since" ] || {{ since=$seen; failed_since="$failed_since $host=$seen"; }}
        [ $((seen - since)) -ge {reclaim_seconds} ] || hold="$host sees $POD_NAME $2 at $1 since $((seen - since)) s" ;;
      *) hold="$host sees $POD_NAME $2 at $1" ;;
    esac
  done
  if [ -n "$unsure" ] && [ $((now - start)) -lt {unsure_seconds} ]; then
    hold="${{hold:-$unsure}}"
  fi
  if [ -z "$hold" ]; then clear=$((clear + 1)); else clear=0; fi
  if [ "$clear" -ge 2 ]; then
    echo "starting after $((now - start)) s: no other server holds $POD_NAME at an old address${{unsure:+ (no answer from $unsure)}}"
    let_go_of_old_entry
    exit 0
  fi
  if [ $((now - start)) -ge {max_seconds} ]; then
    echo "starting after $((now - start)) s although $hold"
    exit 0
  fi
  if [ -n "$hold" ] && [ $((now - said)) -ge 10 ]; then
    echo "waiting after $((now - start)) s: $hold"
    said=$now
  fi
  sleep 1
done
"""
    )


def _pod_spec(
    labels: Labels,
    cluster: ClusterSpec,
    spec: ServerSpec,
    secrets: TierSecrets,
    service_account: pulumi.Input[str],
    config_map: pulumi.Input[str],
    join_map: pulumi.Input[str],
) -> core.PodSpecArgs:
    tls = secrets.features.tls
    wiring = pods.secret_wiring(secrets)
    # What the init containers that run the consul CLI against the other servers read: the join
    # file, the CA, the token file, and /tmp for the token's copy.
    cli_mounts = [
        core.VolumeMountArgs(name="join", mount_path=cfg.JOIN_DIR, read_only=True),
        core.VolumeMountArgs(name="tmp", mount_path="/tmp"),
        *[mount for mount in wiring.mounts if mount.name in REJOIN_WAIT_VOLUMES],
    ]
    # Answers 200 with or without a leader: restarts only an agent whose HTTP server hangs,
    # never one that is waiting out an election. With TLS only HTTPS listens beyond loopback.
    http_api = core.HTTPGetActionArgs(
        path="/v1/status/leader",
        port=cfg.HTTPS_PORT if tls else cfg.HTTP_PORT,
        scheme="HTTPS" if tls else None,
    )
    liveness = core.ProbeArgs(http_get=http_api, period_seconds=10, timeout_seconds=5, failure_threshold=6)
    # A server opens its HTTP API only once it has restored its latest Raft snapshot and replayed
    # the log after it, which for a large state takes minutes: until the API first answers, only
    # this probe runs (liveness and readiness wait for it), for up to SERVER_START_BUDGET seconds.
    startup = core.ProbeArgs(
        http_get=http_api,
        period_seconds=STARTUP_PERIOD,
        timeout_seconds=5,
        failure_threshold=SERVER_START_BUDGET // STARTUP_PERIOD,
    )
    return core.PodSpecArgs(
        service_account_name=service_account,
        automount_service_account_token=False,
        termination_grace_period_seconds=TERMINATION_GRACE_SECONDS,
        security_context=pods.pod_security_context(),
        priority_class_name=spec.priority_class_name,
        node_selector=dict(spec.node_selector) or None,
        tolerations=pods.tolerations(spec.tolerations) or None,
        affinity=pods.node_anti_affinity(labels, spec.anti_affinity),
        topology_spread_constraints=pods.zone_spread(labels, spec.zone_spread),
        volumes=[
            *pods.agent_volumes(config_map, wiring),
            core.VolumeArgs(name="join", config_map=core.ConfigMapVolumeSourceArgs(name=join_map)),
        ],
        init_containers=[
            core.ContainerArgs(
                name="rejoin-wait",
                image=cluster.image,
                command=["/bin/sh", "-c", rejoin_wait(tls, secrets.features.acls)],
                env=[pods.field_env("POD_IP", "status.podIP"), pods.field_env("POD_NAME", "metadata.name")],
                resources=pods.resource_requirements(REJOIN_WAIT_RESOURCES),
                security_context=pods.container_security_context(),
                volume_mounts=cli_mounts,
            ),
            # A sidecar (an init container that runs on): Kubernetes stops it after the agent.
            core.ContainerArgs(
                name="address-hold",
                image=cluster.image,
                restart_policy="Always",
                command=["/bin/sh", "-c", ADDRESS_HOLD_IDLE],
                env=[pods.field_env("POD_NAME", "metadata.name")],
                lifecycle=core.LifecycleArgs(
                    pre_stop=core.LifecycleHandlerArgs(
                        exec_=core.ExecActionArgs(command=["/bin/sh", "-c", address_hold(tls, secrets.features.acls)])
                    )
                ),
                resources=pods.resource_requirements(ADDRESS_HOLD_RESOURCES),
                security_context=pods.container_security_context(),
                volume_mounts=cli_mounts,
            ),
        ],
        containers=[
            pods.agent_container(
                cluster.image,
                node_name="$(POD_NAME)",
                ports=[
                    core.ContainerPortArgs(name=port_name, container_port=port, protocol=protocol)
                    for port_name, port, protocol in server_ports(tls)
                ],
                readiness_probe=pods.exec_probe(voter_readiness(secrets.features.acls), period=3, failure_threshold=2, initial_delay=5),
                liveness_probe=liveness,
                startup_probe=startup,
                lifecycle=core.LifecycleArgs(
                    pre_stop=core.LifecycleHandlerArgs(
                        exec_=core.ExecActionArgs(command=["/bin/sh", "-c", leadership_handoff(secrets.features.acls)])
                    )
                ),
                resources=spec.resources,
                wiring=wiring,
                args=[f"-config-file={cfg.JOIN_DIR}/$(POD_NAME).json"],
                mounts=[core.VolumeMountArgs(name="join", mount_path=cfg.JOIN_DIR, read_only=True)],
            )
        ],
    )
