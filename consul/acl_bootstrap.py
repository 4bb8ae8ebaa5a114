"""ConsulAclBootstrap: a Job that gives the agents least-privilege tokens, safe to run again."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes.batch.v1 as batch

from . import agent_config as cfg
from .cli_pods import API_PRELUDE, RERUN_WHEN_FAILED, server_api_pod
from .kubernetes_auth import AUTH_METHOD_NAME, KUBERNETES_HOST
from .labels import ACL_BOOTSTRAP, Labels
from .model import ClusterSpec, KubernetesAuthSpec
from .security import MANAGEMENT_TOKEN_KEY, AclTokenIds


# Clients are named after their Kubernetes nodes, which the program cannot know: their one token
# may write any node's catalog entry except a server's (the longest prefix wins in Consul's rules).
# Servers each get a token with their own node identity only.
def client_agent_rules(server_node_prefix: str) -> str:
    return (
        'node_prefix "" { policy = "write" }\n'
        f'node_prefix "{server_node_prefix}" {{ policy = "deny" }}\n'
        'service_prefix "" { policy = "read" }\n'
    )


# What Consul DNS needs under default deny, given to the anonymous token (queries carry no token):
# read nodes and services; nothing else (no KV, no writes, no ACLs).
DNS_POLICY_RULES = """node_prefix "" { policy = "read" }
service_prefix "" { policy = "read" }
"""
# `consul snapshot save` and `restore` need acl write (the docs' "management"): nothing narrower
# exists, so the snapshot token holds this and nothing else.
SNAPSHOT_POLICY_RULES = 'acl = "write"\n'
# /v1/agent/metrics asks for agent:read on the agent's own node; nothing else.
METRICS_POLICY_RULES = 'agent_prefix "" { policy = "read" }\n'
# What a secondary datacenter's servers replicate ACLs with (policies, roles, global tokens) and
# have their Connect CA signed with: Consul's documented replication rules.
REPLICATION_POLICY_RULES = """acl = "write"
operator = "write"
service_prefix "" { policy = "read" intentions = "read" }
"""
ANONYMOUS_TOKEN_ID = "00000000-0000-0000-0000-000000000002"


AUTH_DIR = "/consul/auth-method"


def binding_selector(namespaces: tuple[str, ...]) -> str:
    """The binding rule's selector: service accounts of these namespaces only ("" for any)."""
    return " or ".join(f'serviceaccount.namespace == "{namespace}"' for namespace in namespaces)


def token_marker(instance: str, datacenter: str) -> str:
    """How the descriptions of the tokens the Job makes begin: what it may revoke when the stack no
    longer declares them. Per datacenter, as a token made in one may be replicated to another."""
    return f"[{instance} {datacenter}] "


# Bumped whenever a policy's rules change, so a re-run updates a policy an older version created.
RULES_VERSION = "2"
TOKENS_DIR = "/consul/bootstrap"
# The Job gives up (and says why) before the provider stops waiting for it.
JOB_DEADLINE_SECONDS = 900
JOB_TIMEOUTS = pulumi.CustomTimeouts(create="20m", update="20m")

