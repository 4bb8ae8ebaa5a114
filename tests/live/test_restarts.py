"""Restarts: servers lose their pods and come back with their data; clients come back by themselves.

The clients must see a leader again within CLIENT_REJOIN_BOUND seconds of the servers electing
one, with no container restart (the README states the bound).
"""

from __future__ import annotations

import time

import pytest
from conftest import consul, leader, management_token, wait_formed

from testbed.live.pod import Pod

pytestmark = pytest.mark.live

CLIENT_REJOIN_BOUND = 30.0
SERVERS = ["consul-server-0", "consul-server-1", "consul-server-2"]


def client_sees_leader(pod: Pod) -> bool:
    out = pod.exec(["curl", "-s", "--max-time", "2", "http://127.0.0.1:8500/v1/status/leader"], timeout=5)
    return out.returncode == 0 and out.stdout.strip('"\n') != ""


def restarts(bed) -> dict[str, int]:
    return {p.name: p.restarts for p in bed.tier("client")}


def kv(bed, server: str, method: str, key: str, value: str | None = None) -> tuple[int, str]:
    cmd = ["curl", "-s", "-w", "\n%{http_code}", "-X", method, "-H", f"X-Consul-Token: {management_token(bed)}"]
    if value is not None:
        cmd += ["--data", value]
    out = bed.pod(server).exec([*cmd, f"http://127.0.0.1:8500/v1/kv/{key}?raw"]).stdout.rsplit("\n", 1)
    return int(out[-1] or 0), out[0]


def measure_rejoin(bed, what: str, started: float) -> tuple[float, float]:
    """(seconds to a leader, seconds from that leader to every client seeing one), both from the bed."""
    bed.wait_for(f"{what}: a leader", lambda: leader(bed) != "", 180)
    elected = time.monotonic()
    bed.wait_for(f"{what}: every client sees the leader", lambda: all(client_sees_leader(p) for p in bed.tier("client")), 300)
    back = time.monotonic()
    print(f"\nlive: {what}: leader after {elected - started:.1f} s, clients {back - elected:.1f} s after the leader")
    return elected - started, back - elected


def test_clients_stay_ready_while_every_server_is_down(bed):
    before = restarts(bed)
    bed.delete_pods(SERVERS, hold=True)
    down = time.monotonic()
    time.sleep(20)
    flips = [(p.name, what) for p in bed.tier("client") for at, what in p.events if at > down and what == "not ready"]
    bed.release(*SERVERS)
    measure_rejoin(bed, "servers back after 20 s down", down)
    assert flips == []
    assert restarts(bed) == before


def test_all_servers_deleted_at_once_keep_their_data_and_clients_rejoin(bed):
    assert kv(bed, "consul-server-0", "PUT", "survivor", "still-here")[0] == 200
    before = restarts(bed)
    old_ips = {n: bed.pod(n).ip for n in SERVERS}
    started = time.monotonic()
    bed.delete_pods(SERVERS)
    wait_formed(bed)
    _, rejoin = measure_rejoin(bed, "all servers deleted at once", started)
    assert {n: bed.pod(n).ip != old_ips[n] for n in SERVERS} == dict.fromkeys(SERVERS, True)
    assert kv(bed, "consul-server-1", "GET", "survivor") == (200, "still-here")
    assert restarts(bed) == before
    assert rejoin <= CLIENT_REJOIN_BOUND


def test_servers_restarted_in_place_and_clients_rejoin(bed):
    before = restarts(bed)
    started = time.monotonic()
    for name in SERVERS:
        bed.pod(name).restart_container()
    _, rejoin = measure_rejoin(bed, "all servers restarted in place", started)
    assert restarts(bed) == before
    assert rejoin <= CLIENT_REJOIN_BOUND


def test_rolling_restart_one_server_at_a_time(bed):
    before = restarts(bed)
    for name in SERVERS:
        started = time.monotonic()
        bed.delete_pod(name)
        bed.wait_for(f"{name} back and Ready", lambda n=name: n in bed.pods and not bed.pod(n).deleted and bed.pod(n).ready, 120)
        _, rejoin = measure_rejoin(bed, f"rolling restart of {name}", started)
        assert rejoin <= CLIENT_REJOIN_BOUND
    assert restarts(bed) == before


def test_writes_succeed_with_one_of_three_servers_stopped(bed):
    bed.delete_pod("consul-server-2", hold=True)
    try:
        bed.wait_for("a leader among two", lambda: leader(bed) != "", 60)
        codes = [kv(bed, "consul-server-0", "PUT", f"one-down/{i}", str(i))[0] for i in range(10)]
        assert codes == [200] * 10
        assert kv(bed, "consul-server-1", "GET", "one-down/9") == (200, "9")
    finally:
        bed.release("consul-server-2")
    wait_formed(bed)
    peers = consul(bed.pod("consul-server-0"), "operator", "raft", "list-peers", token=management_token(bed))
    assert len(peers.stdout.strip().splitlines()) == 4
