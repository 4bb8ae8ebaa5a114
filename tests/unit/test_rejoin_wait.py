"""The servers' init container: a returning server waits until the others let go of its old address.

The script runs in a real shell; `consul members` is a stand-in that prints the table a server
would answer (or fails, as an unreachable one does) and records how it was called.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from consul import agent_config as cfg
from consul.servers import rejoin_wait

POD, POD_IP, OLD_IP = "consul-server-1", "10.0.0.9", "10.0.0.4"
OTHERS = ("consul-server-0.consul-server.consul.svc", "consul-server-2.consul-server.consul.svc")
HEADER = "Node             Address          Status  Type    Build   Protocol  DC   Partition  Segment"


def member(address: str, status: str) -> str:
    return f"{POD}  {address}:8301  {status}  server  1.16.1  2  dc1  default  <all>"


def run(
    tmp_path: Path, table: str | None, reclaim: int = 2, most: int = 4, leader: bool = True
) -> tuple[subprocess.CompletedProcess[str], float, list[str]]:
    """The script with the pod's files under `tmp_path`; `table` is every other server's answer
    (None: none answers). Returns the run, its seconds and the stand-in's recorded calls."""
    (tmp_path / "join").mkdir()
    (tmp_path / "join" / f"{POD}.json").write_text(
        json.dumps({"retry_join": [f"{host}:8301" for host in OTHERS], "retry_interval": "5s"}, indent=2)
    )
    (tmp_path / "acl").mkdir()
    (tmp_path / "acl" / f"{POD}.json").write_text(json.dumps({"acl": {"tokens": {"initial_management": "the-token"}}}))
    (tmp_path / "bin").mkdir()
    stub = tmp_path / "bin" / "consul"
    if table is not None:
        (tmp_path / "table").write_text(HEADER + "\n" + table + "\n")
    answer = f"cat {tmp_path}/table" if table is not None else "echo 'connection refused' >&2; exit 1"
    # `operator raft list-peers` answers when the server has a leader.
    answer = f'case "$1" in operator) [ -e {tmp_path}/no-leader ] && exit 1; exit 0;; esac\n{answer}'
    if not leader:
        (tmp_path / "no-leader").touch()
    # Each call: its arguments, and the token file's content.
    stub.write_text(
        f'#!/bin/sh\nfor a; do case "$a" in -token-file=*) t=$(cat "${{a#*=}}");; esac; done\necho "$* token=$t" >> {tmp_path}/calls\n{answer}\n'
    )
    stub.chmod(0o755)
    script = rejoin_wait(True, True, reclaim_seconds=reclaim, max_seconds=most)
    script = script.replace(cfg.JOIN_DIR, str(tmp_path / "join")).replace(cfg.ACL_DIR, str(tmp_path / "acl"))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "POD_NAME": POD, "POD_IP": POD_IP, "TMPDIR": str(tmp_path)}
    started = time.monotonic()
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return done, time.monotonic() - started, calls


def test_it_asks_every_other_server_with_the_management_token_and_leaves_no_token_file(tmp_path: Path) -> None:
    done, _, calls = run(tmp_path, "")
    assert done.returncode == 0, done.stderr
    assert [c.split()[1] for c in calls if c.startswith("members")] == [f"-http-addr=https://{host}:8501" for host in OTHERS]
    assert all(c.endswith(f"-ca-file={cfg.CA_FILE} -token-file={c.split('-token-file=')[1].split()[0]} token=the-token") for c in calls)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acl", "bin", "calls", "join", "table"]


def test_a_server_without_a_leader_holds_nothing_back(tmp_path: Path) -> None:
    done, seconds, _ = run(tmp_path, member(OLD_IP, "alive"), leader=False)
    assert "starting after 0 s: no other server holds consul-server-1 at an old address" in done.stdout
    assert seconds < 2


@pytest.mark.parametrize(
    ("table", "why"),
    [
        (None, "no other server answers (a first formation, every server restarted together)"),
        ("", "it is not a member (a new server)"),
        (member(POD_IP, "alive"), "the others hold it at this pod's address"),
        (member(OLD_IP, "left"), "its old address has left"),
    ],
)
def test_it_starts_at_once_when(tmp_path: Path, table: str | None, why: str) -> None:
    done, seconds, _ = run(tmp_path, table)
    assert done.returncode == 0, done.stderr
    assert "starting after 0 s: no other server holds consul-server-1 at an old address" in done.stdout, why
    assert seconds < 2, why


def test_a_failed_old_address_is_waited_out_for_the_reclaim_time(tmp_path: Path) -> None:
    done, seconds, _ = run(tmp_path, member(OLD_IP, "failed"), reclaim=2, most=10)
    assert done.returncode == 0, done.stderr
    assert "no other server holds consul-server-1 at an old address" in done.stdout
    assert 2 <= seconds < 6, done.stdout


def test_an_old_address_still_alive_is_waited_for_at_most_the_limit(tmp_path: Path) -> None:
    done, seconds, _ = run(tmp_path, member(OLD_IP, "alive"), most=3)
    assert done.returncode == 0, done.stderr
    assert f"waiting: {OTHERS[1]} sees consul-server-1 alive at {OLD_IP}:8301" in done.stdout
    assert f"although {OTHERS[1]} sees consul-server-1 alive at {OLD_IP}:8301" in done.stdout
    assert seconds >= 3
