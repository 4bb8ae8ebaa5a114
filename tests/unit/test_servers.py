"""ConsulServers: what each setting drives, as default/override pairs, plus the fixed design."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import material
import pytest
from harness import merged_agent_config, render

from consul.agent_config import CHECKSUM_ANNOTATION as CONFIG_CHECKSUM_ANNOTATION
from consul.servers import address_hold, leadership_handoff, voter_readiness

SELECTOR = {
    "app.kubernetes.io/name": "consul",
    "app.kubernetes.io/instance": "consul",
    "app.kubernetes.io/component": "server",
}


@pytest.fixture(scope="module")
def default():
    """The project defaults alone (a stack without a stack file)."""
    return render("ci-defaults")


def statefulset(rendered):
    return rendered.one("StatefulSet", "consul-server")


def pod(rendered):
    return statefulset(rendered)["spec"]["template"]["spec"]


def container(rendered):
    (only,) = pod(rendered)["containers"]
    return only


def agent_config(rendered):
    return merged_agent_config(rendered.one("ConfigMap", "consul-server-config")["data"])


def join_lists(rendered):
    """Each server pod's retry_join, from its file in the consul-server-join ConfigMap."""
    files = rendered.one("ConfigMap", "consul-server-join")["data"]
    assert {json.loads(text)["retry_interval"] for text in files.values()} <= {"5s"}
    return {name.removesuffix(".json"): json.loads(text)["retry_join"] for name, text in files.items()}


# --- namespace -------------------------------------------------------------------------------


def test_servers_namespace_default(default):
    assert {d.inputs["metadata"]["namespace"] for d in default.kubernetes() if d.kind != "Namespace"} == {"consul"}
    assert [d.name for d in default.of_kind("Namespace")] == ["consul"]
    assert default.outputs["namespace"] == "consul"


def test_servers_namespace_override():
    rendered = render("ci-defaults", namespace="platform-consul")
    assert {d.inputs["metadata"]["namespace"] for d in rendered.kubernetes() if d.kind != "Namespace"} == {"platform-consul"}
    assert rendered.one("Namespace")["metadata"]["name"] == "platform-consul"
    assert join_lists(rendered)["consul-server-0"] == [f"consul-server-{i}.consul-server.platform-consul.svc:8301" for i in (1, 2)]
    assert rendered.outputs["serverApiAddress"] == "https://consul-server.platform-consul.svc:8501"


def test_servers_create_namespace_default_enforces_restricted(default):
    labels = default.one("Namespace", "consul")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"


def test_servers_create_namespace_false_declares_none():
    rendered = render("ci-defaults", createNamespace=False)
    assert rendered.of_kind("Namespace") == []
    assert statefulset(rendered)["metadata"]["namespace"] == "consul"


# --- image, datacenter, domain, recursors ------------------------------------------------------


def test_servers_image_default(default):
    assert container(default)["image"] == "hashicorp/consul:2.0.3"
    assert statefulset(default)["metadata"]["labels"]["app.kubernetes.io/version"] == "2.0.3"


def test_servers_image_override():
    rendered = render("ci-defaults", image="registry.example.com/hashicorp/consul:1.22.7")
    assert container(rendered)["image"] == "registry.example.com/hashicorp/consul:1.22.7"
    assert statefulset(rendered)["metadata"]["labels"]["app.kubernetes.io/version"] == "1.22.7"


def test_servers_datacenter_default(default):
    assert agent_config(default)["datacenter"] == "dc1"
    assert default.outputs["datacenter"] == "dc1"


def test_servers_datacenter_override():
    rendered = render("ci-defaults", datacenter="eu-west_2")
    assert agent_config(rendered)["datacenter"] == "eu-west_2"
    assert rendered.outputs["datacenter"] == "eu-west_2"


def test_servers_domain_default(default):
    assert agent_config(default)["domain"] == "consul"


