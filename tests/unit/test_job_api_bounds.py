"""The Jobs' calls to the servers' API are bounded in time.

A Job reaches the servers through their headless Service, whose DNS answer includes pods that are
not Ready (a server restarting, a node gone): a call to an address that accepts a connection and
never answers, or to one that never accepts it, must give up and be tried again rather than hold
the Job for minutes (the kernel's SYN retries alone take about two). Each script's calls are
checked, and the prelude every Job starts with is run against an API whose first connection
hangs.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from consul.acl_bootstrap import BOOTSTRAP_SCRIPT
from consul.cli_pods import API_PRELUDE
from consul.gossip_rotation import ROTATION_SCRIPT

SCRIPTS = {"prelude": API_PRELUDE, "acl bootstrap": BOOTSTRAP_SCRIPT, "gossip rotation": ROTATION_SCRIPT}


def curl_calls(script: str) -> list[str]:
    """The script's lines that run curl (comments left out)."""
    return [line.strip() for line in script.splitlines() if re.search(r"(^|[\s($|])curl\s", line.split("#", 1)[0])]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_call_to_the_servers_carries_the_time_bounds(name: str) -> None:
    calls = curl_calls(SCRIPTS[name])
    assert calls, f"{name}: no curl call found"
    unbounded = [call for call in calls if "$curl_opts" not in call]
    assert unbounded == [], f"{name}: calls without the time bounds of $curl_opts"


def test_the_bounds_are_a_connect_timeout_and_a_total_one() -> None:
    opts = re.search(r'^curl_opts="([^"]*)"', API_PRELUDE, re.M)
    assert opts is not None
    assert re.search(r"--connect-timeout \d+", opts.group(1))
    assert re.search(r"--max-time \d+", opts.group(1))


@pytest.fixture(name="api_hanging_once")
def api_hanging_once_fixture() -> Iterator[int]:
    """A port whose first connection is accepted and never answered; later ones get a leader."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if not held:
                held.append(conn)
                continue
            conn.recv(4096)
            body = b'"10.0.0.1:8300"'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    for conn in held:
        conn.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_wait_for_a_leader_gets_past_a_server_that_never_answers(api_hanging_once: int) -> None:
    env = {"PATH": "/usr/bin:/bin", "CONSUL_HTTP_ADDR": f"http://127.0.0.1:{api_hanging_once}"}
    try:
        done = subprocess.run(["sh", "-ec", API_PRELUDE], env=env, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the wait for a leader still hung on the server that never answered after 60 s")
    assert done.returncode == 0, done.stderr
