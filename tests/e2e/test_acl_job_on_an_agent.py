"""The ACL Job's script against a real Consul 1.16.1 agent, outside the cluster: tests/unit/recorded/
record.py --check runs `consul agent -dev` with ACLs in a network namespace of its own and the
Job's script against it, fresh, again (no change), with and without the auth method, then checks
the writes the unit tests' recorded answers can't show: a token of an earlier version revoked, a
token made by hand kept, grants changed by hand put back with the SecretID kept."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

from testbed.cluster.bed import consul_binary

pytestmark = pytest.mark.e2e


def test_the_acl_job_on_a_real_agent_creates_revokes_repairs_and_leaves_alone_what_it_should():
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, str(ROOT / "tests" / "unit" / "recorded" / "record.py"), "--check", str(consul_binary())],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "checked: an earlier version's token revoked, one made by hand kept, grants changed by hand put back" in proc.stdout
