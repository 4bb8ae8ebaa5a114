"""The README's flow on real nodes: a workload registers with its node's agent, is found by DNS
through CoreDNS, and deregisters in one call; its service token writes nothing else.

Workloads are pods of the toolbox image in the stack's namespace, wired as "Registering a
service" says: CONSUL_HTTP_ADDR from the stack's agentAddress output, CONSUL_HTTP_TOKEN from the
service's token Secret, POD_IP from the downward API.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    KUBE_BIN,
    REAL_NODES,
    TOOLS_NAMESPACE,
    Toolbox,
    consul_dns_ip,
    consul_http,
    consul_json,
    in_pod,
    restricted_container,
)
from run_stack import auto

from testbed.cluster import images
from testbed.cluster.bed import UPSTREAM_HOSTS

pytestmark = pytest.mark.e2e

# Workloads may also log in with their service account, from this module's namespace only.
# The bed's tools namespace may reach the servers' API (serverApiNamespaces): the allowed side of
# the servers' NetworkPolicy, next to a workload of the stack's own namespace, refused.
STACK_SETTINGS = {
    "kubernetesAuth": True,
    "kubernetesAuthTokenTtl": "2m",
    "kubernetesAuthNamespaces": ["consul-registration"],
    "serverApiNamespaces": [TOOLS_NAMESPACE],
}
LOGIN_TTL = 120

LOCAL_API = "http://127.0.0.1:8500"
# Consul's default acl.token_ttl: an agent may hold the anonymous token's earlier (empty) policy set
# for this long after the ACL Job gave it the DNS policy.
ACL_CACHE_TTL = 30
# A ConfigMap edit reaches CoreDNS's mounted Corefile within the kubelet's sync (every 10 s on the
# bed, plus the ConfigMap watch), and the reload plugin reads it within 30 s plus up to 15 s of jitter.
COREDNS_RELOAD = 75
# Registrations reach the catalog through the agent's anti-entropy sync, triggered at once.
CATALOG_SYNC = 10


def dig(run, name: str, server: str | None = None, port: int = 53) -> list[str]:
    """The A records `dig +short` prints: through the pod's resolver (CoreDNS), or from `server`."""
    at = f"@{server} -p {port} " if server else ""
    out = run(f"dig +short +time=2 +tries=1 {at}{name} A", "")
    return sorted(line.strip() for line in out.stdout.splitlines() if line.strip() and not line.startswith(";"))


def catalog_services(deployment) -> dict[str, list[str]]:
    """The catalog's services as a server reports them."""
    services: dict[str, list[str]] = consul_json(
        in_pod(deployment, "consul-server-0"), f"{LOCAL_API}/v1/catalog/services", deployment.management_token()
    )
    return services


def catalog_instances(deployment, service: str) -> list[str]:
    """The IDs of a service's instances in the catalog, as a server reports them."""
    instances = consul_json(
        in_pod(deployment, "consul-server-0"), f"{LOCAL_API}/v1/catalog/service/{service}", deployment.management_token()
    )
    return [i["ServiceID"] for i in instances]


def client_on(deployment, node: str) -> dict[str, Any]:
    return next(p for p in deployment.pods("client") if p["spec"]["nodeName"] == node)


