"""Restarts on real nodes: servers lose their pods or their processes and come back with their data,
and the client agents rejoin them by themselves.

A server is held down as Kubernetes lets an operator do it: its node cordoned and its pod deleted,
so that with required anti-affinity over three nodes its replacement stays Pending until the node
is uncordoned. What is asserted comes from Consul (`kubectl exec` into the agents, and the Watch's
samplers in a toolbox pod) and from the cluster's API (readiness, restart counts, pod IPs).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from typing import Any

import pytest
from conftest import (
    LEADERLESS_BOUND,
    LOCAL_AGENT,
    OPEN_DEFECT,
    REAL_NODES,
    SERVER_STOPPED,
    assert_bounds,
    consul_cli,
    consul_http,
    in_pod,
    leader_seen,
    liveness_verdict,
    ready,
    restarts,
    servers_formed,
    servers_held_down,
)
from pod_logs import instant
from watch import Watch, clock, unexplained_stretches

from testbed.cluster import network

pytestmark = pytest.mark.e2e

SERVERS = ["consul-server-0", "consul-server-1", "consul-server-2"]
# The README's bound: every client agent sees the leader within 30 s of the servers electing one.
CLIENT_REJOIN_BOUND = 30.0
# Why it is broken for servers back at new addresses: they no longer leave (issue #19), and a client
# accepts a known server's new address only once memberlist's dead-node reclaim time (30 s, fixed in
# Consul) has passed since it declared the server dead, then learns it at the next gossip sync.
REJOIN_DEFECT = "issue #19, open: servers back at new addresses are accepted by the clients after memberlist's 30 s reclaim time"
# Servers deleted (30 s grace at most, without leaving Raft), re-created, started, and a leader elected.
SERVERS_BACK = 180
HELD_DOWN_SECONDS = 20
# A server whose gossip still holds the leader at its old address answers "Raft leader not found
# in server lookup mapping" until memberlist accepts the new one. The README's bound: 45 s after
# every client sees the leader (the 30 s reclaim time and a margin).
SERVER_LOOKUP_BOUND = 45.0
# Why it is broken at times (issue #19, open): a server that first heard of the leader at its old
# address holds it alive until memberlist's suspicion ends (4 to 24 s on these clusters) and only
# then starts the 30 s reclaim time. Past this, a server that still can't read is a failure.
SERVER_LOOKUP_DEFECT = "issue #19, open: a server holds the leader's old address through memberlist's suspicion and reclaim time"
SERVER_LOOKUP_LIMIT = 120.0


def client_pods(deployment) -> list[str]:
    return [p["metadata"]["name"] for p in deployment.pods("client")]


def restart_counts(deployment, component: str) -> dict[str, int]:
    return {p["metadata"]["name"]: restarts(p) for p in deployment.pods(component)}


def uids(deployment, component: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in deployment.pods(component)}


def leaders(deployment) -> list[str]:
    """The leader each client agent names ("" for none, or for no answer)."""
    return [leader_seen(in_pod(deployment, pod)) for pod in client_pods(deployment)]


def every_client_sees_a_leader(deployment) -> bool:
    return all(leaders(deployment))


def measure_rejoin(deployment, what: str, started: float) -> tuple[float, float]:
    """(seconds from `started` to three voters and a leader, seconds from then to every client
    agent reporting that leader), both as Consul reports them."""
    cluster = deployment.cluster
    cluster.wait(f"{what}: three voters and a leader", lambda: servers_formed(deployment, 3), SERVERS_BACK)
    elected = time.monotonic()
    # Waited for beyond the bound, so that a slow rejoin is measured rather than cut off.
    cluster.wait(f"{what}: every client agent sees the leader", lambda: every_client_sees_a_leader(deployment), 300)
    back = time.monotonic()
    print(f"\nbed: restarts: {what}: three voters and a leader {elected - started:.1f} s after, every client {back - elected:.1f} s later")
    return elected - started, back - elected


def rejoined_within(rejoin: float) -> None:
    """The README's client rejoin bound, whose breach for servers at new addresses is an open defect."""
    if rejoin > CLIENT_REJOIN_BOUND:
        pytest.xfail(f"{REJOIN_DEFECT}: every client saw the leader {rejoin:.1f} s after it was elected")


