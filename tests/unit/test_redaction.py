"""A failing bed test must not print the secrets it handles (a management token, a gossip key):
pytest shows each failing frame's arguments and, for `==` between strings, a diff of their text.
Run here as a pytest session of its own over two failing tests, with the bed's conftest hook."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "0f3c2a9e-5d1b-4c7e-9a8f-1b2c3d4e5f60"
KEY = "pR3v1ewK3yT3xtThatMustNotLeak00000000000000="

CONFTEST = "from testbed.redaction import pytest_assertrepr_compare  # noqa: F401\n"
# The secrets come from a file, as the bed's come from the cluster's API: never from the source
# that pytest quotes.
TESTS = textwrap.dedent(
    """
    from pathlib import Path

    from testbed.redaction import Secret

    TOKEN, KEY, OTHER_KEY = Path(__file__).with_name("secrets.txt").read_text().split()

    def consul_json(url, token):
        assert token == "another token", url

    def test_a_failing_call_with_a_token_argument():
        consul_json("http://127.0.0.1:8500/v1/operator/keyring", Secret(TOKEN))

    def test_a_failing_comparison_of_two_keys():
        kept = Secret(KEY)
        assert kept == OTHER_KEY
    """
)


def test_a_failing_bed_test_names_no_secret_it_compared_or_passed(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_leaks.py").write_text(TESTS)
    (tmp_path / "secrets.txt").write_text(f"{TOKEN} {KEY} {KEY[:-4]}AAA=\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert "2 failed" in output, output
    assert TOKEN[:8] not in output, output
    assert KEY[:12] not in output, output
    assert "a secret's value is not shown" in output, output
