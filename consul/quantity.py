"""Kubernetes resource quantities ("100m", "10Gi", "1.5"), parsed to exact decimals."""

from __future__ import annotations

import re
from decimal import Decimal

_SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}

# The serialized form Kubernetes accepts (apimachinery resource.Quantity), without
# the rarely used exponent form ("1e3"), which we refuse rather than half-support.
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>[numkMGTPE]|[KMGTPE]i)?$")


def parse_quantity(text: str) -> Decimal | None:
    """Return the quantity's value, or None when `text` is not a Kubernetes quantity."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        return None
    return Decimal(match["number"]) * _SUFFIXES[match["suffix"] or ""]
