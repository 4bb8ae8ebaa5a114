"""The real Pulumi engine on the dev and prod stacks, rendering to files (no cluster needed).

Marked `engine`: run by .ci/run after scripts/install-engine.sh. Skipped where the engine is not
installed, except in CI (CI=true), where a missing engine fails every test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import run_stack

from testbed.cluster.bed import credential_copies

ENGINE_MISSING = run_stack.engine_missing()
pytestmark = [pytest.mark.engine]


@pytest.fixture(autouse=True)
def _engine_installed() -> None:
    if ENGINE_MISSING is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(ENGINE_MISSING)
        pytest.skip(ENGINE_MISSING)


EXPECTED = {
    "dev": {
        "pulumi:pulumi:Stack": 1,
        "consul:index:ConsulSecurity": 1,
        "consul:index:ConsulServers": 1,
        "consul:index:ConsulClients": 1,
        "consul:index:ConsulAclBootstrap": 1,
        "consul:index:ConsulGossipRotation": 1,
        "consul-keys:index:KeyMaterial": 1,
        "kubernetes:core/v1:Namespace": 1,
        "kubernetes:core/v1:Secret": 7,
        "kubernetes:core/v1:ConfigMap": 3,
        "kubernetes:core/v1:ServiceAccount": 2,
        "kubernetes:core/v1:Service": 4,
        "kubernetes:apps/v1:StatefulSet": 1,
        "kubernetes:apps/v1:DaemonSet": 1,
        "kubernetes:policy/v1:PodDisruptionBudget": 1,
        "kubernetes:networking.k8s.io/v1:NetworkPolicy": 2,
        "kubernetes:batch/v1:Job": 2,
    },
}
# prod has 5 servers, each with an agent token of its own: more tokens, in the same one resource.
# and scheduled snapshots: a CronJob and its claim.
EXPECTED["prod"] = {
    **EXPECTED["dev"],
    "consul:index:ConsulSnapshots": 1,
    "kubernetes:batch/v1:CronJob": 1,
    "kubernetes:core/v1:PersistentVolumeClaim": 1,
}


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
    assert len(list(out.rglob("*.yaml"))) == 24
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


def test_render_writes_each_stack_to_its_own_directory_and_removes_stale_files(home):
    import yaml

    place = home / "dirs"
    outputs = {}
    for stack in ("dev", "prod"):
        out = place / "rendered" / stack
        rendered = run_stack.render_stack(stack, place, out)
        rendered.up(color="never")
        assert run_stack.tidy_rendered(rendered, out) == []
        outputs[stack] = sorted(p.name for p in out.rglob("*.yaml"))
    assert [n for n in outputs["dev"] if "namespace" in n] == ["v1-namespace-default-consul-dev.yaml"]
    assert [n for n in outputs["prod"] if "namespace" in n] == ["v1-namespace-default-consul.yaml"]
    # A file left by an earlier state (or another program) is removed by the next render.
    stale = place / "rendered" / "dev" / "1-manifest" / "v1-configmap-consul-dev-left-over.yaml"
    stale.write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "left-over", "namespace": "consul-dev"}})
    )
    assert run_stack.tidy_rendered(run_stack.render_stack("dev", place, place / "rendered" / "dev"), place / "rendered" / "dev") == [stale]
    kustomization = yaml.safe_load((place / "rendered" / "dev" / "kustomization.yaml").read_text())
    assert kustomization["resources"][0] == "1-manifest/v1-namespace-default-consul-dev.yaml"
    assert len(kustomization["resources"]) == 24


def test_render_reads_the_stack_file_as_pulumi_does(home, tmp_path):
    """YAML 1.1 `no` is a string to Pulumi: render refuses it exactly as preview does, naming the key."""
    stack_file = tmp_path / "Pulumi.yaml11.yaml"
    stack_file.write_text("config:\n  consul:tls: no\n")
    with pytest.raises(run_stack.auto.CommandError) as failed:
        run_stack.render_stack("yaml11", home / "yaml11", home / "yaml11" / "out", stack_file).up(color="never")
    assert "Stack 'yaml11' with configuration key 'tls' must be of type 'boolean'" in str(failed.value)


def test_a_mistyped_stack_is_refused(capsys):
    assert run_stack.main(["preview", "--stack", "prdo"]) == 1
    assert capsys.readouterr().err.startswith("error: no stack file Pulumi.prdo.yaml: the stacks are dev, prod (a typo?)")


def test_render_uses_the_stack_s_own_secrets(home, tmp_path, monkeypatch):
    """A stack file with `pulumi config set --secret` values renders with the stack's passphrase, and
    says what to do without it or with a wrong one."""
    import base64

    import yaml
    from material import gossip_key

    key = gossip_key()
    (tmp_path / "Pulumi.sec.yaml").write_text("config:\n  consul:serverReplicas: 1\n")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "the-stack-passphrase")
    # The user's own stack: created with its passphrase, a secret set the way the README says.
    users = run_stack.cluster_stack("sec", tmp_path / "users", tmp_path / "no-kubeconfig", tmp_path / "Pulumi.sec.yaml")
    users.remove_config("kubernetes:kubeconfig")
    users.set_config("consul:gossipKey", run_stack.auto.ConfigValue(key, secret=True))
    stack_file = tmp_path / "users" / "project" / "Pulumi.sec.yaml"
    assert "secure:" in stack_file.read_text()
    assert "encryptionsalt:" in stack_file.read_text()

    out = home / "sec" / "rendered"
    run_stack.render_stack("sec", home / "sec", out, stack_file).up(color="never")
    (gossip,) = [p for p in out.rglob("*.yaml") if "secret-consul-consul-gossip" in p.name]
    assert base64.b64decode(yaml.safe_load(gossip.read_text())["data"]["key"]).decode() == key

    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE")
    with pytest.raises(run_stack.EngineError) as missing:
        run_stack.render_stack("sec", home / "sec", out, stack_file)
    assert "holds secrets encrypted with the stack's passphrase" in str(missing.value)
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "not-the-one")
    with pytest.raises(Exception) as wrong:  # noqa: PT011 (the engine's error, explained below)
        run_stack.render_stack("sec", home / "sec", out, stack_file).preview(color="never")
    message = wrong.value.args[0] if isinstance(wrong.value, run_stack.EngineError) else run_stack._explain(wrong.value)
    assert message.startswith("the stack's secrets cannot be decrypted with this passphrase")


def test_a_failure_is_told_once_in_one_line(home, tmp_path):
    """The engine prints a settings error many times over; the command prints its cause once."""
    stack_file = tmp_path / "Pulumi.bad.yaml"
    stack_file.write_text("config:\n  consul:serverReplicas: 4\n")
    lines: list[str] = []
    with pytest.raises(run_stack.auto.CommandError) as failed:
        run_stack.render_stack("bad", home / "bad", home / "bad" / "out", stack_file).up(color="never", on_output=lines.append)
    text = "\n".join(lines) + str(failed.value)
    assert text.count("invalid consul:serverReplicas 4") > 1
    assert run_stack.failure_cause(text) == [
        "invalid consul:serverReplicas 4: must be 1, 3, 5 or 7: an odd count, since an even one adds no failure tolerance, "
        "and at most 7, since every write waits for a majority"
    ]


def test_make_pulumi_runs_the_cli_on_the_same_state(capfd):
    """`make pulumi ARGS=...` (run_stack.py cli): the pulumi CLI with the targets' backend settings."""
    assert run_stack.main(["cli", "version"]) == 0
    assert capfd.readouterr().out.strip() == "v3.274.1"


