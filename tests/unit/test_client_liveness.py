"""The client agents' liveness check: it fails only for what a restart fixes, a hung or a stranded agent.

The check runs in a real shell (busybox's ash, the image's shell, and the system's `sh`). What the
agent's own API answers comes from a stand-in for that one call; every connection to a server's
gossip port is made by the real curl, to a real listening socket on loopback or to a closed port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from shells import shell_fixture  # noqa: F401  (the fixture "shell")

from consul import agent_config as cfg
from consul.clients import LIVENESS_TIMEOUT_SECONDS, STRANDED_LIVENESS_SCRIPT

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")


@pytest.fixture
def listening() -> Iterator[int]:
    """A port on loopback that accepts connections (a running server's gossip port)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.fixture
def closed() -> int:
    """A port on loopback that refuses connections (a server that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def alive(tmp_path: Path, shell: list[str], local: str, servers: list[str], *, curl_in_image: bool = True) -> tuple[bool, str]:
    """Whether the check passes, and what it printed. `local`: the HTTP status the agent's
    /v1/status/leader gives (000: no answer); `servers`: the retry_join list in the agent's
    cluster-size file, as the ConfigMap holds it; `curl_in_image`: False runs the check with only
    the shell's other tools on its PATH."""
    (tmp_path / "bin").mkdir()
    config = tmp_path / "config"
    config.mkdir()
    (config / cfg.CLUSTER_SIZE_FILE).write_text(cfg.config_files({"retry_join": servers}, {})[cfg.CLUSTER_SIZE_FILE])
    if curl_in_image:
        curl = tmp_path / "bin" / "curl"
        curl.write_text(
            "#!/bin/sh\n"
            'case "$*" in\n'
            f"  *{cfg.LOCAL_HTTP_URL}/v1/status/leader*) printf '{local}'; [ '{local}' != 000 ];;\n"
            f'  *) exec {CURL} "$@";;\n'
            "esac\n"
        )
        curl.chmod(0o755)
        path = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    else:
        for tool in ("tr", "sed"):
            (tmp_path / "bin" / tool).symlink_to(str(shutil.which(tool)))
        path = str(tmp_path / "bin")
    script = STRANDED_LIVENESS_SCRIPT.replace(cfg.CONFIG_DIR, str(config))
    out = subprocess.run(
        [str(shutil.which(shell[0])), *shell[1:], "-ec", script],
        env={"PATH": path},
        capture_output=True,
        text=True,
        timeout=LIVENESS_TIMEOUT_SECONDS,
        check=False,
    )
    return out.returncode == 0, out.stdout + out.stderr


def test_an_agent_that_reaches_its_servers_is_alive_with_or_without_a_leader(tmp_path: Path, shell: list[str], listening: int) -> None:
    # 200 with a leader's address, or with "" from servers between leaders: nothing a restart fixes.
    assert alive(tmp_path, shell, "200", [f"127.0.0.1:{listening}"]) == (True, "")


def test_an_agent_whose_api_gives_no_answer_while_a_server_runs_is_restarted(tmp_path: Path, shell: list[str], listening: int) -> None:
    # Hung, or stuck on servers that are gone while one runs: a restart joins again.
    ok, said = alive(tmp_path, shell, "000", [f"127.0.0.1:{listening}"])
    assert not ok
    assert f"no answer within 10 s) while 127.0.0.1:{listening} accepts connections: stranded" in said


def test_an_agent_whose_api_gives_no_answer_while_every_server_is_down_is_left_alone(tmp_path: Path, shell: list[str], closed: int) -> None:
    # What a client answers while its calls wait on servers that went away (a dial to a vanished
    # pod's address, then the RPC hold timeout): nothing a restart fixes while no server runs.
    ok, said = alive(tmp_path, shell, "000", [f"127.0.0.1:{closed}"])
    assert ok, said
    assert "every server is down" in said


def test_an_agent_that_knows_no_server_while_every_server_is_down_is_left_alone(tmp_path: Path, shell: list[str], closed: int) -> None:
    ok, said = alive(tmp_path, shell, "500", [f"127.0.0.1:{closed}"])
    assert ok, said
    assert "every server is down" in said


def test_an_agent_that_knows_no_server_while_one_accepts_connections_is_stranded(
    tmp_path: Path, shell: list[str], closed: int, listening: int
) -> None:
    # The first server is down, the second runs at an address this agent's gossip no longer holds.
    ok, said = alive(tmp_path, shell, "500", [f"127.0.0.1:{closed}", f"127.0.0.1:{listening}"])
    assert not ok
    assert f"127.0.0.1:{listening} accepts connections: stranded" in said


def test_a_server_whose_name_does_not_resolve_counts_as_down(tmp_path: Path, shell: list[str]) -> None:
    # A server pod with no address (Pending, deleted) has no DNS record under the headless Service.
    ok, said = alive(tmp_path, shell, "500", ["consul-server-0.consul-server.consul.svc.invalid:8301"])
    assert ok, said


def test_an_image_without_curl_fails_the_check_and_says_so(tmp_path: Path, shell: list[str], listening: int) -> None:
    # A check that cannot ask anything must not pass silently: the agent would never be restarted.
    ok, said = alive(tmp_path, shell, "200", [f"127.0.0.1:{listening}"], curl_in_image=False)
    assert not ok
    assert "no curl" in said
