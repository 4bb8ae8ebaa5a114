"""Fixtures of the real-node bed: one cluster for the whole run, `pulumi up` per test module.

`make e2e` builds what the bed needs first (testbed/cluster/bed.py). The tests drive what a user
runs: the real engine through the Automation API (what `pulumi up` runs), `kubectl`, and
`kubectl exec` into a toolbox pod; they assert on what Consul and the cluster report.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit"))

import run_stack  # noqa: E402
from pod_logs import FollowedLogs  # noqa: E402

from testbed.cluster import images  # noqa: E402
from testbed.cluster.api import ApiError  # noqa: E402
from testbed.cluster.bed import Cluster, credential_copies, kube_binary, leftovers, missing_binaries  # noqa: E402
from testbed.cluster.controlplane import FakeNode  # noqa: E402

# A failing test's report quotes no secret: pytest finds the hook here.
from testbed.redaction import Secret, pytest_assertrepr_compare  # noqa: E402,F401

KUBE_BIN = kube_binary()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# A CI timeout ends the run with SIGTERM: turned into an interrupt, pytest still tears the bed down.
signal.signal(signal.SIGTERM, _interrupt)
STACK_FILE = Path(__file__).with_name("Pulumi.e2e.yaml")
LOGS = ROOT / "testbed" / "logs" / "e2e"
NAMESPACE = "consul-e2e"
CONSUL_IMAGE = "hashicorp/consul:1.16.1"
UPGRADE_IMAGE = "testbed.local/hashicorp/consul:1.16.1"
TOOLS_NAMESPACE = "bed-tools"
REAL_NODES = ["node-1", "node-2", "node-3"]


def config_paths(key: str, value: Any) -> list[tuple[str, str]]:
    """A structured setting as the `pulumi config set --path` calls that write it: (path, text) pairs."""
    if isinstance(value, dict):
        return [pair for member, inner in value.items() for pair in config_paths(f"{key}.{member}", inner)]
    if isinstance(value, list):
        return [pair for i, inner in enumerate(value) for pair in config_paths(f"{key}[{i}]", inner)]
    return [(key, json.dumps(value) if isinstance(value, bool) else str(value))]


def set_config(stack: Any, key: str, value: Any, secret: bool = False) -> None:
    """`pulumi config set consul:<key>`; objects and lists member by member with --path (an old value is removed first)."""
    if isinstance(value, dict | list):
        stack.remove_config(f"consul:{key}", path=True) if f"consul:{key}" in stack.get_all_config() else None
        for path, text in config_paths(key, value):
            stack.set_config(f"consul:{path}", run_stack.auto.ConfigValue(text, secret=secret), path=True)
    else:
        stack.set_config(f"consul:{key}", run_stack.auto.ConfigValue(config_paths(key, value)[0][1], secret=secret))


def three_zones(count: int, first: int = 10) -> list[FakeNode]:
    """kwok nodes (they run nothing) in zones a, b, c, for the placement tests."""
    return [FakeNode(f"kwok-{first + i}", f"zone-{'abc'[i % 3]}") for i in range(count)]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """The real-node cluster, started once; its logs kept in testbed/logs/e2e/cluster, nothing left behind."""
    if os.geteuid() != 0:
        pytest.fail("the bed needs root: it creates network namespaces, mounts and cgroups")
    missing = missing_binaries()
    if missing:
        pytest.fail("the bed's builds are missing: " + ", ".join(missing) + " (make e2e builds them)")
    workdir = tmp_path_factory.mktemp("cluster")
    bed = Cluster(workdir)
    try:
        bed.start()
        print("\nbed: cluster start " + ", ".join(f"{k} {v:.1f} s" for k, v in bed.timings.items()))
        bed.apply([toolbox_namespace()])
        # The controllers publish the namespace's root CA and default service account a moment later;
        # a test that takes an inventory of the cluster starts after them.
        tools = f"/api/v1/namespaces/{TOOLS_NAMESPACE}"
        bed.wait(
            "the tools namespace's root CA and default service account",
            lambda: bed.api.exists(f"{tools}/configmaps/kube-root-ca.crt") and bed.api.exists(f"{tools}/serviceaccounts/default"),
            timeout=60,
        )
        yield bed
    finally:
        bed.stop()
        target = LOGS / "cluster"
        shutil.rmtree(target, ignore_errors=True)
        if (workdir / "logs").exists():
            shutil.copytree(workdir / "logs", target)
        if (workdir / "control-plane" / "logs").exists():
            shutil.copytree(workdir / "control-plane" / "logs", target / "control-plane")
    # The bed's credentials die with it, yet no copy of them may stay: not in the machine's
    # temporary directory, not in the run's own.
    left = leftovers() + credential_copies(bed.plane.credentials(), [Path(tempfile.gettempdir())], [tmp_path_factory.getbasetemp()])
    assert left == [], f"left behind: {left}"


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def restarts(pod: dict[str, Any]) -> int:
    return sum(s.get("restartCount", 0) for s in pod.get("status", {}).get("containerStatuses", []))


class Deployment:
    """One stack of the program on the bed's cluster (`pulumi up` through the Automation API), and
    what a test asks of the cluster about it."""

    def __init__(self, cluster: Cluster, home: Path, stack: str = "e2e", namespace: str = NAMESPACE) -> None:
        self.cluster = cluster
        self.api = cluster.api
        self.namespace = namespace
        self.stack = run_stack.cluster_stack(stack, home, cluster.kubeconfig, STACK_FILE)
        if namespace != NAMESPACE:
            self.stack.set_config("consul:namespace", run_stack.auto.ConfigValue(namespace))

    def set(self, secrets: tuple[str, ...] = (), **values: Any) -> None:
        """`pulumi config set` (with --path for the members of objects and lists)."""
        for key, value in values.items():
            set_config(self.stack, key, value, secret=key in secrets)

    def unset(self, *keys: str) -> None:
        """`pulumi config rm consul:<key>` for each key that is set."""
        for key in keys:
            if f"consul:{key}" in self.stack.get_all_config():
                self.stack.remove_config(f"consul:{key}")

    def up(self, what: str) -> Any:
        """`pulumi up`, then until every rollout is done, as `kubectl rollout status` would say."""
        started = time.monotonic()
        result = self.stack.up(color="never", on_output=lambda line: None)
        took = time.monotonic() - started
        print(f"\nbed: {what}: pulumi up took {took:.1f} s, {dict(result.summary.resource_changes or {})}")
        if not self.rolled_out():
            # The Kubernetes provider 4.25 can take a StatefulSet's status from before its controller
            # saw the update as the end of the roll (pulumi-kubernetes#4094).
            self.cluster.wait(f"{what}: rollouts finished", self.rolled_out, 300)
            print(f"bed: {what}: rollouts finished {time.monotonic() - started:.1f} s after up started, after up returned")
        return result

    def destroy(self) -> None:
        self.stack.destroy(color="never", on_output=lambda line: None)

    def release(self) -> None:
        """Remove the engine's temporary directory, with the copy of the bed's kubeconfig it holds."""
        run_stack.release(self.stack)

    def rolled_out(self) -> bool:
        """The servers' StatefulSet and the clients' DaemonSet: the controller has seen the latest
        spec, the pods up to the partition run the new revision, and all are Ready."""
        ns = self.namespace
        sts_path = f"/apis/apps/v1/namespaces/{ns}/statefulsets/consul-server"
        if self.api.exists(sts_path):
            sts = self.api.get(sts_path)
            spec, status = sts["spec"], sts.get("status", {})
            replicas = spec.get("replicas", 1)
            partition = spec.get("updateStrategy", {}).get("rollingUpdate", {}).get("partition", 0)
            if status.get("observedGeneration", 0) < sts["metadata"]["generation"] or status.get("readyReplicas", 0) != replicas:
                return False
            if partition > 0:
                if status.get("updatedReplicas", 0) < replicas - partition:
                    return False
            elif status.get("updatedReplicas", 0) != replicas or status.get("currentRevision") != status.get("updateRevision"):
                return False
        ds_path = f"/apis/apps/v1/namespaces/{ns}/daemonsets/consul-client"
        if self.api.exists(ds_path):
            ds = self.api.get(ds_path)
            status = ds.get("status", {})
            wanted = status.get("desiredNumberScheduled", 0)
            if status.get("observedGeneration", 0) < ds["metadata"]["generation"]:
                return False
            # OnDelete (a staged server upgrade under way): the clients are not replaced, only Ready.
            held = ds["spec"].get("updateStrategy", {}).get("type") == "OnDelete"
            if (not held and status.get("updatedNumberScheduled", 0) != wanted) or status.get("numberReady", 0) != wanted:
                return False
        return True

    def pods(self, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/component={component}"
        return sorted(
            self.api.items(f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={selector}"), key=lambda p: p["metadata"]["name"]
        )

    def get(self, path: str) -> Any:
        return self.api.get(f"/apis/apps/v1/namespaces/{self.namespace}/{path}")

    def secret(self, name: str) -> dict[str, str]:
        """The Secret's values, each a redaction.Secret: a failing test's report quotes none."""
        import base64

        data = self.api.get(f"/api/v1/namespaces/{self.namespace}/secrets/{name}").get("data") or {}
        return {k: Secret(base64.b64decode(v).decode()) for k, v in data.items()}

    def management_token(self) -> str:
        return self.secret("consul-acl-tokens")["management"]

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.namespace, *args, input=input, timeout=timeout, check=check)

    def exec(self, pod: str, *argv: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`kubectl exec` into a pod of the deployment (its first container)."""
        return self.kubectl("exec", "-i" if input is not None else "-q", pod, "--", *argv, input=input, timeout=timeout, check=False)

    def logs(self, pod: str, *args: str) -> str:
        return self.kubectl("logs", pod, *args, check=False).stdout

    def watch_logs(self, name: str) -> Path:
        """The directory followed_logs keeps the agents' logs of the operation `name` in."""
        return LOGS / "watch" / self.namespace / name

    def followed_logs(self, name: str) -> FollowedLogs:
        """The agents' logs followed through an operation, into
        testbed/logs/e2e/watch/<namespace>/<name>: every server's (its rejoin wait's too), those a
        scale-up to the stack's `consul:serverReplicas` adds included, and every client agent's
        (by the pods' names now: a client roll's new pods are not followed)."""
        target = self.watch_logs(name)
        shutil.rmtree(target, ignore_errors=True)
        kubectl = [str(KUBE_BIN), "kubectl", f"--kubeconfig={self.cluster.kubeconfig}"]
        configured = self.stack.get_all_config().get("consul:serverReplicas")
        planned = {f"consul-server-{i}" for i in range(int(configured.value) if configured else 0)}
        servers = sorted({p["metadata"]["name"] for p in self.pods("server")} | planned)
        streams = [(pod, container) for pod in servers for container in ("rejoin-wait", "consul")]
        streams += [(p["metadata"]["name"], "consul") for p in self.pods("client")]
        return FollowedLogs(kubectl, self.namespace, streams, target)


