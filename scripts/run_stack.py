"""Runs the program with the real Pulumi engine: `render` (no cluster), `preview` and `up`.

The program runs inline through Pulumi's Automation API, so the engine needs only the CLI and
two provider plugins, Kubernetes and this project's consul-keys (scripts/install-engine.sh puts
them in ~/.pulumi). The stack's settings come from Pulumi.yaml and Pulumi.<stack>.yaml as with
`pulumi up`.

render: the dev stack (or --stack) with the Kubernetes provider's renderYamlToDirectory, into
    rendered/<stack>/, on a local file backend in .pulumi-render/ (both gitignored). No cluster
    needed. Files of objects the stack no longer has are removed, and a kustomization.yaml lists
    the Namespace first: `kubectl apply -k rendered/<stack>` applies it in one command.
preview / up: against the current kubeconfig context, on your configured backend
    (PULUMI_BACKEND_URL or `pulumi login`; a local backend in .pulumi-state/ when there is none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pulumi import automation as auto

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from consul import generated  # noqa: E402 (after the path is set)
from consul.program import main as consul_program  # noqa: E402


def pulumi_home() -> Path:
    """Where the pulumi CLI keeps its plugins and login, as it decides it: $PULUMI_HOME, else
    `.pulumi` in the account's home from the user database (not $HOME, which the CLI ignores)."""
    if os.environ.get("PULUMI_HOME"):
        return Path(os.environ["PULUMI_HOME"])
    try:
        return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".pulumi"
    except KeyError:  # an account the user database does not list: the CLI falls back to $HOME
        return Path.home() / ".pulumi"


PULUMI_BIN = pulumi_home() / "bin"
RENDER_HOME = ROOT / ".pulumi-render"
RENDERED = ROOT / "rendered"
KUSTOMIZATION = "kustomization.yaml"
LOGS = ROOT / ".pulumi-logs"
LOCAL_STATE = ROOT / ".pulumi-state"
# The render stack holds key material generated for a cluster that does not exist; a real stack
# uses your own passphrase or a cloud secrets provider.
RENDER_PASSPHRASE = "render-only-not-for-real-clusters"


class EngineError(Exception):
    """The engine could not run; the message says why and what to do."""


def _engine_env(backend: str, passphrase: str | None) -> dict[str, str]:
    env = {
        "PULUMI_BACKEND_URL": backend,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PATH": f"{PULUMI_BIN}:{os.environ.get('PATH', '')}",
    }
    if passphrase is not None:
        env["PULUMI_CONFIG_PASSPHRASE"] = passphrase
    return env


def engine_missing() -> str | None:
    """Why the engine can't run here (no pulumi CLI, or no consul-keys plugin), or None: the one
    look-up that run_stack and the tests share."""
    if shutil.which("pulumi", path=f"{PULUMI_BIN}:{os.environ.get('PATH', '')}") is None:
        return "no pulumi CLI: run scripts/install-engine.sh (make render and make preview do it for you)"
    key_plugin = PULUMI_BIN.parent / "plugins" / f"resource-{generated.PROVIDER}-v{generated.PROVIDER_VERSION}"
    if not key_plugin.is_dir():
        return (
            f"the {generated.PROVIDER} provider plugin v{generated.PROVIDER_VERSION} (provider/) is not installed: "
            "run scripts/install-engine.sh (make render and make preview do it for you)"
        )
    return None


def _require_cli() -> None:
    missing = engine_missing()
    if missing is not None:
        raise EngineError(missing)


