"""The namespace Consul runs in, when the program owns it."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes.core.v1 as core
import pulumi_kubernetes.meta.v1 as meta


def pod_security_labels(enforce: str) -> dict[str, str]:
    """Pod Security admission labels: enforce `enforce`, and always audit and warn on "restricted"."""
    levels = {"enforce": enforce, "audit": "restricted", "warn": "restricted"}
    labels = {}
    for mode, level in levels.items():
        labels[f"pod-security.kubernetes.io/{mode}"] = level
        labels[f"pod-security.kubernetes.io/{mode}-version"] = "latest"
    return labels


def consul_namespace(name: str, labels: dict[str, str], *, host_access: bool, opts: pulumi.ResourceOptions | None = None) -> core.Namespace:
    """The namespace, enforcing Pod Security "restricted", which every pod we declare passes.

    With ``host_access`` (client agents on host ports, the host network or a host path, which
    every level but "privileged" forbids) it enforces "privileged" and keeps warning on "restricted".

    `pulumi destroy` leaves the namespace: deleting it would delete the servers' data claims in it,
    which the StatefulSet keeps on purpose (README, "Removing Consul").
    """
    return core.Namespace(
        name,
        metadata=meta.ObjectMetaArgs(name=name, labels={**labels, **pod_security_labels("privileged" if host_access else "restricted")}),
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(retain_on_delete=True)),
    )
