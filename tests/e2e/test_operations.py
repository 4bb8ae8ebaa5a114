"""Day-2 operations on real nodes, each a `pulumi up` of the module's stack (or a documented make
target) while a Watch samples the leader, the voters, bounded writes and every agent pod:
image upgrade, config change, certificate renewal, gossip key rotation, scaling 3 -> 5 -> 3, the
staged upgrade by partition, snapshot save and `make restore`, TLS switched off by the README's
procedure, and destroy keeping the claims.

Every watched operation asserts the issue's bounds (conftest.assert_bounds): never fewer voters
than a quorum of the cluster's full size, no stretch over 2 s without a leader, no write failed
but for want of a leader and none lost, every client agent Ready. Where an operation stops a
server or rolls the clients, the bounds of the still-open part of issue #19 (the leader lost
until an election, RPCs sent to a stopped server, client pods replaced) end the test as an expected failure with the figures when broken;
the others are asserted. Only three real nodes: this module's servers prefer, rather than
require, distinct nodes, so that five fit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    CLIENTS_ROLLED,
    CONSUL_IMAGE,
    KUBE_BIN,
    LEADER_LOST,
    LOCAL_AGENT,
    REAL_NODES,
    ROOT,
    SERVER_STOPPED,
    TOOLS_NAMESPACE,
    UPGRADE_IMAGE,
    assert_bounds,
    consul_http,
    consul_json,
    cordoned,
    in_pod,
    new_consul_ca,
    ready,
    restarts,
    restricted_container,
    run_stack,
    servers_formed,
)
from material import gossip_key
from watch import Watch

from testbed.redaction import Secret

# Day-2 operations, each a roll or a recovery of minutes: make e2e-day2 (outside CI's 90 minutes).
pytestmark = [pytest.mark.e2e, pytest.mark.day2]

# The bed's tools namespace reads the certificate each server serves on its API port.
STACK_SETTINGS = {"serverAntiAffinity": "preferred", "serverApiNamespaces": [TOOLS_NAMESPACE]}
SERVERS = ["consul-server-0", "consul-server-1", "consul-server-2"]
# A roll of the servers: each one stopped (without leaving Raft, 30 s grace at most), started and
# Ready in turn; the formed checks below wait for Consul's own view after that.
FORMED = 180
WORKLOADS = (("statefulsets", "consul-server"), ("daemonsets", "consul-client"))
PEM = re.compile(r"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.DOTALL)


def servers(deployment) -> dict[str, dict[str, Any]]:
    """Each server pod: its UID, image (from its spec and as the runtime reports it), restarts."""
    return {
        p["metadata"]["name"]: {
            "uid": p["metadata"]["uid"],
            "image": p["spec"]["containers"][0]["image"],
            "running": [s.get("image", "") for s in p.get("status", {}).get("containerStatuses", [])],
            "restarts": restarts(p),
            "created": p["metadata"]["creationTimestamp"],
        }
        for p in deployment.pods("server")
    }


def agent_pods(deployment) -> dict[str, tuple[str, int]]:
    return {p["metadata"]["name"]: (p["metadata"]["uid"], restarts(p)) for p in deployment.pods("server") + deployment.pods("client")}


# Longer than two Serf query timeouts (LAN, then WAN) at this cluster's size.
KEYRING_QUERY_BOUND = 30


def from_server(deployment, path: str, server: str = "consul-server-0", bound: float = 5) -> Any:
    return consul_json(in_pod(deployment, server), f"{LOCAL_AGENT}{path}", deployment.management_token(), bound=bound)


# Listing the keyring is a gossip query, and gossip is UDP: a member that misses the query makes
# Consul answer 500 "5/6 nodes reported success" (seen on this bed once in six rotations, with
# every agent up: the query never reached one server). An operator asks again, as the rotation Job
# does; an answer that lists every member is what is asserted.
KEYRING_LIST_TRIES = 3


def keyring_pools(deployment) -> Any:
    """`GET /v1/operator/keyring` through consul-server-0, asked up to KEYRING_LIST_TRIES times
    while not every member answers."""
    for attempt in range(1, KEYRING_LIST_TRIES + 1):
        status, body = consul_http(
            in_pod(deployment, "consul-server-0"),
            "GET",
            f"{LOCAL_AGENT}/v1/operator/keyring",
            deployment.management_token(),
            bound=KEYRING_QUERY_BOUND,
        )
        if status == 200:
            return json.loads(body)
        # Only the count of members that answered: Consul's text may quote a key.
        answered = ", ".join(re.findall(r"\d+/\d+ nodes reported success", body)) or "no count given"
        print(f"\nbed: operations: keyring listing {attempt} of {KEYRING_LIST_TRIES}: HTTP {status} ({answered})")
    raise AssertionError(f"GET /v1/operator/keyring: not every member answered in {KEYRING_LIST_TRIES} listings")


def ready_since(pod: dict[str, Any]) -> str:
    """When the pod last became Ready (its Ready condition's lastTransitionTime, RFC 3339 UTC)."""
    return next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "Ready" and c["status"] == "True")


def job(deployment, name: str) -> dict[str, Any]:
    found: dict[str, Any] = deployment.api.get(f"/apis/batch/v1/namespaces/{deployment.namespace}/jobs/{name}")
    return found


