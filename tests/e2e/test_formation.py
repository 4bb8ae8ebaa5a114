"""Formation on real nodes: `pulumi up` gives one Consul cluster, placed and guarded as declared.

The stack is the e2e stack's defaults (three servers, a client agent on each node, every security
default on). What is asserted comes from Consul (its HTTP API and CLI, through `kubectl exec`) and
from the cluster's API (pods, claims, Jobs, events).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import yaml
from conftest import (
    KUBE_BIN,
    REAL_NODES,
    ROOT,
    STACK_FILE,
    consul_cli,
    consul_http,
    consul_json,
    in_pod,
    leader_seen,
    ready,
    restarts,
    run_stack,
    servers_formed,
)

pytestmark = pytest.mark.e2e

SERVERS = ["consul-server-0", "consul-server-1", "consul-server-2"]
LOCAL_API = "http://127.0.0.1:8500"
# The Raft transport's dial timeout (10 s, fixed in Consul), the leader's backoff, and a margin.
RETURNED_SERVER_HEARS_LEADER = 30
# A server evicted or deleted: terminated (without leaving Raft, 30 s grace at most), re-created by the
# StatefulSet on a node its anti-affinity allows, started, and Ready once it sees a leader.
SERVER_BACK = 90
ACL_JOB = "consul-acl-bootstrap"


def agents(deployment) -> dict[str, tuple[str, bool, int]]:
    """Every agent pod: its node, Ready, and its containers' restart count."""
    return {
        p["metadata"]["name"]: (p["spec"].get("nodeName", ""), ready(p), restarts(p))
        for p in deployment.pods("server") + deployment.pods("client")
    }


def raft(deployment, via: str = "consul-server-0") -> list[dict[str, Any]]:
    """The Raft configuration as a server reports it (`?stale`: its own view, with or without a leader)."""
    servers: list[dict[str, Any]] = consul_json(
        in_pod(deployment, via), f"{LOCAL_API}/v1/operator/raft/configuration?stale", deployment.management_token()
    )["Servers"]
    return servers


def voters(deployment) -> list[str]:
    return sorted(s["Node"] for s in raft(deployment) if s["Voter"])


def job_runs(deployment, job: str) -> dict[str, tuple[str, str]]:
    """The pods of the Job's current run (its controller UID), each with its phase and its node."""
    uid = deployment.api.get(f"/apis/batch/v1/namespaces/{deployment.namespace}/jobs/{job}")["metadata"]["uid"]
    pods = deployment.api.items(f"/api/v1/namespaces/{deployment.namespace}/pods?labelSelector=batch.kubernetes.io/controller-uid={uid}")
    return {p["metadata"]["name"]: (p["status"].get("phase", ""), p["spec"].get("nodeName", "")) for p in pods}


def job_succeeded(deployment, job: str) -> int:
    succeeded: int = deployment.api.get(f"/apis/batch/v1/namespaces/{deployment.namespace}/jobs/{job}")["status"].get("succeeded", 0)
    return succeeded


def evict(deployment, pod: str) -> Any:
    """An Eviction through the API's eviction subresource, as `kubectl drain` asks for one."""
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": deployment.namespace}}
    return deployment.cluster.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{deployment.namespace}/pods/{pod}/eviction", "-f", "-", input=json.dumps(body), check=False
    )


def test_up_succeeds_every_agent_is_ready_without_a_restart_and_a_second_up_changes_nothing(module_deployment):
    deployment = module_deployment
    state = agents(deployment)
    assert len(state) == 6
    assert {(is_ready, restarted) for _, is_ready, restarted in state.values()} == {(True, 0)}, state
    assert [p["metadata"]["name"] for p in deployment.pods("server")] == SERVERS
    assert sorted(p["spec"]["nodeName"] for p in deployment.pods("client")) == REAL_NODES
    assert (job_succeeded(deployment, ACL_JOB), job_succeeded(deployment, "consul-gossip-rotation")) == (1, 1)

    second = deployment.up("second up")
    assert second.summary.result == "succeeded"
    assert set(second.summary.resource_changes) == {"same"}
    assert agents(deployment) == state


def test_the_namespace_enforces_restricted_and_every_pod_is_admitted(module_deployment):
    deployment = module_deployment
    labels = deployment.api.get(f"/api/v1/namespaces/{deployment.namespace}")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = deployment.api.items(f"/api/v1/namespaces/{deployment.namespace}/pods")
    assert (
        sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods)
        == ["acl-bootstrap"] + ["client"] * 3 + ["gossip-rotation"] + ["server"] * 3
    )
    events = deployment.api.items(f"/api/v1/namespaces/{deployment.namespace}/events")
    assert [e["message"] for e in events if e.get("reason") == "FailedCreate"] == []


