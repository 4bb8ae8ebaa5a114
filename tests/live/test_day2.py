"""Day-2 operations on real Consul, each driven by a `pulumi up` of the same stack and the bed
applying its new render as Kubernetes would: certificate renewal, gossip key rotation, scaling.

While each operation runs, a watcher asks a client agent for the leader and writes a KV key
every 0.25 s; the tests assert that there was always a leader, that no write failed, and that
every written key is still there afterwards.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import STACK_FILE, Rendered, http, keep_logs, management_token, run_stack, start_bed, wait_formed
from material import gossip_key
from pulumi import automation as auto

from testbed.live import network
from testbed.live.cluster import Bed, load_manifests, secret_data


class LiveStack:
    """The live stack on its own state: each up() renders the stack with changed settings."""

    def __init__(self, home: Path) -> None:
        self.out = home / "rendered"
        self.stack = run_stack.render_stack("live", home, self.out, STACK_FILE)

    def up(self, secrets: tuple[str, ...] = (), **settings: object) -> Rendered:
        for key, value in settings.items():
            self.stack.set_config(
                f"consul:{key}", auto.ConfigValue(json.dumps(value) if not isinstance(value, str) else value, secret=key in secrets)
            )
        result = self.stack.up(color="never")
        assert result.summary.result == "succeeded"
        return Rendered(self.out, {k: v.value for k, v in result.outputs.items()})


@dataclass
class Watch:
    """What a client agent saw every 0.25 s while an operation ran."""

    polls: int = 0
    no_leader: list[float] = field(default_factory=list)
    failed_writes: list[float] = field(default_factory=list)
    written: list[str] = field(default_factory=list)


@contextmanager
def stack_on_a_bed(tmp_path_factory, request, label: str, **settings: object) -> Iterator[tuple[LiveStack, Bed]]:
    """A live stack of its own, its first render running on a bed of its own, all formed; both
    removed afterwards (the logs kept in testbed/logs/live)."""
    home = tmp_path_factory.mktemp(f"{label}-stack")
    stack = LiveStack(home)
    workdir = tmp_path_factory.mktemp(f"{label}-bed")
    bed = start_bed(stack.up((), **settings), workdir)
    try:
        wait_formed(bed)
        yield stack, bed
    finally:
        bed.close()
        keep_logs(workdir, request.node.name)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    assert network.namespaces() == []


@pytest.fixture(scope="module")
def day2(tmp_path_factory, request) -> Iterator[tuple[LiveStack, Bed]]:
    with stack_on_a_bed(tmp_path_factory, request, "day2", tlsServerCertValidity=2, tlsRenewBefore=0) as running:
        yield running


def watching(bed: Bed, operation, label: str) -> tuple[Watch, object]:
    """Run `operation` while a client agent is asked for the leader and writes a key, every 0.25 s."""
    watch, stop = Watch(), threading.Event()
    client = bed.pod("consul-client-node-1")
    token = management_token(bed)

    def leader() -> str:
        out = client.exec(["curl", "-s", "--max-time", "2", "http://127.0.0.1:8500/v1/status/leader"], timeout=5)
        return str(out.stdout.strip('"\n'))

    # The claim is about the operation: it starts from a cluster whose leader the client knows.
    bed.wait_for("the client agent to know the leader before the operation", lambda: leader() != "", 60)
    started = time.monotonic()

    def poll() -> None:
        while not stop.is_set():
            now = time.monotonic() - started
            if not leader():
                watch.no_leader.append(now)
            key = f"day2/{label}/{watch.polls}"
            if http(client, "PUT", f"/v1/kv/{key}", token=token, body=watch.polls) == 200:
                watch.written.append(key)
            else:
                watch.failed_writes.append(now)
            watch.polls += 1
            stop.wait(0.25)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        result = operation()
    finally:
        stop.set()
        thread.join(timeout=10)
    missing = [k for k in watch.written if http(client, "GET", f"/v1/kv/{k}", token=token) != 200]
    assert missing == [], f"writes lost: {missing}"
    print(
        f"\n{label}: {watch.polls} polls over {time.monotonic() - started:.1f} s, no leader {len(watch.no_leader)}, failed writes {len(watch.failed_writes)}"
    )
    return watch, result


def raft_peers(bed: Bed) -> list[str]:
    server = next((p for p in bed.tier("server") if p.ready), None)
    if server is None:  # none Ready at this moment (a wait retries)
        return []
    out = server.exec(
        ["curl", "-s", "-H", f"X-Consul-Token: {management_token(bed)}", "http://127.0.0.1:8500/v1/operator/raft/configuration"]
    )
    if out.returncode != 0 or not out.stdout.startswith("{"):  # no leader to answer yet
        return []
    return sorted(s["Node"] for s in json.loads(out.stdout)["Servers"])


def test_certificate_renewal_rolls_the_servers_one_at_a_time_with_a_leader_throughout(day2):
    stack, bed = day2
    before = bed.secrets["consul-server-cert"]["tls.crt"]
    # A window as long as the certificate's 2 days: this up finds it due and re-issues it.
    rendered = stack.up(tlsRenewBefore=2)
    after = load_manifests(rendered.directory)
    renewed = next(o for o in after if o["kind"] == "Secret" and o["metadata"]["name"] == "consul-server-cert")
    certificate = secret_data(renewed)["tls.crt"]
    assert certificate != before
    order: list[str] = []
    original_replace = bed._replace

    def recording(name: str, timeout: float) -> None:
        order.append(name)
        original_replace(name, timeout)

    bed._replace = recording
    try:
        watch, took = watching(bed, lambda: bed.apply(after), "renewal")
    finally:
        bed._replace = original_replace
        stack.up(tlsRenewBefore=0)  # the later tests' ups re-issue nothing, even after a failure here
    print(f"renewal: rollouts took {took}")
    assert order == ["consul-server-2", "consul-server-1", "consul-server-0"]
    for pod in bed.tier("server"):
        assert pod.exec(["cat", "/consul/tls/server/tls.crt"]).stdout == certificate, pod.name
    assert all(p.ready for p in bed.tier("client"))
    assert (watch.no_leader, watch.failed_writes) == ([], [])


def test_gossip_key_rotation_keeps_every_agent_and_refuses_the_old_key(day2):
    stack, bed = day2
    old_key = bed.secrets["consul-gossip"]["key"]
    new_key = gossip_key()
    rendered = stack.up(secrets=("gossipKey",), gossipKey=new_key)
    after = load_manifests(rendered.directory)
    agents = {p.name: p for p in bed.tier("server") + bed.tier("client")}

    def rotate() -> None:
        bed.apply(after)
        bed.wait_for("the rotation Job complete", lambda: bed.job_status("consul-gossip-rotation") == "Complete", 120)

    watch, _ = watching(bed, rotate, "rotation")
    # No agent restarted: the same processes now gossip with the new key only.
    assert {p.name: p for p in bed.tier("server") + bed.tier("client")} == agents
    server = bed.pod("consul-server-0")
    keyring = server.exec(["curl", "-s", "-H", f"X-Consul-Token: {management_token(bed)}", "http://127.0.0.1:8500/v1/operator/keyring"])
    pools = json.loads(keyring.stdout)
    assert {pool["WAN"]: sorted(pool["Keys"]) for pool in pools} == {True: [new_key], False: [new_key]}
    members = json.loads(
        server.exec(["curl", "-s", "-H", f"X-Consul-Token: {management_token(bed)}", "http://127.0.0.1:8500/v1/agent/members"]).stdout
    )
    assert sorted((m["Name"], m["Status"]) for m in members) == sorted(
        (n, 1) for n in [*[f"consul-server-{i}" for i in range(3)], "node-1", "node-2", "node-3"]
    )
    assert (watch.no_leader, watch.failed_writes) == ([], [])
    # An agent still on the old key is refused.
    template = bed.get("DaemonSet", "consul-client")["spec"]["template"]
    old = {"key": old_key, "gossip.json": json.dumps({"encrypt": old_key})}
    stale = bed.run_pod("stale", template, bed.nodes[2], secrets_override={"consul-gossip": old})
    try:
        bed.wait_for(
            "the stale agent's join failing",
            lambda: "retry_join: failed" in stale.log().lower() or "Join cluster failed" in stale.log(),
            60,
        )
        names = {
            m["Name"]
            for m in json.loads(
                server.exec(
                    ["curl", "-s", "-H", f"X-Consul-Token: {management_token(bed)}", "http://127.0.0.1:8500/v1/agent/members"]
                ).stdout
            )
        }
        assert "stale" not in names
    finally:
        bed.delete_pod("stale", grace=1)


def test_scaling_3_to_5_to_3_keeps_a_leader_and_every_write_and_ends_with_3_peers(day2):
    stack, bed = day2
    up5 = load_manifests(stack.up(serverReplicas=5).directory)
    watch5, took5 = watching(bed, lambda: bed.apply(up5), "scale-up")
    assert raft_peers(bed) == [f"consul-server-{i}" for i in range(5)]
    down3 = load_manifests(stack.up(serverReplicas=3).directory)
    watch3, took3 = watching(
        bed, lambda: (bed.apply(down3), bed.wait_for("3 Raft peers", lambda: len(raft_peers(bed)) == 3, 60)), "scale-down"
    )
    print(f"scaling: up {took5}, down {took3}")
    assert raft_peers(bed) == [f"consul-server-{i}" for i in range(3)]
    for watch in (watch5, watch3):
        assert (watch.no_leader, watch.failed_writes) == ([], [])


def _with_env(template: dict[str, Any], **values: str) -> dict[str, Any]:
    """A pod template with environment variables added to its container (what `kubectl set env` does)."""
    copied: dict[str, Any] = json.loads(json.dumps(template))
    copied["spec"]["containers"][0]["env"] += [{"name": k, "value": v} for k, v in values.items()]
    return copied


def _finished(bed: Bed, name: str, template: dict[str, Any], timeout: float = 120) -> tuple[int, str, float]:
    started = time.monotonic()
    pod = bed.run_pod(name, template)
    bed.wait_for(f"{name} finished", lambda: pod.exit_code is not None, timeout)
    return pod.exit_code or 0, pod.log(), time.monotonic() - started


def test_a_scheduled_snapshot_restores_a_wiped_cluster_and_a_damaged_one_is_refused(day2):
    stack, bed = day2
    bed.apply(load_manifests(stack.up(snapshots=True).directory))
    bed.wait_for("the ACL Job complete", lambda: bed.job_status("consul-acl-bootstrap") == "Complete", 180)
    token = management_token(bed)

    def api(method: str, path: str, body: object | None = None) -> tuple[int, str]:
        server = next(p for p in bed.tier("server") if p.ready)
        cmd = ["curl", "-s", "-w", "\n%{http_code}", "-X", method, "-H", f"X-Consul-Token: {token}", f"http://127.0.0.1:8500{path}"]
        if body is not None:
            cmd += ["--data", json.dumps(body)]
        text, _, status = server.exec(cmd).stdout.rpartition("\n")
        return int(status or 0), text

    for i in range(5):
        assert api("PUT", f"/v1/kv/snap/key-{i}", f"value-{i}")[0] == 200
    service = {"Node": "legacy-db", "Address": "10.9.9.9", "Service": {"Service": "legacy-db", "Port": 5432}}
    assert api("PUT", "/v1/catalog/register", service)[0] == 200

    # The CronJob's own pod template, as the schedule would run it.
    template = bed.get("CronJob", "consul-snapshot")["spec"]["jobTemplate"]["spec"]["template"]
    code, log, saved_in = _finished(bed, "consul-snapshot-manual", template)
    assert code == 0, log
    (snapshot,) = sorted(bed.claim_path("consul-snapshots").glob("consul-*.snap"))

    # Every server's data gone: a new, empty cluster, bootstrapped again by the ACL Job.
    servers = [f"consul-server-{i}" for i in range(3)]
    wiped_at = time.monotonic()
    bed.delete_pods(servers, hold=True)
    for name in servers:
        shutil.rmtree(bed.claim_path(f"data-{name}"))
    bed.release(*servers)
    bed.wait_for(
        "a leader of the new cluster",
        lambda: all(bed.pods[n].ready for n in servers if n in bed.pods) and len(bed.tier("server")) == 3,
        180,
    )
    bed.rerun_job("consul-acl-bootstrap")
    bed.wait_for("the ACL Job complete again", lambda: bed.job_status("consul-acl-bootstrap") == "Complete", 180)
    reformed_in = time.monotonic() - wiped_at
    assert api("GET", "/v1/kv/snap/key-0")[0] == 404

    # make restore: the CronJob's pod with SNAPSHOT_RESTORE.
    code, log, restored_in = _finished(bed, "consul-restore-1", _with_env(template, SNAPSHOT_RESTORE=snapshot.name))
    assert code == 0, log
    assert f"restored {snapshot.name}" in log
    values = [json.dumps(f"value-{i}") for i in range(5)]  # stored as the JSON the helper sends
    bed.wait_for("the restored keys", lambda: api("GET", "/v1/kv/snap/key-4?raw")[1] == values[4], 60)
    assert [api("GET", f"/v1/kv/snap/key-{i}?raw")[1] for i in range(5)] == values
    assert json.loads(api("GET", "/v1/catalog/service/legacy-db")[1])[0]["Address"] == "10.9.9.9"
    print(f"\nsnapshot: save {saved_in:.1f} s, wipe to a new cluster with ACLs {reformed_in:.1f} s, restore {restored_in:.1f} s")

    # A damaged file is refused before the servers see it; the cluster keeps its data.
    damaged = bed.claim_path("consul-snapshots") / "consul-20000101T000000Z.snap"
    damaged.write_bytes(snapshot.read_bytes()[:200])
    code, log, _ = _finished(bed, "consul-restore-2", _with_env(template, SNAPSHOT_RESTORE=damaged.name))
    assert code != 0
    assert "consul-20000101T000000Z.snap is not a sound Consul snapshot, nothing was restored" in log
    assert [api("GET", f"/v1/kv/snap/key-{i}?raw")[1] for i in range(5)] == values


def leader_of(pod) -> str:
    out = pod.exec(["curl", "-s", "--max-time", "2", "http://127.0.0.1:8500/v1/status/leader"], timeout=5)
    return out.stdout.strip('"\n') if out.returncode == 0 else ""
