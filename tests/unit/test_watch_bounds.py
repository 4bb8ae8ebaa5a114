"""How the bed's watcher measures the issue's bounds from its samples: stretches without a leader,
and which failed writes fall outside them."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.cluster.bed import credential_copies

_SPEC = importlib.util.spec_from_file_location("watch", Path(__file__).parents[1] / "e2e" / "watch.py")
assert _SPEC
assert _SPEC.loader
watch = importlib.util.module_from_spec(_SPEC)
# Its dataclasses look their module up by name.
sys.modules.setdefault("watch", watch)
_SPEC.loader.exec_module(watch)

# Random per run: the check for a leaked header file looks for it in the machine's shared temporary directory.
TOKEN = "the-token-" + secrets.token_hex(8)


@pytest.fixture(autouse=True)
def _no_token_left_in_the_machine_s_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A sampler keeps its token header in a temporary file, which its shell removes when it exits;
    the tests that kill a sampler outright (as the watch kills its `kubectl exec`, where the file
    goes with the pod) must not leave that file behind: their samplers get a temporary directory
    of the test's own."""
    system_tmp = [Path(tempfile.gettempdir())]
    before = set(credential_copies([TOKEN], system_tmp, []))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    yield
    assert sorted(set(credential_copies([TOKEN], system_tmp, [])) - before) == []


# A leader at 0, 0.25 and 0.5 s, none at 0.75-1.25 s, back at 1.5 s; none again from 3.0 s to the end.
LEADER = [
    (0.0, True),
    (0.25, True),
    (0.5, True),
    (0.75, False),
    (1.0, False),
    (1.25, False),
    (1.5, True),
    (2.75, True),
    (3.0, False),
    (3.25, False),
]


def test_a_stretch_is_measured_from_its_first_sample_without_a_leader_to_the_next_with_one() -> None:
    assert watch.leaderless_stretches(LEADER, widened=False) == [(0.75, 1.5), (3.0, 3.25)]


def test_widened_a_stretch_starts_at_the_last_sample_that_still_saw_a_leader() -> None:
    assert watch.leaderless_stretches(LEADER) == [(0.5, 1.5), (2.75, 3.25)]


def test_no_samples_and_a_leader_throughout_have_no_stretch() -> None:
    assert watch.leaderless_stretches([]) == []
    assert watch.leaderless_stretches([(0.0, True), (0.25, True)]) == []


# No leader from 1.0 s to 3.5 s (2.5 s, over a 2 s bound) and from 5.0 s to 5.5 s (within it).
LONG_STRETCH = [(0.0, True), (0.5, True), (1.0, False), (2.0, False), (3.0, False), (3.5, True), (5.0, False), (5.5, True)]


def test_a_stretch_over_the_bound_with_no_cause_in_it_is_unexplained() -> None:
    assert watch.unexplained_stretches(LONG_STRETCH, 2.0, [], lead=1.0) == [(1.0, 3.5)]
    # A cause inside the stretch within the bound only, or after the long one, explains nothing.
    assert watch.unexplained_stretches(LONG_STRETCH, 2.0, [5.2, 3.6], lead=1.0) == [(1.0, 3.5)]
    # Nor one more than `lead` before it starts.
    assert watch.unexplained_stretches(LONG_STRETCH, 2.0, [-0.1], lead=1.0) == [(1.0, 3.5)]


def test_a_cause_from_lead_seconds_before_a_stretch_to_its_end_explains_it() -> None:
    for cause in (0.0, 1.0, 2.2, 3.5):
        assert watch.unexplained_stretches(LONG_STRETCH, 2.0, [cause], lead=1.0) == [], cause


def test_stretches_within_the_bound_need_no_cause() -> None:
    assert watch.unexplained_stretches(LEADER, 2.0, [], lead=1.0) == []


# The agent answered "no leader" (200, empty body) at 0.75-1.25 s; at 3.0 s it answered 500 (no server reachable).
NO_LEADER = [(0.0, False), (0.25, False), (0.5, False), (0.75, True), (1.0, True), (1.25, True), (1.5, False), (2.75, False), (3.0, False)]


def write(at: float, status: str, seconds: float = 1.0, answer: str = "") -> object:
    return watch.Write(at=at, index=str(at), status=status, seconds=seconds, answer=answer)


