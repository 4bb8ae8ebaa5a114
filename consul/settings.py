"""Stack configuration, read once and validated into typed values before anything is declared.

Every key is declared (type, default, description) in Pulumi.yaml; the Pulumi CLI applies
those defaults and the stack file, and hands the program strings. This module turns them
into the typed specs of :mod:`consul.model`, or raises one :class:`SettingsError` naming
the key, the value given and what is allowed.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pulumi
from pulumi.runtime import config as runtime_config

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

from .model import (
    CertificateSpec,
    ClientMode,
    ClientSpec,
    ClusterSpec,
    CoreDnsForward,
    DnsSpec,
    DnsTrafficDistribution,
    KubernetesAuthSpec,
    Placement,
    Resources,
    SecretText,
    SecuritySpec,
    ServerSpec,
    SnapshotSpec,
    Toleration,
    UiServiceType,
    UiSpec,
    WanSpec,
)
from .quantity import parse_quantity

PROJECT = "consul"

SERVER_REPLICA_CHOICES = (1, 3, 5, 7)
# Settings whose change a deployed stack refuses unless consul:allowedChanges lists them (change_guard.py).
GUARDED_SETTINGS = ("serverStorageSize", "serverStorageClass", "gossipEncryption", "tls")
MAX_CLIENT_REPLICAS = 1000
OLDEST_SUPPORTED_CONSUL = (1, 16)
# Releases refused by name: 1.19.0 and 1.19.1 made a rewritten DNS server the default, and 1.19.2
# reverted it for its regressions.
_DNS_REGRESSION = "Consul 1.19.0 and 1.19.1 shipped a rewritten DNS server with regressions, reverted in 1.19.2: use 1.19.2 or later"
REFUSED_CONSUL_RELEASES = {(1, 19, 0): _DNS_REGRESSION, (1, 19, 1): _DNS_REGRESSION}
MAX_LABEL = 63

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_PART = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DATACENTER = re.compile(r"^[a-z0-9_-]+$")
_IMAGE = re.compile(
    r"^(?P<repository>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
_RELEASE_TAG = re.compile(r"^v?(?P<major>[0-9]+)\.(?P<minor>[0-9]+)\.(?P<patch>[0-9]+)(?:[-+][A-Za-z0-9.]+)*$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

# Keys of the generated server config that serverExtraConfig may not change: the program
# derives them from other settings, and a different value would break the cluster.
MANAGED_SERVER_KEYS = {
    "server": "it is always true for servers",
    "bootstrap_expect": "set consul:serverReplicas instead",
    "datacenter": "set consul:datacenter instead",
    "domain": "set consul:domain instead",
    "recursors": "set consul:recursors instead",
    "data_dir": "the data volume is mounted at /consul/data",
    "retry_join": "servers join each other by their stable pod DNS names",
    "ports": "the Services and probes are built for the standard ports",
    "addresses": "the Services and probes are built for the standard addresses",
    "bind_addr": "agents bind all pod addresses",
    "client_addr": "agents bind all pod addresses",
    "advertise_addr": "agents advertise their pod IP",
    "node_name": "servers are named after their pods",
    "leave_on_terminate": "servers keep their Raft voter slot when their pod is deleted",
    "primary_datacenter": "set consul:primaryDatacenter instead",
    "retry_join_wan": "set consul:wanJoin instead",
}

MANAGED_CLIENT_KEYS = {
    **{k: v for k, v in MANAGED_SERVER_KEYS.items() if k not in ("bootstrap_expect", "node_name")},
    "server": "it is always false for client agents",
    "bootstrap_expect": "client agents never bootstrap",
    "retry_join": "clients join the servers by their stable pod DNS names",
    "rejoin_after_leave": "clients rejoin after a restart",
    "node_name": "client agents are named after their node (daemonset) or pod (statefulset)",
    "leave_on_terminate": "clients leave the cluster when their pod is deleted (the next agent on the node registers what consul:clientDataHostPath kept)",
    "node_id": "each client agent's node ID is derived from the datacenter and its node name",
}


class SettingsError(pulumi.RunError):
    """A stack setting is invalid. The message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        shown = "[secret]" if isinstance(value, SecretText) else _show(value)
        super().__init__(f"invalid {PROJECT}:{key} {shown}: {allowed}")


def _show(value: object) -> str:
    return json.dumps(value, separators=(", ", ": ")) if not isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Settings:
    """Everything the program deploys, validated."""

    namespace: str
    create_namespace: bool
    cluster: ClusterSpec
    servers: ServerSpec
    ui: UiSpec
    clients: ClientSpec
    dns: DnsSpec
    security: SecuritySpec
    snapshots: SnapshotSpec = field(default_factory=SnapshotSpec)
    allowed_changes: tuple[str, ...] = ()


