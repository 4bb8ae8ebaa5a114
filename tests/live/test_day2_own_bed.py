"""Day-2 operations that need a bed of their own: a one-server stack growing up, and recovery
from a lost quorum. A module of their own, since every bed starts by clearing the namespaces
of any other: the shared bed of test_day2.py is closed when that module ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

from conftest import http, management_token
from test_day2 import leader_of, load_manifests, raft_peers, stack_on_a_bed, watching


def test_a_one_server_stack_grows_to_3_with_a_leader_throughout(tmp_path_factory, request):
    with stack_on_a_bed(tmp_path_factory, request, "grow", serverReplicas=1) as (stack, bed):
        assert raft_peers(bed) == ["consul-server-0"]
        grown = load_manifests(stack.up(serverReplicas=3).directory)
        watch, took = watching(
            bed, lambda: (bed.apply(grown), bed.wait_for("3 Raft peers", lambda: len(raft_peers(bed)) == 3, 120)), "grow-1-to-3"
        )
        print(f"grow: {took}")
        assert raft_peers(bed) == [f"consul-server-{i}" for i in range(3)]
        assert (watch.no_leader, watch.failed_writes) == ([], [])


def test_quorum_lost_for_good_is_recovered_with_peers_json(tmp_path_factory, request):
    """Two of three servers killed for good: no leader. The README's procedure on the survivor
    (peers.json naming it alone, then a pod restart) brings a leader back with the data, and the
    replacements, empty, join it."""
    with stack_on_a_bed(tmp_path_factory, request, "quorum") as (_, bed):
        token = management_token(bed)
        survivor = bed.pod("consul-server-0")
        assert http(survivor, "PUT", "/v1/kv/quorum/kept", token=token, body="yes") == 200
        lost = ["consul-server-1", "consul-server-2"]
        for name in lost:
            bed.held.add(name)
            os.kill(bed.pod(name).pid or 0, signal.SIGKILL)  # gone without leaving
        bed.delete_pods(lost, hold=True)
        for name in lost:
            shutil.rmtree(bed.claim_path(f"data-{name}"))
        bed.wait_for("the survivor without a leader", lambda: leader_of(survivor) == "", 60)
        started = time.monotonic()
        # The README's procedure: peers.json with the survivor alone, then delete its pod.
        node_id = survivor.exec(["cat", "/consul/data/node-id"]).stdout.strip()
        peers = json.dumps([{"id": node_id, "address": f"{survivor.ip}:8300", "non_voter": False}])
        assert survivor.exec(["sh", "-c", f"printf '%s' '{peers}' > /consul/data/raft/peers.json"]).returncode == 0
        bed.delete_pod("consul-server-0")
        bed.wait_for("a leader again", lambda: leader_of(bed.pods["consul-server-0"]) != "", 120)
        recovered_in = time.monotonic() - started
        assert http(bed.pods["consul-server-0"], "GET", "/v1/kv/quorum/kept", token=token) == 200
        bed.release(*lost)
        bed.wait_for("3 Raft peers", lambda: len(raft_peers(bed)) == 3, 180)
        print(f"\nquorum: leader back {recovered_in:.1f} s after peers.json; 3 peers {time.monotonic() - started:.1f} s after")
