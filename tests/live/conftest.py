"""Fixtures of the real-Consul bed: render a stack with the real engine, run it, tear it down.

`make live` builds Consul 1.16.1 and the engine first. Every test here runs against processes
started from the rendered YAML; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import run_stack  # noqa: E402

from testbed.live import network  # noqa: E402
from testbed.live.cluster import Bed, load_manifests  # noqa: E402
from testbed.live.pod import Pod  # noqa: E402

CONSUL_VERSION = "1.16.1"
CONSUL_BIN = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "consul-testbed" / f"consul-{CONSUL_VERSION}" / "consul"
STACK_FILE = Path(__file__).with_name("Pulumi.live.yaml")
LOGS = ROOT / "testbed" / "logs" / "live"


def _check_machine() -> None:
    if os.geteuid() != 0:
        pytest.fail("the live bed needs root: it creates network namespaces and mounts")
    if not CONSUL_BIN.exists():
        pytest.fail(f"no Consul binary at {CONSUL_BIN}: run `make live` (it builds Consul {CONSUL_VERSION} once)")
    for tool in ("ip", "unshare", "nsenter", "curl", "dig"):
        if shutil.which(tool) is None:
            pytest.fail(f"the live bed needs `{tool}` (.ci/run installs it)")


def image_resolver(workdir: Path):
    """Maps a container image to a directory holding its binaries: only the Consul release built here."""
    image_dir = workdir / "images" / f"consul-{CONSUL_VERSION}"
    image_dir.mkdir(parents=True, exist_ok=True)
    target = image_dir / "consul"
    if not target.exists():
        try:
            os.link(CONSUL_BIN, target)
        except OSError:
            shutil.copy2(CONSUL_BIN, target)

    def resolve(image: str) -> str:
        tag = image.rsplit(":", 1)[-1]
        if not image.split(":")[0].endswith("consul") or tag != CONSUL_VERSION:
            raise ValueError(f"the bed runs hashicorp/consul:{CONSUL_VERSION} only, not {image}")
        return str(image_dir)

    return resolve


@dataclass(frozen=True)
class Rendered:
    """The live stack rendered by the real engine: the YAML a user would apply, and the stack outputs."""

    directory: Path
    outputs: dict[str, object]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> Rendered:
    """LIVE_MANIFESTS=<dir> runs the bed on YAML rendered elsewhere (an older release, your own
    stack), with the stack outputs from <dir>/outputs.json."""
    given = os.environ.get("LIVE_MANIFESTS")
    if given:
        outputs = Path(given) / "outputs.json"
        return Rendered(Path(given), json.loads(outputs.read_text()) if outputs.exists() else {})
    home = tmp_path_factory.mktemp("live-render")
    out = home / "rendered"
    started = time.monotonic()
    result = run_stack.render_stack("live", home, out, STACK_FILE).up(color="never")
    assert result.summary.result == "succeeded"
    print(f"\nlive: rendered the stack in {time.monotonic() - started:.1f} s")
    return Rendered(out, {k: v.value for k, v in result.outputs.items()})


def start_bed(rendered: Rendered, workdir: Path) -> Bed:
    _check_machine()
    return Bed(load_manifests(rendered.directory), workdir, image_resolver(workdir), nodes=3).start()


@pytest.fixture(scope="module")
def bed(rendered, tmp_path_factory, request) -> Iterator[Bed]:
    """A fresh bed per test module, all pods Ready and the ACL Job complete; logs kept on failure."""
    workdir = tmp_path_factory.mktemp("bed")
    started = time.monotonic()
    running = start_bed(rendered, workdir)
    try:
        wait_formed(running)
        print(f"\nlive: bed start to all Ready in {time.monotonic() - started:.1f} s")
        yield running
    finally:
        running.close()
        keep_logs(workdir, request.node.name)
        shutil.rmtree(workdir, ignore_errors=True)
    leftovers = network.namespaces()
    assert leftovers == [], f"namespaces left behind: {leftovers}"


def wait_formed(bed: Bed, timeout: float = 180) -> float:
    """Every pod Ready by its own probe and the ACL Job complete."""
    job = bed.of_kind("Job")[0]["metadata"]["name"]
    expected = len(bed.of_kind("StatefulSet")) and sum(s["spec"]["replicas"] for s in bed.of_kind("StatefulSet")) + len(bed.nodes)
    return bed.wait_for(
        "every agent Ready and the ACL Job complete",
        lambda: len([p for p in bed.tier("server") + bed.tier("client") if p.ready]) == expected and bed.job_status(job) == "Complete",
        timeout,
    )


def keep_logs(workdir: Path, name: str) -> None:
    target = LOGS / name
    shutil.rmtree(target, ignore_errors=True)
    if (workdir / "logs").exists():
        shutil.copytree(workdir / "logs", target)


def consul(pod: Pod, *args: str, token: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The consul CLI inside a pod (kubectl exec), against the agent's local HTTP API."""
    env = {"CONSUL_HTTP_ADDR": "http://127.0.0.1:8500"}
    if token is not None:
        env["CONSUL_HTTP_TOKEN"] = token
    return pod.exec(["consul", *args], env=env, timeout=timeout)


def http(pod: Pod, method: str, path: str, token: str | None = None, body: object | None = None) -> int:
    """The HTTP status of a call to the pod's local agent API (`body` sent as JSON)."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, f"http://127.0.0.1:8500{path}"]
    if token is not None:
        cmd += ["-H", f"X-Consul-Token: {token}"]
    if body is not None:
        cmd += ["--data", json.dumps(body)]
    return int(pod.exec(cmd).stdout or 0)


def management_token(bed: Bed) -> str:
    return bed.secrets["consul-acl-tokens"]["management"]


def leader(bed: Bed) -> str:
    """The leader's address as a server agent reports it ("" without one)."""
    for pod in bed.tier("server"):
        out = pod.exec(["curl", "-s", "--max-time", "2", "http://127.0.0.1:8500/v1/status/leader"], timeout=5)
        if out.returncode == 0 and out.stdout.strip('"\n'):
            return out.stdout.strip('"\n')
    return ""


def workload(bed: Bed, rendered: Rendered, name: str, node: int = 0, service_token: str | None = None) -> Pod:
    """An application pod wired to Consul the way the README says: CONSUL_HTTP_ADDR from the
    stack's agentAddress output, CONSUL_HTTP_TOKEN from its service token Secret."""
    env: list[dict[str, object]] = [
        {"name": "CONSUL_HTTP_ADDR", "value": rendered.outputs["agentAddress"]},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    if service_token is not None:
        env.append(
            {"name": "CONSUL_HTTP_TOKEN", "valueFrom": {"secretKeyRef": {"name": f"consul-service-token-{service_token}", "key": "token"}}}
        )
    template = {
        "metadata": {"labels": {"app": name}},
        "spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True},
            "containers": [{"name": name, "image": f"hashicorp/consul:{CONSUL_VERSION}", "command": ["sleep", "infinity"], "env": env}],
        },
    }
    return bed.run_pod(name, template, bed.nodes[node])
