"""The ACL Job's script run as its pod runs it (`sh -ec`, its environment, the Secret's files), but
against a Consul API at any address: a recorded one (RecordedConsul) in the unit tests, a real
agent in recorded/record.py."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from consul.acl_bootstrap import (
    ANONYMOUS_TOKEN_ID,
    BOOTSTRAP_SCRIPT,
    DNS_POLICY_RULES,
    METRICS_POLICY_RULES,
    RULES_VERSION,
    client_agent_rules,
    token_marker,
)

RECORDED = Path(__file__).parent / "recorded" / "consul-1.16.1"
# Test IDs (accessor, SecretID), fixed so that recorded answers and the Job's environment agree.
MANAGEMENT_SECRET = "3f1a5a3e-0000-4000-8000-00000000000a"
TOKENS = {
    "agent-client": ("5e1c0a11-0000-4000-8000-000000000001", "5e1c0a11-0000-4000-8000-0000000000f1"),
    "agent-consul-server-0": ("5e1c0a11-0000-4000-8000-000000000010", "5e1c0a11-0000-4000-8000-0000000000f2"),
    "agent-consul-server-1": ("5e1c0a11-0000-4000-8000-000000000011", "5e1c0a11-0000-4000-8000-0000000000f3"),
    "agent-consul-server-2": ("5e1c0a11-0000-4000-8000-000000000012", "5e1c0a11-0000-4000-8000-0000000000f4"),
    "service-web": ("5e1c0a11-0000-4000-8000-000000000020", "5e1c0a11-0000-4000-8000-0000000000f5"),
    "metrics": ("5e1c0a11-0000-4000-8000-000000000030", "5e1c0a11-0000-4000-8000-0000000000f6"),
}
MARKER = token_marker("consul", "dc1")
# The reviewer's token Secret as the cluster's token controller fills it: a test CA (certificate
# only) and a token of the JWT form, which Consul takes as they are when the method is configured.
CLUSTER_CA = """-----BEGIN CERTIFICATE-----
MIIBNTCB3KADAgECAgEBMAoGCCqGSM49BAMCMBoxGDAWBgNVBAMMD3Rlc3QgY2x1
c3RlciBDQTAeFw0yNjAxMDEwMDAwMDBaFw0zNTEyMzAwMDAwMDBaMBoxGDAWBgNV
BAMMD3Rlc3QgY2x1c3RlciBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABJSC
5kCEF2N76fvHyJtn7E0sY38qH6tU7LhgPPp19m0xcxvbgksblx4GnQGTbLZjU75Q
QL6ac7/mIVSEUo66wkWjEzARMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwID
SAAwRQIhANHxrjNmHBBwl7XECnS8mIbmwMt1fssVAU/m14ai29rpAiBGKvyWCYyt
YiN1e89+vgsz9RBOKBxcBkXOChcbrHts8w==
-----END CERTIFICATE-----
"""
REVIEWER_JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6Y29uc3VsOmNvbnN1bC1hdXRoLW1ldGhvZCJ9.c2lnbmF0dXJl"
)
AUTH_TTL = "15m0s"
AUTH_SELECTOR = 'serviceaccount.namespace == "apps"'


def job_environment(
    address: str,
    tokens_dir: Path,
    retry_seconds: int = 5,
    auth: bool = False,
    all_servers_updated: bool = True,
    api_retry_seconds: int = 3,
) -> dict[str, str]:
    """The ACL Job's environment for a 3-server stack with serviceTokens [web] (and with
    kubernetesAuth, when `auth`: TTL 15m, namespace apps), its Secrets' files written under `tokens_dir`."""
    tokens_dir.mkdir(parents=True, exist_ok=True)
    auth_dir = tokens_dir / "auth-method"
    auth_dir.mkdir(exist_ok=True)
    (auth_dir / "token").write_text(REVIEWER_JWT)
    (auth_dir / "ca.crt").write_text(CLUSTER_CA)
    (tokens_dir / "management").write_text(MANAGEMENT_SECRET)
    for key, (_, secret) in TOKENS.items():
        (tokens_dir / key).write_text(secret)
    servers = " ".join(
        f"{key.removeprefix('agent-')}={accessor}" for key, (accessor, _) in TOKENS.items() if key.startswith("agent-consul")
    )
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "CONSUL_HTTP_ADDR": address,
        "CONSUL_HTTP_TOKEN_FILE": str(tokens_dir / "management"),
        "NAMESPACE": "consul",
        "DATACENTER": "dc1",
        "SERVERS": "consul-server",
        "TOKENS_SECRET": "consul-acl-tokens",
        "TOKENS_DIR": str(tokens_dir),
        "MANAGEMENT_KEY": "management",
        "RULES_VERSION": RULES_VERSION,
        "MARKER": MARKER,
        "ALL_SERVERS_UPDATED": "true" if all_servers_updated else "false",
        "CLIENT_AGENT_RULES": client_agent_rules("consul-server-"),
        "DNS_RULES": DNS_POLICY_RULES,
        "ANONYMOUS_TOKEN": ANONYMOUS_TOKEN_ID,
        "CLIENT_ACCESSOR": TOKENS["agent-client"][0],
        "SERVER_AGENTS": servers,
        "SERVICE_TOKENS": f"web={TOKENS['service-web'][0]}",
        "SNAPSHOT_ACCESSOR": "",
        "SNAPSHOT_RULES": "",
        "METRICS_ACCESSOR": TOKENS["metrics"][0],
        "METRICS_RULES": METRICS_POLICY_RULES,
        "MIN_QUORUM": "2",
        "ACL_RETRY_SECONDS": str(retry_seconds),
        "API_RETRY_SECONDS": str(api_retry_seconds),
        "AUTH_METHOD": "kubernetes" if auth else "",
        "AUTH_TTL": AUTH_TTL if auth else "",
        "AUTH_SELECTOR": AUTH_SELECTOR if auth else "",
        "KUBERNETES_HOST": "https://kubernetes.default.svc",
        "AUTH_DIR": str(auth_dir),
        "AUTH_SECRET": "consul-auth-method",
    }


