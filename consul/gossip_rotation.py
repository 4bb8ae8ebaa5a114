"""ConsulGossipRotation: a Job that moves a running cluster to the gossip key in its Secret.

Consul's procedure, with no agent ever unable to talk to the rest: install the new key on every
member, make it the primary, then remove every other key (``/v1/operator/keyring``). The Job's pod template carries a
digest of the key, so a new key replaces the Job and `pulumi up` runs the procedure; the agents
themselves do not restart. A finished run leaves the digest in the KV store (DONE_KEY), so a run
for a key already in place (the Job replaced by an image upgrade) asks no member anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes.batch.v1 as batch

from .cli_pods import API_PRELUDE, RERUN_WHEN_FAILED, server_api_pod
from .labels import GOSSIP_ROTATION, Labels
from .model import ClusterSpec
from .security import GOSSIP_SECRET_KEY, MANAGEMENT_TOKEN_KEY

KEY_DIGEST_ANNOTATION = "consul.hashicorp.com/gossip-key-digest"
# Where a finished rotation leaves its key's digest (SHA-256, as in the annotation).
DONE_KEY = "consul-on-pulumi/gossip-rotation/done"
KEY_DIR = "/consul/gossip-key"
TOKEN_DIR = "/consul/management"
JOB_DEADLINE_SECONDS = 900
JOB_TIMEOUTS = pulumi.CustomTimeouts(create="20m", update="20m")

# Idempotent: on a cluster already on the key (the first deploy) every step changes nothing.
ROTATION_SCRIPT = (
    API_PRELUDE
    + r"""
# Every key goes to Consul in a request body on curl's standard input (a here-document), never on
# a command line; the keyring is read as JSON. A keyring call asks every member, and fails while
# one does not answer (a member just restarted, gossip still settling): each call is idempotent,
# so it is tried again, every 5 s for a minute, before the Job gives up (its message then names the
# call and the HTTP status; Consul's own text is not printed, as it may quote a key). A keyring
# call waits for every member's answer, so each gets a minute (curl keeps the last --max-time).
keyring() {
  attempt=1
  until failure=$(curl -sS --fail-with-body $curl_opts --max-time 60 -X "$1" -H @"$headers" --data-binary @- "$CONSUL_HTTP_ADDR/v1/operator/keyring" 2>&1 >/dev/null <<EOF
{"Key": "$2"}
EOF
  ); do
    if [ "$attempt" -ge 12 ]; then
      echo "ERROR: $1 /v1/operator/keyring failed 12 times, the last: $failure" >&2
      return 1
    fi
    echo "$1 /v1/operator/keyring: not every member answered ($failure); again in 5 s"
    attempt=$((attempt + 1))
    sleep 5
  done
}
installed() {
  attempt=1
  until listing=$(curl -sS --fail-with-body $curl_opts --max-time 60 -H @"$headers" "$CONSUL_HTTP_ADDR/v1/operator/keyring" 2>/dev/null); do
    if [ "$attempt" -ge 12 ]; then
      echo "ERROR: GET /v1/operator/keyring failed 12 times" >&2
      return 1
    fi
    echo "GET /v1/operator/keyring: not every member answered; again in 5 s" >&2
    attempt=$((attempt + 1))
    sleep 5
  done
  printf '%s\n' "$listing" | jq -r '.[].Keys | keys[]' | sort -u
}
new=$(cat "$KEY_FILE")
# A run that completed leaves the key's digest in the KV store: a later run for the same key (the
# Job replaced for an image upgrade, deleted and made again) changes nothing and asks no member.
# A run that stopped half-way left none, so the next one goes through every step again.
digest=$(printf '%s' "$new" | sha256sum | cut -d' ' -f1)
marker="$CONSUL_HTTP_ADDR/v1/kv/$DONE_KEY"
if [ "$(curl -sS $curl_opts -H @"$headers" "$marker?raw" 2>/dev/null)" = "$digest" ]; then
  echo "every agent already gossips with the key in Secret $KEY_SECRET (an earlier run finished): nothing to do"
  exit 0
fi
keyring POST "$new"
keyring PUT "$new"
keys=$(installed)
for key in $keys; do
  if [ "$key" != "$new" ]; then keyring DELETE "$key"; fi
done
left=$(installed)
if [ "$left" != "$new" ]; then
  echo "ERROR: after the rotation the keyring still holds other keys than the new one" >&2
  exit 1
fi
printf '%s' "$digest" | curl -sS --fail $curl_opts -X PUT -H @"$headers" --data-binary @- "$marker" >/dev/null
echo "every agent gossips with the key in Secret $KEY_SECRET only"
"""
)


def key_digest(key: str) -> str:
    """What the pod template carries of the key: its SHA-256, which reveals nothing of it."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ConsulGossipRotationArgs:
    """Inputs of :class:`ConsulGossipRotation`.

    namespace: where the servers run (required).
    gossip_secret: the Secret with the gossip key under ``key`` (required).
    gossip_key: the key itself, a Pulumi secret; only its digest enters the Job (required).
    server_service: the servers' headless Service (required).
    ca_secret: the Secret with the CA certificate when TLS is on (default: None, plain HTTP).
    tokens_secret: the Secret with the management token when ACLs are on (default: None).
    cluster: the image to run the consul CLI from.
    """

    namespace: pulumi.Input[str]
    gossip_secret: pulumi.Input[str]
    gossip_key: pulumi.Input[str]
    server_service: pulumi.Input[str]
    ca_secret: pulumi.Input[str] | None = None
    tokens_secret: pulumi.Input[str] | None = None
    cluster: ClusterSpec = field(default_factory=ClusterSpec)


class ConsulGossipRotation(pulumi.ComponentResource):
    """A Job that installs, uses, then removes: the cluster ends on the Secret's key alone."""

    job_name: pulumi.Output[str]

    def __init__(self, name: str, args: ConsulGossipRotationArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("consul:index:ConsulGossipRotation", name, None, opts)
        full_name = f"{name}-gossip-rotation"
        labels = Labels(instance=name, component=GOSSIP_ROTATION, version=args.cluster.version)
        namespace = pulumi.Output.from_input(args.namespace)
        pod = server_api_pod(args.server_service, namespace, args.ca_secret)
        pod.set_env(KEY_FILE=f"{KEY_DIR}/{GOSSIP_SECRET_KEY}", KEY_SECRET=args.gossip_secret, DONE_KEY=DONE_KEY)
        pod.mount_secret("gossip-key", args.gossip_secret, KEY_DIR, key=GOSSIP_SECRET_KEY)
        if args.tokens_secret is not None:
            pod.set_env(CONSUL_HTTP_TOKEN_FILE=f"{TOKEN_DIR}/{MANAGEMENT_TOKEN_KEY}")
            pod.mount_secret("management-token", args.tokens_secret, TOKEN_DIR, key=MANAGEMENT_TOKEN_KEY)
        digest = pulumi.Output.unsecret(pulumi.Output.from_input(args.gossip_key).apply(key_digest))

        job = batch.Job(
            full_name,
            metadata=labels.metadata(full_name, namespace, RERUN_WHEN_FAILED),
            spec=batch.JobSpecArgs(
                backoff_limit=6,
                active_deadline_seconds=JOB_DEADLINE_SECONDS,
                template=pod.template(labels, args.cluster.image, ROTATION_SCRIPT, annotations={KEY_DIGEST_ANNOTATION: digest}),
            ),
            opts=pulumi.ResourceOptions(parent=self, custom_timeouts=JOB_TIMEOUTS),
        )
        self.job_name = job.metadata.name
        self.register_outputs({"job_name": self.job_name})
