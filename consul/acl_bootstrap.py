"""ConsulAclBootstrap: a Job that gives the agents least-privilege tokens, safe to run again."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes.batch.v1 as batch
import pulumi_kubernetes.core.v1 as core
import pulumi_kubernetes.meta.v1 as meta

from . import agent_config as cfg
from . import pods
from .labels import Labels
from .model import ClusterSpec, Resources
from .security import MANAGEMENT_TOKEN_KEY, AclTokenIds

AGENT_POLICY_RULES = """node_prefix "" { policy = "write" }
service_prefix "" { policy = "read" }
agent_prefix "" { policy = "read" }
"""

# Waits for a leader, proves the management token works, then creates what is missing:
# re-running it changes nothing. A management token the servers do not know means their data
# predates the token in the Secret (a re-install over old volumes): it says so and fails.
BOOTSTRAP_SCRIPT = r"""
curl_tls=""
if [ -n "${CONSUL_CACERT:-}" ]; then curl_tls="--cacert $CONSUL_CACERT"; fi
echo "waiting for a Consul leader at $CONSUL_HTTP_ADDR"
until curl -s $curl_tls "$CONSUL_HTTP_ADDR/v1/status/leader" | grep -qE '".+"'; do sleep 3; done
attempt=0
until out=$(consul acl token read -self 2>&1); do
  attempt=$((attempt + 1))
  case "$out" in
    *"ACL not found"*|*"Permission denied"*|*"403"*)
      if [ "$attempt" -ge 5 ]; then
        echo "ERROR: the Consul servers do not accept the management token in Secret $TOKENS_SECRET (key $MANAGEMENT_KEY)." >&2
        echo "Their ACL data predates it: the cluster was bootstrapped with a token that this stack no longer has." >&2
        echo "Fix: set the old token with 'pulumi config set --secret consul:aclManagementToken <SecretID>' and run 'pulumi up'," >&2
        echo "or restart the servers ('kubectl -n $NAMESPACE rollout restart statefulset/$SERVERS') so the new leader registers this token." >&2
        exit 1
      fi ;;
    *) echo "management token not usable yet: $out" ;;
  esac
  sleep 5
