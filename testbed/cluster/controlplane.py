"""The bed's control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and kwok.

They are the real programs (one multi-call binary from testbed/build-kube.sh). The API server
listens on the bed's link (testbed/cluster/network.py), where the real nodes' kubelets reach it,
with a serving certificate from the bed's own CA; etcd and the controllers stay on 127.0.0.1.
Kubelets authenticate as ``system:node:<name>`` (Node authorizer, NodeRestriction admission),
kube-proxy as ``system:kube-proxy``. kwok manages only nodes annotated ``kwok.x-k8s.io/node=fake``
(the placement tests' extra nodes, which run nothing), with the Stages in stages.yaml.

stop() ends every process; the work directory keeps the logs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import Api, ApiError
from .network import HOST_IP, KWOK_POD_CIDR, SERVICE_CIDR

STAGES = Path(__file__).with_name("stages.yaml")
API_PORT = 6443


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class FakeNode:
    name: str
    zone: str


KUBECONFIG = "kubeconfig"
TOKEN_FILE = "tokens.csv"


def remove_credential_files(workdir: Path) -> None:
    """Remove what holds a control plane's credentials in its `workdir`: the kubeconfig and the API
    server's token file, of no use once the control plane has stopped."""
    for name in (KUBECONFIG, TOKEN_FILE):
        (workdir / name).unlink(missing_ok=True)


class ControlPlane:
    """Start with start(), stop with stop(); api and kubeconfig are there in between."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.token = secrets.token_hex(16)
        self.node_tokens: dict[str, str] = {}
        self.proxy_token = secrets.token_hex(16)
        self.port = API_PORT
        self.server = f"https://{HOST_IP}:{self.port}"
        self.kubeconfig = workdir / KUBECONFIG
        self.ca_file = workdir / "ca.crt"
        self.api = Api(self.server, self.token)

    def _run(self, name: str, *args: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [str(self.binary), name, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()

    def node_token(self, node: str) -> str:
        """The bearer token of a node's kubelet (user ``system:node:<node>``, group ``system:nodes``)."""
        return self.node_tokens.setdefault(node, secrets.token_hex(16))

    def _keys(self, nodes: list[str]) -> None:
        from .pki import write_pki

        write_pki(self.workdir, self.ca_file, [HOST_IP, str(SERVICE_CIDR.network_address + 1), "127.0.0.1"])
        lines = [f'{self.token},admin,admin,"system:masters"', f"{self.proxy_token},system:kube-proxy,kube-proxy"]
        lines += [f"{self.node_token(n)},system:node:{n},node-{n},system:nodes" for n in nodes]
        (self.workdir / TOKEN_FILE).write_text("\n".join(lines) + "\n")
        (self.workdir / TOKEN_FILE).chmod(0o600)
        self.kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: bed
  cluster:
    server: {self.server}
    certificate-authority: {self.ca_file}
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
        self.kubeconfig.chmod(0o600)

    def start(self, nodes: list[str], timeout: float = 120) -> float:
        """Start every component (with credentials for the named nodes' kubelets) and wait until the
        API server is ready; returns the seconds it took. The bed's link must exist."""
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)  # every start is a new cluster
        self._keys(nodes)
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
            f"--bind-address={HOST_IP}",
            f"--advertise-address={HOST_IP}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={self.workdir / 'apiserver.crt'}",
            f"--tls-private-key-file={self.workdir / 'apiserver.key'}",
            f"--client-ca-file={self.ca_file}",
            f"--token-auth-file={self.workdir / TOKEN_FILE}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
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
            f"--root-ca-file={self.ca_file}",
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
            f"--cidr={KWOK_POD_CIDR}",
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

    def credentials(self) -> list[str]:
        """Every bearer token the API server accepts: the admin's, kube-proxy's, each kubelet's."""
        return [self.token, self.proxy_token, *self.node_tokens.values()]

    def stop(self) -> None:
        """End every component (SIGTERM, then SIGKILL) in reverse start order, then remove the files
        that hold the credentials (the kubeconfig, the API server's token file)."""
        for _name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        remove_credential_files(self.workdir)

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
        """Remove every kwok node (the real nodes stay)."""
        for node in self.api.items("/api/v1/nodes"):
            if node["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node") == "fake":
                self.api.delete(f"/api/v1/nodes/{node['metadata']['name']}")

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
        # Nothing runs on a kwok node unless it asks to (the placement tests' stacks do).
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
        "status": {"allocatable": resources, "capacity": resources},
    }