def _stack(name: str, work_dir: Path, env: dict[str, str], scratch_in: Path | None = None, *, own_session: bool = False) -> auto.Stack:
    """The stack `name` of the program, its engine run with `env` and with a private temporary
    directory of its own (made in `scratch_in`, else in the system's): the Kubernetes provider
    (4.25) writes the kubeconfig given by `kubernetes:kubeconfig`, credentials and all, to a
    temporary file that it never removes. One per stack object, so that releasing one stack never
    takes the directory of another on the same home. `release()` removes it once the stack's runs
    are done. `own_session`: the engine runs in a session of its own (see `_own_session_cli`)."""
    os.environ["PATH"] = env["PATH"]
    if scratch_in is not None:
        scratch_in.mkdir(parents=True, exist_ok=True)
    scratch: Path | None = None
    try:
        # Made and named with the signals held (only there: a process started meanwhile would
        # inherit them blocked), so that a stop finds the directory named and removes it.
        with signals_held():
            scratch = Path(tempfile.mkdtemp(prefix="consul-engine-", dir=scratch_in)).resolve()
        return auto.create_or_select_stack(
            stack_name=name,
            project_name="consul",
            program=consul_program,
            opts=auto.LocalWorkspaceOptions(
                work_dir=str(work_dir),
                env_vars={**env, "TMPDIR": str(scratch)},
                pulumi_command=_own_session_cli(scratch) if own_session else None,
            ),
        )
    except BaseException as error:
        if scratch is not None:
            _remove_scratch(scratch)
        if isinstance(error, auto.CommandError):
            raise EngineError(_explain(error)) from None
        raise


def _own_session_cli(scratch: Path) -> auto.PulumiCommand | None:
    """The pulumi CLI started in a session of its own (`setsid`), through a wrapper in the stack's
    temporary directory: a signal sent to the run's whole process group (Ctrl-C or a closed
    terminal, `timeout`) then reaches the run alone, which cancels the engine once (StopOnSignal).
    Sent to the engine too, SIGHUP ended it at once, and SIGTERM (which pulumi takes as Ctrl-C)
    followed by the run's own SIGINT read as a second Ctrl-C, which ends it at once. Without a
    `setsid` (util-linux), None: the default CLI, in the run's process group."""
    cli = shutil.which("pulumi")
    if cli is None:
        raise EngineError("the pulumi CLI is not on PATH")
    if shutil.which("setsid") is None:
        return None
    wrapper = scratch / "bin" / "pulumi"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec setsid {shlex.quote(cli)} "$@"\n')
    wrapper.chmod(0o700)
    return auto.PulumiCommand(root=str(scratch))


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """The signals StopOnSignal handles held back (delivered when the block ends): a stop never
    cuts short the making or the removal of an engine's temporary directory. Blocked in this
    thread, and, since the kernel may hand a signal to another thread (the engine's gRPC threads
    after an `up`) and Python then runs its handler here all the same, deferred by the
    StopOnSignal whose handler is installed, if any. Nothing may be started inside: a child
    inherits the signals blocked."""
    installed = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, StopOnSignal.SIGNALS)
    try:
        if isinstance(installed, StopOnSignal):
            with installed.holding():
                yield
        else:
            yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _explain(error: auto.CommandError) -> str:
    text = str(error)
    if "passphrase must be set" in text:
        return (
            "this stack keeps its secrets with a passphrase: set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) and run again"
        )
    if (
        "passphrase" in text and ("incorrect" in text or "invalid" in text or "required" in text)
    ) or "message authentication failed" in text:
        return (
            "the stack's secrets cannot be decrypted with this passphrase: set PULUMI_CONFIG_PASSPHRASE "
            "to the one the stack was created with (the render stack in .pulumi-render/ can simply be deleted)"
        )
    return text


def _workspace(stack: str, home: Path, source: Path | None = None) -> Path:
    """A copy of the project files for a stack of its own, so its state never touches the repo's
    stack files. The stack file is copied as it is, byte for byte, so the engine reads exactly what
    `pulumi preview` reads (the same YAML, the same types, the same errors); only the copy's own
    encryption salt is kept from an earlier run when the repo's file has none."""
    work = home / "project"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "Pulumi.yaml", work / "Pulumi.yaml")
    source = source or ROOT / f"Pulumi.{stack}.yaml"
    if not source.exists():
        raise EngineError(f"no stack file Pulumi.{stack}.yaml (the stacks are: {', '.join(known_stacks())})")
    target = work / f"Pulumi.{stack}.yaml"
    text = source.read_text()
    salt = re.compile(r"^encryptionsalt:.*$", re.MULTILINE)
    if not salt.search(text) and target.exists() and (previous := salt.search(target.read_text())):
        text = f"{previous.group(0)}\n{text}"
    target.write_text(text)
    return work


