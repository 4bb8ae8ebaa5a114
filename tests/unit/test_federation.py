"""A second datacenter (WAN federation): what a secondary must bring, and what its agents and
NetworkPolicy say. Proven with two stacks on the real-node bed by tests/e2e/test_federation.py."""

from __future__ import annotations

import base64
import json
from typing import Any

import material
import pytest
from harness import merged_agent_config, render, run_main

from consul.settings import SettingsError

GOSSIP_KEY = base64.b64encode(bytes(range(32))).decode()
MANAGEMENT_TOKEN = "5e1c0a11-0000-4000-8000-00000000aaaa"
REPLICATION_TOKEN = "5e1c0a11-0000-4000-8000-00000000bbbb"
CA = material.certificate_authority("Consul CA dc1")
SECONDARY: dict[str, Any] = {
    "datacenter": "dc2",
    "primaryDatacenter": "dc1",
    "wanJoin": ["consul-server.consul-dc1.svc"],
    "wanPeerNamespaces": ["consul-dc1"],
    "gossipKey": GOSSIP_KEY,
    "tlsCaCert": CA.cert_pem,
    "tlsCaKey": CA.key_pem,
    "aclManagementToken": MANAGEMENT_TOKEN,
    "aclReplicationToken": REPLICATION_TOKEN,
}


@pytest.fixture(scope="module")
def secondary() -> Any:
    return render("ci-defaults", **SECONDARY)


def test_a_secondary_s_agents_name_the_primary_and_its_servers_join_over_the_wan(secondary: Any) -> None:
    server = merged_agent_config(secondary.one("ConfigMap", "consul-server-config")["data"])
    client = merged_agent_config(secondary.one("ConfigMap", "consul-client-config")["data"])
    assert (server["datacenter"], server["primary_datacenter"], client["primary_datacenter"]) == ("dc2", "dc1", "dc1")
    assert server["retry_join_wan"] == ["consul-server.consul-dc1.svc"]
    assert server["acl"]["enable_token_replication"] is True
    assert "enable_token_replication" not in client["acl"]


def test_a_secondary_s_servers_replicate_with_the_primary_s_replication_token(secondary: Any) -> None:
    files = secondary.one("Secret", "consul-server-acl-config")["stringData"]
    for text in files.values():
        tokens = json.loads(text)["acl"]["tokens"]
        assert (tokens["replication"], tokens["initial_management"]) == (REPLICATION_TOKEN, MANAGEMENT_TOKEN)
    # A secondary makes no replication token of its own.
    assert "aclReplicationToken" not in secondary.outputs


def test_the_primary_of_a_federation_makes_the_replication_token_and_exports_it_as_a_secret() -> None:
    from harness import run_main

    primary = render("ci-defaults", wanPeerNamespaces=["consul-dc2"])
    tokens = primary.one("Secret", "consul-acl-tokens")["stringData"]
    assert primary.outputs["aclReplicationToken"] == tokens["replication"]
    assert "aclReplicationToken" in primary.secret_outputs
    job = primary.one("Job", "consul-acl-bootstrap")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in job["env"]}
    assert env["REPLICATION_RULES"] == 'acl = "write"\noperator = "write"\nservice_prefix "" { policy = "read" intentions = "read" }\n'
    assert env["REPLICATION_ACCESSOR"]
    standalone = render("ci-defaults")
    assert "replication" not in standalone.one("Secret", "consul-acl-tokens")["stringData"]
    assert "aclReplicationToken" not in standalone.outputs
    _, error = run_main("ci-defaults", aclReplicationToken=REPLICATION_TOKEN)
    assert str(error) == "invalid consul:aclReplicationToken [secret]: must be unset unless consul:primaryDatacenter is set (a secondary)"


def test_the_servers_admit_the_peer_datacenters_servers_to_rpc_and_wan_gossip_only(secondary: Any) -> None:
    rules = secondary.one("NetworkPolicy", "consul-server")["spec"]["ingress"]
    (wan,) = [r for r in rules if any("namespaceSelector" in p and "podSelector" in p for p in r["from"])]
    assert wan["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["consul-dc1"]
    assert wan["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "server"
    assert sorted((p["port"], p["protocol"]) for p in wan["ports"]) == [(8300, "TCP"), (8302, "TCP"), (8302, "UDP")]


def test_a_primary_declares_no_federation_keys() -> None:
    primary = render("ci-defaults")
    server = merged_agent_config(primary.one("ConfigMap", "consul-server-config")["data"])
    assert not {"primary_datacenter", "retry_join_wan"} & set(server)
    assert "enable_token_replication" not in server["acl"]
    assert all(
        "replication" not in json.loads(t)["acl"]["tokens"]
        for t in primary.one("Secret", "consul-server-acl-config")["stringData"].values()
    )


REFUSED: list[tuple[dict[str, Any], str]] = [
    (
        {"wanJoin": []},
        "invalid consul:wanJoin []: must list the primary datacenter's server addresses when consul:primaryDatacenter is set (dc1)",
    ),
    (
        {"gossipKey": ""},
        "invalid consul:gossipKey null: must be the primary datacenter's gossip key when consul:primaryDatacenter is set (dc1): one keyring encrypts WAN gossip",
    ),
    (
        {"tlsCaCert": "", "tlsCaKey": ""},
        "invalid consul:tlsCaCert null: must be the primary datacenter's CA (with tlsCaKey) when consul:primaryDatacenter is set (dc1): "
        "servers verify each other's certificates across datacenters",
    ),
    (
        {"aclManagementToken": ""},
        "invalid consul:aclManagementToken null: must be the primary datacenter's management token when consul:primaryDatacenter is set "
        "(dc1): it is global, and this datacenter's ACL Job writes with it",
    ),
    (
        {"aclReplicationToken": ""},
        "invalid consul:aclReplicationToken null: must be the primary's aclReplicationToken output when consul:primaryDatacenter is set "
        "(dc1): the servers replicate ACLs with it",
    ),
    (
        {"kubernetesAuth": True, "kubernetesAuthNamespaces": ["shop"]},
        "invalid consul:kubernetesAuth true: must be false when consul:primaryDatacenter is set (dc1): auth methods are global, and every "
        "datacenter would declare its own under one name",
    ),
    (
        {"primaryDatacenter": "dc2"},
        'invalid consul:primaryDatacenter "dc2": must be empty (this datacenter is the primary) or the name of another datacenter than '
        "'dc2': 1 to 63 lowercase letters, digits, '-' or '_'",
    ),
    (
        {"wanJoin": ["consul server"]},
        'invalid consul:wanJoin ["consul server"]: each entry must be a host name or IP, with an optional :port, such as '
        '"consul-server.consul-dc1.svc" (got "consul server")',
    ),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED, ids=[",".join(o) for o, _ in REFUSED])
def test_a_secondary_without_what_it_shares_with_the_primary_is_refused_before_anything_is_declared(
    overrides: dict[str, Any], message: str
) -> None:
    rendered, error = run_main("ci-defaults", **{**SECONDARY, **overrides})
    assert isinstance(error, SettingsError)
    assert str(error) == message
    assert rendered.declared == []