def watched_up(deployment, toolbox, label: str, then_formed: int | None = None) -> tuple[Watch, Any]:
    """`pulumi up` under a Watch; with `then_formed`, the watch goes on until Consul reports that
    many servers, all voters, and a leader."""
    with Watch(deployment, toolbox, label) as watch:
        result = deployment.up(label)
        if then_formed is not None:
            deployment.cluster.wait(f"{label}: {then_formed} voters and a leader", lambda: servers_formed(deployment, then_formed), FORMED)
    assert result.summary.result == "succeeded"
    return watch, result


def test_an_image_upgrade_rolls_the_servers_one_at_a_time_within_the_bounds(module_deployment, toolbox):
    deployment = module_deployment
    statefulset = deployment.get("statefulsets/consul-server")["metadata"]["uid"]
    before = servers(deployment)
    deployment.set(image=UPGRADE_IMAGE)
    watch, _ = watched_up(deployment, toolbox, "image upgrade", then_formed=3)
    after = servers(deployment)
    # Printed, not asserted: both names are one image ID, and the runtime reports either name.
    running = {n: s["running"] for n, s in after.items()}
    print(f"bed: image upgrade: the runtime reports {running}")
    assert deployment.get("statefulsets/consul-server")["metadata"]["uid"] == statefulset
    assert {n: s["image"] for n, s in after.items()} == dict.fromkeys(SERVERS, UPGRADE_IMAGE)
    assert [n for n in SERVERS if after[n]["uid"] == before[n]["uid"]] == []
    # Highest ordinal first, one at a time: each new pod created after the one above it was Ready.
    assert sorted(SERVERS, key=lambda n: after[n]["created"]) == list(reversed(SERVERS))
    clients = deployment.pods("client")
    assert {p["spec"]["containers"][0]["image"] for p in clients} == {UPGRADE_IMAGE}
    # Servers, then clients (Consul's upgrade order): no client pod of the new image was created
    # before the last server pod of the new image was Ready.
    last_server_ready = max(ready_since(p) for p in deployment.pods("server"))
    first_client = min(p["metadata"]["creationTimestamp"] for p in clients)
    assert first_client >= last_server_ready, f"a client rolled at {first_client}, before the servers were done at {last_server_ready}"
    assert_bounds(watch, 3, open_defect=LEADER_LOST + CLIENTS_ROLLED)


def test_a_config_change_updates_the_config_map_in_place_and_every_server_runs_it(module_deployment, toolbox):
    deployment = module_deployment
    ns = deployment.namespace
    config_map = deployment.api.get(f"/api/v1/namespaces/{ns}/configmaps/consul-server-config")["metadata"]["uid"]
    before = servers(deployment)
    deployment.set(serverExtraConfig={"log_level": "DEBUG"})
    watch, _ = watched_up(deployment, toolbox, "server config change", then_formed=3)
    assert deployment.api.get(f"/api/v1/namespaces/{ns}/configmaps/consul-server-config")["metadata"]["uid"] == config_map
    # No pod found the ConfigMap missing, as it would if it had been deleted and re-created.
    failed_mounts = [e["message"] for e in deployment.api.items(f"/api/v1/namespaces/{ns}/events") if e.get("reason") == "FailedMount"]
    print(f"bed: config change: FailedMount events in the namespace: {failed_mounts}")
    assert [m for m in failed_mounts if "consul-server-config" in m] == []
    after = servers(deployment)
    assert [n for n in SERVERS if after[n]["uid"] == before[n]["uid"]] == []
    levels = {n: from_server(deployment, "/v1/agent/self", n)["DebugConfig"]["Logging"]["LogLevel"] for n in SERVERS}
    assert levels == dict.fromkeys(SERVERS, "DEBUG")
    assert_bounds(watch, 3, open_defect=SERVER_STOPPED)


def served_certificate(toolbox, pod_ip: str) -> str:
    """The certificate a server presents on its HTTPS API, base64 body only."""
    out = toolbox.sh(f"curl -sk -m 5 -o /dev/null -w '%{{certs}}' https://{pod_ip}:8501/v1/status/leader")
    found = PEM.findall(out.stdout)
    return re.sub(r"\s", "", found[0]) if found else ""


def test_a_certificate_due_for_renewal_is_reissued_and_every_server_serves_it(module_deployment, toolbox):
    deployment = module_deployment
    old = deployment.secret("consul-server-cert")["tls.crt"]
    before = servers(deployment)
    # A renewal window as long as the certificate's life: this up finds it due.
    deployment.set(tlsServerCertValidity=825, tlsRenewBefore=825)
    try:
        watch, _ = watched_up(deployment, toolbox, "certificate renewal", then_formed=3)
    finally:
        deployment.set(tlsRenewBefore=30)  # the later ups re-issue nothing
    new = deployment.secret("consul-server-cert")["tls.crt"]
    assert new != old
    after = servers(deployment)
    assert [n for n in SERVERS if after[n]["uid"] == before[n]["uid"]] == []
    expected = re.sub(r"\s", "", PEM.findall(new)[0])
    served = {p["metadata"]["name"]: served_certificate(toolbox, p["status"]["podIP"]) for p in deployment.pods("server")}
    assert served == dict.fromkeys(SERVERS, expected)
    assert_bounds(watch, 3, open_defect=SERVER_STOPPED)


