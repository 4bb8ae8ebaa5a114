"""Settings: bad input fails with one exact message, before anything is declared."""

from __future__ import annotations

import pytest
from harness import UNSET, cli_config, run_main

from consul.model import ClientMode, ClientSpec, ClusterSpec, DnsSpec, Placement, Resources, ServerSpec, Toleration, UiServiceType, UiSpec
from consul.settings import SettingsError, load_settings


def settings_for(stack: str = "dev", **overrides: object):
    raw = {k.split(":", 1)[1]: v for k, v in cli_config(stack, overrides).items()}
    warnings: list[str] = []
    return load_settings(raw, warn=warnings.append), warnings


def test_settings_defaults_come_from_pulumi_yaml():
    settings, warnings = settings_for("no-such-stack")
    assert settings.namespace == "consul"
    assert settings.create_namespace is True
    assert settings.cluster == ClusterSpec(image="hashicorp/consul:2.0.3", datacenter="dc1", domain="consul", recursors=())
    assert settings.servers == ServerSpec(
        replicas=3,
        storage_size="10Gi",
        storage_class=None,
        anti_affinity=Placement.REQUIRED,
        zone_spread=Placement.PREFERRED,
        update_partition=0,
        resources=Resources(requests={"cpu": "100m", "memory": "200Mi"}, limits={"cpu": "1", "memory": "200Mi"}),
        tolerations=(),
        node_selector={},
        priority_class_name=None,
        extra_config={},
    )
    assert settings.ui == UiSpec(service_type=UiServiceType.CLUSTER_IP, annotations={})
    assert settings.clients == ClientSpec(
        mode=ClientMode.DAEMONSET,
        replicas=3,
        host_ports=False,
        host_network=False,
        resources=Resources(requests={"cpu": "100m", "memory": "100Mi"}, limits={"cpu": "500m", "memory": "100Mi"}),
        tolerations=(),
        node_selector={},
        extra_config={},
    )
    assert settings.dns == DnsSpec(enabled=True, cluster_ip=None)
    assert warnings == []


def test_settings_dev_stack_overrides_defaults():
    settings, _ = settings_for("dev")
    assert settings.namespace == "consul-dev"
    assert settings.servers.replicas == 1
    assert settings.servers.anti_affinity is Placement.PREFERRED


def test_settings_component_defaults_match_pulumi_yaml():
    settings, _ = settings_for("no-such-stack")
    assert settings.cluster == ClusterSpec()
    assert settings.servers == ServerSpec()
    assert settings.ui == UiSpec()
    assert settings.clients == ClientSpec()
    assert settings.dns == DnsSpec()


def test_settings_parses_structured_values():
    settings, _ = settings_for(
        serverTolerations=[{"key": "dedicated", "operator": "Equal", "value": "consul", "effect": "NoExecute", "tolerationSeconds": 30}],
        serverNodeSelector={"node-role.example.com/consul": "true"},
        recursors=["1.1.1.1", "10.0.0.10:53", "[2001:db8::1]:5353", "2001:db8::2"],
    )
    assert settings.servers.tolerations == (Toleration("dedicated", "Equal", "consul", "NoExecute", 30),)
    assert settings.servers.node_selector == {"node-role.example.com/consul": "true"}
    assert settings.cluster.recursors == ("1.1.1.1", "10.0.0.10:53", "[2001:db8::1]:5353", "2001:db8::2")


def test_settings_warns_on_cluster_local_domain():
    settings, warnings = settings_for(domain="cluster.local")
    assert settings.cluster.domain == "cluster.local"
    assert warnings == [
        'consul:domain "cluster.local" shadows the Kubernetes DNS suffix cluster.local: forwarding it to Consul breaks Service lookups. Prefer "consul".'
    ]


def test_settings_warns_on_a_datacenter_name_that_is_not_a_hostname_label():
    settings, warnings = settings_for(datacenter="eu_west")
    assert settings.cluster.datacenter == "eu_west"
    assert warnings == [
        "consul:datacenter \"eu_west\" has an '_': the names Consul builds from it (web.service.eu_west.consul, server.eu_west.consul"
        " in the TLS certificates) are not valid hostnames, and Consul's releases after 1.16 warn about it. Prefer '-' for a new"
        " datacenter; an existing one can't be renamed in place, so this is a warning, not a refusal."
    ]


