"""The shells the pods' scripts run in, as a fixture for the unit tests that run them."""

from __future__ import annotations

import os
import shutil

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
