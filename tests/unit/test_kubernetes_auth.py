"""kubernetesAuth: the reviewer objects, the ACL Job's part, and the refusal of bad values."""

from __future__ import annotations

import pytest
from harness import render, run_main


def job_env(rendered) -> dict[str, str]:
    spec = rendered.one("Job", "consul-acl-bootstrap")["spec"]["template"]["spec"]
    return {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}


def test_off_by_default_nothing_cluster_wide_and_the_job_removes_a_method_it_made():
    rendered = render("dev")
    assert rendered.of_kind("ClusterRoleBinding") == []
    assert rendered.of_kind("ClusterRole") == []
    assert "consul-auth-method" not in [d.inputs["metadata"]["name"] for d in rendered.of_kind("ServiceAccount")]
    assert job_env(rendered)["AUTH_METHOD"] == ""


def test_on_a_reviewer_account_its_token_secret_and_its_roles():
    rendered = render("prod", kubernetesAuth=True, kubernetesAuthTokenTtl="15m", kubernetesAuthNamespaces=["apps", "web-team"])
    account = rendered.one("ServiceAccount", "consul-auth-method")
    assert account["automountServiceAccountToken"] is False
    secret = rendered.one("Secret", "consul-auth-method")
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"] == {"kubernetes.io/service-account.name": "consul-auth-method"}
    role = rendered.one("ClusterRole", "consul-consul-auth-method")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]}]
    bindings = {d.inputs["metadata"]["name"]: d.inputs for d in rendered.of_kind("ClusterRoleBinding")}
    subject = [{"kind": "ServiceAccount", "name": "consul-auth-method", "namespace": "consul"}]
    assert {name: (b["roleRef"]["name"], b["subjects"]) for name, b in bindings.items()} == {
        "consul-consul-auth-method": ("consul-consul-auth-method", subject),
        "consul-consul-auth-delegator": ("system:auth-delegator", subject),
    }
    env = job_env(rendered)
    assert (env["AUTH_METHOD"], env["AUTH_TTL"], env["KUBERNETES_HOST"]) == ("kubernetes", "15m0s", "https://kubernetes.default.svc")
    assert env["AUTH_SELECTOR"] == 'serviceaccount.namespace == "apps" or serviceaccount.namespace == "web-team"'
    spec = rendered.one("Job", "consul-acl-bootstrap")["spec"]["template"]["spec"]
    assert {"name": "auth-method", "mountPath": "/consul/auth-method", "readOnly": True} in spec["containers"][0]["volumeMounts"]
    assert {"name": "auth-method", "secret": {"secretName": "consul-auth-method", "defaultMode": 0o440}} in spec["volumes"]


@pytest.mark.parametrize(("ttl", "go"), [("1h", "1h0m0s"), ("90s", "1m30s"), ("24h", "24h0m0s"), ("2h30m", "2h30m0s")])
def test_the_token_ttl_reaches_consul_as_go_prints_it(ttl, go):
    rendered = render("dev", kubernetesAuth=True, kubernetesAuthTokenTtl=ttl, kubernetesAuthNamespaces=["apps"])
    assert job_env(rendered)["AUTH_TTL"] == go


def test_every_namespace_only_when_asked_for_with_a_star():
    assert job_env(render("dev", kubernetesAuth=True, kubernetesAuthNamespaces=["*"]))["AUTH_SELECTOR"] == ""
    rendered, error = run_main("ci-defaults", kubernetesAuth=True)
    assert str(error) == (
        "invalid consul:kubernetesAuthNamespaces []: must list the namespaces whose service accounts may log in with "
        'consul:kubernetesAuth (or be ["*"] for every namespace: then whoever may create a ServiceAccount named like a '
        "service anywhere may write that service)"
    )
    assert rendered.declared == []


BOUNDS = 'must be a duration from 1m to 24h, such as "1h" or "15m" (Consul\'s bounds)'


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kubernetesAuthTokenTtl": "30s"}, f'invalid consul:kubernetesAuthTokenTtl "30s": {BOUNDS}'),
        ({"kubernetesAuthTokenTtl": "25h"}, f'invalid consul:kubernetesAuthTokenTtl "25h": {BOUNDS}'),
        ({"kubernetesAuthTokenTtl": "1d"}, f'invalid consul:kubernetesAuthTokenTtl "1d": {BOUNDS}'),
        ({"kubernetesAuthTokenTtl": ""}, f'invalid consul:kubernetesAuthTokenTtl "": {BOUNDS}'),
        (
            {"kubernetesAuthNamespaces": ["Apps"]},
            'invalid consul:kubernetesAuthNamespaces ["Apps"]: each entry must be a namespace name (a DNS-1123 label, or the list just ["*"]; got "Apps")',
        ),
        ({"acls": False}, "invalid consul:kubernetesAuth true: needs consul:acls (the auth method hands out ACL tokens)"),
    ],
)
def test_bad_values_are_refused_before_anything_is_declared(overrides, message):
    rendered, error = run_main("ci-defaults", kubernetesAuth=True, **{"kubernetesAuthNamespaces": ["apps"], **overrides})
    assert str(error) == message
    assert rendered.declared == []


def test_namespaces_without_the_method_are_refused():
    rendered, error = run_main("ci-defaults", kubernetesAuthNamespaces=["apps"])
    assert str(error) == 'invalid consul:kubernetesAuthNamespaces ["apps"]: must be empty when consul:kubernetesAuth is false'
    assert rendered.declared == []
