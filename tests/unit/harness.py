"""Runs the program under Pulumi mocks with stack config applied the way the CLI applies it.

The CLI gives a program the defaults declared in Pulumi.yaml, overlaid by Pulumi.<stack>.yaml,
as strings (structured values as JSON). `cli_config` does the same from the same files, so the
tests never restate a default; a test's overrides go on top.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import runpy
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import material
import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import run_in_stack
from pulumi.runtime.settings import get_root_resource, set_root_resource
from pulumi.runtime.sync_await import _sync_await

from consul import generated
from consul.program import deploy, main
from consul.settings import PROJECT, load_settings, secret_config_keys, stack_config

PROJECT_DIR = Path(__file__).resolve().parents[2]
UNSET = object()


def project_declarations() -> dict[str, dict[str, Any]]:
    """The ``config:`` block of Pulumi.yaml."""
    config = copy.deepcopy(_read_yaml(PROJECT_DIR / "Pulumi.yaml"))["config"]
    # Keys of another namespace (kubernetes:...) are provider settings, not the program's.
    declarations: dict[str, dict[str, Any]] = {k: v for k, v in config.items() if ":" not in k}
    return declarations


def stack_values(stack: str) -> dict[str, Any]:
    """The ``consul:`` values of Pulumi.<stack>.yaml, by bare key (empty when there is no file)."""
    path = PROJECT_DIR / f"Pulumi.{stack}.yaml"
    if not path.exists():
        return {}
    values = copy.deepcopy(_read_yaml(path)).get("config") or {}
    return {key.split(":", 1)[1]: value for key, value in values.items() if key.startswith(f"{PROJECT}:")}


@functools.cache
def _read_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _as_cli_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def cli_config(stack: str, overrides: Mapping[str, Any]) -> dict[str, str]:
    """``consul:<key>`` -> string, as the CLI hands them to the program."""
    values = {key: decl["default"] for key, decl in project_declarations().items() if "default" in decl}
    values.update(stack_values(stack))
    values.update(overrides)
    return {f"{PROJECT}:{key}": _as_cli_string(value) for key, value in values.items() if value is not UNSET}


@dataclass
class Declared:
    """One resource as the engine saw it: type token, name, parent URN and wire-form inputs."""

    typ: str
    name: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    secret_paths: list[str] = field(default_factory=list)
    secret_outputs: list[str] = field(default_factory=list)
    custom_timeouts: dict[str, str] = field(default_factory=dict)
    retain_on_delete: bool = False
    protect: bool = False

    @property
    def kind(self) -> str:
        return self.typ.rsplit(":", 1)[-1]

    def manifest(self) -> dict[str, Any]:
        """The Kubernetes object as kubectl would take it."""
        group_version = self.typ.split(":", 2)[1]
        group, version = group_version.rsplit("/", 1)
        api_version = version if group == "core" else group_version
        return {"apiVersion": api_version, "kind": self.kind, **self.inputs}


# The Corefile kubeadm gives CoreDNS, in ConfigMap kube-system/coredns.
KUBEADM_COREFILE = """.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
"""
KUBEADM_COREDNS = {"metadata": {"name": "coredns", "namespace": "kube-system"}, "data": {"Corefile": KUBEADM_COREFILE}}
# A clusterIP the API server would assign to a Service that names none.
ASSIGNED_CLUSTER_IP = "10.96.7.7"


class _Recorder(pulumi_mocks.Mocks):
    def __init__(self, real_material: bool = True, live: Mapping[str, dict[str, Any]] | None = None, preview: bool = False) -> None:
        self.real_material = real_material
        self.preview = preview
        # Objects already in the cluster, by "<type>/<namespace>/<name>", for the program's reads.
        self.live = {"kubernetes:core/v1:ConfigMap/kube-system/coredns": KUBEADM_COREDNS} if live is None else live

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        if args.resource_id:
            # A read (`Resource.get`) of an object that exists before the program.
            key = f"{args.typ}/{args.resource_id}"
            if key not in self.live:
                raise Exception(f"resource '{args.resource_id}' does not exist")
            return args.resource_id, copy.deepcopy(self.live[key])
        if self.preview and args.typ.startswith("kubernetes:"):
            # A preview of a creation: no ID yet, and the provider shows the inputs as the outputs.
            return "", dict(args.inputs)
        if args.typ == "kubernetes:core/v1:Service" and not (args.inputs.get("spec") or {}).get("clusterIP"):
            spec = {**(args.inputs.get("spec") or {}), "clusterIP": ASSIGNED_CLUSTER_IP}
            return f"{args.name}-id", {**args.inputs, "spec": spec}
        if args.typ == generated.RESOURCE_TYPE and not self.real_material:
            # The engine asks the consul-keys provider for these, outside the program.
            return f"{args.name}-id", {k: (f"{k}-of-{args.name}" if v is None else v) for k, v in args.inputs.items()} | {
                "token_accessors": {t: f"accessor-of-{t}" for t in args.inputs.get("tokens") or ()},
                "token_secrets": {t: f"secret-of-{t}" for t in args.inputs.get("tokens") or ()},
            }
        if args.typ == generated.RESOURCE_TYPE:
            # Real material, as the provider's create makes it (tests/unit/material.py).
            inputs = _plain(args.inputs)
            return f"{args.name}-id", {**inputs, **material.create(inputs)}
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[str, Any], None]:
        return {}, None


class _Monitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.declared: list[Declared] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            inputs = pulumi.runtime.rpc.deserialize_properties(request.object, keep_unknowns=True)
            declared = Declared(
                request.type,
                request.name,
                request.parent,
                request.custom,
                _plain(inputs),
                _secret_paths(inputs, ""),
                list(request.additionalSecretOutputs),
                {k: getattr(request.customTimeouts, k) for k in ("create", "update", "delete") if getattr(request.customTimeouts, k)},
                bool(request.retainOnDelete),
                bool(request.protect),
            )
            self.declared.append(declared)
        return response


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(pulumi.runtime.rpc._special_sig_key) == pulumi.runtime.rpc._special_secret_sig


def _secret_paths(value: Any, path: str) -> list[str]:
    """Where in the wire-form inputs a value travels marked secret ("stringData/key", ...)."""
    if _is_secret(value):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _secret_paths(v, f"{path}/{k}" if path else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _secret_paths(v, f"{path}/{i}")]
    return []


def _plain(value: Any) -> Any:
    """Unwrap secret markers and restore whole numbers, so the inputs read like a manifest."""
    if isinstance(value, dict):
        if _is_secret(value):
            return _plain(value["value"])
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # the wire carries every number as a float
    return value


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class Rendered:
    """What one run of the program declared."""

    declared: list[Declared]
    outputs: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    secret_outputs: set[str] = field(default_factory=set)

    def kubernetes(self) -> list[Declared]:
        return [d for d in self.declared if d.typ.startswith("kubernetes:")]

    def of_kind(self, kind: str) -> list[Declared]:
        return [d for d in self.kubernetes() if d.kind == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        """The inputs of the single object of `kind` (named `name`, when given)."""
        found = [d for d in self.of_kind(kind) if name is None or d.inputs["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} named {name}, found {[d.name for d in found]}"
        return found[0].inputs

    def manifests(self) -> Iterator[dict[str, Any]]:
        for d in self.kubernetes():
            yield d.manifest()


# Keys a user sets with `pulumi config set --secret`: the tests pass them as secrets too.
SECRET_KEYS = ("gossipKey", "tlsCaKey", "aclManagementToken", "aclReplicationToken")


def _start(
    stack: str,
    overrides: Mapping[str, Any],
    plain: Sequence[str] = (),
    real_material: bool = True,
    live: Mapping[str, dict[str, Any]] | None = None,
    preview: bool = False,
) -> tuple[_Monitor, _Warnings]:
    recorder = _Recorder(real_material, live, preview)
    monitor = _Monitor(recorder)
    warnings = _Warnings()
    logger = logging.getLogger(f"consul-tests-{id(warnings)}")
    logger.addHandler(warnings)
    logger.propagate = False
    pulumi.runtime.set_mocks(recorder, project=PROJECT, stack=stack, preview=preview, logger=logger, monitor=monitor)
    secret = [f"{PROJECT}:{k}" for k in SECRET_KEYS if k in overrides and k not in plain]
    pulumi.runtime.set_all_config(cli_config(stack, overrides), secret)
    return monitor, warnings


def render(stack: str = "dev", real_material: bool = True, live: Any = None, preview: Any = False, **overrides: Any) -> Rendered:
    """Run the program for `stack` with `overrides` and return everything it declared.

    The key material is real (tests/unit/material.py, in place of the consul-keys provider), unless
    `real_material` is False (placeholders: the benchmark times the program alone). `live` holds
    the objects the program may read from the cluster (default: kubeadm's CoreDNS ConfigMap).
    `preview` runs it as `pulumi preview` of a first deployment: no object has an ID yet.
    """
    monitor, warnings = _start(stack, overrides, real_material=real_material, live=live, preview=bool(preview))
    outputs: dict[str, Any] = {}
    secret: dict[str, bool] = {}

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def run() -> pulumi.Output[Any]:
        settings = load_settings(stack_config(), secret_config_keys(), warn=pulumi.log.warn)
        declared = deploy(settings)
        flags = pulumi.Output.all(**{k: pulumi.Output.from_input(v.is_secret()) for k, v in declared.items()})  # type: ignore[arg-type]
        return pulumi.Output.all(pulumi.Output.all(**declared).apply(outputs.update), flags.apply(secret.update))

    run()
    return Rendered(list(monitor.declared), outputs, warnings.messages, {k for k, v in secret.items() if v})


def run_main(
    stack: str = "dev", plain: Sequence[str] = (), live: Any = None, preview: Any = False, **overrides: Any
) -> tuple[Rendered, Exception | None]:
    """Run the program's entry point as __main__.py does: what it declared, and what it raised.

    Secret settings among `overrides` are passed as secrets, except the keys named in `plain`.
    """
    monitor, warnings = _start(stack, overrides, plain, live=live, preview=bool(preview))

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def run() -> Coroutine[Any, Any, None]:
        return main()

    error: Exception | None = None
    try:
        run()
    except Exception as raised:  # noqa: BLE001 (the test inspects it)
        error = raised
    return Rendered(list(monitor.declared), {}, warnings.messages), error


def declare(build: Callable[[], object]) -> Rendered:
    """Run `build` (code that declares components directly, as a library user would) under mocks."""
    monitor, warnings = _start("ci-defaults", {})

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def run() -> None:
        build()

    run()
    return Rendered(list(monitor.declared), {}, warnings.messages)


def merged_agent_config(data: Mapping[str, str]) -> dict[str, Any]:
    """The program's generated config files of one ConfigMap merged as Consul merges its config dir
    (objects merged key by key, in file name order), without the user's extra file."""
    merged: dict[str, Any] = {}
    for name in sorted(data):
        if name.endswith(".json") and not name.startswith("90-"):
            _merge(merged, json.loads(data[name]))
    return merged


def _merge(into: dict[str, Any], more: Mapping[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def run_main_module(stack: str = "dev", **overrides: Any) -> Rendered:
    """Run __main__.py as Pulumi's Python language host does (pulumi-language-python-exec): the
    module inside a stack, then the entry point it registered with `pulumi.run`, awaited."""
    monitor, warnings = _start(stack, overrides)
    # The language host makes the stack: set the mocks' aside meanwhile.
    mocks_stack = get_root_resource()
    set_root_resource(None)  # type: ignore[arg-type]
    program = str(PROJECT_DIR / "__main__.py")

    def run_module() -> None:
        runpy.run_path(program, run_name="__main__")

    try:
        _sync_await(run_in_stack(run_module))
    finally:
        set_root_resource(mocks_stack)  # type: ignore[arg-type]
    return Rendered(list(monitor.declared), {}, warnings.messages)
