"""The Consul domain through the cluster's DNS: a server block in CoreDNS's Corefile.

With ``consul:coreDnsForward`` "on", :class:`ConsulCoreDnsForward` reads ConfigMap
``kube-system/coredns`` (the ConfigMap kubeadm and most distributions give CoreDNS) and patches its
``Corefile`` with server-side apply: the Corefile as it was, and after it one server block between
two comment lines that name this stack's namespace::

    # consul consul: the Consul domain, forwarded to consul-dns (begin)
    consul:53 {
        errors
        cache 30
        forward . 10.96.0.53
    }
    # consul consul (end)

CoreDNS cannot forward to a Service name, so the block names consul-dns's clusterIP, as the
Service reports it. CoreDNS's ``reload`` plugin picks the change up; every other line stays as it was.

A Patch resource that is deleted gives up the fields it applied, and the Corefile is one field: a
plain delete would leave CoreDNS without a Corefile. So the patch is never deleted from the
cluster (``retain_on_delete``), and while the block is in, the patch is protected: ``pulumi destroy``
refuses. "removed" applies the Corefile without the block, after which the stack can be destroyed
or the setting turned "off".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes.core.v1 as core
import pulumi_kubernetes.meta.v1 as meta

from .model import CoreDnsForward
from .settings import PROJECT

CONFIGMAP_NAMESPACE = "kube-system"
CONFIGMAP_NAME = "coredns"
COREFILE_KEY = "Corefile"
# kube-addon-manager (and the managed-cluster addons built on it) put their own copy back.
RECONCILED_BY_ADDON_MANAGER = ("addonmanager.kubernetes.io/mode", "Reconcile")


class CorefileError(Exception):
    """The cluster's CoreDNS configuration cannot take the block; the message says why."""


def _markers(namespace: str) -> tuple[str, str]:
    return (
        f"# {PROJECT} {namespace}: the Consul domain, forwarded to consul-dns (begin)",
        f"# {PROJECT} {namespace} (end)",
    )


def server_block(namespace: str, domain: str, dns_ip: str) -> str:
    """The block as it is appended: a blank line, the begin marker, the server block, the end marker."""
    begin, end = _markers(namespace)
    return f"\n{begin}\n{domain}:53 {{\n    errors\n    cache 30\n    forward . {dns_ip}\n}}\n{end}\n"


def without_block(corefile: str, namespace: str) -> str:
    """The Corefile with this namespace's block (as :func:`server_block` appended it) taken out."""
    begin, end = _markers(namespace)
    return re.sub("\n" + re.escape(begin) + "\n.*?\n" + re.escape(end) + "\n", "", corefile, flags=re.DOTALL)


def server_block_zones(corefile: str) -> list[str]:
    """The zones of the Corefile's server blocks ("consul:53 {" -> "consul", ".:53 {" -> ".")."""
    zones: list[str] = []
    depth = 0
    for raw in corefile.splitlines():
        line = raw.split("#", 1)[0].strip()
        if depth == 0 and line.endswith("{"):
            for key in re.split(r"[\s,]+", line[:-1].strip()):
                # [scheme://]zone[:port]
                zone = re.sub(r":\d+$", "", re.sub(r"^[a-z]+://", "", key))
                if zone:
                    zones.append(zone.rstrip(".") or ".")
        depth += line.count("{") - line.count("}")
    return zones


def with_block(corefile: str, namespace: str, domain: str, dns_ip: str) -> str:
    """The Corefile with this namespace's block for `domain`, replacing an earlier one of its own."""
    base = without_block(corefile, namespace)
    if domain in server_block_zones(base):
        raise CorefileError(
            f"the Corefile already has a server block for {domain}, not this stack's (a second stack in the cluster, or "
            "one written by hand); CoreDNS would refuse two. Leave coreDnsForward off here: that block already answers "
            "the domain, if it forwards to a Consul agent of this cluster"
        )
    return base + server_block(namespace, domain, dns_ip)


