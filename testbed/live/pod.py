"""Turns one rendered pod (a pod template from the YAML users apply) into a running process.

What a kubelet and a container runtime do, for one container per pod:
  - volumes: ConfigMap and Secret files with their ``defaultMode`` (group-owned by ``fsGroup``),
    ``emptyDir`` (new with the pod, kept across container restarts) and a persistent directory per
    claim that outlives the pod;
  - environment from values, the downward API and ``secretKeyRef``/``configMapKeyRef``, and
    ``$(VAR)`` expanded in command and args, as Kubernetes does;
  - the pod's user, group and ``fsGroup``, a read-only root filesystem when asked for;
  - readiness and liveness probes (exec and httpGet) with their delays, periods, timeouts and
    thresholds; a failed liveness probe restarts the container, an exited container restarts with
    back-off (restartPolicy Always), a Job's pod runs once (Never).
The process runs in its own network namespace (network.py) through podinit.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PODINIT = Path(__file__).with_name("podinit.py")
IMAGE_PATH = "/opt/image/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0


@dataclass(frozen=True)
class Placement:
    """Where a pod runs: its names, its node and the objects it reads (ConfigMaps, Secrets)."""

    name: str
    namespace: str
    node: str
    node_ip: str
    configmaps: Mapping[str, Mapping[str, str]]
    secrets: Mapping[str, Mapping[str, str]]
    claims: Mapping[str, Path] = field(default_factory=dict)
    """Volume name to the claim's persistent directory (a StatefulSet's volumeClaimTemplates, or a
    ``persistentVolumeClaim`` volume)."""


@dataclass
class ProbeState:
    successes: int = 0
    failures: int = 0


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a known variable is replaced, $$ escapes, anything else stays."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


class Pod:
    """One pod with one container, started in its own network and mount namespaces."""

    def __init__(
        self,
        placement: Placement,
        template: Mapping[str, Any],
        *,
        network: Any,
        workdir: Path,
        images: Callable[[str], str],
        hosts_file: Path,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.placement = placement
        self.name = placement.name
        self.template = template
        self.spec: Mapping[str, Any] = template["spec"]
        self.labels: Mapping[str, str] = template.get("metadata", {}).get("labels", {})
        containers = self.spec["containers"]
        if len(containers) != 1:
            raise ValueError(f"pod {self.name}: the bed runs pods with one container, not {len(containers)}")
        self.container: Mapping[str, Any] = containers[0]
        self.restart_policy = self.spec.get("restartPolicy", "Always")
        self._network = network
        self._images = images
        self._on_change = on_change
        self.dir = workdir / "pods" / self.name
        self.log_path = workdir / "logs" / f"{self.name}.log"
        self.hosts_file = hosts_file
        self.ready = False
        self.restarts = 0
        self.exit_code: int | None = None
        self.deleted = False
        self.events: list[tuple[float, str]] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.netns, self.ip = network.attach()
        self._prepare()
        self._start_container()
        self._thread = threading.Thread(target=self._kubelet, name=f"kubelet-{self.name}", daemon=True)
        self._thread.start()

    # --- identity -------------------------------------------------------------------------
    @property
    def security(self) -> tuple[int, int, list[int]]:
        pod_ctx = self.spec.get("securityContext", {})
        ctx = {**pod_ctx, **self.container.get("securityContext", {})}
        uid, gid = int(ctx.get("runAsUser", 0)), int(ctx.get("runAsGroup", 0))
        groups = [gid, *([pod_ctx["fsGroup"]] if "fsGroup" in pod_ctx else []), *pod_ctx.get("supplementalGroups", [])]
        return uid, gid, sorted(set(groups))

    @property
    def fs_group(self) -> int:
        return int(self.spec.get("securityContext", {}).get("fsGroup", 0))

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def wait_started(self, timeout: float = 15) -> bool:
        """Whether the container started: podinit has chrooted and become the container's command
        (a runtime's "running" state). Until then its pid is still the launcher on the machine's root."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid
            if pid is None and self.exit_code is not None:
                return False
            try:
                if pid is not None and os.readlink(f"/proc/{pid}/root") != "/":
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def event(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    # --- environment and volumes ----------------------------------------------------------
    def environment(self) -> dict[str, str]:
        p = self.placement
        fields = {
            "metadata.name": p.name,
            "metadata.namespace": p.namespace,
            "spec.nodeName": p.node,
            "status.podIP": self.ip,
            "status.hostIP": p.node_ip,
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
        }
        env = {"PATH": IMAGE_PATH, "HOSTNAME": p.name, "HOME": "/root"}
        for item in self.container.get("env", []):
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = expand(item.get("value", ""), env)
            elif "fieldRef" in source:
                env[item["name"]] = fields[source["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[item["name"]] = p.secrets[ref["name"]][ref["key"]]
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                env[item["name"]] = p.configmaps[ref["name"]][ref["key"]]
            else:
                raise ValueError(f"pod {self.name}: unsupported env source {source}")
        return env

    def _write_files(self, target: Path, files: Mapping[str, str], mode: int) -> None:
        target.mkdir(parents=True, exist_ok=True)
        os.chown(target, 0, self.fs_group)
        target.chmod(0o755)
        for name, content in files.items():
            path = target / name
            path.write_text(content)
            os.chown(path, 0, self.fs_group)
            path.chmod(mode)

    def _prepare(self) -> None:
        """Lay out every volume of the pod under its directory (claims live outside it)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "root").mkdir(parents=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.volume_paths: dict[str, Path] = {}
        for volume in self.spec.get("volumes", []):
            name, path = volume["name"], self.dir / "volumes" / volume["name"]
            if "configMap" in volume:
                source = volume["configMap"]
                self._write_files(path, self.placement.configmaps[source["name"]], source.get("defaultMode", 0o644))
            elif "secret" in volume:
                source = volume["secret"]
                data = self.placement.secrets[source["secretName"]]
                if "items" in source:
                    data = {item["path"]: data[item["key"]] for item in source["items"]}
                self._write_files(path, data, source.get("defaultMode", 0o644))
            elif "emptyDir" in volume:
                path.mkdir(parents=True)
                path.chmod(0o777)
            elif "persistentVolumeClaim" in volume:
                continue  # a claim: its directory comes with the placement, below
            else:
                raise ValueError(f"pod {self.name}: unsupported volume {volume}")
            self.volume_paths[name] = path
        for name, path in self.placement.claims.items():
            self.volume_paths.setdefault(name, path)
        for path in self.placement.claims.values():
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, 0, self.fs_group)
            path.chmod(0o2775)
        (self.dir / "resolv.conf").write_text(
            f"search {self.placement.namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.53\n"
        )

    def _container_spec(self, env: Mapping[str, str]) -> dict[str, Any]:
        c = self.container
        command = [expand(a, env) for a in c.get("command", [])]
        args = [expand(a, env) for a in c.get("args", [])]
        uid, gid, groups = self.security
        mounts = []
        for mount in c.get("volumeMounts", []):
            source = self.volume_paths.get(mount["name"])
            if source is None:
                raise ValueError(f"pod {self.name}: volume {mount['name']} is not defined")
            mounts.append({"source": str(source), "target": mount["mountPath"], "read_only": bool(mount.get("readOnly", False))})
        return {
            "root": str(self.dir / "root"),
            "image_bin": self._images(c["image"]),
            "etc_files": {"hosts": str(self.hosts_file), "resolv.conf": str(self.dir / "resolv.conf")},
            "mounts": mounts,
            "read_only_root": bool(c.get("securityContext", {}).get("readOnlyRootFilesystem", False)),
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "env": dict(env),
            "argv": command + args if command else args,
        }

    # --- the container --------------------------------------------------------------------
    def _start_container(self) -> None:
        env = self.environment()
        spec_file = self.dir / "container.json"
        spec_file.write_text(json.dumps(self._container_spec(env)))
        spec_file.chmod(0o600)
        log = self.log_path.open("ab")
        log.write(f"--- {time.strftime('%H:%M:%S')} start #{self.restarts} of {self.name} at {self.ip}\n".encode())
        log.flush()
        argv = [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            str(PODINIT),
            str(spec_file),
        ]
        with self._lock:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.exit_code = None
        log.close()
        self.started_at = time.monotonic()
        self.event("started")

    def _kill_container(self, grace: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def grace_period(self) -> float:
        return float(self.spec.get("terminationGracePeriodSeconds", 30))

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self.event("ready" if ready else "not ready")
            self._on_change()

    def _kubelet(self) -> None:
        """Probes and restarts, on the schedule the pod spec gives, until the pod is deleted."""
        backoff = BACKOFF_START
        readiness, liveness = self.container.get("readinessProbe"), self.container.get("livenessProbe")
        next_run: dict[str, float] = {}
        states = {"readiness": ProbeState(), "liveness": ProbeState()}
        while not self._stop.wait(0.2):
            process = self._process
            if process is None:
                continue
            code = process.poll()
            if code is not None:
                self._set_ready(False)
                if self.exit_code is None:
                    self.exit_code = code
                    self.event(f"exited {code}")
                    self._on_change()
                if self.restart_policy == "Never" or (self.restart_policy == "OnFailure" and code == 0):
                    continue
                if time.monotonic() - self.started_at > 600:
                    backoff = BACKOFF_START
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)
                self.restarts += 1
                self._start_container()
                next_run.clear()
                states = {"readiness": ProbeState(), "liveness": ProbeState()}
                continue
            now = time.monotonic()
            if readiness is None and not self.ready:
                self._set_ready(True)
            for kind, probe in (("readiness", readiness), ("liveness", liveness)):
                if probe is None:
                    continue
                due = next_run.setdefault(kind, self.started_at + probe.get("initialDelaySeconds", 0))
                if now < due:
                    continue
                next_run[kind] = now + probe.get("periodSeconds", 10)
                state = states[kind]
                if self._probe(probe):
                    state.successes, state.failures = state.successes + 1, 0
                    if kind == "readiness" and state.successes >= probe.get("successThreshold", 1):
                        self._set_ready(True)
                else:
                    state.successes, state.failures = 0, state.failures + 1
                    if state.failures >= probe.get("failureThreshold", 3):
                        if kind == "readiness":
                            self._set_ready(False)
                        elif not self._stop.is_set():
                            self.event("liveness failed: restarting")
                            self._set_ready(False)
                            self._kill_container(self.grace_period)
                            self.restarts += 1
                            self._start_container()
                            next_run.clear()
                            states = {"readiness": ProbeState(), "liveness": ProbeState()}
                            break

    def _probe(self, probe: Mapping[str, Any]) -> bool:
        timeout = probe.get("timeoutSeconds", 1)
        try:
            if "exec" in probe:
                return self.exec(probe["exec"]["command"], timeout=timeout).returncode == 0
            if "httpGet" in probe:
                get = probe["httpGet"]
                port = self._port(get["port"])
                scheme = get.get("scheme", "HTTP").lower()
                url = f"{scheme}://{self.ip}:{port}{get.get('path', '/')}"
                out = subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        self.netns,
                        "curl",
                        "-sk",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--max-time",
                        str(timeout),
                        url,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=timeout + 5,
                )
                return out.stdout.isdigit() and 200 <= int(out.stdout) < 400
            if "tcpSocket" in probe:
                port = self._port(probe["tcpSocket"]["port"])
                connected = subprocess.run(
                    ["ip", "netns", "exec", self.netns, "bash", "-c", f"exec 3<>/dev/tcp/{self.ip}/{port}"],
                    capture_output=True,
                    timeout=timeout + 5,
                )
                return connected.returncode == 0
        except subprocess.TimeoutExpired:
            return False
        raise ValueError(f"pod {self.name}: unsupported probe {probe}")

    def _port(self, port: int | str) -> int:
        if isinstance(port, int):
            return port
        return next(int(p["containerPort"]) for p in self.container.get("ports", []) if p.get("name") == port)

    # --- what kubectl offers --------------------------------------------------------------
    def exec(self, command: list[str], *, timeout: float = 30, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`kubectl exec`: the command in the container's namespaces, root and user, with its environment."""
        if not self.wait_started():
            return subprocess.CompletedProcess(command, 126, "", f"container of {self.name} is not running")
        pid = self.pid
        if pid is None:
            return subprocess.CompletedProcess(command, 126, "", f"container of {self.name} is not running")
        uid, gid, _ = self.security
        run_env = {**self.environment(), **(env or {})}
        argv = ["nsenter", "-t", str(pid), "-n", "-m", "-r", "-w", "-S", str(uid), "-G", str(gid), "--", *command]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=run_env)
        except subprocess.TimeoutExpired as error:
            return subprocess.CompletedProcess(command, 124, str(error.stdout or ""), f"timed out after {timeout} s")

    def restart_container(self) -> None:
        """Kill the container (as a crash would); the kubelet starts it again in the same pod."""
        self._kill_container(0)

    def delete(self, grace: float | None = None) -> None:
        """`kubectl delete pod`: SIGTERM, the grace period, SIGKILL; the pod's namespace and emptyDirs go."""
        self._stop.set()
        self._set_ready(False)
        self._kill_container(self.grace_period if grace is None else grace)
        self._thread.join(timeout=5)
        self.deleted = True
        self._network.detach(self.netns)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.event("deleted")
        self._on_change()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
