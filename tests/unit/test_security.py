"""Gossip encryption, TLS, ACLs and NetworkPolicies: generators, every switch on and off, secrecy."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import re

import material
import pytest
import yaml
from cryptography import x509
from harness import merged_agent_config, render, run_main
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from validation import agent_config_errors, consul_config_files, schema_errors

from consul import generated, keys
from consul.settings import SettingsError

# --- checks of brought material ------------------------------------------------------------------
# The generated material is the consul-keys provider's, tested with `go test` in provider/.


def test_keys_checks_refuse_bad_material():
    assert keys.check_gossip_key(material.gossip_key()) is None
    assert keys.check_gossip_key("not base64!") == "is not base64"
    # 32 bytes, but with padding bits set: Consul would list it re-encoded, as ...AAA=.
    assert (
        keys.check_gossip_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=")
        == "is not in canonical base64 (generate one with `consul keygen`)"
    )
    assert keys.check_gossip_key(base64.b64encode(b"x" * 20).decode()) == (
        "decodes to 20 bytes; Consul takes 16, 24 or 32 (generate one with `consul keygen`)"
    )
    ca, other = material.certificate_authority("a"), material.certificate_authority("b")
    assert keys.check_ca(ca.cert_pem, ca.key_pem) is None
    assert keys.check_ca(ca.cert_pem, other.key_pem) == "the key does not belong to the certificate"
    leaf = material.server_certificate(ca, "x", ["x"], [])
    assert keys.check_ca(leaf.cert_pem, leaf.key_pem) == "the certificate is not a CA (basicConstraints CA:FALSE)"


# --- the cluster, with everything on (the default) -----------------------------------------------


@pytest.fixture(scope="module")
def secure():
    return render("ci-defaults")


@pytest.fixture(scope="module")
def insecure():
    return render("ci-defaults", gossipEncryption=False, tls=False, acls=False, networkPolicy=False)


def agent(rendered, tier):
    return merged_agent_config(rendered.one("ConfigMap", f"consul-{tier}-config")["data"])


def pod_spec(rendered, kind, name):
    return rendered.one(kind, name)["spec"]["template"]["spec"]


def container(rendered, kind, name):
    return pod_spec(rendered, kind, name)["containers"][0]


def string_data(rendered, name):
    return rendered.one("Secret", name)["stringData"]


TIERS = [("StatefulSet", "consul-server", "server"), ("DaemonSet", "consul-client", "client")]


@pytest.mark.parametrize(("kind", "name", "tier"), TIERS)
def test_gossip_default_key_from_a_secret_mounted_config_file(secure, kind, name, tier):
    data = string_data(secure, "consul-gossip")
    assert len(base64.b64decode(data["key"])) == 32
    assert json.loads(data["gossip.json"]) == {"encrypt": data["key"]}
    c = container(secure, kind, name)
    assert "-config-file=/consul/gossip/gossip.json" in c["args"]
    assert {"name": "gossip", "mountPath": "/consul/gossip", "readOnly": True} in c["volumeMounts"]
    assert {"name": "gossip", "secret": {"secretName": "consul-gossip", "defaultMode": 0o440}} in pod_spec(secure, kind, name)["volumes"]
    # Never on the command line or in the environment.
    assert not any("GOSSIP" in e["name"] or "secretKeyRef" in e.get("valueFrom", {}) for e in c["env"])
    assert not any(a.startswith("-encrypt") for a in c["args"])
    assert agent(secure, tier)["disable_keyring_file"] is True


@pytest.mark.parametrize(("kind", "name", "tier"), TIERS)
def test_gossip_off(insecure, kind, name, tier):
    c = container(insecure, kind, name)
    assert "-config-file=/consul/gossip/gossip.json" not in c["args"]
    assert all(m["name"] != "gossip" for m in c["volumeMounts"])
    assert "disable_keyring_file" not in agent(insecure, tier)
    assert "consul-gossip" not in [d.name for d in insecure.of_kind("Secret")]


def test_gossip_bring_your_own_key():
    key = material.gossip_key()
    rendered = render("ci-defaults", gossipKey=key)
    assert string_data(rendered, "consul-gossip")["key"] == key
    assert "consul-gossip-key" not in [d.name for d in rendered.declared]


def test_tls_default_servers(secure):
    config = agent(secure, "server")
    assert config["tls"] == {
        "defaults": {
            "ca_file": "/consul/tls/ca/tls.crt",
            "cert_file": "/consul/tls/server/tls.crt",
            "key_file": "/consul/tls/server/tls.key",
            "verify_incoming": True,
            "verify_outgoing": True,
        },
        "internal_rpc": {"verify_server_hostname": True},
        "https": {"verify_incoming": False},
    }
    assert config["ports"]["https"] == 8501
    assert config["addresses"] == {"http": "127.0.0.1"}
    assert config["auto_encrypt"] == {"allow_tls": True}
    assert config["connect"] == {"enabled": True}
    c = container(secure, "StatefulSet", "consul-server")
    assert {"name": "tls-ca", "mountPath": "/consul/tls/ca", "readOnly": True} in c["volumeMounts"]
    assert {"name": "tls-server", "mountPath": "/consul/tls/server", "readOnly": True} in c["volumeMounts"]
    assert c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert secure.one("Secret", "consul-server-cert")["type"] == "kubernetes.io/tls"


def test_tls_server_certificate_names_the_servers_and_verifies(secure):
    """The program's request names every way the servers are reached, and the Secrets carry the
    certificate issued for it (here by the mocks' stand-in for the provider)."""
    ca = x509.load_pem_x509_certificate(string_data(secure, "consul-ca-cert")["tls.crt"].encode())
    cert = x509.load_pem_x509_certificate(string_data(secure, "consul-server-cert")["tls.crt"].encode())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "server.dc1.consul",
        "localhost",
        "consul-server",
        "consul-server.consul",
        "consul-server.consul.svc",
        "*.consul-server",
        "*.consul-server.consul",
        "*.consul-server.consul.svc",
        "consul-ui",
        "consul-ui.consul",
        "consul-ui.consul.svc",
    ]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_tls_default_clients_use_auto_encrypt(secure):
    config = agent(secure, "client")
    assert config["tls"] == {
        "defaults": {"ca_file": "/consul/tls/ca/tls.crt", "verify_outgoing": True},
        "internal_rpc": {"verify_server_hostname": True},
    }
    assert config["auto_encrypt"] == {"tls": True}
    # No HTTPS on clients: an auto_encrypt certificate chains to Connect's CA, which workloads do not hold.
    assert "https" not in config["ports"]
    c = container(secure, "DaemonSet", "consul-client")
    assert not any(a.startswith("-hcl") for a in c["args"])
    assert all(p["containerPort"] != 8501 for p in c["ports"])
    assert {"name": "tls-ca", "mountPath": "/consul/tls/ca", "readOnly": True} in c["volumeMounts"]
    assert all(m["name"] != "tls-server" for m in c["volumeMounts"])


