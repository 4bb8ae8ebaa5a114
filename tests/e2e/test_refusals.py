"""Security negatives on real nodes: what must be refused is refused, next to a control that is
accepted; and no key or token shows in any process of the namespace, the Jobs' included.

The stack is the e2e stack's defaults (gossip encryption, TLS, ACLs with default deny,
NetworkPolicies). An RPC client certificate from another CA is not tried here: the handshake needs
a TLS client that speaks Consul's RPC byte first, and the toolbox image has no such program.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import threading
import time
import uuid
from typing import Any

import pytest
from conftest import KUBE_BIN, REAL_NODES, consul_http, consul_json, in_pod, leader_seen, liveness_verdict, ready, restarts, run_stack

pytestmark = pytest.mark.e2e

LOCAL_API = "http://127.0.0.1:8500"
JOIN_BOUND = 60
ACL_JOB, ROTATION_JOB = "consul-acl-bootstrap", "consul-gossip-rotation"
JOBS = (ACL_JOB, ROTATION_JOB)

# Every process of a container: its command line, then its environment, NULs as spaces; a process
# that is gone or not readable by the container's user prints nothing.
PROCESSES = 'for p in /proc/[0-9]*; do tr "\\0" " " < "$p/cmdline"; echo; tr "\\0" " " < "$p/environ"; echo; done 2>/dev/null'
# The same, over and over until the container exits, each distinct line printed once, at once.
PROCESSES_UNTIL_EXIT = f"while :; do {PROCESSES}; done | awk '!seen[$0]++ {{ print; fflush() }}'"


def secrets(deployment) -> dict[str, str]:
    """What must never be seen, by names that reveal nothing: the gossip key and every token's SecretID."""
    found = {"gossip key": deployment.secret("consul-gossip")["key"]}
    found.update({f"{key} token": value for key, value in deployment.secret("consul-acl-tokens").items()})
    return found


def leaks(text: str, hidden: dict[str, str]) -> list[str]:
    """Each line of `text` that holds a secret, the secret replaced by its name."""
    found = []
    for line in text.splitlines():
        if any(value in line for value in hidden.values()):
            for name, value in hidden.items():
                line = line.replace(value, f"<{name}>")
            found.append(line.strip()[:400])
    return found


def agent_token(deployment, pod: str) -> str:
    """The agent token an agent runs with: the ACL file named on its command line, read in its pod."""
    out = deployment.exec(
        pod, "sh", "-c", 'tr "\\0" "\\n" < /proc/1/cmdline | grep "^-config-file=/consul/acl/" | cut -d= -f2- | xargs cat'
    )
    assert out.returncode == 0, out.stderr
    token: str = json.loads(out.stdout)["acl"]["tokens"]["agent"]
    return token


def node_update(deployment, node: str) -> str:
    """A catalog registration of `node` as Consul knows it, plus one meta key: it changes the node,
    so Consul asks for node:write on it (an unchanged re-registration needs none)."""
    entry = consul_json(in_pod(deployment, "consul-server-0"), f"{LOCAL_API}/v1/catalog/node/{node}", deployment.management_token())["Node"]
    fields = ("ID", "Node", "Address", "Datacenter", "TaggedAddresses")
    return json.dumps({**{k: entry[k] for k in fields}, "NodeMeta": {**(entry.get("Meta") or {}), "refusals-probe": "written"}})


def probe_written(deployment, node: str) -> bool:
    entry = consul_json(in_pod(deployment, "consul-server-0"), f"{LOCAL_API}/v1/catalog/node/{node}", deployment.management_token())["Node"]
    return (entry.get("Meta") or {}).get("refusals-probe") == "written"


def client_on(deployment, node: str) -> str:
    return str(next(p["metadata"]["name"] for p in deployment.pods("client") if p["spec"]["nodeName"] == node))


def member_status(deployment, name: str) -> int | None:
    """An agent's serf status as a server reports it (1 alive, 3 left), None when it is no member."""
    members = consul_json(in_pod(deployment, "consul-server-0"), f"{LOCAL_API}/v1/agent/members", deployment.management_token())
    return next((m["Status"] for m in members if m["Name"] == name), None)