def test_a_failed_write_is_explained_by_an_answer_that_says_there_is_no_leader_while_the_agent_said_so() -> None:
    explained = [
        write(1.0, "500", 0.01, "No cluster leader"),
        write(1.6, "500", 0.2, "rpc error making call: leadership lost while committing log"),
    ]
    assert watch.failed_with_a_leader(explained, NO_LEADER) == []


def test_a_write_unanswered_while_the_agent_said_no_leader_is_explained() -> None:
    # Sent at 0.4 s, cut at 1.4 s: "no leader" was heard from 0.75 s (widened: from 0.5 s).
    assert watch.failed_with_a_leader([write(1.4, "000")], NO_LEADER) == []
    # Sent at 1.6 s: the stretch (widened to 1.5 s) had ended before it.
    assert watch.failed_with_a_leader([write(2.6, "000")], NO_LEADER) == [write(2.6, "000")]


def test_other_failures_count_even_inside_a_stretch_without_a_leader() -> None:
    """An EOF from a stopping server, or the client agent's own 500, is not Consul lacking a leader."""
    counted = [write(1.0, "500", 0.02, "rpc error making call: EOF"), write(3.1, "500", 0.01, "No known Consul servers"), write(2.7, "000")]
    assert watch.failed_with_a_leader(counted, NO_LEADER) == counted


def test_acknowledged_writes_never_count() -> None:
    assert watch.failed_with_a_leader([write(0.3, "200", 0.01)], NO_LEADER) == []


def test_an_answer_that_says_no_leader_counts_when_the_agent_heard_a_leader_throughout() -> None:
    """A lone server that can't hear the leader, or a leadership transfer, fails a write while a
    workload's agent sees a leader: that is not the cluster lacking one."""
    counted = [write(2.2, "500", 0.01, "No cluster leader"), write(2.5, "500", 0.01, "leadership transfer in progress")]
    assert watch.failed_with_a_leader(counted, NO_LEADER) == counted


def pods(*samples: tuple[float, dict[str, tuple[bool, str, int]]]) -> list[tuple[float, dict[str, tuple[bool, str, int]]]]:
    return list(samples)


UP = (True, "uid-a", 0)


def test_an_agent_pod_is_down_from_its_last_sample_serving_to_its_first_serving_again() -> None:
    samples = pods(
        (0.0, {"consul-server-0": UP, "consul-client-x": UP}),
        (0.5, {"consul-server-0": (False, "uid-a", 0), "consul-client-x": UP}),
        (1.0, {"consul-client-x": UP}),
        (1.5, {"consul-server-0": (False, "uid-b", 0), "consul-client-x": UP}),
        (2.0, {"consul-server-0": (True, "uid-b", 0), "consul-client-x": UP}),
        (2.5, {"consul-server-0": (True, "uid-b", 0), "consul-client-x": UP}),
    )
    assert watch.agents_down(samples) == [(0.0, 2.0)]


def test_a_container_restart_between_two_ready_samples_is_a_stretch_down() -> None:
    samples = pods(
        (0.0, {"consul-server-0": UP}), (0.5, {"consul-server-0": (True, "uid-a", 1)}), (1.0, {"consul-server-0": (True, "uid-a", 1)})
    )
    assert watch.agents_down(samples) == [(0.0, 0.5)]


def test_a_pod_still_down_at_the_end_is_down_to_the_last_sample_and_a_new_one_from_its_first() -> None:
    samples = pods((0.0, {"consul-server-0": UP}), (0.5, {"consul-server-3": (False, "uid-c", 0)}), (1.0, {}))
    assert watch.agents_down(samples) == [(0.0, 1.0), (0.5, 1.0)]


def test_a_failed_write_with_a_leader_is_excused_only_while_an_agent_pod_is_down() -> None:
    down = [(0.0, 2.0)]
    during, after = write(1.5, "500", 0.02, "rpc error making call: EOF"), write(3.0, "500", 0.02, "rpc error making call: EOF")
    assert watch.failed_with_every_agent_up([during, after], down) == [after]


