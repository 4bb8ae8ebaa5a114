"""The ACL Job's script, run by `sh` against the answers a real Consul 1.16.1 gave it (recorded by
recorded/record.py): what it creates, revokes and leaves alone, and how it fails. The real-node
bed runs it in its pod against real servers (tests/e2e/test_refusals.py)."""

from __future__ import annotations

import copy
import shutil

import pytest
from acl_job import (
    AUTH_SELECTOR,
    AUTH_TTL,
    CLUSTER_CA,
    MANAGEMENT_SECRET,
    MARKER,
    REVIEWER_JWT,
    TOKENS,
    RecordedConsul,
    Turns,
    recorded,
    run_job,
)

from consul.acl_bootstrap import ANONYMOUS_TOKEN_ID

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq")), reason="the Job's image has curl and jq; this machine has not"
)

TOKENS_LIST = "/v1/acl/tokens"


def stub_token(accessor: str, description: str, **grants: object) -> dict[str, object]:
    """A token as /v1/acl/tokens lists it, in the shape of the recorded ones, with only `grants`."""
    token = copy.deepcopy(recorded("reconciled")[TOKENS_LIST][0])
    for key in ("Policies", "ServiceIdentities", "NodeIdentities", "Roles"):
        token.pop(key, None)
    token.update(AccessorID=accessor, Description=description, **grants)
    return token


def test_a_fresh_cluster_gets_every_policy_and_token(tmp_path):
    with RecordedConsul(recorded("fresh")) as consul:
        job = run_job(consul.address, tmp_path)
    assert job.returncode == 0, job.stderr
    assert consul.writes() == [
        ("PUT", "/v1/acl/policy"),
        *[("PUT", "/v1/acl/token")] * 5,
        ("PUT", "/v1/acl/policy"),
        ("PUT", "/v1/acl/token"),
        ("PUT", "/v1/acl/policy"),
        ("PUT", f"/v1/acl/token/{ANONYMOUS_TOKEN_ID}"),
        ("PUT", "/v1/operator/autopilot/configuration"),
    ]
    assert {r.token for r in consul.requests if r.path != "/v1/status/leader"} == {MANAGEMENT_SECRET}
    created = consul.sent("PUT", "/v1/acl/token")
    assert [(t["AccessorID"], t["SecretID"]) for t in created] == list(TOKENS.values())
    assert [t["Description"] for t in created] == [
        f"{MARKER}agent token of the Consul clients",
        *[f"{MARKER}agent token of consul-server-{i}" for i in range(3)],
        f"{MARKER}service token of web",
        f"{MARKER}metrics token",
    ]
    assert created[1]["NodeIdentities"] == [{"NodeName": "consul-server-0", "Datacenter": "dc1"}]
    assert created[4]["ServiceIdentities"] == [{"ServiceName": "web"}]
    [autopilot] = consul.sent("PUT", "/v1/operator/autopilot/configuration")
    assert autopilot == {**recorded("fresh")["/v1/operator/autopilot/configuration"], "MinQuorum": 2}
    assert job.stdout.splitlines()[-1] == "ACL policies and tokens are in place"


def test_a_cluster_in_the_declared_state_is_left_as_it_is(tmp_path):
    with RecordedConsul(recorded("reconciled")) as consul:
        job = run_job(consul.address, tmp_path)
    assert job.returncode == 0, job.stderr
    assert consul.writes() == []


