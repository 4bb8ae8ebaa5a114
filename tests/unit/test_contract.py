"""The configuration contract: Pulumi.yaml declares every key the program reads, and the README documents it."""

from __future__ import annotations

import re

from harness import PROJECT_DIR, cli_config, project_declarations, stack_values

from consul.settings import _Reader, load_settings


def test_contract_every_key_is_declared_with_type_default_and_description():
    for key, declaration in project_declarations().items():
        assert declaration.get("type") in ("string", "integer", "boolean", "array", "object"), key
        assert "default" in declaration, key
        assert len(declaration.get("description", "")) > 20, key
        if declaration["type"] == "array":
            assert "items" in declaration, key


def test_contract_the_program_reads_exactly_the_declared_keys(monkeypatch):
    read: set[str] = set()
    original = _Reader._text

    def recording(self, key):
        read.add(key)
        return original(self, key)

    monkeypatch.setattr(_Reader, "_text", recording)
    raw = {key.split(":", 1)[1]: value for key, value in cli_config("ci-defaults", {}).items()}
    load_settings(raw, warn=lambda _: None)
    assert read == set(project_declarations())


def test_contract_readme_documents_every_key():
    readme = (PROJECT_DIR / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z]+)` \|", readme, re.MULTILINE))
    assert documented >= set(project_declarations())


def test_contract_stack_files_only_set_declared_keys():
    declared = set(project_declarations())
    for stack in ("dev", "prod"):
        assert set(stack_values(stack)) <= declared, stack


def test_readme_outputs_table_names_every_export():
    import re

    from harness import render

    readme = (PROJECT_DIR / "README.md").read_text()
    table = readme.split("### Outputs", 1)[1].split("\n\n", 2)[1]
    documented = re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)
    # The replication token is exported by the primary of a federation only (WAN peers set).
    assert documented == list(render("dev", wanPeerNamespaces=["consul-dc2"]).outputs)


def test_main_module_declares_the_stack_through_its_async_entry_point():
    """__main__.py registers `main` with pulumi.run; the language host awaits it after the module."""
    from harness import render, run_main_module

    declared = run_main_module("dev").declared
    # The guard of disruptive changes comes first, alone: the rest waits for the engine's check.
    assert declared[0].typ == "consul-keys:index:ChangeGuard"
    assert sorted((d.typ, d.name) for d in declared[1:]) == sorted((d.typ, d.name) for d in render("dev").declared)
    # The foundation is sent before the rest is declared.
    assert {declared[1].typ, declared[2].typ} == {"consul-keys:index:KeyMaterial", "kubernetes:core/v1:Namespace"}
