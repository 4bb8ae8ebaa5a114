"""The bed's control loop: what the API server and controllers would do with the rendered YAML.

It reads every object of a rendered directory (the files `kubectl apply` would take) and runs:
  - StatefulSets: pods ``<name>-<i>`` started in parallel, each with a persistent directory per
    volumeClaimTemplate that survives the pod; a deleted pod comes back under the same name, with
    a new address;
  - DaemonSets: one pod per simulated node, with ``spec.nodeName`` and ``status.hostIP`` set;
  - Jobs: pods run once each, retried up to ``backoffLimit``, until one succeeds;
  - Services, as cluster DNS answers for them, written into each pod's /etc/hosts: per-pod names
    under a headless Service, and every Service's name resolving to its endpoints (ready pods,
    or all with publishNotReadyAddresses; the caller's own node only with
    internalTrafficPolicy Local). There is no virtual IP and no kube-proxy.
NetworkPolicies, Pod Security admission and scheduling are not modelled (the control-plane bed,
testbed/cluster, covers those).
"""

from __future__ import annotations

import base64
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import network
from .pod import Placement, Pod

CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Node:
    name: str
    ip: str


def load_manifests(directory: Path) -> list[dict[str, Any]]:
    """Every object under a rendered directory, in file name order (kustomization.yaml is no object)."""
    objects: list[dict[str, Any]] = []
    for path in sorted(p for p in directory.rglob("*.yaml") if p.name != "kustomization.yaml"):
        objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return objects


def secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


