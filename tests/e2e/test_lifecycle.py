"""`pulumi up`, upgrades, scaling and destroy on a real API server: what the cluster then holds and does."""

from __future__ import annotations

import os
import time

import pytest
from conftest import ROOT, Deployment, ReadinessWatch, ready

pytestmark = pytest.mark.e2e

SERVERS = ["consul-server-0", "consul-server-1", "consul-server-2"]


@pytest.fixture(scope="module")
def deployed(cluster, tmp_path_factory) -> Deployment:
    deployment = Deployment(cluster, tmp_path_factory.mktemp("lifecycle"))
    started = time.monotonic()
    first = deployment.up("first up (3 servers, clients, all security on)")
    assert first.summary.result == "succeeded"
    print(f"e2e: pulumi up to all Ready: {time.monotonic() - started:.1f} s")
    return deployment


def uid(deployed: Deployment, path: str) -> str:
    return str(deployed.get(path)["metadata"]["uid"])


def test_up_succeeds_and_a_second_up_changes_nothing(deployed):
    assert {p["metadata"]["name"]: ready(p) for p in deployed.pods("server")} == dict.fromkeys(SERVERS, True)
    assert len(deployed.pods("client")) == 3
    assert deployed.api.get(f"/apis/batch/v1/namespaces/{deployed.namespace}/jobs/consul-acl-bootstrap")["status"].get("succeeded") == 1
    second = deployed.up("second up")
    assert set(second.summary.resource_changes) == {"same"}


def test_namespace_enforces_restricted_and_every_pod_is_admitted(deployed):
    labels = deployed.api.get(f"/api/v1/namespaces/{deployed.namespace}")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = deployed.api.items(f"/api/v1/namespaces/{deployed.namespace}/pods")
    assert (
        sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods)
        == ["acl-bootstrap"] + ["client"] * 3 + ["gossip-rotation"] + ["server"] * 3
    )
    events = deployed.api.items(f"/api/v1/namespaces/{deployed.namespace}/events")
    assert [e["message"] for e in events if e.get("reason") == "FailedCreate"] == []


def test_three_servers_land_on_three_nodes_in_three_zones(deployed):
    nodes = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in deployed.pods("server")}
    assert len(set(nodes.values())) == 3
    zones = {deployed.api.get(f"/api/v1/nodes/{n}")["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in nodes.values()}
    assert zones == {"zone-a", "zone-b", "zone-c"}


def evict(deployed: Deployment, pod: str) -> int:
    from testbed.cluster.api import ApiError

    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": deployed.namespace}}
    try:
        deployed.api.create(f"/api/v1/namespaces/{deployed.namespace}/pods/{pod}/eviction", body)
    except ApiError as error:
        return error.status
    return 201


def test_the_disruption_budget_refuses_a_second_eviction(deployed):
    assert evict(deployed, "consul-server-0") == 201
    assert evict(deployed, "consul-server-1") == 429
    deployed.plane.wait(
        "consul-server-0 back", lambda: all(ready(p) for p in deployed.pods("server")) and len(deployed.pods("server")) == 3, 60
    )


def test_a_deleted_server_comes_back_on_its_own_claim(deployed):
    ns = deployed.namespace
    claim = deployed.api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/data-consul-server-1")
    old = deployed.api.get(f"/api/v1/namespaces/{ns}/pods/consul-server-1")["metadata"]["uid"]
    deployed.api.delete(f"/api/v1/namespaces/{ns}/pods/consul-server-1")
    deployed.plane.wait(
        "consul-server-1 re-created and Ready",
        lambda: (p := deployed.api.get(f"/api/v1/namespaces/{ns}/pods/consul-server-1"))["metadata"]["uid"] != old and ready(p),
        60,
    )
    pod = deployed.api.get(f"/api/v1/namespaces/{ns}/pods/consul-server-1")
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v] == [
        "data-consul-server-1"
    ]
    again = deployed.api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/data-consul-server-1")
    assert (again["metadata"]["uid"], again["spec"]["volumeName"]) == (claim["metadata"]["uid"], claim["spec"]["volumeName"])


def server_images(deployed: Deployment) -> dict[str, str]:
    return {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in deployed.pods("server")}


def test_an_image_upgrade_keeps_the_statefulset_and_rolls_one_server_at_a_time(deployed):
    before = uid(deployed, "statefulsets/consul-server")
    deployed.set(image="hashicorp/consul:2.0.4")
    with ReadinessWatch(deployed, 3) as watch:
        deployed.up("image upgrade")
    assert uid(deployed, "statefulsets/consul-server") == before
    assert server_images(deployed) == dict.fromkeys(SERVERS, "hashicorp/consul:2.0.4")
    assert watch.samples > 10
    assert watch.worst == 1


def test_a_staged_upgrade_walks_the_partition_down_each_up_succeeding(deployed):
    deployed.set(image="hashicorp/consul:2.0.5", serverUpdatePartition=2)
    steps = []
    for partition, updated in ((2, {"consul-server-2"}), (1, {"consul-server-1", "consul-server-2"}), (0, set(SERVERS))):
        deployed.set(serverUpdatePartition=partition)
        started = time.monotonic()
        result = deployed.up(f"staged upgrade, partition {partition}")
        steps.append(time.monotonic() - started)
        assert result.summary.result == "succeeded"
        assert {n for n, image in server_images(deployed).items() if image.endswith("2.0.5")} == updated
    assert max(steps) < 120


def test_a_new_gossip_key_restarts_no_agent_and_runs_the_rotation_job(deployed):
    from material import gossip_key

    ns = deployed.namespace
    servers = {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployed.pods("server")}
    clients = {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployed.pods("client")}
    job = deployed.api.get(f"/apis/batch/v1/namespaces/{ns}/jobs/consul-gossip-rotation")["metadata"]["uid"]
    deployed.stack.set_config("consul:gossipKey", __import__("run_stack").auto.ConfigValue(gossip_key(), secret=True))
    deployed.up("new gossip key")
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployed.pods("server")} == servers
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployed.pods("client")} == clients
    rotation = deployed.api.get(f"/apis/batch/v1/namespaces/{ns}/jobs/consul-gossip-rotation")
    assert rotation["metadata"]["uid"] != job
    assert rotation["status"].get("succeeded") == 1


