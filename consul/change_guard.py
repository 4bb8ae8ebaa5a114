"""The guard of disruptive setting changes: refused on a deployed stack before anything changes.

Some settings cannot change on a running cluster as a plain roll:
  - the servers' storage sits in the StatefulSet's volumeClaimTemplates, which Kubernetes never
    updates, so the provider would delete the StatefulSet and every server with it;
  - gossip encryption or TLS switched on or off: the first restarted server no longer speaks its
    peers' protocol, and the roll stalls with the cluster split.

:class:`ChangeGuard` (the consul-keys provider's ``ChangeGuard``) holds these settings' values in
the stack's state. The provider compares the new values with the state's in its check, the first
step of an update, and refuses each change that `consul:allowedChanges` does not list, naming the
setting, both values and the README's procedure. The program declares the guard first and waits
for it, so a refused change stops `pulumi preview` and `pulumi up` before any other resource is
looked at. A first deployment has no state to compare with, and a render (no cluster) no guard.
"""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from .generated import PROVIDER, PROVIDER_VERSION
from .settings import GUARDED_SETTINGS, PROJECT, Settings

RESOURCE_TYPE = f"{PROVIDER}:index:ChangeGuard"

# Each guarded setting, and why its change is refused with the procedure to follow instead.
_REINSTALL = (
    "build a new cluster from a snapshot: save one, pulumi destroy, delete the server claims, pulumi up with the new setting, "
    'make restore, then run the ACL Job again (README, "Settings a running cluster refuses")'
)
_CLAIM_TEMPLATE = (
    "the {what} is in the server StatefulSet's volumeClaimTemplates, which Kubernetes cannot change, so the "
    "StatefulSet would be replaced and every server deleted at once; orphan the StatefulSet first and list the key "
    f'in {PROJECT}:allowedChanges (README, "Settings a running cluster refuses")'
)
GUARDED: Mapping[str, str] = {
    "serverStorageSize": _CLAIM_TEMPLATE.format(what="size"),
    "serverStorageClass": _CLAIM_TEMPLATE.format(what="class"),
    "gossipEncryption": (
        "switching gossip encryption on or off rolls the agents one at a time, and a restarted agent cannot gossip "
        f"with the others, so the cluster splits; {_REINSTALL}"
    ),
    "tls": (
        "switching TLS on or off rolls the servers one at a time, and a restarted server cannot talk to its peers, "
        f"so the roll stalls with the cluster split; {_REINSTALL}"
    ),
}


assert tuple(GUARDED) == GUARDED_SETTINGS, "every guarded setting has its reason"


def guarded_values(settings: Settings) -> dict[str, str]:
    """The guarded settings' values as the stack's configuration gives them."""
    return {
        "serverStorageSize": settings.servers.storage_size,
        "serverStorageClass": settings.servers.storage_class or "",
        "gossipEncryption": str(settings.security.gossip_encryption).lower(),
        "tls": str(settings.security.tls).lower(),
    }


class ChangeGuard(pulumi.CustomResource):
    """The guarded settings' values, kept in the state; a change not allowed fails the check."""

    def __init__(self, name: str, values: Mapping[str, str], allowed: tuple[str, ...]) -> None:
        props = {
            "values": {f"{PROJECT}:{key}": value for key, value in values.items()},
            "reasons": {f"{PROJECT}:{key}": GUARDED[key] for key in values},
            "allowed": [f"{PROJECT}:{key}" for key in allowed],
        }
        super().__init__(RESOURCE_TYPE, name, props, pulumi.ResourceOptions(version=PROVIDER_VERSION))


async def guard_changes(name: str, settings: Settings) -> None:
    """Declare the guard and return once the engine has checked it: a refused change fails the
    update there, before the program declares anything else. While keys are allowed, every
    preview and up says so: a list left set keeps those settings unguarded."""
    if settings.allowed_changes:
        pulumi.log.warn(
            f"{PROJECT}:allowedChanges lets {', '.join(settings.allowed_changes)} change on this deployed stack unguarded; "
            f"remove it once the procedure is done (pulumi config rm {PROJECT}:allowedChanges)"
        )
    guard = ChangeGuard(name, guarded_values(settings), settings.allowed_changes)
    await guard.urn.future()