done
ensure() {
  tier=$1 accessor=$2 secret=$3
  policy="consul-$tier-agent"
  if ! consul acl policy read -name "$policy" >/dev/null 2>&1; then
    consul acl policy create -name "$policy" -description "Consul $tier agents" -rules "$AGENT_RULES" >/dev/null
    echo "created policy $policy"
  fi
  if ! consul acl token read -accessor-id "$accessor" >/dev/null 2>&1; then
    consul acl token create -accessor "$accessor" -secret "$secret" -policy-name "$policy" -description "agent token of the Consul ${tier}s" >/dev/null
    echo "created the $tier agent token $accessor"
  fi
}
ensure server "$SERVER_ACCESSOR" "$SERVER_TOKEN"
ensure client "$CLIENT_ACCESSOR" "$CLIENT_TOKEN"
echo "ACL policies and agent tokens are in place"
"""


@dataclass(frozen=True)
class ConsulAclBootstrapArgs:
    """Inputs of :class:`ConsulAclBootstrap`.

    namespace: where the servers run (required).
    tokens: the agent tokens' accessor IDs and the Secret with every SecretID (required;
        pass ``ConsulSecurity.acl_tokens``).
    server_service: the servers' headless Service (required; ``ConsulServers.service_name``).
    ca_secret: the Secret with the CA certificate when TLS is on (default: None, plain HTTP).
    cluster: the image to run the consul CLI from (default: see :class:`~consul.model.ClusterSpec`).
    """

    namespace: pulumi.Input[str]
    tokens: AclTokenIds
    server_service: pulumi.Input[str]
    ca_secret: pulumi.Input[str] | None = None
    cluster: ClusterSpec = field(default_factory=ClusterSpec)


class ConsulAclBootstrap(pulumi.ComponentResource):
    """A Job that creates the agent policies and tokens with the management token, idempotently."""

    job_name: pulumi.Output[str]

    def __init__(self, name: str, args: ConsulAclBootstrapArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("consul:index:ConsulAclBootstrap", name, None, opts)
        full_name = f"{name}-acl-bootstrap"
        labels = Labels(instance=name, component="acl-bootstrap", version=args.cluster.version)
        namespace = pulumi.Output.from_input(args.namespace)
        tls = args.ca_secret is not None
        scheme, port = ("https", cfg.HTTPS_PORT) if tls else ("http", cfg.HTTP_PORT)

        def from_tokens(env_name: str, key: str) -> core.EnvVarArgs:
            return core.EnvVarArgs(
                name=env_name,
                value_from=core.EnvVarSourceArgs(secret_key_ref=core.SecretKeySelectorArgs(name=args.tokens.secret_name, key=key)),
            )

        env = [
            core.EnvVarArgs(
                name="CONSUL_HTTP_ADDR", value=pulumi.Output.concat(f"{scheme}://", args.server_service, ".", namespace, f".svc:{port}")
            ),
            core.EnvVarArgs(name="NAMESPACE", value=namespace),
            core.EnvVarArgs(name="SERVERS", value=args.server_service),
            core.EnvVarArgs(name="TOKENS_SECRET", value=args.tokens.secret_name),
            core.EnvVarArgs(name="MANAGEMENT_KEY", value=MANAGEMENT_TOKEN_KEY),
            core.EnvVarArgs(name="AGENT_RULES", value=AGENT_POLICY_RULES),
            core.EnvVarArgs(name="SERVER_ACCESSOR", value=args.tokens.server_agent_accessor),
            core.EnvVarArgs(name="CLIENT_ACCESSOR", value=args.tokens.client_agent_accessor),
            from_tokens("CONSUL_HTTP_TOKEN", MANAGEMENT_TOKEN_KEY),
            from_tokens("SERVER_TOKEN", "server-agent"),
            from_tokens("CLIENT_TOKEN", "client-agent"),
        ]
        volumes = [core.VolumeArgs(name="tmp", empty_dir=core.EmptyDirVolumeSourceArgs())]
        mounts = [core.VolumeMountArgs(name="tmp", mount_path="/tmp")]
        if args.ca_secret is not None:
            env.append(core.EnvVarArgs(name="CONSUL_CACERT", value=cfg.CA_FILE))
            volumes.append(
                core.VolumeArgs(name="tls-ca", secret=core.SecretVolumeSourceArgs(secret_name=args.ca_secret, default_mode=0o440))
            )
            mounts.append(core.VolumeMountArgs(name="tls-ca", mount_path=f"{cfg.TLS_DIR}/ca", read_only=True))

        job = batch.Job(
            full_name,
            metadata=labels.metadata(full_name, namespace),
            spec=batch.JobSpecArgs(
                backoff_limit=6,
                active_deadline_seconds=1800,
                template=core.PodTemplateSpecArgs(
                    metadata=meta.ObjectMetaArgs(labels=labels.all),
                    spec=core.PodSpecArgs(
                        restart_policy="Never",
                        automount_service_account_token=False,
                        security_context=pods.pod_security_context(),
                        volumes=volumes,
                        containers=[
                            core.ContainerArgs(
                                name="acl-bootstrap",
                                image=args.cluster.image,
                                command=["/bin/sh", "-ec", BOOTSTRAP_SCRIPT],
                                env=env,
                                resources=pods.resource_requirements(
                                    Resources(requests={"cpu": "50m", "memory": "50Mi"}, limits={"cpu": "200m", "memory": "100Mi"})
                                ),
                                security_context=pods.container_security_context(),
                                volume_mounts=mounts,
                            )
                        ],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.job_name = job.metadata.name
        self.register_outputs({"job_name": self.job_name})