def test_tls_off(insecure):
    server = agent(insecure, "server")
    assert not {"tls", "addresses", "auto_encrypt", "connect"} & set(server)
    assert "https" not in server["ports"]
    assert "tls" not in agent(insecure, "client")
    assert insecure.one("Service", "consul-ui")["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert container(insecure, "StatefulSet", "consul-server")["livenessProbe"]["httpGet"] == {"path": "/v1/status/leader", "port": 8500}
    assert insecure.outputs["serverApiAddress"] == "http://consul-server.consul.svc:8500"
    assert insecure.outputs["caCertificate"] is None
    assert not {"consul-ca-cert", "consul-server-cert"} & {d.name for d in insecure.of_kind("Secret")}


def test_tls_bring_your_own_ca():
    ca = material.certificate_authority("Our CA")
    rendered = render("ci-defaults", tlsCaCert=ca.cert_pem, tlsCaKey=ca.key_pem)
    assert string_data(rendered, "consul-ca-cert")["tls.crt"] == ca.cert_pem
    assert "consul-ca" not in [d.name for d in rendered.declared]
    cert = x509.load_pem_x509_certificate(string_data(rendered, "consul-server-cert")["tls.crt"].encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem.encode()))


def test_tls_certificate_lifetime_default_and_override(secure):
    """The program asks for the lifetime and window; provider/ issues to them (go test)."""
    (key_material,) = [d for d in secure.declared if d.typ == generated.RESOURCE_TYPE]
    assert (key_material.inputs["server_cert"]["validity_days"], key_material.inputs["server_cert"]["renew_before_days"]) == (825, 30)
    short = render("ci-defaults", tlsServerCertValidity=2, tlsRenewBefore=1)
    (key_material,) = [d for d in short.declared if d.typ == generated.RESOURCE_TYPE]
    assert (key_material.inputs["server_cert"]["validity_days"], key_material.inputs["server_cert"]["renew_before_days"]) == (2, 1)


