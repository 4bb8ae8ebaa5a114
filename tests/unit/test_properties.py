"""Property-based tests over the configuration space."""

from __future__ import annotations

import json

import pytest
from harness import cli_config, merged_agent_config, render
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from validation import agent_config_errors, consul_config_files, schema_errors

from consul.settings import SettingsError, load_settings

DNS_LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")
# Each example renders the whole program; shrinking a failure of these would take minutes.
QUICK = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


@st.composite
def valid_overrides(draw):
    replicas = draw(st.sampled_from([1, 3, 5, 7]))
    return {
        "namespace": draw(DNS_LABEL),
        "datacenter": draw(st.from_regex(r"\A[a-z0-9_-]{1,20}\Z")),
        "serverReplicas": replicas,
        "serverUpdatePartition": draw(st.integers(0, replicas)),
        "serverAntiAffinity": draw(st.sampled_from(["required", "preferred"])),
        "serverZoneSpread": draw(st.sampled_from(["none", "preferred", "required"])),
        "serverStorageSize": f"{draw(st.integers(1, 4096))}{draw(st.sampled_from(['Mi', 'Gi', 'Ti', 'G']))}",
        "createNamespace": draw(st.booleans()),
    }


@QUICK
@given(valid_overrides())
def test_property_valid_settings_give_valid_objects_and_quorum(overrides):
    rendered = render("ci-defaults", **overrides)
    assert [e for m in rendered.manifests() for e in schema_errors(m)] == []
    assert all(agent_config_errors(config) == [] for _, config in consul_config_files(rendered.manifests()))
    replicas = overrides["serverReplicas"]
    statefulset = rendered.one("StatefulSet", "consul-server")
    config = merged_agent_config(rendered.one("ConfigMap", "consul-server-config")["data"])
    assert statefulset["spec"]["replicas"] == replicas == config["bootstrap_expect"]
    assert replicas % 2 == 1
    joins = {n: json.loads(t)["retry_join"] for n, t in rendered.one("ConfigMap", "consul-server-join")["data"].items()}
    every = [f"consul-server-{i}.consul-server.{overrides['namespace']}.svc:8301" for i in range(replicas)]
    assert joins == {f"consul-server-{i}.json": every[:i] + every[i + 1 :] for i in range(replicas)}
    # The budget lets a drain proceed yet never takes a majority away.
    max_unavailable = rendered.one("PodDisruptionBudget", "consul-server")["spec"]["maxUnavailable"]
    assert max_unavailable >= 1
    assert replicas == 1 or replicas - max_unavailable >= replicas // 2 + 1


def _load(**overrides):
    raw = {k.split(":", 1)[1]: v for k, v in cli_config("ci-defaults", overrides).items()}
    return load_settings(raw, warn=lambda _: None)


@settings(max_examples=200, deadline=None)
@given(st.integers(-1000, 1000).filter(lambda n: n not in (1, 3, 5, 7)))
def test_property_bad_replica_counts_fail_cleanly(replicas):
    with pytest.raises(SettingsError, match=rf"^invalid consul:serverReplicas {replicas}: must be 1, 3, 5 or 7"):
        _load(serverReplicas=replicas)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=70).filter(lambda s: not __import__("re").fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", s)))
def test_property_bad_namespaces_fail_cleanly(namespace):
    with pytest.raises(SettingsError) as raised:
        _load(namespace=namespace)
    assert raised.value.key == "namespace"


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.text(max_size=20),
        st.integers(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    )
)
def test_property_arbitrary_values_never_crash(value):
    """Any value for any key either loads or fails with a SettingsError naming that key."""
    for key in (
        "serverStorageSize",
        "serverResources",
        "serverTolerations",
        "serverNodeSelector",
        "recursors",
        "image",
        "serverExtraConfig",
    ):
        try:
            _load(**{key: value})
        except SettingsError as error:
            failed_key = error.key
        else:
            failed_key = key
        assert failed_key == key
