"""Runs `consul validate` inside a Consul image, on your cluster, on the agent config a stack renders.

    make validate-config STACK=prod [IMAGE=hashicorp/consul:X.Y.Z] [NAMESPACE=consul]

For each agent tier of rendered/<stack> (the servers' StatefulSet, the clients' DaemonSet or
StatefulSet), it gathers the files its `consul agent` loads (`-config-dir` and `-config-file`,
with `$(POD_NAME)` as its first pod), from the ConfigMaps and Secrets the tier mounts, and runs
`consul validate` on them in one short-lived pod of `IMAGE` (default: the image the stack runs),
with `kubectl run` in the current context. Values from Secrets never leave this machine: each is
replaced by a placeholder of the same form (a gossip key by a key of the same length, a token by a
UUID), which is all `consul validate` checks of them. Exits 1, with Consul's message, when the
image rejects a file; 3 when the check could not run (the image not pulled, the pod not admitted).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

AGENT_CONTAINER = "consul"
PLACEHOLDER_TOKEN = "00000000-0000-4000-8000-000000000000"
VALID = "Configuration is valid!"


class ValidationError(Exception):
    """The rendered stack cannot be validated as asked; the message says why."""


@dataclass(frozen=True)
class Tier:
    """One agent tier: its workload's name and namespace, the image it runs, the files its agent
    loads (path in the pod -> text) and the paths it names on its command line."""

    name: str
    namespace: str
    image: str
    files: dict[str, str]
    paths: list[str]


def manifests(rendered: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(rendered.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "kind" in doc:
                yield doc


def source_files(obj: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's or Secret's files as text."""
    files = dict(obj.get("data") or {}) if obj["kind"] == "ConfigMap" else {}
    if obj["kind"] == "Secret":
        files = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        files.update(obj.get("stringData") or {})
    return files


def placeholder(value: Any, key: str = "") -> Any:
    """`value` with every string replaced by one of the same form: no secret value leaves."""
    if isinstance(value, dict):
        return {k: placeholder(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [placeholder(v, key) for v in value]
    if isinstance(value, str):
        if key == "encrypt":
            return base64.b64encode(bytes(len(base64.b64decode(value)))).decode()
        return PLACEHOLDER_TOKEN
    return value


def tiers(rendered: Path) -> list[Tier]:
    objects = list(manifests(rendered))
    sources = {(o["kind"], o["metadata"]["name"]): o for o in objects if o["kind"] in ("ConfigMap", "Secret")}
    found = []
    for workload in objects:
        if workload["kind"] not in ("StatefulSet", "DaemonSet"):
            continue
        pod = workload["spec"]["template"]["spec"]
        container = next((c for c in pod["containers"] if c["name"] == AGENT_CONTAINER), None)
        if container is None or container.get("args", [""])[0] != "agent":
            continue
        pod_name = f"{workload['metadata']['name']}-0"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", []) if m["name"] in volumes}
        files: dict[str, str] = {}
        paths = []
        for arg in container["args"][1:]:
            flag, _, path = arg.partition("=")
            if flag not in ("-config-dir", "-config-file"):
                continue
            path = path.replace("$(POD_NAME)", pod_name)
            directory = path if flag == "-config-dir" else os.path.dirname(path)
            volume = mounts.get(directory)
            if volume is None:
                raise ValidationError(f"{workload['metadata']['name']}: nothing is mounted at {directory}")
            if "configMap" in volume:
                kind, name, items = "ConfigMap", volume["configMap"]["name"], volume["configMap"].get("items")
            elif "secret" in volume:
                kind, name, items = "Secret", volume["secret"]["secretName"], volume["secret"].get("items")
            else:
                raise ValidationError(f"{workload['metadata']['name']}: {directory} is neither a ConfigMap nor a Secret volume")
            if items:
                raise ValidationError(
                    f"{workload['metadata']['name']}: {kind} {name} is mounted with items, which this check does not follow"
                )
            source = sources.get((kind, name))
            if source is None:
                raise ValidationError(f"{workload['metadata']['name']}: {kind} {name} is not in {rendered}")
            for key, text in source_files(source).items():
                wanted = key.endswith((".json", ".hcl")) if flag == "-config-dir" else f"{directory}/{key}" == path
                if wanted:
                    if kind == "Secret" and not key.endswith(".json"):
                        raise ValidationError(
                            f"{workload['metadata']['name']}: {key} of Secret {name} is not JSON: its values can't be replaced"
                        )
                    files[f"{directory}/{key}"] = json.dumps(placeholder(json.loads(text))) if kind == "Secret" else text
            paths.append(path)
        found.append(Tier(workload["metadata"]["name"], workload["metadata"].get("namespace", "default"), container["image"], files, paths))
    if not found:
        raise ValidationError(f"no Consul agent workload in {rendered}: run make render first")
    return found


def bundle(tier: Tier) -> bytes:
    """The tier's files as a tar, at their paths in the pod under the tier's name."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, text in sorted(tier.files.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"{tier.name}{path}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def validation_pod(name: str, image: str, script: str) -> dict[str, Any]:
    """The overrides of `kubectl run`: the script on stdin's tar, Pod Security "restricted"."""
    return {
        "apiVersion": "v1",
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 100, "seccompProfile": {"type": "RuntimeDefault"}},
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": name,
                    "image": image,
                    "command": ["/bin/sh", "-ec", script],
                    "stdin": True,
                    "stdinOnce": True,
                    "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                }
            ],
        },
    }


