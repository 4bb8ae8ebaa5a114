"""A one-server stack grown to three under a Watch, and a quorum lost for good recovered with the
README's peers.json procedure ("Recover from losing quorum" in its operations guide).

Two servers are lost for good as a machine failure loses them: their claims deleted and their
processes killed. Servers never leave Raft on terminate, but a SIGTERM still runs Consul's
shutdown; a machine failure runs nothing. So Consul (PID 1 of its container) gets SIGQUIT first,
which it does not handle: the Go runtime exits at once. The test checks that the survivor's Raft
configuration still counts both as voters.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import (
    LOCAL_AGENT,
    bounds_broken,
    consul_http,
    in_pod,
    leader_seen,
    raft_servers,
    restarts,
    servers_formed,
)
from watch import Watch

# Day-2 operations, each a roll or a recovery of minutes: make e2e-day2 (outside CI's 90 minutes).
pytestmark = [pytest.mark.e2e, pytest.mark.day2]

STACK_SETTINGS = {"serverReplicas": 1}
SERVERS = ["consul-server-0", "consul-server-1", "consul-server-2"]
# New servers: created, started, joined, and promoted by autopilot once stable (10 s).
FORMED = 180
HOLD = "testbed.local/hold"


def test_a_one_server_stack_grows_to_three_within_the_bounds(module_deployment, toolbox):
    deployment = module_deployment
    cluster = deployment.cluster
    cluster.wait("one server, a voter and the leader", lambda: servers_formed(deployment, 1), FORMED)
    (first,) = deployment.pods("server")
    deployment.set(serverReplicas=3)
    with Watch(deployment, toolbox, "grow 1 -> 3") as watch:
        result = deployment.up("grow 1 -> 3")
        took = cluster.wait("three voters and a leader", lambda: servers_formed(deployment, 3), FORMED)
    print(f"bed: grow: three voters {took:.1f} s after pulumi up returned")
    assert result.summary.result == "succeeded"
    (still,) = [p for p in deployment.pods("server") if p["metadata"]["name"] == "consul-server-0"]
    assert (still["metadata"]["uid"], restarts(still)) == (first["metadata"]["uid"], 0)
    autopilot = consul_http(
        in_pod(deployment, "consul-server-0"), "GET", f"{LOCAL_AGENT}/v1/operator/autopilot/configuration", deployment.management_token()
    )
    # The ACL Job sets min_quorum to the new size (autopilot never prunes a declared server).
    assert (autopilot[0], json.loads(autopilot[1]).get("MinQuorum")) == (200, 3)
    assert watch.summary is not None
    assert bounds_broken(watch, 1) == []


def test_a_quorum_lost_for_good_comes_back_with_peers_json_and_keeps_its_data(module_deployment, toolbox):
    deployment = module_deployment
    cluster, ns = deployment.cluster, deployment.namespace
    deployment.set(serverReplicas=3)
    deployment.up("three servers")
    cluster.wait("three voters and a leader", lambda: servers_formed(deployment, 3), FORMED)
    token = deployment.management_token()
    survivor = in_pod(deployment, "consul-server-0")
    assert consul_http(survivor, "PUT", f"{LOCAL_AGENT}/v1/kv/quorum/kept?raw", token, body="yes", bound=5) == (200, "true")

    lost = ["consul-server-1", "consul-server-2"]
    claims = [f"data-{name}" for name in lost]
    # The lost claims stay in deletion under a finalizer of the test's own until the procedure is
    # done, as storage that is not back yet: the StatefulSet re-creates no pod whose claim is being
    # deleted, so the lost servers stay away while the survivor recovers.
    for claim in claims:
        deployment.kubectl(
            "patch", "pvc", claim, "--type=json", "-p", json.dumps([{"op": "add", "path": "/metadata/finalizers/-", "value": HOLD}])
        )
    try:
        deployment.kubectl("delete", "pvc", *claims, "--wait=false")
        for name in lost:
            killed = deployment.exec(name, "kill", "-QUIT", "1")
            assert killed.returncode == 0, killed.stderr
        deployment.kubectl("delete", "pod", *lost, "--grace-period=0", "--force")
        cluster.wait("the survivor without a leader", lambda: leader_seen(survivor) == "", 60)
        # They did not leave: the survivor's Raft configuration still counts them as voters.
        config = raft_servers(deployment)
        assert config is not None
        assert sorted(s["Node"] for s in config if s["Voter"]) == SERVERS

        # The README's procedure, command for command.
        started = time.monotonic()
        node_id = deployment.kubectl("exec", "consul-server-0", "--", "cat", "/consul/data/node-id").stdout.strip()
        ip = deployment.kubectl("get", "pod", "consul-server-0", "-o", "jsonpath={.status.podIP}").stdout.strip()
        peers = f'[{{"id": "{node_id}", "address": "{ip}:8300", "non_voter": false}}]'
        deployment.kubectl("exec", "consul-server-0", "--", "sh", "-c", f"printf '{peers}' > /consul/data/raft/peers.json")
        deployment.kubectl("delete", "pod", "consul-server-0", timeout=180)
        cluster.wait("consul-server-0 leading alone", lambda: leader_seen(in_pod(deployment, "consul-server-0")) != "", 180)
        recovered = time.monotonic() - started
        kept = consul_http(in_pod(deployment, "consul-server-0"), "GET", f"{LOCAL_AGENT}/v1/kv/quorum/kept?raw", token, bound=5)
        assert kept == (200, "yes")
        assert [p["metadata"]["name"] for p in deployment.pods("server")] == ["consul-server-0"]
    finally:
        # The rest of the procedure: the lost claims go, and the StatefulSet re-creates those servers empty.
        for claim in claims:
            deployment.kubectl("patch", "pvc", claim, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)

    cluster.wait("three voters and a leader again", lambda: servers_formed(deployment, 3), FORMED)
    print(f"\nbed: quorum: a leader {recovered:.1f} s after peers.json, three voters {time.monotonic() - started:.1f} s after")
    phases = {c: deployment.api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{c}")["status"]["phase"] for c in claims}
    assert phases == dict.fromkeys(claims, "Bound")
    # What a workload sees through its node's agent.
    agent = f"http://consul-client.{ns}.svc:8500"
    cluster.wait("the toolbox's agent sees the leader", lambda: leader_seen(toolbox.sh, agent) != "", 60)
    assert consul_http(toolbox.sh, "GET", f"{agent}/v1/kv/quorum/kept?raw", token, bound=5) == (200, "yes")