T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)


class _Reader:
    """Reads raw string values of one stack, converting and checking each key once."""

    def __init__(self, raw: Mapping[str, str], secret_keys: Collection[str]) -> None:
        self._raw = raw
        self._secret_keys = secret_keys
        self.read: set[str] = set()

    def _text(self, key: str) -> str:
        self.read.add(key)
        if key not in self._raw:
            raise SettingsError(key, None, "the key is not set; Pulumi.yaml declares its default, so run from the project directory")
        return self._raw[key]

    def string(self, key: str) -> str:
        return self._text(key)

    def secret(self, key: str) -> SecretText | None:
        """A value that must be kept secret: empty means unset; set, it must be a Pulumi secret."""
        text = self._text(key)
        if not text:
            return None
        if key not in self._secret_keys:
            raise SettingsError(
                key,
                SecretText(text),
                f"must be set as a secret, or it sits in plain text in the stack file: pulumi config set --secret {PROJECT}:{key} ...",
            )
        return SecretText(text)

    def json(self, key: str, kind: type[T], what: str) -> T:
        text = self._text(key)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise SettingsError(key, text, f"must be {what} (YAML or JSON in the stack file)") from None
        if not isinstance(value, kind):
            raise SettingsError(key, value, f"must be {what}")
        return value

    def boolean(self, key: str) -> bool:
        text = self._text(key)
        if text not in ("true", "false"):
            raise SettingsError(key, text, "must be true or false")
        return text == "true"

    def integer(self, key: str) -> int:
        text = self._text(key)
        try:
            return int(text)
        except ValueError:
            raise SettingsError(key, text, "must be a whole number") from None

    def choice(self, key: str, allowed: tuple[E, ...]) -> E:
        text = self._text(key)
        for option in allowed:
            if option.value == text:
                return option
        names = " or ".join(f'"{o.value}"' for o in allowed)
        raise SettingsError(key, text, f"must be {names}")


def stack_config(project: str = PROJECT) -> dict[str, str]:
    """Every ``<project>:<key>`` value of the running stack, as bare key -> string."""
    merged = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    prefix = f"{project}:"
    return {key[len(prefix) :]: str(value) for key, value in merged.items() if key.startswith(prefix)}


def secret_config_keys(project: str = PROJECT) -> set[str]:
    """The bare keys of ``<project>:`` values that were set as secrets."""
    keys = set(runtime_config.get_config_secret_keys_env()) | set(runtime_config._SECRET_KEYS.get())
    prefix = f"{project}:"
    return {key[len(prefix) :] for key in keys if key.startswith(prefix)}


def load_settings(raw: Mapping[str, str], secret_keys: Collection[str] = (), warn: Callable[[str], None] = pulumi.log.warn) -> Settings:
    """Parse and validate the stack's ``consul:*`` settings (bare key -> string value).

    `secret_keys` are the keys whose values were set as Pulumi secrets.
    """
    reader = _Reader(raw, secret_keys)
    security = _security(reader)
    snapshots = _snapshots(reader)
    cluster = _cluster(reader, warn)
    servers = _servers(reader)
    # The primary of a federation (WAN peers or join addresses) makes the secondaries' replication token.
    primary_of_federation = not cluster.secondary and bool(servers.wan.join or servers.wan.peer_namespaces or servers.wan.peer_cidrs)
    settings = Settings(
        namespace=_namespace(reader),
        create_namespace=reader.boolean("createNamespace"),
        cluster=cluster,
        servers=servers,
        ui=_ui(reader),
        clients=_clients(reader),
        dns=_dns(reader),
        security=replace(
            security,
            snapshot_token=snapshots.enabled and security.acls,
            declares_replication_token=security.acls and primary_of_federation,
        ),
        snapshots=snapshots,
        allowed_changes=_allowed_changes(reader),
    )
    if settings.cluster.secondary:
        _check_secondary(settings)
    elif settings.security.replication_token is not None:
        raise SettingsError(
            "aclReplicationToken", settings.security.replication_token, "must be unset unless consul:primaryDatacenter is set (a secondary)"
        )
    if settings.clients.host_network and security.network_policy:
        raise SettingsError(
            "clientHostNetwork",
            True,
            "must be false while consul:networkPolicy is true: an agent on the host network sends from its node's address, "
            "which the servers' NetworkPolicy (admitting client agents by pod label) does not match on common CNIs, so the "
            "agents could not reach the servers; use consul:clientHostPorts, which keeps pod addresses, or turn networkPolicy off",
        )
    if settings.ui.exposed and security.network_policy and not settings.ui.api_cidrs:
        raise SettingsError(
            "serverApiCidrs",
            [],
            f"must name the networks the {settings.ui.service_type.value} UI Service is reached from while "
            "consul:networkPolicy is true (the servers' API admits only this instance's Jobs and consul:serverApiNamespaces): "
            'the networks of the UI\'s users (the Service keeps their addresses: externalTrafficPolicy Local), or ["0.0.0.0/0"] for anywhere',
        )
    unknown = sorted(set(raw) - reader.read)
    if unknown:
        raise SettingsError(
            unknown[0], raw[unknown[0]], f"is not a setting of this program; the settings are {', '.join(sorted(reader.read))}"
        )
    return settings