@pytest.mark.parametrize("tag", ["1.19.0", "1.19.1"])
def test_settings_refuses_the_releases_with_the_dns_regression(tag):
    with pytest.raises(SettingsError) as refused:
        settings_for(image=f"hashicorp/consul:{tag}")
    assert str(refused.value) == (
        f'invalid consul:image "hashicorp/consul:{tag}": Consul 1.19.0 and 1.19.1 shipped a rewritten DNS server with'
        " regressions, reverted in 1.19.2: use 1.19.2 or later"
    )


@pytest.mark.parametrize("tag", ["1.16.1", "1.18.2", "1.19.2", "1.20.0", "2.0.3"])
def test_settings_accepts_the_releases_around_the_dns_regression(tag):
    settings, warnings = settings_for(image=f"hashicorp/consul:{tag}")
    assert settings.cluster.image == f"hashicorp/consul:{tag}"
    assert warnings == []


def test_settings_accepts_digest_pinned_image():
    digest = "sha256:" + "a" * 64
    settings, _ = settings_for(image=f"registry.example.com:5000/hashicorp/consul@{digest}")
    assert settings.cluster.image == f"registry.example.com:5000/hashicorp/consul@{digest}"
    assert settings.cluster.version == "digest"


INVALID = [
    (
        "clientDataHostPath",
        "var/lib/consul",
        'invalid consul:clientDataHostPath "var/lib/consul": must be an absolute directory path other than "/", such as "/var/lib/consul-agent"',
    ),
    (
        "clientDataHostPath",
        "/var/lib/../consul",
        'invalid consul:clientDataHostPath "/var/lib/../consul": must be an absolute directory path other than "/", such as "/var/lib/consul-agent"',
    ),
    (
        "allowedChanges",
        ["serverReplicas"],
        'invalid consul:allowedChanges ["serverReplicas"]: each entry must be one of serverStorageSize, serverStorageClass, '
        'gossipEncryption, tls (got "serverReplicas")',
    ),
    (
        "serverReplicas",
        4,
        "invalid consul:serverReplicas 4: must be 1, 3, 5 or 7: an odd count, since an even one adds no failure tolerance, and at most 7, since every write waits for a majority",
    ),
    (
        "serverReplicas",
        0,
        "invalid consul:serverReplicas 0: must be 1, 3, 5 or 7: an odd count, since an even one adds no failure tolerance, and at most 7, since every write waits for a majority",
    ),
    (
        "serverReplicas",
        -3,
        "invalid consul:serverReplicas -3: must be 1, 3, 5 or 7: an odd count, since an even one adds no failure tolerance, and at most 7, since every write waits for a majority",
    ),
    (
        "serverReplicas",
        9,
        "invalid consul:serverReplicas 9: must be 1, 3, 5 or 7: an odd count, since an even one adds no failure tolerance, and at most 7, since every write waits for a majority",
    ),
    ("serverReplicas", "three", 'invalid consul:serverReplicas "three": must be a whole number'),
    (
        "namespace",
        "Consul_NS",
        "invalid consul:namespace \"Consul_NS\": must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
    ),
    (
        "namespace",
        "a" * 64,
        f"invalid consul:namespace \"{'a' * 64}\": must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
    ),
    (
        "namespace",
        "-consul",
        "invalid consul:namespace \"-consul\": must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
    ),
    ("createNamespace", "yes", 'invalid consul:createNamespace "yes": must be true or false'),
    ("serverStorageSize", "10GB", 'invalid consul:serverStorageSize "10GB": must be a positive Kubernetes quantity such as 10Gi'),
    ("serverStorageSize", "0", 'invalid consul:serverStorageSize "0": must be a positive Kubernetes quantity such as 10Gi'),
    ("serverStorageSize", "ten", 'invalid consul:serverStorageSize "ten": must be a positive Kubernetes quantity such as 10Gi'),
    (
        "serverStorageClass",
        "Fast SSD",
        'invalid consul:serverStorageClass "Fast SSD": must be empty (the cluster default) or a StorageClass name',
    ),
    ("serverAntiAffinity", "soft", 'invalid consul:serverAntiAffinity "soft": must be "required" or "preferred"'),
    ("serverAntiAffinity", "none", 'invalid consul:serverAntiAffinity "none": must be "required" or "preferred"'),
    ("serverZoneSpread", "always", 'invalid consul:serverZoneSpread "always": must be "none" or "preferred" or "required"'),
    (
        "image",
        "hashicorp/consul",
        'invalid consul:image "hashicorp/consul": must be pinned to a release tag (hashicorp/consul:X.Y.Z) or a sha256 digest, never latest or no tag',
    ),
    (
        "image",
        "hashicorp/consul:latest",
        'invalid consul:image "hashicorp/consul:latest": must be pinned to a release tag (hashicorp/consul:X.Y.Z) or a sha256 digest, never latest or no tag',
    ),
    (
        "image",
        "hashicorp/consul:1.22",
        'invalid consul:image "hashicorp/consul:1.22": must be pinned to a release tag X.Y.Z (a moving tag such as 1.22 changes under you) or a sha256 digest',
    ),
    (
        "image",
        "consul:1.4.2",
        'invalid consul:image "consul:1.4.2": Consul 1.4.2 is older than 1.16, the oldest release whose agent config this program writes',
    ),
    (
        "image",
        "Hashicorp/Consul:2.0.3",
        'invalid consul:image "Hashicorp/Consul:2.0.3": must be an image reference such as hashicorp/consul:2.0.3',
    ),
    (
        "image",
        "hashicorp/consul:2.0.3 ",
        'invalid consul:image "hashicorp/consul:2.0.3 ": must be an image reference such as hashicorp/consul:2.0.3',
    ),
    ("serverUpdatePartition", 4, "invalid consul:serverUpdatePartition 4: must be between 0 and consul:serverReplicas (1)"),
    ("serverUpdatePartition", -1, "invalid consul:serverUpdatePartition -1: must be between 0 and consul:serverReplicas (1)"),
    (
        "datacenter",
        "DC1",
        "invalid consul:datacenter \"DC1\": must be 1 to 63 lowercase letters, digits, '-' or '_' (Consul refuses other names)",
    ),
    (
        "datacenter",
        "dc.1",
        "invalid consul:datacenter \"dc.1\": must be 1 to 63 lowercase letters, digits, '-' or '_' (Consul refuses other names)",
    ),
    (
        "datacenter",
        "",
        "invalid consul:datacenter \"\": must be 1 to 63 lowercase letters, digits, '-' or '_' (Consul refuses other names)",
    ),
    ("domain", "Consul", 'invalid consul:domain "Consul": must be a lowercase DNS name such as consul or consul.example.internal'),
    (
        "domain",
        "consul..internal",
        'invalid consul:domain "consul..internal": must be a lowercase DNS name such as consul or consul.example.internal',
    ),
    (
        "recursors",
        ["8.8.8.8", "dns.google"],
        'invalid consul:recursors ["8.8.8.8", "dns.google"]: each entry must be an IP address or IP:port (got "dns.google")',
    ),
    (
        "recursors",
        ["10.0.0.1:99999"],
        'invalid consul:recursors ["10.0.0.1:99999"]: each entry must be an IP address or IP:port (got "10.0.0.1:99999")',
    ),
    ("recursors", "8.8.8.8", 'invalid consul:recursors "8.8.8.8": must be a list of DNS server addresses (YAML or JSON in the stack file)'),
    ("recursors", {"a": 1}, 'invalid consul:recursors {"a": 1}: must be a list of DNS server addresses'),
    ("serverExtraConfig", [1], "invalid consul:serverExtraConfig [1]: must be a JSON object of Consul agent configuration"),
    (
        "serverExtraConfig",
        "not json",
        'invalid consul:serverExtraConfig "not json": must be a JSON object of Consul agent configuration (YAML or JSON in the stack file)',
    ),
    (
        "serverExtraConfig",
        {"raft_multipler": 5},
        "invalid consul:serverExtraConfig {\"raft_multipler\": 5}: is not valid Consul agent configuration at (top level): Additional properties are not allowed ('raft_multipler' was unexpected)",
    ),
    (
        "serverExtraConfig",
        {"performance": {"raft_multiplier": "1"}},
        'invalid consul:serverExtraConfig {"performance": {"raft_multiplier": "1"}}: is not valid Consul agent configuration at performance/raft_multiplier: \'1\' is not of type \'integer\'',
    ),
    (
        "serverExtraConfig",
        {"bootstrap_expect": 5},
        'invalid consul:serverExtraConfig {"bootstrap_expect": 5}: sets "bootstrap_expect", which the program manages: set consul:serverReplicas instead',
    ),
    (
        "serverResources",
        {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}},
        'invalid consul:serverResources {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}: requests.cpu (2) may not exceed limits.cpu (1)',
    ),
    (
        "serverResources",
        {"requests": {"memory": "lots"}},
        'invalid consul:serverResources {"requests": {"memory": "lots"}}: requests.memory must be a positive Kubernetes quantity (got "lots")',
    ),
    (
        "serverResources",
        {"requests": {"gpu": "1"}},
        'invalid consul:serverResources {"requests": {"gpu": "1"}}: requests must be an object with cpu and/or memory',
    ),
    ("serverResources", {"request": {}}, 'invalid consul:serverResources {"request": {}}: may only have requests and limits (not request)'),
    (
        "serverTolerations",
        [{"key": "a", "operator": "In"}],
        'invalid consul:serverTolerations [{"key": "a", "operator": "In"}]: operator must be "Equal" or "Exists" (got "In")',
    ),
    (
        "serverTolerations",
        [{"key": "a", "effect": "NoRun"}],
        'invalid consul:serverTolerations [{"key": "a", "effect": "NoRun"}]: effect must be one of NoSchedule, PreferNoSchedule, NoExecute (got "NoRun")',
    ),
    (
        "serverTolerations",
        [{"key": "a", "tolerationSeconds": 5}],
        'invalid consul:serverTolerations [{"key": "a", "tolerationSeconds": 5}]: tolerationSeconds must be a whole number and goes with effect NoExecute',
    ),
    (
        "serverTolerations",
        [{"keys": "a"}],
        'invalid consul:serverTolerations [{"keys": "a"}]: a toleration may only have effect, key, operator, tolerationSeconds, value (not keys)',
    ),
    (
        "serverTolerations",
        [{"operator": "Equal", "value": "x"}],
        'invalid consul:serverTolerations [{"operator": "Equal", "value": "x"}]: a toleration without a key must use operator "Exists"',
    ),
    (
        "serverTolerations",
        ["dedicated"],
        'invalid consul:serverTolerations ["dedicated"]: each toleration must be an object (got "dedicated")',
    ),
    (
        "serverNodeSelector",
        {"role": 1},
        'invalid consul:serverNodeSelector {"role": 1}: each entry must be a valid label key and string label value (got "role": 1)',
    ),
    (
        "serverNodeSelector",
        {"bad key!": "x"},
        'invalid consul:serverNodeSelector {"bad key!": "x"}: each entry must be a valid label key and string label value (got "bad key!": "x")',
    ),
    (
        "serverPriorityClassName",
        "High Priority",
        'invalid consul:serverPriorityClassName "High Priority": must be empty or a PriorityClass name',
    ),
    ("clientMode", "deployment", 'invalid consul:clientMode "deployment": must be "daemonset" or "statefulset"'),
    (
        "clientReplicas",
        0,
        "invalid consul:clientReplicas 0: must be between 1 and 1000 (it is used in clientMode statefulset and ignored in daemonset mode)",
    ),
    ("clientHostPorts", "on", 'invalid consul:clientHostPorts "on": must be true or false'),
    ("clientHostNetwork", 1, 'invalid consul:clientHostNetwork "1": must be true or false'),
    (
        "clientResources",
        {"limits": {"memory": "-1Gi"}},
        'invalid consul:clientResources {"limits": {"memory": "-1Gi"}}: limits.memory must be a positive Kubernetes quantity (got "-1Gi")',
    ),
    ("clientTolerations", {"operator": "Exists"}, 'invalid consul:clientTolerations {"operator": "Exists"}: must be a list of tolerations'),
    ("clientNodeSelector", ["linux"], 'invalid consul:clientNodeSelector ["linux"]: must be an object of node label keys to values'),
    (
        "clientExtraConfig",
        {"rejoin_after_leave": False},
        'invalid consul:clientExtraConfig {"rejoin_after_leave": false}: sets "rejoin_after_leave", which the program manages: clients rejoin after a restart',
    ),
    (
        "clientExtraConfig",
        {"server": True},
        'invalid consul:clientExtraConfig {"server": true}: sets "server", which the program manages: it is always false for client agents',
    ),
    ("uiServiceType", "Ingress", 'invalid consul:uiServiceType "Ingress": must be "ClusterIP" or "NodePort" or "LoadBalancer" or "None"'),
    (
        "uiServiceType",
        "clusterip",
        'invalid consul:uiServiceType "clusterip": must be "ClusterIP" or "NodePort" or "LoadBalancer" or "None"',
    ),
    (
        "uiServiceAnnotations",
        {"a": 1},
        'invalid consul:uiServiceAnnotations {"a": 1}: each entry must be a valid annotation key and a string value (got "a": 1)',
    ),
    ("dnsService", "maybe", 'invalid consul:dnsService "maybe": must be true or false'),
    (
        "dnsClusterIP",
        "10.96.0.300",
        'invalid consul:dnsClusterIP "10.96.0.300": must be empty (assigned by the cluster) or an IP address in the Service CIDR',
    ),
    (
        "dnsTrafficDistribution",
        "PreferLocal",
        'invalid consul:dnsTrafficDistribution "PreferLocal": must be "" or "PreferSameNode" or "PreferSameZone" or "PreferClose"',
    ),
    # A trailing newline (a stray line break in a stack file) is not part of any name.
    (
        "namespace",
        "consul\n",
        "invalid consul:namespace \"consul\\n\": must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
    ),
    (
        "datacenter",
        "dc1\n",
        "invalid consul:datacenter \"dc1\\n\": must be 1 to 63 lowercase letters, digits, '-' or '_' (Consul refuses other names)",
    ),
    (
        "image",
        "hashicorp/consul:2.0.3\n",
        'invalid consul:image "hashicorp/consul:2.0.3\\n": must be an image reference such as hashicorp/consul:2.0.3',
    ),
    ("serverStorageSize", "10Gi\n", 'invalid consul:serverStorageSize "10Gi\\n": must be a positive Kubernetes quantity such as 10Gi'),
    ("serverReplica", 3, None),
]

