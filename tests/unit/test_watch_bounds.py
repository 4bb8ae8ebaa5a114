"""How the bed's watcher measures the issue's bounds from its samples: stretches without a leader,
and which failed writes fall outside them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location("watch", Path(__file__).parents[1] / "e2e" / "watch.py")
assert _SPEC
assert _SPEC.loader
watch = importlib.util.module_from_spec(_SPEC)
# Its dataclasses look their module up by name.
sys.modules.setdefault("watch", watch)
_SPEC.loader.exec_module(watch)

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


def test_a_write_answered_during_or_within_its_bound_after_a_stretch_is_inside_it() -> None:
    stretches = watch.leaderless_stretches(LEADER)
    writes = [
        (1.0, "1", "500"),  # answered inside the first stretch
        (2.4, "2", "000"),  # timed out: its second began at 1.4 s, inside the stretch
        (0.3, "0", "200"),
        (3.2, "4", "500"),  # inside the open stretch at the end
    ]
    assert watch.failed_with_a_leader(writes, stretches) == []


def test_a_write_failed_while_a_leader_was_seen_throughout_its_second_counts() -> None:
    stretches = watch.leaderless_stretches(LEADER)
    writes = [(2.6, "3", "500"), (0.4, "0", "000"), (2.0, "2", "200")]
    # 2.6 s: its second (1.6-2.6 s) saw a leader throughout; 0.4 s: before any stretch began.
    assert watch.failed_with_a_leader(writes, stretches) == [(2.6, "500"), (0.4, "000")]