_CRON_FIELD = re.compile(r"[0-9A-Za-z*?/,-]+")
_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def _snapshots(reader: _Reader) -> SnapshotSpec:
    enabled = reader.boolean("snapshots")
    schedule = reader.string("snapshotSchedule")
    fields = schedule.split()
    if schedule not in _CRON_MACROS and (len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields)):
        raise SettingsError(
            "snapshotSchedule",
            schedule,
            f"must be a cron schedule of 5 fields (minute hour day month weekday) or one of {', '.join(_CRON_MACROS)}",
        )
    retention = reader.integer("snapshotRetention")
    if retention < 1:
        raise SettingsError("snapshotRetention", retention, "must be at least 1 (snapshots kept)")
    size, storage_class = _storage(reader, "snapshotStorageSize", "snapshotStorageClass")
    return SnapshotSpec(enabled, schedule, retention, size, storage_class)


def _storage(reader: _Reader, size_key: str, class_key: str) -> tuple[str, str | None]:
    """A claim's size (a positive quantity) and StorageClass (None: the cluster default)."""
    size = reader.string(size_key)
    amount = parse_quantity(size)
    if amount is None or amount <= 0:
        raise SettingsError(size_key, size, "must be a positive Kubernetes quantity such as 10Gi")
    storage_class = reader.string(class_key)
    if storage_class and not _is_dns_subdomain(storage_class):
        raise SettingsError(class_key, storage_class, "must be empty (the cluster default) or a StorageClass name")
    return size, storage_class or None


def _namespace(reader: _Reader) -> str:
    value = reader.string("namespace")
    if len(value) > MAX_LABEL or not _DNS_LABEL.fullmatch(value):
        raise SettingsError(
            "namespace",
            value,
            "must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
        )
    return value


def _cluster(reader: _Reader, warn: Callable[[str], None]) -> ClusterSpec:
    datacenter = _datacenter(reader, warn)
    primary = reader.string("primaryDatacenter")
    if primary and (not _is_datacenter_name(primary) or primary == datacenter):
        raise SettingsError(
            "primaryDatacenter",
            primary,
            f"must be empty (this datacenter is the primary) or the name of another datacenter than {datacenter!r}: "
            "1 to 63 lowercase letters, digits, '-' or '_'",
        )
    return ClusterSpec(
        image=_image(reader),
        datacenter=datacenter,
        domain=_domain(reader, warn),
        recursors=_recursors(reader),
        primary_datacenter=primary,
    )


_WAN_ADDRESS = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?$")


def _wan(reader: _Reader) -> WanSpec:
    join = reader.json("wanJoin", list, "a list of server addresses")
    for value in join:
        if not isinstance(value, str) or not _WAN_ADDRESS.fullmatch(value):
            raise SettingsError(
                "wanJoin",
                join,
                f'each entry must be a host name or IP, with an optional :port, such as "consul-server.consul-dc1.svc" (got {_show(value)})',
            )
    return WanSpec(
        join=tuple(join), peer_namespaces=_namespace_names(reader, "wanPeerNamespaces"), peer_cidrs=_cidrs(reader, "wanPeerCidrs")
    )


def _image(reader: _Reader) -> str:
    value = reader.string("image")
    match = _IMAGE.fullmatch(value)
    if match is None:
        raise SettingsError("image", value, "must be an image reference such as hashicorp/consul:2.0.3")
    tag, digest = match["tag"], match["digest"]
    if digest:
        return value
    if tag is None or tag == "latest":
        raise SettingsError(
            "image", value, "must be pinned to a release tag (hashicorp/consul:X.Y.Z) or a sha256 digest, never latest or no tag"
        )
    release = _RELEASE_TAG.fullmatch(tag)
    if release is None:
        raise SettingsError(
            "image", value, "must be pinned to a release tag X.Y.Z (a moving tag such as 1.22 changes under you) or a sha256 digest"
        )
    if (int(release["major"]), int(release["minor"])) < OLDEST_SUPPORTED_CONSUL:
        oldest = ".".join(map(str, OLDEST_SUPPORTED_CONSUL))
        raise SettingsError(
            "image", value, f"Consul {tag} is older than {oldest}, the oldest release whose agent config this program writes"
        )
    version = (int(release["major"]), int(release["minor"]), int(release["patch"]))
    if version in REFUSED_CONSUL_RELEASES:
        raise SettingsError("image", value, REFUSED_CONSUL_RELEASES[version])
    return value