def test_three_servers_run_on_three_nodes_in_three_zones(module_deployment):
    deployment = module_deployment
    nodes = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in deployment.pods("server")}
    assert sorted(nodes.values()) == REAL_NODES
    zones = {deployment.api.get(f"/api/v1/nodes/{n}")["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in nodes.values()}
    assert zones == {"zone-a", "zone-b", "zone-c"}


def test_one_leader_three_voters_and_every_member_alive(module_deployment, toolbox):
    deployment = module_deployment
    token = deployment.management_token()
    server_ips = {p["status"]["podIP"]: p["metadata"]["name"] for p in deployment.pods("server")}

    # What a workload sees through the agent address the stack exports.
    agent = deployment.stack.outputs()["agentAddress"].value
    leader_ip = leader_seen(toolbox.sh, agent).removesuffix(":8300")
    assert leader_ip in server_ips, f"the client agent of {toolbox.name} reports no server as leader: {leader_ip!r}"

    config = raft(deployment)
    assert sorted((s["Node"], s["Voter"]) for s in config) == [(name, True) for name in SERVERS]
    assert [s["Node"] for s in config if s["Leader"]] == [server_ips[leader_ip]]
    assert {s["Node"]: s["Address"] for s in config} == {name: f"{ip}:8300" for ip, name in server_ips.items()}

    peers = consul_cli(in_pod(deployment, "consul-server-1"), token, "operator", "raft", "list-peers")
    assert peers.returncode == 0, peers.stderr
    rows = [line.split() for line in peers.stdout.strip().splitlines()[1:]]
    assert sorted(row[0] for row in rows) == SERVERS
    assert sorted(row[3] for row in rows) == ["follower", "follower", "leader"]
    assert {row[4] for row in rows} == {"true"}

    members = consul_json(in_pod(deployment, "consul-server-2"), f"{LOCAL_API}/v1/agent/members", token)
    alive = sorted((m["Name"], m["Tags"]["role"], m["Status"]) for m in members)
    assert alive == sorted([(name, "consul", 1) for name in SERVERS] + [(node, "node", 1) for node in REAL_NODES])


def acl_state(deployment) -> dict[str, Any]:
    """Consul's ACL tokens and policies (with the Raft index each was last written at) and autopilot's min_quorum."""
    run, token = in_pod(deployment, "consul-server-0"), deployment.management_token()
    tokens = consul_json(run, f"{LOCAL_API}/v1/acl/tokens", token)
    policies = consul_json(run, f"{LOCAL_API}/v1/acl/policies", token)
    autopilot = consul_json(run, f"{LOCAL_API}/v1/operator/autopilot/configuration", token)
    return {
        "tokens": sorted(
            (t["Description"], t["AccessorID"], [p["Name"] for p in t.get("Policies") or []], t["ModifyIndex"]) for t in tokens
        ),
        "policies": sorted((p["Name"], p["ModifyIndex"]) for p in policies),
        "min_quorum": (autopilot["MinQuorum"], autopilot["ModifyIndex"]),
    }


def follow_job_log(deployment, job: str) -> tuple[threading.Thread, list[str]]:
    """`kubectl logs -f job/<job>` from the moment the Job exists, in a thread: the run's log,
    read while it runs."""
    out: list[str] = []
    path = f"/apis/batch/v1/namespaces/{deployment.namespace}/jobs/{job}"

    def follow() -> None:
        deployment.cluster.wait(f"Job {job} created", lambda: deployment.api.exists(path), 300)
        out.append(deployment.kubectl("logs", "-f", f"job/{job}", "--pod-running-timeout=120s", timeout=300, check=False).stdout)

    thread = threading.Thread(target=follow, daemon=True, name=f"logs-{job}")
    thread.start()
    return thread, out


METRICS = "/v1/agent/metrics?format=prometheus"


def samples(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition: name (with its labels, if any) -> value."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_:]+(?:\{[^}]*\})?) (\S+)", line.strip())
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def sample(values: dict[str, float], name: str) -> float:
    """The one sample of metric `name`, whatever its labels."""
    found = [v for k, v in values.items() if k == name or k.startswith(name + "{")]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def test_every_agent_serves_prometheus_metrics_to_the_metrics_token_only(module_deployment, toolbox):
    """The README's scrape: /v1/agent/metrics in Prometheus format with the token of Secret
    consul-metrics-token; refused without it. The servers export their certificate's expiry (the
    generated one lives 825 days; Consul sets it hourly, and it reads NaN until the first time),
    the leader its autopilot health, Raft's indexes and the mesh CA's expiry."""
    deployment = module_deployment
    token = deployment.secret("consul-metrics-token")["token"]
    leader = leader_seen(in_pod(deployment, "consul-server-0")).removesuffix(":8300")
    assert leader, "no leader to read autopilot's health from"
    for pod in deployment.pods("server"):
        run = in_pod(deployment, pod["metadata"]["name"])
        status, body = consul_http(run, "GET", f"{LOCAL_API}{METRICS}", token, bound=5)
        assert status == 200, body[:200]
        values = samples(body)
        expiry = sample(values, "consul_agent_tls_cert_expiry")
        print(f"\nbed: formation: {pod['metadata']['name']}: {len(values)} samples, consul_agent_tls_cert_expiry {expiry}")
        assert math.isnan(expiry) or 820 < expiry / 86400 <= 825
        assert sample(values, "consul_raft_last_index") > 0
        if pod["status"]["podIP"] == leader:
            assert sample(values, "consul_autopilot_healthy") == 1
            root = sample(values, "consul_mesh_active_root_ca_expiry")
            print(f"bed: formation: the leader: autopilot healthy, consul_mesh_active_root_ca_expiry {root}")
        else:
            # Only the leader's autopilot sets the gauge: no follower reports 0, so with no leader
            # nothing does, and the README's alert is on the absence of a 1.
            follower = [v for k, v in values.items() if k.startswith("consul_autopilot_healthy")]
            print(f"bed: formation: {pod['metadata']['name']}: consul_autopilot_healthy {follower}")
            assert 0 not in follower
        assert consul_http(run, "GET", f"{LOCAL_API}{METRICS}", bound=5)[0] == 403
    agent = deployment.stack.outputs()["agentAddress"].value
    status, body = consul_http(toolbox.sh, "GET", f"{agent}{METRICS}", token, bound=5)
    assert status == 200, body[:200]
    assert "consul_client_rpc" in body
    assert consul_http(toolbox.sh, "GET", f"{agent}{METRICS}", bound=5)[0] == 403


def test_the_acl_job_completes_and_a_second_run_changes_nothing(module_deployment):
    deployment = module_deployment
    before = agents(deployment)
    assert [phase for phase, _ in job_runs(deployment, ACL_JOB).values()] == ["Succeeded"]
    # What the first run made, as Consul reports it.
    state = acl_state(deployment)
    described = {description: policies for description, _, policies, _ in state["tokens"]}
    # Each marked as the Job's, for this datacenter: what it may revoke when the stack drops it.
    for name in SERVERS:
        assert f"[consul dc1] agent token of {name}" in described
    assert described["[consul dc1] agent token of the Consul clients"] == ["consul-client-agent"]
    assert "[consul dc1] service token of web" in described
    assert described["Anonymous Token: Consul DNS"] == ["consul-dns"]
    assert {"consul-client-agent", "consul-dns"} <= {name for name, _ in state["policies"]}
    # The declared size: autopilot never prunes a server that is only being replaced.
    assert state["min_quorum"][0] == 3

    # Run it again as a user would: delete the Job, then `pulumi up --refresh` re-creates it.
    deployment.kubectl("delete", "job", ACL_JOB, "--cascade=foreground", "--wait=true")
    follower, log = follow_job_log(deployment, ACL_JOB)
    started = time.monotonic()
    result = deployment.stack.up(refresh=True, color="never", on_output=lambda line: None)
    print(f"\nbed: formation: ACL Job re-run by pulumi up --refresh in {time.monotonic() - started:.1f} s")
    assert result.summary.result == "succeeded"
    assert {op: n for op, n in result.summary.resource_changes.items() if op not in ("same", "refresh")} == {"create": 1}
    deployment.cluster.wait("rollouts finished after the re-run", deployment.rolled_out, 300)
    follower.join(timeout=120)

    assert [phase for phase, _ in job_runs(deployment, ACL_JOB).values()] == ["Succeeded"]
    assert acl_state(deployment) == state
    assert log, "kubectl logs -f of the re-run did not end"
    assert "ACL policies and tokens are in place" in log[0], log[0]
    assert [line for line in log[0].splitlines() if line.startswith(("created", "updated", "revoked", "set autopilot"))] == []
    assert agents(deployment) == before


def test_make_validate_config_runs_consul_validate_in_the_image_and_names_a_rejected_key(module_deployment, tmp_path):
    """The README's compatibility check: the stack rendered, then every tier's agent config
    validated by `consul validate` in a pod of the image, on the cluster; the same render with an
    unknown key added to the servers' config is rejected, naming the key."""
    deployment = module_deployment
    out = tmp_path / "rendered"
    run_stack.render_stack("e2e", tmp_path / "home", out, STACK_FILE).up(color="never", on_output=lambda line: None)
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f'#!/bin/sh\nexec {KUBE_BIN} kubectl --kubeconfig={deployment.cluster.kubeconfig} "$@"\n')
    kubectl.chmod(0o755)
    env = {**os.environ, "KUBECTL": str(kubectl)}
    argv = [sys.executable, str(ROOT / "scripts" / "validate_config.py"), str(out), "--namespace", deployment.namespace]
    valid = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    print(f"\nbed: formation: validate-config:\n{valid.stdout}{valid.stderr}")
    assert valid.returncode == 0
    assert [line for line in valid.stdout.splitlines() if line.startswith("==")] == [
        "== consul-client (4 files) in hashicorp/consul:1.16.1: valid",
        "== consul-server (5 files) in hashicorp/consul:1.16.1: valid",
    ]
    assert valid.stdout.count("Consul v1.16.1") == 2

    config = next(p for p in out.rglob("*.yaml") if "kind: ConfigMap" in p.read_text() and "name: consul-server-config" in p.read_text())
    manifest = yaml.safe_load(config.read_text())
    agent = json.loads(manifest["data"]["00-agent.json"])
    agent["performance"]["no_such_option"] = True
    manifest["data"]["00-agent.json"] = json.dumps(agent)
    config.write_text(yaml.safe_dump(manifest))
    rejected = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert rejected.returncode == 1
    assert "== consul-server (5 files) in hashicorp/consul:1.16.1: REJECTED" in rejected.stdout
    assert "invalid config key performance.no_such_option" in rejected.stdout
    # kubectl run --rm deletes each check pod; it may still be terminating when kubectl returns.
    deployment.cluster.wait(
        "the check pods gone", lambda: deployment.api.items(f"/api/v1/namespaces/{deployment.namespace}/pods?labelSelector=run") == [], 60
    )


def test_the_disruption_budget_refuses_a_second_eviction(module_deployment):
    deployment = module_deployment
    first = evict(deployment, "consul-server-0")
    assert first.returncode == 0, first.stderr
    second = evict(deployment, "consul-server-1")
    assert second.returncode != 0
    assert "disruption budget" in second.stderr, second.stderr
    assert not deployment.api.get(f"/api/v1/namespaces/{deployment.namespace}/pods/consul-server-1")["metadata"].get("deletionTimestamp")
    took = deployment.cluster.wait("consul-server-0 back, three voters and a leader", lambda: servers_formed(deployment, 3), SERVER_BACK)
    print(f"\nbed: formation: evicted consul-server-0 back with three voters {took:.1f} s after the eviction")


def test_a_deleted_server_comes_back_on_its_own_claim_with_its_raft_identity(module_deployment):
    deployment = module_deployment
    ns, token = deployment.namespace, deployment.management_token()
    deployment.cluster.wait("three voters and a leader", lambda: servers_formed(deployment, 3), SERVER_BACK)
    claim = deployment.api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/data-consul-server-1")
    identity = {s["Node"]: s["ID"] for s in raft(deployment)}
    written, _ = consul_http(in_pod(deployment, "consul-server-0"), "PUT", f"{LOCAL_API}/v1/kv/formation/kept", token, body="kept")
    assert written == 200

    started = time.monotonic()
    deployment.kubectl("delete", "pod", "consul-server-1", "--wait=true")
    deployment.cluster.wait("consul-server-1 re-created, three voters and a leader", lambda: servers_formed(deployment, 3), SERVER_BACK)
    formed = time.monotonic()

    # Its own view next: the leader reaches the new address up to the Raft transport's 10 s dial
    # timeout (to the old pod IP) after it lists it; until then the server has no state to answer from.
    def hears_the_leader() -> bool:
        run = in_pod(deployment, "consul-server-1")
        configuration, _ = consul_http(run, "GET", f"{LOCAL_API}/v1/operator/raft/configuration?stale", token, bound=5)
        return bool(leader_seen(run)) and configuration == 200

    deployment.cluster.wait("consul-server-1 hears the leader and answers from its state", hears_the_leader, RETURNED_SERVER_HEARS_LEADER)
    print(
        f"\nbed: formation: deleted consul-server-1 back with three voters {formed - started:.1f} s after the delete, "
        f"hearing the leader {time.monotonic() - formed:.1f} s later"
    )

    pod = deployment.api.get(f"/api/v1/namespaces/{ns}/pods/consul-server-1")
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v] == [
        "data-consul-server-1"
    ]
    again = deployment.api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/data-consul-server-1")
    assert (again["metadata"]["uid"], again["spec"]["volumeName"]) == (claim["metadata"]["uid"], claim["spec"]["volumeName"])
    # The same Raft member (its node ID lives on the claim), at the new pod's address.
    after = raft(deployment, via="consul-server-1")
    assert {s["Node"]: s["ID"] for s in after} == identity
    assert next(s["Address"] for s in after if s["Node"] == "consul-server-1") == f"{pod['status']['podIP']}:8300"
    status, body = consul_http(in_pod(deployment, "consul-server-1"), "GET", f"{LOCAL_API}/v1/kv/formation/kept?raw", token, bound=5)
    assert (status, body) == (200, "kept")
