"""The guard of disruptive setting changes, as the program declares it (the provider's check is
tested in provider/guard_test.go, and on a deployed stack by tests/e2e/test_refusals.py)."""

from __future__ import annotations

from typing import Any

from harness import run_main

from consul.settings import GUARDED_SETTINGS


def guard_inputs(**overrides: Any) -> dict[str, Any]:
    rendered, error = run_main("dev", **overrides)
    assert error is None
    (guard,) = [d for d in rendered.declared if d.typ == "consul-keys:index:ChangeGuard"]
    inputs: dict[str, Any] = guard.inputs
    return inputs


def test_the_guard_holds_each_guarded_setting_as_the_stack_gives_it() -> None:
    inputs = guard_inputs(serverStorageSize="20Gi", serverStorageClass="fast", gossipEncryption=False)
    assert inputs["values"] == {
        "consul:serverStorageSize": "20Gi",
        "consul:serverStorageClass": "fast",
        "consul:gossipEncryption": "false",
        "consul:tls": "true",
    }
    assert inputs["allowed"] == []


def test_every_guarded_setting_has_a_reason_naming_the_readme_s_procedure() -> None:
    reasons = guard_inputs()["reasons"]
    assert set(reasons) == {f"consul:{key}" for key in GUARDED_SETTINGS}
    for reason in reasons.values():
        assert reason.endswith('(README, "Settings a running cluster refuses")')


def test_allowed_changes_reach_the_guard_by_their_full_names_and_every_run_warns_of_them() -> None:
    assert guard_inputs(allowedChanges=["serverStorageSize", "tls"])["allowed"] == ["consul:serverStorageSize", "consul:tls"]
    rendered, _ = run_main("dev", allowedChanges=["tls"])
    assert rendered.warnings == [
        "consul:allowedChanges lets tls change on this deployed stack unguarded; remove it once the procedure is done "
        "(pulumi config rm consul:allowedChanges)"
    ]
    assert run_main("dev")[0].warnings == []


def test_the_readme_has_the_section_the_refusals_name() -> None:
    from harness import PROJECT_DIR

    assert "**Settings a running cluster refuses.**" in (PROJECT_DIR / "README.md").read_text()