def test_tokens_the_stack_no_longer_declares_are_revoked_and_no_other(tmp_path):
    """Revoked: a marked token no longer declared, the unmarked ones of earlier versions with their
    exact description and grants, an earlier management token. Kept: the Job's own management
    token, another datacenter's marked token, and tokens made by hand, whatever their description."""
    answers = recorded("reconciled")
    self_accessor = answers["/v1/acl/token/self"]["AccessorID"]
    management = [{"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}]
    gone = [
        stub_token(
            "0b5e0e7e-0000-4000-8000-000000000001", f"{MARKER}service token of billing", ServiceIdentities=[{"ServiceName": "billing"}]
        ),
        stub_token(
            "0b5e0e7e-0000-4000-8000-000000000002",
            "agent token of consul-server-3",
            NodeIdentities=[{"NodeName": "consul-server-3", "Datacenter": "dc1"}],
        ),
        stub_token("0b5e0e7e-0000-4000-8000-000000000003", "service token of billing", ServiceIdentities=[{"ServiceName": "billing"}]),
        stub_token("0b5e0e7e-0000-4000-8000-000000000004", "Initial Management Token", Policies=management),
    ]
    kept = [
        stub_token(
            "0b5e0e7e-0000-4000-8000-000000000011", "[consul dc2] service token of billing", ServiceIdentities=[{"ServiceName": "billing"}]
        ),
        stub_token("0b5e0e7e-0000-4000-8000-000000000012", "a token of the deploy pipeline", Policies=management),
        stub_token("0b5e0e7e-0000-4000-8000-000000000013", "snapshot token", Policies=management),
        stub_token(
            "0b5e0e7e-0000-4000-8000-000000000014",
            "agent token of consul-server-3",
            NodeIdentities=[{"NodeName": "consul-server-3", "Datacenter": "dc2"}],
        ),
        stub_token("0b5e0e7e-0000-4000-8000-000000000015", "service token of billing", ServiceIdentities=[{"ServiceName": "web"}]),
    ]
    answers[TOKENS_LIST] += gone + kept
    with RecordedConsul(answers) as consul:
        job = run_job(consul.address, tmp_path)
    assert job.returncode == 0, job.stderr
    assert consul.writes() == [("DELETE", f"/v1/acl/token/{t['AccessorID']}") for t in gone]
    assert self_accessor not in {path.rsplit("/", 1)[-1] for _, path in consul.writes()}
    assert "revoked [consul dc1] service token of billing (0b5e0e7e-0000-4000-8000-000000000001)" in job.stdout


def test_earlier_management_tokens_are_kept_while_a_partition_holds_servers_back(tmp_path):
    answers = recorded("reconciled")
    management = [{"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}]
    answers[TOKENS_LIST] += [stub_token("0b5e0e7e-0000-4000-8000-000000000004", "Initial Management Token", Policies=management)]
    with RecordedConsul(answers) as consul:
        job = run_job(consul.address, tmp_path, all_servers_updated=False)
    assert job.returncode == 0, job.stderr
    assert consul.writes() == []
    assert "earlier management tokens are kept while serverUpdatePartition holds servers back" in job.stdout


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # Grants changed by hand are put back.
        ("Policies", [{"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}]),
        # A token of an earlier version gets its mark.
        ("Description", "service token of web"),
    ],
    ids=["grants-changed-by-hand", "earlier-version"],
)
def test_a_declared_token_out_of_date_is_updated_in_place_and_keeps_its_secret(tmp_path, field, value):
    answers = recorded("reconciled")
    web = TOKENS["service-web"][0]
    for token in answers[TOKENS_LIST]:
        if token["AccessorID"] == web:
            token[field] = value
    with RecordedConsul(answers) as consul:
        job = run_job(consul.address, tmp_path)
    assert job.returncode == 0, job.stderr
    assert consul.writes() == [("PUT", f"/v1/acl/token/{web}")]
    # No SecretID in the body: Consul keeps the token's own.
    assert consul.sent("PUT") == [
        {"AccessorID": web, "Description": f"{MARKER}service token of web", "ServiceIdentities": [{"ServiceName": "web"}]}
    ]


def test_an_auth_method_of_the_same_name_made_by_someone_else_is_left_alone(tmp_path):
    answers = recorded("with-auth-method")
    answers["/v1/acl/auth-methods"][0]["Description"] = "the platform team's"
    with RecordedConsul(answers) as consul:
        job = run_job(consul.address, tmp_path, auth=True)
    assert job.returncode == 1
    assert consul.writes() == []
    assert "Consul has an auth method named kubernetes that this stack did not make" in job.stderr
    with RecordedConsul(answers) as consul:
        assert run_job(consul.address, tmp_path).returncode == 0
    assert consul.writes() == []


def test_a_management_token_the_servers_do_not_know_fails_with_the_fix(tmp_path):
    answers = {**recorded("fresh"), "/v1/acl/token/self": (403, "ACL not found")}
    with RecordedConsul(answers) as consul:
        job = run_job(consul.address, tmp_path, retry_seconds=0)
    assert job.returncode == 1
    assert consul.writes() == []
    assert [r.path for r in consul.requests].count("/v1/acl/token/self") == 5
    assert "do not accept the management token in Secret consul-acl-tokens (key management)" in job.stderr
    assert "pulumi config set --secret consul:aclManagementToken" in job.stderr
    assert MANAGEMENT_SECRET not in job.stdout + job.stderr


def test_a_refused_write_stops_the_job_with_consul_s_own_message(tmp_path):
    answers = {**recorded("fresh"), "PUT /v1/acl/token": (400, "Invalid Token: AccessorID is already in use")}
    with RecordedConsul(answers) as consul:
        job = run_job(consul.address, tmp_path)
    assert job.returncode != 0
    assert consul.writes() == [("PUT", "/v1/acl/policy"), ("PUT", "/v1/acl/token")]
    assert "ERROR: PUT /v1/acl/token: HTTP 400: Invalid Token: AccessorID is already in use" in job.stderr
    assert all(secret not in job.stdout + job.stderr for _, secret in TOKENS.values())


def test_a_write_answered_with_a_5xx_is_sent_again_with_the_same_body(tmp_path):
    """No leader for a moment (Consul answers 500): the call is tried again, body and all, and the
    Job goes on; a 5xx that never ends fails it after 10 tries, naming the call."""
    answers = {**recorded("fresh"), "PUT /v1/acl/token": Turns([(500, "No cluster leader"), (500, "No cluster leader")])}
    with RecordedConsul(answers) as consul:
        job = run_job(consul.address, tmp_path, api_retry_seconds=0)
    assert job.returncode == 0, job.stderr
    creates = consul.sent("PUT", "/v1/acl/token")
    assert len(creates) == 6 + 2
    assert creates[0] == creates[1] == creates[2]
    assert creates[0]["SecretID"] == TOKENS["agent-client"][1]
    assert job.stderr.count("PUT /v1/acl/token: HTTP 500 (No cluster leader); again in 3 s") == 2

    answers = {**recorded("fresh"), "PUT /v1/acl/token": (500, "No cluster leader")}
    with RecordedConsul(answers) as consul:
        job = run_job(consul.address, tmp_path, api_retry_seconds=0)
    assert job.returncode != 0
    assert "ERROR: PUT /v1/acl/token: HTTP 500 after 10 tries: No cluster leader" in job.stderr


AUTH_METHOD = "/v1/acl/auth-method/kubernetes"
BINDING_RULES = "/v1/acl/binding-rules?authmethod=kubernetes"


def test_kubernetes_auth_makes_the_method_with_the_reviewer_s_token_and_one_binding_rule(tmp_path):
    with RecordedConsul(recorded("reconciled")) as consul:
        job = run_job(consul.address, tmp_path, auth=True)
    assert job.returncode == 0, job.stderr
    assert consul.writes() == [("PUT", "/v1/acl/auth-method"), ("PUT", "/v1/acl/binding-rule")]
    method, rule = consul.sent("PUT")
    assert method == {
        "Name": "kubernetes",
        "Type": "kubernetes",
        "Description": f"{MARKER}Kubernetes service accounts",
        "MaxTokenTTL": AUTH_TTL,
        "Config": {"Host": "https://kubernetes.default.svc", "CACert": CLUSTER_CA, "ServiceAccountJWT": REVIEWER_JWT},
    }
    assert rule == {
        "AuthMethod": "kubernetes",
        "Description": f"{MARKER}a service account gets the service identity of its name",
        "BindType": "service",
        "BindName": "${serviceaccount.name}",
        "Selector": AUTH_SELECTOR,
    }
    assert REVIEWER_JWT not in job.stdout + job.stderr


def test_kubernetes_auth_as_declared_is_left_as_it_is(tmp_path):
    with RecordedConsul(recorded("with-auth-method")) as consul:
        job = run_job(consul.address, tmp_path, auth=True)
    assert job.returncode == 0, job.stderr
    assert consul.writes() == []


def test_a_changed_namespace_list_updates_the_binding_rule_in_place(tmp_path):
    answers = recorded("with-auth-method")
    rule = answers[BINDING_RULES][0]
    rule["Selector"] = 'serviceaccount.namespace == "old"'
    with RecordedConsul(answers) as consul:
        job = run_job(consul.address, tmp_path, auth=True)
    assert job.returncode == 0, job.stderr
    assert consul.writes() == [("PUT", f"/v1/acl/binding-rule/{rule['ID']}")]
    assert [rule["Selector"] for rule in consul.sent("PUT")] == [AUTH_SELECTOR]


def test_a_new_reviewer_token_updates_the_method(tmp_path):
    answers = recorded("with-auth-method")
    answers[AUTH_METHOD]["Config"]["ServiceAccountJWT"] = "eyJvbGQifQ.eyJvbGQifQ.b2xk"
    with RecordedConsul(answers) as consul:
        job = run_job(consul.address, tmp_path, auth=True)
    assert job.returncode == 0, job.stderr
    assert consul.writes() == [("PUT", AUTH_METHOD)]


def test_kubernetes_auth_turned_off_deletes_the_method_it_made(tmp_path):
    with RecordedConsul(recorded("with-auth-method")) as consul:
        job = run_job(consul.address, tmp_path)
    assert job.returncode == 0, job.stderr
    assert consul.writes() == [("DELETE", AUTH_METHOD)]
