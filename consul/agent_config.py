"""The Consul agent configuration files the program writes (JSON, loaded from -config-dir)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .model import ClusterSpec, SecuritySpec, ServerSpec

CHECKSUM_ANNOTATION = "consul.hashicorp.com/config-checksum"
SECRETS_CHECKSUM_ANNOTATION = "consul.hashicorp.com/secrets-checksum"
DATA_DIR = "/consul/data"
CONFIG_DIR = "/consul/config"
GENERATED_FILE = "00-agent.json"
# Settings that follow the server count and matter only while agents start or bootstrap
# (bootstrap_expect, retry_join, autopilot.min_quorum): a file of their own, left out of the pod
# template's checksum, so scaling the servers restarts no running agent.
CLUSTER_SIZE_FILE = "05-cluster-size.json"
EXTRA_FILE = "90-extra.json"
SIZE_KEYS = ("bootstrap_expect", "retry_join")

TLS_DIR = "/consul/tls"
CA_FILE = f"{TLS_DIR}/ca/tls.crt"
SERVER_CERT_FILE = f"{TLS_DIR}/server/tls.crt"
SERVER_KEY_FILE = f"{TLS_DIR}/server/tls.key"
ACL_DIR = "/consul/acl"
ACL_TOKENS_FILE_NAME = "acl-tokens.json"
ACL_TOKENS_FILE = f"{ACL_DIR}/{ACL_TOKENS_FILE_NAME}"
JOIN_DIR = "/consul/join"
JOIN_RETRY_INTERVAL = "5s"
# A client agent's wait for a server's answer to one call (see client_config).
RPC_CLIENT_TIMEOUT = "3s"
GOSSIP_DIR = "/consul/gossip"
GOSSIP_FILE_NAME = "gossip.json"
GOSSIP_FILE = f"{GOSSIP_DIR}/{GOSSIP_FILE_NAME}"

HTTP_PORT = 8500
# Where probes, hooks and in-pod commands reach their own agent: plain HTTP on loopback, which every
# agent serves whether or not TLS is on.
LOCAL_HTTP_URL = f"http://127.0.0.1:{HTTP_PORT}"
HTTPS_PORT = 8501
SERVER_RPC_PORT = 8300
SERF_LAN_PORT = 8301
SERF_WAN_PORT = 8302
DNS_PORT = 8600


# Every agent serves its metrics in Prometheus format at /v1/agent/metrics?format=prometheus (ACLs:
# agent:read, the metrics token). The Prometheus sink drops a metric not updated within the
# retention time, except the gauges Consul declares up front, such as the hourly
# certificate-expiry ones; 1 m is the official chart's, and twice a common scrape interval.
TELEMETRY = {"prometheus_retention_time": "1m", "disable_hostname": True}


def quorum(servers: int) -> int:
    """A majority of `servers`: how many voters a cluster of that size needs to elect and commit."""
    return servers // 2 + 1


# Ten years: no retained claim is refused for its age.
SERVER_REJOIN_AGE_MAX = "87600h"


def min_quorum(servers: int) -> int:
    """Autopilot's min_quorum: the declared size itself. Autopilot never prunes a server of the
    declared set, however long it is down (a pod being replaced, a node drained): it comes back
    with its data and its voter slot. Only servers beyond the declared size, after a scale-down,
    are pruned once serf reports them failed."""
    return servers


def server_config(cluster: ClusterSpec, servers: ServerSpec, security: SecuritySpec) -> dict[str, Any]:
    """The generated config of every server agent.

    A server never leaves on terminate (``leave_on_terminate: false``, no ``consul leave``
    preStop): a leave removes its voter slot, so a roll shrinks Raft to one voter while the
    returning server waits as a non-voter for autopilot, and servers deleted together shrink it
    until they can no longer elect. A stopped server keeps its voter slot while it is away, and
    its node ID (data on its claim); back at a new pod IP, its init container has the leader drop
    the old entry just before it starts, autopilot adds it afresh and promotes it, and it is Ready
    only as a voter (servers.rejoin_wait, servers.voter_readiness). Until that promotion it has no
    vote: the others hold the quorum alone.
    ``autopilot.min_quorum`` (the declared size) keeps autopilot from pruning a server that is
    only being replaced; ``raft_multiplier: 1`` is Consul's production timing. How a server
    joins the others is a file of its own (``server_join_files``).
    """
    config: dict[str, Any] = {
        **_agent(cluster, server=True),
        "bootstrap_expect": servers.replicas,
        "leave_on_terminate": False,
        # A returning server rejoins the members its serf snapshot (on its claim) knows, clients
        # included: they keep their addresses while the servers come back at new ones. Servers
        # never leave, so this matters only after an operator's own `consul leave`.
        "rejoin_after_leave": True,
        # Consul (1.16 on) refuses to start a server whose data was last seen running more than
        # server_rejoin_age_max ago (7 days by default), against decommissioned servers started
        # again by accident. Here a server's data comes back only on purpose: a StatefulSet
        # scaled up again onto its retained claim, a re-install over the retained claims, a pod
        # Pending for a week. Each must start, and Raft brings a returning server up to date.
        "server_rejoin_age_max": SERVER_REJOIN_AGE_MAX,
        "ui_config": {"enabled": True},
        "performance": {"raft_multiplier": 1},
        "autopilot": {"cleanup_dead_servers": True, "min_quorum": min_quorum(servers.replicas)},
        "ports": {"http": HTTP_PORT, "dns": DNS_PORT, "server": SERVER_RPC_PORT, "serf_lan": SERF_LAN_PORT, "serf_wan": SERF_WAN_PORT},
    }
    if security.tls:
        config["tls"] = {
            "defaults": {
                "ca_file": CA_FILE,
                "cert_file": SERVER_CERT_FILE,
                "key_file": SERVER_KEY_FILE,
                "verify_incoming": True,
                "verify_outgoing": True,
            },
            "internal_rpc": {"verify_server_hostname": True},
            # Browsers, the CLI and workloads use HTTPS without client certificates; ACLs guard it.
            "https": {"verify_incoming": False},
        }
        config["ports"]["https"] = HTTPS_PORT
        # Plain HTTP stays for the in-pod probes and `kubectl exec consul ...` only.
        config["addresses"] = {"http": "127.0.0.1"}
        # Clients get their certificates from the servers (auto_encrypt needs Connect's CA).
        config["auto_encrypt"] = {"allow_tls": True}
        config["connect"] = {"enabled": True}
    if servers.wan.join:
        # Every address is tried again until one answers; WAN gossip then finds the rest.
        config["retry_join_wan"] = list(servers.wan.join)
    secured = _secure(config, security)
    if cluster.secondary and security.acls:
        # Policies, global tokens and roles come from the primary; the servers replicate them
        # (the replication token is in their ACL token file), and local tokens live here.
        secured["acl"]["enable_token_replication"] = True
    return secured


def client_config(cluster: ClusterSpec, retry_join: Sequence[str], security: SecuritySpec) -> dict[str, Any]:
    """The generated config of every client agent.

    ``retry_join`` runs only while an agent starts (consul #3902); servers that come back at new
    addresses find the clients from their own serf snapshot (kept on their claims),
    and the client liveness probe (``clients.STRANDED_LIVENESS_SCRIPT``) is the last resort for an
    agent stranded for minutes: it fails only while the agent reports no leader and a server accepts connections.
    ``leave_on_terminate`` deregisters a deleted agent's services with it; ``rejoin_after_leave``
    lets a restarted agent take its place again. With clientDataHostPath (the data dir on the node) the
    next agent on the node loads the services from the data dir and registers them again within
    seconds of its start. It still leaves: it comes back at a new pod address, which the other
    agents accept at once only from a member that left (from a failed one only 30 s after its
    failure, and a new agent that sees its name alive at the old address can lose serf's name
    conflict vote and shut its gossip down). The HTTP API is plain HTTP on 8500 only: an
    auto_encrypt certificate chains to Connect's CA, which no workload holds, so HTTPS is not
    offered on the clients (see the README's security table).
    """
    config: dict[str, Any] = {
        **_agent(cluster, server=False),
        "retry_join": list(retry_join),
        "rejoin_after_leave": True,
        "ports": {"http": HTTP_PORT, "dns": DNS_PORT, "serf_lan": SERF_LAN_PORT},
        # Service lookups through the agent cache: a background blocking query keeps each looked-up
        # service current, and while no server answers the agent goes on answering with the
        # last instances it knew, instead of SERVFAIL (consul-dns is served by the clients).
        "dns_config": {"use_cache": True},
        # How long a call to a server may wait for its answer (Consul's default 60 s). A blocking
        # query (?index=) is not cut: its wait, a sixteenth more and rpc_hold_timeout (7 s)
        # replace it; streaming (gRPC), snapshots and the dial are not bounded by it. A server
        # whose node is cut off answers nothing and refuses nothing: the agent's calls to it
        # waited until gossip declared it failed, 5 to 6 s. A call that times out fails (the
        # agent tries it on no other server, and a write may still have been committed) and the
        # agent moves that server to the end of its list, so its next call goes to another. The
        # cost: a follower holds a write through an election for up to rpc_hold_timeout (7 s),
        # which the agent now gives up after 3 s, so an election longer than about 3 s fails
        # writes it would have held (the bed bounds an operation to 2 s without a leader). 3 s,
        # not less: a write held through an election (1 to 2 s at raft_multiplier 1) plus its
        # commit still succeeds.
        "limits": {"rpc_client_timeout": RPC_CLIENT_TIMEOUT},
    }
    if security.tls:
        config["tls"] = {
            "defaults": {"ca_file": CA_FILE, "verify_outgoing": True},
            "internal_rpc": {"verify_server_hostname": True},
        }
        # RPC to the servers with a certificate the servers issue (auto_encrypt).
        config["auto_encrypt"] = {"tls": True}
    return _secure(config, security)


def server_join_files(addresses: Mapping[str, str]) -> dict[str, str]:
    """One config file per server pod (``<pod>.json``, loaded with -config-file), from the join
    address of every server pod: its ``retry_join`` names every other server, never itself.

    ``retry_join`` stops at the first attempt that reaches any member, and an agent always
    reaches itself: a server that started while it could reach no other (a partition, a
    NetworkPolicy agent admitting its address late) would stop there, the others would form a
    pool without it, and ``bootstrap_expect`` would never be met. Without its own name the list
    keeps being retried until another server answers: every 5 s, not Consul's 30, as each attempt
    already waits out a 10 s connect to every server it can't reach. A pod with no file (a server
    beyond ``serverReplicas``, scaled by hand) does not start: Consul names the missing file.
    """
    return {
        f"{pod}.json": _dump(
            {"retry_join": [address for other, address in addresses.items() if other != pod], "retry_interval": JOIN_RETRY_INTERVAL}
        )
        for pod in addresses
    }


def _agent(cluster: ClusterSpec, *, server: bool) -> dict[str, Any]:
    """What every agent's config starts with: its role, the datacenter, the data dir. Clients
    leave on terminate (their services go with them); servers override it."""
    federation = {"primary_datacenter": cluster.primary_datacenter} if cluster.secondary else {}
    return {
        "server": server,
        "datacenter": cluster.datacenter,
        **federation,
        "domain": cluster.domain,
        "recursors": list(cluster.recursors),
        "data_dir": DATA_DIR,
        "bind_addr": "0.0.0.0",
        "client_addr": "0.0.0.0",
        "leave_on_terminate": True,
        "disable_update_check": True,
        "telemetry": TELEMETRY,
    }


def _secure(config: dict[str, Any], security: SecuritySpec) -> dict[str, Any]:
    """What servers and clients share: the keyring and ACL settings."""
    if security.gossip_encryption:
        # The key comes from a Secret-mounted config file (GOSSIP_FILE); a persisted
        # local.keyring would silently win over it.
        config["disable_keyring_file"] = True
    if security.acls:
        config["acl"] = {
            "enabled": True,
            "default_policy": "deny",
            "down_policy": "extend-cache",
            "enable_token_persistence": True,
        }
    return config


def acl_tokens_file(tokens: Mapping[str, str]) -> str:
    """The agent's token config file (kept in a Secret): e.g. {"agent": ...}."""
    return _dump({"acl": {"tokens": dict(tokens)}})


def gossip_file(key: str) -> str:
    """The gossip key as a config file (kept in a Secret), so it never reaches a command line."""
    return _dump({"encrypt": key})


def config_files(generated: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, str]:
    """ConfigMap data: the generated file, the cluster-size file, then the user's extra file
    (Consul loads them in name order and merges them)."""
    base = {k: v for k, v in generated.items() if k not in SIZE_KEYS}
    size = {k: v for k, v in generated.items() if k in SIZE_KEYS}
    if "autopilot" in generated and "min_quorum" in generated["autopilot"]:
        base["autopilot"] = {k: v for k, v in generated["autopilot"].items() if k != "min_quorum"}
        size["autopilot"] = {"min_quorum": generated["autopilot"]["min_quorum"]}
    files = {GENERATED_FILE: _dump(base), CLUSTER_SIZE_FILE: _dump(size)}
    if extra:
        files[EXTRA_FILE] = _dump(extra)
    return files


def checksum(files: Mapping[str, str]) -> str:
    """A digest of config files, for a pod-template annotation that rolls pods when config changes.
    The cluster-size file is left out (see CLUSTER_SIZE_FILE)."""
    return hashlib.sha256(_dump({k: v for k, v in files.items() if k != CLUSTER_SIZE_FILE}).encode()).hexdigest()


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"
