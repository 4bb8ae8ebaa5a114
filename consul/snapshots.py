"""ConsulSnapshots: scheduled Raft snapshots into a claim of their own, and the restore of one.

The CronJob ``consul-snapshot`` runs ``consul snapshot save`` on its schedule, checks the file with
``consul snapshot inspect``, and keeps the newest N. The same pod template restores: a Job made
from the CronJob with ``SNAPSHOT_RESTORE=<file>`` in its environment inspects that file and, only
if it is a sound snapshot, runs ``consul snapshot restore`` (see ``make restore``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes.batch.v1 as batch
import pulumi_kubernetes.core.v1 as core

from .cli_pods import server_api_pod
from .labels import SNAPSHOT, Labels
from .model import ClusterSpec, Resources, SnapshotSpec
from .security import SNAPSHOT_TOKEN_KEY

SNAPSHOT_DIR = "/snapshots"
TOKEN_DIR = "/consul/snapshot-token"

# Save: write under a temporary name, check, then publish and prune; a failed save leaves no file
# that a restore could pick, and partial files of killed runs are removed. A full claim would fail
# every later run: a save refused for lack of space drops the oldest snapshot and tries once more
# (never the only one, with a retention of 1). Restore: inspect first, so a damaged file is
# refused before the servers see it, and the cluster is left as it was.
SNAPSHOT_SCRIPT = r"""
if [ -n "${SNAPSHOT_RESTORE:-}" ]; then
  file="$SNAPSHOT_DIR/$SNAPSHOT_RESTORE"
  if [ ! -f "$file" ]; then
    echo "ERROR: no snapshot $SNAPSHOT_RESTORE in claim $CLAIM; there are:" >&2
    ls -1 "$SNAPSHOT_DIR" >&2
    exit 1
  fi
  if ! details=$(consul snapshot inspect "$file" 2>&1); then
    echo "ERROR: $SNAPSHOT_RESTORE is not a sound Consul snapshot, nothing was restored: $details" >&2
    exit 1
  fi
  echo "$details"
  consul snapshot restore "$file"
  echo "restored $SNAPSHOT_RESTORE"
  exit 0
fi
name="consul-$(date -u +%Y%m%dT%H%M%SZ).snap"
partial="$SNAPSHOT_DIR/.partial-$name"
# Partial files of runs killed mid-save, and this run's own if it fails.
rm -f "$SNAPSHOT_DIR"/.partial-*
trap 'rm -f "$partial"' EXIT
prune() {
  ls -1 "$SNAPSHOT_DIR" | grep -E '^consul-.*\.snap$' | sort -r | tail -n +$(($1 + 1)) | while read -r old; do
    rm -f "$SNAPSHOT_DIR/$old"
    echo "removed $old"
  done
}
if ! failure=$(consul snapshot save "$partial" 2>&1 >/dev/null); then
  echo "$failure" >&2
  rm -f "$partial"
  case "$failure" in
    *"no space left on device"*) [ "$RETAIN" -gt 1 ] || exit 1 ;;
    *) exit 1 ;;
  esac
  echo "the claim is full: keeping the newest $((RETAIN - 1)) and saving again"
  prune $((RETAIN - 1))
  consul snapshot save "$partial"
fi
consul snapshot inspect "$partial" >/dev/null
mv "$partial" "$SNAPSHOT_DIR/$name"
prune "$RETAIN"
echo "saved $name; keeping the newest $RETAIN"
"""


@dataclass(frozen=True)
class ConsulSnapshotsArgs:
    """Inputs of :class:`ConsulSnapshots`.

    namespace: where the servers run (required).
    server_service: the servers' headless Service (required).
    spec: schedule, retention and storage (default: see :class:`~consul.model.SnapshotSpec`).
    ca_secret: the Secret with the CA certificate when TLS is on (default: None, plain HTTP).
    tokens_secret: the Secret holding the snapshot token under ``snapshot``, when ACLs are on.
    cluster: the image to run the consul CLI from.
    """

    namespace: pulumi.Input[str]
    server_service: pulumi.Input[str]
    spec: SnapshotSpec = field(default_factory=SnapshotSpec)
    ca_secret: pulumi.Input[str] | None = None
    tokens_secret: pulumi.Input[str] | None = None
    cluster: ClusterSpec = field(default_factory=ClusterSpec)


class ConsulSnapshots(pulumi.ComponentResource):
    """The claim ``<name>-snapshots`` and the CronJob ``<name>-snapshot``."""

    cron_job_name: pulumi.Output[str]
    claim_name: pulumi.Output[str]

    def __init__(self, name: str, args: ConsulSnapshotsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("consul:index:ConsulSnapshots", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        labels = Labels(instance=name, component=SNAPSHOT, version=args.cluster.version)
        namespace = pulumi.Output.from_input(args.namespace)
        spec = args.spec
        claim = core.PersistentVolumeClaim(
            f"{name}-snapshots",
            metadata=labels.metadata(f"{name}-snapshots", namespace),
            spec=core.PersistentVolumeClaimSpecArgs(
                access_modes=["ReadWriteOnce"],
                storage_class_name=spec.storage_class,
                resources=core.VolumeResourceRequirementsArgs(requests={"storage": spec.storage_size}),
            ),
            # The snapshots outlive the stack, like the servers' data.
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
        )
        pod = server_api_pod(args.server_service, namespace, args.ca_secret)
        pod.set_env(SNAPSHOT_DIR=SNAPSHOT_DIR, RETAIN=str(spec.retention), CLAIM=claim.metadata.name)
        pod.mount_claim("snapshots", claim.metadata.name, SNAPSHOT_DIR)
        if args.tokens_secret is not None:
            pod.set_env(CONSUL_HTTP_TOKEN_FILE=f"{TOKEN_DIR}/{SNAPSHOT_TOKEN_KEY}")
            pod.mount_secret("snapshot-token", args.tokens_secret, TOKEN_DIR, key=SNAPSHOT_TOKEN_KEY)

        cron_job = batch.CronJob(
            f"{name}-snapshot",
            metadata=labels.metadata(f"{name}-snapshot", namespace),
            spec=batch.CronJobSpecArgs(
                schedule=spec.schedule,
                concurrency_policy="Forbid",
                successful_jobs_history_limit=3,
                failed_jobs_history_limit=3,
                job_template=batch.JobTemplateSpecArgs(
                    spec=batch.JobSpecArgs(
                        backoff_limit=2,
                        active_deadline_seconds=1800,
                        template=pod.template(
                            labels,
                            args.cluster.image,
                            SNAPSHOT_SCRIPT,
                            Resources(requests={"cpu": "50m", "memory": "50Mi"}, limits={"cpu": "500m", "memory": "200Mi"}),
                        ),
                    )
                ),
            ),
            opts=child,
        )
        self.cron_job_name = cron_job.metadata.name
        self.claim_name = claim.metadata.name
        self.register_outputs({"cron_job_name": self.cron_job_name, "claim_name": self.claim_name})
