"""The bed's check that no copy of its bearer tokens stays behind (no root, no cluster)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

from testbed.cluster.bed import credential_copies

TOKEN = "0123456789abcdef0123456789abcdef"


def test_a_copy_is_found_directly_in_a_shared_folder_and_anywhere_in_the_run_s_own(tmp_path: Path) -> None:
    shared, own = tmp_path / "tmp", tmp_path / "run"
    (own / "deep" / "er").mkdir(parents=True)
    shared.mkdir()
    (shared / "kubeconfig123").write_text(f"users: [{{name: admin, user: {{token: {TOKEN}}}}}]\n")
    (shared / "unrelated").write_text("nothing here\n")
    (own / "deep" / "er" / "engine.log").write_bytes(b"\x00binary\xff" + TOKEN.encode())
    assert sorted(credential_copies([TOKEN], [shared], [own])) == sorted(
        [f"credential in {shared / 'kubeconfig123'}", f"credential in {own / 'deep' / 'er' / 'engine.log'}"]
    )


def test_a_shared_folder_is_looked_at_only_at_its_top(tmp_path: Path) -> None:
    (tmp_path / "someone-else").mkdir()
    (tmp_path / "someone-else" / "file").write_text(TOKEN)
    assert credential_copies([TOKEN], [tmp_path], []) == []


def test_a_fifo_a_socket_and_a_link_are_neither_waited_on_nor_followed(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # no writer: an ordinary open would wait for ever
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "socket"))
        outside = tmp_path.parent / f"{tmp_path.name}-outside"
        outside.write_text(TOKEN)
        try:
            (tmp_path / "link").symlink_to(outside)
            assert credential_copies([TOKEN], [tmp_path], [tmp_path]) == []
        finally:
            outside.unlink()


def test_a_fifo_s_writer_waiting_for_a_reader_is_left_waiting(tmp_path: Path) -> None:
    """Opening a FIFO to read, even without blocking, lets a writer waiting in open() go on and
    then lose what it writes: the scan must not open another program's FIFO at all."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:
        with fifo.open("w") as pipe:  # waits for a reader
            opened.set()
            with contextlib.suppress(BrokenPipeError):
                pipe.write("for its reader\n")

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(0.3)  # the writer waiting in open()
    try:
        assert credential_copies([TOKEN], [tmp_path], [tmp_path]) == []
        assert not opened.wait(0.5)
    finally:
        with fifo.open() as reader:
            reader.read()
        thread.join(5)
