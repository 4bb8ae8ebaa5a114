"""NetworkPolicies that admit only the traffic Consul needs (ingress; egress is left open)."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_kubernetes.meta.v1 as meta
import pulumi_kubernetes.networking.v1 as networking

from . import agent_config as cfg
from .labels import JOB_COMPONENTS, Labels
from .model import UiSpec, WanSpec

Port = tuple[int, str]
COMPONENT = "app.kubernetes.io/component"

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
        ports=_ports(ports),
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


def server_rules(
    servers: Labels, clients: Labels, tls: bool, ui: UiSpec, wan: WanSpec | None = None
) -> list[networking.NetworkPolicyIngressRuleArgs]:
    """Servers: RPC, gossip and the API among themselves, RPC and LAN gossip from clients. The API (and the
    UI on it) only from this instance's Jobs, the pods of `ui.api_namespaces` and the networks of
    `ui.api_cidrs`: workloads register through their node's client agent, never on a server, and
    operators reach the UI through `kubectl port-forward`, which no NetworkPolicy filters. Other
    datacenters' servers (`wan`: the servers of this program in its peer namespaces, and its peer
    networks) reach RPC and WAN gossip."""
    jobs = networking.NetworkPolicyPeerArgs(
        pod_selector=meta.LabelSelectorArgs(
            match_labels={k: v for k, v in servers.selector.items() if k != COMPONENT},
            match_expressions=[meta.LabelSelectorRequirementArgs(key=COMPONENT, operator="In", values=list(JOB_COMPONENTS))],
        )
    )
    api_peers = [jobs]
    if ui.api_namespaces:
        api_peers.append(networking.NetworkPolicyPeerArgs(namespace_selector=_namespaces(ui.api_namespaces)))
    api_peers += [networking.NetworkPolicyPeerArgs(ip_block=networking.IPBlockArgs(cidr=cidr)) for cidr in ui.api_cidrs]
    rules = [
        # The API too: a returning server asks the others how they see it before it starts.
        _rule(RPC + SERF_LAN + SERF_WAN + server_api_ports(tls), servers),
        _rule(RPC + SERF_LAN, clients),
        networking.NetworkPolicyIngressRuleArgs(from_=api_peers, ports=_ports(server_api_ports(tls))),
    ]
    if wan is not None and (wan.peer_namespaces or wan.peer_cidrs):
        wan_peers = (
            [
                networking.NetworkPolicyPeerArgs(
                    namespace_selector=_namespaces(wan.peer_namespaces), pod_selector=meta.LabelSelectorArgs(match_labels=servers.selector)
                )
            ]
            if wan.peer_namespaces
            else []
        )
        wan_peers += [networking.NetworkPolicyPeerArgs(ip_block=networking.IPBlockArgs(cidr=cidr)) for cidr in wan.peer_cidrs]
        rules.append(networking.NetworkPolicyIngressRuleArgs(from_=wan_peers, ports=_ports(RPC + SERF_WAN)))
    return rules


def _namespaces(names: Sequence[str]) -> meta.LabelSelectorArgs:
    return meta.LabelSelectorArgs(
        match_expressions=[meta.LabelSelectorRequirementArgs(key="kubernetes.io/metadata.name", operator="In", values=list(names))]
    )


def _ports(ports: Sequence[Port]) -> list[networking.NetworkPolicyPortArgs]:
    return [networking.NetworkPolicyPortArgs(port=port, protocol=protocol) for port, protocol in ports]


def client_rules(servers: Labels, clients: Labels, api_namespaces: Sequence[str] = ()) -> list[networking.NetworkPolicyIngressRuleArgs]:
    """Clients: LAN gossip from every agent; DNS from anywhere (workloads and CoreDNS); the plain-HTTP
    API from every namespace, or only from `api_namespaces`. Clients serve no HTTPS (see
    agent_config.client_config), so narrowing who can reach 8500 is how tokens stay off other
    namespaces' paths."""
    if not api_namespaces:
        return [_rule(SERF_LAN, servers, clients), _rule([(cfg.HTTP_PORT, "TCP"), *DNS])]
    from_namespaces = networking.NetworkPolicyPeerArgs(namespace_selector=_namespaces(api_namespaces))
    return [
        _rule(SERF_LAN, servers, clients),
        networking.NetworkPolicyIngressRuleArgs(from_=[from_namespaces], ports=_ports([(cfg.HTTP_PORT, "TCP")])),
        _rule(DNS),
    ]
