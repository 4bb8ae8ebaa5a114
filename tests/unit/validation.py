"""Checks shared by the tests: Kubernetes OpenAPI schemas, Pod Security "restricted", Consul config."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
from kubernetes_validate import utils

from consul.settings import agent_config_validator

# The oldest Kubernetes we support and the newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

_ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


@functools.cache
def _definitions(schema_dir: str) -> referencing.Resource[Any]:
    return referencing.Resource.from_contents(utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", schema_dir))


@functools.cache
def _validator(version: str, kind: str, api_version: str) -> jsonschema.protocols.Validator:
    """kubernetes_validate.validate(strict=True), with the schemas loaded once per kind and version."""
    schema_dir = f"v{version}-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group_version}.json", version)
    registry = referencing.Resource.from_contents(schema) @ (_definitions(schema_dir) @ referencing.Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    """Strict OpenAPI validation of one object against every supported Kubernetes version."""
    errors = []
    for version in KUBERNETES_VERSIONS:
        validator = _validator(version, manifest["kind"], manifest["apiVersion"])
        for error in validator.iter_errors(manifest):
            errors.append(f"{version} {manifest['kind']}/{manifest['metadata'].get('name')}: {error.message} at {list(error.path)}")
    return errors


def pod_specs(manifests: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for m in manifests:
        template = m.get("spec", {}).get("template") if m["kind"] in ("StatefulSet", "DaemonSet", "Deployment", "Job") else None
        if m["kind"] == "CronJob":
            template = m["spec"]["jobTemplate"]["spec"]["template"]
        if template:
            yield f"{m['kind']}/{m['metadata']['name']}", template["spec"]


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What Pod Security Standards "restricted" (latest) would refuse in a pod spec."""
    problems = []
    pod_context = pod.get("securityContext", {})
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append("host namespaces")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= _ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']} of type {kinds}")
    for c in pod.get("initContainers", []) + pod["containers"]:
        context = c.get("securityContext", {})
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation must be false")
        if context.get("privileged"):
            problems.append(f"{c['name']}: privileged")
        if context.get("capabilities", {}).get("drop") != ["ALL"] or set(context.get("capabilities", {}).get("add", [])) - {
            "NET_BIND_SERVICE"
        }:
            problems.append(f"{c['name']}: capabilities must drop ALL")
        if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
            problems.append(f"{c['name']}: runAsNonRoot")
        if 0 in (context.get("runAsUser"), pod_context.get("runAsUser")):
            problems.append(f"{c['name']}: runAsUser 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{c['name']}: seccompProfile")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{c['name']}: hostPort")
    return problems


def consul_config_files(manifests: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Consul agent config file the program writes: ConfigMap data and Secret stringData ending in .json."""
    for m in manifests:
        files = m.get("data", {}) if m["kind"] == "ConfigMap" else m.get("stringData", {}) if m["kind"] == "Secret" else {}
        for key, text in files.items():
            if key.endswith(".json"):
                yield f"{m['kind']}/{m['metadata']['name']}/{key}", json.loads(text)


def agent_config_errors(config: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in agent_config_validator().iter_errors(config)]