def test_servers_domain_override():
    assert agent_config(render("ci-defaults", domain="consul.example.internal"))["domain"] == "consul.example.internal"


def test_servers_recursors_default(default):
    assert agent_config(default)["recursors"] == []


def test_servers_recursors_override():
    assert agent_config(render("ci-defaults", recursors=["10.0.0.10", "10.0.0.11:53"]))["recursors"] == ["10.0.0.10", "10.0.0.11:53"]


# --- replicas and quorum -------------------------------------------------------------------------


def test_servers_replicas_default(default):
    assert statefulset(default)["spec"]["replicas"] == 3
    config = agent_config(default)
    assert config["bootstrap_expect"] == 3
    # min_quorum is the declared size: autopilot never prunes a server that is only being replaced.
    assert config["autopilot"] == {"cleanup_dead_servers": True, "min_quorum": 3}
    assert join_lists(default) == {
        f"consul-server-{i}": [f"consul-server-{j}.consul-server.consul.svc:8301" for j in range(3) if j != i] for i in range(3)
    }


def test_each_server_joins_the_others_and_never_itself(default):
    """A server that reaches only itself at start (a partition, a NetworkPolicy agent that admits its
    address late) would count that as a join and stop retrying, leaving a pool that never meets
    bootstrap_expect: its join list, a file of its own, names every server but itself."""
    assert "retry_join" not in agent_config(default)
    args = statefulset(default)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "-config-file=/consul/join/$(POD_NAME).json" in args
    spec = statefulset(default)["spec"]["template"]["spec"]
    assert {"name": "join", "configMap": {"name": "consul-server-join"}} in spec["volumes"]
    assert {"name": "join", "mountPath": "/consul/join", "readOnly": True} in spec["containers"][0]["volumeMounts"]
    assert all(f"{pod}.consul-server" not in " ".join(others) for pod, others in join_lists(default).items())
    single = render("ci-defaults", serverReplicas=1)
    assert join_lists(single) == {"consul-server-0": []}


def test_servers_replicas_override():
    rendered = render("ci-defaults", serverReplicas=5)
    assert statefulset(rendered)["spec"]["replicas"] == 5
    config = agent_config(rendered)
    assert config["bootstrap_expect"] == 5
    assert config["autopilot"]["min_quorum"] == 5
    assert sorted(join_lists(rendered)) == [f"consul-server-{i}" for i in range(5)]
    assert all(len(others) == 4 for others in join_lists(rendered).values())


# --- storage -------------------------------------------------------------------------------------


def test_servers_storage_default(default):
    (claim,) = statefulset(default)["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}
    assert {"name": "data", "mountPath": "/consul/data"} in container(default)["volumeMounts"]
    assert agent_config(default)["data_dir"] == "/consul/data"


def test_servers_storage_override():
    rendered = render("ci-defaults", serverStorageSize="50Gi", serverStorageClass="fast-ssd")
    (claim,) = statefulset(rendered)["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"


def test_servers_claims_are_retained(default):
    assert statefulset(default)["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


# --- placement -----------------------------------------------------------------------------------


def test_servers_anti_affinity_default_is_required(default):
    anti = pod(default)["affinity"]["podAntiAffinity"]
    assert anti == {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": SELECTOR}, "topologyKey": "kubernetes.io/hostname"}
        ]
    }


def test_servers_anti_affinity_preferred():
    anti = pod(render("ci-defaults", serverAntiAffinity="preferred"))["affinity"]["podAntiAffinity"]
    assert anti == {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": SELECTOR}, "topologyKey": "kubernetes.io/hostname"}}
        ]
    }


def test_servers_zone_spread_default_is_preferred(default):
    assert pod(default)["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": SELECTOR},
        }
    ]


@pytest.mark.parametrize(("value", "expected"), [("required", "DoNotSchedule"), ("none", None)])
def test_servers_zone_spread_override(value, expected):
    spread = pod(render("ci-defaults", serverZoneSpread=value)).get("topologySpreadConstraints")
    assert (spread[0]["whenUnsatisfiable"] if spread else None) == expected


