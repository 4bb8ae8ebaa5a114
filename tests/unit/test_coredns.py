"""consul:coreDnsForward: the Consul domain's server block in the cluster's CoreDNS Corefile."""

from __future__ import annotations

import re

import pulumi
import pytest
from harness import ASSIGNED_CLUSTER_IP, KUBEADM_COREDNS, KUBEADM_COREFILE, Declared, Rendered, render, run_main

from consul.coredns import CorefileError, live_corefile, server_block_keys, with_block, without_block
from consul.model import CoreDnsForward
from consul.settings import SettingsError

BLOCK = """
# consul consul: the Consul domain, forwarded to consul-dns (begin)
consul:53 {
    errors
    cache 30
    forward . 10.96.0.53
}
# consul consul (end)
"""
CONFIGMAP = "kubernetes:core/v1:ConfigMap/kube-system/coredns"


def patches(rendered: Rendered) -> list[Declared]:
    return [d for d in rendered.declared if d.typ == "kubernetes:core/v1:ConfigMapPatch"]


def test_on_appends_the_block_to_the_corefile_as_it_was_and_protects_the_patch() -> None:
    rendered = render("ci-defaults", coreDnsForward="on", dnsClusterIP="10.96.0.53")
    (patch,) = patches(rendered)
    assert patch.inputs["metadata"]["name"] == "coredns"
    assert patch.inputs["metadata"]["namespace"] == "kube-system"
    assert patch.inputs["data"] == {"Corefile": KUBEADM_COREFILE + BLOCK}
    # Deleting the patch would take the whole Corefile: never deleted, and destroy refuses while on.
    assert patch.retain_on_delete
    assert patch.protect


def test_the_block_forwards_to_the_clusterip_the_cluster_assigned() -> None:
    (patch,) = patches(render("ci-defaults", coreDnsForward="on"))
    assert f"forward . {ASSIGNED_CLUSTER_IP}\n" in patch.inputs["data"]["Corefile"]


def test_a_second_up_applies_the_same_corefile() -> None:
    first = patches(render("ci-defaults", coreDnsForward="on", dnsClusterIP="10.96.0.53"))[0].inputs["data"]["Corefile"]
    live = {CONFIGMAP: {**KUBEADM_COREDNS, "data": {"Corefile": first}}}
    again = patches(render("ci-defaults", live=live, coreDnsForward="on", dnsClusterIP="10.96.0.53"))[0].inputs["data"]["Corefile"]
    assert again == first


def test_removed_applies_the_corefile_without_the_block_and_lets_destroy_through() -> None:
    live = {CONFIGMAP: {**KUBEADM_COREDNS, "data": {"Corefile": KUBEADM_COREFILE + BLOCK}}}
    (patch,) = patches(render("ci-defaults", live=live, coreDnsForward="removed", dnsClusterIP="10.96.0.53"))
    assert patch.inputs["data"] == {"Corefile": KUBEADM_COREFILE}
    assert patch.retain_on_delete
    assert not patch.protect


def test_off_neither_reads_nor_patches_coredns() -> None:
    # With no object in the cluster, a read of one would fail the run.
    assert patches(render("ci-defaults", live={})) == []


def test_a_preview_of_a_new_stack_waits_for_the_clusterip_the_cluster_will_assign() -> None:
    (patch,) = patches(render("ci-defaults", preview=True, coreDnsForward="on"))
    assert isinstance(patch.inputs["data"]["Corefile"], pulumi.output.Unknown)


def test_a_preview_of_a_new_stack_already_says_why_the_corefile_cannot_take_the_block() -> None:
    live = {CONFIGMAP: {**KUBEADM_COREDNS, "metadata": {"labels": {"addonmanager.kubernetes.io/mode": "Reconcile"}}}}
    rendered, error = run_main("ci-defaults", live=live, preview=True, coreDnsForward="on")
    assert isinstance(error, pulumi.RunError)
    assert str(error).startswith('invalid consul:coreDnsForward "on": ConfigMap kube-system/coredns is labelled')
    assert patches(rendered) == []


def test_the_block_of_one_namespace_leaves_another_s_alone() -> None:
    other = BLOCK.replace("consul consul", "consul consul-dc2").replace("consul:53", "dc2.consul:53")
    corefile = with_block(KUBEADM_COREFILE + other, "consul", "consul", "10.96.0.53")
    assert corefile == KUBEADM_COREFILE + other + BLOCK
    assert without_block(corefile, "consul") == KUBEADM_COREFILE + other


def test_a_corefile_without_a_trailing_newline_comes_back_as_it_was() -> None:
    bare = KUBEADM_COREFILE.rstrip("\n")
    assert without_block(with_block(bare, "consul", "consul", "10.96.0.53"), "consul") == bare


