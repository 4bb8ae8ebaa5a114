"""Pods that run the consul CLI against the servers' API: the ACL and gossip Jobs, the snapshots.

Each reaches the servers through their Service (HTTPS with the CA when TLS is on), runs one shell
script as the image's unprivileged user on a read-only root with a scratch /tmp, and mounts only
the Secret keys it needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes.core.v1 as core
import pulumi_kubernetes.meta.v1 as meta

from . import agent_config as cfg
from . import pods
from .labels import Labels
from .model import Resources

# On a Job: pulumi-kubernetes replaces the Job at the next `up` when the live one has not succeeded,
# so a Job that failed runs again once its cause is fixed, though its template did not change.
RERUN_WHEN_FAILED = {"pulumi.com/replaceUnready": "true"}
# What the Jobs' scripts start with: curl's time bounds and TLS option, the management token (when ACLs are on) as
# a header file that curl reads with -H @file, and the wait for a leader. A secret reaches a file or
# a pipe only through the shell itself (a here-document) or a program reading a file (cat, jq
# --rawfile), never a command line, where anyone on the node could read it. The header file is
# the container's own and in memory, as the Secret it is copied from is: /dev/shm (a tmpfs), mode
# 0600, removed when the script ends. Every call is bounded in time: the servers' headless Service
# also resolves to pods that are not Ready (a server restarting, a node gone), and a call to one of
# them must fail and be tried again, not hang on an address that never answers.
API_PRELUDE = r"""
curl_opts="--connect-timeout 5 --max-time 30"
if [ -n "${CONSUL_CACERT:-}" ]; then curl_opts="$curl_opts --cacert $CONSUL_CACERT"; fi
umask 077
headers=/dev/shm/consul-headers
trap 'rm -f "$headers"' EXIT
: > "$headers"
if [ -n "${CONSUL_HTTP_TOKEN_FILE:-}" ]; then
  management=$(cat "$CONSUL_HTTP_TOKEN_FILE")
  cat > "$headers" <<EOF
X-Consul-Token: $management
EOF
fi
echo "waiting for a Consul leader at $CONSUL_HTTP_ADDR"
until curl -s $curl_opts "$CONSUL_HTTP_ADDR/v1/status/leader" | grep -qE '".+"'; do sleep 3; done
"""
SMALL = Resources(requests={"cpu": "50m", "memory": "50Mi"}, limits={"cpu": "200m", "memory": "100Mi"})


@dataclass
class CliPod:
    """The environment and volumes of one consul CLI pod, built up by its component."""

    env: list[core.EnvVarArgs] = field(default_factory=list)
    volumes: list[core.VolumeArgs] = field(default_factory=list)
    mounts: list[core.VolumeMountArgs] = field(default_factory=list)

    def set_env(self, **values: pulumi.Input[str]) -> None:
        self.env += [core.EnvVarArgs(name=name, value=value) for name, value in values.items()]

    def mount_secret(self, volume: str, secret: pulumi.Input[str], path: str, key: str | None = None) -> None:
        """Secret `secret` read-only at `path`: every key, or only `key` (as a file of that name)."""
        items = [core.KeyToPathArgs(key=key, path=key)] if key else None
        self.volumes.append(
            core.VolumeArgs(name=volume, secret=core.SecretVolumeSourceArgs(secret_name=secret, default_mode=0o440, items=items))
        )
        self.mounts.append(core.VolumeMountArgs(name=volume, mount_path=path, read_only=True))

    def mount_claim(self, volume: str, claim: pulumi.Input[str], path: str) -> None:
        self.volumes.append(
            core.VolumeArgs(name=volume, persistent_volume_claim=core.PersistentVolumeClaimVolumeSourceArgs(claim_name=claim))
        )
        self.mounts.append(core.VolumeMountArgs(name=volume, mount_path=path))

    def template(
        self,
        labels: Labels,
        image: pulumi.Input[str],
        script: str,
        resources: Resources = SMALL,
        annotations: Mapping[str, pulumi.Input[str]] | None = None,
    ) -> core.PodTemplateSpecArgs:
        """A run-once pod running `script` with ``/bin/sh -ec``; its container is named after the component."""
        return core.PodTemplateSpecArgs(
            metadata=meta.ObjectMetaArgs(labels=labels.all, annotations=dict(annotations) if annotations else None),
            spec=core.PodSpecArgs(
                restart_policy="Never",
                automount_service_account_token=False,
                security_context=pods.pod_security_context(),
                volumes=self.volumes,
                containers=[
                    core.ContainerArgs(
                        name=labels.component,
                        image=image,
                        command=["/bin/sh", "-ec", script],
                        env=self.env,
                        resources=pods.resource_requirements(resources),
                        security_context=pods.container_security_context(),
                        volume_mounts=self.mounts,
                    )
                ],
            ),
        )


def server_api_pod(server_service: pulumi.Input[str], namespace: pulumi.Output[str], ca_secret: pulumi.Input[str] | None) -> CliPod:
    """A CLI pod with ``CONSUL_HTTP_ADDR`` set to the servers' Service (and the CA for HTTPS), and a scratch /tmp."""
    scheme, port = ("https", cfg.HTTPS_PORT) if ca_secret is not None else ("http", cfg.HTTP_PORT)
    pod = CliPod()
    pod.env.append(
        core.EnvVarArgs(name="CONSUL_HTTP_ADDR", value=pulumi.Output.concat(f"{scheme}://", server_service, ".", namespace, f".svc:{port}"))
    )
    pod.volumes.append(core.VolumeArgs(name="tmp", empty_dir=core.EmptyDirVolumeSourceArgs()))
    pod.mounts.append(core.VolumeMountArgs(name="tmp", mount_path="/tmp"))
    if ca_secret is not None:
        pod.set_env(CONSUL_CACERT=cfg.CA_FILE)
        pod.mount_secret("tls-ca", ca_secret, f"{cfg.TLS_DIR}/ca")
    return pod