def test_the_ca_rotates_in_three_ups_and_every_server_serves_a_certificate_of_the_new_ca(module_deployment, toolbox):
    """The README's three ups: every agent trusts both CAs; the servers switch to the new one while
    every agent still trusts the old; the new CA alone. Each up returns after its roll (none
    stalls), and at the end every server serves a certificate the new CA issued, and the Secret
    holds the new CA only."""
    from cryptography import x509

    deployment = module_deployment
    old_ca = deployment.stack.outputs()["caCertificate"].value
    new_cert, new_key = new_consul_ca(toolbox)
    watches = []
    try:
        deployment.set(tlsTrustedCaCerts=new_cert)
        watches.append(watched_up(deployment, toolbox, "CA rotation 1: both CAs trusted", then_formed=3)[0])
        deployment.set(("tlsCaKey",), tlsCaCert=new_cert, tlsCaKey=new_key, tlsTrustedCaCerts=old_ca)
        watches.append(watched_up(deployment, toolbox, "CA rotation 2: the servers on the new CA", then_formed=3)[0])
    finally:
        deployment.stack.remove_config("consul:tlsTrustedCaCerts")
    watches.append(watched_up(deployment, toolbox, "CA rotation 3: the new CA alone", then_formed=3)[0])
    assert PEM.findall(deployment.secret("consul-ca-cert")["tls.crt"]) == PEM.findall(new_cert)
    issuer = x509.load_pem_x509_certificate(new_cert.encode())
    for pod in deployment.pods("server"):
        served = served_certificate(toolbox, pod["status"]["podIP"])
        pem = "-----BEGIN CERTIFICATE-----\n" + served + "\n-----END CERTIFICATE-----\n"
        x509.load_pem_x509_certificate(pem.encode()).verify_directly_issued_by(issuer)
    assert_bounds(watches, 3, open_defect=LEADER_LOST + CLIENTS_ROLLED)


def test_a_new_gossip_key_reaches_every_agent_without_a_restart_and_only_it_stays(module_deployment, toolbox):
    deployment = module_deployment
    agents = agent_pods(deployment)
    old_key = deployment.secret("consul-gossip")["key"]
    rotation = job(deployment, "consul-gossip-rotation")["metadata"]["uid"]
    key = Secret(gossip_key())
    deployment.set(secrets=("gossipKey",), gossipKey=key)
    watch, _ = watched_up(deployment, toolbox, "gossip key rotation")
    assert deployment.secret("consul-gossip")["key"] == key
    again = job(deployment, "consul-gossip-rotation")
    assert again["metadata"]["uid"] != rotation
    assert again["status"].get("succeeded") == 1
    assert agent_pods(deployment) == agents
    # Listing the keyring is a gossip query to every agent of the LAN and WAN pools, and a query
    # waits out Serf's query timeout (the gossip interval x 16 x log10 of the pool size: 6.4 s for
    # 14 agents) whenever one agent answers late; 5 s was shorter than that timeout.
    pools = keyring_pools(deployment)
    assert {(pool["WAN"], tuple(sorted(pool["Keys"]))) for pool in pools} == {(True, (key,)), (False, (key,))}
    members = from_server(deployment, "/v1/agent/members", "consul-server-1")
    assert sorted((m["Name"], m["Status"]) for m in members) == sorted((n, 1) for n in SERVERS + REAL_NODES)
    assert_bounds(watch, 3)
    log = stale_agent_log(deployment, old_key)
    assert "stale-agent" not in {m["Name"] for m in from_server(deployment, "/v1/agent/members")}
    assert "No installed keys could decrypt the message" in log or "Join cluster failed" in log, log[-2000:]


@pytest.mark.xfail(
    reason="open defect: the rotation Job waits for the servers' rollout, which waits for a server restarted with the new key "
    "only, so the up stalls until its 30-minute timeout; not run, as it would hold the suite that long",
    run=False,
    strict=True,
)
def test_a_new_gossip_key_in_the_same_up_as_a_server_roll_stays_within_the_bounds(module_deployment, toolbox):
    """The roll restarts each server with the Secret's new key while the others still gossip with
    the old one: the rotation Job must install the new key on the running cluster meanwhile, not
    wait for a roll that waits for it."""
    deployment = module_deployment
    before = servers(deployment)
    key = Secret(gossip_key())
    deployment.set(secrets=("gossipKey",), gossipKey=key, serverExtraConfig={"log_level": "INFO"})
    watch, _ = watched_up(deployment, toolbox, "gossip key rotation with a server roll", then_formed=3)
    after = servers(deployment)
    assert [n for n in SERVERS if after[n]["uid"] == before[n]["uid"]] == []
    assert job(deployment, "consul-gossip-rotation")["status"].get("succeeded") == 1
    pools = keyring_pools(deployment)
    assert {(pool["WAN"], tuple(sorted(pool["Keys"]))) for pool in pools} == {(True, (key,)), (False, (key,))}
    members = from_server(deployment, "/v1/agent/members", "consul-server-1")
    assert sorted((m["Name"], m["Status"]) for m in members) == sorted((n, 1) for n in SERVERS + REAL_NODES)
    assert_bounds(watch, 3, open_defect=SERVER_STOPPED)


