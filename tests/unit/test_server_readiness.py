"""The servers' readiness check: Ready means "sees a leader, and is a voter in its own Raft configuration".

The check runs in a real shell against a stand-in `curl` that answers what a server's API would:
the leader, and the Raft configuration pretty-printed (as Consul does in some modes) or compact.
It runs in busybox's ash, the image's shell, and in the system's `sh`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from shells import shell_fixture, stand_in_server  # noqa: F401  (the fixture "shell")

from consul import agent_config as cfg
from consul.servers import voter_readiness

POD = "consul-server-1"


def configuration(voters: dict[str, bool], *, pretty: bool, leader: bool = True) -> str:
    """The configuration as a server holds it; with `leader` it names the first server the leader."""
    servers = [
        {
            "ID": f"id-{name}",
            "Node": name,
            "Address": f"10.0.0.{i}:8300",
            "Leader": leader and i == 0,
            "ProtocolVersion": "3",
            "Voter": voter,
        }
        for i, (name, voter) in enumerate(voters.items())
    ]
    return json.dumps({"Servers": servers, "Index": 0}, indent=4 if pretty else None, separators=None if pretty else (",", ":"))


def ready(tmp_path: Path, shell: list[str], leader: str, config: str, *, acls: bool = True, status: int = 200) -> tuple[bool, str]:
    """Whether the check passes, and what the stand-in curl was handed on stdin for the
    configuration. `leader`: what /v1/status/leader answers; `config` and `status`: what the
    configuration call answers (curl's -w appends the status)."""
    (tmp_path / "config").write_text(config)
    stand_in_server(
        tmp_path,
        POD,
        leader,
        f'  *"-H @-"*configuration*) cat > {tmp_path}/stdin; cat {tmp_path}/config; printf " {status}";;\n'
        f'  *configuration*) cat {tmp_path}/config; printf " {status}";;\n',
    )
    script = voter_readiness(acls).replace(cfg.ACL_DIR, str(tmp_path / "acl"))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "POD_NAME": POD}
    done = subprocess.run([*shell, "-ec", script], env=env, capture_output=True, text=True, timeout=30, check=False)
    stdin = (tmp_path / "stdin").read_text() if (tmp_path / "stdin").exists() else ""
    return done.returncode == 0, stdin


@pytest.mark.parametrize("pretty", [True, False])
def test_a_voter_that_sees_a_leader_is_ready(tmp_path: Path, shell: list[str], pretty: bool) -> None:
    config = configuration({"consul-server-0": True, POD: True, "consul-server-2": True}, pretty=pretty)
    assert ready(tmp_path, shell, '"10.0.0.0:8300"', config) == (True, "X-Consul-Token: the-token")


@pytest.mark.parametrize("pretty", [True, False])
def test_a_non_voter_is_not_ready_whoever_else_votes(tmp_path: Path, shell: list[str], pretty: bool) -> None:
    config = configuration({"consul-server-0": True, POD: False, "consul-server-2": True}, pretty=pretty)
    assert ready(tmp_path, shell, '"10.0.0.0:8300"', config)[0] is False


def test_a_server_missing_from_its_own_configuration_is_not_ready(tmp_path: Path, shell: list[str]) -> None:
    config = configuration({"consul-server-0": True, "consul-server-11": True, "consul-server-2": True}, pretty=False)
    assert ready(tmp_path, shell, '"10.0.0.0:8300"', config)[0] is False


def test_a_voter_without_a_leader_is_not_ready(tmp_path: Path, shell: list[str]) -> None:
    config = configuration({"consul-server-0": True, POD: True}, pretty=False, leader=False)
    assert ready(tmp_path, shell, '""', config)[0] is False


@pytest.mark.parametrize(("leader", "expected"), [('"10.0.0.0:8300"', True), ('""', False)])
def test_a_token_refused_falls_back_to_seeing_a_leader(tmp_path: Path, shell: list[str], leader: str, expected: bool) -> None:
    """A 403 (a token that does not resolve yet) never holds every server NotReady for good."""
    assert ready(tmp_path, shell, leader, "ACL not found", status=403)[0] is expected


def test_any_other_answer_is_not_ready(tmp_path: Path, shell: list[str]) -> None:
    assert ready(tmp_path, shell, '"10.0.0.0:8300"', "rpc error", status=500)[0] is False


def test_without_acls_no_token_is_sent(tmp_path: Path, shell: list[str]) -> None:
    config = configuration({POD: True}, pretty=False)
    assert ready(tmp_path, shell, '"10.0.0.0:8300"', config, acls=False) == (True, "")


def test_an_agent_that_does_not_answer_is_not_ready(tmp_path: Path, shell: list[str]) -> None:
    assert ready(tmp_path, shell, "", "")[0] is False