def test_tls_a_ca_with_less_than_a_year_left_warns():
    program, error = run_main("ci-defaults")
    assert (error, program.warnings) == (None, [])
    ca = material.certificate_authority("Our CA", validity_days=200)
    program, error = run_main("ci-defaults", tlsCaCert=ca.cert_pem, tlsCaKey=ca.key_pem)
    assert error is None
    expiry = material.not_after(ca.cert_pem)[:10]
    assert program.warnings == [
        f"the Consul CA expires on {expiry}, in less than 365 days: rotate it as the README's operations guide says (Certificates)"
    ]


def test_tls_a_server_certificate_near_its_renewal_window_warns():
    """From 30 days before the window (tlsRenewBefore) opens, every preview and up says when an up
    must run; a certificate further out says nothing."""
    program, error = run_main("ci-defaults", tlsServerCertValidity=90, tlsRenewBefore=30)
    assert (error, program.warnings) == (None, [])
    program, error = run_main("ci-defaults", tlsServerCertValidity=45, tlsRenewBefore=30)
    assert error is None
    (warning,) = program.warnings
    expiry = re.match(r"the Consul server certificate expires on (\d{4}-\d\d-\d\d): ", warning)
    assert expiry is not None, warning
    days_left = (datetime.date.fromisoformat(expiry.group(1)) - datetime.datetime.now(datetime.UTC).date()).days
    assert days_left in (44, 45)
    assert warning.endswith(
        ": the first pulumi up in its last 30 days re-issues it and rolls the servers; make sure one runs (the README's workflow runs up weekly)"
    )


@pytest.mark.parametrize(("kind", "name", "tier"), TIERS)
def test_acls_default(secure, kind, name, tier):
    assert agent(secure, tier)["acl"] == {
        "enabled": True,
        "default_policy": "deny",
        "down_policy": "extend-cache",
        "enable_token_persistence": True,
    }
    c = container(secure, kind, name)
    own_file = "$(POD_NAME).json" if tier == "server" else "acl-tokens.json"
    assert f"-config-file=/consul/acl/{own_file}" in c["args"]
    assert {"name": "acl-tokens", "mountPath": "/consul/acl", "readOnly": True} in c["volumeMounts"]


def test_acls_every_server_has_its_own_agent_token_and_the_management_one_and_no_client_agent_has_it(secure):
    tokens = string_data(secure, "consul-acl-tokens")
    servers = {k: json.loads(v)["acl"]["tokens"] for k, v in string_data(secure, "consul-server-acl-config").items()}
    client = json.loads(string_data(secure, "consul-client-acl-config")["acl-tokens.json"])["acl"]["tokens"]
    nodes = [f"consul-server-{i}" for i in range(3)]
    assert servers == {f"{n}.json": {"initial_management": tokens["management"], "agent": tokens[f"agent-{n}"]} for n in nodes}
    assert client == {"agent": tokens["agent-client"]}
    assert sorted(tokens) == ["agent-client", *[f"agent-{n}" for n in nodes], "management", "metrics"]
    assert len(set(tokens.values())) == 6
    assert secure.outputs["aclManagementToken"] == tokens["management"]