# Waits for a leader, proves the management token works, then brings Consul's ACLs to what the
# stack declares, through the HTTP API and its JSON only (no CLI output or error text is parsed):
# - creates the policies and tokens that are missing, and updates those out of date;
# - deletes the tokens it made (their description starts with $MARKER) that the stack no longer
#   declares: a service taken out of serviceTokens, servers removed by a scale-down;
# - deletes earlier management tokens: the servers make one from their initial_management at every
#   election, and once they all carry this stack's token, another one is a rotated-out credential.
# Re-running it changes nothing. A management token the servers do not know means their data
# predates the token in the Secret (a re-install over old volumes): it says so and fails.
BOOTSTRAP_SCRIPT = (
    API_PRELUDE
    + r"""
# api METHOD PATH: Consul's answer on stdout; a PUT's or POST's body comes on standard input. Every
# call is idempotent, so one that no server answered, or that Consul answered with a 5xx (a leader
# election, a server restarting), is tried again every 3 s, 10 times. On a 4xx, or when the tries
# are used up: the call, the HTTP status and Consul's own message on stderr, and status 1.
api() {
  api_method=$1 api_path=$2 api_body="" api_try=1
  case "$api_method" in PUT | POST) api_body=$(cat) ;; esac
  while :; do
    api_answer=$(printf '%s' "$api_body" |
      curl -sS $curl_opts -X "$api_method" -H @"$headers" ${api_body:+--data-binary @-} -w '\n%{http_code}' "$CONSUL_HTTP_ADDR$api_path" 2>&1) || true
    api_status=$(printf '%s\n' "$api_answer" | tail -n 1)
    api_answer=$(printf '%s\n' "$api_answer" | sed '$d')
    case "$api_status" in
      2??) printf '%s\n' "$api_answer"; return 0 ;;
      4??) echo "ERROR: $api_method $api_path: HTTP $api_status: $api_answer" >&2; return 1 ;;
    esac
    if [ "$api_try" -ge 10 ]; then
      echo "ERROR: $api_method $api_path: HTTP $api_status after $api_try tries: $api_answer" >&2
      return 1
    fi
    echo "$api_method $api_path: HTTP $api_status ($(printf '%s' "$api_answer" | head -c 120)); again in 3 s" >&2
    api_try=$((api_try + 1))
    sleep "${API_RETRY_SECONDS:-3}"
  done
}
# delete_each PATH VERB WHY: DELETE PATH/<id> for each line "<id> <what>" on standard input (blank
# lines skipped), each said as "VERB <what> (<id>): WHY".
delete_each() {
  while read -r each_id each_what; do
    [ -n "$each_id" ] || continue
    api DELETE "$1/$each_id" >/dev/null
    echo "$2 $each_what ($each_id): $3"
  done
}
attempt=0
while :; do
  answer=$(curl -sS $curl_opts -H @"$headers" -w '\n%{http_code}' "$CONSUL_HTTP_ADDR/v1/acl/token/self" 2>&1) || true
  status=$(printf '%s\n' "$answer" | tail -n 1)
  [ "$status" = 200 ] && break
  if [ "$status" = 403 ]; then
    attempt=$((attempt + 1))
    if [ "$attempt" -ge 5 ]; then
      echo "ERROR: the Consul servers do not accept the management token in Secret $TOKENS_SECRET (key $MANAGEMENT_KEY)." >&2
      echo "Their ACL data predates it: the cluster was bootstrapped with a token that this stack no longer has." >&2
      echo "Fix: set the old token with 'pulumi config set --secret consul:aclManagementToken' (it reads the SecretID from stdin) and run 'pulumi up'," >&2
      echo "or restart the servers ('kubectl -n $NAMESPACE rollout restart statefulset/$SERVERS') so the new leader registers this token, then run 'pulumi up'." >&2
      exit 1
    fi
  fi
  echo "management token not usable yet: HTTP $status $(printf '%s\n' "$answer" | sed '$d' | head -c 200)"
  sleep "${ACL_RETRY_SECONDS:-5}"
done
self=$(printf '%s\n' "$answer" | sed '$d' | jq -r .AccessorID)
policies=$(api GET /v1/acl/policies)
policy() {
  name=$1 description="$2 (rules v$RULES_VERSION)" rules=$3
  found=$(printf '%s\n' "$policies" | jq -c --arg name "$name" '.[] | select(.Name == $name) | {ID, Description}')
  body=$(jq -n --arg name "$name" --arg description "$description" --arg rules "$rules" '{Name: $name, Description: $description, Rules: $rules}')
  if [ -z "$found" ]; then
    printf '%s\n' "$body" | api PUT /v1/acl/policy >/dev/null
    echo "created policy $name"
  elif [ "$(printf '%s\n' "$found" | jq -r .Description)" != "$description" ]; then
    printf '%s\n' "$body" | api PUT "/v1/acl/policy/$(printf '%s\n' "$found" | jq -r .ID)" >/dev/null
    echo "updated policy $name to rules v$RULES_VERSION"
  fi
}
tokens=$(api GET /v1/acl/tokens)
declared=""
# What a token grants, as /v1/acl/tokens lists it and as a request body states it: the description,
# and the names of its policies and identities (a listing gives policies their IDs too).
GRANTS='{d: (.Description // ""), p: ([.Policies[]?.Name] | sort), s: ([.ServiceIdentities[]?.ServiceName] | sort),
  n: ([.NodeIdentities[]? | .NodeName + "@" + .Datacenter] | sort), r: ([.Roles[]?.Name] | sort)}'
# token ACCESSOR KEY DESCRIPTION GRANTS: creates the token, or brings its description and grants up
# to date. A new token's SecretID goes from the Secret's file (jq --rawfile) into the request body
# on curl's standard input (PUT /v1/acl/token); GRANTS is the rest of the body (policies or
# identities), which holds no secret. An update leaves the SecretID as it is.
token() {
  accessor=$1 key=$2 description="$MARKER$3" grants=$4
  declared="$declared $accessor"
  body=$(jq -n --arg accessor "$accessor" --arg description "$description" --argjson grants "$grants" \
    '{AccessorID: $accessor, Description: $description} + $grants')
  current=$(printf '%s\n' "$tokens" | jq -c --arg accessor "$accessor" ".[] | select(.AccessorID == \$accessor) | $GRANTS")
  if [ -z "$current" ]; then
    jq -n --arg accessor "$accessor" --rawfile secret "$TOKENS_DIR/$key" --arg description "$description" --argjson grants "$grants" \
      '{AccessorID: $accessor, SecretID: ($secret | rtrimstr("\n")), Description: $description} + $grants' |
      api PUT /v1/acl/token >/dev/null
    echo "created $description ($accessor)"
  elif [ "$current" != "$(printf '%s\n' "$body" | jq -c "$GRANTS")" ]; then
    printf '%s\n' "$body" | api PUT "/v1/acl/token/$accessor" >/dev/null
    echo "updated $description ($accessor)"
  fi
}
policy consul-client-agent "Consul client agents: any node but a server" "$CLIENT_AGENT_RULES"
token "$CLIENT_ACCESSOR" agent-client "agent token of the Consul clients" '{"Policies": [{"Name": "consul-client-agent"}]}'
for pair in $SERVER_AGENTS; do
  token "${pair#*=}" "agent-${pair%%=*}" "agent token of ${pair%%=*}" \
    "{\"NodeIdentities\": [{\"NodeName\": \"${pair%%=*}\", \"Datacenter\": \"$DATACENTER\"}]}"
done
for pair in $SERVICE_TOKENS; do
  token "${pair#*=}" "service-${pair%%=*}" "service token of ${pair%%=*}" "{\"ServiceIdentities\": [{\"ServiceName\": \"${pair%%=*}\"}]}"
done
if [ -n "$METRICS_ACCESSOR" ]; then
  policy consul-metrics "Metrics scrapers: /v1/agent/metrics of every agent" "$METRICS_RULES"
  token "$METRICS_ACCESSOR" metrics "metrics token" '{"Policies": [{"Name": "consul-metrics"}]}'
fi
if [ -n "$SNAPSHOT_ACCESSOR" ]; then
  policy consul-snapshot "Consul snapshots: save and restore need acl write" "$SNAPSHOT_RULES"
  token "$SNAPSHOT_ACCESSOR" snapshot "snapshot token" '{"Policies": [{"Name": "consul-snapshot"}]}'
fi
if [ -n "$REPLICATION_ACCESSOR" ]; then
  policy consul-replication "ACL replication of secondary datacenters" "$REPLICATION_RULES"
  token "$REPLICATION_ACCESSOR" replication "ACL replication token of the secondary datacenters" '{"Policies": [{"Name": "consul-replication"}]}'
fi
# Revocation of what this Job made and the stack no longer declares: tokens marked as its own, and
# the unmarked ones of its versions before the mark, known by their exact description *and* grants
# (a server's node identity in this datacenter, a service identity, the snapshot policy), so a
# token someone made by hand is never taken for one of them. Each list is made first (a jq error
# stops the Job), then acted on.
revoke=$(printf '%s\n' "$tokens" | jq -r --arg marker "$MARKER" --arg declared "$declared" --arg dc "$DATACENTER" '
  ($declared | split(" ")) as $keep
  | .[]
  | (.Description // "") as $d
  | {d: $d, p: [.Policies[]?.Name], s: [.ServiceIdentities[]?.ServiceName], n: [.NodeIdentities[]? | [.NodeName, .Datacenter]], r: [.Roles[]?]} as $g
  | select(($d | startswith($marker))
      or ($g.p == [] and $g.s == [] and $g.r == [] and $g.n == [[($d | ltrimstr("agent token of ")), $dc]] and ($d | startswith("agent token of ")))
      or ($g.p == [] and $g.n == [] and $g.r == [] and $g.s == [($d | ltrimstr("service token of "))] and ($d | startswith("service token of ")))
      or ($d == "snapshot token" and $g.p == ["consul-snapshot"] and $g.s == [] and $g.n == [] and $g.r == []))
  | select(.AccessorID as $id | $keep | index($id) | not)
  | .AccessorID + " " + $d')
printf '%s\n' "$revoke" | delete_each /v1/acl/token revoked "the stack no longer declares it"
# Earlier management tokens: the servers make one from their initial_management at elections, so
# an old one is revoked only once every server carries this stack's token, which a roll that has
# not reached every server (serverUpdatePartition above 0) does not give.
if [ "$ALL_SERVERS_UPDATED" = true ]; then
  earlier=$(printf '%s\n' "$tokens" | jq -r --arg self "$self" \
    '.[] | select(.Description == "Initial Management Token" or .Description == "Master Token") | select(.AccessorID != $self)
    | .AccessorID + " an earlier management token"')
  printf '%s\n' "$earlier" | delete_each /v1/acl/token revoked "every server now carries this stack's"
else
  echo "earlier management tokens are kept while serverUpdatePartition holds servers back: the last step revokes them"
fi
# The kubernetes auth method ($AUTH_METHOD, when on): Consul checks a login's service-account
# token with the reviewer's (from its mounted Secret, into the body with jq --rawfile) and binds
# the account to the service identity of its name. Turned off, the method it made is deleted, and
# with it its binding rules and every token a login made. A method of that name it did not make
# is left alone, and the Job fails saying so.
methods=$(api GET /v1/acl/auth-methods)
if [ -n "$AUTH_METHOD" ]; then
  theirs=$(printf '%s\n' "$methods" | jq -r --arg name "$AUTH_METHOD" --arg marker "$MARKER" \
    '.[] | select(.Name == $name) | select((.Description // "") | startswith($marker) | not) | .Name')
  if [ -n "$theirs" ]; then
    echo "ERROR: Consul has an auth method named $AUTH_METHOD that this stack did not make; it is left as it is." >&2
    echo "Fix: delete or rename it ('consul acl auth-method delete -name $AUTH_METHOD'), or turn consul:kubernetesAuth off, and run 'pulumi up'." >&2
    exit 1
  fi
  until [ -s "$AUTH_DIR/token" ] && [ -s "$AUTH_DIR/ca.crt" ]; do
    echo "waiting for the cluster's token controller to fill Secret $AUTH_SECRET"
    sleep "${ACL_RETRY_SECONDS:-5}"
  done
  wanted=$(jq -n --arg name "$AUTH_METHOD" --arg description "${MARKER}Kubernetes service accounts" --arg ttl "$AUTH_TTL" \
    --arg host "$KUBERNETES_HOST" --rawfile ca "$AUTH_DIR/ca.crt" --rawfile jwt "$AUTH_DIR/token" \
    '{Name: $name, Type: "kubernetes", Description: $description, MaxTokenTTL: $ttl, Config: {Host: $host, CACert: $ca, ServiceAccountJWT: $jwt}}')
  if ! printf '%s\n' "$methods" | jq -e --arg name "$AUTH_METHOD" 'any(.[]; .Name == $name)' >/dev/null; then
    printf '%s\n' "$wanted" | api PUT /v1/acl/auth-method >/dev/null
    echo "created auth method $AUTH_METHOD"
  else
    have=$(api GET "/v1/acl/auth-method/$AUTH_METHOD")
    if ! printf '%s\n%s\n' "$have" "$wanted" | jq -s -e \
      '[.[] | [.Description, .MaxTokenTTL, .Config.Host, .Config.CACert, .Config.ServiceAccountJWT]] | .[0] == .[1]' >/dev/null; then
      printf '%s\n' "$wanted" | api PUT "/v1/acl/auth-method/$AUTH_METHOD" >/dev/null
      echo "updated auth method $AUTH_METHOD"
    fi
  fi
  rule=$(jq -n --arg method "$AUTH_METHOD" --arg description "${MARKER}a service account gets the service identity of its name" --arg selector "$AUTH_SELECTOR" \
    '{AuthMethod: $method, Description: $description, BindType: "service", BindName: "${serviceaccount.name}", Selector: $selector}')
  rules=$(api GET "/v1/acl/binding-rules?authmethod=$AUTH_METHOD")
  marked=$(printf '%s\n' "$rules" | jq -c --arg marker "$MARKER" '[.[] | select((.Description // "") | startswith($marker))]')
  id=$(printf '%s\n' "$marked" | jq -r '.[0].ID // ""')
  if [ -z "$id" ]; then
    printf '%s\n' "$rule" | api PUT /v1/acl/binding-rule >/dev/null
    echo "created binding rule of $AUTH_METHOD: $AUTH_SELECTOR"
  elif ! printf '%s\n%s\n' "$marked" "$rule" | jq -s -e \
    '(.[0][0] | [.Description, .BindType, .BindName, (.Selector // "")]) == (.[1] | [.Description, .BindType, .BindName, .Selector])' >/dev/null; then
    printf '%s\n' "$rule" | jq --arg id "$id" '. + {ID: $id}' | api PUT "/v1/acl/binding-rule/$id" >/dev/null
    echo "updated binding rule of $AUTH_METHOD: $AUTH_SELECTOR"
  fi
  extra=$(printf '%s\n' "$marked" | jq -r --arg method "$AUTH_METHOD" '.[1:][] | .ID + " a second binding rule of " + $method')
  printf '%s\n' "$extra" | delete_each /v1/acl/binding-rule deleted "one is enough"
else
  ours=$(printf '%s\n' "$methods" | jq -r --arg marker "$MARKER" \
    '.[] | select((.Description // "") | startswith($marker)) | .Name + " auth method " + .Name + ", its binding rules and the tokens of its logins"')
  printf '%s\n' "$ours" | delete_each /v1/acl/auth-method deleted "consul:kubernetesAuth is off"
fi
policy consul-dns "Consul DNS for the anonymous token: read nodes and services" "$DNS_RULES"
anonymous=$(api GET "/v1/acl/token/$ANONYMOUS_TOKEN")
if ! printf '%s\n' "$anonymous" | jq -e '[.Policies[]?.Name] | index("consul-dns")' >/dev/null; then
  printf '%s\n' "$anonymous" |
    jq '{Description: "Anonymous Token: Consul DNS", Policies: ([.Policies[]? | {ID}] + [{Name: "consul-dns"}])}' |
    api PUT "/v1/acl/token/$ANONYMOUS_TOKEN" >/dev/null
  echo "created DNS read access for the anonymous token"
fi
# Autopilot reads min_quorum from the agents' config only when it first starts: after a scale the
# running servers learn the new size from here (the config file tells new servers). After a
# scale-down this is what lets autopilot prune the removed servers, which did not leave.
autopilot=$(api GET /v1/operator/autopilot/configuration)
quorum=$(printf '%s\n' "$autopilot" | jq -r .MinQuorum)
if [ "$quorum" != "$MIN_QUORUM" ]; then
  printf '%s\n' "$autopilot" | jq --argjson quorum "$MIN_QUORUM" '.MinQuorum = $quorum' |
    api PUT /v1/operator/autopilot/configuration >/dev/null
  echo "set autopilot min_quorum from $quorum to $MIN_QUORUM"
fi
echo "ACL policies and tokens are in place"
"""
)


