"""Pod-level building blocks shared by the server and client tiers."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi_kubernetes.core.v1 as core

from .model import Resources, Toleration

CONSUL_UID = 100
CONSUL_GID = 1000


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


def leader_readiness_probe(http_url: str) -> core.ProbeArgs:
    """Ready means "this agent sees a leader": /v1/status/leader returns a quoted address."""
    return exec_probe(f"curl -s {http_url}/v1/status/leader 2>/dev/null | grep -E '\".+\"'", period=3, failure_threshold=2, initial_delay=5)
