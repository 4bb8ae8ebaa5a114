"""The seed's flow: a workload registers with its node's agent, is found by DNS, deregisters in one call."""

from __future__ import annotations

import json

import pytest
from conftest import http, management_token, workload

pytestmark = pytest.mark.live

ACL_CACHE_TTL = 30  # Consul's default acl.token_ttl


def dig(bed, pod, name: str, server_ip: str, port: int = 8600) -> list[str]:
    out = bed.netns_exec(pod, ["dig", "+short", "+time=2", "+tries=1", "-p", str(port), f"@{server_ip}", name, "A"])
    return sorted(line for line in out.stdout.split() if line)


def catalog_services(pod, token: str) -> dict[str, list[str]]:
    out = pod.exec(["curl", "-s", "-H", f"X-Consul-Token: {token}", "http://127.0.0.1:8500/v1/catalog/services"])
    services: dict[str, list[str]] = json.loads(out.stdout)
    return services


def test_dns_answers_under_default_deny(bed):
    """DNS queries carry no token: the anonymous token must be able to read nodes and services."""
    client = bed.tier("client")[0]
    assert http(client, "PUT", "/v1/agent/service/register", management_token(bed), {"Name": "dns-check", "Port": 1}) == 200
    bed.wait_for("dns-check in the catalog", lambda: "dns-check" in catalog_services(client, management_token(bed)), 10)
    # An agent may hold the anonymous token's earlier (empty) policy set for the ACL cache's TTL (30 s).
    took = bed.wait_for("DNS answers", lambda: dig(bed, client, "dns-check.service.consul", client.ip) == [client.ip], ACL_CACHE_TTL + 5)
    print(f"\nlive: DNS answered {took:.1f} s after the registration")
    assert dig(bed, client, "node-1.node.consul", client.ip) == [bed.pod("consul-client-node-1").ip]
    # Read nodes and services for DNS, and no more: the anonymous token reads no key.
    assert http(client, "PUT", "/v1/kv/private", management_token(bed), "x") == 200
    assert http(client, "GET", "/v1/kv/private") == 403


def test_workload_registers_is_found_by_dns_and_deregisters(bed, rendered):
    app = workload(bed, rendered, "web-app", node=0, service_token="web")
    client = next(p for p in bed.tier("client") if p.placement.node == app.placement.node)
    server = bed.pod("consul-server-0")

    registered = app.exec(["sh", "-ec", 'consul services register -name web -id web-1 -port 8080 -address "$POD_IP"'])
    assert registered.returncode == 0, registered.stderr
    assert bed.wait_for("web in the catalog", lambda: "web" in catalog_services(server, management_token(bed)), 10) < 10

    # DNS as the consul-dns Service (53 -> 8600) serves it: the client agents answer, with no token.
    for agent in bed.tier("client"):
        bed.wait_for(f"web by DNS through {agent.name}", lambda a=agent: dig(bed, app, "web.service.consul", a.ip) == [app.ip], 10)

    deregistered = app.exec(["consul", "services", "deregister", "-id", "web-1"])
    assert deregistered.returncode == 0, deregistered.stderr
    assert "web" not in catalog_services(server, management_token(bed))
    # DNS reads may be served by a follower (allow_stale), a moment behind the leader.
    bed.wait_for("web gone from DNS", lambda: dig(bed, app, "web.service.consul", client.ip) == [], 5)


def test_a_service_token_writes_only_its_own_service(bed, rendered):
    app = workload(bed, rendered, "web-intruder", node=1, service_token="web")
    other = app.exec(["consul", "services", "register", "-name", "billing", "-port", "9090"])
    assert other.returncode != 0
    assert "Permission denied" in other.stderr + other.stdout
