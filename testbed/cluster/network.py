"""The real-node bed's network: a switch namespace with a bridge, one network namespace per node.

    machine (host netns)          cbed-switch               cbed-node-N
    cbed-host 198.18.0.1/24 ----- br0 ------------------ eth0 198.18.0.(10+N)/24
                                                          cni0 198.18.(64+N).1/24 -- pods

- The API server listens on 198.18.0.1, the only address the bed puts in the machine's own
  namespace (on its veth, which goes with the switch namespace). Routes to each node's pod CIDR
  sit on that veth too, so the API server answers pods that call it through the `kubernetes`
  Service (no masquerading).
- Nodes have no default route: nothing a pod sends leaves the bed. Each node routes the other
  nodes' pod CIDRs through their eth0, and the Service range to the machine's side, where it is
  never answered: kube-proxy rewrites Service addresses before that route is taken.
- Every address is in 198.18.0.0/15, the range set aside for network benchmarking (RFC 2544).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

PREFIX = "cbed-"
SWITCH = f"{PREFIX}switch"
HOST_LINK = f"{PREFIX}host"
BRIDGE = "br0"
NODE_LAN = ipaddress.ip_network("198.18.0.0/24")
HOST_IP = "198.18.0.1"
CLUSTER_CIDR = ipaddress.ip_network("198.18.64.0/18")
SERVICE_CIDR = ipaddress.ip_network("198.19.0.0/16")
CLUSTER_DNS_IP = "198.19.0.10"
KWOK_POD_CIDR = "198.18.128.0/18"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def sysctl(namespace: str, key: str, value: str) -> None:
    """Write a sysctl inside a node's namespace (a fresh namespace starts from the kernel defaults)."""
    subprocess.run(
        ["nsenter", f"--net=/run/netns/{namespace}", "sh", "-c", f"echo {value} > /proc/sys/{key.replace('.', '/')}"], check=True
    )


@dataclass(frozen=True)
class NodeAddress:
    """Where node ``index`` (1, 2, 3…) sits: its namespace, its address on the LAN, its pod CIDR."""

    index: int

    @property
    def name(self) -> str:
        return f"node-{self.index}"

    @property
    def namespace(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.namespace}"

    @property
    def ip(self) -> str:
        return str(NODE_LAN.network_address + 10 + self.index)

    @property
    def pod_cidr(self) -> str:
        return str(ipaddress.ip_network(f"198.18.{64 + self.index}.0/24"))


def namespaces() -> list[str]:
    """Every network namespace of the bed (from this run or one that crashed)."""
    listed = ip("netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(PREFIX)]


def kill_namespace_processes(namespace: str) -> None:
    for pid in ip("netns", "pids", namespace, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def sweep() -> list[str]:
    """Kill what runs in the bed's namespaces and remove them; the machine's veth goes with the switch."""
    removed = namespaces()
    for namespace in removed:
        kill_namespace_processes(namespace)
    deadline = time.monotonic() + 10
    for namespace in removed:
        while ip("netns", "pids", namespace, check=False).stdout.split() and time.monotonic() < deadline:
            time.sleep(0.1)
        ip("netns", "delete", namespace, check=False)
    ip("link", "delete", HOST_LINK, check=False)
    return removed


def switch_port(node: NodeAddress) -> str:
    """The switch's end of the node's link."""
    return f"veth{node.index}"


def create(nodes: list[NodeAddress]) -> None:
    """The switch, the machine's link to it, and one namespace per node with its routes."""
    sweep()
    ip("netns", "add", SWITCH)
    ip("-n", SWITCH, "link", "add", BRIDGE, "type", "bridge")
    ip("-n", SWITCH, "link", "set", BRIDGE, "up")
    ip("link", "add", HOST_LINK, "type", "veth", "peer", "name", "host", "netns", SWITCH)
    ip("-n", SWITCH, "link", "set", "host", "master", BRIDGE, "up")
    ip("addr", "add", f"{HOST_IP}/{NODE_LAN.prefixlen}", "dev", HOST_LINK)
    ip("link", "set", HOST_LINK, "up")
    for node in nodes:
        ip("netns", "add", node.namespace)
        veth = switch_port(node)
        ip("-n", SWITCH, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", node.namespace)
        ip("-n", SWITCH, "link", "set", veth, "master", BRIDGE, "up")
        ip("-n", node.namespace, "addr", "add", f"{node.ip}/{NODE_LAN.prefixlen}", "dev", "eth0")
        ip("-n", node.namespace, "link", "set", "eth0", "up")
        ip("-n", node.namespace, "link", "set", "lo", "up")
        ip("-n", node.namespace, "route", "add", str(SERVICE_CIDR), "via", HOST_IP)
        for other in nodes:
            if other != node:
                ip("-n", node.namespace, "route", "add", other.pod_cidr, "via", other.ip)
        ip("route", "add", node.pod_cidr, "via", node.ip, "dev", HOST_LINK)
        sysctl(node.namespace, "net.ipv4.ip_forward", "1")
        # Pods on one node share the CNI bridge: br_netfilter hands their traffic to kube-proxy's
        # Service rules and to the NetworkPolicy agent.
        sysctl(node.namespace, "net.bridge.bridge-nf-call-iptables", "1")


def _consul_port_rules(node: NodeAddress, others: list[NodeAddress]) -> list[list[str]]:
    """Rules in the node's raw table that drop what its pods and the other nodes' pods send each
    other on Consul's server RPC and gossip ports (8300-8302, TCP and UDP), both ways. The raw table
    sees every packet first, before conntrack and before the chains kube-proxy and the
    NetworkPolicy agent keep (which accept traffic they allow)."""
    rules = []
    for other in others:
        for source, destination in ((node.pod_cidr, other.pod_cidr), (other.pod_cidr, node.pod_cidr)):
            for protocol in ("tcp", "udp"):
                rules.append(["PREROUTING", "-s", source, "-d", destination, "-p", protocol, "--dport", "8300:8302", "-j", "DROP"])
    return rules


def _iptables(node: NodeAddress, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={node.netns_path}", "iptables", "-w", "-t", "raw", *args], capture_output=True, text=True, check=False
    )


@contextlib.contextmanager
def consul_cut_off(node: NodeAddress, others: list[NodeAddress]) -> Iterator[None]:
    """A network partition of Consul's traffic: the node's pods can't reach the other nodes' pods on
    Consul's ports, nor be reached by them, while the rest of the network (the API server, DNS,
    the kubelet) works. The rules go when the block is left, whatever happened."""
    rules = _consul_port_rules(node, others)
    try:
        for rule in rules:
            result = _iptables(node, "-I", rule[0], "1", *rule[1:])
            if result.returncode != 0:
                raise RuntimeError(f"iptables in {node.namespace}: {result.stderr.strip()}")
        yield
    finally:
        for rule in rules:
            _iptables(node, "-D", *rule)


@contextlib.contextmanager
def unplugged(node: NodeAddress) -> Iterator[None]:
    """A node lost to the network, as when its cable or its switch port fails: the switch's end of
    its link goes down, so nothing reaches the node or leaves it (the API server, the other nodes,
    their pods), while its kubelet, containerd and pods run on. The link comes back up when the
    block is left, whatever happened."""
    port = switch_port(node)
    try:
        ip("-n", SWITCH, "link", "set", port, "down")
        yield
    finally:
        ip("-n", SWITCH, "link", "set", port, "up", check=False)
