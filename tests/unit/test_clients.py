"""ConsulClients, the UI Service and the DNS Service: default/override pairs and the fixed design."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from harness import merged_agent_config, render, run_main
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from consul.clients import STRANDED_LIVENESS_SCRIPT

CLIENT_SELECTOR = {
    "app.kubernetes.io/name": "consul",
    "app.kubernetes.io/instance": "consul",
    "app.kubernetes.io/component": "client",
}
SERVER_SELECTOR = {**CLIENT_SELECTOR, "app.kubernetes.io/component": "server"}


@pytest.fixture(scope="module")
def default():
    return render("ci-defaults")


@pytest.fixture(scope="module")
def statefulset_mode():
    return render("ci-defaults", clientMode="statefulset")


def client_workload(rendered):
    (workload,) = [d.inputs for d in rendered.kubernetes() if d.kind in ("DaemonSet", "StatefulSet") and d.name == "consul-client"]
    return workload


def pod(rendered):
    return client_workload(rendered)["spec"]["template"]["spec"]


def container(rendered):
    (only,) = pod(rendered)["containers"]
    return only


def client_config(rendered):
    return merged_agent_config(rendered.one("ConfigMap", "consul-client-config")["data"])


# --- clientMode / clientReplicas -------------------------------------------------------------------


def test_clients_mode_default_is_one_agent_per_node(default):
    daemonset = default.one("DaemonSet", "consul-client")
    assert daemonset["apiVersion"] == "apps/v1"
    assert daemonset["spec"]["selector"] == {"matchLabels": CLIENT_SELECTOR}
    assert daemonset["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}}
    assert [d.name for d in default.of_kind("StatefulSet")] == ["consul-server"]
    assert "-node=$(NODE_NAME)" in container(default)["args"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in container(default)["env"]
    assert {"name": "data", "emptyDir": {}} in pod(default)["volumes"]
    assert default.outputs["clientMode"] == "daemonset"


def started_agent(rendered, tmp_path, node: str) -> tuple[str, str]:
    """Run the client container's command as its pod would, with the container's arguments and
    `node` for $(NODE_NAME)/$(POD_NAME), a stand-in `consul` that prints what it got, and the data
    dir in tmp_path: (the node-id file written, what `consul` was started with)."""
    c = container(rendered)
    data = tmp_path / node
    data.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "consul").write_text('#!/bin/sh\necho "$@"\n')
    (bin_dir / "consul").chmod(0o755)
    command = [part.replace("/consul/data", str(data)) for part in c["command"]]
    args = [a.replace("$(NODE_NAME)", node).replace("$(POD_NAME)", node) for a in c["args"]]
    out = subprocess.run([*command, *args], capture_output=True, text=True, check=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    return (data / "node-id").read_text(), out.stdout.strip()


def uuid_of(text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def test_clients_node_id_comes_from_the_datacenter_and_the_node_name(default, tmp_path):
    """A replaced agent keeps its node ID: no rename for Consul to refuse after a restore."""
    node_id, started = started_agent(default, tmp_path, "node-1")
    assert node_id == uuid_of("dc1/node-1")
    assert started == " ".join(a.replace("$(NODE_NAME)", "node-1") for a in container(default)["args"])
    assert started_agent(default, tmp_path, "node-2")[0] == uuid_of("dc1/node-2")
    other_dc = tmp_path / "eu-west"
    other_dc.mkdir()
    assert started_agent(render("ci-defaults", datacenter="eu-west"), other_dc, "node-1")[0] == uuid_of("eu-west/node-1")


def test_clients_node_id_in_statefulset_mode_comes_from_the_pod_name(statefulset_mode, tmp_path):
    assert started_agent(statefulset_mode, tmp_path, "consul-client-0")[0] == uuid_of("dc1/consul-client-0")


def test_clients_mode_default_service_is_node_local(default):
    service = default.one("Service", "consul-client")["spec"]
    assert service["internalTrafficPolicy"] == "Local"
    assert "sessionAffinity" not in service
    assert service["selector"] == CLIENT_SELECTOR
    assert {(p["name"], p["port"], p["protocol"]) for p in service["ports"]} == {
        ("http", 8500, "TCP"),
        ("dns-tcp", 8600, "TCP"),
        ("dns-udp", 8600, "UDP"),
    }
    assert default.outputs["agentAddress"] == "http://consul-client.consul.svc:8500"


def test_clients_mode_statefulset(statefulset_mode):
    workload = statefulset_mode.one("StatefulSet", "consul-client")
    assert workload["spec"]["replicas"] == 3
    assert workload["spec"]["serviceName"] == "consul-client-pods"
    assert workload["spec"]["podManagementPolicy"] == "Parallel"
    assert statefulset_mode.of_kind("DaemonSet") == []
    assert "-node=$(POD_NAME)" in container(statefulset_mode)["args"]
    headless = statefulset_mode.one("Service", "consul-client-pods")["spec"]
    assert (headless["clusterIP"], headless["publishNotReadyAddresses"]) == ("None", True)
    assert pod(statefulset_mode)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0][
        "podAffinityTerm"
    ] == {
        "labelSelector": {"matchLabels": CLIENT_SELECTOR},
        "topologyKey": "kubernetes.io/hostname",
    }
    assert statefulset_mode.outputs["clientMode"] == "statefulset"


def test_clients_mode_statefulset_service_sticks_to_one_agent(statefulset_mode):
    service = statefulset_mode.one("Service", "consul-client")["spec"]
    assert service["sessionAffinity"] == "ClientIP"
    assert service["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 86400}}
    assert "internalTrafficPolicy" not in service


def test_clients_replicas_override_in_statefulset_mode():
    assert render("ci-defaults", clientMode="statefulset", clientReplicas=10).one("StatefulSet", "consul-client")["spec"]["replicas"] == 10


def test_clients_replicas_is_ignored_in_daemonset_mode(default):
    def without_material_digest(daemonset):
        # Each render generates new key material, so its digest differs; nothing else may.
        daemonset["spec"]["template"]["metadata"]["annotations"].pop("consul.hashicorp.com/secrets-checksum")
        return daemonset

    ten = without_material_digest(render("ci-defaults", clientReplicas=10).one("DaemonSet", "consul-client"))
    assert ten == without_material_digest(default.one("DaemonSet", "consul-client"))


# --- host ports / host network -----------------------------------------------------------------------


def test_clients_host_ports_default_off(default):
    assert all("hostPort" not in p for p in container(default)["ports"])
    assert "hostNetwork" not in pod(default)
    assert default.one("Namespace", "consul")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert default.warnings == []


def test_clients_host_ports_on():
    from harness import run_main

    rendered = render("ci-defaults", clientHostPorts=True)
    assert {(p["name"], p.get("hostPort")) for p in container(rendered)["ports"]} == {
        ("http", 8500),
        ("serflan-tcp", None),
        ("serflan-udp", None),
        ("dns-tcp", 8600),
        ("dns-udp", 8600),
    }
    assert {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}} in container(rendered)["env"]
    labels = rendered.one("Namespace", "consul")["metadata"]["labels"]
    assert (labels["pod-security.kubernetes.io/enforce"], labels["pod-security.kubernetes.io/warn"]) == ("privileged", "restricted")
    assert rendered.outputs["agentAddress"] == "http://$(HOST_IP):8500"
    program, error = run_main("ci-defaults", clientHostPorts=True)
    assert error is None
    assert program.warnings == [
        'consul:clientHostPorts/clientHostNetwork/clientDataHostPath need host access: namespace consul enforces Pod Security "privileged" (and still warns and audits against "restricted").'
    ]


def test_clients_host_network_on():
    rendered = render("ci-defaults", clientHostNetwork=True, networkPolicy=False)
    assert pod(rendered)["hostNetwork"] is True
    assert pod(rendered)["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert rendered.one("Namespace", "consul")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert rendered.outputs["agentAddress"] == "http://$(HOST_IP):8500"


def test_clients_data_on_the_node_keeps_registrations_through_a_new_pod():
    """clientDataHostPath: each agent's data dir is its node's subdirectory of the path, given to
    the consul user by a root init container with CHOWN and FOWNER only."""
    rendered = render("ci-defaults", clientDataHostPath="/var/lib/consul-agent")
    spec = pod(rendered)
    assert {"name": "data", "hostPath": {"path": "/var/lib/consul-agent", "type": "DirectoryOrCreate"}} in spec["volumes"]
    mount = {"name": "data", "mountPath": "/consul/data", "subPathExpr": "$(POD_NAMESPACE)/$(NODE_NAME)"}
    assert mount in container(rendered)["volumeMounts"]
    (owner,) = spec["initContainers"]
    assert owner["volumeMounts"] == [mount]
    assert owner["command"][-1] == "chown 100:1000 /consul/data; chmod 0700 /consul/data"
    assert owner["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert rendered.one("Namespace", "consul")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in owner["env"]
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in container(rendered)["env"]
    # The agent still leaves: it comes back at a new pod address (see agent_config.client_config).
    assert client_config(rendered)["leave_on_terminate"] is True


def test_clients_data_stays_on_an_empty_dir_by_default(default):
    assert {"name": "data", "emptyDir": {}} in pod(default)["volumes"]
    assert "initContainers" not in pod(default)
    assert client_config(default)["leave_on_terminate"] is True


def test_clients_host_network_is_refused_with_network_policies():
    rendered, error = run_main("ci-defaults", clientHostNetwork=True)
    assert str(error) == (
        "invalid consul:clientHostNetwork true: must be false while consul:networkPolicy is true: an agent on the host "
        "network sends from its node's address, which the servers' NetworkPolicy (admitting client agents by pod label) "
        "does not match on common CNIs, so the agents could not reach the servers; use consul:clientHostPorts, which "
        "keeps pod addresses, or turn networkPolicy off"
    )
    assert rendered.declared == []


# --- resources, tolerations, node selector, extra config -------------------------------------------


def test_clients_resources_default(default):
    assert container(default)["resources"] == {"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"cpu": "500m", "memory": "100Mi"}}


def test_clients_resources_override():
    resources = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
    assert container(render("ci-defaults", clientResources=resources))["resources"] == resources


def test_clients_tolerations_and_node_selector_default(default):
    assert "tolerations" not in pod(default)
    assert "nodeSelector" not in pod(default)


def test_clients_tolerations_and_node_selector_override():
    spec = pod(render("ci-defaults", clientTolerations=[{"operator": "Exists"}], clientNodeSelector={"kubernetes.io/os": "linux"}))
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_clients_extra_config_default(default):
    assert set(default.one("ConfigMap", "consul-client-config")["data"]) == {"00-agent.json", "05-cluster-size.json"}


def test_clients_extra_config_override():
    data = render("ci-defaults", clientExtraConfig={"log_level": "warn"}).one("ConfigMap", "consul-client-config")["data"]
    assert json.loads(data["90-extra.json"]) == {"log_level": "warn"}


# --- the fixed design ---------------------------------------------------------------------------------


def test_clients_join_the_servers_by_their_pod_names(default):
    assert client_config(default)["retry_join"] == [f"consul-server-{i}.consul-server.consul.svc:8301" for i in range(3)]


def test_clients_agent_config_design(default):
    config = client_config(default)
    assert config["server"] is False
    assert config["leave_on_terminate"] is True
    assert config["rejoin_after_leave"] is True
    # DNS answers from the agent cache, kept current by a blocking query, through a server outage.
    assert config["dns_config"] == {"use_cache": True}
    assert config["datacenter"] == "dc1"
    assert config["data_dir"] == "/consul/data"
    # A server that stops answering (its node lost) is given up after 3 s, not after gossip
    # declares it failed (5 to 6 s): the client's next call goes to another server.
    assert config["limits"] == {"rpc_client_timeout": "3s"}


def test_clients_probes(default):
    c = container(default)
    # Ready while the agent's API listens, leader or not: a server outage leaves the node's agent in
    # the Service (any HTTP endpoint without a token is an RPC on a client, 500 with no servers).
    assert c["readinessProbe"] == {
        "tcpSocket": {"port": "http"},
        "initialDelaySeconds": 2,
        "periodSeconds": 3,
        "failureThreshold": 2,
        "successThreshold": 1,
        "timeoutSeconds": 2,
    }
    # Failing only when hung or stranded (tests/unit/test_client_liveness.py), and restarted only
    # after minutes of it: a server election (seconds) never restarts clients.
    assert c["livenessProbe"]["exec"]["command"] == ["/bin/sh", "-ec", STRANDED_LIVENESS_SCRIPT]
    window = c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"]
    assert window == 300
    assert c["livenessProbe"]["timeoutSeconds"] == 30


def test_clients_short_grace_period_and_no_prestop(default):
    assert pod(default)["terminationGracePeriodSeconds"] == 10
    assert "lifecycle" not in container(default)


def test_clients_service_account_and_security(default):
    assert default.one("ServiceAccount", "consul-client")["automountServiceAccountToken"] is False
    assert pod(default)["serviceAccountName"] == "consul-client"
    assert pod(default)["securityContext"]["runAsNonRoot"] is True
    assert container(default)["securityContext"]["readOnlyRootFilesystem"] is True


def test_clients_config_checksum_rolls_agents(default):
    annotation = client_workload(default)["spec"]["template"]["metadata"]["annotations"]["consul.hashicorp.com/config-checksum"]
    changed = render("ci-defaults", clientExtraConfig={"log_level": "debug"})
    assert client_workload(changed)["spec"]["template"]["metadata"]["annotations"]["consul.hashicorp.com/config-checksum"] != annotation


def test_clients_children_are_parented(default):
    children = [d for d in default.kubernetes() if d.parent.endswith("consul:index:ConsulClients::consul")]
    assert sorted((d.kind, d.name) for d in children) == [
        ("ConfigMap", "consul-client-config"),
        ("DaemonSet", "consul-client"),
        ("NetworkPolicy", "consul-client"),
        ("Service", "consul-client"),
        ("Service", "consul-dns"),
        ("ServiceAccount", "consul-client"),
    ]


# --- UI Service ---------------------------------------------------------------------------------------


def test_ui_service_default(default):
    ui = default.one("Service", "consul-ui")
    assert ui["spec"] == {
        "type": "ClusterIP",
        "selector": SERVER_SELECTOR,
        "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}],
    }
    assert "annotations" not in ui["metadata"]
    assert default.outputs["uiServiceName"] == "consul-ui"


@pytest.mark.parametrize("service_type", ["NodePort", "LoadBalancer"])
def test_ui_service_type_override(service_type):
    rendered = render("ci-defaults", uiServiceType=service_type, serverApiCidrs=["10.0.0.0/8"])
    assert rendered.one("Service", "consul-ui")["spec"]["type"] == service_type


def test_ui_service_none():
    rendered = render("ci-defaults", uiServiceType="None")
    assert "consul-ui" not in [d.name for d in rendered.of_kind("Service")]
    assert rendered.outputs["uiServiceName"] is None


def test_ui_service_annotations_override():
    annotations = {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}
    rendered = render("ci-defaults", uiServiceType="LoadBalancer", uiServiceAnnotations=annotations, serverApiCidrs=["10.0.0.0/8"])
    ui = rendered.one("Service", "consul-ui")
    assert ui["metadata"]["annotations"] == annotations


# --- DNS Service --------------------------------------------------------------------------------------


def test_dns_service_default_serves_udp_and_tcp_from_clients(default):
    dns = default.one("Service", "consul-dns")["spec"]
    assert dns["type"] == "ClusterIP"
    assert "clusterIP" not in dns
    assert dns["selector"] == CLIENT_SELECTOR
    assert sorted((p["protocol"], p["port"], p["targetPort"]) for p in dns["ports"]) == [("TCP", 53, "dns-tcp"), ("UDP", 53, "dns-udp")]
    assert {"dns-tcp", "dns-udp"} <= {p["name"] for p in container(default)["ports"]}


def test_dns_service_off():
    rendered = render("ci-defaults", dnsService=False)
    assert "consul-dns" not in [d.name for d in rendered.of_kind("Service")]
    assert rendered.outputs["dnsServiceName"] is None


def test_dns_lookups_reach_any_ready_agent_unless_a_traffic_distribution_is_set():
    assert "trafficDistribution" not in render("ci-defaults").one("Service", "consul-dns")["spec"]
    same_node = render("ci-defaults", dnsTrafficDistribution="PreferSameNode").one("Service", "consul-dns")
    assert same_node["spec"]["trafficDistribution"] == "PreferSameNode"


def test_dns_service_fixed_cluster_ip():
    assert render("ci-defaults", dnsClusterIP="10.96.0.53").one("Service", "consul-dns")["spec"]["clusterIP"] == "10.96.0.53"


# --- invariants ---------------------------------------------------------------------------------------


def _selectors(manifest):
    spec = manifest.get("spec", {})
    if manifest["kind"] == "NetworkPolicy":
        # The servers' API rule selects the Jobs by a set of components: tested on its own.
        peers = [
            peer["podSelector"]["matchLabels"]
            for rule in spec["ingress"]
            for peer in rule.get("from", [])
            if "podSelector" in peer and "matchExpressions" not in peer["podSelector"]
        ]
        return [spec["podSelector"]["matchLabels"], *peers]
    if manifest["kind"] == "Service":
        return [spec.get("selector") or {}]
    if "selector" in spec:
        return [spec["selector"]["matchLabels"]]
    return []


def _pod_labels(manifest):
    template = manifest.get("spec", {}).get("template")
    return template["metadata"]["labels"] if template else None


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow], phases=[Phase.explicit, Phase.reuse, Phase.generate]
)
@given(
    replicas=st.sampled_from([1, 3, 5, 7]),
    namespace=st.from_regex(r"\A[a-z]([a-z0-9-]{0,15}[a-z0-9])?\Z"),
    mode=st.sampled_from(["daemonset", "statefulset"]),
)
def test_property_tiers_never_share_a_selector_and_clients_join_every_server(replicas, namespace, mode):
    rendered = render("ci-defaults", serverReplicas=replicas, namespace=namespace, clientMode=mode)
    manifests = list(rendered.manifests())
    tiers = {m["metadata"]["name"]: _pod_labels(m) for m in manifests if _pod_labels(m)}
    assert set(tiers) == {"consul-server", "consul-client", "consul-acl-bootstrap", "consul-gossip-rotation"}
    for m in manifests:
        for selector in _selectors(m):
            matched = [name for name, labels in tiers.items() if selector.items() <= labels.items()]
            assert len(matched) == 1, (m["kind"], m["metadata"]["name"], matched)
    expected = [f"consul-server-{i}.consul-server.{namespace}.svc:8301" for i in range(replicas)]
    assert client_config(rendered)["retry_join"] == expected
    dns = rendered.one("Service", "consul-dns")["spec"]
    assert {p["protocol"] for p in dns["ports"]} == {"UDP", "TCP"}


def test_clients_are_not_replaced_while_a_staged_server_upgrade_holds_servers_back():
    """Consul's upgrade order in a staged upgrade: with serverUpdatePartition above 0 the clients'
    pods are left as they are (OnDelete, nothing awaited); the last step (partition 0) returns the
    strategy to RollingUpdate, and the clients roll then, after the servers (ConsulClients depends
    on ConsulServers)."""
    for mode, kind in (("daemonset", "DaemonSet"), ("statefulset", "StatefulSet")):
        held = render("ci-defaults", serverReplicas=5, serverUpdatePartition=3, clientMode=mode).one(kind, "consul-client")
        assert held["spec"]["updateStrategy"]["type"] == "OnDelete"
        assert held["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}
        last_step = render("ci-defaults", serverReplicas=5, serverUpdatePartition=0, clientMode=mode).one(kind, "consul-client")
        assert last_step["spec"]["updateStrategy"]["type"] == "RollingUpdate"
        assert "pulumi.com/skipAwait" not in (last_step["metadata"].get("annotations") or {})
        assert held["spec"]["template"]["spec"]["containers"] == last_step["spec"]["template"]["spec"]["containers"]
