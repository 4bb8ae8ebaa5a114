"""A second datacenter on real nodes: two stacks of the program, dc1 (the primary) and dc2 (a
secondary of dc1), in two namespaces of the bed's cluster, federated over WAN gossip.

What an operator does: one CA (`consul tls ca create`), one gossip key (`consul keygen`) and one
management token for both stacks, each stack naming the other's namespace in wanPeerNamespaces and
the secondary joining the primary's server Service; `pulumi up` on the primary, its
aclReplicationToken output into the secondary's settings, `pulumi up` on the secondary. Asserted
on what Consul reports: six servers in the WAN pool, both datacenters in the catalog, ACL
replication running in dc2, dc2's agents in its catalog with their replicated tokens, a token
made in dc1 honoured in dc2, a service registered in either datacenter found from the other
through the API and through the other's consul-dns Service, and dc1 serving within the bounds
while every dc2 server is down.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    LOCAL_AGENT,
    REAL_NODES,
    Deployment,
    consul_dns_ip,
    consul_http,
    consul_json,
    in_pod,
    keep_module_logs,
    new_consul_ca,
    remove,
)

from testbed.redaction import Secret

pytestmark = pytest.mark.e2e

PRIMARY, SECONDARY = "consul-dc1", "consul-dc2"
SECRETS = ("gossipKey", "tlsCaKey", "aclManagementToken", "aclReplicationToken")
SERVICE_ADDRESS = "10.20.30.40"
FORMED_BOUND = 120


def shared_material(toolbox) -> dict[str, str]:
    """The CA, gossip key and management token both datacenters share, made with the consul CLI."""
    cert, key = new_consul_ca(toolbox)
    gossip = toolbox.sh("consul keygen")
    assert gossip.returncode == 0, gossip.stderr
    return {
        "tlsCaCert": cert,
        "tlsCaKey": Secret(key),
        "gossipKey": Secret(gossip.stdout.strip()),
        "aclManagementToken": Secret(str(uuid.uuid4())),
    }


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
            if deployment is secondary:
                # The README's pipe: the primary's output into the secondary's settings, as a secret.
                secondary.set(SECRETS, aclReplicationToken=primary.stack.outputs()["aclReplicationToken"].value)
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


def test_a_token_made_in_the_primary_is_honoured_in_the_secondary(federation):
    primary, secondary = federation
    management = primary.management_token()
    policy = json.dumps({"Name": "federation-kv", "Rules": 'key_prefix "federation/" { policy = "write" }'})
    status, body = consul_http(server(primary), "PUT", f"{LOCAL_AGENT}/v1/acl/policy", management, body=policy, bound=5)
    assert status == 200, body
    status, body = consul_http(
        server(primary),
        "PUT",
        f"{LOCAL_AGENT}/v1/acl/token",
        management,
        body=json.dumps({"Policies": [{"Name": "federation-kv"}]}),
        bound=5,
    )
    assert status == 200, body
    token = Secret(json.loads(body)["SecretID"])
    try:

        def written_in_dc2() -> int:
            return consul_http(client(secondary), "PUT", f"{LOCAL_AGENT}/v1/kv/federation/from-dc1-token", token, body="x", bound=5)[0]

        took = secondary.cluster.wait("dc1's token writes its prefix in dc2", lambda: written_in_dc2() == 200, 60)
        print(f"\nbed: federation: a token made in dc1 wrote in dc2 {took:.1f} s after it was made")
        assert consul_http(client(secondary), "PUT", f"{LOCAL_AGENT}/v1/kv/elsewhere", token, body="x", bound=5)[0] == 403
    finally:
        accessor = json.loads(body)["AccessorID"]
        consul_http(server(primary), "DELETE", f"{LOCAL_AGENT}/v1/acl/token/{accessor}", management, bound=5)


@pytest.mark.parametrize("direction", ["dc1 to dc2", "dc2 to dc1"])
def test_a_service_registered_in_one_datacenter_is_found_from_the_other_by_api_and_dns(federation, toolbox, direction):
    primary, secondary = federation
    home, away = (primary, secondary) if direction == "dc1 to dc2" else (secondary, primary)
    home_dc = "dc1" if home is primary else "dc2"
    token = primary.management_token()
    registration = json.dumps({"Name": "web", "ID": f"web-{home_dc}", "Address": SERVICE_ADDRESS, "Port": 8080})
    status, body = consul_http(client(home), "PUT", f"{LOCAL_AGENT}/v1/agent/service/register", token, body=registration, bound=5)
    assert status == 200, body
    try:

        def seen_from_away() -> list[str]:
            found = consul_json(client(away), f"{LOCAL_AGENT}/v1/catalog/service/web?dc={home_dc}", token)
            return [entry["ServiceAddress"] for entry in found]

        away.cluster.wait(f"{home_dc}'s web in the other datacenter's view", lambda: seen_from_away() == [SERVICE_ADDRESS], 60)
        dns = consul_dns_ip(away)

        def answer() -> str:
            # No token: DNS runs as the anonymous token, global and replicated.
            return str(toolbox.sh(f"dig +short +time=2 +tries=1 @{dns} web.service.{home_dc}.consul A").stdout.strip())

        took = away.cluster.wait(f"web.service.{home_dc}.consul through the other's consul-dns", lambda: answer() == SERVICE_ADDRESS, 60)
        print(
            f"\nbed: federation: web.service.{home_dc}.consul answered {SERVICE_ADDRESS} through the other datacenter's consul-dns after {took:.1f} s"
        )
    finally:
        consul_http(client(home), "PUT", f"{LOCAL_AGENT}/v1/agent/service/deregister/web-{home_dc}", token, bound=5)


def test_the_primary_serves_within_the_bounds_while_every_secondary_server_is_down(federation, toolbox):
    """dc2's three servers held down (their nodes cordoned, their pods deleted) for 20 s under a
    watch of dc1: dc1 keeps its leader, its writes and its agents, and dc2 comes back."""
    from conftest import assert_bounds, servers_held_down
    from watch import Watch

    primary, secondary = federation
    servers = ["consul-server-0", "consul-server-1", "consul-server-2"]
    with Watch(primary, toolbox, "dc1 while every dc2 server is down") as watch, servers_held_down(secondary, servers):
        time.sleep(20)
    assert watch.summary is not None
    assert_bounds(watch, 3)
    token = primary.management_token()
    expected = sorted((f"consul-server-{i}.{dc}", 1) for i in range(3) for dc in ("dc1", "dc2"))
    took = primary.cluster.wait(
        "dc2's servers back in the WAN pool",
        lambda: (
            sorted((m["Name"], m["Status"]) for m in consul_json(server(primary), f"{LOCAL_AGENT}/v1/agent/members?wan=1", token))
            == expected
        ),
        FORMED_BOUND,
    )
    print(f"\nbed: federation: dc2's servers alive in the WAN pool again {took:.1f} s after they were let back")
