"""NetworkPolicies that admit only the traffic Consul needs (ingress; egress is left open)."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_kubernetes.meta.v1 as meta
import pulumi_kubernetes.networking.v1 as networking

from . import agent_config as cfg
from .labels import Labels

Port = tuple[int, str]

RPC: list[Port] = [(cfg.SERVER_RPC_PORT, "TCP")]
SERF_LAN: list[Port] = [(cfg.SERF_LAN_PORT, "TCP"), (cfg.SERF_LAN_PORT, "UDP")]
SERF_WAN: list[Port] = [(cfg.SERF_WAN_PORT, "TCP"), (cfg.SERF_WAN_PORT, "UDP")]
DNS: list[Port] = [(cfg.DNS_PORT, "TCP"), (cfg.DNS_PORT, "UDP")]


def server_api_ports(tls: bool) -> list[Port]:
    """The servers' HTTP API port reachable from outside the pod: HTTPS with TLS (plain HTTP is
    bound to the pod's loopback), plain HTTP without."""
    return [(cfg.HTTPS_PORT, "TCP")] if tls else [(cfg.HTTP_PORT, "TCP")]


def _rule(ports: Sequence[Port], *peers: Labels) -> networking.NetworkPolicyIngressRuleArgs:
    """Admit `ports` from pods with `peers`' labels in the policy's namespace, or from anywhere when none."""
    return networking.NetworkPolicyIngressRuleArgs(
        from_=[networking.NetworkPolicyPeerArgs(pod_selector=meta.LabelSelectorArgs(match_labels=p.selector)) for p in peers] or None,
        ports=[networking.NetworkPolicyPortArgs(port=port, protocol=protocol) for port, protocol in ports],
    )


def ingress_policy(
    name: str,
    namespace: pulumi.Input[str],
    labels: Labels,
    rules: Sequence[networking.NetworkPolicyIngressRuleArgs],
    opts: pulumi.ResourceOptions,
) -> networking.NetworkPolicy:
    return networking.NetworkPolicy(
        name,
        metadata=labels.metadata(name, namespace),
        spec=networking.NetworkPolicySpecArgs(
            pod_selector=meta.LabelSelectorArgs(match_labels=labels.selector),
            policy_types=["Ingress"],
            ingress=list(rules),
        ),
        opts=opts,
    )


def server_rules(servers: Labels, clients: Labels, tls: bool) -> list[networking.NetworkPolicyIngressRuleArgs]:
    """Servers: RPC and gossip among themselves, RPC and LAN gossip from clients, the API from anywhere
    (the UI Service, the ACL bootstrap Job, operators)."""
    return [
        _rule(RPC + SERF_LAN + SERF_WAN, servers),
        _rule(RPC + SERF_LAN, clients),
        _rule(server_api_ports(tls)),
    ]


def client_rules(servers: Labels, clients: Labels, api_namespaces: Sequence[str] = ()) -> list[networking.NetworkPolicyIngressRuleArgs]:
    """Clients: LAN gossip from every agent; DNS from anywhere (workloads and CoreDNS); the plain-HTTP
    API from every namespace, or only from `api_namespaces`. Clients serve no HTTPS (see
    agent_config.client_config), so narrowing who can reach 8500 is how tokens stay off other
    namespaces' paths."""
    if not api_namespaces:
        return [_rule(SERF_LAN, servers, clients), _rule([(cfg.HTTP_PORT, "TCP"), *DNS])]
    from_namespaces = networking.NetworkPolicyPeerArgs(
        namespace_selector=meta.LabelSelectorArgs(
            match_expressions=[
                meta.LabelSelectorRequirementArgs(key="kubernetes.io/metadata.name", operator="In", values=list(api_namespaces))
            ]
        )
    )
    return [
        _rule(SERF_LAN, servers, clients),
        networking.NetworkPolicyIngressRuleArgs(
            from_=[from_namespaces], ports=[networking.NetworkPolicyPortArgs(port=cfg.HTTP_PORT, protocol="TCP")]
        ),
        _rule(DNS),
    ]
