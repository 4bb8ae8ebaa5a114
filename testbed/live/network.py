"""The bed's network: one switch namespace with a bridge, and one network namespace per pod.

Every pod gets its own namespace ``<prefix><n>`` with ``lo`` and an ``eth0`` whose peer sits on the
bridge inside the switch namespace. Nothing is configured in the machine's own namespace: pods
reach each other over the bridge, and the bed reaches a pod with ``ip netns exec``. Addresses come
from 198.18.0.0/15, the range set aside for network benchmarking (RFC 2544), so they cannot clash
with a real network.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

PREFIX = "cbed-"
SWITCH = f"{PREFIX}switch"
BRIDGE = "br0"
POD_NETWORK = ipaddress.ip_network("198.18.0.0/16")
NODE_NETWORK = ipaddress.ip_network("198.19.0.0/16")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def namespaces() -> list[str]:
    """Every network namespace this bed owns (from this run or an earlier one that crashed)."""
    listed = ip("netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(PREFIX)]


def kill_namespace_processes(namespace: str) -> None:
    """SIGKILL every process still running in a namespace: the last resort of a cleanup."""
    for pid in ip("netns", "pids", namespace, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def sweep() -> list[str]:
    """Remove every namespace of the bed and kill what runs in them; returns what was removed."""
    removed = namespaces()
    for namespace in removed:
        kill_namespace_processes(namespace)
    deadline = time.monotonic() + 10
    for namespace in removed:
        while ip("netns", "pids", namespace, check=False).stdout.split() and time.monotonic() < deadline:
            time.sleep(0.1)
        ip("netns", "delete", namespace, check=False)
    return removed


@dataclass
class Network:
    """Hands out pod namespaces and addresses on one bridge."""

    _next: int = 0
    _free: list[ipaddress.IPv4Address] = field(default_factory=list)

    def __post_init__(self) -> None:
        sweep()
        ip("netns", "add", SWITCH)
        ip("-n", SWITCH, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", SWITCH, "link", "set", BRIDGE, "up")
        self._addresses = iter(list(POD_NETWORK.hosts())[10:])

    def attach(self) -> tuple[str, str]:
        """A new pod namespace wired to the bridge: (namespace name, its address). Each call is a new
        address, as a re-created pod gets in Kubernetes."""
        self._next += 1
        namespace, veth = f"{PREFIX}{self._next}", f"veth{self._next}"
        address = str(next(self._addresses))
        ip("netns", "add", namespace)
        ip("-n", SWITCH, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("-n", SWITCH, "link", "set", veth, "master", BRIDGE, "up")
        ip("-n", namespace, "addr", "add", f"{address}/{POD_NETWORK.prefixlen}", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        return namespace, address

    def detach(self, namespace: str) -> None:
        """Remove a pod's namespace (its veth goes with it) after killing anything left in it."""
        kill_namespace_processes(namespace)
        ip("netns", "delete", namespace, check=False)

    def close(self) -> None:
        sweep()


def node_address(index: int) -> str:
    """The address of simulated node ``index`` (``status.hostIP``): named in certificates, never dialled."""
    return str(NODE_NETWORK.network_address + 10 + index)