def leader_and_term(deployment) -> tuple[str, int]:
    """The leader ("ip:8300") and its Raft term (`/v1/agent/self`'s stats): each election raises the term."""
    leader = leader_seen(in_pod(deployment, "consul-server-0"))
    pod = next(p["metadata"]["name"] for p in deployment.pods("server") if f"{p['status']['podIP']}:8300" == leader)
    status, body = consul_http(in_pod(deployment, pod), "GET", f"{LOCAL_AGENT}/v1/agent/self", deployment.management_token(), bound=5)
    assert status == 200, body
    return leader, int(json.loads(body)["Stats"]["raft"]["term"])


def kv(deployment, server: str, method: str, key: str, body: str | None = None) -> tuple[int, str]:
    return consul_http(
        in_pod(deployment, server), method, f"{LOCAL_AGENT}/v1/kv/{key}?raw", deployment.management_token(), body=body, bound=5
    )


@pytest.fixture
def formed(module_deployment) -> Any:
    """Each test starts from three Ready servers, three voters and a leader."""
    module_deployment.cluster.wait("three voters and a leader", lambda: servers_formed(module_deployment, 3), SERVERS_BACK)
    return module_deployment


def test_every_client_agent_stays_ready_while_every_server_is_down(formed, toolbox):
    """Ready (the readiness test is its HTTP API listening), never restarted, and its liveness
    check passing: a restart cannot fix an outage of every server, so the check, run in each client
    pod as the kubelet runs it, must pass while the agent knows no server."""
    deployment = formed
    before = restart_counts(deployment, "client")
    with Watch(deployment, toolbox, "every server held down 20 s") as watch:
        with servers_held_down(deployment, SERVERS):
            down = time.monotonic()
            # Each client's verdict once its own agent no longer answers with a leader (the
            # check's first answer, a 200, passes without asking anything else).
            deployment.cluster.wait("every client agent without a leader", lambda: not any(leaders(deployment)), HELD_DOWN_SECONDS)
            verdicts = {pod: liveness_verdict(deployment, pod) for pod in client_pods(deployment)}
            time.sleep(max(0.0, HELD_DOWN_SECONDS - (time.monotonic() - down)))
        _, rejoin = measure_rejoin(deployment, "servers back after 20 s down", down)
    summary = watch.summary
    assert summary is not None
    print(f"\nbed: restarts: the client liveness check with every server down: {verdicts}")
    # Writes fail while no server runs; what was acknowledged before must still be there.
    problems = [f"{pod}'s liveness check failed: {said}" for pod, (passed, said) in verdicts.items() if not passed]
    problems += [
        f"{pod}'s liveness check passed without asking the servers: {said!r}"
        for pod, (passed, said) in verdicts.items()
        if passed and "every server is down" not in said
    ]
    if summary.clients_not_ready:
        problems.append(f"{summary.clients_not_ready} client NotReady samples")
    if summary.lost_writes:
        problems.append(f"{summary.lost_writes} acknowledged writes lost")
    if restart_counts(deployment, "client") != before:
        problems.append(f"client restarts {before} -> {restart_counts(deployment, 'client')}")
    assert problems == []
    rejoined_within(rejoin)


