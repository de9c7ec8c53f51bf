"""Syntax and wiring of the Bicep templates, offline (no Bicep CLI here).

Two independent parsers must read every file: pycep (the same grammar family checkov uses; a file
it cannot read is silently skipped by checkov) and tree-sitter-bicep (no ERROR or missing node).
Then what a compiler would catch first: module paths, module parameters, parameter files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tree_sitter_bicep
from tree_sitter import Language, Node, Parser

from .bicep import (
    INFRA,
    bicep_files,
    bicepparam_as_bicep,
    bicepparam_files,
    bicepparam_values,
    body,
    decorators,
    parse,
    using_target,
)

EXPECTED_FILES = {
    "main.bicep",
    "main.sub.bicep",
    "modules/function.bicep",
    "modules/keyvault.bicep",
    "modules/monitoring.bicep",
    "modules/network.bicep",
    "modules/rbac-aml.bicep",
    "modules/rbac-foundry.bicep",
    "modules/rbac-keyvault.bicep",
    "modules/rbac.bicep",
    "modules/redis.bicep",
    "modules/storage.bicep",
}

_TREE_SITTER = Parser(Language(tree_sitter_bicep.language()))


def _syntax_errors(source: bytes) -> list[str]:
    errors: list[str] = []

    def walk(node: Node) -> None:
        if node.type == "ERROR" or node.is_missing:
            row, column = node.start_point
            kind = f"missing {node.type}" if node.is_missing else "syntax error"
            errors.append(f"line {row + 1}, column {column + 1}: {kind}")
        for child in node.children:
            walk(child)

    walk(_TREE_SITTER.parse(source).root_node)
    return errors


def _rel(path: Path) -> str:
    return path.relative_to(INFRA).as_posix()


def test_the_expected_templates_exist() -> None:
    assert {_rel(path) for path in bicep_files()} == EXPECTED_FILES
    assert {_rel(path) for path in bicepparam_files()} == {"main.bicepparam", "main.sub.bicepparam"}


@pytest.mark.parametrize("path", bicep_files(), ids=_rel)
def test_pycep_parses(path: Path) -> None:
    tree = parse(path)
    assert tree.get("resources") or tree.get("modules"), f"{_rel(path)}: nothing declared"


@pytest.mark.parametrize("path", bicep_files() + bicepparam_files(), ids=_rel)
def test_tree_sitter_finds_no_syntax_error(path: Path) -> None:
    source = path.read_bytes()
    if path.suffix == ".bicepparam":  # tree-sitter-bicep has no `param x = value` rule
        source = bicepparam_as_bicep(source.decode()).encode()
    assert _syntax_errors(source) == []


def test_the_syntax_gate_catches_errors() -> None:
    """The gate itself: a missing brace, a missing colon and a dangling operator are found."""
    assert _syntax_errors(b"resource a 'Microsoft.Web/sites@2024-04-01' = {\n  name: 'a'\n")
    assert _syntax_errors(b"var a = {\n  name 'a'\n}\n")
    assert _syntax_errors(b"var a = 1 +\n")
    assert _syntax_errors(b"var a = {\n  name: 'a'\n}\n") == []


@pytest.mark.parametrize("path", bicep_files(), ids=_rel)
def test_every_parameter_is_described(path: Path) -> None:
    undocumented = [
        name
        for name, param in parse(path).get("parameters", {}).items()
        if not decorators(param).get("description")
    ]
    assert undocumented == []


@pytest.mark.parametrize("path", bicep_files(), ids=_rel)
def test_modules_exist_and_get_exactly_their_parameters(path: Path) -> None:
    for name, module in parse(path).get("modules", {}).items():
        assert module["type"] == "local", f"{name}: registry modules are invisible offline; use local files"
        target = path.parent / module["detail"]["path"]
        assert target.is_file(), f"{name}: {target} does not exist"
        declared = parse(target).get("parameters", {})
        passed = set(body(module).get("params", {}))
        assert passed - set(declared) == set(), f"{name}: unknown parameters passed to {target.name}"
        required = {p for p, decl in declared.items() if decl.get("default") is None}
        assert required - passed == set(), f"{name}: required parameters of {target.name} not passed"


@pytest.mark.parametrize("path", bicepparam_files(), ids=_rel)
def test_parameter_files_match_their_template(path: Path) -> None:
    template = using_target(path)
    assert template.is_file(), f"{path.name}: `using` names {template}, which does not exist"
    declared = parse(template)["parameters"]
    values = bicepparam_values(path)
    assert set(values) - set(declared) == set(), (
        f"{path.name} sets parameters {template.name} does not declare"
    )
    required = {name for name, decl in declared.items() if decl.get("default") is None}
    assert required - set(values) == set(), f"{path.name} leaves required parameters unset"
    for name, value in values.items():
        allowed = decorators(declared[name]).get("allowed")
        if allowed is not None:
            assert value in allowed, f"{path.name}: {name}={value!r} not in @allowed {allowed}"


def test_both_parameter_files_deploy_the_same_gateway() -> None:
    group, sub = (
        bicepparam_values(INFRA / "main.bicepparam"),
        bicepparam_values(INFRA / "main.sub.bicepparam"),
    )
    shared = set(group) & set(sub)
    assert {"environmentName", "gatewayConfig", "allowedCorsOrigins"} <= shared
    assert {name: group[name] for name in shared} == {name: sub[name] for name in shared}


def test_the_subscription_template_passes_every_parameter_through() -> None:
    main, sub = parse(INFRA / "main.bicep"), parse(INFRA / "main.sub.bicep")
    assert main["globals"]["scope"]["value"] == "resourceGroup"
    assert sub["globals"]["scope"]["value"] == "subscription"
    (gateway,) = sub["modules"].values()
    assert gateway["detail"]["path"] == "main.bicep"
    params = body(gateway)["params"]
    assert set(params) == set(main["parameters"])
    assert all(params[name] == name for name in params), "every value is the same-named parameter"
    sub_params = sub["parameters"]
    assert set(sub_params) == set(main["parameters"]) | {"resourceGroupName"}
    for name, decl in main["parameters"].items():
        if name == "location":  # resourceGroup().location has no meaning at subscription scope
            continue
        assert sub_params[name]["type"] == decl["type"], name
        assert sub_params[name].get("default") == decl.get("default"), name
        same = ("allowed", "min_value", "max_value", "min_length", "max_length")
        assert {k: v for k, v in decorators(sub_params[name]).items() if k in same} == {
            k: v for k, v in decorators(decl).items() if k in same
        }, name
    assert set(sub["outputs"]) >= set(main["outputs"])