def known_stacks() -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in ROOT.glob("Pulumi.*.yaml"))


def render_stack(
    stack: str = "dev", home: Path = RENDER_HOME, out: Path | None = None, stack_file: Path | None = None, *, own_session: bool = False
) -> auto.Stack:
    """The render stack: the repo's stack settings (or `stack_file`), rendering into `out`
    (default rendered/<stack>), on a local backend in `home`; `own_session`: see `_own_session_cli`."""
    _require_cli()
    source = stack_file or ROOT / f"Pulumi.{stack}.yaml"
    own_salt = source.exists() and re.search(r"^encryptionsalt:", source.read_text(), re.MULTILINE) is not None
    given = os.environ.get("PULUMI_CONFIG_PASSPHRASE") or os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if own_salt and not given:
        raise EngineError(
            f"{source.name} holds secrets encrypted with the stack's passphrase (it has an encryptionsalt): "
            "set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) to that passphrase and render again"
        )
    # A stack file with secrets of its own renders with its passphrase, into a state of its own; the
    # others share a throwaway render passphrase.
    state = home / "state" / ("own-passphrase" if own_salt else "render-passphrase")
    state.mkdir(parents=True, exist_ok=True)
    env = _engine_env(
        f"file://{state}",
        None if os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE") else os.environ.get("PULUMI_CONFIG_PASSPHRASE", RENDER_PASSPHRASE),
    )
    os.environ.pop("KUBECONFIG", None)
    work = home / stack / ("own" if own_salt else "render")
    rendered = _stack(stack, _workspace(stack, work, stack_file), env, work, own_session=own_session)
    rendered.set_config("kubernetes:renderYamlToDirectory", auto.ConfigValue(str(out or RENDERED / stack)))
    return rendered


def cluster_stack(stack: str, home: Path, kubeconfig: Path, stack_file: Path | None = None) -> auto.Stack:
    """A stack against the cluster of `kubeconfig`, on a local backend in `home` (the e2e bed's)."""
    _require_cli()
    (home / "state").mkdir(parents=True, exist_ok=True)
    env = _engine_env(f"file://{home / 'state'}", os.environ.get("PULUMI_CONFIG_PASSPHRASE", RENDER_PASSPHRASE))
    deployed = _stack(stack, _workspace(stack, home, stack_file), env, home)
    deployed.set_config("kubernetes:kubeconfig", auto.ConfigValue(str(kubeconfig)))
    return deployed


def real_stack(stack: str, stop: StopOnSignal) -> auto.Stack:
    """A stack of the repo itself, against the current kubeconfig context, its engine in a session
    of its own (stopped through `stop`)."""
    env = real_env(stop)
    made = _stack(stack, ROOT, env, own_session=True)
    if stop.received is not None:
        release(made)
        stop.check()
    return made


def release(stack: auto.Stack) -> None:
    """Remove the stack's engine temporary directory, with whatever the engine left in it."""
    scratch = (stack.workspace.env_vars or {}).get("TMPDIR")
    if scratch:
        _remove_scratch(Path(scratch))


def _remove_scratch(scratch: Path) -> None:
    """An engine's temporary directory removed whole, a stop held back until it is gone."""
    with signals_held():
        shutil.rmtree(scratch, ignore_errors=True)


def real_env(stop: StopOnSignal) -> dict[str, str]:
    """The engine's environment for the repo's own stacks: your backend, or the local one in .pulumi-state/."""
    _require_cli()
    backend = os.environ.get("PULUMI_BACKEND_URL")
    if backend is None:
        logged_in = subprocess.run(["pulumi", "whoami"], capture_output=True, env={**os.environ, **_engine_env("", None)}, check=False)
        # Stopped meanwhile, `whoami` failed for that, not for want of a login.
        stop.check()
        if logged_in.returncode != 0:
            LOCAL_STATE.mkdir(exist_ok=True)
            backend = f"file://{LOCAL_STATE}"
            print(f"no Pulumi backend configured: using the local one in {LOCAL_STATE}", file=sys.stderr)
    env = _engine_env(backend or "", os.environ.get("PULUMI_CONFIG_PASSPHRASE"))
    if not backend:
        env.pop("PULUMI_BACKEND_URL")
    return env