def test_all_servers_deleted_at_once_keep_their_data_and_the_clients_rejoin(formed, toolbox):
    """All three at new addresses (the case where retry_join alone strands the clients, consul
    #3902): the data, every client agent Ready throughout, the clients' rejoin within the
    README's bound, and no container restart."""
    deployment = formed
    assert kv(deployment, "consul-server-0", "PUT", "restarts/survivor", "still-here")[0] == 200
    before = restart_counts(deployment, "client")
    old_ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in deployment.pods("server")}
    with Watch(deployment, toolbox, "every server deleted at once") as watch:
        started = time.monotonic()
        deployment.kubectl("delete", "pod", *SERVERS, timeout=180)
        elected, rejoin = measure_rejoin(deployment, "all servers deleted at once", started)
    clients_back = started + elected + rejoin
    assert watch.summary is not None
    new_ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in deployment.pods("server")}
    assert [name for name in SERVERS if new_ips[name] == old_ips[name]] == []
    # Each server forwards the read to the leader once its gossip holds the leader's new address.
    answers: dict[str, tuple[int, str]] = {}

    def every_server_reads_the_key() -> bool:
        answers.update({name: kv(deployment, name, "GET", "restarts/survivor") for name in SERVERS})
        return all(answer == (200, "still-here") for answer in answers.values())

    # Timed from every client seeing the leader, not from the watch's end (its read-back takes a while);
    # waited for up to the limit, so that a late read is measured rather than cut off at the bound.
    left = SERVER_LOOKUP_LIMIT - (time.monotonic() - clients_back)
    with contextlib.suppress(TimeoutError):
        deployment.cluster.wait("every server reads the surviving key", every_server_reads_the_key, max(left, 0.0))
    read = time.monotonic() - clients_back
    print(f"\nbed: restarts: every server read the surviving key {read:.1f} s after every client saw the leader: {answers}")
    late = f"not every server read the surviving key within {SERVER_LOOKUP_LIMIT:.0f} s of every client seeing the leader"
    assert answers == dict.fromkeys(SERVERS, (200, "still-here")), f"{late}: {answers}"
    assert watch.summary.lost_writes == 0
    assert watch.summary.clients_not_ready == 0
    assert restart_counts(deployment, "client") == before
    rejoined_within(rejoin)
    if read > SERVER_LOOKUP_BOUND:
        pytest.xfail(
            f"{SERVER_LOOKUP_DEFECT}: every server read the key {read:.1f} s after every client saw the leader (bound {SERVER_LOOKUP_BOUND:.0f} s)"
        )


def test_servers_restarted_in_place_keep_their_pods_and_data_and_the_clients_rejoin(formed, toolbox):
    """`kill 1` in each server container (Consul is its PID 1): the kubelet restarts the container
    in the same pod, on the same claim and address."""
    deployment = formed
    assert kv(deployment, "consul-server-0", "PUT", "restarts/in-place", "kept") == (200, "true")
    servers_before, clients_before = restart_counts(deployment, "server"), restart_counts(deployment, "client")
    pods_before = uids(deployment, "server")
    with Watch(deployment, toolbox, "every server restarted in place") as watch:
        started = time.monotonic()
        for name in SERVERS:
            killed = deployment.exec(name, "kill", "1")
            assert killed.returncode == 0, killed.stderr
        deployment.cluster.wait(
            "every server container restarted",
            lambda: all(restart_counts(deployment, "server").get(n, 0) > servers_before[n] for n in SERVERS),
            60,
        )
        _, rejoin = measure_rejoin(deployment, "all servers restarted in place", started)
    assert watch.summary is not None
    assert uids(deployment, "server") == pods_before
    assert restart_counts(deployment, "server") == {n: servers_before[n] + 1 for n in SERVERS}
    assert kv(deployment, "consul-server-2", "GET", "restarts/in-place") == (200, "kept")
    assert watch.summary.lost_writes == 0
    assert restart_counts(deployment, "client") == clients_before
    assert rejoin <= CLIENT_REJOIN_BOUND


# What a server logs when it refuses a candidate's vote because the candidate lacks an entry it holds.
TARGET_BEHIND = "rejecting vote request since our last index is greater"


def transfer_target_behind(deployment, watch) -> list[tuple[float, str]]:
    """Each refusal of a candidate's vote for an entry the candidate lacked, in the servers' logs
    kept through the watch (Deployment.followed_logs), as (when, on the watch's clock by the
    kubelet's stamp on the line, "<log>: candidate=<ip:port>"). Any candidate behind is refused
    so; in a roll only a voter can stand, and a returning server is a non-voter until autopilot
    promotes it, so the candidate is read as the transfer's target. The candidates are printed for
    the trace."""
    logs = deployment.watch_logs(watch.logs_name)
    refused = []
    for path in sorted(logs.glob("consul-server-*.consul.log")):
        for line in path.read_text(errors="replace").splitlines():
            if TARGET_BEHIND in line:
                stamped = instant(line.split(" ", 1)[0])
                assert stamped is not None, f"{path.name}: a line with no kubelet stamp: {line!r}"
                at = watch.on_watch_clock(stamped[0].timestamp() + stamped[1] / 1e9)
                candidate = next((word for word in line.split() if word.startswith("candidate=")), "candidate unnamed")
                refused.append((at, f"{path.name}: {candidate}"))
    return refused


# How long before the first leader sample that named no leader the leader may have gone: the
# sampler stamps a sample once its answer came, within its curl bound (watch.LEADER_LOOP's -m 1).
LEADER_SAMPLE_BOUND = 1.0
# The bound a handoff that became an election breaks (issue #19, open): the servers elect again
# only once a follower's heartbeat timeout (1 to 2 s at raft_multiplier 1) has passed.
HANDOFF_ELECTION = ("without a leader",)