def test_a_pod_replaced_under_a_new_name_is_down_until_its_replacement_is_ready() -> None:
    """A DaemonSet roll: consul-client-x goes, consul-client-y comes; the watch goes on long after."""
    samples = pods(
        (0.0, {"consul-client-x": UP, "consul-server-0": UP}),
        (1.0, {"consul-server-0": UP}),
        (1.5, {"consul-client-y": (False, "uid-y", 0), "consul-server-0": UP}),
        (2.0, {"consul-client-y": (True, "uid-y", 0), "consul-server-0": UP}),
        (100.0, {"consul-client-y": (True, "uid-y", 0), "consul-server-0": UP}),
    )
    assert watch.agents_down(samples) == [(0.0, 2.0), (1.5, 2.0)]


def test_a_pod_removed_for_good_is_down_until_it_has_been_gone_a_while_with_every_other_pod_serving() -> None:
    """A scale-down: consul-server-3 goes and nothing replaces it."""
    samples = pods(
        (0.0, {"consul-server-0": UP, "consul-server-3": UP}),
        (1.0, {"consul-server-0": UP}),
        (5.5, {"consul-server-0": UP}),
        (6.0, {"consul-server-0": UP}),
        (100.0, {"consul-server-0": UP}),
    )
    assert watch.agents_down(samples) == [(0.0, 6.0)]


def test_a_server_deleted_and_re_created_under_its_name_is_down_until_it_is_ready_again() -> None:
    samples = pods(
        (0.0, {"consul-server-0": UP, "consul-server-1": UP}),
        (0.5, {"consul-server-1": UP}),
        (1.0, {"consul-server-0": (False, "uid-b", 0), "consul-server-1": UP}),
        (40.0, {"consul-server-0": (True, "uid-b", 0), "consul-server-1": UP}),
    )
    assert watch.agents_down(samples) == [(0.0, 40.0)]


def test_a_client_on_a_node_cut_off_is_not_counted_not_ready_but_one_elsewhere_is() -> None:
    pods = [
        (0.0, {"consul-client-a": (True, "a", 0), "consul-client-b": (True, "b", 0)}),
        (0.25, {"consul-client-a": (False, "a", 0), "consul-client-b": (True, "b", 0)}),
        (0.5, {"consul-client-a": (False, "a", 0), "consul-client-b": (False, "b", 0)}),
        (0.75, {"consul-client-a": (True, "a", 0), "consul-client-b": (False, "b", 0)}),
    ]
    cut_off = [(0.0, frozenset()), (0.25, frozenset({"consul-client-a"})), (0.5, frozenset({"consul-client-a"})), (0.75, frozenset())]
    assert watch.clients_not_ready(pods, cut_off) == 2
    assert watch.clients_not_ready(pods, [(at, frozenset()) for at, _ in cut_off]) == 4


def test_a_pod_on_a_lost_node_is_cut_off_until_it_is_ready_with_its_node_back() -> None:
    lost = frozenset({"node-3"})
    cut = watch.still_cut_off(frozenset(), "consul-client-c", "node-3", True, lost)
    assert cut == {"consul-client-c"}
    # Ready by the API while the node is lost (the node controller has not noticed yet): still cut off.
    assert watch.still_cut_off(cut, "consul-client-c", "node-3", True, lost) == {"consul-client-c"}
    # The node back, the pod not Ready yet: still cut off; Ready: no longer.
    assert watch.still_cut_off(cut, "consul-client-c", "node-3", False, frozenset()) == {"consul-client-c"}
    assert watch.still_cut_off(cut, "consul-client-c", "node-3", True, frozenset()) == frozenset()
    # A pod on another node never is.
    assert watch.still_cut_off(frozenset(), "consul-client-a", "node-1", False, lost) == frozenset()


# A sampler that stops answering would let every bound pass unmeasured: the watch fails when one
# goes silent longer than SILENCE_BOUND between the action's start and the watch's end.
def test_the_longest_silence_counts_from_the_action_start_to_the_first_sample_and_from_the_last_to_the_end() -> None:
    assert watch.longest_silence([0.5, 1.0, 1.5], start=1.0, end=9.0) == 7.5
    assert watch.longest_silence([0.5, 2.0, 2.25], start=0.0, end=3.0) == 1.5
    assert watch.longest_silence([], start=2.0, end=4.0) == 2.0


