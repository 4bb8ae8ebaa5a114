"""The namespace Consul runs in, when the program owns it."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes.core.v1 as core
import pulumi_kubernetes.meta.v1 as meta

# Every pod this program declares passes Pod Security "restricted"; enforcing it on the
# namespace keeps anything else deployed there to the same bar.
POD_SECURITY_LABELS = {
    f"pod-security.kubernetes.io/{mode}{suffix}": value
    for mode in ("enforce", "audit", "warn")
    for suffix, value in (("", "restricted"), ("-version", "latest"))
}


def restricted_namespace(name: str, labels: dict[str, str], opts: pulumi.ResourceOptions | None = None) -> core.Namespace:
    """A namespace labelled to enforce, audit and warn on Pod Security "restricted"."""
    return core.Namespace(
        name,
        metadata=meta.ObjectMetaArgs(name=name, labels={**labels, **POD_SECURITY_LABELS}),
        opts=opts,
    )
