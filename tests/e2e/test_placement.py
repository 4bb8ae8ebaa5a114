"""The scheduler and admission on the rendered objects: anti-affinity, zone spread, Pod Security with host ports.

These apply the YAML `make render` writes (what `kubectl apply` would send) to node layouts a
test sets up with kwok nodes: nodes in the same cluster that run nothing (kwok marks their pods
Ready), tainted so that only these tests' stacks, which select and tolerate them, land there.
The real nodes are untouched.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import run_stack
from conftest import KUBE_BIN, STACK_FILE, FakeNode, ready, set_config, three_zones

pytestmark = pytest.mark.e2e


# Every pod of these stacks on the kwok nodes only.
ON_KWOK = {
    "serverNodeSelector": {"type": "kwok"},
    "clientNodeSelector": {"type": "kwok"},
    "serverTolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
    "clientTolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
}


def render(home: Path, **config: object) -> Path:
    stack = run_stack.render_stack("e2e", home, home / "rendered", STACK_FILE)
    for key, value in {**ON_KWOK, **config}.items():
        set_config(stack, key, value)
    stack.up(color="never", on_output=lambda line: None)
    run_stack.tidy_rendered(stack, home / "rendered")
    return home / "rendered"


def apply_rendered(cluster, directory: Path) -> None:
    """`kubectl apply -k` of a rendered directory, as `make render` tells users to."""
    cluster.kubectl("apply", "-k", str(directory))


@pytest.fixture(autouse=True)
def _kwok_nodes_removed_afterwards(cluster):
    yield
    cluster.plane.remove_nodes()


def servers(plane, namespace: str = "consul-e2e") -> list[Any]:
    pods = plane.api.items(f"/api/v1/namespaces/{namespace}/pods?labelSelector=app.kubernetes.io/component=server")
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def fresh_nodes(cluster, nodes: list[FakeNode]) -> None:
    cluster.plane.remove_nodes()
    cluster.plane.add_nodes(nodes)


def remove_namespace(cluster, namespace: str) -> None:
    cluster.kubectl("delete", "namespace", namespace, "--wait=true", timeout=180)
    cluster.recycle_volumes()


def test_prod_shape_five_servers_on_five_nodes_in_three_zones(cluster, tmp_path):
    fresh_nodes(cluster, three_zones(5))
    apply_rendered(
        cluster, render(tmp_path, serverReplicas=5, serverAntiAffinity="required", serverZoneSpread="required", namespace="consul-e2e")
    )
    cluster.wait("5 servers Ready", lambda: len(servers(cluster)) == 5 and all(ready(p) for p in servers(cluster)), 60)
    nodes = [p["spec"]["nodeName"] for p in servers(cluster)]
    assert len(set(nodes)) == 5
    zones = sorted(cluster.api.get(f"/api/v1/nodes/{n}")["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in nodes)
    assert zones == ["zone-a", "zone-a", "zone-b", "zone-b", "zone-c"]
    remove_namespace(cluster, "consul-e2e")


@pytest.mark.parametrize(("placement", "pending"), [("required", 1), ("preferred", 0)])
def test_three_servers_on_two_nodes(cluster, tmp_path, placement, pending):
    namespace = f"consul-two-{placement}"
    fresh_nodes(cluster, [FakeNode("kwok-0", "zone-a"), FakeNode("kwok-1", "zone-b")])
    apply_rendered(cluster, render(tmp_path, serverAntiAffinity=placement, namespace=namespace))
    cluster.wait("3 server pods", lambda: len(servers(cluster, namespace)) == 3, 30)
    time.sleep(5)  # the scheduler has had its chance
    phases = sorted(p["status"].get("phase") for p in servers(cluster, namespace))
    assert phases.count("Pending") == pending
    assert phases.count("Running") == 3 - pending
    remove_namespace(cluster, namespace)


def test_host_ports_relabel_the_namespace_and_admission_passes(cluster, tmp_path):
    namespace = "consul-hostports"
    fresh_nodes(cluster, three_zones(3))
    apply_rendered(cluster, render(tmp_path, clientHostPorts="true", namespace=namespace))
    labels = cluster.api.get(f"/api/v1/namespaces/{namespace}")["metadata"]["labels"]
    assert (labels["pod-security.kubernetes.io/enforce"], labels["pod-security.kubernetes.io/warn"]) == ("privileged", "restricted")
    cluster.wait(
        "3 clients admitted and Ready",
        lambda: (
            len(c := cluster.api.items(f"/api/v1/namespaces/{namespace}/pods?labelSelector=app.kubernetes.io/component=client")) == 3
            and all(ready(p) for p in c)
        ),
        60,
    )
    remove_namespace(cluster, namespace)


def test_the_restricted_namespace_refuses_host_ports(cluster, tmp_path):
    """The same clients in the default (restricted) namespace: admission refuses them, proving it is enforced."""
    namespace = "consul-restricted"
    fresh_nodes(cluster, three_zones(3))
    apply_rendered(cluster, render(tmp_path, namespace=namespace))
    from testbed.cluster.api import ApiError

    path = f"/apis/apps/v1/namespaces/{namespace}/daemonsets/consul-client"
    for _attempt in range(5):  # the controller may update the object between our read and write (409)
        daemonset = cluster.api.get(path)
        daemonset["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostPort"] = 8500
        try:
            cluster.api.request("PUT", path, daemonset)
            break
        except ApiError as error:
            if error.status != 409:
                raise
            time.sleep(0.5)
    cluster.wait(
        "a FailedCreate for the host port",
        lambda: any(
            "hostPort" in e.get("message", "") and e.get("reason") == "FailedCreate"
            for e in cluster.api.items(f"/api/v1/namespaces/{namespace}/events")
        ),
        60,
    )
    remove_namespace(cluster, namespace)


def test_the_rendered_directory_applies_in_one_kubectl_command(cluster, tmp_path):
    """`kubectl apply -k rendered/<stack>` (what make render prints) creates everything, the Namespace first."""
    import subprocess

    namespace = "consul-kubectl"
    fresh_nodes(cluster, three_zones(3))
    out = render(tmp_path, namespace=namespace)
    stack = run_stack.render_stack("e2e", tmp_path, out, STACK_FILE)
    run_stack.tidy_rendered(stack, out)
    applied = subprocess.run(
        [str(KUBE_BIN), "kubectl", f"--kubeconfig={cluster.kubeconfig}", "apply", "-k", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    lines = applied.stdout.splitlines()
    assert lines[0] == f"namespace/{namespace} created"
    # One object created per rendered file, whatever the stack's settings add.
    rendered = [p for p in out.rglob("*.yaml") if p.name != run_stack.KUSTOMIZATION]
    assert (len(lines), [line for line in lines if not line.endswith(" created")]) == (len(rendered), [])
    cluster.wait(
        "3 servers Ready", lambda: len(servers(cluster, namespace)) == 3 and all(ready(p) for p in servers(cluster, namespace)), 60
    )
    remove_namespace(cluster, namespace)
