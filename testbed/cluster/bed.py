"""The real-node bed: the control plane, three real nodes, CoreDNS and the NetworkPolicy agent.

    python -m testbed.cluster.bed up      # make cluster-up: start it, print the kubeconfig's path
    python -m testbed.cluster.bed down    # make cluster-down: stop it and remove everything it made

start() sweeps whatever an earlier run left, then brings up, in order: the network
(network.py), the control plane (controlplane.py), each node's containerd with the bed's images
imported (images.py), the kubelets and kube-proxies (node.py), and the add-ons as real pods
(addons.py). stop() ends it all and proves nothing is left: no process, mount, namespace, cgroup
or file of the bed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from . import addons, images, network, node
from .api import Api, ApiError
from .controlplane import ControlPlane, remove_credential_files
from .network import CLUSTER_DNS_IP, NodeAddress

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "consul-testbed"
ZONES = ("zone-a", "zone-b", "zone-c")
UPSTREAM_HOSTS = {"upstream.bed.test": network.HOST_IP}
VOLUMES = node.BED_STATE / "volumes"
LOCK = Path("/run/lock/consul-testbed.lock")
CONSUL_UID, CONSUL_GID = 100, 1000


def _cached(script: str, pattern: str) -> Path:
    """Where a build script of testbed/ caches its output, from the script's own version variables."""
    text = (ROOT / "testbed" / script).read_text()
    values = dict(re.findall(r"^([A-Z0-9_]+)=(\S+)$", text, re.MULTILINE))
    return CACHE / pattern.format(**values)


def kube_binary() -> Path:
    return _cached("build-kube.sh", "kube-{K8S_VERSION}-r{RECIPE}/kube-testbed")


def consul_binary() -> Path:
    return _cached("build-consul.sh", "consul-{VERSION}/consul")


def addon_binaries() -> tuple[Path, Path]:
    directory = _cached("build-addons.sh", "addons-r{RECIPE}")
    return directory / "coredns", directory / "kube-router"


def missing_binaries() -> list[str]:
    """The builds that have not run yet, each with the make target that runs it."""
    wanted = {kube_binary(): "make kube-binaries", consul_binary(): "make consul-binary"}
    wanted.update(dict.fromkeys(addon_binaries(), "make addon-binaries"))
    return [f"{path} ({target})" for path, target in wanted.items() if not path.exists()]


