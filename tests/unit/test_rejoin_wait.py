"""The servers' init container: a returning server waits until the others let go of its old address.

The script runs in a real shell; `consul members` is a stand-in that prints the table a server
would answer (or fails, as an unreachable one does) and records how it was called. `date` and
`sleep` are stand-ins for a clock that moves only when the script sleeps, so what the script reports
(how many seconds it waited, and why) is exact however busy the machine is.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from consul import agent_config as cfg
from consul.servers import rejoin_wait

POD, POD_IP, OLD_IP = "consul-server-1", "10.0.0.9", "10.0.0.4"
OTHERS = ("consul-server-0.consul-server.consul.svc", "consul-server-2.consul-server.consul.svc")
HEADER = "Node             Address          Status  Type    Build   Protocol  DC   Partition  Segment"
REFUSED = 'Error retrieving members: Get "https://x:8501/v1/agent/members": dial tcp 10.0.0.5:8501: connect: connection refused'
FORBIDDEN = "Error retrieving members: Unexpected response code: 403 (ACL not found)"


def member(address: str, status: str) -> str:
    return f"{POD}  {address}:8301  {status}  server  1.16.1  2  dc1  default  <all>"


def script_files(tmp_path: Path, table: str | None, error: str, leader: bool, clock: bool = True) -> Path:
    """The pod's files under `tmp_path`, and a `consul` stand-in on PATH: `table` is every other
    server's answer to `members` (None: each fails with `error`); `list-peers` succeeds when the
    server has a leader. Each call is recorded with the token file's content. With `clock`,
    `date +%s` reads a clock file that only `sleep` moves on."""
    (tmp_path / "join").mkdir()
    (tmp_path / "join" / f"{POD}.json").write_text(
        json.dumps({"retry_interval": "5s", "retry_join": [f"{host}:8301" for host in OTHERS]}, indent=2, sort_keys=True)
    )
    (tmp_path / "acl").mkdir()
    (tmp_path / "acl" / f"{POD}.json").write_text(json.dumps({"acl": {"tokens": {"initial_management": "the-token"}}}))
    (tmp_path / "bin").mkdir()
    if table is not None:
        (tmp_path / "table").write_text(HEADER + "\n" + table + "\n")
    (tmp_path / "error").write_text(error + "\n")
    if not leader:
        (tmp_path / "no-leader").touch()
    answer = f"cat {tmp_path}/table" if table is not None else f"cat {tmp_path}/error >&2; exit 1"
    stub = tmp_path / "bin" / "consul"
    stub.write_text(
        "#!/bin/sh\n"
        'for a; do case "$a" in -token-file=*) t=$(cat "${a#*=}");; esac; done\n'
        f'echo "$* token=$t" >> {tmp_path}/calls\n'
        f'case "$1" in operator) [ -e {tmp_path}/no-leader ] && exit 1; exit 0;; esac\n'
        f"{answer}\n"
    )
    stub.chmod(0o755)
    if clock:
        (tmp_path / "clock").write_text("1000\n")
        stand_ins = {
            "date": f'[ "$*" = "+%s" ] || exit 2\ncat {tmp_path}/clock',
            "sleep": f"echo $(( $(cat {tmp_path}/clock) + $1 )) > {tmp_path}/clock",
        }
        for name, body in stand_ins.items():
            (tmp_path / "bin" / name).write_text(f"#!/bin/sh\n{body}\n")
            (tmp_path / "bin" / name).chmod(0o755)
    return tmp_path


def command(tmp_path: Path, reclaim: int, most: int, unsure: int) -> tuple[list[str], dict[str, str]]:
    script = rejoin_wait(True, True, reclaim_seconds=reclaim, max_seconds=most, unsure_seconds=unsure)
    script = script.replace(cfg.JOIN_DIR, str(tmp_path / "join")).replace(cfg.ACL_DIR, str(tmp_path / "acl"))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "POD_NAME": POD, "POD_IP": POD_IP, "TMPDIR": str(tmp_path)}
    return ["sh", "-c", script], env


def run(
    tmp_path: Path, table: str | None, *, error: str = REFUSED, reclaim: int = 2, most: int = 6, unsure: int = 3, leader: bool = True
) -> tuple[subprocess.CompletedProcess[str], int, list[str]]:
    """The script run to its end. Returns the run, the seconds it says it waited, and the calls."""
    argv, env = command(script_files(tmp_path, table, error, leader), reclaim, most, unsure)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    waited = re.search(r"starting after (\d+) s", done.stdout)
    assert done.returncode == 0, done.stderr
    assert waited, done.stdout
    return done, int(waited.group(1)), calls


STARTS = "no other server holds consul-server-1 at an old address"


def test_it_asks_every_other_server_with_the_management_token_and_leaves_no_token_file(tmp_path: Path) -> None:
    _, _, calls = run(tmp_path, "")
    assert [c.split()[1] for c in calls if c.startswith("members")][:2] == [f"-http-addr=https://{host}:8501" for host in OTHERS]
    assert all(c.endswith(f"-ca-file={cfg.CA_FILE} -token-file={c.split('-token-file=')[1].split()[0]} token=the-token") for c in calls)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acl", "bin", "calls", "clock", "error", "join", "table"]


@pytest.mark.parametrize(
    ("table", "why"),
    [
        (None, "every other server is down (a first formation, every server restarted together)"),
        ("", "it is not a member (a new server)"),
        (member(POD_IP, "alive"), "the others hold it at this pod's address"),
    ],
)
def test_it_starts_after_two_rounds_that_hold_nothing_when(tmp_path: Path, table: str | None, why: str) -> None:
    done, waited, _ = run(tmp_path, table)
    assert STARTS in done.stdout, why
    assert waited == 1, why


def test_a_server_without_a_leader_holds_nothing_back(tmp_path: Path) -> None:
    done, waited, _ = run(tmp_path, member(OLD_IP, "alive"), leader=False)
    assert STARTS in done.stdout
    assert waited == 1


@pytest.mark.parametrize("status", ["failed", "left"])
def test_an_old_address_failed_or_left_is_waited_out_for_the_reclaim_time(tmp_path: Path, status: str) -> None:
    done, waited, _ = run(tmp_path, member(OLD_IP, status), reclaim=3, most=20)
    assert f"waiting after 0 s: {OTHERS[1]} sees consul-server-1 {status} at {OLD_IP}:8301 since 0 s" in done.stdout
    assert STARTS in done.stdout
    # Held at 0, 1 and 2 s; clear at 3 and 4 s.
    assert waited == 4, done.stdout


def test_an_old_address_still_alive_is_waited_for_at_most_the_limit(tmp_path: Path) -> None:
    done, waited, _ = run(tmp_path, member(OLD_IP, "alive"), most=3)
    assert f"waiting after 0 s: {OTHERS[1]} sees consul-server-1 alive at {OLD_IP}:8301" in done.stdout
    assert f"although {OTHERS[1]} sees consul-server-1 alive at {OLD_IP}:8301" in done.stdout
    assert waited == 3, done.stdout


def test_a_server_that_answers_neither_yes_nor_no_is_asked_again_for_a_while(tmp_path: Path) -> None:
    """A 403 or a timeout (a new pod's address not yet admitted) is not "down": it is asked again
    for `unsure` seconds before the script goes on without it."""
    done, waited, _ = run(tmp_path, None, error=FORBIDDEN, unsure=3)
    assert f"waiting after 0 s: {OTHERS[1]}: {FORBIDDEN}" in done.stdout
    assert f"(no answer from {OTHERS[1]}: {FORBIDDEN}" in done.stdout
    assert waited == 4, done.stdout


def test_sigterm_ends_the_wait_and_removes_the_token_copy(tmp_path: Path) -> None:
    argv, env = command(script_files(tmp_path, member(OLD_IP, "alive"), REFUSED, True, clock=False), 2, 120, 3)
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "calls").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acl", "bin", "calls", "error", "join", "table"]