def run_cli(args: list[str], stop: StopOnSignal) -> int:
    """`pulumi ARGS` on the same state and settings the make targets use (make pulumi ARGS=...),
    in a session of its own (see `_own_session_cli`), stopped through `stop`."""
    env = {**os.environ, **real_env(stop)}
    scratch: str | None = None
    try:
        with signals_held():
            scratch = tempfile.mkdtemp(prefix="consul-engine-")
        code = subprocess.run(["pulumi", *args], cwd=ROOT, env={**env, "TMPDIR": scratch}, check=False, start_new_session=True).returncode
        stop.check()
        return code
    finally:
        if scratch is not None:
            _remove_scratch(Path(scratch))


def tidy_rendered(stack: auto.Stack, out: Path) -> list[Path]:
    """Remove the files of objects the stack no longer has (a render after its state was deleted,
    or objects a setting removed), then write kustomization.yaml with the Namespace first.
    Returns the files removed."""
    resources = (stack.export_stack().deployment or {}).get("resources", [])
    current = {
        (r["outputs"].get("kind"), (r["outputs"].get("metadata") or {}).get("namespace"), (r["outputs"].get("metadata") or {}).get("name"))
        for r in resources
        if r.get("type", "").startswith("kubernetes:") and r.get("outputs")
    }
    removed = []
    files = sorted(out.rglob("*.yaml")) if out.exists() else []
    kept = []
    for path in files:
        if path.name == KUSTOMIZATION:
            continue
        document = yaml.safe_load(path.read_text()) or {}
        key = (document.get("kind"), document.get("metadata", {}).get("namespace"), document.get("metadata", {}).get("name"))
        if key not in current:
            path.unlink()
            removed.append(path)
        else:
            kept.append((document.get("kind") != "Namespace", str(path.relative_to(out))))
    if kept:
        (out / KUSTOMIZATION).write_text(
            "# Written by make render: `kubectl apply -k` applies the Namespace before what lives in it.\n"
            + yaml.safe_dump(
                {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": [p for _, p in sorted(kept)]}
            )
        )
    return removed


def rendered_summary(out: Path, since: float, removed: list[Path]) -> str:
    files = sorted(p for p in out.rglob("*.yaml") if p.name != KUSTOMIZATION)
    written = [p for p in files if p.stat().st_mtime >= since]
    kinds: Counter[str] = Counter()
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                kinds[document["kind"]] += 1
    listing = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    secrets = sorted(p.name for p in files if "-secret-" in p.name)
    return (
        f"{len(files)} objects in {where}/ ({listing}): {len(written)} written by this run, {len(removed)} stale removed\n"
        f"apply them to a cluster with: kubectl apply -k {where}\n"
        f"note: {len(secrets)} files hold key material in plain base64 ({where}/*/*-secret-*.yaml); keep rendered/ private."
    )


class EngineLog:
    """The engine's full output goes to a file; the terminal gets the cause of a failure, once."""

    def __init__(self, stack: str, command: str) -> None:
        LOGS.mkdir(exist_ok=True)
        self.path = LOGS / f"{stack}-{command}.log"
        self._file = self.path.open("w")

    def __call__(self, line: str) -> None:
        self._file.write(line if line.endswith("\n") else line + "\n")
        self._file.flush()

    def text(self) -> str:
        self._file.flush()
        return self.path.read_text(errors="replace")

    def where(self) -> str:
        return str(self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path)


def failure_cause(text: str) -> list[str]:
    """Why a run failed, once each: a settings error alone, else each error of the engine's
    Diagnostics with its continuation lines (at most three)."""
    settings = [m.group(0) for m in re.finditer(r"invalid consul:[^\n]*", text)]
    if settings:
        return [settings[0]]
    parts = text.split("Diagnostics:", 1)
    lines = (parts[1].split("\nResources:", 1)[0] if len(parts) > 1 else text).splitlines()
    causes: list[str] = []
    for index, line in enumerate(lines):
        if "error: " not in line:
            continue
        cause = line.split("error: ", 1)[1].strip()
        indent = len(line) - len(line.lstrip())
        for more in lines[index + 1 :]:
            if not more.strip():
                continue
            if len(more) - len(more.lstrip()) <= indent or "error: " in more:
                break
            cause += " " + more.strip().lstrip("•").strip()
        if cause and cause not in causes and cause != "update failed" and "an unhandled error occurred" not in cause:
            causes.append(cause)
    return causes[:3] or ["the engine failed without an error line"]


def no_cluster(text: str) -> bool:
    return "unreachable" in text.lower() or "no configuration has been provided" in text


def unreachable_cluster() -> str | None:
    """Why the current kubeconfig context reaches no cluster, or None when its API server answers a TCP connect."""
    import socket
    from urllib.parse import urlparse

    path = Path(os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")).split(os.pathsep)[0])
    if not path.exists():
        return f"there is no kubeconfig at {path}"
    config = yaml.safe_load(path.read_text()) or {}
    context = next((c["context"] for c in config.get("contexts") or [] if c.get("name") == config.get("current-context")), None)
    cluster = context and next((c["cluster"] for c in config.get("clusters") or [] if c.get("name") == context.get("cluster")), None)
    if not cluster or not cluster.get("server"):
        return f"the kubeconfig {path} has no current context with a cluster"
    server = urlparse(cluster["server"])
    try:
        socket.create_connection((server.hostname or "", server.port or 443), timeout=3).close()
    except OSError as error:
        return f"{cluster['server']} did not answer ({error.strerror or error})"
    return None


class StoppedError(Exception):
    """A signal stopped the run (StopOnSignal.check)."""


class StopOnSignal:
    """While it is entered, SIGTERM (a CI job cancelled, `timeout`), SIGHUP (the terminal closed)
    and SIGINT (Ctrl-C) stop a run the way Ctrl-C stops `pulumi up`: the engine, in a session of
    its own so that only the run signals it, gets one SIGINT and is cancelled (it finishes the
    steps in flight and saves its state), and the run waits for it to end, so that what follows
    (removing the engine's temporary directory, with the provider's copy of the kubeconfig in it)
    runs once nothing writes there any more. A second signal is passed on too, which ends the
    engine at once, as a second Ctrl-C does. With nothing running, the run ends at once; a step
    that ran on (`check`) ends it before the next starts. `received` is the first signal, if any."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        # While above 0 (signals_held), a signal is kept in _pending and acted on when it ends.
        self._holding = 0
        self._pending: int | None = None

    def __enter__(self) -> StopOnSignal:
        self._previous = {signum: signal.signal(signum, self._stop) for signum in self.SIGNALS}
        return self

    def __exit__(self, *_: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """A signal that comes meanwhile acted on once the block ends."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            pending, self._pending = self._pending, None
            if pending is not None and self._holding == 0:
                self._stop(pending, None)

    def _stop(self, signum: int, _frame: object) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
        if self._holding:
            self._pending = signum
            return
        engines = _children()
        if not engines:
            raise SystemExit(128 + signum)
        for pid in engines:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)

    def check(self) -> None:
        """Raises StoppedError once a signal has come."""
        if self.received is not None:
            raise StoppedError(self.stopped())

    def stopped(self) -> str | None:
        """What to say when a signal stopped the run."""
        if self.received is None:
            return None
        return f"stopped by {self.received.name}: what ran was cancelled as Ctrl-C cancels it (an engine finishes the steps in flight and saves its state)"


def _children() -> list[int]:
    """This process's children (the engine's pulumi CLI while it runs), from /proc."""
    pids: list[int] = []
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            pids += [int(pid) for pid in children.read_text().split()]
    return pids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["render", "preview", "up", "cli"], help="cli ARGS: run `pulumi ARGS` on the same state")
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--json", action="store_true", help="preview: print the engine's JSON")
    parser.add_argument("--expect-no-changes", action="store_true", help="render: fail if the stack would change (a second run)")
    parser.add_argument("--new", action="store_true", help="preview/up: allow a stack that has no Pulumi.<stack>.yaml yet")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cli"]:  # cli ARGS...: everything after it is pulumi's
        with StopOnSignal() as stop:
            try:
                return run_cli(argv[1:], stop)
            except (EngineError, StoppedError) as error:
                if stop.received is not None:
                    print(f"error: {stop.stopped()}", file=sys.stderr)
                    return 128 + stop.received
                print(f"error: {error}", file=sys.stderr)
                return 1
    args = parser.parse_args(argv)
    with StopOnSignal() as stop:
        return _run(args, stop)