def _is_datacenter_name(value: str) -> bool:
    """A name Consul takes for a datacenter: 1 to 63 lowercase letters, digits, '-' or '_'."""
    return len(value) <= MAX_LABEL and _DATACENTER.fullmatch(value) is not None


def _datacenter(reader: _Reader, warn: Callable[[str], None]) -> str:
    value = reader.string("datacenter")
    if not _is_datacenter_name(value):
        raise SettingsError("datacenter", value, "must be 1 to 63 lowercase letters, digits, '-' or '_' (Consul refuses other names)")
    if "_" in value:
        warn(
            f"{PROJECT}:datacenter \"{value}\" has an '_': the names Consul builds from it (web.service.{value}.consul,"
            f" server.{value}.consul in the TLS certificates) are not valid hostnames, and Consul's releases after 1.16 warn"
            " about it. Prefer '-' for a new datacenter; an existing one can't be renamed in place, so this is a warning, not a refusal."
        )
    return value


def _domain(reader: _Reader, warn: Callable[[str], None]) -> str:
    value = reader.string("domain")
    parts = value.rstrip(".").split(".")
    if not value or len(value) > 253 or not all(len(p) <= MAX_LABEL and _DNS_SUBDOMAIN_PART.fullmatch(p) for p in parts):
        raise SettingsError("domain", value, "must be a lowercase DNS name such as consul or consul.example.internal")
    if value.rstrip(".") in ("cluster.local", "svc.cluster.local") or value.rstrip(".").endswith(".cluster.local"):
        warn(
            f'{PROJECT}:domain "{value}" shadows the Kubernetes DNS suffix cluster.local: forwarding it to Consul breaks Service lookups. Prefer "consul".'
        )
    return value


def _recursors(reader: _Reader) -> tuple[str, ...]:
    values = reader.json("recursors", list, "a list of DNS server addresses")
    for value in values:
        if not isinstance(value, str) or not _is_address(value):
            raise SettingsError("recursors", values, f"each entry must be an IP address or IP:port (got {_show(value)})")
    return tuple(values)


def _is_address(text: str) -> bool:
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                return False
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return port is None or (port.isdigit() and 1 <= int(port) <= 65535)


def _servers(reader: _Reader) -> ServerSpec:
    replicas = reader.integer("serverReplicas")
    if replicas not in SERVER_REPLICA_CHOICES:
        raise SettingsError(
            "serverReplicas",
            replicas,
            "must be 1, 3, 5 or 7: an odd count, since an even one adds no failure tolerance, and at most 7, since every write waits for a majority",
        )
    partition = reader.integer("serverUpdatePartition")
    if not 0 <= partition <= replicas:
        raise SettingsError("serverUpdatePartition", partition, f"must be between 0 and consul:serverReplicas ({replicas})")
    storage_size, storage_class = _storage(reader, "serverStorageSize", "serverStorageClass")
    priority_class = reader.string("serverPriorityClassName")
    if priority_class and not _is_dns_subdomain(priority_class):
        raise SettingsError("serverPriorityClassName", priority_class, "must be empty or a PriorityClass name")
    return ServerSpec(
        replicas=replicas,
        storage_size=storage_size,
        storage_class=storage_class,
        anti_affinity=reader.choice("serverAntiAffinity", (Placement.REQUIRED, Placement.PREFERRED)),
        zone_spread=reader.choice("serverZoneSpread", tuple(Placement)),
        update_partition=partition,
        resources=_resources(reader, "serverResources"),
        tolerations=_tolerations(reader, "serverTolerations"),
        node_selector=_node_selector(reader, "serverNodeSelector"),
        priority_class_name=priority_class or None,
        extra_config=_extra_config(reader, "serverExtraConfig", MANAGED_SERVER_KEYS),
        wan=_wan(reader),
    )


def _ui(reader: _Reader) -> UiSpec:
    return UiSpec(
        service_type=reader.choice("uiServiceType", tuple(UiServiceType)),
        annotations=_annotations(reader, "uiServiceAnnotations"),
        api_namespaces=_namespace_names(reader, "serverApiNamespaces"),
        api_cidrs=_cidrs(reader, "serverApiCidrs"),
    )


