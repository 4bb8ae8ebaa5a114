"""The server pod's address-hold sidecar: once the agent has stopped, the pod's address stays up,
refusing connections, until the other servers see this server failed or gone.

The preStop script runs in a real shell. `consul members` is a stand-in that prints the table the
other servers would answer (a second table from a given second on, as gossip declares the server
failed) or fails with a given error, and records how it was called. The pod's /proc/net/tcp is a
file that lists the agent's listening server port until a given second. `date` and `sleep` are
shell functions for a clock that moves only when the script sleeps, so what the script reports is
exact however busy the machine is.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from shells import shell_fixture  # noqa: F401  (the fixture "shell")

from consul import agent_config as cfg
from consul.servers import (
    ADDRESS_HOLD_SECONDS,
    HANDOFF_PAUSE_SECONDS,
    HANDOFF_TRIES,
    HANDOFF_TRY_SECONDS,
    TERMINATION_GRACE_SECONDS,
    address_hold,
)

POD = "consul-server-1"
OTHERS = ("consul-server-0.consul-server.consul.svc", "consul-server-2.consul-server.consul.svc")
HEADER = "Node             Address          Status  Type    Build   Protocol  DC   Partition  Segment"
REFUSED = 'Error retrieving members: Get "https://x:8501/v1/agent/members": dial tcp 10.0.0.5:8501: connect: connection refused'
FORBIDDEN = "Error retrieving members: Unexpected response code: 403 (ACL not found)"
# The agent listening on the server port (8300) on its pod IP, as /proc/net/tcp lists it, and a client's connection.
LISTENING = "   0: 0900000A:206C 00000000:0000 0A 00000000:00000000 00:00000000 00000000   100        0 1 1 0 100 0 0 10 0"
CONNECTED = "   1: 0900000A:206C 0700000A:A1B2 01 00000000:00000000 00:00000000 00000000   100        0 2 1 0 20 4 30 10 -1"


def member(status: str, name: str = POD) -> str:
    return f"{name}  10.0.0.4:8301  {status}  server  1.16.1  2  dc1  default  <all>"


# Each server lists itself; a table holds both others, then the rows given.
SELVES = "\n".join(member("alive", host.split(".")[0]) for host in OTHERS)


def hold(
    tmp_path: Path,
    shell: list[str],
    before: str | None,
    after: str | None = None,
    *,
    at: int = 0,
    stops: int = 0,
    error: str = REFUSED,
    filtered: bool = False,
    most: int = 6,
) -> tuple[subprocess.CompletedProcess[str], int, list[str]]:
    """The script run to its end: the agent listens until `stops` seconds have passed; every other
    server answers `before` (rows after both servers' own, or without them when `filtered`; None:
    fails with `error`) until `at` seconds have passed, then `after`. Returns the run, the seconds
    the clock moved, and the calls."""
    for name in ("join", "acl", "bin", "proc"):
        (tmp_path / name).mkdir()
    (tmp_path / "join" / f"{POD}.json").write_text(
        json.dumps({"retry_interval": "5s", "retry_join": [f"{host}:8301" for host in OTHERS]}, indent=2, sort_keys=True)
    )
    (tmp_path / "acl" / f"{POD}.json").write_text(json.dumps({"acl": {"tokens": {"initial_management": "the-token"}}}))
    for name, table in (("before", before), ("after", before if after is None else after)):
        if table is not None:
            (tmp_path / name).write_text(HEADER + "\n" + (table if filtered else SELVES + "\n" + table) + "\n")
    (tmp_path / "error").write_text(error + "\n" if error else "")
    tcp = tmp_path / "proc" / "tcp"
    tcp.write_text("  sl  local_address rem_address   st\n" + LISTENING + "\n" + CONNECTED + "\n")
    clock = tmp_path / "clock"
    clock.write_text("1000\n")
    stub = tmp_path / "bin" / "consul"
    stub.write_text(
        "#!/bin/sh\n"
        'for a; do case "$a" in -token-file=*) t=$(cat "${a#*=}");; esac; done\n'
        f'echo "$(cat {clock}) $* token=$t" >> {tmp_path}/calls\n'
        f"table={tmp_path}/before\n"
        f"[ $(cat {clock}) -lt {1000 + at} ] || table={tmp_path}/after\n"
        f'[ -e "$table" ] || {{ cat {tmp_path}/error >&2; exit 1; }}\n'
        'cat "$table"\n'
    )
    stub.chmod(0o755)
    functions = (
        f'date() {{ [ "$*" = "+%s" ] || return 2; cat {clock}; }}\n'
        f"sleep() {{ echo $(( $(cat {clock}) + $1 )) > {clock}; [ $(cat {clock}) -lt {1000 + stops} ] || sed -i '/ 0A /d' {tcp}; }}\n"
    )
    if stops == 0:
        tcp.write_text("  sl  local_address rem_address   st\n" + CONNECTED + "\n")
    script = (
        address_hold(True, True, max_seconds=most)
        .replace(cfg.JOIN_DIR, str(tmp_path / "join"))
        .replace(cfg.ACL_DIR, str(tmp_path / "acl"))
        .replace("/proc/net/tcp /proc/net/tcp6", f"{tcp} {tmp_path}/proc/tcp6")
    )
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "POD_NAME": POD, "TMPDIR": str(tmp_path)}
    done = subprocess.run([*shell, "-c", functions + script], env=env, capture_output=True, text=True, timeout=60, check=False)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return done, int(clock.read_text()) - 1000, calls


def test_it_asks_every_other_server_with_the_management_token_and_leaves_no_token_file(tmp_path: Path, shell: list[str]) -> None:
    done, _, calls = hold(tmp_path, shell, member("failed"))
    assert done.returncode == 0, done.stderr
    assert [c.split()[2] for c in calls] == [f"-http-addr=https://{host}:8501" for host in OTHERS]
    assert all(f"-ca-file={cfg.CA_FILE} -token-file=" in c and c.endswith(" token=the-token") for c in calls)
    assert "the-token" not in done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acl", "after", "before", "bin", "calls", "clock", "error", "join", "proc"]


def test_it_asks_only_once_the_agent_no_longer_listens_on_the_server_port(tmp_path: Path, shell: list[str]) -> None:
    """The kubelet starts the hook beside the agent's own (the leader's handoff): the hold counts
    from the agent's stop, 3 s in, not from the hook's start. An established connection to the
    port is not the agent listening."""
    done, moved, calls = hold(tmp_path, shell, member("failed"), stops=3)
    assert done.returncode == 0, done.stderr
    assert {c.split()[0] for c in calls} == {"1003"}
    assert done.stdout.strip() == "address held 1 s"
    assert moved == 4


def test_it_holds_the_address_while_another_server_sees_it_alive_and_a_second_more(tmp_path: Path, shell: list[str]) -> None:
    """Alive at 0, 1, 2 and 3 s (serf shows a suspect member as alive), failed from 4 s: the address
    goes at 5 s, a second after the servers declared it failed, for the news to reach the clients."""
    done, moved, _ = hold(tmp_path, shell, member("alive"), member("failed"), at=4, most=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "address held 5 s"
    assert moved == 5


@pytest.mark.parametrize(
    ("table", "error", "why"),
    [
        (None, REFUSED, "every other server is down (every server deleted at once)"),
        (None, "Error retrieving members: dial tcp: lookup x on 10.96.0.10:53: no such host", "no other server has an address"),
        ("", REFUSED, "it is not a member any more"),
        (member("left"), REFUSED, "it left"),
        (member("failed"), REFUSED, "it failed"),
    ],
)
def test_it_lets_the_address_go_after_a_second_when(tmp_path: Path, shell: list[str], table: str | None, error: str, why: str) -> None:
    done, moved, _ = hold(tmp_path, shell, table, error=error)
    assert done.returncode == 0, (why, done.stderr)
    assert moved == 1, why


@pytest.mark.parametrize(
    ("table", "error", "filtered", "held"),
    [
        (member("alive"), REFUSED, False, f"{OTHERS[1]} sees {POD} alive"),
        (None, FORBIDDEN, False, f"{OTHERS[1]}: {FORBIDDEN}"),
        (None, "", False, f"{OTHERS[1]}: no answer within 3 s"),
        (member("failed"), REFUSED, True, f"{OTHERS[1]}: its members table does not list it"),
    ],
    ids=["alive", "forbidden", "no-answer", "filtered"],
)
def test_an_address_seen_alive_or_by_an_unsure_answer_is_held_at_most_the_limit_and_the_hook_says_why(
    tmp_path: Path, shell: list[str], table: str | None, error: str, filtered: bool, held: str
) -> None:
    done, moved, _ = hold(tmp_path, shell, table, error=error, filtered=filtered, most=3)
    assert done.returncode == 1
    assert done.stdout.strip() == f"stopping after 3 s although {held}"
    assert moved == 3


def test_the_grace_period_covers_the_handoff_the_agent_s_stop_and_the_hold() -> None:
    """The leader's handoff at its longest (test_leadership_handoff), 5 s for the agent to stop,
    and the hold at its longest: its limit, and a last round that asks six other servers (seven
    servers, the most the stack allows), 3 s each, and its pause."""
    handoff = 2 + 1 + HANDOFF_TRIES * (HANDOFF_TRY_SECONDS + HANDOFF_PAUSE_SECONDS + 2)
    assert handoff + 5 + ADDRESS_HOLD_SECONDS + 6 * 3 + 1 <= TERMINATION_GRACE_SECONDS
