"""Records what Consul's HTTP API answers the ACL Job, fresh and once the Job has run, into
consul-<version>/{fresh,reconciled,with-auth-method}.json, for the unit tests of the Job's script
(test_acl_job.py); then checks, on the same agent, the writes the recordings can't show: a token
of an earlier version revoked, grants changed by hand put back, a token made by hand kept.

It runs a real `consul agent -dev` with ACLs (default deny, the tests' management token) and the
Job's real script against it, in a network namespace of its own:

    unshare --net venv/bin/python tests/unit/recorded/record.py ~/.cache/consul-testbed/consul-1.16.1/consul

With --check it records nothing (tests/e2e/test_acl_job_on_an_agent.py runs it so).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).resolve().parents[1])]

from acl_job import MANAGEMENT_SECRET, MARKER, RECORDED, TOKENS, run_job  # noqa: E402

from consul.acl_bootstrap import ANONYMOUS_TOKEN_ID  # noqa: E402

ADDRESS = "http://127.0.0.1:8500"
CHECK_ONLY = "--check" in sys.argv
PATHS = [
    "/v1/status/leader",
    "/v1/acl/token/self",
    "/v1/acl/policies",
    "/v1/acl/tokens",
    f"/v1/acl/token/{ANONYMOUS_TOKEN_ID}",
    "/v1/operator/autopilot/configuration",
    "/v1/acl/auth-methods",
    "/v1/acl/auth-method/kubernetes",
    "/v1/acl/binding-rules?authmethod=kubernetes",
]


def get(path: str) -> object:
    request = urllib.request.Request(ADDRESS + path, headers={"X-Consul-Token": MANAGEMENT_SECRET})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def call(method: str, path: str, body: object | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(ADDRESS + path, data=data, method=method, headers={"X-Consul-Token": MANAGEMENT_SECRET})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def check_writes(scratch: Path) -> None:
    """What the Job writes, on the real agent: revocations, repairs, and what it leaves alone."""
    web = TOKENS["service-web"][0]
    status, legacy = call(
        "PUT", "/v1/acl/token", {"Description": "service token of billing", "ServiceIdentities": [{"ServiceName": "billing"}]}
    )
    assert status == 200, legacy
    status, by_hand = call("PUT", "/v1/acl/token", {"Description": "snapshot token", "Policies": [{"Name": "global-management"}]})
    assert status == 200, by_hand
    status, changed = call("PUT", f"/v1/acl/token/{web}", {"Description": "by hand", "Policies": [{"Name": "global-management"}]})
    assert status == 200, changed
    job = run_job(ADDRESS, scratch / "tokens")
    print(job.stdout, job.stderr, sep="")
    assert job.returncode == 0, "the Job failed on a real agent"
    assert call("GET", f"/v1/acl/token/{legacy['AccessorID']}")[0] in (403, 404), "the earlier version's token was not revoked"
    assert call("GET", f"/v1/acl/token/{by_hand['AccessorID']}")[0] == 200, "a token made by hand was revoked"
    status, repaired = call("GET", f"/v1/acl/token/{web}")
    assert status == 200, repaired
    assert (repaired["Description"], repaired.get("Policies"), repaired["ServiceIdentities"], repaired["SecretID"]) == (
        f"{MARKER}service token of web",
        None,
        [{"ServiceName": "web"}],
        TOKENS["service-web"][1],
    ), repaired
    print("checked: an earlier version's token revoked, one made by hand kept, grants changed by hand put back")


def record(state: str) -> None:
    if CHECK_ONLY:
        return
    answers = {}
    for path in PATHS:
        try:
            answers[path] = get(path)
        except urllib.error.HTTPError as error:  # the auth method before it is made: not recorded
            if error.code not in (403, 404):
                raise
    (RECORDED / f"{state}.json").write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")
    print(f"recorded {state}: {len(answers)} answers")


def main(consul: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    version = subprocess.run([consul, "version"], capture_output=True, text=True, check=True).stdout.split()[1]
    assert RECORDED.name == f"consul-{version.lstrip('v')}", f"{consul} is {version}, not {RECORDED.name}"
    RECORDED.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "acl.json"
        config.write_text(
            json.dumps(
                {
                    "node_name": "consul-server-0",
                    "acl": {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MANAGEMENT_SECRET}},
                }
            )
        )
        agent = subprocess.Popen([consul, "agent", "-dev", f"-config-file={config}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    get("/v1/acl/token/self")
                    break
                except (urllib.error.URLError, ConnectionError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            record("fresh")
            job = run_job(ADDRESS, Path(scratch) / "tokens")
            print(job.stdout, job.stderr, sep="")
            assert job.returncode == 0, "the Job failed on a real agent"
            record("reconciled")
            again = run_job(ADDRESS, Path(scratch) / "tokens")
            assert again.returncode == 0, again.stderr
            assert len(again.stdout.splitlines()) == 2, f"a second run changed something:\n{again.stdout}"
            job = run_job(ADDRESS, Path(scratch) / "tokens", auth=True)
            print(job.stdout, job.stderr, sep="")
            assert job.returncode == 0, "the Job with the auth method failed on a real agent"
            record("with-auth-method")
            again = run_job(ADDRESS, Path(scratch) / "tokens", auth=True)
            assert again.returncode == 0, again.stderr
            assert len(again.stdout.splitlines()) == 2, f"a second run with the auth method changed something:\n{again.stdout}"
            off = run_job(ADDRESS, Path(scratch) / "tokens")
            assert off.returncode == 0, off.stderr
            assert "deleted auth method kubernetes" in off.stdout, off.stdout
            check_writes(Path(scratch))
        finally:
            agent.terminate()
            agent.wait(timeout=30)


if __name__ == "__main__":
    main(next(arg for arg in sys.argv[1:] if arg != "--check"))