def toolbox_namespace() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": TOOLS_NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    }


def restricted_container(name: str, image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "command": command,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **extra,
    }


# The toolbox pod's CPU request. Without one the pod is BestEffort, which a node weighs at 2 CPU
# shares against 102 for each agent's 100m: the watch's samplers in it waited whenever the agents
# beside it were busy (in one CI run a write's 1 s curl timeout fired after 1.29 s, and the
# samplers' lines were held up 1.4 s, as dc2's three servers started on the toolbox's node). A
# workload that measures Consul asks for its CPU like any other; no limit, so nothing throttles it.
TOOLBOX_CPU_REQUEST = "500m"


class Toolbox:
    """A workload pod of the toolbox image (consul CLI, curl, dig) on a chosen node: what an
    application sees. Secrets reach it on standard input, never on a command line. Its CPU is
    requested (TOOLBOX_CPU_REQUEST), so that a busy node never starves what it measures with."""

    def __init__(self, cluster: Cluster, name: str, node: str, namespace: str = TOOLS_NAMESPACE, **spec: Any) -> None:
        self.cluster = cluster
        self.name = name
        self.namespace = namespace
        self.path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    restricted_container(
                        "tools",
                        images.TOOLBOX_IMAGE,
                        ["sleep", "2147483647"],
                        resources={"requests": {"cpu": TOOLBOX_CPU_REQUEST, "memory": "64Mi"}},
                    )
                ],
                **spec,
            },
        }
        # A pod of this name deleted just before (by a previous test) may still be terminating:
        # applying over it would reach that pod, and an exec would meet its removed container.
        cluster.wait(f"an earlier pod {name} gone", lambda: not cluster.api.exists(self.path), 120)
        cluster.apply([pod])
        cluster.wait(f"{name} Ready", lambda: ready(cluster.api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")), 120)
        status = cluster.api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")["status"]
        self.ip: str = status["podIP"]
        if "containers" not in spec:
            # What the node weighs it at: BestEffort is 2 CPU shares, whatever else the node runs.
            assert status.get("qosClass") != "BestEffort", (
                f"the toolbox pod {name} is BestEffort: its samplers wait whenever the node is busy"
            )

    def exec(self, *argv: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(
            "-n",
            self.namespace,
            "exec",
            "-i" if input is not None else "-q",
            self.name,
            "--",
            *argv,
            input=input,
            timeout=timeout,
            check=False,
        )

    def sh(self, script: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.exec("sh", "-ec", script, input=input, timeout=timeout)

    def stream(self, script: str, input: str) -> subprocess.Popen[str]:
        """A long-running `kubectl exec -i … sh -c script`, its stdout a stream of lines."""
        process = subprocess.Popen(
            [
                str(KUBE_BIN),
                "kubectl",
                f"--kubeconfig={self.cluster.kubeconfig}",
                "-n",
                self.namespace,
                "exec",
                "-i",
                self.name,
                "--",
                "sh",
                "-c",
                script,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            # An answer cut inside a character (a failed write's first 160 bytes) is not a reason to end the stream.
            errors="replace",
            bufsize=1,
        )
        assert process.stdin is not None
        process.stdin.write(input + "\n")
        process.stdin.flush()
        return process

    def delete(self) -> None:
        """Delete the pod and return once it is gone, so its name is free for the next test."""
        try:
            self.cluster.api.delete(self.path)
        except ApiError as error:
            if error.status != 404:
                raise
        self.cluster.wait(f"{self.name} gone", lambda: not self.cluster.api.exists(self.path), 120)


@pytest.fixture(scope="module")
def toolbox(cluster, request) -> Iterator[Toolbox]:
    box = Toolbox(cluster, f"tools-{abs(hash(request.module.__name__)) % 10**6}", REAL_NODES[0])
    yield box
    box.delete()


def keep_module_logs(deployment: Deployment, name: str) -> None:
    """Every pod's log of a deployment's namespace (and the previous container's), for a failure."""
    target = LOGS / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    try:
        pods = deployment.api.items(f"/api/v1/namespaces/{deployment.namespace}/pods")
    except (ApiError, OSError):
        return
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        (target / f"{pod_name}.log").write_text(deployment.logs(pod_name, "--all-containers", "--timestamps"))
        if restarts(pod):
            (target / f"{pod_name}.previous.log").write_text(deployment.logs(pod_name, "--all-containers", "--previous"))
    events = deployment.kubectl("get", "events", "--sort-by=.lastTimestamp", check=False).stdout
    (target / "events.txt").write_text(events)


@pytest.fixture(scope="module")
def module_deployment(cluster, tmp_path_factory, request) -> Iterator[Deployment]:
    """A stack of the module's own (namespace named after the module), destroyed afterwards; the
    module's settings come from its STACK_SETTINGS (a dict), if it has one."""
    short = request.module.__name__.removeprefix("test_").replace("_", "-")[:40]
    deployment = Deployment(cluster, tmp_path_factory.mktemp(short), namespace=f"consul-{short}")
    deployment.set(**getattr(request.module, "STACK_SETTINGS", {}))
    try:
        started = time.monotonic()
        result = deployment.up(f"{short}: first up")
        assert result.summary.result == "succeeded"
        print(f"bed: {short}: first pulumi up to every pod Ready {time.monotonic() - started:.1f} s")
        yield deployment
    finally:
        keep_module_logs(deployment, short)
        remove(deployment)


def remove(deployment: Deployment) -> None:
    """`pulumi destroy`, then the namespace (with the claims destroy keeps), so the next module
    starts clean; the engine's temporary directory goes in any case."""
    try:
        deployment.destroy()
    finally:
        try:
            _remove_namespace(deployment)
        finally:
            deployment.release()


def _remove_namespace(deployment: Deployment) -> None:
    try:
        deployment.api.delete(f"/api/v1/namespaces/{deployment.namespace}")
    except ApiError as error:
        if error.status != 404:
            raise
    deployment.cluster.wait(
        f"namespace {deployment.namespace} gone", lambda: not deployment.api.exists(f"/api/v1/namespaces/{deployment.namespace}"), 180
    )
    deployment.cluster.recycle_volumes()


def pytest_terminal_summary(terminalreporter) -> None:
    """The table of every watched operation (the README keeps a copy), also in testbed/logs/e2e/operations.md."""
    from watch import ROWS, TABLE_HEADER

    if not ROWS:
        return
    table = TABLE_HEADER + "\n" + "\n".join(row.row() for row in ROWS)
    terminalreporter.write_sep("=", "operations watched on the bed")
    terminalreporter.write_line(table)
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / "operations.md").write_text(table + "\n")


def new_consul_ca(toolbox: Toolbox) -> tuple[str, str]:
    """A new CA (certificate, key PEM) as an operator makes one: `consul tls ca create` in a pod."""
    made = toolbox.sh(
        "cd /tmp && rm -f consul-agent-ca*.pem && consul tls ca create >/dev/null"
        " && cat consul-agent-ca.pem && echo ==== && cat consul-agent-ca-key.pem && rm -f consul-agent-ca*.pem"
    )
    assert made.returncode == 0, made.stderr
    cert, key = made.stdout.split("====\n")
    return cert, key


def consul_dns_ip(deployment: Deployment) -> str:
    from watch import consul_dns_ip as service_ip

    ip = service_ip(deployment.api, deployment.namespace)
    assert ip is not None, f"the stack in {deployment.namespace} declares no consul-dns Service"
    return ip


# Consul's HTTP API and CLI from inside a pod (`kubectl exec`). A token travels on standard
# input, never on a command line: the shell reads it into a file in the pod's /tmp.
import shlex  # noqa: E402
from collections.abc import Callable  # noqa: E402

Runner = Callable[[str, str], "subprocess.CompletedProcess[str]"]

_HTTP_CALL = """read -r T
h=$(mktemp)
trap 'rm -f "$h" "$h.out"' EXIT
if [ -n "$T" ]; then printf 'X-Consul-Token: %s\\n' "$T" > "$h"; fi
code=$(curl -s -m {bound} -o "$h.out" -w '%{{http_code}}' -X {method} -H @"$h" {data} {url}) || true
echo "$code"
cat "$h.out" 2>/dev/null || true
"""

_CLI_CALL = """read -r T
f=$(mktemp)
trap 'rm -f "$f"' EXIT
printf '%s' "$T" > "$f"
CONSUL_HTTP_TOKEN_FILE="$f" consul {args}
"""


def in_pod(deployment: Deployment, pod: str) -> Runner:
    """A Runner for `sh -c` in a pod of the deployment (its agent container, for a Consul pod)."""
    return lambda script, stdin: deployment.exec(pod, "sh", "-c", script, input=stdin)


def liveness_verdict(deployment: Deployment, pod: str) -> tuple[bool, str]:
    """Run the pod's own liveness command (an exec probe, from its spec) in its container, as
    the kubelet does: (passed, what it printed)."""
    probe = deployment.api.get(f"/api/v1/namespaces/{deployment.namespace}/pods/{pod}")["spec"]["containers"][0]["livenessProbe"]
    out = deployment.exec(pod, *probe["exec"]["command"], timeout=probe["timeoutSeconds"] + 10)
    return out.returncode == 0, (out.stdout + out.stderr).strip()


def consul_http(run: Runner, method: str, url: str, token: str = "", body: str | None = None, bound: float = 1) -> tuple[int, str]:
    """(HTTP status, body) of one call from inside a pod (`run` is Toolbox.sh or in_pod()); the
    status is 0 when nothing answered within `bound` seconds. `body` follows the token on stdin."""
    script = _HTTP_CALL.format(
        bound=bound, method=shlex.quote(method), data="--data-binary @-" if body is not None else "", url=shlex.quote(url)
    )
    out = run(script, token + "\n" + (body or ""))
    code, _, rest = out.stdout.partition("\n")
    return (int(code) if code.strip().isdigit() else 0), rest


def consul_json(run: Runner, url: str, token: str = "", bound: float = 5) -> Any:
    """A GET that must answer 200, its body parsed."""
    status, body = consul_http(run, "GET", url, token, bound=bound)
    assert status == 200, f"GET {url}: HTTP {status} {body[:300]}"
    return json.loads(body)


def consul_cli(run: Runner, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The consul CLI in a pod, the token handed over as CONSUL_HTTP_TOKEN_FILE."""
    return run(_CLI_CALL.format(args=shlex.join(args)), token + "\n")


# Helpers of the modules that hold servers down and watch day-2 operations (test_restarts,
# test_operations and test_grow_and_recover use them).
import contextlib  # noqa: E402
import re  # noqa: E402

LOCAL_AGENT = "http://127.0.0.1:8500"
# Issue #19's bound on a stretch without a leader while an operation runs on a healthy cluster.
LEADERLESS_BOUND = 2.0
_LEADER_BODY = re.compile(r'^"(\d{1,3}(?:\.\d{1,3}){3}:8300)"$')


def quorum(servers: int) -> int:
    return servers // 2 + 1


def bounds_broken(watch: Any, servers: int) -> list[str]:
    """Each of the issue's bounds that a finished Watch saw broken: fewer voters than a quorum of
    the cluster's full size `servers`, a stretch over 2 s without a leader, a write that failed
    for another reason than a missing leader (watch.failed_with_a_leader: split by whether an
    agent pod was down meanwhile, which names an open defect), a lost write, a client
    agent NotReady in any sample, the watch's registration missing from the catalog or unanswered
    by DNS in any sample. [] when the operation kept them all."""
    summary = watch.summary
    broken = []
    if summary.fewest_voters is None or summary.fewest_voters < quorum(servers):
        broken.append(f"fewest voters {summary.fewest_voters}, below a quorum of {servers} ({quorum(servers)})")
    if summary.longest_leaderless > LEADERLESS_BOUND:
        broken.append(f"{summary.longest_leaderless:.1f} s without a leader")
    while_down = summary.failed_writes_with_a_leader - summary.failed_writes_with_every_agent_up
    if while_down:
        broken.append(f"{while_down} of {len(watch.record.writes)} writes failed with a leader while an agent pod was down")
    if summary.failed_writes_with_every_agent_up:
        broken.append(
            f"{summary.failed_writes_with_every_agent_up} of {len(watch.record.writes)} writes failed with a leader and every agent pod serving"
        )
    if summary.lost_writes:
        broken.append(f"{summary.lost_writes} acknowledged writes lost")
    if summary.clients_not_ready:
        broken.append(f"{summary.clients_not_ready} client NotReady samples")
    if summary.registration_missing:
        broken.append(f"{summary.registration_missing} samples with the registration missing from the catalog")
    if summary.dns_unanswered:
        broken.append(f"{summary.dns_unanswered} DNS lookups unanswered")
    return broken


# The bounds issue #19 still breaks when the watch's own agent is replaced (a client roll: no
# answer at all until the new agent serves, which the leader sampler counts as no leader) or a
# server is lost unannounced (a node lost: clients send RPCs to it until serf declares it failed,
# never retrying a write; its higher term deposes the leader when it is back). Rolling the client
# DaemonSet also replaces every client agent. A write failed with a leader and every agent pod
# serving is never excused.
LEADER_LOST = ("without a leader", "writes failed with a leader while an agent pod was down", "DNS lookups unanswered")
# What a roll of the servers alone still costs: a write in flight to a server that stops. Such a roll
# keeps the leader (the stopping leader hands it over first) and every DNS answer, which the README's
# table shows, so those bounds are asserted.
SERVER_STOPPED = ("writes failed with a leader while an agent pod was down",)
CLIENTS_ROLLED = ("client NotReady samples", "registration missing")
OPEN_DEFECT = "issue #19, open"


def assert_bounds(
    watches: Any,
    servers: int,
    *,
    open_defect: tuple[str, ...] = (),
    open_defect_of: dict[str, tuple[str, ...]] | None = None,
    cause: str = "",
) -> None:
    """The issue's bounds over one finished Watch or a list of them. Every bound not named in
    `open_defect` (or, for a watch labelled in `open_defect_of`, in its entry there) is asserted.
    Those named (parts of bounds_broken's lines) belong to a defect still open: broken, the test
    ends as an expected failure that prints what was measured, and `cause`, the defect as the
    test traced it; kept, it passes. Once the defect is fixed the names go and the bounds are
    asserted again."""
    broken = {w.label: bounds_broken(w, servers) for w in (watches if isinstance(watches, list) else [watches])}
    excused = {label: (open_defect_of or {}).get(label, open_defect) for label in broken}
    asserted = {label: [line for line in lines if not any(name in line for name in excused[label])] for label, lines in broken.items()}
    assert asserted == {label: [] for label in broken}
    if any(broken.values()):
        measured = "; ".join(f"{label}: {', '.join(lines)}" for label, lines in broken.items() if lines)
        pytest.xfail(f"{OPEN_DEFECT}: {measured}" + (f"; {cause}" if cause else ""))


def leader_seen(run: Runner, agent: str = LOCAL_AGENT) -> str:
    """The leader ("ip:8300") as an agent reports it: HTTP 200 with that body; "" otherwise."""
    status, body = consul_http(run, "GET", f"{agent}/v1/status/leader", bound=2)
    match = _LEADER_BODY.match(body.strip())
    return match.group(1) if status == 200 and match else ""


def raft_servers(deployment: Deployment, via: str = "consul-server-0") -> list[dict[str, Any]] | None:
    """The Raft configuration as server `via` itself holds it (`?stale`: with or without a leader);
    None when it does not answer."""
    status, body = consul_http(
        in_pod(deployment, via), "GET", f"{LOCAL_AGENT}/v1/operator/raft/configuration?stale", deployment.management_token(), bound=5
    )
    if status != 200:
        return None
    servers: list[dict[str, Any]] = json.loads(body)["Servers"]
    return servers


def servers_formed(deployment: Deployment, count: int, via: str = "consul-server-0") -> bool:
    """`count` server pods, each Ready and none terminating, and Consul's Raft configuration: those
    servers, every one a voter, one of them the leader."""
    names = [f"consul-server-{i}" for i in range(count)]
    pods = deployment.pods("server")
    if [p["metadata"]["name"] for p in pods] != names or not all(ready(p) and not p["metadata"].get("deletionTimestamp") for p in pods):
        return False
    config = raft_servers(deployment, via)
    return config is not None and sorted(s["Node"] for s in config if s["Voter"]) == names and sum(s["Leader"] for s in config) == 1


def node_of(deployment: Deployment, pod: str) -> str:
    node: str = deployment.api.get(f"/api/v1/namespaces/{deployment.namespace}/pods/{pod}")["spec"]["nodeName"]
    return node


@contextlib.contextmanager
def cordoned(cluster: Cluster, nodes: list[str]) -> Iterator[None]:
    """`kubectl cordon` the nodes; `kubectl uncordon` them afterwards, whatever happened."""
    try:
        for node in nodes:
            cluster.kubectl("cordon", node)
        yield
    finally:
        for node in nodes:
            cluster.kubectl("uncordon", node, check=False)


@contextlib.contextmanager
def servers_held_down(deployment: Deployment, servers: list[str], *delete_args: str) -> Iterator[None]:
    """The servers' nodes cordoned and their pods deleted (`kubectl delete pod` with `delete_args`):
    with required anti-affinity over three nodes their replacements stay Pending until the nodes
    are uncordoned on leaving the block."""
    with cordoned(deployment.cluster, sorted({node_of(deployment, s) for s in servers})):
        deployment.kubectl("delete", "pod", *servers, *delete_args, timeout=180)
        yield