class Bed:
    """A namespace's worth of rendered objects, running as processes on simulated nodes."""

    def __init__(self, manifests: Iterable[Mapping[str, Any]], workdir: Path, images: Callable[[str], str], nodes: int = 3) -> None:
        self.workdir = workdir
        self.images = images
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        for obj in manifests:
            self.objects[(obj["kind"], obj["metadata"]["name"])] = dict(obj)
        namespaces = {o["metadata"].get("namespace") for o in self.objects.values() if o["kind"] != "Namespace"} - {None}
        if len(namespaces) != 1:
            raise ValueError(f"the bed runs one namespace at a time, the manifests name {sorted(namespaces)}")
        self.namespace: str = namespaces.pop()
        self.nodes = [Node(f"node-{i}", network.node_address(i)) for i in range(1, nodes + 1)]
        self.pods: dict[str, Pod] = {}
        self.job_attempts: dict[str, int] = {}
        self.held: set[str] = set()
        self.started = time.monotonic()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._net = network.Network()
        (workdir / "hosts").mkdir(parents=True, exist_ok=True)
        self._controllers = threading.Thread(target=self._control_loop, name="controllers", daemon=True)

    # --- objects ------------------------------------------------------------------------
    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for (k, _), o in sorted(self.objects.items()) if k == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.objects[(kind, name)]

    @property
    def configmaps(self) -> dict[str, dict[str, str]]:
        return {o["metadata"]["name"]: dict(o.get("data") or {}) for o in self.of_kind("ConfigMap")}

    @property
    def secrets(self) -> dict[str, dict[str, str]]:
        return {o["metadata"]["name"]: secret_data(o) for o in self.of_kind("Secret")}

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> Bed:
        self._reconcile()
        self._controllers.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._controllers.is_alive():
            self._controllers.join(timeout=10)
        with self._lock:
            pods = list(self.pods.values())
        for pod in pods:
            if not pod.deleted:
                pod.delete(grace=5)
        self._net.close()

    def _control_loop(self) -> None:
        while not self._stop.wait(0.5):
            self._reconcile()

    def _reconcile(self) -> None:
        with self._lock:
            for sts in self.of_kind("StatefulSet"):
                for i in range(sts["spec"].get("replicas", 1)):
                    self._ensure(f"{sts['metadata']['name']}-{i}", sts, self.nodes[i % len(self.nodes)])
            for ds in self.of_kind("DaemonSet"):
                for node in self.nodes:
                    self._ensure(f"{ds['metadata']['name']}-{node.name}", ds, node)
            for job in self.of_kind("Job"):
                self._run_job(job)
            self.write_hosts()

    def _ensure(self, name: str, owner: Mapping[str, Any], node: Node) -> Pod | None:
        """The pod `name` of a StatefulSet or DaemonSet: the running one, or a new one (unless held)."""
        existing = self.pods.get(name)
        if existing is not None and not existing.deleted:
            return existing
        if self._stop.is_set() or name in self.held:
            return None
        claims = {
            claim["metadata"]["name"]: self.claim_path(f"{claim['metadata']['name']}-{name}")
            for claim in owner["spec"].get("volumeClaimTemplates", [])
        }
        return self.run_pod(name, owner["spec"]["template"], node, claims)

    def run_pod(
        self,
        name: str,
        template: Mapping[str, Any],
        node: Node | None = None,
        claims: Mapping[str, Path] | None = None,
        secrets_override: Mapping[str, Mapping[str, str]] | None = None,
    ) -> Pod:
        """Start a pod from a pod template on a node (the first one by default); `secrets_override`
        gives it other contents for some Secrets (an intruder's view of the cluster)."""
        node = node or self.nodes[0]
        claims = dict(claims or {})
        for volume in template.get("spec", {}).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claims.setdefault(volume["name"], self.claim_path(volume["persistentVolumeClaim"]["claimName"]))
        placement = Placement(
            name=name,
            namespace=self.namespace,
            node=node.name,
            node_ip=node.ip,
            configmaps=self.configmaps,
            secrets={**self.secrets, **(secrets_override or {})},
            claims=claims,
        )
        hosts = self.workdir / "hosts" / name
        hosts.write_text(self._hosts_for(node, name, "127.0.0.1"))
        with self._lock:
            pod = Pod(
                placement,
                template,
                network=self._net,
                workdir=self.workdir,
                images=self.images,
                hosts_file=hosts,
                on_change=self.write_hosts,
            )
            self.pods[name] = pod
        self.write_hosts()
        return pod

    def claim_path(self, claim: str) -> Path:
        """Where a claim's data lives (what a provisioned volume would hold)."""
        return self.workdir / "volumes" / claim

    def _run_job(self, job: Mapping[str, Any]) -> None:
        name = job["metadata"]["name"]
        attempt = self.job_attempts.get(name, 0)
        current = self.pods.get(f"{name}-{attempt}") if attempt else None
        if current is not None and not current.deleted:
            if current.exit_code is None or current.exit_code == 0:
                return
            if attempt > job["spec"].get("backoffLimit", 6):
                return
        elif attempt and current is None:
            return
        self.job_attempts[name] = attempt + 1
        self.run_pod(f"{name}-{attempt + 1}", job["spec"]["template"], self.nodes[0])

    def job_status(self, name: str) -> str:
        """Complete, Failed or Running, as `kubectl get job` would say."""
        pods = [p for n, p in self.pods.items() if n.startswith(f"{name}-") and n[len(name) + 1 :].isdigit()]
        if any(p.exit_code == 0 for p in pods):
            return "Complete"
        if len(pods) > self.get("Job", name)["spec"].get("backoffLimit", 6) and all(p.exit_code not in (None, 0) for p in pods):
            return "Failed"
        return "Running"

    def rerun_job(self, name: str) -> None:
        """Delete a Job's pods and run it again (what a re-applied Job does)."""
        with self._lock:
            for pod_name in [n for n in self.pods if n.startswith(f"{name}-")]:
                self.pods.pop(pod_name).delete(grace=1)
            self.job_attempts.pop(name, None)

    # --- kubectl apply of a new render ---------------------------------------------------
    def apply(self, manifests: Iterable[Mapping[str, Any]], timeout: float = 300) -> dict[str, float]:
        """`kubectl apply` of a new render, then what the controllers make of it, returned once
        every rollout is done (with the seconds each took):

        - a Job whose spec changed runs again (Pulumi replaces it; here its pods are re-run);
        - a StatefulSet scaled down loses its highest ordinals (in parallel, Parallel policy);
          a changed pod template rolls it from the highest ordinal down, one pod at a time, each
          replaced only once the one before is Ready (RollingUpdate; ordinals below a partition
          are kept); a scale-up adds pods;
        - a DaemonSet with a changed template rolls one node at a time (maxUnavailable 1).
        """
        new = {(o["kind"], o["metadata"]["name"]): dict(o) for o in manifests}
        with self._lock:
            old, self.objects = self.objects, new
        took: dict[str, float] = {}
        for (kind, name), obj in sorted(new.items()):
            if kind == "Job" and old.get((kind, name)) != obj:
                self.rerun_job(name)
        for sts in self.of_kind("StatefulSet"):
            name = sts["metadata"]["name"]
            before = old.get(("StatefulSet", name), sts)
            started = time.monotonic()
            old_replicas, replicas = before["spec"].get("replicas", 1), sts["spec"].get("replicas", 1)
            self.delete_pods([f"{name}-{i}" for i in range(replicas, old_replicas) if f"{name}-{i}" in self.pods])
            if before["spec"]["template"] != sts["spec"]["template"]:
                partition = sts["spec"].get("updateStrategy", {}).get("rollingUpdate", {}).get("partition", 0)
                for i in reversed(range(partition, min(old_replicas, replicas))):
                    self._replace(f"{name}-{i}", timeout)
            self.wait_for(f"{name}: {replicas} pods Ready", self._all_ready(name, replicas), timeout)
            took[f"StatefulSet/{name}"] = time.monotonic() - started
        for ds in self.of_kind("DaemonSet"):
            name = ds["metadata"]["name"]
            if old.get(("DaemonSet", name), ds)["spec"]["template"] != ds["spec"]["template"]:
                started = time.monotonic()
                for node in self.nodes:
                    self._replace(f"{name}-{node.name}", timeout)
                took[f"DaemonSet/{name}"] = time.monotonic() - started
        return took

    def _replace(self, name: str, timeout: float) -> None:
        """Delete a controller's pod and wait until its controller's new one is Ready."""
        previous = self.pods.get(name)
        if previous is not None and not previous.deleted:
            self.delete_pod(name)
        self.wait_for(
            f"{name} re-created and Ready", lambda: (p := self.pods.get(name)) is not None and p is not previous and p.ready, timeout
        )

    def _all_ready(self, statefulset: str, replicas: int) -> Callable[[], bool]:
        def check() -> bool:
            ready = [n for n, p in self.pods.items() if n.rsplit("-", 1)[0] == statefulset and not p.deleted and p.ready]
            return len(ready) == replicas

        return check

    # --- cluster DNS --------------------------------------------------------------------
    def _selected(self, selector: Mapping[str, str]) -> list[Pod]:
        return [p for p in self.pods.values() if not p.deleted and selector and all(p.labels.get(k) == v for k, v in selector.items())]

    def _names(self, name: str) -> list[str]:
        ns = self.namespace
        return [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.{CLUSTER_DOMAIN}"]

    def _hosts_for(self, node: Node, pod_name: str, pod_ip: str) -> str:
        lines = ["127.0.0.1 localhost", f"{pod_ip} {pod_name}"]
        for svc in self.of_kind("Service"):
            spec = svc["spec"]
            name = svc["metadata"]["name"]
            show_all = spec.get("publishNotReadyAddresses", False)
            endpoints = [p for p in self._selected(spec.get("selector") or {}) if p.ready or show_all]
            if spec.get("internalTrafficPolicy") == "Local":
                endpoints = [p for p in endpoints if p.placement.node == node.name]
            for pod in endpoints:
                lines.append(f"{pod.ip} {' '.join(self._names(name))}")
            if spec.get("clusterIP") == "None":
                for pod in endpoints:
                    lines.append(f"{pod.ip} {' '.join(self._names(f'{pod.name}.{name}'))}")
        return "\n".join(lines) + "\n"

    def write_hosts(self) -> None:
        """Rewrite every pod's /etc/hosts in place (the same inode stays bind-mounted)."""
        with self._lock:
            for pod in list(self.pods.values()):
                if pod.deleted or not hasattr(pod, "ip"):
                    continue
                node = next(n for n in self.nodes if n.name == pod.placement.node)
                content = self._hosts_for(node, pod.name, pod.ip)
                if pod.hosts_file.exists() and pod.hosts_file.read_text() == content:
                    continue
                with pod.hosts_file.open("r+") as handle:
                    handle.truncate(0)
                    handle.write(content)

    # --- what a test asks -----------------------------------------------------------------
    def pod(self, name: str) -> Pod:
        return self.pods[name]

    def tier(self, component: str) -> list[Pod]:
        return sorted(
            (p for p in self.pods.values() if not p.deleted and p.labels.get("app.kubernetes.io/component") == component),
            key=lambda p: p.name,
        )

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5) -> float:
        """Wait until check() holds; returns the seconds it took, or fails naming what was awaited."""
        start = time.monotonic()
        while True:
            if check():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{self.describe()}")
            time.sleep(interval)

    def describe(self) -> str:
        rows = []
        for pod in sorted(self.pods.values(), key=lambda p: p.name):
            state = "deleted" if pod.deleted else ("running" if pod.running else f"exited {pod.exit_code}")
            rows.append(f"  {pod.name:32} {pod.ip:15} ready={pod.ready!s:5} restarts={pod.restarts} {state}")
        return "pods:\n" + "\n".join(rows)

    def delete_pod(self, name: str, grace: float | None = None, *, hold: bool = False) -> None:
        """`kubectl delete pod`; with hold, its controller does not re-create it until release()."""
        with self._lock:
            pod = self.pods[name]
            if hold:
                self.held.add(name)
        pod.delete(grace)

    def delete_pods(self, names: Iterable[str], *, hold: bool = False) -> None:
        """Delete several pods at once, as `kubectl delete pod a b c` does (in parallel)."""
        threads = [threading.Thread(target=self.delete_pod, args=(n,), kwargs={"hold": hold}) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def release(self, *names: str) -> None:
        self.held.difference_update(names)

    def netns_exec(self, pod: Pod, command: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A command on the pod's network only, as the bed (root, the machine's files)."""
        return subprocess.run(["ip", "netns", "exec", pod.netns, *command], capture_output=True, text=True, timeout=timeout)