def test_a_rolling_restart_keeps_a_quorum_a_leader_and_every_write(formed, toolbox):
    deployment = formed
    clients_before = restart_counts(deployment, "client")
    pods_before = uids(deployment, "server")
    _, term = leader_and_term(deployment)
    with Watch(deployment, toolbox, "rolling restart of the servers") as watch:
        deployment.kubectl("rollout", "restart", "statefulset/consul-server")
        deployment.kubectl("rollout", "status", "statefulset/consul-server", "--timeout=600s", timeout=660)
        deployment.cluster.wait("three voters and a leader", lambda: servers_formed(deployment, 3), SERVERS_BACK)
    assert watch.summary is not None
    # One election for each handoff (a stopping leader's transfer), none for a returning server:
    # every leader the watch saw (each once; a returned pod leads at a new address).
    handoffs = len(watch.record.leaders) - 1
    elections = leader_and_term(deployment)[1] - term
    leaders = (
        f"leaders in the order first seen: {watch.record.leaders}; each change of the leader named, "
        f"in the order answered (seconds after the watch started, leader): {watch.record.leader_turns}"
    )
    assert elections >= handoffs, leaders
    after = uids(deployment, "server")
    assert [n for n in SERVERS if after[n] == pods_before[n]] == []
    assert restart_counts(deployment, "client") == clients_before
    # Open, for the one cause traced: Consul 1.16's Raft ends a transfer on the leader's side once
    # its TimeoutNow is sent, and the leader, still leading, commits a write the target lacks; the
    # other follower refuses the target's vote, whose higher terms depose the leader, and the
    # servers elect again once a follower's heartbeat timeout has passed: 1 to 2 s without a
    # leader, and more when the target's next candidacy disrupts that election. A stretch over the
    # bound is put down to it only when a server refused a transfer target's vote in that stretch;
    # extra elections that no server log explains so (a returning server deposing the leader), or
    # a long stretch with no such refusal in it, fail.
    refused = transfer_target_behind(deployment, watch) if elections > handoffs else []
    assert elections == handoffs or refused, (
        f"the Raft term rose by {elections} for {handoffs} handoffs, and no server refused a transfer target's vote "
        f"for an entry it lacked ({TARGET_BEHIND!r} in no server log kept through the roll): {leaders}"
    )
    unexplained = unexplained_stretches(watch.record.leader, LEADERLESS_BOUND, [at for at, _ in refused], lead=LEADER_SAMPLE_BOUND)
    since = watch.action_started
    print(
        f"\nbed: restarts: refusals of a candidate behind (s after the action started): {[(round(at - since, 2), what) for at, what in refused]}; "
        f"stretches over {LEADERLESS_BOUND} s with none in them: {[(round(a - since, 2), round(b - since, 2)) for a, b in unexplained]}"
    )
    traced = (
        "a handoff became an election (a server refused the transfer target's vote for an entry it lacked: "
        + "; ".join(f"{what} at {at - watch.action_started:.2f} s after the action started" for at, what in refused)
        + f"): the Raft term rose by {elections} for {handoffs} handoffs; {leaders}"
    )
    assert_bounds(watch, 3, open_defect=SERVER_STOPPED + (HANDOFF_ELECTION if not unexplained else ()), cause=traced if refused else "")
    if refused:
        pytest.xfail(f"{OPEN_DEFECT}: {traced}")


