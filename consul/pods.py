"""Pod-level building blocks shared by the server and client tiers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes.core.v1 as core
import pulumi_kubernetes.meta.v1 as meta

from .agent_config import (
    ACL_DIR,
    CHECKSUM_ANNOTATION,
    CONFIG_DIR,
    DATA_DIR,
    GOSSIP_DIR,
    GOSSIP_FILE,
    SECRETS_CHECKSUM_ANNOTATION,
    TLS_DIR,
    checksum,
)
from .labels import Labels
from .model import Placement, Resources, Toleration
from .security import TierSecrets

HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
ZONE_TOPOLOGY = "topology.kubernetes.io/zone"

CONSUL_UID = 100
CONSUL_GID = 1000


def checksum_annotations(files: pulumi.Output[dict[str, str]], secrets: TierSecrets) -> dict[str, pulumi.Input[str]]:
    """Digests of everything a pod reads at start (its config files and its Secrets): a change of
    either changes the pod template, so the tier rolls, one server at a time."""
    annotations: dict[str, pulumi.Input[str]] = {CHECKSUM_ANNOTATION: files.apply(checksum)}
    if secrets.checksum is not None:
        annotations[SECRETS_CHECKSUM_ANNOTATION] = secrets.checksum
    return annotations


def pod_security_context() -> core.PodSecurityContextArgs:
    """Non-root with the image's consul user; fsGroup makes mounted volumes writable by it."""
    return core.PodSecurityContextArgs(
        run_as_non_root=True,
        run_as_user=CONSUL_UID,
        run_as_group=CONSUL_GID,
        fs_group=CONSUL_GID,
        seccomp_profile=core.SeccompProfileArgs(type="RuntimeDefault"),
    )


def container_security_context() -> core.SecurityContextArgs:
    """What Pod Security "restricted" asks of every container, and a read-only root filesystem."""
    return core.SecurityContextArgs(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        capabilities=core.CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=core.SeccompProfileArgs(type="RuntimeDefault"),
    )


def resource_requirements(resources: Resources) -> core.ResourceRequirementsArgs:
    return core.ResourceRequirementsArgs(requests=dict(resources.requests), limits=dict(resources.limits))


def tolerations(items: Sequence[Toleration]) -> list[core.TolerationArgs]:
    return [
        core.TolerationArgs(
            key=t.key,
            operator=t.operator,
            value=t.value,
            effect=t.effect,
            toleration_seconds=t.toleration_seconds,
        )
        for t in items
    ]


def field_env(name: str, field_path: str) -> core.EnvVarArgs:
    """An environment variable from the downward API (``status.podIP``, ``spec.nodeName``…)."""
    return core.EnvVarArgs(
        name=name,
        value_from=core.EnvVarSourceArgs(field_ref=core.ObjectFieldSelectorArgs(field_path=field_path)),
    )


def exec_probe(command: str, *, period: int, failure_threshold: int, initial_delay: int = 0, timeout: int = 5) -> core.ProbeArgs:
    return core.ProbeArgs(
        exec_=core.ExecActionArgs(command=["/bin/sh", "-ec", command]),
        initial_delay_seconds=initial_delay,
        period_seconds=period,
        failure_threshold=failure_threshold,
        success_threshold=1,
        timeout_seconds=timeout,
    )


def serving_readiness_probe(port: str) -> core.ProbeArgs:
    """Ready means "this agent accepts connections on its HTTP API". Every HTTP endpoint a probe
    could call without a token is an RPC to the servers on a client (/v1/status/leader answers 500
    "No known Consul servers" while they are all down), so readiness is the listener itself: an
    election or a server outage leaves a client Ready, and its node keeps agent-local calls and DNS
    (answered from its cache under extend-cache)."""
    return core.ProbeArgs(
        tcp_socket=core.TCPSocketActionArgs(port=port),
        initial_delay_seconds=2,
        period_seconds=3,
        failure_threshold=2,
        success_threshold=1,
        timeout_seconds=2,
    )


@dataclass(frozen=True)
class SecretWiring:
    """How an agent gets its Secrets: environment, extra arguments, volumes and mounts."""

    env: list[core.EnvVarArgs] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    volumes: list[core.VolumeArgs] = field(default_factory=list)
    mounts: list[core.VolumeMountArgs] = field(default_factory=list)