def test_a_watch_whose_sampler_died_names_it_and_one_that_sampled_throughout_names_none() -> None:
    ticks = [0.25 * i for i in range(41)]  # 0 to 10 s
    record = watch.Record(
        leader=[(t, True) for t in ticks],
        voters=[(t, 3) for t in ticks],
        writes=[write(t, "200", 0.01) for t in ticks],
        pods=[(t, {}) for t in ticks],
        registered=[(t, True) for t in ticks],
        dns=[(t, True) for t in ticks if t < 4.0],  # its stream ended at 4 s
    )
    assert watch.silent_samplers(record, start=1.0, end=10.0, dns=True) == {"dns": 6.25}
    assert watch.silent_samplers(record, start=1.0, end=10.0, dns=False) == {}
    record.writes = [write(t, "200", 0.01) for t in ticks if t <= 1.0]
    assert watch.silent_samplers(record, start=1.0, end=10.0, dns=False) == {"writes": 9.0}


# The samplers' lines reach the watch through a `kubectl exec` stream, which a busy machine can
# hold up for seconds. Timed on arrival, a held-up stream reads as a sampler that sampled nothing,
# and its samples bunch at the arrival. Each line carries the time the toolbox pod took it, on the
# same kernel's boot-time clock as the watch's (/proc/uptime): not the wall clock, which a machine
# can step while a watch runs (in one CI run it went about 30 s ahead of the monotonic clock during
# a watch, and every sampler read as silent for that long).
LOOPS = {
    "leader": watch.LEADER_LOOP,
    "voters": watch.VOTERS_LOOP,
    "catalog": watch.CATALOG_LOOP,
    "dns": watch.DNS_LOOP,
    "writes": watch.WRITES_LOOP,
}


DEBIAN_PACKAGES = {"busybox": "busybox-static", "curl": "curl"}


