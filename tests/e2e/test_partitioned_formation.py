"""Formation across a network partition that heals: the servers start while one node's pods can't
reach the other nodes' pods on Consul's ports (as when a NetworkPolicy agent admits a new pod's
address late, or a node's link flaps), and must still form one cluster once it heals.

A server that reaches only itself through `retry_join` counts that as a join and stops retrying;
the two others form a pool of two, `bootstrap_expect = 3` is never met and `pulumi up` waits
forever. The join list of each server must therefore leave out its own name.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import Deployment, keep_module_logs, remove, servers_formed

from testbed.cluster import network

pytestmark = pytest.mark.e2e

NAMESPACE = "consul-partitioned"
# The servers scheduled and started, the two on the reachable nodes gossiping with each other, and
# each through its first join attempt (a TCP connect to each unreachable server times out after 10 s).
PARTITION_SETTLES = 240
# After the partition heals: the cut-off server's next join attempt (5 s apart, each up to 20 s), the
# election once three servers know each other, and readiness.
FORMS_AFTER_HEALING = 120
UP_ENDS = 900


def running_servers(deployment: Deployment) -> dict[str, str]:
    """Server pods that run, by name, with their nodes; {} until all three do."""
    pods = deployment.pods("server")
    running = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods if p.get("status", {}).get("phase") == "Running"}
    return running if len(running) == 3 else {}


def gossip_with_each_other(deployment: Deployment, servers: list[str]) -> bool:
    """Each of `servers` has logged the others joining its LAN pool."""
    return all(f"EventMemberJoin: {other} " in deployment.logs(server) for server in servers for other in servers if other != server)


def tried_to_join(deployment: Deployment, server: str) -> bool:
    log = deployment.logs(server)
    return "Join cluster completed" in log or "Join cluster failed" in log


def test_servers_started_apart_form_one_cluster_once_the_partition_heals(cluster, tmp_path):
    deployment = Deployment(cluster, tmp_path, namespace=NAMESPACE)
    cut_off = cluster.addresses[0]
    outcome: dict[str, Any] = {}

    def up() -> None:
        try:
            outcome["result"] = deployment.stack.up(color="never", on_output=lambda line: None)
        except Exception as error:  # noqa: BLE001 - reported by the test below
            outcome["error"] = error

    thread = threading.Thread(target=up, name="pulumi-up", daemon=True)
    try:
        with network.consul_cut_off(cut_off, [a for a in cluster.addresses if a != cut_off]):
            thread.start()
            cluster.wait("three server pods running", lambda: bool(running_servers(deployment)), PARTITION_SETTLES)
            nodes = running_servers(deployment)
            apart = [name for name, node in nodes.items() if node == cut_off.name]
            together = sorted(name for name, node in nodes.items() if node != cut_off.name)
            assert len(apart) == 1, f"one server on {cut_off.name} expected: {nodes}"
            cluster.wait(
                "the servers on the reachable nodes gossip", lambda: gossip_with_each_other(deployment, together), PARTITION_SETTLES
            )
            # Their own join attempts over (each waits out a connect to the cut-off server), so none
            # of them is still trying to reach it when the partition heals.
            cluster.wait(
                "the servers on the reachable nodes joined",
                lambda: all("Join cluster completed" in deployment.logs(server) for server in together),
                PARTITION_SETTLES,
            )
            cluster.wait(f"{apart[0]} tried to join", lambda: tried_to_join(deployment, apart[0]), PARTITION_SETTLES)
            print(f"\nbed: partition of {cut_off.name} held; {apart[0]} apart, {', '.join(together)} together")
        healed = time.monotonic()
        took = cluster.wait(
            "three voters with one leader after the partition healed",
            lambda: servers_formed(deployment, 3, via=together[0]),
            FORMS_AFTER_HEALING,
        )
        print(f"bed: one cluster of three voters {took:.1f} s after the partition healed")
        thread.join(UP_ENDS)
        assert "error" not in outcome, f"pulumi up failed: {outcome['error']}"
        assert outcome["result"].summary.result == "succeeded"
        print(f"bed: pulumi up returned {time.monotonic() - healed:.1f} s after the partition healed")
    finally:
        if thread.is_alive():
            # A split that never formed: restarted servers join each other, so the up can end.
            deployment.kubectl("delete", "pod", "-l", "app.kubernetes.io/component=server", "--wait=false", check=False)
            thread.join(UP_ENDS)
        keep_module_logs(deployment, "partitioned-formation")
        remove(deployment)