def test_a_certificate_due_for_renewal_is_reissued_and_rolls_the_servers_one_at_a_time(deployed):
    ns = deployed.namespace
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployed.pods("server")}
    certificate = deployed.api.get(f"/api/v1/namespaces/{ns}/secrets/consul-server-cert")["data"]["tls.crt"]
    # A renewal window as long as the certificate's lifetime: this up finds it due.
    deployed.set(tlsServerCertValidity=825, tlsRenewBefore=825)
    with ReadinessWatch(deployed, 3) as watch:
        deployed.up("certificate renewal")
    deployed.set(tlsRenewBefore=30)
    assert deployed.api.get(f"/api/v1/namespaces/{ns}/secrets/consul-server-cert")["data"]["tls.crt"] != certificate
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployed.pods("server")}
    assert [n for n in SERVERS if before[n] == after[n]] == []
    assert watch.worst == 1


def test_a_config_change_updates_the_config_map_in_place(deployed):
    ns = deployed.namespace
    config_map = deployed.api.get(f"/api/v1/namespaces/{ns}/configmaps/consul-server-config")["metadata"]["uid"]
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployed.pods("server")}
    deployed.set(serverExtraConfig={"log_level": "DEBUG"})
    deployed.up("server config change")
    assert deployed.api.get(f"/api/v1/namespaces/{ns}/configmaps/consul-server-config")["metadata"]["uid"] == config_map
    events = deployed.api.items(f"/api/v1/namespaces/{ns}/events")
    assert [e["message"] for e in events if e.get("reason") == "FailedMount"] == []
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployed.pods("server")}
    assert [n for n in SERVERS if before[n] == after[n]] == []


def test_scaling_three_to_five_keeps_every_server(deployed):
    from conftest import FakeNode

    deployed.plane.add_nodes([FakeNode("node-3", "zone-a"), FakeNode("node-4", "zone-b")])
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployed.pods("server")}
    deployed.set(serverReplicas=5)
    deployed.up("scale 3 -> 5")
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployed.pods("server")}
    assert {n: after[n] for n in before} == before
    assert sorted(after) == [f"consul-server-{i}" for i in range(5)]