def test_servers_tolerations_node_selector_priority_default(default):
    spec = pod(default)
    assert "tolerations" not in spec
    assert "nodeSelector" not in spec
    assert "priorityClassName" not in spec


def test_servers_tolerations_node_selector_priority_override():
    spec = pod(
        render(
            "ci-defaults",
            serverTolerations=[{"key": "dedicated", "operator": "Equal", "value": "consul", "effect": "NoSchedule"}],
            serverNodeSelector={"pool": "consul"},
            serverPriorityClassName="consul-critical",
        )
    )
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "consul", "effect": "NoSchedule"}]
    assert spec["nodeSelector"] == {"pool": "consul"}
    assert spec["priorityClassName"] == "consul-critical"


# --- updates -------------------------------------------------------------------------------------


def test_servers_update_partition_default(default):
    assert statefulset(default)["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}


def test_servers_update_partition_override():
    strategy = statefulset(render("ci-defaults", serverUpdatePartition=3))["spec"]["updateStrategy"]
    assert strategy["rollingUpdate"]["partition"] == 3


# --- resources -----------------------------------------------------------------------------------


def test_servers_resources_default(default):
    assert container(default)["resources"] == {"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"cpu": "1", "memory": "200Mi"}}


def test_servers_resources_override():
    resources = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    assert container(render("ci-defaults", serverResources=resources))["resources"] == resources


# --- extra config ----------------------------------------------------------------------------------


def test_servers_extra_config_default_writes_no_extra_file(default):
    assert set(default.one("ConfigMap", "consul-server-config")["data"]) == {"00-agent.json", "05-cluster-size.json"}


def test_servers_extra_config_override_is_loaded_last():
    data = render("ci-defaults", serverExtraConfig={"log_level": "debug", "telemetry": {"disable_hostname": True}}).one(
        "ConfigMap", "consul-server-config"
    )["data"]
    assert sorted(data) == ["00-agent.json", "05-cluster-size.json", "90-extra.json"]
    assert json.loads(data["90-extra.json"]) == {"log_level": "debug", "telemetry": {"disable_hostname": True}}


# --- the fixed design ------------------------------------------------------------------------------


def test_servers_statefulset_design(default):
    spec = statefulset(default)["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "consul-server"
    assert spec["selector"] == {"matchLabels": SELECTOR}
    assert default.one("StatefulSet")["apiVersion"] == "apps/v1"


def test_servers_headless_service_publishes_not_ready_and_names_every_port(default):
    service = default.one("Service", "consul-server")["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is True
    assert service["selector"] == SELECTOR
    assert {(p["name"], p["port"], p["protocol"]) for p in service["ports"]} == {
        ("https", 8501, "TCP"),
        ("server", 8300, "TCP"),
        ("serflan-tcp", 8301, "TCP"),
        ("serflan-udp", 8301, "UDP"),
        ("serfwan-tcp", 8302, "TCP"),
        ("serfwan-udp", 8302, "UDP"),
        ("dns-tcp", 8600, "TCP"),
        ("dns-udp", 8600, "UDP"),
    }
    container_ports = {p["name"] for p in container(default)["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= container_ports


def test_servers_agent_config_design(default):
    config = agent_config(default)
    assert config["server"] is True
    assert config["leave_on_terminate"] is False
    # A retained claim is never refused for its age (Consul's default: 7 days).
    assert config["server_rejoin_age_max"] == "87600h"
    assert config["performance"] == {"raft_multiplier": 1}
    assert config["ui_config"] == {"enabled": True}
    assert config["bind_addr"] == "0.0.0.0"
    assert config["client_addr"] == "0.0.0.0"


def test_servers_advertise_pod_ip_and_no_leave_prestop(default):
    c = container(default)
    assert c["command"] == ["consul"]
    assert c["args"] == [
        "agent",
        "-config-dir=/consul/config",
        "-config-file=/consul/gossip/gossip.json",
        "-config-file=/consul/acl/$(POD_NAME).json",
        "-advertise=$(POD_IP)",
        "-node=$(POD_NAME)",
        "-config-file=/consul/join/$(POD_NAME).json",
    ]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in c["env"]
    assert "consul leave" not in json.dumps(c)
    assert pod(default)["terminationGracePeriodSeconds"] == 90


def test_servers_hand_leadership_over_before_stopping(default):
    """The preStop is the leadership handoff (test_leadership_handoff runs it), with the token."""
    assert container(default)["lifecycle"] == {"preStop": {"exec": {"command": ["/bin/sh", "-c", leadership_handoff(acls=True)]}}}


def test_servers_without_acls_hand_leadership_over_without_a_token():
    rendered = render("ci-defaults", acls=False)
    assert container(rendered)["lifecycle"]["preStop"]["exec"]["command"][2] == leadership_handoff(acls=False)


def test_servers_probes(default):
    c = container(default)
    # Ready: a leader seen, and a voter (test_server_readiness runs the check).
    assert c["readinessProbe"]["exec"]["command"] == ["/bin/sh", "-ec", voter_readiness(acls=True)]
    assert (c["readinessProbe"]["periodSeconds"], c["readinessProbe"]["failureThreshold"]) == (3, 2)
    # Liveness must not depend on a leader: /v1/status/leader answers 200 with "" during elections.
    assert c["livenessProbe"]["httpGet"] == {"path": "/v1/status/leader", "port": 8501, "scheme": "HTTPS"}
    assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] >= 60
    # Until the API first answers (a large snapshot restored at start), only the startup probe
    # runs: 20 minutes, asked every 2 s so that a normal start is not delayed.
    startup = c["startupProbe"]
    assert startup["httpGet"] == c["livenessProbe"]["httpGet"]
    assert (startup["periodSeconds"], startup["periodSeconds"] * startup["failureThreshold"]) == (2, 1200)
    assert "initialDelaySeconds" not in c["livenessProbe"]


def test_servers_security_context(default):
    spec = pod(default)
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 100,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container(default)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert {"name": "CONSUL_DISABLE_PERM_MGMT", "value": "true"} in container(default)["env"]


def test_servers_disruption_budget_allows_one_drain(default):
    pdb = default.one("PodDisruptionBudget", "consul-server")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}


def test_servers_service_account(default):
    account = default.one("ServiceAccount", "consul-server")
    assert account["automountServiceAccountToken"] is False
    assert pod(default)["serviceAccountName"] == "consul-server"


def test_servers_config_checksum_annotation_follows_config(default):
    data = default.one("ConfigMap", "consul-server-config")["data"]
    annotation = statefulset(default)["spec"]["template"]["metadata"]["annotations"][CONFIG_CHECKSUM_ANNOTATION]
    rolled = {k: v for k, v in data.items() if k != "05-cluster-size.json"}
    assert annotation == hashlib.sha256(json.dumps(rolled, indent=2, sort_keys=True).encode() + b"\n").hexdigest()
    changed = render("ci-defaults", datacenter="dc2")
    assert statefulset(changed)["spec"]["template"]["metadata"]["annotations"][CONFIG_CHECKSUM_ANNOTATION] != annotation


def test_servers_scaling_changes_no_pod_template(default):
    """bootstrap_expect, retry_join and min_quorum sit in 05-cluster-size.json, outside the checksums:
    going from 3 to 5 servers restarts none of the running ones."""
    five = render("ci-defaults", serverReplicas=5)
    size = json.loads(five.one("ConfigMap", "consul-server-config")["data"]["05-cluster-size.json"])
    assert (size["bootstrap_expect"], size["autopilot"]) == (5, {"min_quorum": 5})
    assert len(join_lists(five)) == 5
    annotations = statefulset(default)["spec"]["template"]["metadata"]["annotations"]
    assert (
        statefulset(five)["spec"]["template"]["metadata"]["annotations"][CONFIG_CHECKSUM_ANNOTATION]
        == annotations[CONFIG_CHECKSUM_ANNOTATION]
    )


def server_tier(rendered):
    return [
        d for d in rendered.kubernetes() if d.parent.endswith("consul:index:ConsulServers::consul") and d.name.startswith("consul-server")
    ]


def test_servers_recommended_labels_everywhere(default):
    for declared in server_tier(default):
        labels = declared.inputs["metadata"]["labels"]
        assert labels == {
            **SELECTOR,
            "app.kubernetes.io/part-of": "consul",
            "app.kubernetes.io/managed-by": "pulumi",
            "app.kubernetes.io/version": "2.0.3",
        }, declared.name


def test_servers_children_are_parented_and_named_from_the_component(default):
    (component,) = [d for d in default.declared if d.typ == "consul:index:ConsulServers"]
    assert component.name == "consul"
    children = [d for d in default.kubernetes() if d.parent.endswith("consul:index:ConsulServers::consul")]
    assert sorted((d.kind, d.name) for d in children) == [
        ("ConfigMap", "consul-server-config"),
        ("ConfigMap", "consul-server-join"),
        ("NetworkPolicy", "consul-server"),
        ("PodDisruptionBudget", "consul-server"),
        ("Service", "consul-server"),
        ("Service", "consul-ui"),
        ("ServiceAccount", "consul-server"),
        ("StatefulSet", "consul-server"),
    ]
    for child in children:
        assert child.inputs["metadata"]["name"] == child.name


def test_servers_outputs(default):
    outputs = dict(default.outputs)
    assert outputs.pop("caCertificate").startswith("-----BEGIN CERTIFICATE-----")
    assert re.fullmatch(r"[0-9a-f-]{36}", outputs.pop("aclManagementToken"))
    assert outputs == {
        "namespace": "consul",
        "datacenter": "dc1",
        "serverServiceName": "consul-server",
        "serverApiAddress": "https://consul-server.consul.svc:8501",
        "uiServiceName": "consul-ui",
        "clientMode": "daemonset",
        "clientServiceName": "consul-client",
        "agentAddress": "http://consul-client.consul.svc:8500",
        "dnsServiceName": "consul-dns",
    }


def test_components_work_as_a_library_with_their_documented_defaults():
    """ConsulServers and ConsulClients need only a namespace (and the join list); security is opt-in."""
    from harness import declare

    from consul import ConsulClients, ConsulClientsArgs, ConsulServers, ConsulServersArgs

    def build():
        servers = ConsulServers("edge", ConsulServersArgs(namespace="edge-ns"))
        ConsulClients("edge", ConsulClientsArgs(namespace="edge-ns", retry_join=servers.retry_join))

    rendered = declare(build)
    assert rendered.one("StatefulSet", "edge-server")["spec"]["replicas"] == 3
    assert rendered.one("DaemonSet", "edge-client")["metadata"]["namespace"] == "edge-ns"
    config = merged_agent_config(rendered.one("ConfigMap", "edge-server-config")["data"])
    joins = json.loads(rendered.one("ConfigMap", "edge-server-join")["data"]["edge-server-0.json"])
    assert joins["retry_join"][0] == "edge-server-1.edge-server.edge-ns.svc:8301"
    assert not {"tls", "acl", "disable_keyring_file"} & set(config)
    assert rendered.of_kind("NetworkPolicy") == []
    assert rendered.of_kind("Secret") == []


# --- lifecycle: what the Kubernetes provider does with the StatefulSet over its life --------------


def test_servers_volume_claim_labels_never_carry_the_version(default):
    """volumeClaimTemplates are immutable: a version label there would replace the StatefulSet on upgrade."""
    claim = default.one("StatefulSet", "consul-server")["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["labels"] == {
        "app.kubernetes.io/name": "consul",
        "app.kubernetes.io/instance": "consul",
        "app.kubernetes.io/component": "server",
    }
    upgraded = render("ci-defaults", image="hashicorp/consul:1.16.1").one("StatefulSet", "consul-server")
    assert upgraded["spec"]["volumeClaimTemplates"] == [claim]


def wait_for(rendered) -> list[str]:
    annotations = rendered.one("StatefulSet", "consul-server")["metadata"]["annotations"]
    return json.loads(annotations["pulumi.com/waitFor"])


def test_servers_rollout_await_every_pod_updated_and_ready(default):
    # The provider checks a waitFor condition only once .status.observedGeneration is current.
    assert wait_for(default) == ["jsonpath={$[?@.updatedReplicas > 2].readyReplicas}=3"]


def test_servers_rollout_await_with_a_partition_the_pods_above_it_or_all_when_one_revision():
    # Pods below the partition on an older revision: those above it updated. One revision (no
    # template change, or a staged upgrade reverted): every pod updated to it.
    rendered = render("ci-defaults", serverReplicas=5, serverUpdatePartition=3)
    assert wait_for(rendered) == [
        "jsonpath={$[?(@.currentRevision == @.updateRevision && @.updatedReplicas > 4) || "
        "(!(@.currentRevision == @.updateRevision) && @.updatedReplicas > 1)].readyReplicas}=5"
    ]


def test_servers_rollout_await_with_the_partition_at_the_server_count_only_ready():
    # Nothing is to be updated, and the status omits updatedReplicas when it is 0.
    rendered = render("ci-defaults", serverReplicas=5, serverUpdatePartition=5)
    assert wait_for(rendered) == ["jsonpath={.status.readyReplicas}=5"]


def test_servers_pod_template_carries_digests_of_config_and_secrets(default):
    annotations = default.one("StatefulSet", "consul-server")["spec"]["template"]["metadata"]["annotations"]
    assert sorted(annotations) == ["consul.hashicorp.com/config-checksum", "consul.hashicorp.com/secrets-checksum"]
    assert all(len(v) == 64 for v in annotations.values())
    key = material.gossip_key()
    same_key_twice = [render("ci-defaults", gossipKey=key, aclManagementToken="0" * 8 + "-0000-0000-0000-" + "0" * 12) for _ in range(2)]
    digests = [r.one("StatefulSet", "consul-server")["spec"]["template"]["metadata"]["annotations"] for r in same_key_twice]
    # Generated tokens and certificates differ per render; the brought gossip key is the same.
    assert digests[0]["consul.hashicorp.com/config-checksum"] == digests[1]["consul.hashicorp.com/config-checksum"]
    # A new gossip key restarts no agent: the rotation Job brings it to their keyrings instead.
    # (Without TLS, whose generated certificate differs per render, the digests are comparable.)
    token = "0" * 8 + "-0000-0000-0000-" + "0" * 12
    same, other = (render("ci-defaults", gossipKey=k, aclManagementToken=token, tls=False) for k in (key, material.gossip_key()))
    assert other.one("StatefulSet", "consul-server")["spec"]["template"] == same.one("StatefulSet", "consul-server")["spec"]["template"]
    job_digest = "consul.hashicorp.com/gossip-key-digest"
    rotation = [
        r.one("Job", "consul-gossip-rotation")["spec"]["template"]["metadata"]["annotations"][job_digest]
        for r in (same_key_twice[0], other)
    ]
    assert rotation[0] != rotation[1]


def test_rollouts_and_the_acl_job_wait_as_long_as_they_can_take(default):
    """The provider's default await is 10 minutes: too short for a 7-server rollout or the Job's own deadline."""
    timeouts = {(d.typ.rsplit(":", 1)[-1], d.name): d.custom_timeouts for d in default.kubernetes() if d.custom_timeouts}
    assert timeouts == {
        ("StatefulSet", "consul-server"): {"create": "30m", "update": "30m"},
        ("DaemonSet", "consul-client"): {"create": "30m", "update": "30m"},
        ("Job", "consul-acl-bootstrap"): {"create": "20m", "update": "20m"},
        ("Job", "consul-gossip-rotation"): {"create": "20m", "update": "20m"},
    }
    job = default.one("Job", "consul-acl-bootstrap")
    assert job["spec"]["activeDeadlineSeconds"] == 900  # gives up, with its own message, inside its 20-minute await


def test_a_failed_job_runs_again_at_the_next_up(default):
    """pulumi-kubernetes replaces a Job annotated replaceUnready when the live Job has not
    succeeded: "fix the cause, run pulumi up" re-runs it, though its template did not change."""
    assert {j.name: j.inputs["metadata"].get("annotations") for j in default.of_kind("Job")} == {
        "consul-acl-bootstrap": {"pulumi.com/replaceUnready": "true"},
        "consul-gossip-rotation": {"pulumi.com/replaceUnready": "true"},
    }


def test_the_namespace_outlives_destroy_to_keep_the_data_claims(default):
    (namespace,) = [d for d in default.kubernetes() if d.kind == "Namespace"]
    assert namespace.retain_on_delete is True


# --- rejoin wait -----------------------------------------------------------------------------


def test_the_rejoin_wait_mounts_its_join_file_the_ca_and_the_tokens_and_no_key(default):
    wait, _ = pod(default)["initContainers"]
    assert wait["name"] == "rejoin-wait"
    mounts = {m["name"]: m["mountPath"] for m in wait["volumeMounts"]}
    assert mounts == {"join": "/consul/join", "tmp": "/tmp", "tls-ca": "/consul/tls/ca", "acl-tokens": "/consul/acl"}


@pytest.mark.parametrize("switches", [{}, {"tls": False, "acls": False}])
def test_the_address_hold_is_a_sidecar_that_runs_its_hold_when_stopped_with_the_rejoin_wait_s_files(switches):
    """Kubernetes stops a sidecar (an init container with restartPolicy Always) after the agent:
    its preStop (test_address_hold runs it) holds the pod's address; it reads what the rejoin
    wait reads, and no key."""
    rendered = render("ci-defaults", **switches)
    wait, hold = pod(rendered)["initContainers"]
    assert hold["name"] == "address-hold"
    assert hold["restartPolicy"] == "Always"
    tls, acls = switches.get("tls", True), switches.get("acls", True)
    assert hold["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/sh", "-c", address_hold(tls, acls)]
    assert hold["volumeMounts"] == wait["volumeMounts"]
    assert hold["resources"] == {"requests": {"cpu": "5m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}}
    assert hold["env"] == [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    assert "probe" not in json.dumps(hold).lower()


def test_the_rejoin_wait_asks_the_hosts_of_the_real_join_file(default, tmp_path):
    """The script's first lines (the hosts it reads from the pod's join file) run in a real shell
    on each file of the rendered ConfigMap; the address hold's too."""
    wait, hold = pod(default)["initContainers"]
    script = wait["command"][-1]
    hosts_line = next(line for line in script.splitlines() if line.startswith("hosts="))
    assert hosts_line in hold["lifecycle"]["preStop"]["exec"]["command"][-1].splitlines()
    for name, hosts in join_lists(default).items():
        (tmp_path / f"{name}.json").write_text(default.one("ConfigMap", "consul-server-join")["data"][f"{name}.json"])
        done = subprocess.run(
            ["sh", "-c", hosts_line.replace("/consul/join", str(tmp_path)) + '\necho "$hosts"'],
            env={"PATH": "/usr/bin:/bin", "POD_NAME": name},
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.split() == [host.rsplit(":", 1)[0] for host in hosts]