def app_pod(deployment, name: str, node: str, *env: dict[str, Any], namespace: str | None = None, **spec: Any) -> Toolbox:
    """An application pod of the toolbox image wired to its node's agent the README's way
    (CONSUL_HTTP_ADDR from the agentAddress output, then `env`, then POD_IP from the downward API)."""
    wiring = [
        {"name": "CONSUL_HTTP_ADDR", "value": deployment.stack.outputs()["agentAddress"].value},
        *env,
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    container = restricted_container("app", images.TOOLBOX_IMAGE, ["sleep", "2147483647"], env=wiring)
    return Toolbox(deployment.cluster, name, node, namespace=namespace or deployment.namespace, containers=[container], **spec)


def workload(deployment, name: str, node: str, service: str) -> Toolbox:
    """An application pod with its service token the README's way."""
    token = {"name": "CONSUL_HTTP_TOKEN", "valueFrom": {"secretKeyRef": {"name": f"consul-service-token-{service}", "key": "token"}}}
    return app_pod(deployment, name, node, token)


def run_in(box: Toolbox):
    return lambda script, stdin: box.exec("sh", "-c", script, input=stdin)


@pytest.fixture
def web_app(module_deployment) -> Iterator[Toolbox]:
    box = workload(module_deployment, "web-app", REAL_NODES[0], "web")
    yield box
    box.delete()


@pytest.fixture
def web_intruder(module_deployment) -> Iterator[Toolbox]:
    box = workload(module_deployment, "web-intruder", REAL_NODES[1], "web")
    yield box
    box.delete()


def test_dns_answers_under_default_deny(module_deployment, toolbox):
    """DNS queries carry no token: the anonymous token reads nodes and services, and no key."""
    deployment = module_deployment
    token = deployment.management_token()
    agent = deployment.stack.outputs()["agentAddress"].value
    local_agent = client_on(deployment, REAL_NODES[0])  # the toolbox's node: its calls reach this agent
    status, body = consul_http(toolbox.sh, "PUT", f"{agent}/v1/agent/service/register", token, body='{"Name": "dns-check", "Port": 1}')
    assert status == 200, body
    deployment.cluster.wait("dns-check in the catalog", lambda: "dns-check" in catalog_services(deployment), CATALOG_SYNC)

    dns = consul_dns_ip(deployment)
    expected = [local_agent["status"]["podIP"]]
    took = deployment.cluster.wait(
        "dns-check answered by consul-dns", lambda: dig(toolbox.sh, "dns-check.service.consul", dns) == expected, ACL_CACHE_TTL + 5
    )
    print(f"\nbed: registration: consul-dns answered {took:.1f} s after the registration")
    assert dig(toolbox.sh, f"{REAL_NODES[0]}.node.consul", dns) == expected

    # Read nodes and services for DNS, and no more: the anonymous token reads no key.
    assert consul_http(toolbox.sh, "PUT", f"{agent}/v1/kv/private", token, body="x")[0] == 200
    assert consul_http(toolbox.sh, "GET", f"{agent}/v1/kv/private")[0] == 403


def live_corefile(deployment) -> str:
    corefile: str = deployment.api.get("/api/v1/namespaces/kube-system/configmaps/coredns")["data"]["Corefile"]
    return corefile


def nxdomain_from(run, name: str) -> str | None:
    """Who answered NXDOMAIN to one A query through the pod's resolver (2 s to answer): "consul"
    when the authority section holds the Consul domain's SOA (ns.consul.), "coredns" when it does
    not; None for any other answer or none."""
    out = run(f"dig +time=2 +tries=1 {name} A", "")
    if not re.search(r"status: NXDOMAIN\b", out.stdout):
        return None
    authority = out.stdout.partition(";; AUTHORITY SECTION:")[2].partition("\n\n")[0]
    return "consul" if "ns.consul." in authority else "coredns"


@pytest.fixture
def coredns_forward(module_deployment) -> Iterator[str]:
    """The README's way: coreDnsForward "on" and `pulumi up`; yields the Corefile from before.
    Afterwards, if the block is still in, "removed" and `pulumi up` take it out (the setting stays
    "removed", as the stack's state has it, for the module's later ups and its destroy)."""
    deployment = module_deployment
    before = live_corefile(deployment)
    deployment.set(coreDnsForward="on")
    deployment.up("coreDnsForward on")
    try:
        yield before
    finally:
        deployment.set(coreDnsForward="removed")
        if live_corefile(deployment) != before:
            deployment.up("coreDnsForward removed")


def test_a_workload_registers_is_found_by_dns_through_coredns_and_deregisters(module_deployment, web_app, coredns_forward):
    deployment = module_deployment
    app = run_in(web_app)
    registered = web_app.sh('consul services register -name web -id web-1 -port 8080 -address "$POD_IP"')
    assert registered.returncode == 0, registered.stderr
    took = deployment.cluster.wait("web in the catalog", lambda: "web" in catalog_services(deployment), CATALOG_SYNC)
    print(f"\nbed: registration: web in the catalog {took:.1f} s after the register call")

    # A plain lookup through the pod's resolver (CoreDNS), once it has reloaded its Corefile.
    took = deployment.cluster.wait(
        "web.service.consul through CoreDNS", lambda: dig(app, "web.service.consul") == [web_app.ip], COREDNS_RELOAD
    )
    print(f"bed: registration: CoreDNS answered web.service.consul {took:.1f} s after pulumi up patched the Corefile")
    assert dig(app, f"consul-dns.{deployment.namespace}.svc.cluster.local") == [consul_dns_ip(deployment)]

    # Every client agent answers it (consul-dns sends each query to any of them).
    for agent in deployment.pods("client"):
        assert dig(app, "web.service.consul", agent["status"]["podIP"], 8600) == [web_app.ip], agent["spec"]["nodeName"]

    deregistered = web_app.sh("consul services deregister -id web-1")
    assert deregistered.returncode == 0, deregistered.stderr
    took = deployment.cluster.wait("web gone from the catalog", lambda: "web" not in catalog_services(deployment), CATALOG_SYNC)
    print(f"bed: registration: web gone from the catalog {took:.1f} s after the deregister call")
    own_agent = client_on(deployment, REAL_NODES[0])["status"]["podIP"]
    # DNS reads may be served by a follower (allow_stale), a moment behind the leader.
    deployment.cluster.wait("web gone from DNS", lambda: dig(app, "web.service.consul", own_agent, 8600) == [], 5)


def test_coredns_forward_keeps_the_corefile_answers_other_names_and_comes_out_again(module_deployment, web_app, coredns_forward):
    """coreDnsForward: the Corefile as it was plus one block; names outside the Consul domain are
    answered as before and an unknown Consul name gets NXDOMAIN at once; on -> off is refused with
    nothing changed; "removed" puts back the Corefile exactly as it was."""
    deployment = module_deployment
    before = coredns_forward
    patched = live_corefile(deployment)
    assert patched.startswith(before), patched
    block = patched[len(before) :]
    assert f"consul:53 {{\n    errors\n    cache 30\n    forward . {consul_dns_ip(deployment)}\n}}\n" in block, block

    app = run_in(web_app)
    took = deployment.cluster.wait(
        "Consul's NXDOMAIN through CoreDNS", lambda: nxdomain_from(app, "nothing.service.consul") == "consul", COREDNS_RELOAD
    )
    print(f"\nbed: coreDnsForward: Consul answered through CoreDNS {took:.1f} s after pulumi up")
    kubernetes_ip = deployment.api.get("/api/v1/namespaces/default/services/kubernetes")["spec"]["clusterIP"]
    assert dig(app, "kubernetes.default.svc.cluster.local") == [kubernetes_ip]
    for name, ip in UPSTREAM_HOSTS.items():
        assert dig(app, name) == [ip]

    deployment.set(coreDnsForward="off")
    with pytest.raises(auto.CommandError) as refused:
        deployment.up("coreDnsForward on -> off")
    assert re.search(r"consul-coredns\S*\s.*protect", str(refused.value), re.DOTALL), str(refused.value)[-2000:]
    assert live_corefile(deployment) == patched

    deployment.set(coreDnsForward="removed")
    deployment.up("coreDnsForward removed")
    assert live_corefile(deployment) == before
    took = deployment.cluster.wait(
        "CoreDNS without the block",
        lambda: nxdomain_from(app, "nothing.service.consul") == "coredns",
        COREDNS_RELOAD,
    )
    print(f"bed: coreDnsForward: CoreDNS answered without the block {took:.1f} s after pulumi up removed it")


# curl's exit status when it could not connect: refused (7: the bed's NetworkPolicy agent rejects
# the SYN) or no answer within -m (28: an agent that drops it).
NOT_CONNECTED = (7, 28)
# The README's UI access (a free local port), and curl's status code printed on a last line.
PORT_FORWARD_UI = ("port-forward", "svc/consul-ui", ":443")
STATUS_LAST = ("-w", "\n%{http_code}")


def curl_exit(run, url: str) -> int:
    """curl's exit status for a GET of `url` with 5 s to answer (see NOT_CONNECTED). The server's
    certificate is not checked (-k): this asks only whether the port answers."""
    out = run(f'curl -sk -m 5 -o /dev/null {url}; echo "exit $?"', "")
    status = re.search(r"exit (\d+)$", out.stdout.strip())
    assert status, f"GET {url}: {out.stdout!r} {out.stderr!r}"
    return int(status.group(1))


@pytest.fixture
def api_prober(module_deployment) -> Iterator[Toolbox]:
    """A workload of its own name: a pod re-created under the name of one just deleted can be
    the terminating one for a moment, and an exec into it ends with no output."""
    box = workload(module_deployment, "api-prober", REAL_NODES[0], "web")
    yield box
    box.delete()


def test_no_workload_reaches_a_server_s_api_and_the_ui_answers_through_port_forward(module_deployment, api_prober, toolbox, tmp_path):
    """No registration on a server: a workload pod of the stack's namespace gets no answer from a
    server's API, through the serverApiAddress Service or a pod's own address, while its node's
    agent registers it. A namespace in serverApiNamespaces (the bed's tools) is answered, and an
    operator reaches the UI and the API through `kubectl port-forward`, as the README shows."""
    deployment = module_deployment
    app = run_in(api_prober)
    address = deployment.stack.outputs()["serverApiAddress"].value
    pod_address = f"https://{deployment.pods('server')[0]['status']['podIP']}:8501"
    for url in (f"{address}/v1/status/leader", f"{pod_address}/v1/status/leader"):
        assert curl_exit(app, url) in NOT_CONNECTED, f"a workload reached {url}"
        assert curl_exit(toolbox.sh, url) == 0, f"the tools namespace did not reach {url}"
    registered = api_prober.sh('consul services register -name web -id web-3 -port 8080 -address "$POD_IP"')
    assert registered.returncode == 0, registered.stderr
    assert api_prober.sh("consul services deregister -id web-3").returncode == 0

    ca = tmp_path / "ca.pem"
    ca.write_text(deployment.stack.outputs()["caCertificate"].value)
    forward = subprocess.Popen(
        [str(KUBE_BIN), "kubectl", f"--kubeconfig={deployment.cluster.kubeconfig}", "-n", deployment.namespace, *PORT_FORWARD_UI],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+) ->", line)
        assert match, line
        port = match.group(1)

        def get(path: str) -> tuple[str, str]:
            out = subprocess.run(
                [
                    "curl",
                    "-s",
                    "-m",
                    "5",
                    "--cacert",
                    str(ca),
                    "--resolve",
                    f"consul-ui:{port}:127.0.0.1",
                    *STATUS_LAST,
                    f"https://consul-ui:{port}{path}",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            body, _, code = out.stdout.rpartition("\n")
            return code, body

        code, leader = get("/v1/status/leader")
        assert code == "200", (code, leader)
        assert re.fullmatch(r'"[0-9.]+:8300"', leader), leader
        code, page = get("/ui/")
        assert code == "200", (code, page[:200])
        assert "<html" in page.lower(), page[:200]
        print(f"\nbed: registration: through kubectl port-forward, the UI answers and the leader is {leader}")
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_a_service_token_writes_only_its_own_service(module_deployment, web_intruder):
    deployment = module_deployment
    other = web_intruder.sh("consul services register -name billing -port 9090")
    assert other.returncode != 0
    assert "Permission denied" in other.stderr + other.stdout
    # The same token, the same pod, its own service: accepted.
    own = web_intruder.sh('consul services register -name web -id web-2 -port 8080 -address "$POD_IP"')
    assert own.returncode == 0, own.stderr
    deployment.cluster.wait("web in the catalog", lambda: "web" in catalog_services(deployment), CATALOG_SYNC)
    assert "billing" not in catalog_services(deployment)
    assert web_intruder.sh("consul services deregister -id web-2").returncode == 0


# Workloads that log in with their service account (kubernetesAuth, STACK_SETTINGS): pods of the
# toolbox image running as an account of the service's name, in the stack's namespace (the one
# namespace allowed to log in) or in the bed's tools namespace (not allowed).
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
LOGIN = f"consul login -method=kubernetes -bearer-token-file={SA_TOKEN} -token-sink-file=/tmp/consul-token"
WITH_TOKEN = "CONSUL_HTTP_TOKEN_FILE=/tmp/consul-token"


def account_workload(deployment, name: str, node: str, account: str, namespace: str | None = None) -> Toolbox:
    """A pod running as service account `account` (made here), wired to its node's agent."""
    namespace = namespace or deployment.namespace
    deployment.cluster.apply([{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": namespace}}])
    return app_pod(deployment, name, node, namespace=namespace, serviceAccountName=account)


def token_self(box: Toolbox) -> tuple[int, dict[str, Any]]:
    """The pod's login token as the servers report it: (exit status, the token's JSON or {})."""
    out = box.sh(f"{WITH_TOKEN} consul acl token read -self -format=json")
    return out.returncode, json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()}


@pytest.fixture
def web_account(module_deployment) -> Iterator[Toolbox]:
    box = account_workload(module_deployment, "web-account", REAL_NODES[0], "web")
    yield box
    box.delete()


def test_a_pod_logs_in_with_its_service_account_writes_its_service_only_and_logs_out(module_deployment, web_account):
    deployment = module_deployment
    login = web_account.sh(LOGIN)
    assert login.returncode == 0, login.stderr
    status, token = token_self(web_account)
    assert status == 0, token
    assert (token["AuthMethod"], token["ServiceIdentities"], token.get("Policies")) == ("kubernetes", [{"ServiceName": "web"}], None)

    registered = web_account.sh(f'{WITH_TOKEN} consul services register -name web -id web-login-1 -port 8080 -address "$POD_IP"')
    assert registered.returncode == 0, registered.stderr
    deployment.cluster.wait("web-login-1 in the catalog", lambda: "web-login-1" in catalog_instances(deployment, "web"), CATALOG_SYNC)
    other = web_account.sh(f"{WITH_TOKEN} consul services register -name db -port 5432")
    assert other.returncode != 0
    assert "Permission denied" in other.stderr + other.stdout
    deregistered = web_account.sh(f"{WITH_TOKEN} consul services deregister -id web-login-1")
    assert deregistered.returncode == 0, deregistered.stderr
    deployment.cluster.wait(
        "web-login-1 gone from the catalog", lambda: "web-login-1" not in catalog_instances(deployment, "web"), CATALOG_SYNC
    )
    assert "db" not in catalog_services(deployment)

    logout = web_account.sh(f"{WITH_TOKEN} consul logout")
    assert logout.returncode == 0, logout.stderr
    status, token = token_self(web_account)
    assert status != 0
    assert "ACL not found" in token["error"]


def test_another_account_cannot_write_web_and_another_namespace_cannot_log_in(module_deployment, toolbox):
    deployment = module_deployment
    billing = account_workload(deployment, "billing-account", REAL_NODES[1], "billing")
    outsider = account_workload(deployment, "web-outsider", REAL_NODES[2], "web", namespace=toolbox.namespace)
    try:
        assert billing.sh(LOGIN).returncode == 0
        assert token_self(billing)[1]["ServiceIdentities"] == [{"ServiceName": "billing"}]
        intruding = billing.sh(f"{WITH_TOKEN} consul services register -name web -port 8080")
        assert intruding.returncode != 0
        assert "Permission denied" in intruding.stderr + intruding.stdout
        assert billing.sh(f"{WITH_TOKEN} consul logout").returncode == 0

        # An account named web, but in a namespace kubernetesAuthNamespaces does not list.
        refused = outsider.sh(LOGIN)
        assert refused.returncode != 0
        assert "Permission denied" in refused.stderr + refused.stdout, refused.stderr
    finally:
        billing.delete()
        outsider.delete()


def test_a_login_token_expires_at_the_ttl_set(module_deployment, web_account):
    """kubernetesAuthTokenTtl is 2m here: the token's expiry is its creation plus 120 s, and after
    it the servers no longer know the token."""
    assert web_account.sh(LOGIN).returncode == 0
    status, token = token_self(web_account)
    assert status == 0, token
    created = datetime.datetime.fromisoformat(token["CreateTime"][:26].rstrip("Z"))
    expires = datetime.datetime.fromisoformat(token["ExpirationTime"][:26].rstrip("Z"))
    assert (expires - created).total_seconds() == pytest.approx(LOGIN_TTL, abs=1)
    took = module_deployment.cluster.wait("the token expired", lambda: token_self(web_account)[0] != 0, LOGIN_TTL + 30)
    print(f"\nbed: registration: the login token was refused {took:.1f} s after the login (TTL {LOGIN_TTL} s)")
    assert "ACL not found" in token_self(web_account)[1]["error"]


def test_a_client_roll_loses_registrations_on_an_empty_dir_and_keeps_them_with_a_data_host_path(module_deployment, toolbox):
    """The watch's service, registered with the toolbox node's agent before the action, through a
    `kubectl rollout restart` of the client agents: on the default emptyDir the replaced agent
    comes back without it, for good (the defect shows); with clientDataHostPath the next agent
    registers it again by itself, and each node has its own subdirectory of the stack's. The
    directory is under the bed's state, which the bed removes with the cluster."""
    from watch import Watch

    from testbed.cluster.node import BED_STATE

    deployment = module_deployment
    host_dir = BED_STATE / f"agent-data-{deployment.namespace}"

    def listed(watch: Watch) -> bool | None:
        """The catalog's last answer: is the watch's service in it."""
        return watch.record.registered[-1][1] if watch.record.registered else None

    def rolled(label: str, comes_back: bool) -> tuple[Any, float]:
        """A client roll under a watch; with `comes_back`, the watch goes on until the catalog
        lists the service again, and the time from the roll's end is returned."""
        back = 0.0
        with Watch(deployment, toolbox, label) as watch:
            deployment.kubectl("rollout", "restart", "daemonset/consul-client")
            deployment.kubectl("rollout", "status", "daemonset/consul-client", "--timeout=300s", timeout=330)
            if comes_back:
                back = deployment.cluster.wait(f"{label}: the registration back", lambda: listed(watch) is True, 60)
            else:
                deployment.cluster.wait(f"{label}: the catalog answering", lambda: listed(watch) is not None, 30)
        assert watch.summary is not None
        if not comes_back:
            assert listed(watch) is False, "the registration survived an emptyDir: this test can no longer fail"
        return watch.summary, back

    on_empty_dir, _ = rolled("client roll, data on an emptyDir", comes_back=False)
    deployment.set(clientDataHostPath=str(host_dir))
    deployment.up("client data on the node")
    on_the_node, back = rolled("client roll, data on the node", comes_back=True)
    print(
        f"\nbed: registration: client roll on an emptyDir: the registration gone for good ({on_empty_dir.registration_missing} "
        f"samples missing); with clientDataHostPath: back {back:.1f} s after the roll ended ({on_the_node.registration_missing} "
        "samples missing)"
    )
    assert sorted(p.name for p in (host_dir / deployment.namespace).iterdir()) == sorted(REAL_NODES)