COMBINATIONS: list[tuple[dict[str, object], str]] = [
    (
        {"clientMode": "statefulset", "clientDataHostPath": "/var/lib/consul-agent"},
        'invalid consul:clientDataHostPath "/var/lib/consul-agent": must be empty in clientMode "statefulset": a node directory fits one agent per node only',
    ),
    (
        {"clientMode": "statefulset", "clientHostPorts": True},
        'invalid consul:clientHostPorts true: may only be true with consul:clientMode "daemonset": with fewer agents than nodes, a node address reaches no agent',
    ),
    (
        {"clientMode": "statefulset", "clientHostNetwork": True},
        'invalid consul:clientHostNetwork true: may only be true with consul:clientMode "daemonset": with fewer agents than nodes, a node address reaches no agent',
    ),
    (
        {"clientHostPorts": True, "clientHostNetwork": True},
        "invalid consul:clientHostPorts true: must be false when consul:clientHostNetwork is true: the host network already puts the agent on the node's address",
    ),
    (
        {"dnsService": False, "dnsTrafficDistribution": "PreferSameNode"},
        'invalid consul:dnsTrafficDistribution "PreferSameNode": must be empty when consul:dnsService is false',
    ),
    (
        {"dnsService": False, "dnsClusterIP": "10.96.0.53"},
        'invalid consul:dnsClusterIP "10.96.0.53": must be empty when consul:dnsService is false',
    ),
]


