"""Consul on Kubernetes as typed Pulumi components.

``from consul import ConsulServers`` works as usual, but each name is loaded on first use, so a
script that needs one module (the settings, say) does not load the whole program and
pulumi_kubernetes with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConsulAclBootstrap": "acl_bootstrap",
    "ConsulAclBootstrapArgs": "acl_bootstrap",
    "ConsulClients": "clients",
    "ConsulClientsArgs": "clients",
    "ConsulSecurity": "security",
    "ConsulSecurityArgs": "security",
    "TierSecrets": "security",
    "ConsulServers": "servers",
    "ConsulServersArgs": "servers",
    "Settings": "settings",
    "SettingsError": "settings",
    "load_settings": "settings",
    **dict.fromkeys(
        [
            "CertificateSpec",
            "ClientMode",
            "ClientSpec",
            "ClusterSpec",
            "CoreDnsForward",
            "DnsSpec",
            "Placement",
            "Resources",
            "SecuritySpec",
            "ServerSpec",
            "Toleration",
            "UiServiceType",
            "UiSpec",
        ],
        "model",
    ),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'consul' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