class Cluster:
    """start() / stop(); `api`, `kubeconfig` and `kubectl()` in between."""

    def __init__(self, workdir: Path, node_count: int = 3) -> None:
        self.workdir = workdir
        self.addresses = [NodeAddress(i) for i in range(1, node_count + 1)]
        self.plane = ControlPlane(kube_binary(), workdir / "control-plane")
        self.nodes: list[node.Node] = []
        self.timings: dict[str, float] = {}
        self._lock: IO[str] | None = None

    @property
    def api(self) -> Api:
        return self.plane.api

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """kubectl, as a user runs it, with the bed's kubeconfig."""
        result = subprocess.run(
            [str(kube_binary()), "kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr.strip()}")
        return result

    def apply(self, objects: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input="\n".join(json.dumps(o) for o in objects))

    def _step(self, name: str, action: Callable[[], object]) -> None:
        started = time.monotonic()
        action()
        self.timings[name] = time.monotonic() - started

    def start(self, volumes: int = 30) -> Cluster:
        missing = missing_binaries()
        if missing:
            raise RuntimeError("the bed's builds are missing: " + ", ".join(missing))
        # One bed at a time on a machine: a second run waits here instead of sweeping the first away.
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        lock = LOCK.open("w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        self._lock = lock
        started = time.monotonic()
        sweep()
        shutil.rmtree(node.BED_STATE / "logs", ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        coredns, netpol = addon_binaries()
        tars: list[Path] = []
        self._step("images", lambda: tars.extend(images.build(images.Binaries(consul_binary(), coredns, netpol), CACHE / "images")))
        self._step("network", lambda: network.create(self.addresses))
        self._step("control plane", lambda: self.plane.start([a.name for a in self.addresses]))
        self.nodes = [
            node.Node(
                node.NodeSpec(address, ZONES[(address.index - 1) % len(ZONES)]),
                kube_binary(),
                self.plane.server,
                self.plane.ca_file,
                self.plane.node_token(address.name),
                self.plane.proxy_token,
            )
            for address in self.addresses
        ]

        def runtime(n: node.Node) -> None:
            n.start_runtime()
            images.import_all(tars, str(n.socket))

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            self._step("containerd and images", lambda: list(pool.map(runtime, self.nodes)))
        for n in self.nodes:
            n.start_agents()
        self._step("nodes Ready", lambda: self.wait("every node Ready", self._nodes_ready, 120))
        self.apply(
            addons.coredns(CLUSTER_DNS_IP, images.COREDNS_IMAGE, UPSTREAM_HOSTS)
            + addons.network_policies(images.NETPOL_IMAGE, str(network.SERVICE_CIDR))
        )
        self._step("add-ons Ready", lambda: self.wait("CoreDNS and the NetworkPolicy agent Ready", self._addons_ready, 180))
        self.add_volumes(volumes)
        self.timings["total"] = time.monotonic() - started
        return self

    def add_volumes(self, count: int, size: str = "10Gi") -> None:
        """PersistentVolumes without a class, for claims without one to bind to: directories of the
        machine (which every node shares, as network storage would be), owned by the consul user as
        fsGroup would make them. recycle_volumes() makes released ones available again."""
        objects = []
        for i in range(count):
            path = VOLUMES / f"pv-{i:02}"
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, CONSUL_UID, CONSUL_GID)
            path.chmod(0o2775)
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": f"bed-pv-{i:02}"},
                    "spec": {
                        "capacity": {"storage": size},
                        "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "hostPath": {"path": str(path), "type": "Directory"},
                    },
                }
            )
        self.apply(objects)

    def recycle_volumes(self) -> list[str]:
        """What an administrator does with Retain volumes whose claims are gone: wipe, then free them."""
        freed = []
        for pv in self.api.items("/api/v1/persistentvolumes"):
            if pv.get("status", {}).get("phase") != "Released":
                continue
            path = Path(pv["spec"]["hostPath"]["path"])
            for entry in path.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            self.api.request(
                "PATCH", f"/api/v1/persistentvolumes/{pv['metadata']['name']}", {"spec": {"claimRef": None}}, "application/merge-patch+json"
            )
            freed.append(pv["metadata"]["name"])
        return freed

    def _nodes_ready(self) -> bool:
        for n in self.nodes:
            dead = set(n.processes) - set(n.alive())
            if dead:
                name = sorted(dead)[0]
                raise RuntimeError(f"{n.name}: {name} exited:\n{n.log_tail(name)}")
        ready = {
            item["metadata"]["name"]
            for item in self.api.items("/api/v1/nodes")
            if any(c["type"] == "Ready" and c["status"] == "True" for c in item["status"].get("conditions", []))
        }
        return {a.name for a in self.addresses} <= ready

    def _addons_ready(self) -> bool:
        dns = self.api.get("/apis/apps/v1/namespaces/kube-system/deployments/coredns")
        agents = self.api.get("/apis/apps/v1/namespaces/kube-system/daemonsets/kube-router")
        return bool(
            dns.get("status", {}).get("readyReplicas", 0) == dns["spec"]["replicas"]
            and agents.get("status", {}).get("numberReady", 0) == len(self.nodes)
        )

    def wait(self, what: str, check: Callable[[], bool], timeout: float, interval: float = 0.25) -> float:
        started = time.monotonic()
        while True:
            try:
                if check():
                    return time.monotonic() - started
            except (ApiError, OSError):
                pass
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s")
            time.sleep(interval)

    def stop(self) -> list[str]:
        """Stop every node and the control plane; returns what the sweep still had to remove. A
        cluster that never got the machine's lock (its start was interrupted while waiting) has
        nothing to stop, and must not sweep the bed another run is using."""
        if self._lock is None:
            return []
        for n in self.nodes:
            n.stop()
        self.plane.stop()
        logs = self.workdir / "logs"
        if node.BED_STATE.joinpath("logs").exists():
            shutil.copytree(node.BED_STATE / "logs", logs, dirs_exist_ok=True)
        found = sweep()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        return found