def test_acls_service_tokens_default_none_and_override():
    none = render("ci-defaults")
    assert [d.name for d in none.of_kind("Secret") if "service-token" in d.name] == []
    rendered = render("ci-defaults", serviceTokens=["web", "billing"])
    tokens = string_data(rendered, "consul-acl-tokens")
    for service in ("web", "billing"):
        assert string_data(rendered, f"consul-service-token-{service}") == {"token": tokens[f"service-{service}"]}
    env = {
        e["name"]: e.get("value") for e in rendered.one("Job", "consul-acl-bootstrap")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert [pair.split("=")[0] for pair in env["SERVICE_TOKENS"].split()] == ["web", "billing"]


def test_acls_bootstrap_job(secure):
    job = secure.one("Job", "consul-acl-bootstrap")
    spec = job["spec"]["template"]["spec"]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["CONSUL_HTTP_ADDR"]["value"] == "https://consul-server.consul.svc:8501"
    assert env["CONSUL_HTTP_TOKEN_FILE"]["value"] == "/consul/bootstrap/management"
    assert {"name": "tokens", "mountPath": "/consul/bootstrap", "readOnly": True} in spec["containers"][0]["volumeMounts"]
    assert {"name": "tokens", "secret": {"secretName": "consul-acl-tokens", "defaultMode": 0o440}} in spec["volumes"]
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in env.values())
    assert [p.split("=")[0] for p in env["SERVER_AGENTS"]["value"].split()] == ["consul-server-0", "consul-server-1", "consul-server-2"]
    assert env["DATACENTER"]["value"] == "dc1"
    assert env["CLIENT_AGENT_RULES"]["value"] == (
        'node_prefix "" { policy = "write" }\nnode_prefix "consul-server-" { policy = "deny" }\nservice_prefix "" { policy = "read" }\n'
    )
    assert env["DNS_RULES"]["value"] == 'node_prefix "" { policy = "read" }\nservice_prefix "" { policy = "read" }\n'
    assert env["CONSUL_CACERT"]["value"] == "/consul/tls/ca/tls.crt"
    assert spec["restartPolicy"] == "Never"
    script = spec["containers"][0]["command"][2]
    assert '\\"NodeIdentities\\": [{\\"NodeName\\": \\"${pair%%=*}\\", \\"Datacenter\\": \\"$DATACENTER\\"}]' in script
    assert '\\"ServiceIdentities\\": [{\\"ServiceName\\": \\"${pair%%=*}\\"}]' in script
    assert "do not accept the management token" in script
    # SecretIDs reach Consul in request bodies read from their files, never as a -secret argument
    # (the real-node bed scans every process of the running Job: tests/e2e/test_refusals.py).
    assert '--rawfile secret "$TOKENS_DIR/$key"' in script
    assert not re.search(r"(?<!-)-secret\b", script)
    # Its tokens are marked per datacenter, and a new management token (in the servers' Secrets
    # digest) runs it again, to revoke the old one.
    assert env["MARKER"]["value"] == "[consul dc1] "
    servers = secure.one("StatefulSet", "consul-server")["spec"]["template"]["metadata"]["annotations"]
    checksum = "consul.hashicorp.com/secrets-checksum"
    assert job["spec"]["template"]["metadata"]["annotations"] == {checksum: servers[checksum]}
    # No CLI call and no parsing of its output: the API and its JSON only (the error text may name
    # a command for the operator to run).
    assert not re.search(r"^\s*(\S+=\$\()?consul (acl|operator) ", script, re.MULTILINE)


def test_acls_off(insecure):
    assert "acl" not in agent(insecure, "server")
    assert insecure.of_kind("Job") == []
    assert insecure.outputs["aclManagementToken"] is None
    assert not any(a.startswith("-config-file=/consul/acl") for a in container(insecure, "StatefulSet", "consul-server")["args"])


def test_acls_bring_your_own_management_token():
    token = material.token_id()
    rendered = render("ci-defaults", aclManagementToken=token)
    assert string_data(rendered, "consul-acl-tokens")["management"] == token
    assert "consul-management-token" not in [d.name for d in rendered.declared]


