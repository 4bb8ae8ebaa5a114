"""Secrets the bed's tests handle (a management token, a gossip key, anything read from a Secret)
kept out of pytest's report of a failure.

pytest prints each failing frame's arguments with repr(), and explains a failed ``==`` between two
strings with a diff of their text. A :class:`Secret` is a ``str`` whose repr names no value, and
:func:`pytest_assertrepr_compare` (imported into the e2e conftest, where pytest finds it) explains
a comparison involving one without quoting either side.
"""

from __future__ import annotations

from typing import Any


class Secret(str):
    """A string that compares, hashes and formats as its value, and whose repr hides it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<secret, {len(self)} characters>"


def pytest_assertrepr_compare(op: str, left: Any, right: Any) -> list[str] | None:
    """pytest's hook: a comparison with a Secret on either side is explained without its values."""
    if isinstance(left, Secret) or isinstance(right, Secret):
        return [f"{type(left).__name__} {op} {type(right).__name__}: false (a secret's value is not shown)"]
    return None