def _clients(reader: _Reader) -> ClientSpec:
    mode = reader.choice("clientMode", tuple(ClientMode))
    replicas = reader.integer("clientReplicas")
    if not 1 <= replicas <= MAX_CLIENT_REPLICAS:
        raise SettingsError(
            "clientReplicas",
            replicas,
            f"must be between 1 and {MAX_CLIENT_REPLICAS} (it is used in clientMode statefulset and ignored in daemonset mode)",
        )
    host_ports = reader.boolean("clientHostPorts")
    host_network = reader.boolean("clientHostNetwork")
    for key, enabled in (("clientHostPorts", host_ports), ("clientHostNetwork", host_network)):
        if enabled and mode is not ClientMode.DAEMONSET:
            raise SettingsError(
                key,
                enabled,
                'may only be true with consul:clientMode "daemonset": with fewer agents than nodes, a node address reaches no agent',
            )
    if host_ports and host_network:
        raise SettingsError(
            "clientHostPorts",
            host_ports,
            "must be false when consul:clientHostNetwork is true: the host network already puts the agent on the node's address",
        )
    return ClientSpec(
        mode=mode,
        replicas=replicas,
        host_ports=host_ports,
        host_network=host_network,
        resources=_resources(reader, "clientResources"),
        tolerations=_tolerations(reader, "clientTolerations"),
        node_selector=_node_selector(reader, "clientNodeSelector"),
        extra_config=_extra_config(reader, "clientExtraConfig", MANAGED_CLIENT_KEYS),
        api_namespaces=_namespace_names(reader, "clientApiNamespaces"),
        data_host_path=_data_host_path(reader, mode),
    )


def _data_host_path(reader: _Reader, mode: ClientMode) -> str:
    path = reader.string("clientDataHostPath")
    if not path:
        return ""
    if mode is not ClientMode.DAEMONSET:
        raise SettingsError(
            "clientDataHostPath", path, 'must be empty in clientMode "statefulset": a node directory fits one agent per node only'
        )
    parts = path.split("/")
    if not path.startswith("/") or path == "/" or any(part in (".", "..") for part in parts) or "//" in path or path.endswith("/"):
        raise SettingsError(
            "clientDataHostPath", path, 'must be an absolute directory path other than "/", such as "/var/lib/consul-agent"'
        )
    return path


def _check_secondary(settings: Settings) -> None:
    """What a secondary datacenter must share with its primary, and what it cannot do yet."""
    primary = f"when consul:primaryDatacenter is set ({settings.cluster.primary_datacenter})"
    security = settings.security
    if not settings.servers.wan.join:
        raise SettingsError("wanJoin", [], f"must list the primary datacenter's server addresses {primary}")
    if security.gossip_encryption and security.gossip_key is None:
        raise SettingsError("gossipKey", None, f"must be the primary datacenter's gossip key {primary}: one keyring encrypts WAN gossip")
    if security.tls and security.ca_cert is None:
        raise SettingsError(
            "tlsCaCert",
            None,
            f"must be the primary datacenter's CA (with tlsCaKey) {primary}: servers verify each other's certificates across datacenters",
        )
    if security.acls and security.management_token is None:
        raise SettingsError(
            "aclManagementToken",
            None,
            f"must be the primary datacenter's management token {primary}: it is global, and this datacenter's ACL Job writes with it",
        )
    if security.acls and security.replication_token is None:
        raise SettingsError(
            "aclReplicationToken",
            None,
            f"must be the primary's aclReplicationToken output {primary}: the servers replicate ACLs with it",
        )
    if security.kubernetes_auth is not None:
        raise SettingsError(
            "kubernetesAuth",
            True,
            f"must be false {primary}: auth methods are global, and every datacenter would declare its own under one name",
        )


def _allowed_changes(reader: _Reader) -> tuple[str, ...]:
    values = reader.json("allowedChanges", list, "a list of setting names")
    for value in values:
        if value not in GUARDED_SETTINGS:
            names = ", ".join(GUARDED_SETTINGS)
            raise SettingsError("allowedChanges", values, f"each entry must be one of {names} (got {_show(value)})")
    return tuple(values)


def _namespace_names(reader: _Reader, key: str, *, any_namespace: bool = False) -> tuple[str, ...]:
    """A list of namespace names (DNS-1123 labels); with `any_namespace`, also the list just ["*"]."""
    values = reader.json(key, list, "a list of namespace names")
    if any_namespace and values == [ANY_NAMESPACE]:
        return (ANY_NAMESPACE,)
    allowed_extra = ', or the list just ["*"]' if any_namespace else ""
    for value in values:
        if not isinstance(value, str) or len(value) > MAX_LABEL or not _DNS_LABEL.fullmatch(value):
            raise SettingsError(key, values, f"each entry must be a namespace name (a DNS-1123 label{allowed_extra}; got {_show(value)})")
    return tuple(values)