def test_network_policy_default(secure):
    servers = secure.one("NetworkPolicy", "consul-server")["spec"]
    server_sel, client_sel = (
        {"matchLabels": {"app.kubernetes.io/name": "consul", "app.kubernetes.io/instance": "consul", "app.kubernetes.io/component": c}}
        for c in ("server", "client")
    )
    assert servers["podSelector"] == server_sel
    assert servers["policyTypes"] == ["Ingress"]
    assert [
        ([p.get("podSelector") for p in r.get("from", [])], [(p["port"], p["protocol"]) for p in r["ports"]]) for r in servers["ingress"]
    ] == [
        ([server_sel], [(8300, "TCP"), (8301, "TCP"), (8301, "UDP"), (8302, "TCP"), (8302, "UDP"), (8501, "TCP")]),
        ([client_sel], [(8300, "TCP"), (8301, "TCP"), (8301, "UDP")]),
        ([JOBS], [(8501, "TCP")]),
    ]
    clients = secure.one("NetworkPolicy", "consul-client")["spec"]
    assert [
        ([p.get("podSelector") for p in r.get("from", [])], [(p["port"], p["protocol"]) for p in r["ports"]]) for r in clients["ingress"]
    ] == [
        ([server_sel, client_sel], [(8301, "TCP"), (8301, "UDP")]),
        ([], [(8500, "TCP"), (8600, "TCP"), (8600, "UDP")]),
    ]


JOBS = {
    "matchLabels": {"app.kubernetes.io/name": "consul", "app.kubernetes.io/instance": "consul"},
    "matchExpressions": [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["acl-bootstrap", "gossip-rotation", "snapshot"]}
    ],
}


def test_network_policy_every_job_pod_reaches_the_servers_api_and_nothing_else_of_consul():
    rendered = render("ci-defaults", snapshots=True)
    components = {
        t["metadata"]["labels"]["app.kubernetes.io/component"]
        for kind in ("Job", "CronJob")
        for m in rendered.of_kind(kind)
        for t in [m.manifest()["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob" else m.manifest()["spec"]["template"]]
    }
    assert components == {"acl-bootstrap", "gossip-rotation", "snapshot"}
    api_rule = rendered.one("NetworkPolicy", "consul-server")["spec"]["ingress"][2]
    assert api_rule["from"] == [{"podSelector": JOBS}]


def test_network_policy_server_api_from_listed_namespaces_and_networks():
    rendered = render("ci-defaults", serverApiNamespaces=["monitoring", "ingress"], serverApiCidrs=["10.0.0.0/8", "fd00::/8"])
    api_rule = rendered.one("NetworkPolicy", "consul-server")["spec"]["ingress"][2]
    assert api_rule == {
        "from": [
            {"podSelector": JOBS},
            {
                "namespaceSelector": {
                    "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring", "ingress"]}]
                }
            },
            {"ipBlock": {"cidr": "10.0.0.0/8"}},
            {"ipBlock": {"cidr": "fd00::/8"}},
        ],
        "ports": [{"port": 8501, "protocol": "TCP"}],
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"serverApiCidrs": ["10.0.0.0"]},
            'invalid consul:serverApiCidrs ["10.0.0.0"]: each entry must be a network in CIDR notation, such as "10.0.0.0/8" (got "10.0.0.0")',
        ),
        (
            {"serverApiCidrs": ["10.0.0.1/8"]},
            'invalid consul:serverApiCidrs ["10.0.0.1/8"]: each entry must be a network in CIDR notation, such as "10.0.0.0/8" (got "10.0.0.1/8")',
        ),
        (
            {"serverApiNamespaces": ["Monitoring"]},
            'invalid consul:serverApiNamespaces ["Monitoring"]: each entry must be a namespace name (a DNS-1123 label; got "Monitoring")',
        ),
        (
            {"uiServiceType": "LoadBalancer"},
            "invalid consul:serverApiCidrs []: must name the networks the LoadBalancer UI Service is reached from while "
            "consul:networkPolicy is true (the servers' API admits only this instance's Jobs and consul:serverApiNamespaces): "
            'the networks of the UI\'s users (the Service keeps their addresses: externalTrafficPolicy Local), or ["0.0.0.0/0"] for anywhere',
        ),
    ],
)
def test_network_policy_server_api_bad_values_refused(overrides, message):
    rendered, error = run_main("ci-defaults", **overrides)
    assert str(error) == message
    assert rendered.declared == []


