"""Reading the Bicep templates under infra/ offline: pycep (dict trees), tree-sitter-bicep (syntax).

Nothing here compiles Bicep (no Bicep CLI offline); the trees are what the tests assert on.
Conventions of pycep's trees that the helpers hide:

- a resource or module with `if (...)` / `for` has its body one level deeper (`config.config`);
- identifiers and string literals look alike (`keyVaultUri` vs `'keyVaultUri'`), so a value
  that names a declared parameter or variable is a reference;
- object keys that needed quotes keep them (`"'azd-service-name'"`).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MODULES = INFRA / "modules"


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


def bicepparam_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicepparam"))


@cache
def _parser() -> BicepParser:
    return BicepParser()


@cache
def parse(path: Path) -> dict[str, Any]:
    """The pycep tree of a .bicep file (cached: the templates do not change during a run)."""
    return _parser().parse(file_path=path)


def bicepparam_as_bicep(text: str) -> str:
    """A .bicepparam file rewritten as Bicep that both parsers read: `param x = v` -> `var x = v`."""
    text = re.sub(r"^using\s+'[^']*'[ \t]*$", "", text, flags=re.M)
    return re.sub(r"^param\s+(\w+)\s*=", r"var \1 =", text, flags=re.M)


def using_target(path: Path) -> Path:
    match = re.search(r"^using\s+'([^']+)'", path.read_text(), flags=re.M)
    assert match, f"{path.name}: no `using '<template>.bicep'` line"
    return (path.parent / match.group(1)).resolve()


@cache
def bicepparam_values(path: Path) -> dict[str, Any]:
    """The parameter values a .bicepparam file sets, as plain Python values."""
    tree = _parser().parse(text=bicepparam_as_bicep(path.read_text()))
    return {name: literal(var["value"]) for name, var in tree.get("variables", {}).items()}


def literal(node: Any) -> Any:
    """A pycep value made only of literals (and json('<number>')) as a Python value."""
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [literal(item) for item in node]
    if isinstance(node, dict):
        if set(node) == {"function"}:
            function = node["function"]
            if function["type"] == "json":
                return json.loads(next(iter(function["parameters"].values())))
            raise ValueError(f"not a literal: function {function['type']}")
        if set(node) == {"operator"}:
            raise ValueError(f"not a literal: operator {node['operator']['type']}")
        return {key.strip("'"): literal(value) for key, value in node.items()}
    raise ValueError(f"not a literal: {node!r}")


def body(declaration: dict[str, Any]) -> dict[str, Any]:
    """The body of a resource or module, under its `if (...)` or `for`, if any."""
    config = declaration["config"]
    while (
        isinstance(config, dict) and "config" in config and ("condition" in config or "loop_type" in config)
    ):
        config = config["config"]
    return config


def condition(declaration: dict[str, Any]) -> Any:
    """The `if (...)` condition of a resource or module (None when unconditional)."""
    config = declaration["config"]
    return config.get("condition") if "config" in config else None


def resources(
    tree: dict[str, Any], resource_type: str, *, existing: bool = False
) -> dict[str, dict[str, Any]]:
    """Declared resources of a type, by symbolic name (existing references excluded by default)."""
    return {
        name: resource
        for name, resource in tree.get("resources", {}).items()
        if resource["type"].lower() == resource_type.lower() and resource["existing"] == existing
    }


def only(tree: dict[str, Any], resource_type: str) -> dict[str, Any]:
    """The body of the one resource of a type in a tree."""
    found = resources(tree, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    return body(next(iter(found.values())))


def decorators(declaration: dict[str, Any]) -> dict[str, Any]:
    return {decorator["type"]: decorator.get("argument") for decorator in declaration.get("decorators", [])}


def function_call(node: Any, name: str) -> dict[str, Any] | None:
    """The parameters of a call to the pycep function type `name`, if node is one."""
    if isinstance(node, dict) and set(node) == {"function"} and node["function"]["type"] == name:
        return node["function"]["parameters"]
    return None


def property_path(node: Any) -> str | None:
    """`a.b.c` for a pycep property-accessor chain (or a bare identifier), else None."""
    if isinstance(node, str):
        return node
    if (
        isinstance(node, dict)
        and set(node) == {"operator"}
        and node["operator"]["type"] == "property_accessor"
    ):
        operands = node["operator"]["operands"]
        head, tail = property_path(operands["operand_1"]), property_path(operands["operand_2"])
        if head is not None and tail is not None:
            return f"{head}.{tail}"
    return None


def app_settings(tree: dict[str, Any]) -> dict[str, Any]:
    """The function app's app settings (siteConfig.appSettings), by name; names must be unique."""
    site = only(tree, "Microsoft.Web/sites")
    entries = site["properties"]["siteConfig"]["appSettings"]
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"duplicate app settings: {names}"
    return {entry["name"]: entry["value"] for entry in entries}


def text_without_comments(path: Path) -> str:
    """The file without // and /* */ comments (string literals containing // are kept)."""
    out, text, i, quote = [], path.read_text(), 0, False
    while i < len(text):
        if not quote and text.startswith("//", i):
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
            continue
        if not quote and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = len(text) if end < 0 else end + 2
            continue
        if text[i] == "'":
            quote = not quote
        out.append(text[i])
        i += 1
    return "".join(out)


#: What `resourceGroup().name` evaluates to in `evaluate`.
THIS_RESOURCE_GROUP = "<this resource group>"


def evaluate(node: Any, values: dict[str, Any], tree: dict[str, Any]) -> Any:
    """The value of a pycep expression of `tree` for the given parameter values (the others take
    their defaults): enough of Bicep for the templates' own conditions: literals, parameters and
    variables, `?:`, `&&`, `||`, `!`, comparisons, `empty()`, `max()`, `resourceGroup().name`."""
    if node is None or isinstance(node, (bool, int, float)):
        return node
    if isinstance(node, list):
        return [evaluate(item, values, tree) for item in node]
    if isinstance(node, str):
        if node in values:
            return values[node]
        if node in tree.get("parameters", {}):
            return evaluate(tree["parameters"][node]["default"], values, tree)
        if node in tree.get("variables", {}):
            return evaluate(tree["variables"][node]["value"], values, tree)
        return node  # a string literal
    if set(node) == {"operator"}:
        kind, operands = node["operator"]["type"], node["operator"]["operands"]
        if kind == "conditional":
            branch = "true_value" if evaluate(operands["condition"], values, tree) else "false_value"
            return evaluate(operands[branch], values, tree)
        if kind == "not":
            return not evaluate(operands["bool_value"], values, tree)
        if kind == "property_accessor" and function_call(operands["operand_1"], "resource_group") == {
            "resource_group_name": None,
            "subscription_id": None,
        }:
            assert operands["operand_2"] == "name", node
            return THIS_RESOURCE_GROUP
        binary = {
            "and": lambda a, b: a and b,
            "or": lambda a, b: a or b,
            "less_than": lambda a, b: a < b,
            "greater_than": lambda a, b: a > b,
            "equals": lambda a, b: a == b,
            "not_equals": lambda a, b: a != b,
        }
        if kind in binary:
            left, right = (evaluate(operands[k], values, tree) for k in ("operand_1", "operand_2"))
            return binary[kind](left, right)
    if set(node) == {"function"}:
        kind, parameters = node["function"]["type"], node["function"]["parameters"]
        arguments = [evaluate(value, values, tree) for value in parameters.values()]
        if kind == "empty":
            return len(arguments[0]) == 0
        if kind == "max":
            return max(arguments)
    raise ValueError(f"evaluate() does not handle {node!r}")