def test_the_gossip_rotation_job_made_again_for_the_same_key_asks_no_member(module_deployment):
    """The first up's rotation Job went through every step and left its mark; the same Job made
    again for the same key (here deleted and re-created by `pulumi up --refresh`; in use, replaced
    by an image upgrade) finds the mark and makes no keyring call."""
    deployment = module_deployment
    first = deployment.logs(f"job/{ROTATION_JOB}")
    assert "gossips with the key in Secret consul-gossip only" in first, first
    deployment.kubectl("delete", "job", ROTATION_JOB, "--cascade=foreground", "--wait=true", timeout=120)
    deployment.stack.refresh(color="never", on_output=lambda line: None)
    deployment.up("the rotation Job made again for the same key")
    again = deployment.logs(f"job/{ROTATION_JOB}")
    print(f"\nbed: refusals: the rotation Job made again said: {again.strip().splitlines()[-1:]}")
    assert "an earlier run finished): nothing to do" in again, again
    assert "/v1/operator/keyring" not in again


def test_anonymous_writes_are_refused(module_deployment, toolbox):
    deployment = module_deployment
    agent = deployment.stack.outputs()["agentAddress"].value
    status, body = consul_http(toolbox.sh, "PUT", f"{agent}/v1/kv/anonymous", body="x")
    assert (status, "Permission denied" in body) == (403, True), body
    assert consul_http(toolbox.sh, "PUT", f"{agent}/v1/kv/managed", deployment.management_token(), body="x")[0] == 200


def test_an_agent_token_writes_its_own_node_and_no_server_s(module_deployment):
    deployment = module_deployment
    server_token = agent_token(deployment, "consul-server-0")
    server = in_pod(deployment, "consul-server-0")
    assert registered(server, server_token, node_update(deployment, "consul-server-1"))[0] == 403
    assert not probe_written(deployment, "consul-server-1")
    assert registered(server, server_token, node_update(deployment, "consul-server-0")) == (200, "true")
    assert probe_written(deployment, "consul-server-0")

    client_pod = client_on(deployment, REAL_NODES[0])
    client_token = agent_token(deployment, client_pod)
    client = in_pod(deployment, client_pod)
    assert registered(client, client_token, node_update(deployment, "consul-server-2"))[0] == 403
    assert not probe_written(deployment, "consul-server-2")
    assert registered(client, client_token, node_update(deployment, REAL_NODES[0])) == (200, "true")
    assert probe_written(deployment, REAL_NODES[0])


def registered(run, token: str, registration: str) -> tuple[int, str]:
    """(status, body) of a catalog registration through an agent. What is asked here is whether
    the ACL system lets it through, not how fast: the call may take the time a Raft write takes
    on a busy machine (the watched writes of the operation tests keep their 1 s bound)."""
    status, body = consul_http(run, "PUT", f"{LOCAL_API}/v1/catalog/register", token, body=registration, bound=10)
    return status, body.strip()