def _cidrs(reader: _Reader, key: str) -> tuple[str, ...]:
    values = reader.json(key, list, "a list of CIDRs")
    for value in values:
        try:
            ipaddress.ip_network(value if isinstance(value, str) and "/" in value else "not a CIDR")
        except ValueError:
            raise SettingsError(
                key, values, f'each entry must be a network in CIDR notation, such as "10.0.0.0/8" (got {_show(value)})'
            ) from None
    return tuple(values)


def _dns(reader: _Reader) -> DnsSpec:
    enabled = reader.boolean("dnsService")
    cluster_ip = reader.string("dnsClusterIP")
    if cluster_ip:
        try:
            ipaddress.ip_address(cluster_ip)
        except ValueError:
            raise SettingsError(
                "dnsClusterIP", cluster_ip, "must be empty (assigned by the cluster) or an IP address in the Service CIDR"
            ) from None
        if not enabled:
            raise SettingsError("dnsClusterIP", cluster_ip, "must be empty when consul:dnsService is false")
    forward = reader.choice("coreDnsForward", tuple(CoreDnsForward))
    if forward is CoreDnsForward.ON and not enabled:
        raise SettingsError(
            "coreDnsForward", forward.value, f"must not be on while {PROJECT}:dnsService is false (it forwards to consul-dns)"
        )
    distribution = reader.choice("dnsTrafficDistribution", tuple(DnsTrafficDistribution))
    if distribution is not DnsTrafficDistribution.ANY and not enabled:
        raise SettingsError("dnsTrafficDistribution", distribution.value, f"must be empty when {PROJECT}:dnsService is false")
    return DnsSpec(enabled=enabled, cluster_ip=cluster_ip or None, coredns_forward=forward, traffic_distribution=distribution)


def _security(reader: _Reader) -> SecuritySpec:
    gossip = reader.boolean("gossipEncryption")
    tls = reader.boolean("tls")
    acls = reader.boolean("acls")
    network_policy = reader.boolean("networkPolicy")
    gossip_key = reader.secret("gossipKey")
    if gossip_key is not None:
        from .keys import check_gossip_key  # cryptography only where material is brought

        problem = check_gossip_key(gossip_key.value)
        if problem:
            raise SettingsError("gossipKey", gossip_key, problem)
        if not gossip:
            raise SettingsError("gossipKey", gossip_key, "must be unset when consul:gossipEncryption is false")
    ca_cert = reader.string("tlsCaCert") or None
    ca_key = reader.secret("tlsCaKey")
    if (ca_cert is None) != (ca_key is None):
        given, missing = ("tlsCaCert", "tlsCaKey") if ca_cert else ("tlsCaKey", "tlsCaCert")
        raise SettingsError(
            given,
            "(PEM)" if given == "tlsCaCert" else ca_key,
            f"goes with consul:{missing}: bring both the CA certificate and its key, or neither",
        )
    if ca_cert is not None and ca_key is not None:
        from .keys import check_ca

        problem = check_ca(ca_cert, ca_key.value)
        if problem:
            raise SettingsError("tlsCaKey" if "key" in problem else "tlsCaCert", ca_key if "key" in problem else "(PEM)", problem)
        if not tls:
            raise SettingsError("tlsCaCert", "(PEM)", "must be unset when consul:tls is false")
    certificates = _certificates(reader, tls)
    trusted = reader.string("tlsTrustedCaCerts")
    trusted_ca_certs: tuple[str, ...] = ()
    if trusted:
        from .keys import ca_certificates, check_ca_bundle

        problem = check_ca_bundle(trusted)
        if problem:
            raise SettingsError("tlsTrustedCaCerts", "(PEM)", problem)
        if not tls:
            raise SettingsError("tlsTrustedCaCerts", "(PEM)", "must be unset when consul:tls is false")
        trusted_ca_certs = tuple(ca_certificates(trusted))
    management_token = reader.secret("aclManagementToken")
    if management_token is not None:
        if not _is_uuid(management_token.value):
            raise SettingsError("aclManagementToken", management_token, "must be a Consul token SecretID (a UUID)")
        if not acls:
            raise SettingsError("aclManagementToken", management_token, "must be unset when consul:acls is false")
    service_tokens = _service_tokens(reader, acls)
    replication_token = reader.secret("aclReplicationToken")
    if replication_token is not None and not _is_uuid(replication_token.value):
        raise SettingsError(
            "aclReplicationToken", replication_token, "must be a Consul token SecretID (a UUID): the primary's aclReplicationToken output"
        )
    return SecuritySpec(
        replication_token=replication_token,
        service_tokens=service_tokens,
        kubernetes_auth=_kubernetes_auth(reader, acls),
        gossip_encryption=gossip,
        tls=tls,
        acls=acls,
        network_policy=network_policy,
        gossip_key=gossip_key,
        ca_cert=ca_cert,
        ca_key=ca_key,
        trusted_ca_certs=trusted_ca_certs,
        management_token=management_token,
        certificates=certificates,
    )