def stale_agent_log(deployment, old_key: str) -> str:
    """The log of a client agent started from the DaemonSet's own pod template but with the old
    gossip key (a Secret of its own), once its join was refused; the pod and Secret are removed."""
    ns, cluster = deployment.namespace, deployment.cluster
    gossip = {"key": old_key, "gossip.json": json.dumps({"encrypt": old_key})}
    cluster.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "stale-gossip", "namespace": ns}, "stringData": gossip}])
    owner = deployment.api.get(f"/api/v1/namespaces/{ns}/secrets/stale-gossip")["metadata"]["uid"]
    template = json.loads(json.dumps(deployment.get("daemonsets/consul-client")["spec"]["template"]))
    spec = template["spec"]
    for volume in spec["volumes"]:
        if volume.get("secret", {}).get("secretName") == "consul-gossip":
            volume["secret"]["secretName"] = "stale-gossip"
    for container in spec["containers"]:
        container["env"] = [e for e in container.get("env", []) if e["name"] != "NODE_NAME"] + [
            {"name": "NODE_NAME", "value": "stale-agent"}
        ]
    # Owned by its Secret, so that the DaemonSet, whose selector its labels match, does not adopt it.
    metadata = {
        "name": "stale-agent",
        "namespace": ns,
        "labels": template["metadata"]["labels"],
        "ownerReferences": [{"apiVersion": "v1", "kind": "Secret", "name": "stale-gossip", "uid": owner, "controller": True}],
    }
    cluster.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {**spec, "nodeName": REAL_NODES[2]}}])
    refused = ("No installed keys could decrypt the message", "Join cluster failed")
    try:
        cluster.wait("the stale agent's join refused", lambda: any(line in deployment.logs("stale-agent") for line in refused), 90)
        return deployment.logs("stale-agent")
    finally:
        deployment.kubectl("delete", "secret", "stale-gossip", "--wait=false", check=False)
        deployment.kubectl("delete", "pod", "stale-agent", "--wait=false", check=False)


def min_quorum(deployment) -> int:
    quorum: int = from_server(deployment, "/v1/operator/autopilot/configuration")["MinQuorum"]
    return quorum


def test_scaling_three_to_five_restarts_no_server_and_ends_with_five_voters(module_deployment, toolbox):
    deployment = module_deployment
    before = servers(deployment)
    deployment.set(serverReplicas=5)
    watch, _ = watched_up(deployment, toolbox, "scale 3 -> 5", then_formed=5)
    after = servers(deployment)
    assert {n: (after[n]["uid"], after[n]["restarts"]) for n in SERVERS} == {n: (before[n]["uid"], before[n]["restarts"]) for n in SERVERS}
    assert sorted(after) == [f"consul-server-{i}" for i in range(5)]
    # The ACL Job sets autopilot's min_quorum to the new size on the running cluster.
    assert min_quorum(deployment) == 5
    assert_bounds(watch, 3)


def test_scaling_five_to_three_keeps_the_claims_and_ends_with_three_voters(module_deployment, toolbox):
    deployment = module_deployment
    ns = deployment.namespace
    claims = {c["metadata"]["name"]: c["metadata"]["uid"] for c in deployment.api.items(f"/api/v1/namespaces/{ns}/persistentvolumeclaims")}
    before = servers(deployment)
    assert len(before) == 5, "the 3 -> 5 test runs first"
    tokens = deployment.secret("consul-acl-tokens")
    removed = {node: tokens[f"agent-{node}"] for node in ("consul-server-3", "consul-server-4")}
    deployment.set(serverReplicas=3)
    watch, _ = watched_up(deployment, toolbox, "scale 5 -> 3", then_formed=3)
    after = servers(deployment)
    assert {n: after[n]["uid"] for n in after} == {n: before[n]["uid"] for n in SERVERS}
    # The removed servers' claims stay, for a later scale-up.
    assert {
        c["metadata"]["name"]: c["metadata"]["uid"] for c in deployment.api.items(f"/api/v1/namespaces/{ns}/persistentvolumeclaims")
    } == claims
    budget = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/consul-server"
    deployment.cluster.wait(
        "the budget counts 3 servers", lambda: deployment.api.get(budget).get("status", {}).get("expectedPods") == 3, 60
    )
    assert deployment.api.get(budget)["status"]["disruptionsAllowed"] == 1
    # Set to the new size, which let autopilot prune the two removed servers (they did not leave).
    assert min_quorum(deployment) == 3
    # The ACL Job revoked the removed servers' agent tokens.
    run = in_pod(deployment, "consul-server-0")
    assert {node: consul_http(run, "GET", f"{LOCAL_AGENT}/v1/acl/token/self", token, bound=5)[0] for node, token in removed.items()} == {
        node: 403 for node in removed
    }
    assert_bounds(watch, 5, open_defect=SERVER_STOPPED)


def client_images(deployment) -> dict[str, str]:
    return {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in deployment.pods("client")}


