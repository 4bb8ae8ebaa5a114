"""Scheduled snapshots: off by default, on in prod, every setting, the token they use, refusals."""

from __future__ import annotations

import pytest
from harness import render, run_main

from consul.settings import SettingsError


def cron_pod(rendered):
    return rendered.one("CronJob", "consul-snapshot")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def env(rendered):
    return {e["name"]: e.get("value") for e in cron_pod(rendered)["containers"][0]["env"]}


def test_snapshots_default_off():
    rendered = render("ci-defaults")
    assert rendered.of_kind("CronJob") == []
    assert rendered.of_kind("PersistentVolumeClaim") == []
    (material,) = [d for d in rendered.declared if d.typ == "consul-keys:index:KeyMaterial"]
    assert "snapshot" not in material.inputs["tokens"]
    acl_env = {
        e["name"]: e.get("value") for e in rendered.one("Job", "consul-acl-bootstrap")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert acl_env["SNAPSHOT_ACCESSOR"] == ""


def test_snapshots_on_in_prod_with_the_defaults():
    rendered = render("prod")
    cron = rendered.one("CronJob", "consul-snapshot")["spec"]
    assert (cron["schedule"], cron["concurrencyPolicy"]) == ("0 * * * *", "Forbid")
    assert env(rendered)["RETAIN"] == "24"
    assert env(rendered)["CONSUL_HTTP_ADDR"] == "https://consul-server.consul.svc:8501"
    assert env(rendered)["CONSUL_HTTP_TOKEN_FILE"] == "/consul/snapshot-token/snapshot"
    claim = rendered.one("PersistentVolumeClaim", "consul-snapshots")
    assert claim["spec"]["resources"]["requests"] == {"storage": "10Gi"}
    assert "storageClassName" not in claim["spec"]
    (declared,) = [d for d in rendered.of_kind("PersistentVolumeClaim")]
    assert declared.retain_on_delete is True
    # The pod sees the snapshot token and no other.
    (token_volume,) = [v for v in cron_pod(rendered)["volumes"] if v["name"] == "snapshot-token"]
    assert token_volume["secret"]["items"] == [{"key": "snapshot", "path": "snapshot"}]
    assert {v["persistentVolumeClaim"]["claimName"] for v in cron_pod(rendered)["volumes"] if "persistentVolumeClaim" in v} == {
        "consul-snapshots"
    }
    (material,) = [d for d in rendered.declared if d.typ == "consul-keys:index:KeyMaterial"]
    assert material.inputs["tokens"][-1] == "snapshot"
    acl_env = {
        e["name"]: e.get("value") for e in rendered.one("Job", "consul-acl-bootstrap")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert acl_env["SNAPSHOT_ACCESSOR"]
    assert acl_env["SNAPSHOT_RULES"] == 'acl = "write"\n'
    assert "snapshot" in rendered.one("Secret", "consul-acl-tokens")["stringData"]


def test_snapshots_every_setting_overridden():
    rendered = render(
        "ci-defaults",
        snapshots=True,
        snapshotSchedule="15 3 * * *",
        snapshotRetention=7,
        snapshotStorageSize="5Gi",
        snapshotStorageClass="slow",
    )
    assert rendered.one("CronJob", "consul-snapshot")["spec"]["schedule"] == "15 3 * * *"
    assert env(rendered)["RETAIN"] == "7"
    claim = rendered.one("PersistentVolumeClaim", "consul-snapshots")["spec"]
    assert (claim["resources"]["requests"], claim["storageClassName"]) == ({"storage": "5Gi"}, "slow")


def test_snapshots_without_acls_or_tls_use_plain_http_and_no_token():
    rendered = render("ci-defaults", snapshots=True, acls=False, tls=False)
    assert env(rendered)["CONSUL_HTTP_ADDR"] == "http://consul-server.consul.svc:8500"
    assert "CONSUL_HTTP_TOKEN_FILE" not in env(rendered)


INVALID = [
    ({"snapshotSchedule": "every hour"}, 'invalid consul:snapshotSchedule "every hour": must be a cron schedule of 5 fields'),
    ({"snapshotSchedule": "* * * *"}, 'invalid consul:snapshotSchedule "* * * *": must be a cron schedule of 5 fields'),
    ({"snapshotRetention": 0}, "invalid consul:snapshotRetention 0: must be at least 1 (snapshots kept)"),
    ({"snapshotStorageSize": "ten"}, 'invalid consul:snapshotStorageSize "ten": must be a positive Kubernetes quantity such as 10Gi'),
    (
        {"snapshotStorageClass": "Bad_Class"},
        'invalid consul:snapshotStorageClass "Bad_Class": must be empty (the cluster default) or a StorageClass name',
    ),
]


@pytest.mark.parametrize(("overrides", "message"), INVALID, ids=[str(o) for o, _ in INVALID])
def test_snapshots_invalid(overrides, message):
    rendered, error = run_main("ci-defaults", snapshots=True, **overrides)
    assert isinstance(error, SettingsError)
    assert str(error).startswith(message)
    assert rendered.declared == []
