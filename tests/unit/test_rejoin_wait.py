"""The servers' init container: a returning server waits until the others let go of its old address.

The script runs in a real shell; `consul members` is a stand-in that prints the table a server
would answer (or fails, as an unreachable one does) and records how it was called. It runs in
busybox's ash, the image's shell, and in the system's `sh`. `date` and `sleep` are shell functions
for a clock that moves only when the script sleeps (a function comes before busybox's applets), so
what the script reports (how many seconds it waited, and why) is exact however busy the machine is.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from shells import shell_fixture  # noqa: F401  (the fixture "shell")

from consul import agent_config as cfg
from consul.servers import rejoin_wait

POD, POD_IP, OLD_IP = "consul-server-1", "10.0.0.9", "10.0.0.4"
OTHERS = ("consul-server-0.consul-server.consul.svc", "consul-server-2.consul-server.consul.svc")
HEADER = "Node             Address          Status  Type    Build   Protocol  DC   Partition  Segment"
REFUSED = 'Error retrieving members: Get "https://x:8501/v1/agent/members": dial tcp 10.0.0.5:8501: connect: connection refused'
FORBIDDEN = "Error retrieving members: Unexpected response code: 403 (ACL not found)"
NO_SUCH_HOST = 'Error retrieving members: Get "https://x:8501/v1/agent/members": dial tcp: lookup x on 10.96.0.10:53: no such host'
# A stand-in `consul members` that never answers (timeout cuts it); `hangs` names the host it hangs for.
HANGS = "exec sleep 100"


def member(address: str, status: str, name: str = POD) -> str:
    return f"{name}  {address}:8301  {status}  server  1.16.1  2  dc1  default  <all>"


# Each server lists itself; the table the stand-in answers holds both others, then `table`'s rows.
SELVES = "\n".join(member(f"10.0.0.{i}", "alive", host.split(".")[0]) for i, host in enumerate(OTHERS, start=5))


PEERS_HEADER = (
    "Node             ID                                    Address          State     Voter  RaftProtocol  Commit Index  Trails Leader By"
)
OLD_ID = "5c1f0e5a-7d0e-4bde-9e6a-3f2a1b0c9d8e"


def peer(address: str, name: str = POD, node_id: str = OLD_ID) -> str:
    return f"{name}  {node_id}  {address}:8300  follower  true  3  120  0 commits"


def script_files(
    tmp_path: Path,
    table: str | None,
    error: str,
    leader: bool,
    *,
    filtered: bool = False,
    hangs: str = "",
    peers: str = "",
    removal_fails: bool = False,
) -> Path:
    """The pod's files under `tmp_path`, and a `consul` stand-in on PATH: `table` is every other
    server's answer to `members` (None: each fails with `error`); `list-peers` succeeds when the
    server has a leader. Each call is recorded with the token file's content. `filtered`: the
    table lacks the answering servers' own rows, as a token without node:read sees it. `hangs`:
    the host whose `members` never answers. `peers`: the rows of `list-peers` after both others'
    (a leader has them); `removal_fails`: `remove-peer` fails."""
    (tmp_path / "join").mkdir()
    (tmp_path / "join" / f"{POD}.json").write_text(
        json.dumps({"retry_interval": "5s", "retry_join": [f"{host}:8301" for host in OTHERS]}, indent=2, sort_keys=True)
    )
    (tmp_path / "acl").mkdir()
    (tmp_path / "acl" / f"{POD}.json").write_text(json.dumps({"acl": {"tokens": {"initial_management": "the-token"}}}))
    (tmp_path / "bin").mkdir()
    if table is not None:
        (tmp_path / "table").write_text(HEADER + "\n" + (table if filtered else SELVES + "\n" + table) + "\n")
    (tmp_path / "error").write_text(error + "\n")
    if not leader:
        (tmp_path / "no-leader").touch()
    others = [peer(f"10.0.0.{i}", host.split(".")[0], f"id-{i}") for i, host in enumerate(OTHERS, start=5)]
    (tmp_path / "peers").write_text("\n".join([PEERS_HEADER, *others, *([peers] if peers else [])]) + "\n")
    if removal_fails:
        (tmp_path / "removal-fails").touch()
    answer = f"cat {tmp_path}/table" if table is not None else f"cat {tmp_path}/error >&2; exit 1"
    hang = f'case "$*" in *//{hangs}:*) {HANGS};; esac\n' if hangs else ""
    stub = tmp_path / "bin" / "consul"
    stub.write_text(
        "#!/bin/sh\n"
        'for a; do case "$a" in -token-file=*) t=$(cat "${a#*=}");; esac; done\n'
        f'echo "$* token=$t" >> {tmp_path}/calls\n'
        f'case "$1 $3" in "operator list-peers") [ -e {tmp_path}/no-leader ] && exit 1; cat {tmp_path}/peers; exit 0;; esac\n'
        f'case "$1 $3" in "operator remove-peer") [ -e {tmp_path}/removal-fails ] && {{ echo "Error removing peer: 500" >&2; exit 1; }}; exit 0;; esac\n'
        f"{hang}{answer}\n"
    )
    stub.chmod(0o755)
    return tmp_path


def clock(tmp_path: Path) -> str:
    """`date +%s` and `sleep N` as shell functions over a clock file that only `sleep` moves on."""
    (tmp_path / "clock").write_text("1000\n")
    at = tmp_path / "clock"
    return f'date() {{ [ "$*" = "+%s" ] || return 2; cat {at}; }}\nsleep() {{ echo $(( $(cat {at}) + $1 )) > {at}; }}\n'


def command(
    tmp_path: Path, shell: list[str], reclaim: int, most: int, unsure: int, *, fake_clock: bool = True, pod_ip: str = POD_IP
) -> tuple[list[str], dict[str, str]]:
    script = rejoin_wait(True, True, reclaim_seconds=reclaim, max_seconds=most, unsure_seconds=unsure)
    script = script.replace(cfg.JOIN_DIR, str(tmp_path / "join")).replace(cfg.ACL_DIR, str(tmp_path / "acl"))
    if fake_clock:
        script = clock(tmp_path) + script
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "POD_NAME": POD, "POD_IP": pod_ip, "TMPDIR": str(tmp_path)}
    return [*shell, "-c", script], env


def run(
    tmp_path: Path,
    shell: list[str],
    table: str | None,
    *,
    error: str = REFUSED,
    reclaim: int = 2,
    most: int = 6,
    unsure: int = 3,
    leader: bool = True,
    filtered: bool = False,
    hangs: str = "",
    pod_ip: str = POD_IP,
    cwd: Path | None = None,
    peers: str = "",
    removal_fails: bool = False,
) -> tuple[subprocess.CompletedProcess[str], int, list[str]]:
    """The script run to its end (in `cwd`). Returns the run, the seconds it says it waited, and the calls."""
    files = script_files(tmp_path, table, error, leader, filtered=filtered, hangs=hangs, peers=peers, removal_fails=removal_fails)
    argv, env = command(files, shell, reclaim, most, unsure, pod_ip=pod_ip)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False, cwd=cwd)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    waited = re.search(r"starting after (\d+) s", done.stdout)
    assert done.returncode == 0, done.stderr
    assert waited, done.stdout
    return done, int(waited.group(1)), calls


STARTS = "no other server holds consul-server-1 at an old address"


def test_it_asks_every_other_server_with_the_management_token_and_leaves_no_token_file(tmp_path: Path, shell: list[str]) -> None:
    _, _, calls = run(tmp_path, shell, "")
    assert [c.split()[1] for c in calls if c.startswith("members")][:2] == [f"-http-addr=https://{host}:8501" for host in OTHERS]
    assert all(c.endswith(f"-ca-file={cfg.CA_FILE} -token-file={c.split('-token-file=')[1].split()[0]} token=the-token") for c in calls)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acl", "bin", "calls", "clock", "error", "join", "peers", "table"]


@pytest.mark.parametrize(
    ("table", "why"),
    [
        (None, "every other server is down (a first formation, every server restarted together)"),
        ("", "it is not a member (a new server)"),
        (member(POD_IP, "alive"), "the others hold it at this pod's address"),
    ],
)
def test_it_starts_after_two_rounds_that_hold_nothing_when(tmp_path: Path, shell: list[str], table: str | None, why: str) -> None:
    done, waited, _ = run(tmp_path, shell, table)
    assert STARTS in done.stdout, why
    assert waited == 1, why


def test_a_server_without_a_leader_holds_nothing_back(tmp_path: Path, shell: list[str]) -> None:
    done, waited, _ = run(tmp_path, shell, member(OLD_IP, "alive"), leader=False)
    assert STARTS in done.stdout
    assert waited == 1


@pytest.mark.parametrize("status", ["failed", "left"])
def test_an_old_address_failed_or_left_is_waited_out_for_the_reclaim_time(tmp_path: Path, shell: list[str], status: str) -> None:
    done, waited, _ = run(tmp_path, shell, member(OLD_IP, status), reclaim=3, most=20)
    assert f"waiting after 0 s: {OTHERS[1]} sees consul-server-1 {status} at {OLD_IP}:8301 since 0 s" in done.stdout
    assert STARTS in done.stdout
    # Held at 0, 1 and 2 s; clear at 3 and 4 s.
    assert waited == 4, done.stdout


def test_an_old_address_still_alive_is_waited_for_at_most_the_limit(tmp_path: Path, shell: list[str]) -> None:
    done, waited, _ = run(tmp_path, shell, member(OLD_IP, "alive"), most=3)
    assert f"waiting after 0 s: {OTHERS[1]} sees consul-server-1 alive at {OLD_IP}:8301" in done.stdout
    assert f"although {OTHERS[1]} sees consul-server-1 alive at {OLD_IP}:8301" in done.stdout
    assert waited == 3, done.stdout


def test_a_server_that_answers_neither_yes_nor_no_is_asked_again_for_a_while(tmp_path: Path, shell: list[str]) -> None:
    """A 403 or a timeout (a new pod's address not yet admitted) is not "down": it is asked again
    for `unsure` seconds before the script goes on without it."""
    done, waited, _ = run(tmp_path, shell, None, error=FORBIDDEN, unsure=3)
    assert f"waiting after 0 s: {OTHERS[1]}: {FORBIDDEN}" in done.stdout
    assert f"(no answer from {OTHERS[1]}: {FORBIDDEN}" in done.stdout
    assert waited == 4, done.stdout


def test_a_server_that_cannot_be_resolved_is_down(tmp_path: Path, shell: list[str]) -> None:
    done, waited, _ = run(tmp_path, shell, None, error=NO_SUCH_HOST)
    assert STARTS in done.stdout
    assert waited == 1, done.stdout


def test_a_table_without_the_answering_server_is_not_an_answer(tmp_path: Path, shell: list[str]) -> None:
    """A token without node:read sees a filtered, empty table: not "not a member"."""
    done, waited, _ = run(tmp_path, shell, "", filtered=True, unsure=3)
    assert f"waiting after 0 s: {OTHERS[1]}: its members table does not list it" in done.stdout
    assert waited == 4, done.stdout


def test_a_server_that_never_answers_is_cut_off_and_asked_again_for_a_while(tmp_path: Path, shell: list[str]) -> None:
    done, waited, _ = run(tmp_path, shell, "", hangs=OTHERS[0], unsure=1)
    assert f"waiting after 0 s: {OTHERS[0]}: no answer within 3 s" in done.stdout
    assert waited == 2, done.stdout


def test_an_ipv6_pod_address_in_brackets_is_this_pod(tmp_path: Path, shell: list[str]) -> None:
    done, waited, _ = run(tmp_path, shell, member("[fd00::9]", "alive"), pod_ip="fd00::9")
    assert STARTS in done.stdout
    assert waited == 1, done.stdout


def test_an_ipv6_address_is_never_taken_for_a_file_pattern(tmp_path: Path, shell: list[str]) -> None:
    """ "[fd00::9]:8301" is also a pattern that matches a file named "9:8301": the script expands none."""
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    (workdir / "9:8301").touch()
    done, waited, _ = run(tmp_path, shell, member("[fd00::9]", "alive"), pod_ip="fd00::9", cwd=workdir)
    assert STARTS in done.stdout
    assert waited == 1, done.stdout


def test_sigterm_ends_the_wait_and_removes_the_token_copy(tmp_path: Path, shell: list[str]) -> None:
    argv, env = command(script_files(tmp_path, member(OLD_IP, "alive"), REFUSED, True), shell, 2, 120, 3, fake_clock=False)
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "calls").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acl", "bin", "calls", "error", "join", "peers", "table"]


def removals(calls: list[str]) -> list[str]:
    return [c.split(" token=")[0] for c in calls if c.startswith("operator raft remove-peer")]


def test_the_leader_lets_go_of_the_raft_entry_at_the_old_address_before_the_server_starts(tmp_path: Path, shell: list[str]) -> None:
    """Its heartbeat may still be dialling the vanished old pod IP: a fresh entry is reached at once."""
    done, _, calls = run(tmp_path, shell, member(OLD_IP, "failed"), peers=peer(OLD_IP), reclaim=0)
    api = f"-http-addr=https://{OTHERS[0]}:8501 -ca-file={cfg.CA_FILE}"
    token_file = calls[-1].split("-token-file=")[1].split()[0]
    assert removals(calls) == [f"operator raft remove-peer {api} -token-file={token_file} -id={OLD_ID}"]
    assert calls[-1].endswith("token=the-token")
    assert f"{OTHERS[0]}'s leader let go of {POD}'s Raft entry at {OLD_IP}:8300: it replicates to {POD_IP} afresh" in done.stdout
    assert done.stdout.index(STARTS) < done.stdout.index("let go of")


@pytest.mark.parametrize(
    ("peers", "leader", "why"),
    [
        ("", True, "it is not in the Raft configuration (a new server)"),
        (peer(POD_IP), True, "the configuration holds it at this pod's address (a restart in place)"),
        (peer(OLD_IP), False, "no server has a leader to remove it (every server restarted together)"),
    ],
)
def test_no_raft_entry_is_removed_when(tmp_path: Path, shell: list[str], peers: str, leader: bool, why: str) -> None:
    done, _, calls = run(tmp_path, shell, member(OLD_IP, "failed"), peers=peers, leader=leader, reclaim=0)
    assert STARTS in done.stdout, why
    assert removals(calls) == [], why


def test_an_ipv6_entry_at_this_pods_address_is_kept(tmp_path: Path, shell: list[str]) -> None:
    done, _, calls = run(tmp_path, shell, member("[fd00::9]", "alive"), peers=peer("[fd00::9]"), pod_ip="fd00::9")
    assert STARTS in done.stdout
    assert removals(calls) == []


def test_a_removal_that_fails_is_said_and_the_server_starts(tmp_path: Path, shell: list[str]) -> None:
    done, _, calls = run(tmp_path, shell, member(OLD_IP, "failed"), peers=peer(OLD_IP), reclaim=0, removal_fails=True)
    assert len(removals(calls)) == 1
    assert f"{OTHERS[0]}'s leader kept {POD}'s Raft entry at {OLD_IP}:8300: Error removing peer: 500" in done.stdout


def test_after_the_limit_nothing_is_removed(tmp_path: Path, shell: list[str]) -> None:
    """Held alive at the old address until the limit: the old instance may still be a live voter."""
    done, waited, calls = run(tmp_path, shell, member(OLD_IP, "alive"), peers=peer(OLD_IP), most=3)
    assert "although" in done.stdout
    assert waited == 3, done.stdout
    assert removals(calls) == []


@pytest.mark.parametrize(
    ("others", "why"),
    [
        ({"consul-server-2": "failed"}, "another server is down: this one's vote is needed"),
        ({"consul-server-2": "non-voter"}, "another server is not a voter yet"),
    ],
)
def test_the_entry_stays_unless_every_other_server_is_an_alive_voter(
    tmp_path: Path, shell: list[str], others: dict[str, str], why: str
) -> None:
    table = member(OLD_IP, "failed")
    files = script_files(tmp_path, table, REFUSED, True, peers=peer(OLD_IP))
    if others.get("consul-server-2") == "failed":
        (files / "table").write_text((files / "table").read_text().replace("10.0.0.6:8301  alive", "10.0.0.6:8301  failed"))
    else:
        (files / "peers").write_text(
            (files / "peers").read_text().replace("10.0.0.6:8300  follower  true", "10.0.0.6:8300  follower  false")
        )
    argv, env = command(files, shell, 0, 6, 3)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert removals(calls) == [], why
    assert f"keeps {POD}'s Raft entry at {OLD_IP}:8300: not every other server is an alive voter (consul-server-2)" in done.stdout, why