def test_with_one_server_held_down_every_write_succeeds_and_it_rejoins_as_a_voter(formed, toolbox):
    """A follower held down (its node cordoned, its pod deleted) for 20 s, then let back: two of three
    keep the quorum throughout, and the third comes back as a voter."""
    deployment = formed
    token = deployment.management_token()
    leader, term = leader_and_term(deployment)
    follower = next(p["metadata"]["name"] for p in reversed(deployment.pods("server")) if f"{p['status']['podIP']}:8300" != leader)
    with Watch(deployment, toolbox, f"one server ({follower}) held down 20 s") as watch:
        with servers_held_down(deployment, [follower]):
            time.sleep(HELD_DOWN_SECONDS)
            pending = deployment.api.get(f"/api/v1/namespaces/{deployment.namespace}/pods/{follower}")
            assert pending["status"]["phase"] == "Pending", pending["status"]
        deployment.cluster.wait(f"{follower} back, three voters and a leader", lambda: servers_formed(deployment, 3), SERVERS_BACK)
    assert watch.summary is not None
    peers = consul_cli(in_pod(deployment, follower), token, "operator", "raft", "list-peers")
    assert peers.returncode == 0, peers.stderr
    rows = [line.split() for line in peers.stdout.strip().splitlines()[1:]]
    assert sorted((row[0], row[4]) for row in rows) == [(name, "true") for name in SERVERS]
    # The follower's return cost no election: the same leader, in the same Raft term.
    assert leader_and_term(deployment) == (leader, term)
    assert_bounds(watch, 3, open_defect=SERVER_STOPPED)


# A client agent's dials to a server's address, from its pod, every 0.5 s for `seconds`, each
# bounded to 1 s: "<boot-time stamp> <curl's exit> <connections made>". curl's telnet:// connects
# and sends nothing; exit 7 with no connection is a refused (or unreachable) address, 28 with none
# no answer within the bound.
DIAL_LOOP = (
    'end=$(($(cut -d. -f1 /proc/uptime) + {seconds})); while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do '
    'made=$(curl -s -o /dev/null --connect-timeout 1 -m 1 -w "%{{num_connects}}" "telnet://{address}:8300" </dev/null); rc=$?; '
    'read -r t _ < /proc/uptime; echo "$t $rc $made"; sleep 0.5; done'
)
DIALLED_SECONDS = 40


def failure_logged(deployment, server: str, name: str, address: str) -> float:
    """When server pod `server` declared `name` at `address` failed (serf's "EventMemberFailed" in
    its log), on the watch's boot-time clock, by the kubelet's stamp on the line."""
    for line in deployment.logs(server, "-c", "consul", "--timestamps", "--since=5m").splitlines():
        if f"serf: EventMemberFailed: {name} {address}" in line:
            stamped = instant(line.split(" ", 1)[0])
            assert stamped is not None, line
            return stamped[0].timestamp() + stamped[1] / 1e9 - (time.time() - clock())
    raise AssertionError(f"{server} logged no failure of {name} at {address}")


def test_a_deleted_server_s_address_refuses_dials_until_every_other_server_sees_it_failed(formed):
    """A follower's pod deleted: from its deletion until every other server's gossip shows it
    failed or gone (when the client agents drop it), a client agent's dial to its address is
    answered at once, connected while the agent runs and refused after, never left waiting, as
    a dial to a vanished pod IP is (the kernel's neighbour timeout, or Consul's fixed 10 s)."""
    deployment = formed
    token = deployment.management_token()
    leader = leader_seen(in_pod(deployment, "consul-server-0"))
    server = next(p for p in reversed(deployment.pods("server")) if f"{p['status']['podIP']}:8300" != leader)
    name, address = server["metadata"]["name"], server["status"]["podIP"]
    others = [n for n in SERVERS if n != name]
    client = deployment.pods("client")[0]["metadata"]["name"]
    dials: list[subprocess.CompletedProcess[str]] = []
    dialler = threading.Thread(
        target=lambda: dials.append(
            deployment.exec(client, "sh", "-c", DIAL_LOOP.format(seconds=DIALLED_SECONDS, address=address), timeout=DIALLED_SECONDS + 30)
        )
    )
    dialler.start()
    time.sleep(2)
    deleted = clock()
    deployment.kubectl("delete", "pod", name, "--wait=false")

    def seen_failed() -> bool:
        for other in others:
            table = consul_cli(in_pod(deployment, other), token, "members")
            rows = [line.split() for line in table.stdout.splitlines()]
            if table.returncode != 0 or any(
                row[0] == name and row[1].startswith(f"{address}:") and row[2] not in ("failed", "left") for row in rows
            ):
                return False
        return True

    deployment.cluster.wait(f"every other server sees {name} failed", seen_failed, DIALLED_SECONDS - 5)
    # When the last of them declared it failed, from their logs: the test's own polls see it later.
    failed = max(failure_logged(deployment, other, name, address) for other in others)
    dialler.join()
    deployment.cluster.wait("three voters and a leader", lambda: servers_formed(deployment, 3), SERVERS_BACK)
    (done,) = dials
    assert done.returncode == 0, done.stderr
    samples = [line.split() for line in done.stdout.splitlines()]
    outcome = {"0": "connected", "7": "refused", "28": "no answer"}
    seen = [
        (round(float(t) - deleted, 2), "connected" if made == "1" else outcome.get(rc, f"curl exit {rc}"))
        for t, rc, made in samples
        if float(t) >= deleted
    ]
    print(
        f"\nbed: restarts: {name} seen failed by {others} {failed - deleted:.1f} s after its deletion; dials to {address} (s after, outcome): {seen}"
    )
    assert any(at <= failed - deleted for at, _ in seen), "no dial between the deletion and the failure"
    assert [(at, what) for at, what in seen if at <= failed - deleted and what not in ("connected", "refused")] == []