@dataclass(frozen=True)
class ConsulAclBootstrapArgs:
    """Inputs of :class:`ConsulAclBootstrap`.

    namespace: where the servers run (required).
    tokens: the agent tokens' accessor IDs and the Secret with every SecretID (required;
        pass ``ConsulSecurity.acl_tokens``).
    server_service: the servers' headless Service (required; ``ConsulServers.service_name``).
    ca_secret: the Secret with the CA certificate when TLS is on (default: None, plain HTTP).
    secrets_checksum: a digest of the servers' Secrets, management token included (pass
        ``ConsulSecurity.server_secrets.checksum``): in the pod template, so a new management
        token runs the Job again, which then revokes the old one (default: None).
    kubernetes_auth: the `kubernetes` auth method to configure, or None to remove the one it made
        (default: None).
    reviewer_secret: the reviewer's token Secret (``ConsulKubernetesAuth.reviewer_secret``),
        required with ``kubernetes_auth``.
    all_servers_updated: False while ``serverUpdatePartition`` holds servers back on their old pod
        template (and their old management token): earlier management tokens are kept until the
        last step (default: True).
    cluster: the image to run the consul CLI from (default: see :class:`~consul.model.ClusterSpec`).
    """

    namespace: pulumi.Input[str]
    tokens: AclTokenIds
    server_service: pulumi.Input[str]
    ca_secret: pulumi.Input[str] | None = None
    secrets_checksum: pulumi.Input[str] | None = None
    kubernetes_auth: KubernetesAuthSpec | None = None
    reviewer_secret: pulumi.Input[str] | None = None
    all_servers_updated: bool = True
    cluster: ClusterSpec = field(default_factory=ClusterSpec)


