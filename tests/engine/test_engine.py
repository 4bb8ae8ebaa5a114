"""The real Pulumi engine on the dev and prod stacks, rendering to files (no cluster needed).

Marked `engine`: run by .ci/run after scripts/install-engine.sh, skipped where no pulumi CLI is installed.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import run_stack

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(shutil.which("pulumi", path=f"{run_stack.PULUMI_BIN}") is None, reason="no pulumi CLI (scripts/install-engine.sh)"),
]

EXPECTED = {
    "dev": {
        "pulumi:pulumi:Stack": 1,
        "consul:index:ConsulSecurity": 1,
        "consul:index:ConsulServers": 1,
        "consul:index:ConsulClients": 1,
        "consul:index:ConsulAclBootstrap": 1,
        "pulumi-python:dynamic:Resource": 6,
        "kubernetes:core/v1:Namespace": 1,
        "kubernetes:core/v1:Secret": 6,
        "kubernetes:core/v1:ConfigMap": 2,
        "kubernetes:core/v1:ServiceAccount": 2,
        "kubernetes:core/v1:Service": 4,
        "kubernetes:apps/v1:StatefulSet": 1,
        "kubernetes:apps/v1:DaemonSet": 1,
        "kubernetes:policy/v1:PodDisruptionBudget": 1,
        "kubernetes:networking.k8s.io/v1:NetworkPolicy": 2,
        "kubernetes:batch/v1:Job": 1,
    },
}
# prod has 5 servers: each has an agent token of its own (4 more generated tokens than dev's one server).
EXPECTED["prod"] = {**EXPECTED["dev"], "pulumi-python:dynamic:Resource": 10}


def _types(preview):
    return Counter(step["newState"]["type"] for step in preview["steps"] if step.get("newState"))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("render")


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_engine_preview_declares_every_object_once_without_errors(home, stack):
    preview = run_stack.preview_json(run_stack.render_stack(stack, home / stack, home / stack / "rendered"))
    assert [d for d in preview.get("diagnostics", []) if d.get("severity") == "error"] == []
    types = _types(preview)
    expected = {t: n for t, n in EXPECTED[stack].items() if n}
    assert {t: types[t] for t in expected} == expected
    assert preview["changeSummary"] == {"create": sum(expected.values())}
    secrets = [s for s in preview["steps"] if s["newState"]["type"] == "kubernetes:core/v1:Secret"]
    assert {s["newState"]["inputs"]["stringData"] for s in secrets} == {"[secret]"}


def test_engine_second_run_changes_nothing(home):
    out = home / "twice" / "rendered"
    stack = run_stack.render_stack("dev", home / "twice", out)
    first = stack.up(color="never")
    assert first.summary.result == "succeeded"
    assert len(list(out.rglob("*.yaml"))) == 21
    files = {p: p.read_text() for p in out.rglob("*.yaml")}
    again = run_stack.preview_json(stack)
    assert {step["op"] for step in again["steps"]} == {"same"}
    assert again["changeSummary"] == {"same": sum(again["changeSummary"].values())}
    second = stack.up(color="never")
    assert second.summary.resource_changes == {"same": sum(second.summary.resource_changes.values())}
    assert {p: p.read_text() for p in out.rglob("*.yaml")} == files


def test_engine_wrong_passphrase_is_named(home, monkeypatch):
    place = home / "passphrase"
    run_stack.render_stack("dev", place, place / "rendered").up(color="never")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "not-the-one")
    with pytest.raises(Exception) as raised:  # noqa: PT011 (the engine's error, explained below)
        run_stack.render_stack("dev", place, place / "rendered").preview(color="never")
    message = raised.value.args[0] if isinstance(raised.value, run_stack.EngineError) else run_stack._explain(raised.value)
    assert message.startswith("the stack's secrets cannot be decrypted with this passphrase")
