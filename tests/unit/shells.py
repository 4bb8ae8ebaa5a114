"""The shells the pods' scripts run in, as a fixture for the unit tests that run them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(name="shell", params=["sh", "busybox"])
def shell_fixture(request: pytest.FixtureRequest) -> list[str]:
    """The shell the script runs in: busybox's ash (as in the image) and the system's sh."""
    if shutil.which(request.param) is None:
        missing = f"{request.param} is not installed (Debian: busybox-static)"
        # CI installs it: there the image's shell is never left untested.
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return ["busybox", "sh"] if request.param == "busybox" else ["sh"]


def stand_in_server(tmp_path: Path, pod: str, leader: str, cases: str) -> None:
    """A server pod's files for a script under test: its token file (management token
    "the-token") in tmp_path/acl, and a stand-in curl in tmp_path/bin that runs `cases` (shell
    case branches on its arguments), answers /v1/status/leader with `leader`, and fails (7) on
    anything else."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "acl").mkdir()
    (tmp_path / "acl" / f"{pod}.json").write_text(json.dumps({"acl": {"tokens": {"initial_management": "the-token"}}}))
    (tmp_path / "leader").write_text(leader)
    curl = tmp_path / "bin" / "curl"
    curl.write_text(f'#!/bin/sh\ncase "$*" in\n{cases}  */v1/status/leader) cat {tmp_path}/leader;;\n  *) exit 7;;\nesac\n')
    curl.chmod(0o755)