# What a lost node still costs (issue #19, open): the lost server's higher Raft term deposes the
# leader when the node is back (no pre-vote), and a client whose server was on the lost node sends
# it writes until serf declares it failed, without retrying them.
NODE_LOST = ("without a leader", "writes failed with a leader while an agent pod was down")
# Longer than the node controller's grace period (50 s from the node's last lease renewal, checked
# every 5 s): Kubernetes marks the node NotReady and its pods not Ready, and takes them out of the
# Services' endpoints, before the node comes back.
NODE_LOST_SECONDS = 70
# The node back: its kubelet reports again, and its pods are Ready again (a status sync, 10 s).
NODE_BACK = 120


def test_one_node_lost_for_a_minute_keeps_a_leader_and_every_write_and_restarts_nothing(formed, toolbox):
    """A follower's node lost to the network for a minute (its link down: no API server, no other
    node), then back. Its pods run on unseen. The other two servers keep the quorum and the
    leader, the workload's agent on another node keeps writing, and when the node is back its
    server and client rejoin without a restart."""
    deployment = formed
    leader = leader_seen(in_pod(deployment, "consul-server-0"))
    assert leader, "no leader before the node is lost"
    # The worst case where it can be had: the watch writes through a client agent that sends its
    # calls to the follower whose node is lost (on another node than that agent and the toolbox).
    worst = client_of_a_follower(deployment, leader)
    if worst is None:
        agent = None
        pod = next(
            p for p in deployment.pods("server") if f"{p['status']['podIP']}:8300" != leader and p["spec"]["nodeName"] != REAL_NODES[0]
        )
        print(
            "\nbed: restarts: no client agent sends its calls to a follower on another node (by its one connection): the watch writes through its own"
        )
    else:
        client, pod = worst
        agent = f"http://{client['status']['podIP']}:8500"
        print(f"\nbed: restarts: the watch writes through {client['metadata']['name']}, which sends its calls to {pod['metadata']['name']}")
    follower, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
    address = next(a for a in deployment.cluster.addresses if a.name == node)
    dns_nodes = sorted(
        p["spec"]["nodeName"] for p in deployment.api.items("/api/v1/namespaces/kube-system/pods?labelSelector=k8s-app%3Dkube-dns")
    )
    print(f"\nbed: restarts: losing {node}; the cluster DNS (CoreDNS) runs on {dns_nodes}")
    servers_before = restart_counts(deployment, "server")
    clients_before = restart_counts(deployment, "client")
    with Watch(deployment, toolbox, f"one node ({node}, with {follower}) lost {NODE_LOST_SECONDS} s", agent=agent) as watch:
        assert leader_seen(in_pod(deployment, "consul-server-0")) == leader, "the leader moved before the node was lost"
        if worst is not None:
            # A client rebalances its servers every few minutes: say whether it still calls the lost one.
            held = server_addresses_held(deployment, client["metadata"]["name"])
            print(
                f"\nbed: restarts: at the loss, {client['metadata']['name']} holds connections to {sorted(held)} ({follower}: {pod['status']['podIP']})"
            )
        with watch.node_lost(node), network.unplugged(address):
            time.sleep(NODE_LOST_SECONDS)
            status = deployment.api.get(f"/api/v1/nodes/{node}")["status"]["conditions"]
            assert next(c["status"] for c in status if c["type"] == "Ready") == "Unknown", status
        back = time.monotonic()
        deployment.cluster.wait(f"{node} back: three voters and a leader", lambda: servers_formed(deployment, 3), NODE_BACK)
        deployment.cluster.wait(
            f"{node} back: every client agent Ready", lambda: all(ready(p) for p in deployment.pods("client")), NODE_BACK
        )
        deployment.cluster.wait(f"{node} back: every client sees the leader", lambda: every_client_sees_a_leader(deployment), NODE_BACK)
        print(f"\nbed: restarts: {node} back, every agent Ready and seeing the leader {time.monotonic() - back:.1f} s later")
    assert restart_counts(deployment, "server") == servers_before
    assert restart_counts(deployment, "client") == clients_before
    # DNS is asserted: with PreferSameNode (the bed's stack) no lookup goes to the lost node's agent.
    assert_bounds(watch, 3, open_defect=NODE_LOST)