def live_corefile(data: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> str:
    """The Corefile of the cluster's CoreDNS ConfigMap, or why it cannot be patched."""
    corefile = (data or {}).get(COREFILE_KEY)
    if not corefile:
        raise CorefileError(
            f"ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} has no {COREFILE_KEY}: this cluster's DNS is not CoreDNS as "
            "kubeadm deploys it. Forward the Consul domain to consul-dns in its own configuration (README, "
            '"Consul DNS from every pod")'
        )
    key, value = RECONCILED_BY_ADDON_MANAGER
    if (labels or {}).get(key) == value:
        raise CorefileError(
            f"ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} is labelled {key}={value}: the addon manager would put its "
            "own Corefile back. Forward the Consul domain through the mechanism the cluster offers (README, "
            '"Consul DNS from every pod")'
        )
    return corefile


def patched_corefile(
    forward: CoreDnsForward,
    namespace: str,
    domain: str,
    dns_ip: str | None,
    data: Mapping[str, str] | None,
    labels: Mapping[str, str] | None,
) -> str:
    """The Corefile to apply: with the block ("on") or without it ("removed"). Raises pulumi.RunError,
    whose message is shown without a traceback, naming the setting and the value."""
    try:
        corefile = live_corefile(data, labels)
        if forward is CoreDnsForward.REMOVED:
            return without_block(corefile, namespace)
        if not dns_ip:
            raise CorefileError("consul-dns has no clusterIP to forward to")
        if not _reloads(corefile):
            pulumi.log.warn(
                f"{PROJECT}:coreDnsForward: the Corefile has no reload plugin, so CoreDNS reads the block at its next start: "
                f"kubectl -n {CONFIGMAP_NAMESPACE} rollout restart deployment coredns"
            )
        return with_block(corefile, namespace, domain, dns_ip)
    except CorefileError as refused:
        raise pulumi.RunError(f'invalid {PROJECT}:coreDnsForward "{forward.value}": {refused}') from None


def _reloads(corefile: str) -> bool:
    return any(line.split("#", 1)[0].split()[:1] == ["reload"] for line in corefile.splitlines())


@dataclass(frozen=True)
class ConsulCoreDnsForwardArgs:
    """Inputs of :class:`ConsulCoreDnsForward`.

    Attributes:
        forward: "on" (block in) or "removed" (block out); "off" declares nothing.
        namespace: the stack's namespace, which names the block.
        domain: the Consul domain the block answers.
        dns_ip: consul-dns's clusterIP (None when the stack declares no consul-dns).
    """

    forward: CoreDnsForward
    namespace: str
    domain: str
    dns_ip: pulumi.Input[str | None] | None


class ConsulCoreDnsForward(pulumi.ComponentResource):
    """The read of ConfigMap kube-system/coredns and the patch of its Corefile."""

    corefile: pulumi.Output[str]

    def __init__(self, name: str, args: ConsulCoreDnsForwardArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("consul:index:ConsulCoreDnsForward", name, None, opts)
        live = core.ConfigMap.get(
            f"{name}-coredns-live", f"{CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}", opts=pulumi.ResourceOptions(parent=self)
        )

        def patched(values: list[Any]) -> str:
            dns_ip, data, metadata = values
            return patched_corefile(args.forward, args.namespace, args.domain, dns_ip, data, (metadata or {}).get("labels"))

        self.corefile = pulumi.Output.all(args.dns_ip, live.data, live.metadata).apply(patched)
        core.ConfigMapPatch(
            f"{name}-coredns",
            metadata=meta.ObjectMetaPatchArgs(
                name=CONFIGMAP_NAME,
                namespace=CONFIGMAP_NAMESPACE,
                # The Corefile was written by whoever installed CoreDNS: this patch takes the field over.
                annotations={"pulumi.com/patchForce": "true"},
            ),
            data={COREFILE_KEY: self.corefile},
            opts=pulumi.ResourceOptions(
                parent=self,
                # Deleting the patch would take the whole Corefile with it: "removed" takes the block out.
                retain_on_delete=True,
                protect=args.forward is CoreDnsForward.ON,
            ),
        )
        self.register_outputs({"corefile": self.corefile})
