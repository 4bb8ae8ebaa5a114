"""Every declared object is schema-valid Kubernetes, every pod passes "restricted", every config file is valid Consul."""

from __future__ import annotations

import json

import pytest
from harness import render
from test_federation import SECONDARY
from validation import KUBERNETES_VERSIONS, agent_config_errors, consul_config_files, pod_specs, restricted_violations, schema_errors

# Stacks and overrides that between them switch every setting away from its default.
CASES: dict[str, tuple[str, dict[str, object]]] = {
    "defaults": ("ci-defaults", {}),
    "dev": ("dev", {}),
    "prod": ("prod", {}),
    "everything-set": (
        "ci-defaults",
        {
            "namespace": "platform",
            "createNamespace": False,
            "image": "registry.example.com/consul@sha256:" + "b" * 64,
            "datacenter": "eu_1",
            "domain": "consul.example.internal",
            "recursors": ["10.0.0.10", "[2001:db8::53]:53"],
            "serverReplicas": 7,
            "serverStorageSize": "100Gi",
            "serverStorageClass": "fast-ssd",
            "snapshots": True,
            "snapshotSchedule": "@daily",
            "snapshotRetention": 7,
            "snapshotStorageSize": "5Gi",
            "snapshotStorageClass": "fast-ssd",
            "serverAntiAffinity": "preferred",
            "serverZoneSpread": "required",
            "serverUpdatePartition": 7,
            "serverResources": {"requests": {"cpu": "2", "memory": "4Gi"}},
            "serverTolerations": [
                {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
                {"key": "dedicated", "operator": "Exists"},
            ],
            "serverNodeSelector": {"kubernetes.io/os": "linux"},
            "serverPriorityClassName": "consul-critical",
            "serverExtraConfig": {"log_level": "debug", "telemetry": {"prometheus_retention_time": "60s"}},
            "uiServiceType": "LoadBalancer",
            "serverApiCidrs": ["10.20.0.0/16"],
            "serverApiNamespaces": ["monitoring"],
            "uiServiceAnnotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"},
            "clientMode": "statefulset",
            "clientReplicas": 12,
            "clientResources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
            "clientTolerations": [{"operator": "Exists"}],
            "clientNodeSelector": {"kubernetes.io/os": "linux"},
            "clientExtraConfig": {"log_level": "warn"},
            "dnsClusterIP": "10.96.0.53",
            "dnsTrafficDistribution": "PreferSameNode",
        },
    ),
    "no-ui-no-dns": ("ci-defaults", {"uiServiceType": "None", "dnsService": False}),
    "host-ports": ("ci-defaults", {"clientHostPorts": True}),
    "host-network": ("ci-defaults", {"clientHostNetwork": True, "networkPolicy": False, "uiServiceType": "NodePort"}),
    "host-data": ("ci-defaults", {"clientDataHostPath": "/var/lib/consul-agent"}),
    "secondary": ("ci-defaults", SECONDARY),
}
# Host ports, the host network and a host path (with its root init container) are what
# "restricted" forbids; those stacks opt out of it.
HOST_ACCESS = {
    "host-ports": {"consul: hostPort"},
    "host-network": {"host namespaces"},
    "host-data": {"volume data of type {'hostPath'}", "data-owner: runAsUser 0", "data-owner: capabilities must drop ALL"},
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    stack, overrides = CASES[request.param]
    return request.param, render(stack, True, **overrides)


@pytest.fixture
def rendered(case):
    return case[1]


def test_manifests_are_schema_valid_kubernetes(rendered):
    errors = [e for m in rendered.manifests() for e in schema_errors(m)]
    assert errors == []


def test_manifests_pods_pass_pod_security_restricted(case):
    name, rendered = case
    specs = dict(pod_specs(rendered.manifests()))
    snapshots = ["consul-snapshot"] if name in ("prod", "everything-set") else []
    assert sorted(p.split("/")[1] for p in specs) == sorted(
        ["consul-acl-bootstrap", "consul-client", "consul-gossip-rotation", "consul-server", *snapshots]
    )
    violations = {pod: set(restricted_violations(spec)) for pod, spec in specs.items()}
    client = next(p for p in specs if p.endswith("/consul-client"))
    assert violations == {**{p: set() for p in specs}, client: HOST_ACCESS.get(name, set())}


def test_manifests_consul_config_files_are_valid(rendered):
    files = list(consul_config_files(rendered.manifests()))
    assert files
    assert {name: agent_config_errors(config) for name, config in files} == {name: [] for name, _ in files}


def test_manifests_every_object_has_a_stable_explicit_name(rendered):
    for declared in rendered.kubernetes():
        assert declared.inputs["metadata"]["name"] == declared.name


def test_validators_can_fail():
    """The checks above would catch a broken object, a privileged pod and an unknown Consul key."""
    rendered = render("ci-defaults")
    statefulset = next(m for m in rendered.manifests() if m["kind"] == "StatefulSet")
    statefulset["spec"]["podManagmentPolicy"] = "Parallel"
    assert schema_errors(statefulset)
    pod = dict(statefulset["spec"]["template"]["spec"])
    pod["containers"] = [
        {**pod["containers"][0], "securityContext": {"privileged": True}, "ports": [{"containerPort": 8500, "hostPort": 8500}]}
    ]
    assert len(restricted_violations(pod)) >= 4
    assert agent_config_errors({"bootstrap_expected": 3}) == [
        "(top): Additional properties are not allowed ('bootstrap_expected' was unexpected)"
    ]


def test_cached_schema_check_agrees_with_kubernetes_validate():
    """tests/unit/validation.py caches kubernetes-validate's schemas; its verdicts must be the library's."""
    import kubernetes_validate

    manifests = list(render("ci-defaults").manifests())
    broken = json.loads(json.dumps(manifests[-1]))
    broken["spec"]["unknownField"] = True
    for manifest in [*manifests, broken]:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
                library_ok = True
            except kubernetes_validate.ValidationError:
                library_ok = False
            ours_ok = not [e for e in schema_errors(manifest) if e.startswith(version)]
            assert ours_ok == library_ok, (manifest["kind"], version)
    assert schema_errors(broken)


def test_check_rendered_script_flags_a_broken_file(tmp_path):
    """scripts/check_rendered.py (run by CI on the engine's files) fails on a schema or config error."""
    import subprocess
    import sys

    import yaml

    rendered = render("ci-defaults")
    config_map = next(m for m in rendered.manifests() if m["kind"] == "ConfigMap")
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(config_map))
    script = [sys.executable, "scripts/check_rendered.py", str(tmp_path)]
    ok = subprocess.run(script, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    broken = json.loads(json.dumps(config_map))
    broken["data"]["00-agent.json"] = json.dumps({"bootstrap_expected": 3})
    broken["spec"] = {}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(broken))
    bad = subprocess.run(script, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "Additional properties are not allowed ('spec' was unexpected)" in bad.stderr
    assert "'bootstrap_expected' was unexpected" in bad.stderr