# The servers' RPC port, which a client agent's calls go to.
SERVER_RPC_PORT = 8300


def client_of_a_follower(deployment, leader: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A client agent pod and the follower pod its calls go to, on neither the client's node nor
    the toolbox's, if there is one: a client holding a single connection to a server. One holding
    two keeps the second idle, from before it last rebalanced, and which one it calls is not known."""
    servers = deployment.pods("server")
    for client in deployment.pods("client"):
        addresses = server_addresses_held(deployment, client["metadata"]["name"])
        held = [p for p in servers if p["status"].get("podIP") in addresses]
        if len(held) != 1:
            continue
        server = held[0]
        elsewhere = server["spec"]["nodeName"] not in (REAL_NODES[0], client["spec"]["nodeName"])
        if elsewhere and f"{server['status']['podIP']}:8300" != leader:
            return client, server
    return None


def server_addresses_held(deployment, client: str) -> set[str]:
    """The server addresses the client agent pod `client` holds a connection to: established TCP to
    port 8300, from the pod's own /proc/net/tcp (IPv4). A client sends its calls to one server and
    keeps an idle connection to one it used before for about two minutes; its gRPC streams (the
    agent cache's subscriptions) go to port 8300 too, to a server chosen apart. So one connection
    tells the server of both, and which server takes the calls is inferred, not read: the failed
    writes at the loss are what shows it (see the README)."""
    read = deployment.exec(client, "cat", "/proc/net/tcp")
    assert read.returncode == 0, f"{client}: /proc/net/tcp unread: {read.stderr}"
    table = read.stdout
    remote = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        address, port = fields[2].split(":")
        if fields[3] == "01" and int(port, 16) == SERVER_RPC_PORT:
            remote.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return remote


# Consul's default server_rejoin_age_max: a server whose data was last seen running longer ago
# refuses to start ("refusing to rejoin cluster because server has been offline for more than ...").
DEFAULT_REJOIN_AGE_MAX_DAYS = 7


def test_a_server_whose_data_was_last_seen_eight_days_ago_starts_and_is_a_voter_again(formed):
    """A retained claim a week old, as after a week Pending, a scale-up onto a claim kept from a
    scale-down, or a re-install over the retained claims: the server's server_metadata.json aged
    past Consul's default limit, then its pod deleted. The server starts on that data, without a
    restart, and is a voter again."""
    deployment = formed
    name = "consul-server-2"
    aged = int(time.time()) - (DEFAULT_REJOIN_AGE_MAX_DAYS + 1) * 86400
    written = deployment.exec(name, "sh", "-c", f"printf '{{\"last_seen_unix\":{aged}}}' > /consul/data/server_metadata.json")
    assert written.returncode == 0, written.stderr
    before = uids(deployment, "server")[name]
    deployment.kubectl("delete", "pod", name, timeout=120)

    def back() -> bool:
        pod = next((p for p in deployment.pods("server") if p["metadata"]["name"] == name), None)
        return pod is not None and pod["metadata"]["uid"] != before and ready(pod)

    took = deployment.cluster.wait(f"{name} back on its aged data, Ready", back, SERVERS_BACK)
    deployment.cluster.wait("three voters and a leader", lambda: servers_formed(deployment, 3), SERVERS_BACK)
    print(f"\nbed: restarts: {name} started on data last seen {DEFAULT_REJOIN_AGE_MAX_DAYS + 1} days ago, Ready in {took:.1f} s")
    assert restart_counts(deployment, "server")[name] == 0
    seen = deployment.exec(name, "cat", "/consul/data/server_metadata.json")
    assert int(seen.stdout.split(":")[1].strip(" }\n")) > aged, seen.stdout
