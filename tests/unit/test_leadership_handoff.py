"""The servers' preStop: the leader hands Raft leadership over before it stops; no other server acts.

The hook runs in a real shell (busybox's ash, the image's, and the system's `sh`) against a
stand-in `curl` that answers /v1/status/leader as Consul does (`"ip:port"`, an IPv6 address in
brackets) and records a transfer request with what it was handed on stdin.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from shells import shell_fixture, stand_in_server  # noqa: F401  (the fixture "shell")

from consul import agent_config as cfg
from consul.servers import leadership_handoff

POD = "consul-server-1"


def transferred(tmp_path: Path, shell: list[str], pod_ip: str, leader: str, *, acls: bool = True) -> str | None:
    """What the stand-in curl got on stdin for a transfer-leader request; None if none was made."""
    stand_in_server(tmp_path, POD, leader, f"  *transfer-leader) cat > {tmp_path}/transfer;;\n")
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
