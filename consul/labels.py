"""Kubernetes recommended labels, built once per component and reused for selectors and pods."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes.meta.v1 as meta

APP_NAME = "consul"
# The components of the Jobs, the pods that call the servers' HTTP API (a restore runs as a Job
# made from the snapshot CronJob, with its labels).
ACL_BOOTSTRAP = "acl-bootstrap"
GOSSIP_ROTATION = "gossip-rotation"
SNAPSHOT = "snapshot"
JOB_COMPONENTS = (ACL_BOOTSTRAP, GOSSIP_ROTATION, SNAPSHOT)


@dataclass(frozen=True)
class Labels:
    """The recommended labels of one Consul tier (``server`` or ``client``) of one instance."""

    instance: str
    component: str
    version: str

    @property
    def selector(self) -> dict[str, str]:
        """The stable subset used in selectors: never changes over an object's life."""
        return {
            "app.kubernetes.io/name": APP_NAME,
            "app.kubernetes.io/instance": self.instance,
            "app.kubernetes.io/component": self.component,
        }

    @property
    def all(self) -> dict[str, str]:
        """Every recommended label, for object metadata and pod templates."""
        return {
            **self.selector,
            "app.kubernetes.io/part-of": APP_NAME,
            "app.kubernetes.io/managed-by": "pulumi",
            "app.kubernetes.io/version": _label_value(self.version),
        }

    def metadata(self, name: str, namespace: pulumi.Input[str], annotations: Mapping[str, str] | None = None) -> meta.ObjectMetaArgs:
        """Metadata of an object of this tier: its stable name, the namespace, every label."""
        return meta.ObjectMetaArgs(name=name, namespace=namespace, labels=self.all, annotations=dict(annotations) if annotations else None)


def _label_value(text: str) -> str:
    """A label value: at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:63]
    return cleaned.strip("-_.")
