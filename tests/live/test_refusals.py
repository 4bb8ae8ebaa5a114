"""Security negatives: what must be refused is refused, next to a control that is accepted."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import http, management_token

pytestmark = pytest.mark.live


def agent_token(pod) -> str:
    """The agent token an agent runs with: from the ACL config file on its command line, read in the pod."""
    args = Path(f"/proc/{pod.pid}/cmdline").read_bytes().decode().split("\0")
    path = next(a.split("=", 1)[1] for a in args if a.startswith("-config-file=/consul/acl/"))
    return str(json.loads(pod.exec(["cat", path]).stdout)["acl"]["tokens"]["agent"])


def test_anonymous_writes_are_refused(bed):
    client = bed.tier("client")[0]
    assert http(client, "PUT", "/v1/kv/anonymous", body="x") == 403
    assert http(client, "PUT", "/v1/kv/managed", token=management_token(bed), body="x") == 200


def test_an_agent_token_cannot_write_another_node(bed):
    server = bed.pod("consul-server-0")
    own = agent_token(server)
    node = lambda name, ip: {"Node": name, "Address": ip, "Datacenter": "dc1"}  # noqa: E731
    assert http(server, "PUT", "/v1/catalog/register", own, node("consul-server-0", server.ip)) == 200
    assert http(server, "PUT", "/v1/catalog/register", own, node("consul-server-1", bed.pod("consul-server-1").ip)) == 403
    client = bed.tier("client")[0]
    client_token = agent_token(client)
    assert http(client, "PUT", "/v1/catalog/register", client_token, node("consul-server-2", bed.pod("consul-server-2").ip)) == 403


def test_gossip_key_is_not_on_any_command_line(bed):
    key = next(v for v in bed.secrets["consul-gossip"].values() if len(v) == 44)
    for pod in bed.tier("server") + bed.tier("client"):
        cmdline = Path(f"/proc/{pod.pid}/cmdline").read_bytes().decode()
        assert key not in cmdline, pod.name


def test_an_agent_with_another_gossip_key_cannot_join(bed):
    secrets = bed.secrets
    template = bed.get("DaemonSet", "consul-client")["spec"]["template"]
    gossip_key = "".join(reversed(next(v for v in secrets["consul-gossip"].values() if len(v) == 44).rstrip("="))) + "="
    wrong = {k: (json.dumps({"encrypt": gossip_key}) if k.endswith(".json") else gossip_key) for k in secrets["consul-gossip"]}
    intruder = bed.run_pod("intruder", template, bed.nodes[2], secrets_override={"consul-gossip": wrong})
    try:
        bed.wait_for(
            "the intruder's join attempt failing",
            lambda: "Join cluster failed" in intruder.log() or "retry_join: failed" in intruder.log().lower(),
            60,
        )
        server = bed.pod("consul-server-0")
        members = server.exec(["curl", "-s", "-H", f"X-Consul-Token: {management_token(bed)}", "http://127.0.0.1:8500/v1/agent/members"])
        names = {m["Name"] for m in json.loads(members.stdout)}
        assert "node-3" in names
        assert "intruder" not in names
    finally:
        bed.delete_pod("intruder", grace=1)


HANDSHAKE = textwrap.dedent(
    """
    import socket, ssl, sys
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    raw = socket.create_connection((sys.argv[1], 8300), timeout=5)
    raw.sendall(bytes([3]))  # Consul's RPC TLS byte
    try:
        tls = context.wrap_socket(raw)
        tls.settimeout(3)
        data = tls.recv(1)
        print("refused: closed" if data == b"" else "accepted")
    except TimeoutError:
        print("accepted")  # the server holds the connection open, waiting for an RPC
    except (ssl.SSLError, ConnectionError) as error:
        print("refused:", type(error).__name__)
    """
)


def test_a_certificate_from_another_ca_is_refused_on_rpc(bed, tmp_path):
    import material

    # A certificate with the very names a server has, from a CA the cluster does not trust.
    foreign_ca = material.certificate_authority("Another CA")
    foreign = material.server_certificate(foreign_ca, "server.dc1.consul", ["server.dc1.consul"], ["127.0.0.1"])
    (tmp_path / "foreign.crt").write_text(foreign.cert_pem)
    (tmp_path / "foreign.key").write_text(foreign.key_pem)
    server_tls = bed.secrets["consul-server-cert"]
    (tmp_path / "ours.crt").write_text(server_tls["tls.crt"])
    (tmp_path / "ours.key").write_text(server_tls["tls.key"])
    (tmp_path / "handshake.py").write_text(HANDSHAKE)
    target = bed.pod("consul-server-1")
    probe = bed.tier("client")[0]

    def handshake(which: str) -> str:
        out = bed.netns_exec(
            probe, ["python3", str(tmp_path / "handshake.py"), target.ip, str(tmp_path / f"{which}.crt"), str(tmp_path / f"{which}.key")]
        )
        return str(out.stdout).strip()

    assert handshake("ours") == "accepted"
    assert handshake("foreign").startswith("refused")
