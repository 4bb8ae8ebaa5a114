"""The bed's cluster add-ons, run as real pods: CoreDNS (the cluster DNS) and kube-router (NetworkPolicy).

Each function returns the Kubernetes objects as plain dicts, in the order ``kubectl apply`` would take them.
The images are the bed's own (built from testbed/build-addons.sh's binaries and loaded into each node's
containerd), hence ``imagePullPolicy: Never``.

CoreDNS is set up as kubeadm v1.36 sets it up (cmd/kubeadm/app/phases/addons/dns/manifests.go), less what the
bed has no use for or no network for: no metrics port (the binary has no prometheus plugin) and no upstream
resolver. kube-router runs only its NetworkPolicy controller (see network_policies()).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

NAMESPACE = "kube-system"
CLUSTER_DOMAIN = "cluster.local"
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")

_HOSTNAME = re.compile(r"^(?=.{1,253}\.?$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$")


def _fqdn(name: str) -> str:
    """``name`` lowercased with its trailing dot, as CoreDNS compares names; ValueError if it is no host name."""
    lowered = name.lower()
    if not _HOSTNAME.match(lowered):
        raise ValueError(f"not a host name: {name!r}")
    return lowered if lowered.endswith(".") else lowered + "."


def _in_zone(zone: str) -> str:
    """An expr-lang condition: the query name is ``zone`` or a name under it."""
    return f"name() == '{zone}.' || name() endsWith '.{zone}.'"


def corefile(upstream_hosts: dict[str, str]) -> str:
    """The Corefile: kubeadm's ``.:53`` server block, with ``upstream_hosts`` (name -> IP) in place of an upstream resolver.

    There is no network outside the bed, so nothing is forwarded anywhere. A query goes through the plugins in
    CoreDNS's fixed order (template, then hosts, then kubernetes), not in the order they are written here:
      - template answers NXDOMAIN at once for every name that is neither one of ``upstream_hosts`` nor in the
        cluster's zones (``cluster.local``, the reverse zones), and lets those through;
      - hosts answers ``upstream_hosts`` (A, AAAA and their PTRs) and falls through for everything else; it reads
        /dev/null rather than the pod's own /etc/hosts, so it answers for ``upstream_hosts`` and nothing more;
      - kubernetes answers ``cluster.local`` and the reverse zones. kubeadm's ``fallthrough in-addr.arpa ip6.arpa``
        is left out: it only handed other addresses' PTR queries to the upstream resolver, and with nothing after
        kubernetes they would get SERVFAIL; without it they get NXDOMAIN from kubernetes.
    Other server blocks (say, a stub domain's) can be appended to the returned text: CoreDNS sends each query to
    the block of the longest zone that contains it, so they are never reached through this one.
    """
    entries: list[tuple[str, str]] = []
    for name, ip in upstream_hosts.items():
        entries.append((_fqdn(name), str(ipaddress.ip_address(ip))))
    entries.sort()
    known = [_in_zone(zone) for zone in (CLUSTER_DOMAIN, *REVERSE_ZONES)]
    if entries:
        known.insert(0, "name() in [" + ", ".join(f"'{name}'" for name, _ in entries) + "]")
    host_lines = "".join(f"       {ip} {name.rstrip('.')}\n" for name, ip in entries)
    return (
        ".:53 {\n"
        "    errors\n"
        "    health {\n"
        "       lameduck 5s\n"
        "    }\n"
        "    ready\n"
        f"    kubernetes {CLUSTER_DOMAIN} {' '.join(REVERSE_ZONES)} {{\n"
        "       pods insecure\n"
        "       ttl 30\n"
        "    }\n"
        "    hosts /dev/null {\n"
        f"{host_lines}"
        "       fallthrough\n"
        "    }\n"
        "    template ANY ANY {\n"
        f'       expr "!({" || ".join(known)})"\n'
        "       rcode NXDOMAIN\n"
        "       fallthrough\n"
        "    }\n"
        "    cache 30 {\n"
        f"       disable success {CLUSTER_DOMAIN}\n"
        f"       disable denial {CLUSTER_DOMAIN}\n"
        "    }\n"
        "    loop\n"
        "    reload\n"
        "    loadbalance\n"
        "}\n"
    )


def coredns(cluster_dns_ip: str, image: str, upstream_hosts: dict[str, str]) -> list[dict[str, Any]]:
    """CoreDNS in kube-system behind the Service ``kube-dns`` at ``cluster_dns_ip`` (the kubelets' clusterDNS)."""
    labels = {"k8s-app": "kube-dns"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": NAMESPACE}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": NAMESPACE}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": NAMESPACE},
            "data": {"Corefile": corefile(upstream_hosts)},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": NAMESPACE, "labels": dict(labels)},
            "spec": {
                "replicas": 2,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "selector": {"matchLabels": dict(labels)},
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        "priorityClassName": "system-cluster-critical",
                        "serviceAccountName": "coredns",
                        "affinity": {
                            "podAntiAffinity": {
                                "preferredDuringSchedulingIgnoredDuringExecution": [
                                    {
                                        "weight": 100,
                                        "podAffinityTerm": {
                                            "labelSelector": {
                                                "matchExpressions": [{"key": "k8s-app", "operator": "In", "values": ["kube-dns"]}]
                                            },
                                            "topologyKey": "kubernetes.io/hostname",
                                        },
                                    }
                                ]
                            }
                        },
                        "tolerations": [
                            {"key": "CriticalAddonsOnly", "operator": "Exists"},
                            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                        ],
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        # Ports below 1024 open to every user in the pod's own network namespace, so that the
                        # non-root CoreDNS binds :53 whether or not its binary carries a file capability
                        # (CoreDNS's own image sets cap_net_bind_service on it; containerd gives a non-root
                        # process no ambient capabilities, so NET_BIND_SERVICE below alone does not reach it).
                        "securityContext": {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "53"}]},
                        "containers": [
                            {
                                "name": "coredns",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "resources": {"limits": {"memory": "170Mi"}, "requests": {"cpu": "100m", "memory": "70Mi"}},
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}],
                                "ports": [
                                    {"containerPort": 53, "name": "dns", "protocol": "UDP"},
                                    {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
                                    {"containerPort": 8080, "name": "liveness-probe", "protocol": "TCP"},
                                    {"containerPort": 8181, "name": "readiness-probe", "protocol": "TCP"},
                                ],
                                "livenessProbe": {
                                    "httpGet": {"path": "/health", "port": "liveness-probe", "scheme": "HTTP"},
                                    "initialDelaySeconds": 60,
                                    "timeoutSeconds": 5,
                                    "successThreshold": 1,
                                    "failureThreshold": 5,
                                },
                                "readinessProbe": {"httpGet": {"path": "/ready", "port": "readiness-probe", "scheme": "HTTP"}},
                                "securityContext": {
                                    "runAsNonRoot": True,
                                    "runAsUser": 65532,
                                    "runAsGroup": 65532,
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True,
                                },
                            }
                        ],
                        # The node's resolv.conf, not the cluster DNS, which is this pod.
                        "dnsPolicy": "Default",
                        "volumes": [
                            {"name": "config-volume", "configMap": {"name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]}}
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                "namespace": NAMESPACE,
                "labels": {**labels, "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
            },
            "spec": {
                "clusterIP": cluster_dns_ip,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
                "selector": dict(labels),
            },
        },
    ]


def network_policies(image: str, service_cidr: str) -> list[dict[str, Any]]:
    """kube-router v2.1.0 with only its NetworkPolicy controller, as its own firewall-only DaemonSet
    sets it up: privileged, in each node's network namespace, enforcing every NetworkPolicy of the
    cluster with iptables chains and ipsets for the node's own pods (bridged traffic reaches them
    through br_netfilter, which the bed turns on per node).

    kube-network-policies (the agent kind uses) needs nftables' ``queue`` expression, which these
    machines' kernels lack (CONFIG_NFT_QUEUE): its table is refused and it would enforce nothing.
    """
    labels = {"k8s-app": "kube-router", "tier": "node"}
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "kube-router"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
                    "verbs": ["list", "get", "watch"],
                },
                {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "get", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "get", "watch"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "kube-router"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kube-router"},
            "subjects": [{"kind": "ServiceAccount", "name": "kube-router", "namespace": NAMESPACE}],
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kube-router", "namespace": NAMESPACE}},
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "kube-router", "namespace": NAMESPACE, "labels": dict(labels)},
            "spec": {
                "selector": {"matchLabels": {"k8s-app": "kube-router"}},
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        "hostNetwork": True,
                        "priorityClassName": "system-node-critical",
                        "tolerations": [{"operator": "Exists"}],
                        "serviceAccountName": "kube-router",
                        "containers": [
                            {
                                "name": "kube-router",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "command": ["/usr/local/bin/kube-router"],
                                "args": [
                                    "--run-router=false",
                                    "--run-service-proxy=false",
                                    "--run-firewall=true",
                                    "--enable-cni=false",
                                    f"--service-cluster-ip-range={service_cidr}",
                                    "--hostname-override=$(NODE_NAME)",
                                    "--metrics-port=0",
                                    "--health-port=20244",
                                    "--v=1",
                                ],
                                "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 20244}, "periodSeconds": 3},
                                "resources": {"requests": {"cpu": "50m", "memory": "50Mi"}},
                                "securityContext": {"privileged": True},
                                "volumeMounts": [{"name": "xtables-lock", "mountPath": "/run/xtables.lock"}],
                            }
                        ],
                        "volumes": [{"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}}],
                    },
                },
            },
        },
    ]
