#!/usr/bin/env bash
# Restore a snapshot that the CronJob consul-snapshot saved, on the cluster of the current
# kubectl context:  make restore SNAPSHOT=consul-20261127T010000Z.snap [NAMESPACE=consul]
# The Job is made from the CronJob itself (same image, token and claim), with SNAPSHOT_RESTORE
# set: it refuses a missing or damaged file before the servers see it.
set -euo pipefail
snapshot=${1:?usage: restore-snapshot.sh <snapshot file> [namespace]}
namespace=${2:-consul}
kubectl=${KUBECTL:-kubectl}
job="consul-restore-$(date -u +%Y%m%d%H%M%S)"
"$kubectl" -n "$namespace" create job "$job" --from=cronjob/consul-snapshot --dry-run=client -o yaml \
  | "$kubectl" set env --local -f - "SNAPSHOT_RESTORE=$snapshot" -o yaml \
  | "$kubectl" -n "$namespace" create -f - >/dev/null
echo "restore-snapshot: job/$job restores $snapshot in namespace $namespace"
deadline=$((SECONDS + ${TIMEOUT_SECONDS:-900}))
while [ "$SECONDS" -lt "$deadline" ]; do
  state=$("$kubectl" -n "$namespace" get "job/$job" -o jsonpath='{.status.conditions[?(@.status=="True")].type}')
  case " $state " in
    *" Complete "*)
      "$kubectl" -n "$namespace" logs "job/$job" 2>/dev/null || true
      echo "restore-snapshot: restored $snapshot"
      exit 0 ;;
    *" Failed "*)
      "$kubectl" -n "$namespace" logs "job/$job" >&2 2>/dev/null || true
      echo "restore-snapshot: job/$job failed; see its log above" >&2
      exit 1 ;;
  esac
  sleep 2
done
echo "restore-snapshot: job/$job still running after ${TIMEOUT_SECONDS:-900} s" >&2
exit 1