def _run(args: argparse.Namespace, stop: StopOnSignal) -> int:
    started = time.monotonic()
    log = EngineLog(args.stack, args.command)
    stack: auto.Stack | None = None
    try:
        if args.command == "render":
            stack = render_stack(args.stack, own_session=True)
            stop.check()
            if args.expect_no_changes:
                stack.preview(expect_no_changes=True, color="never", on_output=log)
                stop.check()
                print("no changes: the render stack is up to date")
            since = time.time() - 1
            stack.up(on_output=log, color="never")
            stop.check()
            out = RENDERED / args.stack
            print(rendered_summary(out, since, tidy_rendered(stack, out)))
        elif args.stack not in known_stacks() and not args.new:
            raise EngineError(
                f"no stack file Pulumi.{args.stack}.yaml: the stacks are {', '.join(known_stacks())} "
                f"(a typo?); to start a new stack, run again with NEW=1 (make) or --new"
            )
        elif args.command == "preview":
            stack = real_stack(args.stack, stop)
            result = stack.preview(on_output=log, json=args.json or None, color="never")
            stop.check()
            if args.json:
                print(result.stdout)
            else:
                print(f"preview of stack {args.stack}: {dict(result.change_summary)}")
            why = unreachable_cluster()
            if why is not None or no_cluster(log.text()):
                print(
                    f"note: no cluster was reachable ({why or 'the provider said so'}), so this preview shows what the "
                    "program declares, not what the cluster would change: no server-side diff, validation or admission",
                    file=sys.stderr,
                )
        else:
            stack = real_stack(args.stack, stop)
            up = stack.up(on_output=log, color="never")
            # A signal the engine met as it was ending (it ran to its end) still stops the run.
            stop.check()
            print(f"up of stack {args.stack}: {dict(up.summary.resource_changes or {})}")
            for key, value in up.outputs.items():
                print(f"  {key}: {'[secret]' if value.secret else value.value}")
    except (EngineError, auto.CommandError, StoppedError) as error:
        if stop.received is not None:
            print(f"error: {stop.stopped()}; the engine's full log: {log.where()}", file=sys.stderr)
            return 128 + stop.received
        if not isinstance(error, auto.CommandError):
            print(f"error: {error}", file=sys.stderr)
            return 1
        text = f"{log.text()}\n{error}"
        explained = _explain(error)
        causes = [explained] if explained != str(error) else failure_cause(text)
        for cause in causes:
            print(f"error: {cause}", file=sys.stderr)
        if no_cluster(text):
            print("note: no cluster was reachable with the current kubeconfig context", file=sys.stderr)
        print(f"the engine's full log: {log.where()}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            release(stack)
    print(f"{args.command} of stack {args.stack} took {time.monotonic() - started:.1f} s (engine log: {log.where()})", file=sys.stderr)
    return 0


def preview_json(stack: auto.Stack) -> dict[str, Any]:
    """The engine's JSON preview of a stack (what `pulumi preview --json` prints)."""
    parsed: dict[str, Any] = json.loads(stack.preview(json=True, color="never").stdout)
    return parsed


if __name__ == "__main__":
    sys.exit(main())
