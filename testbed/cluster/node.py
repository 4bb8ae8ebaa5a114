"""A real node: containerd, a kubelet and kube-proxy in the node's own network namespace.

Each node has its own containerd (Debian's 1.6.20 with runc and the CNI plugins), root and state
directories, sockets, CNI bridge and pod CIDR, and its own cgroup root, so three kubelets share the
machine without seeing each other's pods. The processes run in the machine's mount namespace
(entered with ``nsenter --net``, not ``ip netns exec``, which would hide the cgroup mounts).

What these machines need, and why:
  - ``failCgroupV1: false`` and the ``cgroupfs`` driver: cgroup v1 hierarchies with cgroup2 beside
    them, and no systemd;
  - ``restrict_oom_score_adj``: root here lacks CAP_SYS_RESOURCE, so no process may lower its
    ``oom_score_adj`` (the pause container asks for -998);
  - a cgroup root per node, created in every hierarchy, with the machine's cpuset copied in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .images import PAUSE_IMAGE
from .network import CLUSTER_CIDR, CLUSTER_DNS_IP, NodeAddress

BED_STATE = Path("/var/lib/consul-testbed")
BED_RUN = Path("/run/consul-testbed")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CNI_BIN = "/usr/lib/cni"
# Every kubelet on the machine binds its device-plugin registry here (a fixed path, not under
# --root-dir), removing the file first: two kubelets starting at once can both remove it and one
# then fails to bind ("address already in use"). So the next kubelet starts only once this one has
# bound it.
DEVICE_PLUGIN_SOCKET = Path("/var/lib/kubelet/device-plugins/kubelet.sock")


@dataclass(frozen=True)
class NodeSpec:
    address: NodeAddress
    zone: str


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, the named systemd one, the unified one)."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return sorted({Path(line.split()[1]) for line in mounts if line.split()[2] in ("cgroup", "cgroup2")})


class Node:
    """Start with start(); stop() ends its pods, kubelet, kube-proxy and containerd, and cleanup() removes what is left."""

    def __init__(self, spec: NodeSpec, kube_binary: Path, api_server: str, ca_file: Path, token: str, proxy_token: str) -> None:
        self.spec = spec
        self.address = spec.address
        self.name = spec.address.name
        self.kube_binary = kube_binary
        self.api_server = api_server
        self.ca_file = ca_file
        self.state = BED_STATE / self.name
        self.run_dir = BED_RUN / self.name
        self.logs = BED_STATE / "logs" / self.name
        self.socket = self.run_dir / "containerd.sock"
        self.cgroup = f"/cbed-{self.name}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._token = token
        self._proxy_token = proxy_token

    # --- configuration ------------------------------------------------------------------------
    def _kubeconfig(self, path: Path, user: str, token: str) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "bed", "cluster": {"server": self.api_server, "certificate-authority": str(self.ca_file)}}],
                    "users": [{"name": user, "user": {"token": token}}],
                    "contexts": [{"name": "bed", "context": {"cluster": "bed", "user": user}}],
                    "current-context": "bed",
                }
            )
        )
        path.chmod(0o600)
        return path

    def _containerd_config(self) -> Path:
        cni = self.state / "cni"
        cni.mkdir(parents=True, exist_ok=True)
        (cni / "10-bed.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "bed",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": self.address.pod_cidr}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.state / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=1,
            )
        )
        config = self.state / "containerd.toml"
        config.write_text(
            f"""version = 2