def secret_wiring(secrets: TierSecrets) -> SecretWiring:
    """Every Secret as a read-only volume: the gossip key and the ACL tokens as config files the
    agent loads (never on its command line or in its environment), the CA and server certificate."""
    wiring = SecretWiring()
    mounted = [
        ("gossip", secrets.gossip, GOSSIP_DIR),
        ("tls-ca", secrets.ca, f"{TLS_DIR}/ca"),
        ("tls-server", secrets.server_tls, f"{TLS_DIR}/server"),
        ("acl-tokens", secrets.acl_tokens, ACL_DIR),
    ]
    for volume, secret_name, path in mounted:
        if secret_name is not None:
            wiring.volumes.append(
                core.VolumeArgs(name=volume, secret=core.SecretVolumeSourceArgs(secret_name=secret_name, default_mode=0o440))
            )
            wiring.mounts.append(core.VolumeMountArgs(name=volume, mount_path=path, read_only=True))
    if secrets.gossip is not None:
        wiring.args.append(f"-config-file={GOSSIP_FILE}")
    if secrets.acl_tokens is not None:
        wiring.args.append(f"-config-file={ACL_DIR}/{secrets.acl_file}")
    return wiring


def agent_volumes(config_map: pulumi.Input[str], wiring: SecretWiring, *, data: core.VolumeArgs | None = None) -> list[core.VolumeArgs]:
    """The config dir from a ConfigMap, a scratch /tmp, the Secrets, and (for clients) the `data`
    volume; the servers' comes from their claim template."""
    volumes = [
        core.VolumeArgs(name="config", config_map=core.ConfigMapVolumeSourceArgs(name=config_map)),
        core.VolumeArgs(name="tmp", empty_dir=core.EmptyDirVolumeSourceArgs()),
        *wiring.volumes,
    ]
    if data is not None:
        volumes.insert(0, data)
    return volumes


def agent_container(
    image: str,
    *,
    node_name: str,
    ports: Sequence[core.ContainerPortArgs],
    readiness_probe: core.ProbeArgs,
    liveness_probe: core.ProbeArgs,
    resources: Resources,
    startup_probe: core.ProbeArgs | None = None,
    data_sub_path_expr: str | None = None,
    wiring: SecretWiring,
    env: Sequence[core.EnvVarArgs] = (),
    args: Sequence[str] = (),
    lifecycle: core.LifecycleArgs | None = None,
    mounts: Sequence[core.VolumeMountArgs] = (),
    command: Sequence[str] = ("consul",),
) -> core.ContainerArgs:
    """The consul agent container: config from the config dir, advertising the pod IP, non-root.
    `command` runs the agent with the arguments that follow it (``agent …``)."""
    return core.ContainerArgs(
        name="consul",
        image=image,
        command=list(command),
        args=["agent", f"-config-dir={CONFIG_DIR}", *wiring.args, "-advertise=$(POD_IP)", f"-node={node_name}", *args],
        env=[
            field_env("POD_IP", "status.podIP"),
            field_env("POD_NAME", "metadata.name"),
            *env,
            *wiring.env,
            core.EnvVarArgs(name="CONSUL_DISABLE_PERM_MGMT", value="true"),
        ],
        ports=list(ports),
        readiness_probe=readiness_probe,
        liveness_probe=liveness_probe,
        startup_probe=startup_probe,
        lifecycle=lifecycle,
        resources=resource_requirements(resources),
        security_context=container_security_context(),
        volume_mounts=[
            core.VolumeMountArgs(name="data", mount_path=DATA_DIR, sub_path_expr=data_sub_path_expr),
            core.VolumeMountArgs(name="config", mount_path=CONFIG_DIR, read_only=True),
            core.VolumeMountArgs(name="tmp", mount_path="/tmp"),
            *wiring.mounts,
            *mounts,
        ],
    )


def node_anti_affinity(labels: Labels, placement: Placement) -> core.AffinityArgs:
    """Keep pods of one tier on distinct nodes: always (required) or where possible (preferred)."""
    term = core.PodAffinityTermArgs(
        label_selector=meta.LabelSelectorArgs(match_labels=labels.selector),
        topology_key=HOSTNAME_TOPOLOGY,
    )
    if placement is Placement.REQUIRED:
        rule = core.PodAntiAffinityArgs(required_during_scheduling_ignored_during_execution=[term])
    else:
        rule = core.PodAntiAffinityArgs(
            preferred_during_scheduling_ignored_during_execution=[core.WeightedPodAffinityTermArgs(weight=100, pod_affinity_term=term)]
        )
    return core.AffinityArgs(pod_anti_affinity=rule)


def zone_spread(labels: Labels, placement: Placement) -> list[core.TopologySpreadConstraintArgs] | None:
    """Spread pods of one tier evenly over zones, or None for no constraint."""
    if placement is Placement.NONE:
        return None
    return [
        core.TopologySpreadConstraintArgs(
            max_skew=1,
            topology_key=ZONE_TOPOLOGY,
            when_unsatisfiable="DoNotSchedule" if placement is Placement.REQUIRED else "ScheduleAnyway",
            label_selector=meta.LabelSelectorArgs(match_labels=labels.selector),
        )
    ]