def test_a_staged_upgrade_walks_the_partition_down_one_server_per_up(module_deployment, toolbox):
    """The README's procedure: the new image with the partition at serverReplicas - 1, then one step
    lower per `pulumi up`. Each up returns once its servers are updated, and only those move. The
    client agents stay on the old image, their pods untouched, until the last step, which rolls them
    once every server runs the new one (Consul's upgrade order)."""
    deployment = module_deployment
    target = CONSUL_IMAGE if servers(deployment)["consul-server-0"]["image"] != CONSUL_IMAGE else UPGRADE_IMAGE
    clients_before = client_images(deployment)
    assert target not in clients_before.values()
    deployment.set(image=target)
    watches = []
    for partition in (2, 1, 0):
        deployment.set(serverUpdatePartition=partition)
        started = time.monotonic()
        watch, _ = watched_up(deployment, toolbox, f"staged upgrade, partition {partition}", then_formed=3)
        print(f"bed: staged upgrade: partition {partition} up and formed in {time.monotonic() - started:.1f} s")
        moved = {n for n, s in servers(deployment).items() if s["image"] == target}
        assert moved == {f"consul-server-{i}" for i in range(partition, 3)}
        if partition > 0:
            assert client_images(deployment) == clients_before, "a client moved while servers were held back"
        watches.append(watch)
    assert set(client_images(deployment).values()) == {target}
    newest_server = max(s["created"] for s in servers(deployment).values())
    assert all(p["metadata"]["creationTimestamp"] >= newest_server for p in deployment.pods("client"))
    # Partitions 2 and 1 roll a server each; the last step rolls the last server, then the clients.
    assert_bounds(
        watches,
        3,
        open_defect=SERVER_STOPPED,
        open_defect_of={"staged upgrade, partition 0": LEADER_LOST + CLIENTS_ROLLED},
    )


def run_job_from_cronjob(deployment, name: str, timeout: int = 180) -> str:
    """`kubectl create job --from=cronjob/consul-snapshot`, waited for; the log of its pod that
    succeeded (a failed attempt's log is printed)."""
    deployment.kubectl("create", "job", name, "--from=cronjob/consul-snapshot")
    deployment.kubectl("wait", "--for=condition=complete", f"job/{name}", f"--timeout={timeout}s", timeout=timeout + 30)
    pods = deployment.api.items(f"/api/v1/namespaces/{deployment.namespace}/pods?labelSelector=job-name={name}")
    logs = {p["metadata"]["name"]: (p["status"].get("phase"), deployment.logs(p["metadata"]["name"])) for p in pods}
    for pod, (phase, log) in logs.items():
        if phase != "Succeeded":
            print(f"\nbed: {name}: attempt {pod} {phase}: {log.strip()}")
    return next(log for phase, log in logs.values() if phase == "Succeeded")


