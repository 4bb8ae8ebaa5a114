"""The servers' preStop: the leader hands Raft leadership over before it stops; no other server acts.

The hook runs in a real shell (busybox's ash, the image's, and the system's `sh`) against a
stand-in `curl` that answers /v1/status/leader as Consul does (`"ip:port"`, an IPv6 address in
brackets) and records a transfer request with what it was handed on stdin.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path

import pytest
from shells import shell_fixture, stand_in_server  # noqa: F401  (the fixture "shell")

from consul import agent_config as cfg
from consul.servers import HANDOFF_PAUSE_SECONDS, HANDOFF_TRIES, HANDOFF_TRY_SECONDS, TERMINATION_GRACE_SECONDS, leadership_handoff

POD = "consul-server-1"
# The server a transfer hands leadership to.
NEXT_LEADER = '"10.244.2.9:8300"'
# The Raft peers as /v1/status/peers names them: three servers, this pod the first.
THREE_PEERS = '["10.244.1.7:8300","10.244.2.9:8300","10.244.3.4:8300"]'


def transferred(tmp_path: Path, shell: list[str], pod_ip: str, leader: str, *, acls: bool = True) -> str | None:
    """What the stand-in curl got on stdin for a transfer-leader request; None if none was made."""
    # A transfer moves leadership to another server, as Consul's does.
    stand_in_server(
        tmp_path,
        POD,
        leader,
        f"  *transfer-leader) cat > {tmp_path}/transfer; echo '{NEXT_LEADER}' > {tmp_path}/leader;;\n"
        f"  */v1/status/peers) echo '{THREE_PEERS}';;\n",
    )
    script = leadership_handoff(acls).replace(cfg.ACL_DIR, str(tmp_path / "acl"))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "POD_NAME": POD, "POD_IP": pod_ip}
    done = subprocess.run([*shell, "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return (tmp_path / "transfer").read_text() if (tmp_path / "transfer").exists() else None


@pytest.mark.parametrize(
    ("pod_ip", "leader"),
    [("10.244.1.7", '"10.244.1.7:8300"'), ("fd00:10:244::7", '"[fd00:10:244::7]:8300"')],
    ids=["ipv4", "ipv6"],
)
def test_the_leader_hands_leadership_over_with_the_token_on_stdin(tmp_path: Path, shell: list[str], pod_ip: str, leader: str) -> None:
    handed = transferred(tmp_path, shell, pod_ip, leader)
    assert handed is not None
    assert handed.rstrip("\n") == "X-Consul-Token: the-token"


def test_without_acls_the_leader_asks_without_a_token(tmp_path: Path, shell: list[str]) -> None:
    assert transferred(tmp_path, shell, "10.244.1.7", '"10.244.1.7:8300"', acls=False) == ""


@pytest.mark.parametrize(
    ("pod_ip", "leader"),
    [
        ("10.244.1.7", '"10.244.2.9:8300"'),
        ("10.244.1.7", '"10.244.1.70:8300"'),
        ("fd00:10:244::7", '"[fd00:10:244::70]:8300"'),
        ("10.244.1.7", '""'),
        ("10.244.1.7", ""),
    ],
    ids=["another-leader", "an-address-it-prefixes", "another-ipv6-leader", "no-leader", "no-answer"],
)
def test_a_server_that_is_not_the_leader_does_nothing(tmp_path: Path, shell: list[str], pod_ip: str, leader: str) -> None:
    assert transferred(tmp_path, shell, pod_ip, leader) is None


# A transfer can fail and be worth asking again: Raft gives it one election timeout (1 s at
# raft_multiplier 1) to bring the chosen follower up to date and see it elected, which a busy
# machine can miss. Without a second try the leader stops as leader, and the others hold an
# election. The stand-in counts the transfers it was asked for, fails the first `failures`, and
# names `then` the leader once one succeeded (or, with `moved`, after the first failure too: a
# transfer whose answer came late; with `bounced`, never: a success that left this pod leading,
# as when a request that reached a server no longer leading was forwarded to the new leader,
# which gave leadership away, back to this pod). Each transfer is recorded with the time it came.


def handoff(
    tmp_path: Path, shell: list[str], failures: int, *, moved: bool = False, bounced: bool = False, peers: str = THREE_PEERS
) -> tuple[subprocess.CompletedProcess[str], int]:
    count = tmp_path / "transfers"
    leader = tmp_path / "leader"
    after_failure = f"echo '{NEXT_LEADER}' > {leader}; " if moved else ""
    after_success = "" if bounced else f"echo '{NEXT_LEADER}' > {leader}; "
    stand_in_server(
        tmp_path,
        POD,
        '"10.244.1.7:8300"',
        f"  *transfer-leader) cat > /dev/null; date +%s.%N >> {count}\n"
        f'    if [ "$(wc -l < {count})" -gt {failures} ]; then {after_success}echo \'{{"Success":true}}\'\n'
        f"    else {after_failure}echo 'Failed to transfer Leader: leadership transfer timeout' >&2; exit 22; fi;;\n"
        f"  */v1/status/peers) echo '{peers}';;\n",
    )
    script = leadership_handoff(True).replace(cfg.ACL_DIR, str(tmp_path / "acl"))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "POD_NAME": POD, "POD_IP": "10.244.1.7"}
    done = subprocess.run([*shell, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    return done, len(count.read_text().splitlines()) if count.exists() else 0


def test_a_transfer_that_failed_is_asked_again_until_another_server_leads(tmp_path: Path, shell: list[str]) -> None:
    done, transfers = handoff(tmp_path, shell, failures=1)
    assert done.returncode == 0, done.stderr
    assert transfers == 2


def test_a_transfer_that_failed_but_moved_leadership_is_not_asked_again(tmp_path: Path, shell: list[str]) -> None:
    done, transfers = handoff(tmp_path, shell, failures=1, moved=True)
    assert done.returncode == 0, done.stderr
    assert transfers == 1


def test_a_leader_that_cannot_hand_over_gives_up_after_its_tries(tmp_path: Path, shell: list[str]) -> None:
    """A single server, or none up to date: a few tries, well inside the pod's grace period, and a
    failure the kubelet records as an event (FailedPreStopHook)."""
    done, transfers = handoff(tmp_path, shell, failures=100)
    assert done.returncode != 0
    assert transfers == HANDOFF_TRIES
    # The leader asked first (2 s), the peers once (1 s), then each try: its transfer's bound,
    # the pause after it, the leader asked again (2 s); all in the grace period, with time left
    # for Consul to stop.
    assert 2 + 1 + HANDOFF_TRIES * (HANDOFF_TRY_SECONDS + HANDOFF_PAUSE_SECONDS + 2) <= TERMINATION_GRACE_SECONDS - 5


@pytest.mark.parametrize("peers", ['["10.244.1.7:8300"]', '["[fd00:10:244::7]:8300"]'], ids=["ipv4", "ipv6"])
def test_a_single_server_does_not_ask_for_a_transfer_nobody_can_take(tmp_path: Path, shell: list[str], peers: str) -> None:
    """No other server in the Raft configuration: the hook fails at once (the kubelet's event says
    the server stopped as leader), instead of its tries and pauses delaying the stop."""
    started = time.monotonic()
    done, transfers = handoff(tmp_path, shell, failures=100, peers=peers)
    assert done.returncode != 0
    assert transfers == 0
    assert time.monotonic() - started < HANDOFF_PAUSE_SECONDS


@pytest.mark.parametrize("peers", ["", "null", "[]"], ids=["no-answer", "no-configuration", "none"])
def test_peers_that_cannot_be_read_do_not_stop_the_handoff(tmp_path: Path, shell: list[str], peers: str) -> None:
    done, transfers = handoff(tmp_path, shell, failures=0, peers=peers)
    assert done.returncode == 0, done.stderr
    assert transfers == 1


def test_a_transfer_that_answered_success_with_this_pod_still_leading_is_asked_again(tmp_path: Path, shell: list[str]) -> None:
    """The script goes by who leads, not by the transfer's answer."""
    done, transfers = handoff(tmp_path, shell, failures=0, bounced=True)
    assert done.returncode != 0
    assert transfers == HANDOFF_TRIES


def test_tries_are_two_election_timeouts_apart(tmp_path: Path, shell: list[str]) -> None:
    """A transfer whose answer was a failure or came late may still be under way (Raft allows it
    about two election timeouts, 2 s at raft_multiplier 1): a next try sooner would have a second
    server campaign beside the first, and cost the election the transfer was meant to spare."""
    handoff(tmp_path, shell, failures=100)
    times = [float(line) for line in (tmp_path / "transfers").read_text().split()]
    assert len(times) == HANDOFF_TRIES
    assert min(later - earlier for earlier, later in itertools.pairwise(times)) >= HANDOFF_PAUSE_SECONDS >= 2