@pytest.mark.parametrize(("overrides", "message"), COMBINATIONS, ids=[",".join(o) for o, _ in COMBINATIONS])
def test_settings_conflicting_values_fail_before_anything_is_declared(overrides, message):
    rendered, error = run_main("dev", **overrides)
    assert str(error) == message
    assert rendered.declared == []


@pytest.mark.parametrize(("key", "value", "message"), INVALID, ids=[f"{k}={v!r}"[:60] for k, v, _ in INVALID])
def test_settings_invalid_value_fails_before_anything_is_declared(key, value, message):
    rendered, error = run_main("dev", **{key: value})
    assert isinstance(error, SettingsError)
    if message is None:  # an unknown key: the message lists every setting
        assert str(error).startswith(f'invalid consul:{key} "{value}": is not a setting of this program; the settings are ')
    else:
        assert str(error) == message
    assert error.key == key
    assert rendered.declared == []


def test_settings_missing_key_names_it():
    rendered, error = run_main("dev", datacenter=UNSET)
    assert (
        str(error)
        == "invalid consul:datacenter null: the key is not set; Pulumi.yaml declares its default, so run from the project directory"
    )
    assert rendered.declared == []


def test_settings_error_is_a_clean_run_error():
    """RunError makes the CLI print the message alone, without a Python traceback."""
    import pulumi

    with pytest.raises(pulumi.RunError):
        settings_for(serverReplicas=2)