class Stream:
    """A long-running kubectl command in the namespace (`exec …` or `logs -f …`), its output lines
    collected as they come."""

    def __init__(self, deployment, pod: str, *args: str) -> None:
        self.pod = pod
        self.lines: list[str] = []
        kubectl = [str(KUBE_BIN), "kubectl", f"--kubeconfig={deployment.cluster.kubeconfig}", "-n", deployment.namespace]
        self.process = subprocess.Popen(
            [*kubectl, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.reader = threading.Thread(target=self._read, daemon=True, name=f"stream-{pod}")
        self.reader.start()

    @classmethod
    def processes(cls, deployment, pod: str) -> Stream:
        """PROCESSES_UNTIL_EXIT in the pod's container."""
        return cls(deployment, pod, "exec", pod, "--", "sh", "-c", PROCESSES_UNTIL_EXIT)

    @classmethod
    def log(cls, deployment, pod: str, *args: str) -> Stream:
        """The container's log as it is written (read from a file that the bed's kubelets may remove
        once written: following it keeps it open)."""
        return cls(deployment, pod, "logs", "-f", pod, *args)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def saw(self, command: str, *words: str) -> bool:
        """Whether a line starts with `command` (a process's command line) and holds `words`."""
        return any(line.startswith(f"{command} ") and all(w in line for w in words) for line in list(self.lines))

    def has(self, *words: str) -> bool:
        return any(all(w in line for w in words) for line in list(self.lines))

    def ended_by_itself(self, timeout: float) -> bool:
        """True when the command ended by itself (for an exec: its container did) within `timeout`;
        otherwise it is ended here."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return False
        self.reader.join(timeout=5)
        return True


def agent_pod(deployment, name: str, node_name: str, owner: dict[str, Any], gossip_secret: str | None = None) -> dict[str, Any]:
    """A pod made from the client DaemonSet's own template, on node-3, as agent `node_name`: the same
    labels (so the NetworkPolicies admit its gossip as a client's), owned by `owner` so that the
    DaemonSet does not adopt it, and with `gossip_secret` in place of the real key's Secret."""
    template = json.loads(deployment.kubectl("get", "daemonset", "consul-client", "-o", "json").stdout)["spec"]["template"]
    spec = copy.deepcopy(template["spec"])
    spec["nodeName"] = REAL_NODES[2]
    container = spec["containers"][0]
    container["args"] = [f"-node={node_name}" if a.startswith("-node=") else a for a in container["args"]]
    if gossip_secret is not None:
        gossip = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "consul-gossip"]
        assert len(gossip) == 1, spec["volumes"]
        gossip[0]["secret"]["secretName"] = gossip_secret
    metadata = {"name": name, "namespace": deployment.namespace, "labels": template["metadata"]["labels"], "ownerReferences": [owner]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def test_an_agent_with_another_gossip_key_cannot_join(module_deployment):
    deployment = module_deployment
    cluster, ns = deployment.cluster, deployment.namespace
    suffix = os.urandom(3).hex()
    visitor, intruder = f"visitor-{suffix}", f"intruder-{suffix}"
    assert {visitor, intruder}.isdisjoint(REAL_NODES)
    wrong_key = base64.b64encode(os.urandom(32)).decode()
    cluster.apply(
        [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "agents-under-test", "namespace": ns}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "another-gossip-key", "namespace": ns},
                "stringData": {"key": wrong_key, "gossip.json": json.dumps({"encrypt": wrong_key})},
            },
        ]
    )
    owner_uid = deployment.api.get(f"/api/v1/namespaces/{ns}/configmaps/agents-under-test")["metadata"]["uid"]
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "agents-under-test", "uid": owner_uid, "controller": True}
    servers: list[Stream] = []
    log: Stream | None = None
    try:
        # The control: the same pod with the cluster's key joins, so nothing but the key keeps the intruder out.
        cluster.apply([agent_pod(deployment, "agent-visitor", visitor, owner)])
        took = cluster.wait(f"{visitor} alive in the cluster", lambda: member_status(deployment, visitor) == 1, JOIN_BOUND)
        print(f"\nbed: refusals: the control agent joined {took:.1f} s after its pod was applied")
        # Its liveness check passes at its first question: it reaches the servers.
        assert liveness_verdict(deployment, "agent-visitor") == (True, "")
        deployment.kubectl("delete", "pod", "agent-visitor", "--wait=true")
        cluster.wait(f"{visitor} left", lambda: member_status(deployment, visitor) == 3, JOIN_BOUND)

        servers = [Stream.log(deployment, server, "--since=1s") for server in ("consul-server-0", "consul-server-1", "consul-server-2")]
        cluster.apply([agent_pod(deployment, "agent-intruder", intruder, owner, gossip_secret="another-gossip-key")])
        path = f"/api/v1/namespaces/{ns}/pods/agent-intruder"
        cluster.wait(
            "the intruder running",
            lambda: "running" in (cluster.api.get(path)["status"].get("containerStatuses") or [{}])[0].get("state", {}),
            JOIN_BOUND,
        )
        log = Stream.log(deployment, "agent-intruder")
        cluster.wait("the intruder's join failing", lambda: log.has("Join cluster failed"), JOIN_BOUND)
        intruder_ip = cluster.api.get(path)["status"]["podIP"]
        assert member_status(deployment, intruder) is None
        # An agent that knows no server while the servers answer: the one case its liveness check
        # fails for (besides a hung agent), so the kubelet restarts it and retry_join runs again.
        passed, said = liveness_verdict(deployment, "agent-intruder")
        print(f"\nbed: refusals: the intruder's liveness check: {said}")
        assert not passed
        assert "accepts connections: stranded" in said, said
        assert member_status(deployment, REAL_NODES[2]) == 1
        # The servers say why: its messages do not decrypt with their key (followed logs arrive a moment late).
        cluster.wait(
            "a server refusing the intruder's messages",
            lambda: any(s.has("No installed keys could decrypt the message", f"{intruder_ip}:") for s in servers),
            10,
        )
    finally:
        for stream in [*servers, *([log] if log else [])]:
            stream.ended_by_itself(0)
        deployment.kubectl("delete", "pod", "agent-visitor", "agent-intruder", "--ignore-not-found", "--wait=true", check=False)
        deployment.kubectl("delete", "configmap/agents-under-test", "secret/another-gossip-key", "--ignore-not-found", check=False)