def make_restore(deployment, kubectl: Path, snapshot: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = subprocess.run(
        ["make", "--no-print-directory", "restore", f"SNAPSHOT={snapshot}", f"NAMESPACE={deployment.namespace}"],
        cwd=ROOT,
        env={**os.environ, "KUBECTL": str(kubectl), "TIMEOUT_SECONDS": "240"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(f"\nbed: make restore {snapshot}: exit {result.returncode} after {time.monotonic() - started:.1f} s")
    return result


def damaged_copy(deployment, snapshot: str, damaged: str) -> None:
    """A truncated copy of a snapshot in the claim, written by a pod that mounts it (as the consul user)."""
    container = restricted_container(
        "cut", "testbed.local/toolbox:1", ["sh", "-ec", f"head -c 200 /snapshots/{snapshot} > /snapshots/{damaged}"]
    )
    container["securityContext"].update(runAsUser=100, runAsGroup=1000)
    container["volumeMounts"] = [{"name": "snapshots", "mountPath": "/snapshots"}]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "snapshot-cut", "namespace": deployment.namespace},
        "spec": {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [{"name": "snapshots", "persistentVolumeClaim": {"claimName": "consul-snapshots"}}],
        },
    }
    deployment.cluster.apply([pod])
    path = f"/api/v1/namespaces/{deployment.namespace}/pods/snapshot-cut"
    deployment.cluster.wait(
        "the truncated copy written", lambda: deployment.api.get(path)["status"].get("phase") in ("Succeeded", "Failed"), 120
    )
    assert deployment.api.get(path)["status"]["phase"] == "Succeeded", deployment.logs("snapshot-cut")
    deployment.kubectl("delete", "pod", "snapshot-cut", "--wait=false")


def test_a_snapshot_restores_a_wiped_cluster_with_make_restore_and_a_damaged_one_is_refused(module_deployment, toolbox, tmp_path):
    deployment = module_deployment
    ns, cluster = deployment.namespace, deployment.cluster
    deployment.set(snapshots=True)
    assert deployment.up("snapshots on").summary.result == "succeeded"
    cluster.wait("three voters and a leader", lambda: servers_formed(deployment, 3), FORMED)
    token = deployment.management_token()
    server = in_pod(deployment, "consul-server-0")

    def api(method: str, path: str, body: str | None = None) -> tuple[int, str]:
        return consul_http(server, method, f"{LOCAL_AGENT}{path}", token, body=body, bound=5)

    for i in range(5):
        assert api("PUT", f"/v1/kv/snap/key-{i}", f"value-{i}") == (200, "true")
    external = {"Node": "legacy-db", "Address": "10.9.9.9", "Service": {"Service": "legacy-db", "Port": 5432}}
    assert api("PUT", "/v1/catalog/register", json.dumps(external))[0] == 200

    started = time.monotonic()
    log = run_job_from_cronjob(deployment, "consul-snapshot-manual")
    saved = re.search(r"^saved (consul-\S+\.snap);", log, re.MULTILINE)
    assert saved, log
    snapshot = saved.group(1)
    print(f"\nbed: snapshot: {snapshot} saved in {time.monotonic() - started:.1f} s")

    # Every server's data lost: the nodes cordoned, the claims and the pods deleted; the StatefulSet
    # makes new claims, which bind fresh, empty volumes, and a new cluster forms once uncordoned.
    started = time.monotonic()
    claims = [f"data-{name}" for name in SERVERS]
    old = {c: deployment.api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{c}")["metadata"]["uid"] for c in claims}
    with cordoned(cluster, REAL_NODES):
        deployment.kubectl("delete", "pvc", *claims, "--wait=false")
        deployment.kubectl("delete", "pod", *SERVERS, timeout=180)
        cluster.wait(
            "the old claims gone",
            lambda: all(
                not deployment.api.exists(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{c}")
                or deployment.api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{c}")["metadata"]["uid"] != old[c]
                for c in claims
            ),
            120,
        )
        gone = time.monotonic() - started
    cluster.wait("a new cluster of three", lambda: servers_formed(deployment, 3), FORMED)
    formed = time.monotonic() - started
    # The new cluster knows the management token (initial_management); the ACL Job makes the rest
    # again: `kubectl delete job`, then `pulumi up --refresh` re-creates it.
    deployment.kubectl("delete", "job", "consul-acl-bootstrap", "--cascade=foreground", "--wait=true")
    result = deployment.stack.up(refresh=True, color="never", on_output=lambda line: None)
    assert result.summary.result == "succeeded"
    cluster.wait("rollouts finished", deployment.rolled_out, 300)
    assert job(deployment, "consul-acl-bootstrap")["status"].get("succeeded") == 1
    print(
        f"bed: snapshot: every server's data gone {gone:.1f} s, a new cluster of three {formed:.1f} s, "
        f"its ACLs again (pulumi up --refresh) {time.monotonic() - started:.1f} s after the wipe began"
    )
    assert api("GET", "/v1/kv/snap/key-0")[0] == 404

    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f'#!/bin/sh\nexec {KUBE_BIN} kubectl --kubeconfig={cluster.kubeconfig} "$@"\n')
    kubectl.chmod(0o755)
    restored = make_restore(deployment, kubectl, snapshot)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert f"restore-snapshot: restored {snapshot}" in restored.stdout
    assert [api("GET", f"/v1/kv/snap/key-{i}?raw") for i in range(5)] == [(200, f"value-{i}") for i in range(5)]
    status, body = api("GET", "/v1/catalog/service/legacy-db")
    assert (status, [s["Address"] for s in json.loads(body)]) == (200, ["10.9.9.9"])

    # The README's step after a restore onto new servers: restart the clients, which then rejoin
    # under the node IDs the restored catalog holds for their names (no rename for Consul to refuse).
    def client_node_ids() -> dict[str, str]:
        return {n["Node"]: n["ID"] for n in from_server(deployment, "/v1/catalog/nodes") if n["Node"] in REAL_NODES}

    restored_ids = client_node_ids()
    assert sorted(restored_ids) == sorted(REAL_NODES)
    deployment.kubectl("rollout", "restart", "daemonset/consul-client")
    deployment.kubectl("rollout", "status", "daemonset/consul-client", "--timeout=300s", timeout=330)
    members = lambda: {(m["Name"], m["Status"]) for m in from_server(deployment, "/v1/agent/members")}  # noqa: E731
    cluster.wait("every client a live member", lambda: {(n, 1) for n in REAL_NODES} <= members(), 120)
    assert client_node_ids() == restored_ids
    assert consul_http(toolbox.sh, "GET", f"http://consul-client.{ns}.svc:8500/v1/kv/snap/key-4?raw", token, bound=5) == (200, "value-4")

    # A missing file and a damaged one are refused before the servers see them; the data stays.
    missing = "consul-19990101T000000Z.snap"
    refused = make_restore(deployment, kubectl, missing)
    assert refused.returncode != 0
    assert f"no snapshot {missing} in claim consul-snapshots" in refused.stderr, refused.stderr
    damaged = "consul-20000101T000000Z.snap"
    damaged_copy(deployment, snapshot, damaged)
    refused = make_restore(deployment, kubectl, damaged)
    assert refused.returncode != 0
    assert f"{damaged} is not a sound Consul snapshot, nothing was restored" in refused.stderr, refused.stderr
    assert [api("GET", f"/v1/kv/snap/key-{i}?raw") for i in range(5)] == [(200, f"value-{i}") for i in range(5)]


def test_the_documented_procedure_switches_tls_off_through_a_snapshot_and_keeps_the_data(module_deployment, toolbox, tmp_path):
    """README, "Settings a running cluster refuses": TLS switched off on a deployed stack, step by
    step as documented (a snapshot, pulumi destroy, the servers' claims deleted, the new setting,
    pulumi up, make restore, the ACL Job again, the clients restarted). The data and the ACLs come
    back; the agents speak plain HTTP and RPC."""
    deployment = module_deployment
    ns, cluster = deployment.namespace, deployment.cluster
    # The procedure starts from a snapshot: pulumi config set consul:snapshots true; pulumi up (when not on yet).
    if not deployment.api.exists(f"/apis/batch/v1/namespaces/{ns}/cronjobs/consul-snapshot"):
        deployment.set(snapshots=True)
        assert deployment.up("snapshots on").summary.result == "succeeded"
        cluster.wait("three voters and a leader", lambda: servers_formed(deployment, 3), FORMED)
    old_token = deployment.management_token()
    before = consul_http(
        in_pod(deployment, "consul-server-0"), "PUT", f"{LOCAL_AGENT}/v1/kv/switch/kept", old_token, body="before", bound=5
    )
    assert before == (200, "true")
    started = time.monotonic()

    # kubectl -n consul create job --from=cronjob/consul-snapshot snapshot-before
    log = run_job_from_cronjob(deployment, "snapshot-before")
    saved = re.search(r"^saved (consul-\S+\.snap);", log, re.MULTILINE)
    assert saved, log
    snapshot = saved.group(1)
    # pulumi destroy; kubectl -n consul delete pvc -l app.kubernetes.io/component=server
    deployment.destroy()
    deployment.kubectl("delete", "pvc", "-l", "app.kubernetes.io/component=server", timeout=180)
    # pulumi config set consul:tls false; pulumi config rm-all consul:tlsCaCert consul:tlsCaKey consul:tlsTrustedCaCerts
    # (this module's CA rotation left its CA in the stack, as a user's own CA would be); pulumi up
    deployment.set(tls=False)
    deployment.unset("tlsCaCert", "tlsCaKey", "tlsTrustedCaCerts")
    assert deployment.up("TLS off: a new cluster").summary.result == "succeeded"
    cluster.wait("a new cluster of three", lambda: servers_formed(deployment, 3), FORMED)
    # make restore SNAPSHOT=<the file> NAMESPACE=consul
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f'#!/bin/sh\nexec {KUBE_BIN} kubectl --kubeconfig={cluster.kubeconfig} "$@"\n')
    kubectl.chmod(0o755)
    restored = make_restore(deployment, kubectl, snapshot)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    # kubectl -n consul delete job consul-acl-bootstrap --cascade=foreground; pulumi up --refresh
    deployment.kubectl("delete", "job", "consul-acl-bootstrap", "--cascade=foreground", "--wait=true")
    assert deployment.stack.up(refresh=True, color="never", on_output=lambda line: None).summary.result == "succeeded"
    cluster.wait("rollouts finished", deployment.rolled_out, 300)
    assert job(deployment, "consul-acl-bootstrap")["status"].get("succeeded") == 1
    # kubectl -n consul rollout restart daemonset/consul-client
    deployment.kubectl("rollout", "restart", "daemonset/consul-client")
    deployment.kubectl("rollout", "status", "daemonset/consul-client", "--timeout=300s", timeout=330)
    members = lambda: {(m["Name"], m["Status"]) for m in from_server(deployment, "/v1/agent/members")}  # noqa: E731
    cluster.wait("every agent a live member", lambda: {(n, 1) for n in [*SERVERS, *REAL_NODES]} <= members(), 120)
    print(f"\nbed: TLS off by the documented procedure: {time.monotonic() - started:.1f} s from the snapshot to every client back")

    # The data written before, through a workload's agent, with the new stack's management token.
    token = deployment.management_token()
    assert token != old_token
    agent = f"http://consul-client.{ns}.svc:8500"
    assert consul_http(toolbox.sh, "GET", f"{agent}/v1/kv/switch/kept?raw", token, bound=5) == (200, "before")
    assert consul_http(toolbox.sh, "GET", f"{agent}/v1/kv/switch/kept?raw", "", bound=5)[0] == 403
    # The restore brought the destroyed stack's ACL state back, its management token with it; the
    # ACL Job run after it leaves that token refused, as the README says.
    old = consul_http(toolbox.sh, "GET", f"{agent}/v1/kv/switch/kept?raw", old_token, bound=5)
    print(f"bed: TLS off: the destroyed stack's management token after the restore: HTTP {old[0]}")
    assert old[0] == 403
    # TLS off: every server answers plain HTTP on 8500 from another pod, and nothing listens on
    # 8501, asked inside the pod (the NetworkPolicy admits only 8500 from the tools' namespace, so
    # from there any port fails): curl's exit 7 is a refused connection.
    for pod in deployment.pods("server"):
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        assert consul_http(toolbox.sh, "GET", f"http://{ip}:8500/v1/status/leader", "", bound=5)[0] == 200
        https = deployment.exec(name, "curl", "-sk", "-m", "3", "-o", "/dev/null", "https://127.0.0.1:8501/v1/status/leader")
        assert https.returncode == 7, f"{name}: curl https://127.0.0.1:8501 exited {https.returncode}"


def interrupt_pulumi() -> list[int]:
    """Ctrl-C to the `pulumi` processes this test process started: what a user does to an up that hangs."""
    interrupted = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text.split("(", 1)[1].rsplit(")", 1)
        if name == "pulumi" and int(rest.split()[1]) == os.getpid():
            os.kill(int(stat.parent.name), signal.SIGINT)
            interrupted.append(int(stat.parent.name))
    return interrupted


def up_that_must_return(deployment, label: str, applied) -> dict[str, Any]:
    """`pulumi up` in a thread while the bed waits for `applied` (the change reached the cluster)
    and every rollout to finish; the up must then return within a minute, or it is interrupted
    and the outcome says it hung."""
    outcome: dict[str, Any] = {}

    def up() -> None:
        try:
            outcome["result"] = deployment.stack.up(color="never", on_output=lambda line: None)
        except run_stack.auto.CommandError as error:
            outcome["error"] = error

    started = time.monotonic()
    thread = threading.Thread(target=up, daemon=True)
    thread.start()
    deployment.cluster.wait(f"{label}: applied and rolled out", lambda: applied() and deployment.rolled_out(), 300)
    settled = time.monotonic() - started
    thread.join(timeout=60)
    outcome["hung"] = thread.is_alive()
    if outcome["hung"]:
        print(f"\nbed: {label}: rollouts done {settled:.1f} s after up started; up still running 60 s later, interrupted")
        interrupt_pulumi()
        thread.join(timeout=180)
    else:
        print(f"\nbed: {label}: up returned {time.monotonic() - started:.1f} s after it started")
    return outcome


def assert_returned(outcome: dict[str, Any]) -> None:
    assert not outcome["hung"], "pulumi up still waiting 60 s after every rollout had finished"
    assert "error" not in outcome, outcome
    assert outcome["result"].summary.result == "succeeded"


def test_raising_the_partition_with_no_template_change_moves_no_server_and_returns(module_deployment):
    """Setting the partition before the image: every server already runs the template, so none is
    to move, and `pulumi up` must return once the StatefulSet's status has caught up."""
    deployment = module_deployment
    before = servers(deployment)

    def partition_applied() -> bool:
        strategy = deployment.get("statefulsets/consul-server")["spec"]["updateStrategy"]
        return bool(strategy.get("rollingUpdate", {}).get("partition") == 2)

    deployment.set(serverUpdatePartition=2)
    outcome = up_that_must_return(deployment, "partition raised to 2", partition_applied)
    assert {n: s["uid"] for n, s in servers(deployment).items()} == {n: s["uid"] for n, s in before.items()}
    assert_returned(outcome)
    deployment.set(serverUpdatePartition=0)
    deployment.up("partition back to 0")
    assert {n: s["uid"] for n, s in servers(deployment).items()} == {n: s["uid"] for n, s in before.items()}


def test_a_partition_equal_to_the_server_count_moves_no_server_and_the_up_returns(module_deployment):
    """A staged upgrade started with the partition at serverReplicas and the new image: no server
    moves, the clients are held; once the change is applied, `pulumi up` has nothing left to wait
    for and must return within a minute."""
    deployment = module_deployment
    before = servers(deployment)
    target = UPGRADE_IMAGE if before["consul-server-0"]["image"] != UPGRADE_IMAGE else CONSUL_IMAGE
    deployment.set(image=target, serverUpdatePartition=3)

    def applied() -> bool:
        templates = [deployment.get(f"{kind}/{name}")["spec"]["template"] for kind, name in WORKLOADS]
        return all(t["spec"]["containers"][0]["image"] == target for t in templates)

    outcome = up_that_must_return(deployment, "partition 3", applied)
    assert {n: s["uid"] for n, s in servers(deployment).items()} == {n: s["uid"] for n, s in before.items()}
    assert_returned(outcome)


def test_destroy_removes_everything_but_the_server_data_claims(module_deployment):
    deployment = module_deployment
    ns = deployment.namespace
    claims = sorted(c["metadata"]["name"] for c in deployment.api.items(f"/api/v1/namespaces/{ns}/persistentvolumeclaims"))
    started = time.monotonic()
    deployment.destroy()
    print(f"\nbed: destroy took {time.monotonic() - started:.1f} s")
    assert {f"data-{name}" for name in SERVERS} <= set(claims)
    assert [c for c in claims if c != "consul-snapshots" and not re.fullmatch(r"data-consul-server-\d+", c)] == []
    # The namespace stays (deleting it would delete the claims in it); everything declared in it goes.
    assert deployment.api.exists(f"/api/v1/namespaces/{ns}")
    for kind in ("apps/v1/namespaces/{ns}/statefulsets", "apps/v1/namespaces/{ns}/daemonsets", "batch/v1/namespaces/{ns}/jobs"):
        assert deployment.api.items("/apis/" + kind.format(ns=ns)) == [], kind
    assert deployment.api.items(f"/apis/batch/v1/namespaces/{ns}/cronjobs") == []
    assert deployment.api.items(f"/api/v1/namespaces/{ns}/secrets") == []
    assert [c["metadata"]["name"] for c in deployment.api.items(f"/api/v1/namespaces/{ns}/configmaps")] == ["kube-root-ca.crt"]
    deployment.cluster.wait(
        "every Consul pod gone",
        lambda: [p["metadata"]["name"] for p in deployment.api.items(f"/api/v1/namespaces/{ns}/pods") if ready(p)] == [],
        120,
    )
    left = {
        c["metadata"]["name"]: c["status"].get("phase") for c in deployment.api.items(f"/api/v1/namespaces/{ns}/persistentvolumeclaims")
    }
    assert left == dict.fromkeys(claims, "Bound")
