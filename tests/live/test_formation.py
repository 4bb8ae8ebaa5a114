"""Formation: the rendered stack forms one Consul cluster, and the ACL Job is safe to run again."""

from __future__ import annotations

import json

import pytest
from conftest import consul, management_token

pytestmark = pytest.mark.live


def test_every_agent_is_ready_by_its_own_probe(bed):
    assert [(p.name, p.ready, p.restarts) for p in bed.tier("server")] == [(f"consul-server-{i}", True, 0) for i in range(3)]
    assert [(p.name, p.ready, p.restarts) for p in bed.tier("client")] == [(f"consul-client-node-{i}", True, 0) for i in (1, 2, 3)]


def test_one_leader_three_voters_and_every_member_alive(bed):
    server = bed.pod("consul-server-0")
    peers = consul(server, "operator", "raft", "list-peers", token=management_token(bed))
    assert peers.returncode == 0, peers.stderr
    rows = [line.split() for line in peers.stdout.strip().splitlines()[1:]]
    assert sorted(row[0] for row in rows) == ["consul-server-0", "consul-server-1", "consul-server-2"]
    assert sorted(row[3] for row in rows) == ["follower", "follower", "leader"]
    assert {row[4] for row in rows} == {"true"}
    members = server.exec(["curl", "-s", "-H", f"X-Consul-Token: {management_token(bed)}", "http://127.0.0.1:8500/v1/agent/members"])
    alive = sorted((m["Name"], m["Tags"]["role"], m["Status"]) for m in json.loads(members.stdout))
    assert alive == sorted([(f"consul-server-{i}", "consul", 1) for i in range(3)] + [(f"node-{i}", "node", 1) for i in (1, 2, 3)])


def test_acl_job_completes_and_a_second_run_changes_nothing(bed):
    assert bed.job_status("consul-acl-bootstrap") == "Complete"
    first = bed.pod("consul-acl-bootstrap-1").log()
    assert "created" in first
    bed.rerun_job("consul-acl-bootstrap")
    bed.wait_for("the ACL Job run again", lambda: bed.job_status("consul-acl-bootstrap") == "Complete", 60)
    second = bed.pod("consul-acl-bootstrap-1").log()
    assert "ACL policies and tokens are in place" in second
    assert "created" not in second.split("start #0")[-1]
