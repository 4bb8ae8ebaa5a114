"""ConsulKubernetesAuth: what Consul's `kubernetes` auth method needs from the cluster.

Consul checks a login's service-account token with the TokenReview API and reads the account
(for its annotations), as a reviewer: a ServiceAccount of its own, bound to
`system:auth-delegator` and allowed to get service accounts, whose long-lived token Secret the ACL
Job hands to Consul (with the cluster CA) when it configures the method. The servers reach the API
server through the `kubernetes` Service.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes.core.v1 as core
import pulumi_kubernetes.meta.v1 as meta
import pulumi_kubernetes.rbac.v1 as rbac

from .labels import Labels

# The method's name in Consul: `consul login -method=kubernetes`.
AUTH_METHOD_NAME = "kubernetes"
# How the servers reach the API server: the `kubernetes` Service, verified with the cluster CA.
KUBERNETES_HOST = "https://kubernetes.default.svc"
AUTH_DELEGATOR = "system:auth-delegator"


@dataclass(frozen=True)
class ConsulKubernetesAuthArgs:
    """Inputs of :class:`ConsulKubernetesAuth`.

    namespace: where the reviewer account and its token Secret go (required).
    namespace_name: the namespace's name, which makes the cluster-wide role names unique (required).
    version: the Consul version, for the labels (required).
    """

    namespace: pulumi.Input[str]
    namespace_name: str
    version: str


class ConsulKubernetesAuth(pulumi.ComponentResource):
    """The reviewer ServiceAccount, its token Secret and its cluster roles.

    Outputs:
        reviewer_secret: the ``kubernetes.io/service-account-token`` Secret (keys ``token`` and
            ``ca.crt``, filled by the cluster's token controller) that the ACL Job mounts.
    """

    reviewer_secret: pulumi.Output[str]

    def __init__(self, name: str, args: ConsulKubernetesAuthArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("consul:index:ConsulKubernetesAuth", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        labels = Labels(instance=name, component="auth-method", version=args.version)
        reviewer = f"{name}-auth-method"
        account = core.ServiceAccount(
            reviewer, metadata=labels.metadata(reviewer, args.namespace), automount_service_account_token=False, opts=child
        )
        secret = core.Secret(
            reviewer,
            metadata=labels.metadata(reviewer, args.namespace, {"kubernetes.io/service-account.name": reviewer}),
            type="kubernetes.io/service-account-token",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
        )
        cluster_wide = f"{name}-{args.namespace_name}-auth-method"
        subject = rbac.SubjectArgs(kind="ServiceAccount", name=account.metadata.name, namespace=args.namespace)
        role = rbac.ClusterRole(
            cluster_wide,
            metadata=meta.ObjectMetaArgs(name=cluster_wide, labels=labels.all),
            rules=[rbac.PolicyRuleArgs(api_groups=[""], resources=["serviceaccounts"], verbs=["get"])],
            opts=child,
        )
        rbac.ClusterRoleBinding(
            cluster_wide,
            metadata=meta.ObjectMetaArgs(name=cluster_wide, labels=labels.all),
            role_ref=rbac.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role.metadata.name),
            subjects=[subject],
            opts=child,
        )
        delegator = f"{name}-{args.namespace_name}-auth-delegator"
        rbac.ClusterRoleBinding(
            delegator,
            metadata=meta.ObjectMetaArgs(name=delegator, labels=labels.all),
            role_ref=rbac.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=AUTH_DELEGATOR),
            subjects=[subject],
            opts=child,
        )
        self.reviewer_secret = secret.metadata.name
        self.register_outputs({"reviewer_secret": self.reviewer_secret})