def test_a_corefile_saved_with_other_line_endings_or_trimmed_loses_the_block() -> None:
    patched = with_block(KUBEADM_COREFILE, "consul", "consul", "10.96.0.53")
    assert without_block(patched.replace("\n", "\r\n"), "consul") == KUBEADM_COREFILE.replace("\n", "\r\n")
    assert without_block(patched.rstrip("\n"), "consul") == KUBEADM_COREFILE


def test_a_marker_left_alone_is_refused_rather_than_a_block_left_behind() -> None:
    patched = with_block(KUBEADM_COREFILE, "consul", "consul", "10.96.0.53")
    with pytest.raises(CorefileError, match="without the other: take the block out by hand"):
        without_block(patched.replace("# consul consul (end)", "# the end"), "consul")


@pytest.mark.parametrize(
    ("corefile", "keys"),
    [
        (KUBEADM_COREFILE, [("dns", ".", 53)]),
        ("consul:53 {\n  forward . 10.0.0.1\n}\n", [("dns", "consul", 53)]),
        ("dns://Consul.:53, example.org {\n}\n", [("dns", "consul", 53), ("dns", "example.org", 53)]),
        ("consul:53,\n  example.org {\n}\n", [("dns", "consul", 53), ("dns", "example.org", 53)]),
        ("tls://consul {\n}\n.:1053 {\n}\n", [("tls", "consul", 853), ("dns", ".", 1053)]),
        ("# consul:53 {\n.:53 {\n  hosts {\n  }\n}\n", [("dns", ".", 53)]),
    ],
)
def test_server_block_keys(corefile: str, keys: list[tuple[str, str, int]]) -> None:
    assert server_block_keys(corefile) == keys


def test_the_block_listens_on_the_port_of_the_root_block() -> None:
    on_1053 = KUBEADM_COREFILE.replace(".:53 {", ".:1053 {")
    assert "\nconsul:1053 {\n" in with_block(on_1053, "consul", "consul", "10.96.0.53")


def test_a_block_for_the_domain_written_by_someone_else_is_refused() -> None:
    for theirs in ("consul:53 {\n    forward . 10.0.0.9\n}\n", "CONSUL. {\n}\n"):
        with pytest.raises(CorefileError, match="already has a server block for consul on port 53"):
            with_block(KUBEADM_COREFILE + theirs, "consul", "consul", "10.96.0.53")
    # Another transport or port does not clash.
    with_block(KUBEADM_COREFILE + "tls://consul {\n}\n", "consul", "consul", "10.96.0.53")


def test_a_configmap_without_a_corefile_or_reconciled_by_the_addon_manager_is_refused() -> None:
    with pytest.raises(CorefileError, match="has no Corefile: this cluster's DNS is not CoreDNS"):
        live_corefile({"other": "x"}, {})
    with pytest.raises(CorefileError, match=re.escape("addonmanager.kubernetes.io/mode=Reconcile")):
        live_corefile({"Corefile": KUBEADM_COREFILE}, {"addonmanager.kubernetes.io/mode": "Reconcile"})


def test_a_refusal_names_the_setting_and_its_value_and_declares_no_patch() -> None:
    live = {CONFIGMAP: {**KUBEADM_COREDNS, "metadata": {"labels": {"addonmanager.kubernetes.io/mode": "Reconcile"}}}}
    rendered, error = run_main("ci-defaults", live=live, coreDnsForward="on")
    assert isinstance(error, pulumi.RunError)
    assert str(error).startswith('invalid consul:coreDnsForward "on": ConfigMap kube-system/coredns is labelled')
    assert patches(rendered) == []


def test_a_corefile_without_reload_warns_how_to_restart_coredns() -> None:
    corefile = KUBEADM_COREFILE.replace("    reload\n", "")
    rendered = render("ci-defaults", live={CONFIGMAP: {**KUBEADM_COREDNS, "data": {"Corefile": corefile}}}, coreDnsForward="on")
    assert any("no reload plugin" in w and "rollout restart deployment coredns" in w for w in rendered.warnings)


def test_on_needs_the_dns_service() -> None:
    with pytest.raises(SettingsError, match='invalid consul:coreDnsForward "on": must not be on while consul:dnsService is false'):
        render("ci-defaults", coreDnsForward="on", dnsService=False)


def test_the_setting_takes_three_values() -> None:
    assert [f.value for f in CoreDnsForward] == ["off", "on", "removed"]
    with pytest.raises(SettingsError, match='invalid consul:coreDnsForward "yes": must be "off" or "on" or "removed"'):
        render("ci-defaults", coreDnsForward="yes")
