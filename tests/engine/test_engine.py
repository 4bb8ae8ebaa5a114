"""The real Pulumi engine on the dev and prod stacks, rendering to files (no cluster needed).

Marked `engine`: run by .ci/run after scripts/install-engine.sh. Skipped where the engine is not
installed, except in CI (CI=true), where a missing engine fails every test.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
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


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (each thread's children)."""
    found: set[int] = set()
    waiting = [pid]
    while waiting:
        for children in Path(f"/proc/{waiting.pop()}/task").glob("*/children"):
            try:
                below = {int(child) for child in children.read_text().split()}
            except OSError:  # the task ended meanwhile
                continue
            waiting += below - found
            found |= below
    return found


def _named(pids: set[int], name: str) -> set[int]:
    named = set()
    for pid in pids:
        try:
            program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if Path(program.decode()).name.startswith(name):
                named.add(pid)
        except OSError:
            pass
    return named


@pytest.mark.parametrize("group", [False, True], ids=["to-the-run", "to-its-process-group"])
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stopped_run_cancels_its_engine_and_leaves_no_copy_of_the_kubeconfig(tmp_path, stop, group):
    """`make preview` or `make up` stopped by SIGTERM (a CI job cancelled, `timeout`), SIGHUP (the
    terminal closed) or SIGINT (Ctrl-C) while its engine runs, sent to the run or to its whole
    process group (a terminal, `timeout`): the engine is cancelled once, as one Ctrl-C cancels it
    (not ended at once: by SIGHUP, or by a second signal), and the run removes its temporary
    directory, where the provider copies a stack's kubeconfig, token and all, once the engine is
    gone. Before, the run died at once: the directory stayed, and the engine ran on alone. The
    cluster accepts connections and never answers, so the engine is still running."""
    repo = _repo_copy(tmp_path)
    token = "the-cluster-token-" + os.urandom(8).hex()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    kubeconfig, _ = _unreachable_cluster(tmp_path, token)
    kubeconfig.write_text(kubeconfig.read_text().replace("127.0.0.1:1'", f"127.0.0.1:{silent.getsockname()[1]}'"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "TMPDIR": str(scratch),
        "PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}",
        "PULUMI_CONFIG_PASSPHRASE": "a-test-passphrase",
    }
    (tmp_path / "state").mkdir()
    with silent:
        run = _run_stack_started(repo, ["preview", "--stack", "dev"], env)
        try:
            deadline = time.monotonic() + 300
            while not _named(_descendants(run.pid), "pulumi-resource-kubernetes") and run.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            engine = _descendants(run.pid)
            assert _named(engine, "pulumi-resource-kubernetes"), "the Kubernetes provider never started"
            assert list(scratch.glob("consul-engine-*")), "the run made no temporary directory"
            if group:
                os.killpg(run.pid, getattr(signal, stop))
            else:
                run.send_signal(getattr(signal, stop))
            output, _ = run.communicate(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 128 + getattr(signal, stop), output
    assert f"stopped by {stop}" in output, output
    log = re.search(r"the engine's full log: (\S+)", output)
    assert log, output
    engine_said = (repo / log.group(1)).read_text()
    # Cancelled once ("… received; cancelling"), never a second time ("… received; terminating").
    assert "cancelling" in engine_said, engine_said[-2000:]
    assert "terminating" not in engine_said, engine_said[-2000:]
    assert list(scratch.iterdir()) == [], output
    assert credential_copies([token], [], [scratch, tmp_path / "state"]) == []
    alive = {pid for pid in engine if Path(f"/proc/{pid}").exists()}
    assert alive == set(), f"the engine's processes run on after the run stopped: {alive}"


def _run_stack_started(repo: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """`run_stack.py ARGS` started in `repo`, in a process group of its own, its output one stream."""
    return subprocess.Popen(
        [sys.executable, "scripts/run_stack.py", *args],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _repo_copy(tmp_path: Path) -> Path:
    """The repo's program and scripts, as a clean checkout has them."""
    repo = tmp_path / "repo"
    for tree in ("consul", "scripts"):
        shutil.copytree(run_stack.ROOT / tree, repo / tree, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml"):
        shutil.copyfile(run_stack.ROOT / name, repo / name)
    return repo


def _pulumi_that_hangs_on(tmp_path: Path, hanging: str) -> tuple[Path, Path]:
    """A PULUMI_HOME whose CLI records each call (its arguments, and each signal it gets) in a
    file, hangs on the command `hanging` until a signal ends it (as pulumi, with status 255), and
    runs the real CLI for the others. Returns (the home, the record)."""
    home = tmp_path / "pulumi-home"
    (home / "bin").mkdir(parents=True)
    (home / "plugins").symlink_to(run_stack.PULUMI_BIN.parent / "plugins")
    record = tmp_path / "calls"
    real = shutil.which("pulumi", path=f"{run_stack.PULUMI_BIN}:{os.environ['PATH']}")
    cli = home / "bin" / "pulumi"
    cli.write_text(
        "#!/bin/sh\n"
        f'echo "call $*" >> {record}\n'
        f'case "$*" in *"{hanging}"*)\n'
        f"  trap 'echo INT >> {record}; exit 255' INT; trap 'echo TERM >> {record}; exit 255' TERM; trap 'echo HUP >> {record}; exit 255' HUP\n"
        "  while :; do sleep 0.1; done;;\n"
        "esac\n"
        f'exec {real} "$@"\n'
    )
    cli.chmod(0o755)
    return home, record


def _stopped_once_hanging(repo: Path, args: list[str], env: dict[str, str], record: Path, hanging: str) -> tuple[int, str]:
    """`run_stack.py ARGS` in `repo`, sent SIGTERM to its whole process group once the CLI hangs on
    `hanging`: its exit status and output."""
    run = _run_stack_started(repo, args, env)
    try:
        deadline = time.monotonic() + 60
        while not _started(record, hanging) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _started(record, hanging), f"the CLI never ran {hanging}"
        os.killpg(run.pid, signal.SIGTERM)
        output, _ = run.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    return run.returncode, output


def _started(record: Path, hanging: str) -> bool:
    return record.exists() and hanging in record.read_text()


def test_a_run_stopped_while_it_asks_for_the_login_starts_no_engine(tmp_path):
    """Stopped by SIGTERM while `pulumi whoami` runs (no PULUMI_BACKEND_URL): that call fails for
    the stop, not for want of a login, so the run neither falls back to the local backend nor
    starts an engine on it."""
    repo = _repo_copy(tmp_path)
    home, record = _pulumi_that_hangs_on(tmp_path, "whoami")
    env = {k: v for k, v in os.environ.items() if k != "PULUMI_BACKEND_URL"}
    env.update(PULUMI_HOME=str(home), PULUMI_CONFIG_PASSPHRASE="a-test-passphrase", TMPDIR=str(tmp_path))
    returncode, output = _stopped_once_hanging(repo, ["preview", "--stack", "dev"], env, record, "whoami")
    assert returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output, output
    assert "no Pulumi backend configured" not in output, output
    assert not (repo / ".pulumi-state").exists()
    calls = [line for line in record.read_text().splitlines() if line.startswith("call")]
    assert calls == ["call whoami"], calls


def test_make_pulumi_stopped_cancels_the_cli_once_and_exits_with_the_signal(tmp_path):
    """`make pulumi ARGS=…` stopped by SIGTERM sent to its whole process group (`timeout`): the
    CLI, in a session of its own, gets one SIGINT from the run (as one Ctrl-C), not the SIGTERM,
    and the run exits with 128 + 15, saying so."""
    repo = _repo_copy(tmp_path)
    home, record = _pulumi_that_hangs_on(tmp_path, "stack ls")
    (tmp_path / "state").mkdir()
    env = {
        **os.environ,
        "PULUMI_HOME": str(home),
        "PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}",
        "PULUMI_CONFIG_PASSPHRASE": "a-test-passphrase",
        "TMPDIR": str(tmp_path),
    }
    returncode, output = _stopped_once_hanging(repo, ["cli", "stack", "ls"], env, record, "stack ls")
    assert returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output, output
    assert [line for line in record.read_text().splitlines() if not line.startswith("call")] == ["INT"]
    assert list(tmp_path.glob("consul-engine-*")) == []
