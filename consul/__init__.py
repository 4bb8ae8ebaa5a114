"""Consul on Kubernetes as typed Pulumi components."""

from .model import ClusterSpec, Placement, Resources, ServerSpec, Toleration
from .servers import ConsulServers, ConsulServersArgs
from .settings import Settings, SettingsError, load_settings

__all__ = [
    "ClusterSpec",
    "ConsulServers",
    "ConsulServersArgs",
    "Placement",
    "Resources",
    "ServerSpec",
    "Settings",
    "SettingsError",
    "Toleration",
    "load_settings",
]
