"""The bed's log follower keeps a pod's log whole when its stream ends: it follows again from the
last line's timestamp, and skips the lines the kubelet repeats at that timestamp."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("pod_logs", Path(__file__).parents[1] / "e2e" / "pod_logs.py")
assert _SPEC is not None
assert _SPEC.loader is not None
pod_logs = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("pod_logs", pod_logs)
_SPEC.loader.exec_module(pod_logs)

# What `kubectl logs -f --timestamps` prints for one container that ran, then a stream that broke
# after its third line, then the next container of the same pod name (a replaced pod).
FIRST = ["2026-12-06T07:00:00.1Z a", "2026-12-06T07:00:00.2Z b", "2026-12-06T07:00:00.2Z c"]
SECOND = ["2026-12-06T07:00:01.5Z d", "2026-12-06T07:00:02Z e"]

# A stand-in for kubectl: without --since-time it prints FIRST; with it, as the kubelet does, every
# line stamped in that time's second or later (the API takes it to the second, so the lines earlier
# in that second and those stamped `since` come again), then SECOND. Every call is recorded; a
# third call prints nothing, but with `finished` (a container that ended: an init container, one
# that stopped) every call prints the same lines again and ends at once. Each line ends in a line
# break, but for a last line that is the kubelet's own notice (a container whose log is gone),
# which has none.
STUB = """#!/usr/bin/env python3
import sys
calls = open(sys.argv[1], "a+")
calls.write(" ".join(sys.argv[2:]) + "\\n")
calls.close()
first, second = {first!r}, {second!r}
since = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--since-time=")), None)
finished = {finished!r}
done = not finished and sum(1 for _ in open(sys.argv[1])) > 2
if not done:
    lines = first if since is None else [l for l in first if l[:4].isdigit() and l[:19] >= since[:19]] + second
    end = "" if lines[-1].startswith("unable") else "\\n"
    sys.stdout.write("\\n".join(lines) + end)
"""


# What the kubelet answers, with no timestamp and no line break, for a container whose log it no
# longer has (a pod replaced while its stream was being read).
NOTICE = "unable to retrieve container logs for containerd://0123abcd"


def _kubectl(tmp_path: Path, first: list[str], second: list[str], *, finished: bool) -> tuple[list[str], Path]:
    """The stand-in kubectl's command line (its calls recorded in the file returned)."""
    calls = tmp_path / "calls"
    stub = tmp_path / "kubectl"
    stub.write_text(STUB.format(first=first, second=second, finished=finished))
    stub.chmod(0o755)
    return [str(stub), str(calls)], calls


def _follow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: list[str]) -> tuple[list[str], list[str]]:
    """The lines kept in the log file, and kubectl's calls, once it was asked three times."""
    kubectl, calls = _kubectl(tmp_path, first, SECOND, finished=False)
    target = tmp_path / "logs"
    monkeypatch.setattr(pod_logs, "RETRY_SECONDS", 0.1)
    with pod_logs.FollowedLogs(kubectl, "ns", [("consul-server-0", "consul")], target):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not calls.exists() or len(calls.read_text().splitlines()) < 3):
            time.sleep(0.05)
    return (target / "consul-server-0.consul.log").read_text().splitlines(), calls.read_text().splitlines()


def test_a_broken_stream_is_followed_again_from_its_last_line_with_no_line_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kept, asked = _follow(tmp_path, monkeypatch, FIRST)
    assert kept == FIRST + SECOND
    assert asked[0] == "-n ns logs -f --timestamps -c consul consul-server-0"
    assert asked[1] == "-n ns logs -f --timestamps -c consul consul-server-0 --since-time=2026-12-06T07:00:00.2Z"


def test_the_kubelets_notice_is_kept_on_its_own_line_and_the_next_stream_starts_from_the_last_stamped_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept, asked = _follow(tmp_path, monkeypatch, [*FIRST, NOTICE])
    assert kept == [*FIRST, NOTICE, *SECOND]
    assert asked[1] == "-n ns logs -f --timestamps -c consul consul-server-0 --since-time=2026-12-06T07:00:00.2Z"


def test_a_finished_container_is_asked_again_less_and_less_often(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call of a finished container's log ends at once with nothing new: asking again every
    RETRY_SECONDS, for every such container of every watched pod, would start a kubectl a second
    each on the machine whose operation is being measured."""
    kubectl, calls = _kubectl(tmp_path, FIRST, [], finished=True)
    target = tmp_path / "logs"
    monkeypatch.setattr(pod_logs, "RETRY_SECONDS", 0.05)
    monkeypatch.setattr(pod_logs, "RETRY_SECONDS_MAX", 0.4)
    with pod_logs.FollowedLogs(kubectl, "ns", [("consul-server-0", "rejoin-wait")], target):
        time.sleep(2)
    # Every 0.05 s, about 40 calls; doubling the wait up to 0.4 s, about 8.
    assert len(calls.read_text().splitlines()) <= 12
    assert (target / "consul-server-0.rejoin-wait.log").read_text().splitlines() == FIRST