def running_containers(deployment) -> list[tuple[str, str]]:
    pods = deployment.api.items(f"/api/v1/namespaces/{deployment.namespace}/pods")
    return [
        (p["metadata"]["name"], s["name"])
        for p in pods
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        for s in p["status"].get("containerStatuses", [])
        if "running" in s.get("state", {})
    ]


def test_no_secret_in_any_agent_process(module_deployment):
    """Every process of every running container of the namespace: no key or token on its command line or in its environment."""
    deployment = module_deployment
    hidden = secrets(deployment)
    containers = running_containers(deployment)
    assert sorted(pod.rsplit("-", 1)[0] for pod, _ in containers) == ["consul-client"] * 3 + ["consul-server"] * 3
    found = {}
    for pod, container in containers:
        out = deployment.kubectl("exec", "-q", pod, "-c", container, "--", "sh", "-c", PROCESSES, check=False)
        assert out.returncode == 0, f"{pod}/{container}: {out.stderr}"
        assert "consul agent -config-dir" in out.stdout, f"{pod}/{container}: the agent's process was not seen"
        found[f"{pod}/{container}"] = leaks(out.stdout, hidden)
    assert found == {key: [] for key in found}


def running_job_pod(deployment, job: str) -> str | None:
    pods = deployment.api.items(f"/api/v1/namespaces/{deployment.namespace}/pods?labelSelector=job-name={job}")
    for pod in pods:
        statuses = pod["status"].get("containerStatuses", [])
        if not pod["metadata"].get("deletionTimestamp") and statuses and "running" in statuses[0].get("state", {}):
            return str(pod["metadata"]["name"])
    return None


def coredns(cluster) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.api.items("/api/v1/namespaces/kube-system/pods?labelSelector=k8s-app=kube-dns")
    return pods


def coredns_ready(cluster, replicas: int) -> bool:
    pods = [p for p in coredns(cluster) if not p["metadata"].get("deletionTimestamp")]
    return len(pods) == replicas and all(ready(p) for p in pods)