def test_network_policy_exposed_ui_keeps_the_callers_addresses():
    rendered = render("ci-defaults", uiServiceType="LoadBalancer", serverApiCidrs=["192.0.2.0/24"])
    ui = rendered.one("Service", "consul-ui")["spec"]
    assert (ui["type"], ui["externalTrafficPolicy"]) == ("LoadBalancer", "Local")


def test_network_policy_exposed_ui_without_network_policy_needs_no_cidrs():
    rendered = render("ci-defaults", uiServiceType="NodePort", networkPolicy=False)
    ui = rendered.one("Service", "consul-ui")["spec"]
    assert ui["type"] == "NodePort"
    assert "externalTrafficPolicy" not in ui


def test_network_policy_off(insecure):
    assert insecure.of_kind("NetworkPolicy") == []


# --- secrecy -----------------------------------------------------------------------------------------


def _material(rendered):
    found = [string_data(rendered, "consul-gossip")["key"], string_data(rendered, "consul-server-cert")["tls.key"]]
    found += [v for k, v in string_data(rendered, "consul-acl-tokens").items()]
    return found


def test_no_key_material_outside_secrets(secure):
    material = _material(secure)
    for declared in secure.kubernetes():
        if declared.kind == "Secret":
            continue
        text = json.dumps(declared.inputs)
        assert not [m for m in material if m in text], declared.name
    public_outputs = json.dumps({k: v for k, v in secure.outputs.items() if k not in secure.secret_outputs})
    assert not [m for m in material if m in public_outputs]


def test_secrets_travel_as_pulumi_secrets(secure):
    for declared in secure.of_kind("Secret"):
        assert declared.secret_paths == ["stringData"], declared.name
    assert secure.secret_outputs == {"aclManagementToken"}


def test_generated_material_is_one_resource_with_secret_outputs(secure):
    """One resource of the consul-keys provider holds every generated value; the engine keeps the secret ones encrypted."""
    generated_ = {d.name: d.secret_outputs for d in secure.declared if d.typ == generated.RESOURCE_TYPE}
    assert generated_ == {"consul-key-material": ["gossip_key", "ca_key_pem", "server_key_pem", "token_secrets", "brought_ca"]}
    (material,) = [d for d in secure.declared if d.typ == generated.RESOURCE_TYPE]
    assert material.inputs["tokens"] == ["management", *[f"agent-consul-server-{i}" for i in range(3)], "agent-client", "metrics"]


def test_repo_holds_no_key_material():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    assert tracked
    for name in tracked:
        text = (root / name).read_text(errors="ignore")
        assert "PRIVATE KEY-----\nMI" not in text, name
    for stack_file in root.glob("Pulumi.*.yaml"):
        config = yaml.safe_load(stack_file.read_text()).get("config") or {}
        for key in ("gossipKey", "tlsCaKey", "aclManagementToken"):
            value = config.get(f"consul:{key}")
            assert value is None or (isinstance(value, dict) and "secure" in value), (stack_file.name, key)


SECRET_SETTINGS = [
    (
        "gossipKey",
        material.gossip_key(),
        "invalid consul:gossipKey [secret]: must be set as a secret, or it sits in plain text in the stack file: pulumi config set --secret consul:gossipKey ...",
    ),
    (
        "aclManagementToken",
        material.token_id(),
        "invalid consul:aclManagementToken [secret]: must be set as a secret, or it sits in plain text in the stack file: pulumi config set --secret consul:aclManagementToken ...",
    ),
]


@pytest.mark.parametrize(("key", "value", "message"), SECRET_SETTINGS, ids=[k for k, _, _ in SECRET_SETTINGS])
def test_secret_settings_must_be_pulumi_secrets(key, value, message):
    rendered, error = run_main("ci-defaults", plain=[key], **{key: value})
    assert str(error) == message
    assert value not in str(error)
    assert rendered.declared == []


