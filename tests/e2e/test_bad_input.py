"""Bad input never half-deploys: `pulumi up` fails before the API server receives any object."""

from __future__ import annotations

import pytest
from conftest import Deployment
from run_stack import auto

pytestmark = pytest.mark.e2e


def inventory(plane) -> dict[str, list[str]]:
    """Every object a deployment could create, cluster-wide, by kind."""
    paths = {
        "namespaces": "/api/v1/namespaces",
        "secrets": "/api/v1/secrets",
        "configmaps": "/api/v1/configmaps",
        "services": "/api/v1/services",
        "statefulsets": "/apis/apps/v1/statefulsets",
        "daemonsets": "/apis/apps/v1/daemonsets",
        "jobs": "/apis/batch/v1/jobs",
    }
    return {
        kind: sorted(f"{o['metadata'].get('namespace')}/{o['metadata']['name']}" for o in plane.api.items(path))
        for kind, path in paths.items()
    }


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("serverReplicas", "4", "invalid consul:serverReplicas 4: must be 1, 3, 5 or 7"),
        ("image", "consul:1.4.2", "invalid consul:image"),
        # With the bed's enforcing NetworkPolicy agent, host-network agents would be cut off from the servers.
        ("clientHostNetwork", "true", "invalid consul:clientHostNetwork true: must be false while consul:networkPolicy is true"),
    ],
)
def test_bad_input_fails_before_any_object_reaches_the_cluster(cluster, tmp_path, key, value, message):
    before = inventory(cluster)
    deployment = Deployment(cluster, tmp_path, stack="bad", namespace="consul-bad")
    deployment.set(**{key: value})
    try:
        with pytest.raises(auto.CommandError) as failed:
            deployment.up(f"bad {key}")
    finally:
        deployment.release()
    assert message in str(failed.value)
    assert inventory(cluster) == before


def test_preview_knows_whether_a_cluster_answers(cluster, tmp_path, monkeypatch):
    import run_stack

    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    assert run_stack.unreachable_cluster() is None
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert run_stack.unreachable_cluster() == f"there is no kubeconfig at {tmp_path / 'missing'}"
    dead = tmp_path / "dead"
    # A cluster that does not answer, with no credential of the bed's.
    dead.write_text(
        cluster.kubeconfig.read_text().replace(cluster.plane.server, "https://127.0.0.1:1").replace(cluster.plane.token, "none")
    )
    monkeypatch.setenv("KUBECONFIG", str(dead))
    assert (run_stack.unreachable_cluster() or "").startswith("https://127.0.0.1:1 did not answer")
