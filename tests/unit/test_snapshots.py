"""Scheduled snapshots: off by default, on in prod, every setting, the token they use, refusals."""

from __future__ import annotations

import os
import subprocess

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


# --- the CronJob's script, run by /bin/sh with a stand-in `consul` on PATH --------------------
# The stand-in writes a snapshot of SIZE bytes, and fails as a full disk does (leaving what it
# wrote) when the claim would hold more than CAPACITY bytes.
FAKE_CONSUL = r"""#!/bin/sh
case "$1 $2" in
  "snapshot save")
    used=$(cat "$SNAPSHOT_DIR"/* "$SNAPSHOT_DIR"/.[!.]* 2>/dev/null | wc -c)
    if [ $((used + SIZE)) -gt "$CAPACITY" ]; then
      head -c 10 /dev/zero > "$3"
      echo "Error saving snapshot: write: no space left on device" >&2
      exit 1
    fi
    head -c "$SIZE" /dev/zero > "$3" ;;
  "snapshot inspect") [ "$(wc -c < "$3")" -eq "$SIZE" ] ;;
  *) exit 2 ;;
esac
"""


def run_snapshot_job(tmp_path, claim, *, retain: int, capacity: int, size: int = 100):
    from consul.snapshots import SNAPSHOT_SCRIPT

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "consul"
    fake.write_text(FAKE_CONSUL)
    fake.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SNAPSHOT_DIR": str(claim),
        "RETAIN": str(retain),
        "CLAIM": "consul-snapshots",
        "SIZE": str(size),
        "CAPACITY": str(capacity),
    }
    return subprocess.run(["/bin/sh", "-ec", SNAPSHOT_SCRIPT], env=env, capture_output=True, text=True, timeout=30)


@pytest.fixture
def claim(tmp_path):
    made = tmp_path / "claim"
    made.mkdir()
    return made


def snapshot_file(claim, hour: int) -> str:
    """A snapshot saved at 2026-12-01 `hour`:00 UTC."""
    name = f"consul-20261201T{hour:02d}0000Z.snap"
    (claim / name).write_bytes(b"\0" * 100)
    return name


def test_the_snapshot_job_removes_partial_files_left_by_an_interrupted_run(tmp_path, claim):
    earlier = snapshot_file(claim, 1)
    (claim / ".partial-consul-20261201T020000Z.snap").write_bytes(b"\0" * 50)
    result = run_snapshot_job(tmp_path, claim, retain=3, capacity=10_000)
    assert result.returncode == 0, result.stderr
    kept = sorted(p.name for p in claim.iterdir())
    assert kept[0] == earlier
    assert [name[:7] for name in kept[1:]] == ["consul-"]


def test_a_full_claim_makes_room_by_dropping_the_oldest_snapshot_instead_of_failing_every_run(tmp_path, claim):
    """The claim holds three snapshots and retention is three: a save fails for lack of space, so
    the Job drops the oldest and saves again; the newest two and the new one remain."""
    oldest, middle, newest = snapshot_file(claim, 1), snapshot_file(claim, 2), snapshot_file(claim, 3)
    result = run_snapshot_job(tmp_path, claim, retain=3, capacity=350)
    assert result.returncode == 0, result.stdout + result.stderr
    kept = sorted(p.name for p in claim.iterdir())
    assert kept[:2] == [middle, newest]
    assert len(kept) == 3
    assert kept[2].startswith("consul-")
    assert f"removed {oldest}" in result.stdout


def test_a_failed_save_leaves_no_partial_file_and_keeps_the_only_snapshot(tmp_path, claim):
    """With retention 1 the only snapshot is never dropped to make room: the run fails, and its
    partial file is gone."""
    only = snapshot_file(claim, 1)
    result = run_snapshot_job(tmp_path, claim, retain=1, capacity=150)
    assert result.returncode != 0
    assert sorted(p.name for p in claim.iterdir()) == [only]
    assert "no space left on device" in result.stderr
