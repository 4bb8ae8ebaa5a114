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

import pulumi
import pulumi_kubernetes.core.v1 as core
import pulumi_kubernetes.meta.v1 as meta

from .model import CoreDnsForward
from .settings import PROJECT

CONFIGMAP_NAMESPACE = "kube-system"
CONFIGMAP_NAME = "coredns"
COREFILE_KEY = "Corefile"
DNS_PORT = 53
# kube-addon-manager (and the managed-cluster addons built on it) put their own copy back.
RECONCILED_BY_ADDON_MANAGER = ("addonmanager.kubernetes.io/mode", "Reconcile")


class CorefileError(Exception):
    """The cluster's CoreDNS configuration cannot take the block; the message says why."""


def _markers(namespace: str) -> tuple[str, str]:
    return (
        f"# {PROJECT} {namespace}: the Consul domain, forwarded to consul-dns (begin)",
        f"# {PROJECT} {namespace} (end)",
    )


def server_block(namespace: str, domain: str, dns_ip: str, port: int = DNS_PORT) -> str:
    """The block as it is appended: a blank line, the begin marker, the server block, the end marker.
    It listens on `port`, the port of the Corefile's root block (53 unless CoreDNS runs on another)."""
    begin, end = _markers(namespace)
    return f"\n{begin}\n{domain}:{port} {{\n    errors\n    cache 30\n    forward . {dns_ip}\n}}\n{end}\n"


def without_block(corefile: str, namespace: str) -> str:
    """The Corefile with this namespace's block taken out: exactly as :func:`server_block` appended
    it, or else (the file re-saved with other line endings, its last newline trimmed) every line
    from the begin marker to the end marker. Raises CorefileError when a marker is left."""
    begin, end = _markers(namespace)
    exact = re.sub("\n" + re.escape(begin) + "\n.*?\n" + re.escape(end) + "\n", "", corefile, count=1, flags=re.DOTALL)
    if begin not in exact and end not in exact:
        return exact
    lenient = re.sub(
        r"(\r?\n)?[ \t]*" + re.escape(begin) + r".*?" + re.escape(end) + r"[ \t]*(\r?\n|$)", "", corefile, count=1, flags=re.DOTALL
    )
    if begin in lenient or end in lenient:
        raise CorefileError(
            f'the Corefile holds a marker of this stack\'s block ("{begin}" or "{end}") without the other: take the block '
            f"out by hand (kubectl -n {CONFIGMAP_NAMESPACE} edit configmap {CONFIGMAP_NAME})"
        )
    return lenient


def _directive_lines(corefile: str) -> list[str]:
    """The Corefile's lines without their comments, stripped."""
    return [raw.split("#", 1)[0].strip() for raw in corefile.splitlines()]


def server_block_keys(corefile: str) -> list[tuple[str, str, int]]:
    """The keys of the Corefile's server blocks as (transport, zone, port), lowercase, zones
    without their trailing dot ("Consul.:53 {" -> ("dns", "consul", 53); ".:53 {" -> ("dns", ".", 53)).
    A key list may run over several lines, up to the block's opening brace."""
    keys: list[tuple[str, str, int]] = []
    depth = 0
    pending = ""
    for line in _directive_lines(corefile):
        if depth == 0 and line and not line.startswith("}"):
            pending += " " + line
            if "{" not in line:
                continue
            for key in re.split(r"[\s,]+", pending.split("{", 1)[0].strip().lower()):
                match = re.fullmatch(r"(?:([a-z0-9+]+)://)?([^:]*?)(?::(\d+))?", key)
                if match and match.group(2):
                    transport = match.group(1) or "dns"
                    default_port = {"dns": DNS_PORT, "tls": 853, "https": 443, "grpc": 443, "quic": 853}.get(transport, DNS_PORT)
                    keys.append((transport, match.group(2).rstrip(".") or ".", int(match.group(3) or default_port)))
            pending = ""
        depth += line.count("{") - line.count("}")
    return keys


def with_block(corefile: str, namespace: str, domain: str, dns_ip: str) -> str:
    """The Corefile with this namespace's block for `domain`, replacing an earlier one of its own.
    The block listens on the port the root zone is served on over plain DNS (53 when there is none)."""
    base = without_block(corefile, namespace)
    keys = server_block_keys(base)
    port = next((port for transport, zone, port in keys if transport == "dns" and zone == "."), DNS_PORT)
    if ("dns", domain, port) in keys:
        raise CorefileError(
            f"the Corefile already has a server block for {domain} on port {port}, not this stack's (another stack in the "
            "cluster, or one written by hand); CoreDNS would refuse two. Leave coreDnsForward off here, or take that block out"
        )
    return base + server_block(namespace, domain, dns_ip, port)


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


def _refusal(forward: CoreDnsForward, refused: CorefileError) -> pulumi.RunError:
    """A RunError (shown without a traceback) naming the setting and its value."""
    return pulumi.RunError(f'invalid {PROJECT}:coreDnsForward "{forward.value}": {refused}')


def checked_corefile(forward: CoreDnsForward, data: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> str:
    """The live Corefile, once it is known to take the block (checked in preview too: it needs
    nothing that only exists after the first up)."""
    try:
        return live_corefile(data, labels)
    except CorefileError as refused:
        raise _refusal(forward, refused) from None


def patched_corefile(forward: CoreDnsForward, namespace: str, domain: str, dns_ip: str | None, corefile: str) -> str:
    """The Corefile to apply: with the block ("on") or without it ("removed")."""
    try:
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
        raise _refusal(forward, refused) from None


def _reloads(corefile: str) -> bool:
    return any(line.split()[:1] == ["reload"] for line in _directive_lines(corefile))


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

        live_text = pulumi.Output.all(live.data, live.metadata).apply(
            lambda values: checked_corefile(args.forward, values[0], (values[1] or {}).get("labels"))
        )
        self.corefile = pulumi.Output.all(args.dns_ip, live_text).apply(
            lambda values: patched_corefile(args.forward, args.namespace, args.domain, values[0], values[1])
        )
        core.ConfigMapPatch(
            f"{name}-coredns",
            metadata=meta.ObjectMetaPatchArgs(
                name=CONFIGMAP_NAME,
                namespace=CONFIGMAP_NAMESPACE,
                annotations={
                    # The Corefile was written by whoever installed CoreDNS: this patch takes the field over,
                    "pulumi.com/patchForce": "true",
                    # under one manager name per stack, whatever the patch's history.
                    "pulumi.com/patchFieldManager": f"{PROJECT}-coredns-forward-{args.namespace}",
                },
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