def sweep() -> list[str]:
    """Remove everything of the bed, from this run or a crashed one, in the order that works: the
    nodes' processes (kubelet, containerd, shims) with their namespaces' processes, then containers,
    mounts and cgroups, then the namespaces and the machine's link."""
    found = []
    for pid, exe in bed_processes():  # a control plane or runtime a crashed run left
        found.append(f"process {pid} ({exe})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while bed_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    for namespace in network.namespaces():
        network.kill_namespace_processes(namespace)
    found += node.sweep()
    found += [f"namespace {n}" for n in network.sweep()]
    return found


def leftovers() -> list[str]:
    """What of the bed is still on the machine: it must be nothing once stop() returned."""
    left = [f"namespace {n}" for n in network.namespaces()]
    if network.ip("link", "show", network.HOST_LINK, check=False).returncode == 0:
        left.append(f"link {network.HOST_LINK}")
    left += [f"mount {m}" for m in node._mounts_under(node.BED_STATE, node.BED_RUN)]
    left += [f"link {link}" for link in node.container_log_links()]
    for hierarchy in node.cgroup_hierarchies():
        left += [f"cgroup {d}" for d in hierarchy.glob("cbed-*")]
    left += [f"process {pid} ({exe})" for pid, exe in bed_processes()]
    return left


def credential_copies(credentials: list[str], folders: list[Path], trees: list[Path]) -> list[str]:
    """The files that still hold one of `credentials`: those directly in `folders` (the system's
    temporary directory, shared with everything else on the machine) and those anywhere under
    `trees` (the run's own directories)."""
    paths = [p for folder in folders for p in folder.iterdir()] + [p for tree in trees for p in tree.rglob("*")]
    wanted = [credential.encode() for credential in credentials]
    return [f"credential in {path}" for path in paths if any(w in _regular_file_content(path) for w in wanted)]


def _regular_file_content(path: Path) -> bytes:
    """The content of `path` if it is a regular file, else nothing: a FIFO or a socket in a shared
    directory is never opened (opening a FIFO to read lets a writer waiting for its reader go on,
    and lose what it writes), a symbolic link not followed. The open itself neither waits nor
    follows a link, should the path have been replaced since it was looked at."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return b""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return b""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return b""
    with os.fdopen(fd, "rb") as file:
        return file.read()


def bed_processes() -> list[tuple[int, str]]:
    """Every running process of the bed's programs: the cluster's multi-call binary, containerd and its shims."""
    programs = {str(kube_binary()), "/usr/bin/containerd", "/usr/bin/containerd-shim-runc-v2"}
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            exe = os.readlink(proc / "exe")
        except OSError:
            continue
        if exe in programs:
            found.append((int(proc.name), exe))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.cluster.bed")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--workdir", type=Path, default=ROOT / "testbed" / "logs" / "cluster")
    args = parser.parse_args()
    if args.action == "down":
        found = sweep()
        remove_credential_files(args.workdir / "control-plane")  # what `up` left for you
        print("removed:\n  " + "\n  ".join(found) if found else "nothing of the bed was running")
        left = leftovers()
        print("left behind: " + ", ".join(left) if left else "nothing left behind")
        return 1 if left else 0
    cluster = Cluster(args.workdir)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    print(json.dumps({k: round(v, 1) for k, v in cluster.timings.items()}))
    print(f"export KUBECONFIG={cluster.kubeconfig}   # `make cluster-down` stops it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