def test_render_finds_the_engine_where_the_cli_keeps_it_whatever_home_says(tmp_path):
    """The pulumi CLI keeps its plugins (and login) under $PULUMI_HOME, else under the account's home
    from the user database, not under $HOME; a CI job or container that sets HOME elsewhere (GitHub's
    container jobs use /github/home) must still find the engine that install-engine.sh installed."""
    env = {k: v for k, v in os.environ.items() if k != "PULUMI_HOME"}
    env["HOME"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "scripts/run_stack.py", "render", "--stack", "dev"],
        cwd=run_stack.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _unreachable_cluster(tmp_path: Path, token: str) -> tuple[Path, Path]:
    """A kubeconfig with `token` for a cluster nobody answers, and a one-server stack file."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: bed\n"
        "clusters: [{name: bed, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: bed, context: {cluster: bed, user: admin}}]\n"
        f"users: [{{name: admin, user: {{token: {token}}}}}]\n"
    )
    stack_file = tmp_path / "Pulumi.kube.yaml"
    stack_file.write_text("config:\n  consul:serverReplicas: 1\n")
    return kubeconfig, stack_file


def test_an_engine_run_leaves_no_copy_of_the_kubeconfig_s_credentials(home, tmp_path):
    """The Kubernetes provider writes the kubeconfig of `kubernetes:kubeconfig` to a temporary file,
    token and all, and never removes it. Each run's engine gets a temporary directory of its own,
    removed when the run is released."""
    import tempfile

    token = "the-cluster-token-" + os.urandom(8).hex()
    kubeconfig, stack_file = _unreachable_cluster(tmp_path, token)
    system_tmp = Path(tempfile.gettempdir())
    deployed = run_stack.cluster_stack("kube", home / "kube", kubeconfig, stack_file)
    preview = deployed.preview(color="never")
    assert preview.change_summary["create"] > 0  # no cluster answers: what the program declares
    assert credential_copies([token], [system_tmp], []) == []
    run_stack.release(deployed)
    assert credential_copies([token], [], [home / "kube"]) == []


def test_a_stack_released_leaves_another_of_the_same_home_running(home, tmp_path):
    """Two stacks on one backend home (two datacenters of the bed, two renders at once): releasing
    one removes its own temporary directory, not the one the other's engine still writes to."""
    kubeconfig, stack_file = _unreachable_cluster(tmp_path, "the-cluster-token")
    first = run_stack.cluster_stack("kube", home / "shared", kubeconfig, stack_file)
    second = run_stack.cluster_stack("kube2", home / "shared", kubeconfig, stack_file)
    try:
        run_stack.release(first)
        preview = second.preview(color="never")
        assert preview.change_summary["create"] > 0
    finally:
        run_stack.release(second)
