"""Kubernetes recommended labels, built once per component and reused for selectors and pods."""

from __future__ import annotations

from dataclasses import dataclass

APP_NAME = "consul"


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


def _label_value(text: str) -> str:
    """A label value: at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:63]
    return cleaned.strip("-_.")