def test_scaling_five_to_three_keeps_the_claims_and_the_budget_follows(deployed):
    ns = deployed.namespace
    claims = {c["metadata"]["name"]: c["metadata"]["uid"] for c in deployed.api.items(f"/api/v1/namespaces/{ns}/persistentvolumeclaims")}
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployed.pods("server")}
    deployed.set(serverReplicas=3)
    deployed.up("scale 5 -> 3")
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployed.pods("server")}
    assert after == {n: before[n] for n in SERVERS}
    # The removed servers' claims stay (their data comes back with a scale-up).
    assert {
        c["metadata"]["name"]: c["metadata"]["uid"] for c in deployed.api.items(f"/api/v1/namespaces/{ns}/persistentvolumeclaims")
    } == claims
    path = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/consul-server"
    deployed.plane.wait("the budget counts 3 servers", lambda: deployed.api.get(path).get("status", {}).get("expectedPods") == 3, 60)
    assert deployed.api.get(path)["status"]["disruptionsAllowed"] == 1


def test_make_restore_runs_the_snapshot_cronjob_s_pod_with_the_chosen_file(deployed, tmp_path):
    """`make restore` against a real API server: a Job made from the CronJob, SNAPSHOT_RESTORE set, waited for."""
    import subprocess

    from conftest import KUBE_BIN

    ns = deployed.namespace
    deployed.set(snapshots="true")
    deployed.up("snapshots on")
    cron = deployed.api.get(f"/apis/batch/v1/namespaces/{ns}/cronjobs/consul-snapshot")
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f'#!/bin/sh\nexec {KUBE_BIN} kubectl --kubeconfig={deployed.plane.kubeconfig} "$@"\n')
    kubectl.chmod(0o755)
    started = time.monotonic()
    result = subprocess.run(
        ["make", "--no-print-directory", "restore", "SNAPSHOT=consul-20261127T000000Z.snap", f"NAMESPACE={ns}"],
        cwd=ROOT,
        env={**os.environ, "KUBECTL": str(kubectl), "TIMEOUT_SECONDS": "120"},
        capture_output=True,
        text=True,
        check=False,
    )
    print(f"\ne2e: make restore took {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restore-snapshot: restored consul-20261127T000000Z.snap" in result.stdout
    (job,) = [j for j in deployed.api.items(f"/apis/batch/v1/namespaces/{ns}/jobs") if j["metadata"]["name"].startswith("consul-restore-")]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    expected = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in container["env"]} == {
        **{e["name"]: e.get("value") for e in expected["env"]},
        "SNAPSHOT_RESTORE": "consul-20261127T000000Z.snap",
    }
    assert (container["command"], pod["volumes"]) == (
        expected["command"],
        cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"],
    )


def test_destroy_removes_everything_but_the_server_data_claims(deployed):
    ns = deployed.namespace
    claims = sorted(c["metadata"]["name"] for c in deployed.api.items(f"/api/v1/namespaces/{ns}/persistentvolumeclaims"))
    started = time.monotonic()
    deployed.stack.destroy(color="never", on_output=lambda line: None)
    print(f"\ne2e: destroy took {time.monotonic() - started:.1f} s")
    assert claims == ["consul-snapshots", *[f"data-consul-server-{i}" for i in range(5)]]
    # The namespace stays (deleting it would delete the claims in it); everything declared in it goes.
    assert deployed.api.exists(f"/api/v1/namespaces/{ns}")
    for kind in ("apps/v1/namespaces/{ns}/statefulsets", "apps/v1/namespaces/{ns}/daemonsets", "batch/v1/namespaces/{ns}/jobs"):
        assert deployed.api.items("/apis/" + kind.format(ns=ns)) == []
    assert deployed.api.items(f"/api/v1/namespaces/{ns}/secrets") == []
    assert [c["metadata"]["name"] for c in deployed.api.items(f"/api/v1/namespaces/{ns}/configmaps")] == ["kube-root-ca.crt"]
    left = sorted(c["metadata"]["name"] for c in deployed.api.items(f"/api/v1/namespaces/{ns}/persistentvolumeclaims"))
    assert left == claims