class ConsulAclBootstrap(pulumi.ComponentResource):
    """A Job that creates the agent policies and tokens with the management token, idempotently."""

    job_name: pulumi.Output[str]

    def __init__(self, name: str, args: ConsulAclBootstrapArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("consul:index:ConsulAclBootstrap", name, None, opts)
        full_name = f"{name}-acl-bootstrap"
        labels = Labels(instance=name, component=ACL_BOOTSTRAP, version=args.cluster.version)
        namespace = pulumi.Output.from_input(args.namespace)

        def pairs(items: tuple[tuple[str, pulumi.Input[str]], ...]) -> pulumi.Output[str]:
            """name=accessor pairs, space-separated (accessor IDs are public)."""
            return pulumi.Output.all(*[accessor for _, accessor in items]).apply(
                lambda ids: " ".join(f"{name}={accessor}" for (name, _), accessor in zip(items, ids, strict=True))
            )

        pod = server_api_pod(args.server_service, namespace, args.ca_secret)
        pod.set_env(
            CONSUL_HTTP_TOKEN_FILE=f"{TOKENS_DIR}/{MANAGEMENT_TOKEN_KEY}",
            NAMESPACE=namespace,
            DATACENTER=args.cluster.datacenter,
            SERVERS=args.server_service,
            TOKENS_SECRET=args.tokens.secret_name,
            TOKENS_DIR=TOKENS_DIR,
            MANAGEMENT_KEY=MANAGEMENT_TOKEN_KEY,
            RULES_VERSION=RULES_VERSION,
            MARKER=token_marker(name, args.cluster.datacenter),
            ALL_SERVERS_UPDATED="true" if args.all_servers_updated else "false",
            CLIENT_AGENT_RULES=client_agent_rules(f"{name}-server-"),
            DNS_RULES=DNS_POLICY_RULES,
            ANONYMOUS_TOKEN=ANONYMOUS_TOKEN_ID,
            CLIENT_ACCESSOR=args.tokens.client_agent_accessor,
            SERVER_AGENTS=pairs(args.tokens.server_agents),
            SERVICE_TOKENS=pairs(args.tokens.services),
            SNAPSHOT_ACCESSOR=args.tokens.snapshot_accessor or "",
            SNAPSHOT_RULES=SNAPSHOT_POLICY_RULES,
            METRICS_ACCESSOR=args.tokens.metrics_accessor or "",
            METRICS_RULES=METRICS_POLICY_RULES,
            REPLICATION_ACCESSOR=args.tokens.replication_accessor or "",
            REPLICATION_RULES=REPLICATION_POLICY_RULES,
            MIN_QUORUM=str(cfg.min_quorum(len(args.tokens.server_agents))),
        )
        pod.mount_secret("tokens", args.tokens.secret_name, TOKENS_DIR)
        auth = args.kubernetes_auth
        pod.set_env(
            AUTH_METHOD=AUTH_METHOD_NAME if auth else "",
            AUTH_TTL=auth.token_ttl if auth else "",
            AUTH_SELECTOR=binding_selector(auth.namespaces) if auth else "",
            KUBERNETES_HOST=KUBERNETES_HOST,
            AUTH_DIR=AUTH_DIR,
            AUTH_SECRET=args.reviewer_secret or "",
        )
        if auth is not None:
            if args.reviewer_secret is None:
                raise ValueError("ConsulAclBootstrapArgs: kubernetes_auth needs reviewer_secret")
            pod.mount_secret("auth-method", args.reviewer_secret, AUTH_DIR)

        job = batch.Job(
            full_name,
            metadata=labels.metadata(full_name, namespace, RERUN_WHEN_FAILED),
            spec=batch.JobSpecArgs(
                # The script waits out what is transient (no leader yet, a 5xx): a failure is
                # one to fix, and `pulumi up` learns of it within a minute.
                backoff_limit=2,
                active_deadline_seconds=JOB_DEADLINE_SECONDS,
                template=pod.template(
                    labels,
                    args.cluster.image,
                    BOOTSTRAP_SCRIPT,
                    annotations={cfg.SECRETS_CHECKSUM_ANNOTATION: args.secrets_checksum} if args.secrets_checksum is not None else None,
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, custom_timeouts=JOB_TIMEOUTS),
        )
        self.job_name = job.metadata.name
        self.register_outputs({"job_name": self.job_name})