def test_no_secret_in_a_job_s_processes_while_it_runs(module_deployment):
    """Both Jobs run while every process of their pods is read, from their first step to their exit:
    the ACL Job creating a new service's token (`serviceTokens` grows, as the README shows), the
    gossip rotation re-run (`kubectl delete job`, then `pulumi up --refresh`).

    Each Job's first step waits for a leader (curl, then `sleep 3`, until one answers). With the
    cluster DNS scaled to zero the servers' name does not resolve, so both Jobs wait there until
    every scan is in place; then CoreDNS comes back and they run to the end. Only the leak itself is
    an AssertionError; a scan that could not be made fails the test outright."""
    deployment = module_deployment
    cluster = deployment.cluster
    replicas = int(cluster.kubectl("-n", "kube-system", "get", "deployment", "coredns", "-o", "jsonpath={.spec.replicas}").stdout)
    deployment.set(serviceTokens=["web", "billing"])
    deployment.kubectl("delete", "job", ROTATION_JOB, "--cascade=foreground", "--wait=true")
    outcome: dict[str, Any] = {}

    def up() -> None:
        try:
            outcome["result"] = deployment.stack.up(refresh=True, color="never", on_output=lambda line: None)
        except Exception as error:  # noqa: BLE001 - reported by the test below
            outcome["error"] = error

    thread = threading.Thread(target=up, daemon=True, name="refusals-up")
    watches: dict[str, Stream] = {}
    try:
        cluster.kubectl("-n", "kube-system", "scale", "deployment", "coredns", "--replicas=0")
        cluster.wait("CoreDNS gone", lambda: coredns(cluster) == [], 60)
        started = time.monotonic()
        thread.start()
        for job in JOBS:
            cluster.wait(f"a running pod of the new {job}", lambda job=job: running_job_pod(deployment, job) is not None, 180)
            watches[job] = Stream.processes(deployment, str(running_job_pod(deployment, job)))
        # Each scan is in place while its Job still waits for a leader: it has seen that wait's own
        # processes (its curl or its `sleep 3`), not only the script's text.
        for job, watch in watches.items():
            cluster.wait(
                f"{job}: its leader wait seen",
                lambda watch=watch: watch.saw("curl", "https://", "/v1/status/leader") or watch.saw("sleep 3"),
                30,
            )
        print(f"\nbed: refusals: both Jobs scanned from their leader wait, {time.monotonic() - started:.1f} s after pulumi up started")
        cluster.kubectl("-n", "kube-system", "scale", "deployment", "coredns", f"--replicas={replicas}")
        thread.join(timeout=600)
        if thread.is_alive() or "error" in outcome:
            pytest.fail(f"pulumi up did not finish: {outcome.get('error', 'still running after 600 s')}")
        if outcome["result"].summary.result != "succeeded":
            pytest.fail(f"pulumi up: {outcome['result'].summary.result}")
        print(f"bed: refusals: pulumi up with both Jobs took {time.monotonic() - started:.1f} s")
        for job, watch in watches.items():
            if not watch.ended_by_itself(60):
                pytest.fail(f"{job}: the container did not exit within 60 s of pulumi up returning")
            print(f"bed: refusals: {job}: {len(watch.lines)} distinct process lines")
    finally:
        cluster.kubectl("-n", "kube-system", "scale", "deployment", "coredns", f"--replicas={replicas}", check=False)
        if thread.is_alive():
            thread.join(timeout=600)
        for watch in watches.values():
            watch.ended_by_itself(0)
        cluster.wait("CoreDNS back", lambda: coredns_ready(cluster, replicas), 120)
    cluster.wait("rollouts finished", deployment.rolled_out, 300)
    for job, watch in watches.items():
        uid = deployment.api.get(f"/apis/batch/v1/namespaces/{deployment.namespace}/jobs/{job}")["metadata"]["uid"]
        runs = deployment.api.items(
            f"/api/v1/namespaces/{deployment.namespace}/pods?labelSelector=batch.kubernetes.io/controller-uid={uid}"
        )
        phases = [(p["metadata"]["name"], p["status"].get("phase")) for p in runs]
        if phases != [(watch.pod, "Succeeded")]:
            pytest.fail(f"{job}: the scanned pod {watch.pod} was not the Job's one run, which succeeded: {phases}")
    hidden = secrets(deployment)
    if "service-billing token" not in hidden:
        pytest.fail(f"no token for the new service: {sorted(hidden)}")
    found = {job: leaks("\n".join(watch.lines), hidden) for job, watch in watches.items()}
    for job, lines in found.items():
        print("".join(f"bed: refusals: {job}: a secret in a process: {line}\n" for line in lines), end="")
    assert found == {job: [] for job in JOBS}


