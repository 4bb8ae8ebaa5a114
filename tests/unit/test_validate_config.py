"""make validate-config: what it hands `consul validate` for each tier of a rendered stack."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import yaml
from harness import render

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import validate_config


def rendered_to(tmp_path: Path, stack: str = "prod") -> tuple[Path, list[str]]:
    """The stack's objects as YAML files (as renderYamlToDirectory writes them), and every secret value."""
    out = tmp_path / "1-manifest"
    out.mkdir()
    secrets = []
    for i, manifest in enumerate(render(stack).manifests()):
        (out / f"{i:03d}.yaml").write_text(yaml.safe_dump(manifest))
        if manifest["kind"] == "Secret":
            for text in (manifest.get("stringData") or {}).values():
                secrets += [text] if not text.startswith("{") else [v for v in _strings(json.loads(text))]
    return tmp_path, secrets


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_each_tier_gets_the_files_its_agent_loads_and_no_secret(tmp_path):
    rendered, secrets = rendered_to(tmp_path)
    tiers = {t.name: t for t in validate_config.tiers(rendered)}
    assert sorted(tiers) == ["consul-client", "consul-server"]
    server, client = tiers["consul-server"], tiers["consul-client"]
    assert server.paths == [
        "/consul/config",
        "/consul/gossip/gossip.json",
        "/consul/acl/consul-server-0.json",
        "/consul/join/consul-server-0.json",
    ]
    assert sorted(server.files) == [
        "/consul/acl/consul-server-0.json",
        "/consul/config/00-agent.json",
        "/consul/config/05-cluster-size.json",
        "/consul/gossip/gossip.json",
        "/consul/join/consul-server-0.json",
    ]
    assert client.paths == ["/consul/config", "/consul/gossip/gossip.json", "/consul/acl/acl-tokens.json"]
    assert (server.namespace, server.image) == ("consul", "hashicorp/consul:2.0.3")
    # Secrets are replaced by placeholders of their form: a gossip key of the same length, UUIDs.
    assert base64.b64decode(json.loads(server.files["/consul/gossip/gossip.json"])["encrypt"]) == bytes(32)
    assert json.loads(server.files["/consul/acl/consul-server-0.json"])["acl"]["tokens"] == {
        "initial_management": validate_config.PLACEHOLDER_TOKEN,
        "agent": validate_config.PLACEHOLDER_TOKEN,
    }
    sent = "".join(text for tier in tiers.values() for text in tier.files.values())
    assert len(secrets) > 5
    assert [s for s in secrets if len(s) > 8 and s in sent] == []


def test_a_directory_without_a_render_is_refused(tmp_path):
    assert validate_config.main([str(tmp_path)]) == 2