def run_job(
    address: str,
    tokens_dir: Path,
    retry_seconds: int = 5,
    timeout: float = 60,
    auth: bool = False,
    all_servers_updated: bool = True,
    api_retry_seconds: int = 3,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-ec", BOOTSTRAP_SCRIPT],
        env=job_environment(address, tokens_dir, retry_seconds, auth, all_servers_updated, api_retry_seconds),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def recorded(state: str) -> dict[str, Any]:
    """What Consul answered in `state` ("fresh", "reconciled", or "with-auth-method": reconciled
    with kubernetesAuth on): GET path -> parsed JSON."""
    answers: dict[str, Any] = json.loads((RECORDED / f"{state}.json").read_text())
    return answers


class Turns(list[tuple[int, str]]):
    """Answers given in turn to one call, then the usual one."""


@dataclass
class Request:
    method: str
    path: str
    token: str | None
    body: str


@dataclass
class RecordedConsul:
    """An HTTP server on loopback that answers GETs from `answers` (path -> JSON, or (status, text))
    and every write with 200 `true` (or what `answers` says for "METHOD path"; Turns are answered
    in turn, then as usual), keeping each request."""

    answers: Mapping[str, Any]
    requests: list[Request] = field(default_factory=list)

    def __enter__(self) -> RecordedConsul:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                outer.requests.append(Request(self.command, self.path, self.headers.get("X-Consul-Token"), body))
                key = self.path if self.command == "GET" else f"{self.command} {self.path}"
                answer = outer.answers.get(key, None if self.command == "GET" else (200, "true"))
                if isinstance(answer, Turns):
                    answer = answer.pop(0) if answer else (None if self.command == "GET" else (200, "true"))
                status, text = (
                    (404, "not recorded") if answer is None else answer if isinstance(answer, tuple) else (200, json.dumps(answer))
                )
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = _answer  # noqa: N815 (http.server's names)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def writes(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests if r.method != "GET"]

    def sent(self, method: str, path: str | None = None) -> list[Any]:
        """The parsed bodies of the `method` requests (to `path`, when given), in order."""
        return [json.loads(r.body) for r in self.requests if r.method == method and path in (None, r.path)]

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
