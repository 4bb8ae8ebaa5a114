"""A real Kubernetes control plane on loopback, with kwok's fake nodes: the e2e bed.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are the real programs (one
multi-call binary from testbed/build-kube.sh); kwok plays the kubelets with the Stages in
stages.yaml: nodes initialize and heartbeat, pods become Ready a second after they are scheduled,
Job pods complete, deleted pods go. Pod Security admission, the scheduler (anti-affinity, zone
spread), the disruption controller, the StatefulSet, DaemonSet and Job controllers and the
PersistentVolume binder all run for real. Nothing runs a container.

Everything listens on 127.0.0.1 and lives in one work directory; stop() ends every process.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import Api, ApiError

STAGES = Path(__file__).with_name("stages.yaml")
SERVICE_CIDR = "198.19.0.0/16"
POD_CIDR = "198.18.64.0/18"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class FakeNode:
    name: str
    zone: str


class ControlPlane:
    """Start with start(), stop with stop(); api and kubeconfig are there in between."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = workdir / "kubeconfig"
        self.api = Api(self.server, self.token)

    def _run(self, name: str, *args: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [str(self.binary), name, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()

    def _keys(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.workdir / "sa.key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        (self.workdir / "sa.pub").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        (self.workdir / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        self.kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: bed
  cluster:
    server: {self.server}
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: {self.token}
contexts:
- name: bed
  context: {{cluster: bed, user: admin}}
current-context: bed
"""
        )

    def start(self, timeout: float = 120) -> float:
        """Start every component and wait until the API server is ready; returns the seconds it took."""
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._keys()
        etcd_port, peer_port = free_port(), free_port()
        self._run(
            "etcd",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        )
        self._run(
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.workdir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.workdir / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--enable-priority-and-fairness=false",
        )
        self._wait_ready(timeout)
        self._run(
            "kube-controller-manager",
            f"--kubeconfig={self.kubeconfig}",
            f"--service-account-private-key-file={self.workdir / 'sa.key'}",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--controllers=*",
            "--concurrent-statefulset-syncs=5",
        )
        self._run(
            "kube-scheduler",
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
        )
        self._run(
            "kwok",
            f"--kubeconfig={self.kubeconfig}",
            f"--config={STAGES}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={POD_CIDR}",
            "--node-ip=198.18.63.1",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{free_port()}",
        )
        return time.monotonic() - started

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            try:
                if self.api.text("GET", "/readyz") == "ok":
                    return
            except (ApiError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"kube-apiserver not ready within {timeout} s:\n{self.log_tail('kube-apiserver')}")
            time.sleep(0.5)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """End every component (SIGTERM, then SIGKILL) in reverse start order."""
        for _name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    # --- the cluster's contents -------------------------------------------------------------
    def add_nodes(self, nodes: list[FakeNode]) -> None:
        """kwok nodes with a distinct hostname label and a zone each; returns when all are Ready."""
        for node in nodes:
            self.api.create("/api/v1/nodes", fake_node(node))
        self.wait(
            "nodes Ready",
            lambda: all(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in self.api.get(f"/api/v1/nodes/{n.name}")["status"].get("conditions", [])
                )
                for n in nodes
            ),
            60,
        )

    def remove_nodes(self) -> None:
        for node in self.api.items("/api/v1/nodes"):
            self.api.delete(f"/api/v1/nodes/{node['metadata']['name']}")

    def add_volumes(self, count: int, size: str = "100Gi") -> None:
        """PersistentVolumes without a class, for claims without one to bind to (a provisioner stand-in)."""
        for i in range(count):
            self.api.create(
                "/api/v1/persistentvolumes",
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": f"bed-pv-{i:02}"},
                    "spec": {
                        "capacity": {"storage": size},
                        "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "hostPath": {"path": f"/bed/pv-{i:02}"},
                    },
                },
            )

    def wait(self, what: str, check: Any, timeout: float, interval: float = 0.5) -> float:
        started = time.monotonic()
        while True:
            try:
                if check():
                    return time.monotonic() - started
            except ApiError:
                pass
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s")
            time.sleep(interval)


def fake_node(node: FakeNode) -> dict[str, Any]:
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": node.zone,
                "type": "kwok",
            },
        },
        "status": {"allocatable": resources, "capacity": resources},
    }