def token_status(deployment, secret_id: str) -> int:
    """What Consul answers a token asking about itself: 200 while it exists, 403 once revoked."""
    status, body = consul_http(in_pod(deployment, "consul-server-0"), "GET", f"{LOCAL_API}/v1/acl/token/self", secret_id, bound=5)
    assert status in (200, 403), f"GET /v1/acl/token/self: HTTP {status} {body[:200]}"
    return status


def test_a_token_the_stack_no_longer_declares_is_revoked(module_deployment):
    """A service taken out of `serviceTokens` (say its token leaked): after `pulumi up` Consul refuses
    its token, its Secret is gone, and the token of the service that stays still works."""
    deployment = module_deployment
    deployment.set(serviceTokens=["web", "billing"])
    deployment.up("refusals: web and billing declared")
    web, billing = (deployment.secret(f"consul-service-token-{s}")["token"] for s in ("web", "billing"))
    assert (token_status(deployment, web), token_status(deployment, billing)) == (200, 200)
    deployment.set(serviceTokens=["web"])
    result = deployment.up("refusals: billing taken out")
    assert result.summary.result == "succeeded"
    assert (token_status(deployment, web), token_status(deployment, billing)) == (200, 403)
    assert not deployment.api.exists(f"/api/v1/namespaces/{deployment.namespace}/secrets/consul-service-token-billing")
    print(f"\nbed: refusals: the ACL Job said: {deployment.logs('job/' + ACL_JOB).strip().splitlines()[-3:]}")


def test_a_new_management_token_revokes_the_old_one_for_good(module_deployment):
    """The README's rotation: a new `aclManagementToken` (from stdin), then `pulumi up`. The servers
    roll with the new `initial_management`, the ACL Job runs again and revokes the old token: it
    gets 403, the new one 200, and still so after a leader election (the servers would re-create a
    management token they still carried)."""
    deployment = module_deployment
    old, new = deployment.management_token(), str(uuid.uuid4())
    assert token_status(deployment, old) == 200
    deployment.set(secrets=("aclManagementToken",), aclManagementToken=new)
    result = deployment.up("refusals: new management token")
    assert result.summary.result == "succeeded"
    assert deployment.management_token() == new
    assert (token_status(deployment, old), token_status(deployment, new)) == (403, 200)
    run = in_pod(deployment, "consul-server-0")
    before = leader_seen(run)
    status, body = consul_http(run, "POST", f"{LOCAL_API}/v1/operator/raft/transfer-leader", new, bound=10)
    assert status == 200, f"transfer-leader: HTTP {status} {body[:200]}"
    deployment.cluster.wait("a new leader", lambda: leader_seen(run) not in ("", before), 60)
    assert (token_status(deployment, old), token_status(deployment, new)) == (403, 200)


def test_a_failed_acl_job_runs_again_at_the_next_up_once_its_cause_is_fixed(module_deployment):
    """The Job fails with its own message (an auth method named `kubernetes` that the stack did
    not make is in the way of kubernetesAuth), `pulumi up` fails with it; the operator removes the
    cause, and the next `pulumi up`, with nothing changed in the stack, runs the Job again and
    succeeds (pulumi.com/replaceUnready)."""
    deployment = module_deployment
    run = in_pod(deployment, "consul-server-0")
    token = deployment.management_token()
    ca = deployment.kubectl("get", "configmap", "kube-root-ca.crt", "-o", "jsonpath={.data.ca\\.crt}").stdout
    theirs = {
        "Name": "kubernetes",
        "Type": "kubernetes",
        "Description": "the platform team's",
        "Config": {"Host": "https://kubernetes.default.svc", "CACert": ca, "ServiceAccountJWT": "e30.e30.c2ln"},
    }
    status, body = consul_http(run, "PUT", f"{LOCAL_API}/v1/acl/auth-method", token, json.dumps(theirs), bound=5)
    assert status == 200, body
    deployment.set(kubernetesAuth=True, kubernetesAuthNamespaces=[deployment.namespace])
    started = time.monotonic()
    with pytest.raises(run_stack.auto.CommandError) as failed:
        deployment.stack.up(color="never", on_output=lambda line: None)
    print(f"\nbed: refusals: pulumi up failed {time.monotonic() - started:.1f} s after it started, on the ACL Job")
    assert ACL_JOB in str(failed.value)
    assert "that this stack did not make" in deployment.logs(f"job/{ACL_JOB}")
    assert consul_json(run, f"{LOCAL_API}/v1/acl/auth-method/kubernetes", token)["Description"] == "the platform team's"

    status, body = consul_http(run, "DELETE", f"{LOCAL_API}/v1/acl/auth-method/kubernetes", token, bound=5)
    assert status == 200, body
    started = time.monotonic()
    result = deployment.up("refusals: the cause removed, the same stack")
    assert result.summary.result == "succeeded"
    print(f"bed: refusals: the Job ran again and succeeded, pulumi up {time.monotonic() - started:.1f} s")
    assert (
        consul_json(run, f"{LOCAL_API}/v1/acl/auth-method/kubernetes", token)["Description"] == "[consul dc1] Kubernetes service accounts"
    )
    job = deployment.api.get(f"/apis/batch/v1/namespaces/{deployment.namespace}/jobs/{ACL_JOB}")
    assert job["status"].get("succeeded") == 1