INVALID_MATERIAL: list[tuple[dict[str, object], str]] = [
    (
        {"gossipKey": "c2hvcnQ="},
        "invalid consul:gossipKey [secret]: decodes to 5 bytes; Consul takes 16, 24 or 32 (generate one with `consul keygen`)",
    ),
    (
        {"gossipKey": material.gossip_key(), "gossipEncryption": False},
        "invalid consul:gossipKey [secret]: must be unset when consul:gossipEncryption is false",
    ),
    ({"aclManagementToken": "root"}, "invalid consul:aclManagementToken [secret]: must be a Consul token SecretID (a UUID)"),
    (
        {"tlsCaKey": material.certificate_authority("x").key_pem},
        "invalid consul:tlsCaKey [secret]: goes with consul:tlsCaCert: bring both the CA certificate and its key, or neither",
    ),
    (
        {"tlsCaCert": "-----BEGIN CERTIFICATE-----\nbad", "tlsCaKey": material.certificate_authority("x").key_pem},
        'invalid consul:tlsCaCert "(PEM)": the certificate is not a PEM X.509 certificate',
    ),
    ({"tls": "yes"}, 'invalid consul:tls "yes": must be true or false'),
    ({"tlsServerCertValidity": 0}, "invalid consul:tlsServerCertValidity 0: must be at least 1 (days)"),
    (
        {"tlsServerCertValidity": 10, "tlsRenewBefore": 11},
        "invalid consul:tlsRenewBefore 11: must be from 0 to consul:tlsServerCertValidity (10 days)",
    ),
    ({"tlsRenewBefore": -1}, "invalid consul:tlsRenewBefore -1: must be from 0 to consul:tlsServerCertValidity (825 days)"),
    ({"tlsRenewBefore": "soon"}, 'invalid consul:tlsRenewBefore "soon": must be a whole number'),
]


@pytest.mark.parametrize(("overrides", "message"), INVALID_MATERIAL, ids=[",".join(o) for o, _ in INVALID_MATERIAL])
def test_invalid_material_fails_without_echoing_it(overrides, message):
    rendered, error = run_main("ci-defaults", **overrides)
    assert isinstance(error, SettingsError)
    assert str(error) == message
    assert rendered.declared == []


# Values made at random for each render: digests (64 hex characters) and UUIDs (node IDs, token
# accessor IDs in the pods' environment). Any of them may contain "8501".
RANDOM_VALUES = re.compile(r"[0-9a-f]{64}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def without_random_values(text: str) -> str:
    return RANDOM_VALUES.sub("", text)


def test_random_values_are_left_out_of_the_text_searched_for_a_port():
    """A node ID such as 0e7e8501-… once made the property below find the TLS port with TLS off."""
    digest = "ab8501" + "0" * 58
    text = f'"value": "consul-server-0=0e7e8501-daa6-4fc8-91b4-9839824b0f8d", "checksum": "{digest}", "port": 8500'
    assert "8501" not in without_random_values(text)
    assert "8501" in without_random_values('"containerPort": 8501')


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow], phases=[Phase.explicit, Phase.reuse, Phase.generate]
)
@given(gossip=st.booleans(), tls=st.booleans(), acls=st.booleans(), policies=st.booleans())
def test_property_any_mix_of_switches_gives_valid_consistent_objects(gossip, tls, acls, policies):
    rendered = render("ci-defaults", gossipEncryption=gossip, tls=tls, acls=acls, networkPolicy=policies)
    manifests = list(rendered.manifests())
    assert [e for m in manifests for e in schema_errors(m)] == []
    assert [e for _, config in consul_config_files(manifests) for e in agent_config_errors(config)] == []
    text = without_random_values(json.dumps([m for m in manifests if m["kind"] != "Secret"]))
    assert ("8501" in text) == tls
    assert ("gossip.json" in text) == gossip
    assert ("acl-tokens.json" in text) == acls
    assert bool(rendered.of_kind("NetworkPolicy")) == policies
    assert sorted(j.name for j in rendered.of_kind("Job")) == [
        *(["consul-acl-bootstrap"] if acls else []),
        *(["consul-gossip-rotation"] if gossip else []),
    ]
    assert {d.name for d in rendered.of_kind("Secret")} == {
        *(["consul-gossip"] if gossip else []),
        *(["consul-ca-cert", "consul-server-cert"] if tls else []),
        *(["consul-acl-tokens", "consul-server-acl-config", "consul-client-acl-config", "consul-metrics-token"] if acls else []),
    }