# The check pod may have to pull the image first: it gets this long to start, and the whole check
# a little longer.
POD_START_TIMEOUT = "5m"
CHECK_TIMEOUT = 420


def validate(tier: Tier, image: str, namespace: str, kubectl: str) -> tuple[str, str]:
    """`consul validate` on the tier's files in a pod of `image`: ("valid", "rejected" or "not run"),
    and what it printed. "not run": the pod never ran Consul (a pull, admission or timeout)."""
    name = f"consul-validate-{uuid.uuid4().hex[:8]}"
    paths = " ".join(shlex.quote(f"/tmp/{tier.name}{p}") for p in tier.paths)
    # What the agent gets as a flag rather than in a file: its address (-advertise=$(POD_IP)), which
    # Consul must have where it finds no private IPv4 address of its own: the check pod's.
    flags = f"/tmp/{tier.name}/flags.json"
    script = (
        f'tar -xf - -C /tmp && printf \'{{"advertise_addr": "%s"}}\' "$POD_IP" > {flags} && '
        f"consul version | head -n 1 && consul validate {paths} {flags}"
    )
    overrides = json.dumps(validation_pod(name, image, script))
    argv = [
        kubectl,
        "-n",
        namespace,
        "run",
        name,
        "--rm",
        "-i",
        "-q",
        "--restart=Never",
        f"--pod-running-timeout={POD_START_TIMEOUT}",
        f"--image={image}",
        f"--overrides={overrides}",
    ]
    try:
        proc = subprocess.run(argv, input=bundle(tier), capture_output=True, timeout=CHECK_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        subprocess.run(
            [kubectl, "-n", namespace, "delete", "pod", name, "--ignore-not-found", "--wait=false"], capture_output=True, check=False
        )
        return "not run", f"no answer within {CHECK_TIMEOUT} s; pod {name} deleted"
    output = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    if proc.returncode == 0 and VALID in output:
        return "valid", output
    return ("rejected" if "Consul v" in output else "not run"), output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rendered", type=Path, help="a rendered stack: rendered/<stack>")
    parser.add_argument("--image", default="", help="the Consul image to validate in (default: the stack's)")
    parser.add_argument("--namespace", default="", help="where the pod runs (default: the stack's namespace)")
    args = parser.parse_args(argv)
    kubectl = os.environ.get("KUBECTL", "kubectl")
    try:
        found = tiers(args.rendered)
    except ValidationError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    outcomes = {}
    for tier in found:
        image = args.image or tier.image
        outcome, output = validate(tier, image, args.namespace or tier.namespace, kubectl)
        print(f"== {tier.name} ({len(tier.files)} files) in {image}: {outcome.upper() if outcome != 'valid' else outcome}")
        print("   " + output.replace("\n", "\n   "))
        outcomes[tier.name] = outcome
    if "not run" in outcomes.values():
        print(f"ERROR: {', '.join(t for t, o in outcomes.items() if o == 'not run')}: the check did not run; see above", file=sys.stderr)
        return 3
    if "rejected" in outcomes.values():
        print(
            f"ERROR: {', '.join(t for t, o in outcomes.items() if o == 'rejected')}: the image rejects the config; see Consul's message above",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