def _certificates(reader: _Reader, tls: bool) -> CertificateSpec:
    validity = reader.integer("tlsServerCertValidity")
    renew_before = reader.integer("tlsRenewBefore")
    if validity < 1:
        raise SettingsError("tlsServerCertValidity", validity, "must be at least 1 (days)")
    if not 0 <= renew_before <= validity:
        raise SettingsError("tlsRenewBefore", renew_before, f"must be from 0 to consul:tlsServerCertValidity ({validity} days)")
    return CertificateSpec(validity_days=validity, renew_before_days=renew_before)


MAX_SERVICE_NAME = 42  # "consul-service-token-" + the name stays a 63-character label


def _service_tokens(reader: _Reader, acls: bool) -> tuple[str, ...]:
    values = reader.json("serviceTokens", list, "a list of Consul service names")
    for value in values:
        if not isinstance(value, str) or len(value) > MAX_SERVICE_NAME or not _DNS_LABEL.fullmatch(value):
            raise SettingsError(
                "serviceTokens",
                values,
                f"each entry must be a service name: a DNS-1123 label of at most {MAX_SERVICE_NAME} characters (got {_show(value)})",
            )
    if len(set(values)) != len(values):
        raise SettingsError("serviceTokens", values, "each service may appear once")
    if values and not acls:
        raise SettingsError("serviceTokens", values, "must be empty when consul:acls is false (without ACLs no token is needed)")
    return tuple(values)


ANY_NAMESPACE = "*"
_GO_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
# What Consul accepts as an auth method's MaxTokenTTL (acl.token_min_expiration_ttl and
# token_max_expiration_ttl at their defaults).
TOKEN_TTL_BOUNDS = (60, 24 * 3600)


def _kubernetes_auth(reader: _Reader, acls: bool) -> KubernetesAuthSpec | None:
    enabled = reader.boolean("kubernetesAuth")
    ttl_text = reader.string("kubernetesAuthTokenTtl")
    namespaces = _namespace_names(reader, "kubernetesAuthNamespaces", any_namespace=True)
    match = _GO_DURATION.fullmatch(ttl_text)
    seconds = sum(int(n or 0) * unit for n, unit in zip(match.groups(), (3600, 60, 1), strict=True)) if match and ttl_text else 0
    low, high = TOKEN_TTL_BOUNDS
    if not low <= seconds <= high:
        raise SettingsError(
            "kubernetesAuthTokenTtl", ttl_text, 'must be a duration from 1m to 24h, such as "1h" or "15m" (Consul\'s bounds)'
        )
    any_namespace = namespaces == (ANY_NAMESPACE,)
    if not enabled:
        if namespaces:
            raise SettingsError("kubernetesAuthNamespaces", list(namespaces), "must be empty when consul:kubernetesAuth is false")
        return None
    if not acls:
        raise SettingsError("kubernetesAuth", True, "needs consul:acls (the auth method hands out ACL tokens)")
    if not namespaces:
        raise SettingsError(
            "kubernetesAuthNamespaces",
            list(namespaces),
            'must list the namespaces whose service accounts may log in with consul:kubernetesAuth (or be ["*"] for every '
            "namespace: then whoever may create a ServiceAccount named like a service anywhere may write that service)",
        )
    hours, rest = divmod(seconds, 3600)
    go_duration = f"{hours}h{rest // 60}m{rest % 60}s" if hours else f"{rest // 60}m{rest % 60}s"
    return KubernetesAuthSpec(token_ttl=go_duration, namespaces=() if any_namespace else namespaces)


def _is_uuid(text: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text) is not None


def _annotations(reader: _Reader, key: str) -> dict[str, str]:
    value = reader.json(key, dict, "an object of annotation keys to string values")
    for name, text in value.items():
        if not _LABEL_KEY.fullmatch(name) or not isinstance(text, str):
            raise SettingsError(
                key, value, f"each entry must be a valid annotation key and a string value (got {_show(name)}: {_show(text)})"
            )
    return dict(value)