root = "{self.state / "containerd"}"
state = "{self.run_dir / "containerd"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{self.socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.state / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni}"
"""
        )
        return config

    def _kubelet_config(self) -> Path:
        config = self.state / "kubelet.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "failCgroupV1": False,
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": self.cgroup,
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "address": self.address.ip,
                    "port": 10250,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": 10248,
                    # Only the API server on the bed's own link reaches this port.
                    "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
                    "authorization": {"mode": "AlwaysAllow"},
                    "clusterDNS": [CLUSTER_DNS_IP],
                    "clusterDomain": "cluster.local",
                    "resolvConf": "",
                    # The kubelets share the machine's /var/log: each keeps its pods' logs apart,
                    # or one node's log cleanup removes another's.
                    "podLogsDir": str(self.state / "pod-logs"),
                    "failSwapOn": False,
                    "enforceNodeAllocatable": [],
                    "protectKernelDefaults": False,
                    "serializeImagePulls": False,
                    # The bed shares one disk with the machine: never evict for its fill level.
                    "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "syncFrequency": "10s",
                    "fileCheckFrequency": "10s",
                    "nodeStatusReportFrequency": "10s",
                    "shutdownGracePeriod": "0s",
                    "maxPods": 60,
                    "kubeAPIQPS": 50,
                    "kubeAPIBurst": 100,
                    "rotateCertificates": False,
                    "serverTLSBootstrap": False,
                    "localStorageCapacityIsolation": True,
                }
            )
        )
        return config

    def _proxy_config(self) -> Path:
        config = self.state / "kube-proxy.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {
                        "kubeconfig": str(self._kubeconfig(self.state / "kube-proxy.kubeconfig", "kube-proxy", self._proxy_token))
                    },
                    "hostnameOverride": self.name,
                    "bindAddress": self.address.ip,
                    "mode": "iptables",
                    "clusterCIDR": str(CLUSTER_CIDR),
                    # The conntrack table size is the machine's, not the namespace's: leave it.
                    "conntrack": {"maxPerCore": 0, "min": 0},
                    "metricsBindAddress": "127.0.0.1:10249",
                    "healthzBindAddress": "127.0.0.1:10256",
                }
            )
        )
        return config

    # --- processes ----------------------------------------------------------------------------
    def _run(self, name: str, *argv: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                ["nsenter", f"--net={self.address.netns_path}", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _cgroups(self) -> None:
        for hierarchy in cgroup_hierarchies():
            path = hierarchy / self.cgroup.lstrip("/")
            path.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                for key in ("cpuset.cpus", "cpuset.mems"):
                    (path / key).write_text((hierarchy / key).read_text())

    def start_runtime(self) -> None:
        """containerd, waited for until it answers."""
        for directory in (self.state, self.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._cgroups()
        self._run("containerd", "containerd", "--config", str(self._containerd_config()))
        deadline = time.monotonic() + 30
        while subprocess.run(["ctr", "--address", str(self.socket), "version"], capture_output=True).returncode != 0:
            if self.processes["containerd"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: containerd did not start:\n{self.log_tail('containerd')}")
            time.sleep(0.2)

    def start_agents(self) -> None:
        """The kubelet and kube-proxy (the images must be imported before: nothing is pulled),
        returning once the kubelet has bound the machine's device-plugin socket."""
        before = _identity(DEVICE_PLUGIN_SOCKET)
        kubeconfig = self._kubeconfig(self.state / "kubelet.kubeconfig", f"system:node:{self.name}", self._token)
        self._run(
            "kubelet",
            str(self.kube_binary),
            "kubelet",
            f"--config={self._kubelet_config()}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.state / 'kubelet'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.address.ip}",
            f"--node-labels=topology.kubernetes.io/zone={self.spec.zone},bed.consul.test/real=true",
            "--v=1",
        )
        self._run("kube-proxy", str(self.kube_binary), "kube-proxy", f"--config={self._proxy_config()}", "--v=1")
        deadline = time.monotonic() + 60
        while _identity(DEVICE_PLUGIN_SOCKET) in (before, None):
            if self.processes["kubelet"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the kubelet did not bind {DEVICE_PLUGIN_SOCKET}:\n{self.log_tail('kubelet')}")
            time.sleep(0.1)

    def alive(self) -> list[str]:
        return [name for name, p in self.processes.items() if p.poll() is None]

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """kube-proxy and the kubelet, then every container (a stopped kubelet leaves its pods
        running), then containerd and its shims."""
        for name in ("kube-proxy", "kubelet"):
            _terminate(self.processes.get(name))
        if self.processes.get("containerd") and self.processes["containerd"].poll() is None:
            ctr = ["ctr", "--address", str(self.socket), "-n", "k8s.io"]
            for task in subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True).stdout.split():
                subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True)
        _terminate(self.processes.get("containerd"))


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, change time) of a file, None when there is none: a file made again differs."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_ctime_ns


def _terminate(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _mounts_under(*roots: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    prefixes = tuple(str(r) for r in roots)
    return [p for p in points if p.startswith(prefixes)]


def container_log_links() -> list[Path]:
    """The links a kubelet makes in /var/log/containers (a fixed path) to the bed's pod logs."""
    if not CONTAINER_LOG_LINKS.is_dir():
        return []
    return [p for p in CONTAINER_LOG_LINKS.iterdir() if p.is_symlink() and os.readlink(p).startswith(str(BED_STATE))]


def _cgroup_pids(directory: Path) -> list[int]:
    pids: list[int] = []
    for procs in directory.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def sweep() -> list[str]:
    """Remove everything any node left, from this run or a crashed one: containers (by their cgroup),
    shims, mounts (overlay roots, volumes, sandbox namespaces), cgroup directories and files.
    Returns what it found; call it after the nodes' namespaces are swept."""
    found: list[str] = []
    hierarchies = cgroup_hierarchies()
    for hierarchy in hierarchies:
        for directory in hierarchy.glob("cbed-*"):
            for pid in _cgroup_pids(directory):
                found.append(f"process {pid}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    for _ in range(3):
        points = _mounts_under(BED_STATE, BED_RUN)
        if not points:
            break
        found += [f"mount {p}" for p in points]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
    deadline = time.monotonic() + 10
    for hierarchy in hierarchies:
        for directory in hierarchy.glob("cbed-*"):
            found.append(f"cgroup {directory}")
            for child in [*sorted((d for d in directory.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True), directory]:
                while True:
                    try:
                        child.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
    for link in container_log_links():
        found.append(f"link {link}")
        link.unlink(missing_ok=True)
    for root in (BED_STATE, BED_RUN):
        if root.exists():
            keep = root / "logs"
            for entry in root.iterdir():
                if entry != keep:
                    shutil.rmtree(entry, ignore_errors=True)
    return found