def _need(*programs: str) -> None:
    """Fails under CI, which installs them, and skips elsewhere, when a program the test runs is missing."""
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        why = f"not installed: {', '.join(missing)} (Debian: {', '.join(DEBIAN_PACKAGES[program] for program in missing)})"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def _fmt(agent: str, dns: str = "127.0.0.1") -> dict[str, object]:
    """What a sampler loop is formatted with: `agent`'s URL, the `dns` server, 1 s writes."""
    return {"agent": agent, "interval": watch.INTERVAL, "bound": 1, "prefix": "p", "service": "s", "dns": dns}


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_every_sampler_line_carries_the_boot_clock_time_the_pod_took_it(tmp_path: Path, name: str) -> None:
    _need("busybox")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("curl", "dig"):
        (bin_dir / program).write_text("#!/bin/sh\nsleep 0.1\necho 200 0.1\n")
        (bin_dir / program).chmod(0o755)
    script = watch._STREAM_PRELUDE + LOOPS[name].format(**_fmt("http://agent:8500", dns="10.0.0.10"))
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    process = subprocess.Popen(
        ["busybox", "sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        start_new_session=True,
    )
    assert process.stdin is not None
    process.stdin.write(TOKEN + "\n")
    process.stdin.flush()
    # The stream held up: nothing is read for 3 s.
    time.sleep(3)
    os.killpg(process.pid, signal.SIGKILL)
    killed = time.clock_gettime(time.CLOCK_BOOTTIME)
    out, _ = process.communicate(timeout=10)
    taken = [watch.stamped(line) for line in out.splitlines()]
    assert len(taken) >= 4, out
    times = [at for at, _ in taken]
    # Boot-clock times (to /proc/uptime's hundredth of a second) from the shell's start to its end, whenever the lines are read.
    assert all(before - 0.01 < at <= killed for at in times), (before, killed, times)
    # Spread over the 3 s at the sampler's interval, not bunched when the lines were read.
    assert times[-1] - times[0] > 1.0, times
    assert all(rest for _, rest in taken), out


# Silence is judged once every stream has delivered up to the watch's end: a sampler whose last
# lines are still on their way is waited for (within a bound), not counted silent.
def test_a_sampler_whose_lines_have_not_reached_the_end_of_the_watch_is_behind() -> None:
    ticks = [0.25 * i for i in range(41)]  # 0 to 10 s
    record = watch.Record(
        leader=[(t, True) for t in ticks],
        voters=[(t, 3) for t in ticks],
        writes=[write(t, "200", 0.01) for t in ticks if t <= 7.0],
        pods=[(t, {}) for t in ticks],
        registered=[(t, True) for t in ticks],
        dns=[(t, True) for t in ticks if t < 4.0],
    )
    assert watch.samplers_behind(record, end=10.0, dns=True) == ["dns", "writes"]
    assert watch.samplers_behind(record, end=10.0, dns=False) == ["writes"]
    assert watch.samplers_behind(record, end=7.0, dns=False) == []


# The figures cover the watch's window and no more: while the watch waits for a stream held up on
# a busy machine, the other samplers go on sampling, and what they see after the window's end is
# not the operation's. Background samples can also reach the stream out of the order they were
# taken in, while the stretches and the down spans are read in time order.
# A sample's answer can reach the watch after a later one's (each runs in the background; an answer
# held up on a busy machine names the leader of when the agent answered), and a server not yet
# reached by the new leader names the one before. Seen on the bed in a
# rolling restart: three handoffs, and the leaders read in arrival order flipped back twice. Each
# leader is named once, when first seen: in a roll a leader's address never leads again (its pod
# comes back at a new address), and an election that did bring one back raises the Raft term,
# which the roll's test compares with the handoffs.
def test_each_leader_is_named_once_though_a_late_answer_names_the_one_before() -> None:
    sampling = watch.Watch(_Deployment(), None, "unit", agent="http://agent")
    for at, body in [(1.0, "a"), (2.0, "b"), (1.9, "a"), (2.25, "b"), (3.0, "c"), (2.9, "b"), (3.25, "c")]:
        sampling._on_leader(at, f'"10.0.0.{ord(body)}:8300" 200')
    assert sampling.record.leaders == ['"10.0.0.97:8300"', '"10.0.0.98:8300"', '"10.0.0.99:8300"']


def test_the_figures_keep_the_samples_up_to_the_end_of_the_watch_in_time_order() -> None:
    record = watch.Record(
        leader=[(0.0, True), (0.5, False), (0.25, True), (10.5, False)],
        no_leader=[(0.0, False), (0.5, True), (0.25, False), (10.5, True)],
        voters=[(0.0, 3), (11.0, 1)],
        writes=[write(0.0, "200", 0.01), write(12.0, "000", 1.0)],
        pods=[(0.0, {}), (10.0, {}), (10.25, {})],
        cut_off=[(0.0, frozenset()), (10.0, frozenset()), (10.25, frozenset())],
        registered=[(0.0, True), (10.75, False)],
        dns=[(0.0, True), (20.0, False)],
        held_up={"dns": 9.5},
    )
    window = watch.up_to(record, end=10.0)
    assert window.leader == [(0.0, True), (0.25, True), (0.5, False)]
    assert window.no_leader == [(0.0, False), (0.25, False), (0.5, True)]
    assert window.voters == [(0.0, 3)]
    assert [w.at for w in window.writes] == [0.0]
    assert [at for at, _ in window.pods] == [0.0, 10.0]
    assert [at for at, _ in window.cut_off] == [0.0, 10.0]
    assert window.registered == [(0.0, True)]
    assert window.dns == [(0.0, True)]
    assert window.held_up == {"dns": 9.5}


# The samplers' loops run here by busybox sh as the bed's toolbox pod runs them (the token on
# standard input, the stream's lines read as they come), against a local HTTP server that gives
# every request one answer.
def _answering(status: int, body: bytes) -> type[http.server.BaseHTTPRequestHandler]:
    class Answering(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer()

        def do_PUT(self) -> None:
            self._answer()

        def _answer(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    return Answering


@contextlib.contextmanager
def _serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server run by `handler` while the block runs, by its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _ProcessGroup(subprocess.Popen[str]):
    """Killed with every process of its shell, as killing `kubectl exec` ends the pod's."""

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


class _LocalToolbox:
    """`stream` as the bed's toolbox pod runs it, here; `hold` seconds of the stream's lines held
    back in a pipe, as a busy machine holds up an exec stream; `before` printed ahead of the loop."""

    def __init__(self, hold: float = 0.0, before: str = "") -> None:
        self.hold = hold
        self.before = before

    def stream(self, script: str, input: str) -> subprocess.Popen[str]:
        held = f"{{ {self.before}{script}\n}} | {{ sleep {self.hold}; cat; }}"
        process = _ProcessGroup(
            ["busybox", "sh", "-c", held],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
        assert process.stdin is not None
        process.stdin.write(input + "\n")
        process.stdin.flush()
        return process


# Consul answers some refusals with a body that ends in a newline: the 429 of
# `limits.http_max_conns_per_client`, the 500 of a client agent without servers. Each sample is
# still one line, led by its stamp: a second line would carry no stamp and end the sampler. The
# watch reads its stream as text, where a carriage return ends a line too.
REFUSAL = b"Your IP is issuing too many concurrent connections, please rate limit your calls"


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"], ids=["newline", "carriage-return"])
@pytest.mark.parametrize("name", sorted(set(LOOPS) - {"dns"}))
def test_an_answer_that_ends_in_a_newline_is_still_one_stamped_line_per_sample(name: str, ending: bytes) -> None:
    _need("busybox", "curl")
    with _serving(_answering(429, REFUSAL + ending)) as agent:
        process = _LocalToolbox().stream(watch._STREAM_PRELUDE + LOOPS[name].format(**_fmt(agent)), TOKEN)
        try:
            time.sleep(2)
        finally:
            process.kill()
    out, _ = process.communicate(timeout=10)
    lines = out.splitlines()
    assert len(lines) >= 3, out
    # Every line is a stamped sample (a curl slow past its 1 s on a busy machine prints its own
    # timeout's sample, also stamped); the refusal came through as one.
    samples = [watch.stamped(line)[1] for line in lines]
    assert any("429" in sample.split() for sample in samples), out


# The watch's own wiring: a stream that a busy machine holds up still yields samples timed when
# the pod took them, the hold-up is measured, and a line that is not a stamped sample is kept for
# the watch's verdict while the sampler goes on.
class _Deployment:
    def management_token(self) -> str:
        return TOKEN


@pytest.fixture
def leading_agent() -> Iterator[str]:
    _need("busybox", "curl")
    with _serving(_answering(200, b'"127.0.0.1:8300"')) as agent:
        yield agent


def _sample(name: str, handler: str, agent: str, toolbox: _LocalToolbox, seconds: float) -> Any:
    """A watch's sampler `name` with its `handler`, alone, for `seconds`; the watch, stopped."""
    sampling = watch.Watch(_Deployment(), toolbox, "unit", agent=agent)
    sampling.started = watch.clock()
    try:
        sampling._stream(name, LOOPS[name].format(**_fmt(agent)), getattr(sampling, handler))
        time.sleep(seconds)
    finally:
        sampling._halt()
    return sampling


def test_a_held_up_stream_yields_samples_timed_when_the_pod_took_them(leading_agent: str) -> None:
    sampling = _sample("leader", "_on_leader", leading_agent, _LocalToolbox(hold=2.0), seconds=3.5)
    times = [at for at, _ in sampling.record.leader]
    assert len(times) >= 4, sampling.record
    # A curl slow past its 1 s on a busy machine samples no leader; the others name it.
    assert any(named for _, named in sampling.record.leader), sampling.record.leader
    # Taken from the start, though none reached the watch before 2 s.
    assert times[0] < 1.0, times
    assert 1.0 < sampling.record.held_up["leader"] < 3.5, sampling.record.held_up
    assert watch.longest_silence(times, 0.0, 2.0) < 1.0, times
    assert sampling.record.leaders == ['"127.0.0.1:8300"'], sampling.record.leaders
    assert sampling.record.unreadable == {}
    assert not any(thread.is_alive() for thread in sampling._threads)


def test_a_step_of_the_wall_clock_is_no_time_on_the_watch_s_clock(leading_agent: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's wall clock stepped 30 s ahead while the watch samples: its samples go on
    0.25 s apart, and its clock (the pod sampler's, the hold-up's) reads no jump."""
    sampling = watch.Watch(_Deployment(), _LocalToolbox(), "unit", agent=leading_agent)
    sampling.started = watch.clock()
    try:
        sampling._stream("leader", LOOPS["leader"].format(**_fmt(leading_agent)), sampling._on_leader)
        time.sleep(1.0)
        before = sampling._now()
        wall = time.time
        monkeypatch.setattr(time, "time", lambda: wall() + 30)
        time.sleep(1.0)
        after = sampling._now()
    finally:
        sampling._halt()
    assert 0.9 < after - before < 2.0, (before, after)
    times = [at for at, _ in sampling.record.leader]
    assert watch.longest_silence(times, times[0], after) < 1.0, times
    assert max(sampling.record.held_up.values()) < 2.0, sampling.record.held_up


def test_a_line_that_is_not_a_stamped_sample_is_kept_and_the_sampler_goes_on(leading_agent: str) -> None:
    sampling = _sample("leader", "_on_leader", leading_agent, _LocalToolbox(before="echo 'a stray line'; "), seconds=1.5)
    assert sampling.record.unreadable == {"leader": "a stray line"}
    assert len(sampling.record.leader) >= 3, sampling.record.leader


# When the watch ends it kills its `kubectl exec`, but the pod's shell runs on: the container
# runtime holds its standard output open, and nobody reads it. Each loop must end then, with every
# sample it started; else it goes on sending its requests to Consul (writes too), and each sample
# blocks on a full pipe and stays, until the toolbox pod is deleted. It can tell: its standard
# input (the token's) ends with the `kubectl exec`.
def _processes_in_group(group: int) -> list[str]:
    """The live processes (not zombies) of a process group, as "<pid> <state>"."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) == group and fields[0] != "Z":
                found.append(f"{stat.parent.name} {fields[0]}")
    return found


@pytest.mark.parametrize("name", sorted(set(LOOPS) - {"dns"}))
def test_a_sampler_ends_with_every_sample_it_started_once_its_reader_is_gone(name: str) -> None:
    _need("busybox", "curl")
    with _serving(_answering(200, b'"127.0.0.1:8300"')) as agent:
        process = _ProcessGroup(
            ["busybox", "sh", "-c", watch._STREAM_PRELUDE + LOOPS[name].format(**_fmt(agent))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            process.stdin.write(TOKEN + "\n")
            process.stdin.flush()
            assert process.stdout.readline()
            # The reader is gone: standard input closes, standard output stays open and unread.
            process.stdin.close()
            deadline = time.monotonic() + 5
            while _processes_in_group(process.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = _processes_in_group(process.pid)
        finally:
            process.kill()
            process.wait()
    assert left == []


def test_every_change_of_the_named_leader_is_kept_in_the_order_answered() -> None:
    """What the test prints when the term check fails: a real flip back (A, B, A) is named once
    among the leaders first seen, and only this sequence shows it."""
    sampling = watch.Watch(_Deployment(), None, "unit", agent="http://agent")
    for at, body in [(1.0, "a"), (1.25, "a"), (2.0, "b"), (1.9, "a"), (2.25, '""'), (3.0, "b")]:
        sampling._on_leader(at, (f'"10.0.0.{ord(body)}:8300"' if body != '""' else body) + " 200")
    assert sampling.record.leader_turns == [
        (1.0, '"10.0.0.97:8300"'),
        (2.0, '"10.0.0.98:8300"'),
        (1.9, '"10.0.0.97:8300"'),
        (3.0, '"10.0.0.98:8300"'),
    ]


def _leader_lines(lines: list[tuple[float, str]]) -> Any:
    """A watch that was handed these leader sampler lines (time, line), in order."""
    sampling = watch.Watch(_Deployment(), None, "unit", agent="http://agent")
    for at, line in lines:
        sampling._on_leader(at, line)
    return sampling


def test_what_the_agent_answered_while_it_named_no_leader_is_counted_for_each_stretch() -> None:
    """What tells a Raft election (the agent answers 200 with no leader) from an agent that can't
    reach a server (500, or no answer within the sampler's 1 s) when a stretch breaks the bound."""
    sampling = _leader_lines(
        [
            (1.0, '"10.0.0.1:8300" 200'),
            (1.25, "curl exit 28 0"),
            (1.5, "curl exit 28 0"),
            (1.75, "rpc error making call: EOF 500"),
            (2.0, '"10.0.0.2:8300" 200'),
            (3.0, '"" 200'),
            (3.25, '"10.0.0.2:8300" 200'),
        ]
    )
    assert watch.leaderless_answers(sampling.record, after=1.0) == [
        "0.25-1.00 s: 2x no answer within 1 s (curl exit 28), 1x 500 rpc error making call: EOF",
        '2.00-2.25 s: 1x 200 ""',
    ]


def test_a_leader_sample_curl_gave_up_on_keeps_why() -> None:
    """No answer within the 1 s, no connection and a reset read differently: a starved or
    stopped agent is told from a pod that is gone."""
    sampling = _leader_lines(
        [(1.0, '"10.0.0.1:8300" 200'), (1.25, "curl exit 28 0"), (1.5, "curl exit 7 0"), (1.75, "curl exit 56 0"), (2.0, "curl exit 3 0")]
    )
    assert [answer for _, answer in sampling.record.unnamed] == [
        "no answer within 1 s (curl exit 28)",
        "could not connect (curl exit 7)",
        "connection reset (curl exit 56)",
        "curl exit 3",
    ]


def test_the_leader_sampler_says_which_way_curl_failed() -> None:
    _need("busybox", "curl")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    with silent, closed:
        unanswered = _sample("leader", "_on_leader", f"http://127.0.0.1:{silent.getsockname()[1]}", _LocalToolbox(), seconds=2.0)
        refused = _sample("leader", "_on_leader", f"http://127.0.0.1:{closed.getsockname()[1]}", _LocalToolbox(), seconds=1.0)
    assert {answer for _, answer in unanswered.record.unnamed} == {"no answer within 1 s (curl exit 28)"}, unanswered.record.unnamed
    assert {answer for _, answer in refused.record.unnamed} == {"could not connect (curl exit 7)"}, refused.record.unnamed


class _FollowedLogs:
    def __init__(self) -> None:
        self.following = False

    def __enter__(self) -> _FollowedLogs:
        self.following = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.following = False


class _DeploymentFollowingLogs(_Deployment):
    def __init__(self) -> None:
        self.logs = _FollowedLogs()

    def followed_logs(self, *args: object) -> _FollowedLogs:
        return self.logs


class _BrokenToolbox:
    def sh(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("the toolbox pod is gone")


def test_a_watch_that_fails_to_start_stops_what_it_started() -> None:
    """Else the agents' log followers (a kubectl each) run on until the test session ends."""
    deployment = _DeploymentFollowingLogs()
    with pytest.raises(RuntimeError, match="toolbox pod is gone"), watch.Watch(deployment, _BrokenToolbox(), "unit", agent="http://agent"):
        pass
    assert not deployment.logs.following


# A write with no answer in its bound (000) is either a connection never made (no agent serving
# behind the Service on the node, or the packet path dropped it) or one the agent accepted and did
# not answer in time (the agent waiting on its server). The sample keeps curl's connect time to tell.
class _Silent(http.server.BaseHTTPRequestHandler):
    def do_PUT(self) -> None:
        time.sleep(2)

    def log_message(self, *_: object) -> None:
        pass


def _writes(agent: str, seconds: float) -> list[Any]:
    """The writes sampler, alone, against `agent` for `seconds`: its samples as Writes."""
    sampling = _sample("writes", "_on_write", agent, _LocalToolbox(), seconds)
    assert sampling.record.unreadable == {}
    return list(sampling.record.writes)


def test_an_unanswered_write_tells_a_connection_the_agent_accepted_from_none() -> None:
    _need("busybox", "curl")
    with _serving(_Silent) as agent:
        accepted = _writes(agent, 2.5)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = _writes(f"http://127.0.0.1:{closed.getsockname()[1]}", 1.0)
    assert accepted
    assert refused
    assert all(w.status == "000" and w.connected > 0 for w in accepted), accepted
    assert all(w.status == "000" and w.connected == 0 for w in refused), refused
    assert "connected in" in accepted[0].described()
    assert "no connection" in refused[0].described()


def test_an_answered_write_keeps_its_status_time_and_answer() -> None:
    answered = watch.parsed_write(1.5, "7 500 0.012 0.001 No cluster leader")
    assert answered == watch.Write(at=1.5, index="7", status="500", seconds=0.012, connected=0.001, answer="No cluster leader")
    assert watch.parsed_write(2.0, "8 000 1") == watch.Write(at=2.0, index="8", status="000", seconds=1.0, connected=0.0)


def test_a_local_connection_time_is_listed_to_a_tenth_of_a_millisecond() -> None:
    """curl gives microseconds; a connection on the node takes well under one, which seconds to
    three places listed as "0.000 s", as if none were made."""
    write = watch.Write(at=3.0, index="9", status="000", seconds=1.0, connected=0.000213)
    assert write.described() == "000 (connected in 0.2 ms)"
