"""A second datacenter on real nodes: two stacks of the program, dc1 (the primary) and dc2 (a
secondary of dc1), in two namespaces of the bed's cluster, federated over WAN gossip.

What an operator does: one CA (`consul tls ca create`), one gossip key (`consul keygen`) and one
management token for both stacks, each stack naming the other's namespace in wanPeerNamespaces and
the secondary joining the primary's server Service; then `pulumi up` on the primary and on the
secondary. Asserted on what Consul reports: six servers in the WAN pool, both datacenters in the
catalog, ACL replication running in dc2, dc2's agents in its catalog with their replicated
tokens, and a service registered in dc1 found from dc2 through the API and through dc2's
consul-dns Service.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import LOCAL_AGENT, REAL_NODES, Deployment, consul_dns_ip, consul_http, consul_json, in_pod, keep_module_logs, remove

pytestmark = pytest.mark.e2e

PRIMARY, SECONDARY = "consul-dc1", "consul-dc2"
SECRETS = ("gossipKey", "tlsCaKey", "aclManagementToken")
SERVICE_ADDRESS = "10.20.30.40"
FORMED_BOUND = 120


def shared_material(toolbox) -> dict[str, str]:
    """The CA, gossip key and management token both datacenters share, made with the consul CLI."""
    made = toolbox.sh(
        "cd /tmp && rm -f consul-agent-ca*.pem && consul tls ca create >/dev/null"
        " && cat consul-agent-ca.pem && echo ==== && cat consul-agent-ca-key.pem && echo ==== && consul keygen"
        " && rm -f consul-agent-ca*.pem"
    )
    assert made.returncode == 0, made.stderr
    cert, key, gossip = made.stdout.split("====\n")
    return {"tlsCaCert": cert, "tlsCaKey": key, "gossipKey": gossip.strip(), "aclManagementToken": str(uuid.uuid4())}


@pytest.fixture(scope="module")
def federation(cluster, toolbox, tmp_path_factory) -> Iterator[tuple[Deployment, Deployment]]:
    shared = shared_material(toolbox)
    primary = Deployment(cluster, tmp_path_factory.mktemp("dc1"), namespace=PRIMARY)
    secondary = Deployment(cluster, tmp_path_factory.mktemp("dc2"), namespace=SECONDARY)
    primary.set(SECRETS, **shared, wanPeerNamespaces=[SECONDARY])
    secondary.set(
        SECRETS,
        **shared,
        datacenter="dc2",
        primaryDatacenter="dc1",
        wanJoin=[f"consul-server.{PRIMARY}.svc.cluster.local"],
        wanPeerNamespaces=[PRIMARY],
    )
    try:
        for deployment, what in ((primary, "dc1: first up"), (secondary, "dc2: first up, a secondary of dc1")):
            started = time.monotonic()
            assert deployment.up(what).summary.result == "succeeded"
            print(f"bed: federation: {what} to every pod Ready {time.monotonic() - started:.1f} s")
        yield primary, secondary
    finally:
        keep_module_logs(secondary, "federation-dc2")
        keep_module_logs(primary, "federation-dc1")
        try:
            remove(secondary)
        finally:
            remove(primary)


def server(deployment: Deployment) -> Any:
    return in_pod(deployment, "consul-server-0")


def client(deployment: Deployment) -> Any:
    return in_pod(deployment, deployment.pods("client")[0]["metadata"]["name"])


def test_the_secondary_joins_the_primary_over_the_wan_and_replicates_its_acls(federation):
    primary, secondary = federation
    token = secondary.management_token()
    assert token == primary.management_token()

    def wan_members() -> list[tuple[str, int]]:
        members = consul_json(server(secondary), f"{LOCAL_AGENT}/v1/agent/members?wan=1", token)
        return sorted((m["Name"], m["Status"]) for m in members)

    expected = sorted((f"consul-server-{i}.{dc}", 1) for i in range(3) for dc in ("dc1", "dc2"))
    took = secondary.cluster.wait("six servers alive in the WAN pool", lambda: wan_members() == expected, FORMED_BOUND)
    print(f"\nbed: federation: the WAN pool held both datacenters' servers {took:.1f} s after the secondary's up")
    assert sorted(consul_json(client(secondary), f"{LOCAL_AGENT}/v1/catalog/datacenters", token)) == ["dc1", "dc2"]
    assert sorted(consul_json(client(primary), f"{LOCAL_AGENT}/v1/catalog/datacenters", token)) == ["dc1", "dc2"]

    def replication() -> dict[str, Any]:
        status: dict[str, Any] = consul_json(server(secondary), f"{LOCAL_AGENT}/v1/acl/replication", token)
        return status

    secondary.cluster.wait("ACL replication running in dc2", lambda: replication()["ReplicatedTokenIndex"] > 0, FORMED_BOUND)
    status = replication()
    assert (status["Enabled"], status["Running"], status["SourceDatacenter"], status["ReplicationType"]) == (True, True, "dc1", "tokens")
    # dc2's client agents registered their nodes with the agent token the dc2 ACL Job made: a
    # global token written through dc1 and replicated back.
    nodes = consul_json(server(secondary), f"{LOCAL_AGENT}/v1/catalog/nodes?dc=dc2", token)
    assert set(REAL_NODES) <= {n["Node"] for n in nodes}


def test_a_service_registered_in_the_primary_is_found_from_the_secondary_by_api_and_dns(federation, toolbox):
    primary, secondary = federation
    token = primary.management_token()
    registration = json.dumps({"Name": "web", "ID": "web-dc1", "Address": SERVICE_ADDRESS, "Port": 8080})
    status, body = consul_http(client(primary), "PUT", f"{LOCAL_AGENT}/v1/agent/service/register", token, body=registration, bound=5)
    assert status == 200, body
    try:

        def seen_from_dc2() -> list[str]:
            found = consul_json(client(secondary), f"{LOCAL_AGENT}/v1/catalog/service/web?dc=dc1", token)
            return [entry["ServiceAddress"] for entry in found]

        secondary.cluster.wait("dc1's web in dc2's view of dc1's catalog", lambda: seen_from_dc2() == [SERVICE_ADDRESS], 60)
        dns = consul_dns_ip(secondary)

        def answer() -> str:
            # No token: DNS runs as the anonymous token, global and replicated to dc2.
            return str(toolbox.sh(f"dig +short +time=2 +tries=1 @{dns} web.service.dc1.consul A").stdout.strip())

        took = secondary.cluster.wait("web.service.dc1.consul through dc2's consul-dns", lambda: answer() == SERVICE_ADDRESS, 60)
        print(f"\nbed: federation: web.service.dc1.consul answered {SERVICE_ADDRESS} through dc2's consul-dns after {took:.1f} s")
    finally:
        consul_http(client(primary), "PUT", f"{LOCAL_AGENT}/v1/agent/service/deregister/web-dc1", token, bound=5)