def _is_dns_subdomain(text: str) -> bool:
    return len(text) <= 253 and all(_DNS_SUBDOMAIN_PART.fullmatch(p) for p in text.split("."))


def _resources(reader: _Reader, key: str) -> Resources:
    value = reader.json(key, dict, "an object {requests: {cpu, memory}, limits: {cpu, memory}}")
    unknown = set(value) - {"requests", "limits"}
    if unknown:
        raise SettingsError(key, value, f"may only have requests and limits (not {', '.join(sorted(unknown))})")
    parsed: dict[str, dict[str, str]] = {}
    for part in ("requests", "limits"):
        entries = value.get(part, {})
        if not isinstance(entries, dict) or set(entries) - {"cpu", "memory"}:
            raise SettingsError(key, value, f"{part} must be an object with cpu and/or memory")
        for resource, quantity in entries.items():
            amount = parse_quantity(str(quantity))
            if amount is None or amount <= 0:
                raise SettingsError(key, value, f"{part}.{resource} must be a positive Kubernetes quantity (got {_show(quantity)})")
        parsed[part] = {k: str(v) for k, v in entries.items()}
    for resource, request in parsed["requests"].items():
        limit = parsed["limits"].get(resource)
        if limit is not None and parse_quantity(request) > parse_quantity(limit):  # type: ignore[operator]
            raise SettingsError(key, value, f"requests.{resource} ({request}) may not exceed limits.{resource} ({limit})")
    return Resources(requests=parsed["requests"], limits=parsed["limits"])


_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _tolerations(reader: _Reader, key: str) -> tuple[Toleration, ...]:
    values = reader.json(key, list, "a list of tolerations")
    result = []
    for item in values:
        if not isinstance(item, dict):
            raise SettingsError(key, values, f"each toleration must be an object (got {_show(item)})")
        unknown = set(item) - _TOLERATION_KEYS
        if unknown:
            raise SettingsError(
                key, values, f"a toleration may only have {', '.join(sorted(_TOLERATION_KEYS))} (not {', '.join(sorted(unknown))})"
            )
        operator = item.get("operator", "Equal")
        if operator not in ("Equal", "Exists"):
            raise SettingsError(key, values, f'operator must be "Equal" or "Exists" (got {_show(operator)})')
        if operator == "Exists" and "value" in item:
            raise SettingsError(key, values, 'a toleration with operator "Exists" takes no value')
        effect = item.get("effect")
        if effect is not None and effect not in _EFFECTS:
            raise SettingsError(key, values, f"effect must be one of {', '.join(_EFFECTS)} (got {_show(effect)})")
        seconds = item.get("tolerationSeconds")
        if seconds is not None and (not isinstance(seconds, int) or isinstance(seconds, bool) or effect != "NoExecute"):
            raise SettingsError(key, values, "tolerationSeconds must be a whole number and goes with effect NoExecute")
        if "key" not in item and operator != "Exists":
            raise SettingsError(key, values, 'a toleration without a key must use operator "Exists"')
        for text_key in ("key", "value"):
            if text_key in item and not isinstance(item[text_key], str):
                raise SettingsError(key, values, f"{text_key} must be a string (got {_show(item[text_key])})")
        result.append(
            Toleration(key=item.get("key"), operator=operator, value=item.get("value"), effect=effect, toleration_seconds=seconds)
        )
    return tuple(result)


def _node_selector(reader: _Reader, key: str) -> dict[str, str]:
    value = reader.json(key, dict, "an object of node label keys to values")
    for label, text in value.items():
        if not _LABEL_KEY.fullmatch(label) or not isinstance(text, str) or not _LABEL_VALUE.fullmatch(text):
            raise SettingsError(
                key, value, f"each entry must be a valid label key and string label value (got {_show(label)}: {_show(text)})"
            )
    return dict(value)


def _extra_config(reader: _Reader, key: str, managed: Mapping[str, str]) -> dict[str, Any]:
    value = reader.json(key, dict, "a JSON object of Consul agent configuration")
    for name, why in managed.items():
        if name in value:
            raise SettingsError(key, value, f'sets "{name}", which the program manages: {why}')
    if not value:
        return {}
    import jsonschema  # loaded only when there is extra config to check

    error = jsonschema.exceptions.best_match(agent_config_validator().iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise SettingsError(key, value, f"is not valid Consul agent configuration at {where}: {error.message}")
    return dict(value)


@cache
def agent_config_validator() -> Validator:
    """The validator for Consul agent config files (Consul's config structs as a JSON Schema)."""
    import jsonschema

    schema = json.loads((Path(__file__).parent / "consul-agent-config.schema.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    return validator_class(schema)
