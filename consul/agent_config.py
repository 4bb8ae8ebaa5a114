"""The Consul agent configuration files the program writes (JSON, loaded from -config-dir)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .model import ClusterSpec, ServerSpec

CHECKSUM_ANNOTATION = "consul.hashicorp.com/config-checksum"
DATA_DIR = "/consul/data"
CONFIG_DIR = "/consul/config"
GENERATED_FILE = "00-agent.json"
EXTRA_FILE = "90-extra.json"

HTTP_PORT = 8500
SERVER_RPC_PORT = 8300
SERF_LAN_PORT = 8301
SERF_WAN_PORT = 8302
DNS_PORT = 8600


def server_config(cluster: ClusterSpec, servers: ServerSpec, retry_join: Sequence[str]) -> dict[str, Any]:
    """The generated config of every server agent.

    ``leave_on_terminate`` makes a deleted pod leave gracefully (no ``consul leave`` preStop,
    which shrinks the peer set); ``raft_multiplier: 1`` is Consul's production timing;
    ``autopilot.min_quorum`` stops autopilot from removing servers below a majority.
    """
    return {
        "server": True,
        "bootstrap_expect": servers.replicas,
        "datacenter": cluster.datacenter,
        "domain": cluster.domain,
        "recursors": list(cluster.recursors),
        "data_dir": DATA_DIR,
        "bind_addr": "0.0.0.0",
        "client_addr": "0.0.0.0",
        "retry_join": list(retry_join),
        "leave_on_terminate": True,
        "disable_update_check": True,
        "ui_config": {"enabled": True},
        "performance": {"raft_multiplier": 1},
        "autopilot": {"cleanup_dead_servers": True, "min_quorum": servers.replicas // 2 + 1},
        "ports": {"http": HTTP_PORT, "dns": DNS_PORT, "server": SERVER_RPC_PORT, "serf_lan": SERF_LAN_PORT, "serf_wan": SERF_WAN_PORT},
    }


def client_config(cluster: ClusterSpec, retry_join: Sequence[str]) -> dict[str, Any]:
    """The generated config of every client agent.

    ``retry_join`` runs only while an agent starts (consul #3902): the client liveness probe
    restarts an agent that has seen no leader for minutes, so it joins again by DNS name.
    ``leave_on_terminate`` deregisters a deleted agent's services with it; ``rejoin_after_leave``
    lets a restarted agent take its place again.
    """
    return {
        "server": False,
        "datacenter": cluster.datacenter,
        "domain": cluster.domain,
        "recursors": list(cluster.recursors),
        "data_dir": DATA_DIR,
        "bind_addr": "0.0.0.0",
        "client_addr": "0.0.0.0",
        "retry_join": list(retry_join),
        "leave_on_terminate": True,
        "rejoin_after_leave": True,
        "disable_update_check": True,
        "ports": {"http": HTTP_PORT, "dns": DNS_PORT, "serf_lan": SERF_LAN_PORT},
    }


def config_files(generated: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, str]:
    """ConfigMap data: the generated file, then the user's extra file (loaded last, by name order)."""
    files = {GENERATED_FILE: _dump(generated)}
    if extra:
        files[EXTRA_FILE] = _dump(extra)
    return files


def checksum(files: Mapping[str, str]) -> str:
    """A digest of config files, for a pod-template annotation that rolls pods when config changes."""
    return hashlib.sha256(_dump(dict(files)).encode()).hexdigest()


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"
