"""Fixtures of the control-plane bed: a real kube-apiserver with kwok nodes, and `pulumi up` on it.

`make e2e` builds the control plane and the engine first. The tests drive the real engine through
the Automation API (what `pulumi up` runs) and read what the cluster then holds and does.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import run_stack  # noqa: E402

from testbed.cluster.controlplane import ControlPlane, FakeNode  # noqa: E402


def _kube_binary() -> Path:
    """Where testbed/build-kube.sh caches its binary (its K8S_VERSION and RECIPE, read from the script)."""
    import re

    script = (ROOT / "testbed" / "build-kube.sh").read_text()
    version = re.search(r"^K8S_VERSION=(\S+)", script, re.MULTILINE)
    recipe = re.search(r"^RECIPE=(\S+)", script, re.MULTILINE)
    if version is None or recipe is None:
        raise RuntimeError("testbed/build-kube.sh must name K8S_VERSION and RECIPE")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "consul-testbed" / f"kube-{version.group(1)}-r{recipe.group(1)}" / "kube-testbed"


KUBE_BIN = _kube_binary()
STACK_FILE = Path(__file__).with_name("Pulumi.e2e.yaml")
LOGS = ROOT / "testbed" / "logs" / "e2e"
NAMESPACE = "consul-e2e"


def three_zones(count: int) -> list[FakeNode]:
    return [FakeNode(f"node-{i}", f"zone-{'abc'[i % 3]}") for i in range(count)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request) -> Iterator[ControlPlane]:
    """A fresh control plane per test module, with 3 nodes in 3 zones and volumes to bind; logs kept."""
    if not KUBE_BIN.exists():
        pytest.fail(f"no control plane binary at {KUBE_BIN}: run `make e2e` (it builds it once)")
    workdir = tmp_path_factory.mktemp("cluster")
    plane = ControlPlane(KUBE_BIN, workdir)
    try:
        took = plane.start()
        plane.add_nodes(three_zones(3))
        plane.add_volumes(40)  # claims are never re-bound (Retain): enough for every test of a module
        print(f"\ne2e: control plane up with 3 nodes in {took:.1f} s")
        yield plane
    finally:
        plane.stop()
        target = LOGS / request.node.name
        shutil.rmtree(target, ignore_errors=True)
        if plane.logs.exists():
            shutil.copytree(plane.logs, target)
    alive = [name for name, p in plane.processes.items() if p.poll() is None]
    assert alive == [], f"still running: {alive}"


class Deployment:
    """One stack of the program on the bed's cluster, and what a test asks of the cluster."""

    def __init__(self, plane: ControlPlane, home: Path, stack: str = "e2e", namespace: str = NAMESPACE) -> None:
        self.plane = plane
        self.api = plane.api
        self.namespace = namespace
        self.stack = run_stack.cluster_stack(stack, home, plane.kubeconfig, STACK_FILE)
        if namespace != NAMESPACE:
            self.stack.set_config("consul:namespace", run_stack.auto.ConfigValue(namespace))

    def set(self, **values: Any) -> None:
        """`pulumi config set` (with --path for an object's members)."""
        for key, value in values.items():
            if isinstance(value, dict):
                for member, inner in value.items():
                    self.stack.set_config(f"consul:{key}.{member}", run_stack.auto.ConfigValue(str(inner)), path=True)
            else:
                self.stack.set_config(f"consul:{key}", run_stack.auto.ConfigValue(str(value)))

    def up(self, what: str) -> Any:
        """`pulumi up`, then until the servers' StatefulSet is rolled out (see _servers_rolled_out)."""
        started = time.monotonic()
        result = self.stack.up(color="never", on_output=lambda line: None)
        print(f"\ne2e: {what}: pulumi up took {time.monotonic() - started:.1f} s, {dict(result.summary.resource_changes or {})}")
        if not self._servers_rolled_out():
            # The Kubernetes provider 4.25 can take a StatefulSet's status from before its controller
            # saw the update as the end of the roll (fixed upstream: pulumi-kubernetes#4094).
            deadline = time.monotonic() + 120
            while not self._servers_rolled_out():
                assert time.monotonic() < deadline, f"{what}: the servers' StatefulSet did not roll out within 120 s"
                time.sleep(0.2)
            print(f"e2e: {what}: the servers' roll finished {time.monotonic() - started:.1f} s after up started, after up returned")
        return result

    def _servers_rolled_out(self) -> bool:
        """`kubectl rollout status` for the servers' StatefulSet: its controller has seen the latest
        spec, the pods up to the partition run the new revision, and all are Ready."""
        path = f"/apis/apps/v1/namespaces/{self.namespace}/statefulsets/consul-server"
        if not self.api.exists(path):
            return True
        sts = self.api.get(path)
        spec, status = sts["spec"], sts.get("status", {})
        replicas = spec.get("replicas", 1)
        partition = spec.get("updateStrategy", {}).get("rollingUpdate", {}).get("partition", 0)
        if status.get("observedGeneration", 0) < sts["metadata"]["generation"] or status.get("readyReplicas", 0) != replicas:
            return False
        if partition > 0:
            return bool(status.get("updatedReplicas", 0) >= replicas - partition)
        return bool(status.get("updatedReplicas", 0) == replicas and status.get("currentRevision") == status.get("updateRevision"))

    def pods(self, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/component={component}"
        return sorted(
            self.api.items(f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={selector}"), key=lambda p: p["metadata"]["name"]
        )

    def get(self, path: str) -> Any:
        return self.api.get(f"/apis/apps/v1/namespaces/{self.namespace}/{path}")


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


class ReadinessWatch:
    """Samples the servers' readiness every 0.2 s while an operation runs: the most that were down at once."""

    def __init__(self, deployment: Deployment, replicas: int) -> None:
        import threading

        self.deployment = deployment
        self.replicas = replicas
        self.worst = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                up = sum(1 for p in self.deployment.pods("server") if ready(p) and not p["metadata"].get("deletionTimestamp"))
            except Exception:  # noqa: BLE001 - a failed sample is skipped, not a verdict
                continue
            self.samples += 1
            self.worst = max(self.worst, self.replicas - up)

    def __enter__(self) -> ReadinessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def apply_rendered(plane: ControlPlane, directory: Path) -> list[str]:
    """What `kubectl apply` of a rendered directory does: Namespaces first, then every object; returns what was created."""
    import yaml

    from testbed.live.cluster import load_manifests

    objects = load_manifests(directory)
    objects.sort(key=lambda o: o["kind"] != "Namespace")
    created = []
    for obj in objects:
        kind, ns = obj["kind"], obj["metadata"].get("namespace")
        group_version = obj["apiVersion"]
        base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
        plural = {"NetworkPolicy": "networkpolicies"}.get(kind, kind.lower() + "s")
        path = f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"
        plane.api.create(path, obj)
        created.append(f"{kind}/{obj['metadata']['name']}")
    del yaml
    return created
