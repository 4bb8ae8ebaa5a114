"""scripts/run_stack.py's StopOnSignal and signals_held, without an engine: a stop never cuts
short the making or the removal of an engine's temporary directory."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import run_stack


def _signal_from_another_thread(signum: int) -> tuple[threading.Thread, threading.Event]:
    """A thread, started before any signal is held (so it does not hold them), that sends `signum`
    to the process when told: the kernel delivers it to a thread that does not block it, as it
    does to the engine's gRPC threads after an `up`."""
    go = threading.Event()

    def send() -> None:
        go.wait(10)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, go


def _held(go: threading.Event, thread: threading.Thread, steps: list[str]) -> None:
    """The signal sent while signals are held, then a pause in which Python would run its handler."""
    with run_stack.signals_held():
        go.set()
        thread.join(10)
        time.sleep(0.2)
        steps.append("the block ran to its end")
    steps.append("after the block")


def _unheld(go: threading.Event, thread: threading.Thread, steps: list[str]) -> None:
    go.set()
    thread.join(10)
    time.sleep(0.2)
    steps.append("ran on")


def test_a_signal_another_thread_takes_while_signals_are_held_waits_for_the_block_to_end() -> None:
    thread, go = _signal_from_another_thread(signal.SIGTERM)
    steps: list[str] = []
    with run_stack.StopOnSignal() as stop, pytest.raises(SystemExit) as ended:
        _held(go, thread, steps)
    assert steps == ["the block ran to its end"]
    assert ended.value.code == 128 + signal.SIGTERM
    assert stop.received == signal.SIGTERM


def test_with_nothing_held_a_signal_ends_the_run_at_once() -> None:
    thread, go = _signal_from_another_thread(signal.SIGHUP)
    steps: list[str] = []
    with run_stack.StopOnSignal(), pytest.raises(SystemExit) as ended:
        _unheld(go, thread, steps)
    assert steps == []
    assert ended.value.code == 128 + signal.SIGHUP
