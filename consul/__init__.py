"""Consul on Kubernetes as typed Pulumi components."""

from .acl_bootstrap import ConsulAclBootstrap, ConsulAclBootstrapArgs
from .clients import ConsulClients, ConsulClientsArgs
from .model import (
    ClientMode,
    ClientSpec,
    ClusterSpec,
    DnsSpec,
    Placement,
    Resources,
    SecuritySpec,
    ServerSpec,
    Toleration,
    UiServiceType,
    UiSpec,
)
from .security import ConsulSecurity, ConsulSecurityArgs, TierSecrets
from .servers import ConsulServers, ConsulServersArgs
from .settings import Settings, SettingsError, load_settings

__all__ = [
    "ClientMode",
    "ClientSpec",
    "ClusterSpec",
    "ConsulAclBootstrap",
    "ConsulAclBootstrapArgs",
    "ConsulClients",
    "ConsulClientsArgs",
    "ConsulSecurity",
    "ConsulSecurityArgs",
    "ConsulServers",
    "ConsulServersArgs",
    "DnsSpec",
    "Placement",
    "Resources",
    "SecuritySpec",
    "ServerSpec",
    "Settings",
    "SettingsError",
    "TierSecrets",
    "Toleration",
    "UiServiceType",
    "UiSpec",
    "load_settings",
]