def test_every_object_is_a_child_of_a_component(secure):
    """Except the Namespace and the key material, declared first so that they wait for nothing."""
    components = {d.name for d in secure.declared if d.typ.startswith("consul:index:")}
    assert components == {"consul"}
    top_level = {"Namespace", generated.RESOURCE_TYPE}
    for declared in secure.declared:
        if declared.typ.startswith("consul:index:") or declared.kind in top_level or declared.typ in top_level:
            assert "::pulumi:pulumi:Stack::consul-" in declared.parent, declared.name
        else:
            assert "$consul:index:Consul" in declared.parent or "::consul:index:Consul" in declared.parent, declared.name
            assert declared.name.startswith("consul-"), declared.name


def test_network_policy_client_api_namespaces_narrow_only_the_api():
    rendered = render("ci-defaults", clientApiNamespaces=["shop", "billing"])
    rules = rendered.one("NetworkPolicy", "consul-client")["spec"]["ingress"]
    assert rules[1] == {
        "from": [
            {
                "namespaceSelector": {
                    "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["shop", "billing"]}]
                }
            }
        ],
        "ports": [{"port": 8500, "protocol": "TCP"}],
    }
    assert rules[2] == {"ports": [{"port": 8600, "protocol": "TCP"}, {"port": 8600, "protocol": "UDP"}]}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["Shop"], 'invalid consul:clientApiNamespaces ["Shop"]: each entry must be a namespace name (a DNS-1123 label; got "Shop")'),
        ("shop", 'invalid consul:clientApiNamespaces "shop": must be a list of namespace names (YAML or JSON in the stack file)'),
    ],
)
def test_network_policy_client_api_namespaces_invalid(value, message):
    rendered, error = run_main("ci-defaults", clientApiNamespaces=value)
    assert str(error) == message
    assert rendered.declared == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            ["Web"],
            'invalid consul:serviceTokens ["Web"]: each entry must be a service name: a DNS-1123 label of at most 42 characters (got "Web")',
        ),
        (["web", "web"], 'invalid consul:serviceTokens ["web", "web"]: each service may appear once'),
    ],
)
def test_service_tokens_invalid(value, message):
    rendered, error = run_main("ci-defaults", serviceTokens=value)
    assert str(error) == message
    assert rendered.declared == []


def test_service_tokens_need_acls():
    rendered, error = run_main("ci-defaults", serviceTokens=["web"], acls=False)
    assert str(error) == 'invalid consul:serviceTokens ["web"]: must be empty when consul:acls is false (without ACLs no token is needed)'
    assert rendered.declared == []


def test_tls_trusted_ca_certs_follow_the_signing_ca_in_the_ca_secret_and_roll_every_agent():
    ca, other = material.certificate_authority("Our CA"), material.certificate_authority("Next CA")
    before = render("ci-defaults", tlsCaCert=ca.cert_pem, tlsCaKey=ca.key_pem)
    rendered = render("ci-defaults", tlsCaCert=ca.cert_pem, tlsCaKey=ca.key_pem, tlsTrustedCaCerts=other.cert_pem)
    bundle = string_data(rendered, "consul-ca-cert")["tls.crt"]
    assert bundle == ca.cert_pem.strip() + "\n" + other.cert_pem.strip() + "\n"
    assert rendered.outputs["caCertificate"] == bundle
    # The server certificate is still issued by the signing CA.
    cert = x509.load_pem_x509_certificate(string_data(rendered, "consul-server-cert")["tls.crt"].encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem.encode()))
    for kind, name, _ in TIERS:
        annotations = [r for r in (before, rendered)]
        digests = [r.one(kind, name)["spec"]["template"]["metadata"]["annotations"] for r in annotations]
        assert digests[0] != digests[1], f"{name} does not roll on a new trusted CA"


@pytest.mark.parametrize(
    ("bundle", "problem"),
    [
        ("not a certificate", "must be one or more PEM certificates"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "certificate 1 is not a CA certificate"),
    ],
)
def test_tls_trusted_ca_certs_must_be_ca_certificates(bundle, problem):
    rendered, error = run_main("ci-defaults", tlsTrustedCaCerts=bundle)
    assert str(error).startswith(f'invalid consul:tlsTrustedCaCerts "(PEM)": {problem}')
    assert rendered.declared == []