def server_claim_size(deployment) -> str:
    sts = deployment.api.get(f"/apis/apps/v1/namespaces/{deployment.namespace}/statefulsets/consul-server")
    size: str = sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    return size


def test_a_guarded_change_is_refused_before_anything_changes_and_the_storage_procedure_keeps_every_server(module_deployment, toolbox):
    """A new serverStorageSize (the provider would replace the StatefulSet, deleting every server)
    and gossip encryption switched off are refused by `pulumi preview` and `pulumi up` on the
    deployed stack, one message each, and nothing in the cluster changes. Then the README's
    storage procedure: orphan the StatefulSet, allow the one key, `pulumi up`: the StatefulSet is
    created again with the new size and adopts the running servers, none restarted, under a watch."""
    from conftest import assert_bounds
    from watch import Watch

    deployment = module_deployment
    sts_path = f"/apis/apps/v1/namespaces/{deployment.namespace}/statefulsets/consul-server"
    sts_uid = deployment.api.get(sts_path)["metadata"]["uid"]
    servers = {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployment.pods("server")}
    clients = {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployment.pods("client")}
    assert server_claim_size(deployment) == "1Gi"
    storage_refused = "consul:serverStorageSize: 1Gi -> 2Gi on a deployed stack is refused: the size is in the server StatefulSet's"
    gossip_refused = "consul:gossipEncryption: true -> false on a deployed stack is refused: switching gossip encryption on or off"
    try:
        deployment.set(serverStorageSize="2Gi", gossipEncryption=False)
        for command in (deployment.stack.preview, deployment.stack.up):
            with pytest.raises(run_stack.auto.CommandError) as refused:
                command(color="never", on_output=lambda line: None)
            assert storage_refused in str(refused.value)
            assert gossip_refused in str(refused.value)
        assert deployment.api.get(sts_path)["metadata"]["uid"] == sts_uid
        assert server_claim_size(deployment) == "1Gi"
        assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployment.pods("server")} == servers
        assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployment.pods("client")} == clients
        assert deployment.secret("consul-gossip")["key"], "the gossip Secret is still there"

        deployment.set(gossipEncryption=True)
        with Watch(deployment, toolbox, "storage procedure") as watch:
            deployment.kubectl("delete", "statefulset", "consul-server", "--cascade=orphan")
            deployment.set(allowedChanges=["serverStorageSize"])
            deployment.up("the storage procedure")
        assert deployment.api.get(sts_path)["metadata"]["uid"] != sts_uid
        assert server_claim_size(deployment) == "2Gi"
        assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployment.pods("server")} == servers, "a server pod was replaced"
        assert [restarts(p) for p in deployment.pods("server")] == [0, 0, 0]
        assert watch.summary is not None
        assert_bounds(watch, 3)
    finally:
        deployment.set(gossipEncryption=True, allowedChanges=[])
