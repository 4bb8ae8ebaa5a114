"""Checks the manifests the real engine wrote to rendered/ with the unit tests' validators.

Every object strictly against the Kubernetes 1.30 and newest OpenAPI schemas, every pod against
Pod Security "restricted", every Consul config file against Consul's config schema.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "unit")]

from validation import (  # noqa: E402 (after the path is set)
    KUBERNETES_VERSIONS,
    agent_config_errors,
    consul_config_files,
    pod_specs,
    restricted_violations,
    schema_errors,
)


def load(directory: Path) -> list[dict[str, Any]]:
    files = [p for p in sorted(directory.rglob("*.yaml")) if p.name != "kustomization.yaml"]
    return [d for path in files for d in yaml.safe_load_all(path.read_text()) if d]


def decoded(manifest: dict[str, Any]) -> dict[str, Any]:
    """A rendered Secret's base64 `data` as `stringData`, the form the config check reads."""
    if manifest["kind"] != "Secret" or "data" not in manifest:
        return manifest
    plain = {k: base64.b64decode(v).decode() for k, v in manifest["data"].items()}
    return {**{k: v for k, v in manifest.items() if k != "data"}, "stringData": plain}


def main() -> int:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "rendered" / "dev"
    manifests = load(directory)
    if not manifests:
        print(f"no manifests in {directory}", file=sys.stderr)
        return 1
    problems = [e for m in manifests for e in schema_errors(m)]
    problems += [f"{name}: {v}" for name, spec in pod_specs(manifests) for v in restricted_violations(spec)]
    configs = list(consul_config_files(decoded(m) for m in manifests))
    problems += [f"{name}: {e}" for name, config in configs for e in agent_config_errors(config)]
    for problem in problems:
        print(problem, file=sys.stderr)
    versions = " and ".join(KUBERNETES_VERSIONS)
    print(
        f"{len(manifests)} rendered objects checked against Kubernetes {versions}, {len(configs)} Consul config files: {len(problems)} problems"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
