"""The emulator's instances of JSON Schemas (emulator/instances.py): valid against the schema by
an independent validator, the same every time, and a clear error where there is none to make."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Annotated, Any, Literal

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AnyUrl, BaseModel, Field

from emulator.instances import SchemaError, instance_of

TEXT = "Ada Lovelace wrote the first program"


def assert_valid(instance: Any, schema: Any) -> None:
    jsonschema_rs.validator_for(schema, validate_formats=True).validate(instance)


# --- generated schemas -------------------------------------------------------------------------

FORMATS = [
    "date",
    "date-time",
    "time",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "uuid",
    "json-pointer",
    "regex",
]
PATTERNS = [r"^[A-Z]{3}-\d{4}$", r"^\+?[0-9 ]{6,}$", r"^(red|green)$", r"[^a-z]+", r"^\w+@\w+\.com$", "^$"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5))


@st.composite
def integer_schemas(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    low = draw(st.integers(-100, 100))
    step = draw(st.integers(1, 7))
    if draw(st.booleans()):
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if draw(st.booleans()):
        schema["maximum" if draw(st.booleans()) else "exclusiveMaximum"] = low + 2 * step + 1
    if draw(st.booleans()):
        schema["multipleOf"] = step
    return schema


@st.composite
def number_schemas(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number"}
    low = draw(st.floats(-1e6, 1e6, allow_nan=False))
    if draw(st.booleans()):
        schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if draw(st.booleans()):
        schema["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = low + draw(
            st.sampled_from([0.5, 3, 1e3])
        )
    if draw(st.booleans()):
        schema["multipleOf"] = draw(st.sampled_from([0.25, 0.1, 2, 0.5]))
        schema.pop("exclusiveMaximum", None), schema.pop("maximum", None)
    return schema


@st.composite
def string_schemas(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["plain", "format", "pattern"]))
    if kind == "format":
        return {"type": "string", "format": draw(st.sampled_from(FORMATS))}
    if kind == "pattern":
        return {"type": "string", "pattern": draw(st.sampled_from(PATTERNS))}
    schema: dict[str, Any] = {"type": "string"}
    least = draw(st.integers(0, 50))
    if draw(st.booleans()):
        schema["minLength"] = least
    if draw(st.booleans()):
        schema["maxLength"] = least + draw(st.integers(0, 10))
    return schema


LEAVES = st.one_of(
    st.just({}),
    st.just({"type": "null"}),
    st.just({"type": "boolean"}),
    integer_schemas(),
    number_schemas(),
    string_schemas(),
    st.lists(SCALARS, min_size=1, max_size=4).map(lambda values: {"enum": values}),
    SCALARS.map(lambda value: {"const": value}),
)


@st.composite
def object_schemas(
    draw: st.DrawFn, children: st.SearchStrategy[Any], *, open_only: bool = False
) -> dict[str, Any]:
    properties = draw(st.dictionaries(st.text("abcxyz_", min_size=1, max_size=6), children, max_size=4))
    required = [name for name in properties if draw(st.booleans())]
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if open_only:  # an allOf member: a closed one could forbid what the other requires
        return schema
    if draw(st.booleans()):
        schema["additionalProperties"] = False
    elif draw(st.booleans()):
        schema["minProperties"] = len(properties) + 1
    return schema


@st.composite
def array_schemas(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> dict[str, Any]:
    least = draw(st.integers(0, 3))
    schema: dict[str, Any] = {"type": "array", "items": draw(children), "minItems": least}
    if draw(st.booleans()):
        schema["maxItems"] = least + draw(st.integers(0, 2))
    return schema


def disjoint(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its property names renamed apart from any other member's of an allOf."""
    renamed = {f"other_{name}": value for name, value in schema["properties"].items()}
    return {**schema, "properties": renamed, "required": [f"other_{name}" for name in schema["required"]]}


def composites(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        object_schemas(children),
        array_schemas(children),
        st.lists(children, min_size=1, max_size=3).map(lambda branches: {"anyOf": branches}),
        st.tuples(children, st.just({"type": "null"})).map(lambda pair: {"anyOf": list(pair)}),
        st.tuples(object_schemas(children, open_only=True), object_schemas(children, open_only=True)).map(
            lambda pair: {"allOf": [pair[0], disjoint(pair[1])]}
        ),
        children.map(lambda child: {"allOf": [child, {"description": "described"}]}),
    )


SCHEMAS = st.recursive(LEAVES, composites, max_leaves=12)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A root object whose properties point, by $ref, into $defs or definitions."""
    keyword = draw(st.sampled_from(["$defs", "definitions"]))
    definitions = draw(
        st.dictionaries(st.sampled_from(["A", "B", "C~1", "D/E"]), SCHEMAS, min_size=1, max_size=3)
    )
    pointers = {name: name.replace("~", "~0").replace("/", "~1") for name in definitions}
    properties = {f"p{i}": {"$ref": f"#/{keyword}/{pointers[name]}"} for i, name in enumerate(definitions)}
    properties["direct"] = draw(SCHEMAS)
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": False,
        keyword: definitions,
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.text(max_size=30))
def test_instances_of_generated_schemas_are_valid_and_stable(schema, text):
    instance = instance_of(schema, text=text)
    assert_valid(instance, schema)
    assert instance_of(schema, text=text) == instance


# --- schemas that pydantic and zod-to-json-schema emit -----------------------------------------


class Address(BaseModel):
    street: str
    postcode: Annotated[str, Field(pattern=r"^\d{5}$")]


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: Annotated[int, Field(ge=1, le=9)]


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool = True


class TreeNode(BaseModel):
    label: str
    children: list[TreeNode] = []


class Everything(BaseModel):
    name: Annotated[str, Field(min_length=3, max_length=8)]
    ratio: Annotated[float, Field(gt=0, lt=1)]
    price: Annotated[decimal.Decimal, Field(ge=0)]
    count: Annotated[int, Field(multiple_of=5, gt=7)]
    when: datetime.datetime
    day: datetime.date
    id: uuid.UUID
    site: AnyUrl
    home: Address
    others: list[Address] = []
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    pair: tuple[int, str]
    scores: dict[str, int]
    tree: TreeNode
    maybe: Address | None = None


def test_pydantic_models_validate_their_instances():
    schema = Everything.model_json_schema()
    instance = instance_of(schema, text=TEXT)
    assert_valid(instance, schema)
    parsed = Everything.model_validate(instance)
    assert parsed.home.street == TEXT and parsed.pet.kind == "cat"


ZOD_SCHEMA = {  # zod-to-json-schema output: a reused object is a "#/properties/..." $ref
    "type": "object",
    "properties": {
        "billing": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 1}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "shipping": {"$ref": "#/properties/billing"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "minItems": 2},
        "status": {"anyOf": [{"type": "string", "const": "open"}, {"type": "number"}]},
        "email": {"type": "string", "format": "email"},
        "when": {"type": "string", "format": "date-time"},
        "count": {"type": "integer", "exclusiveMinimum": 0},
        "note": {"type": ["string", "null"]},
    },
    "required": ["billing", "shipping", "tags", "status", "email", "when", "count", "note"],
    "additionalProperties": False,
    "$schema": "http://json-schema.org/draft-07/schema#",
}


def test_zod_to_json_schema_output():
    instance = instance_of(ZOD_SCHEMA, text=TEXT)
    assert_valid(instance, ZOD_SCHEMA)
    assert instance["shipping"] == instance["billing"] == {"city": TEXT, "zip": TEXT}
    assert instance["tags"] == ["a", "b"] and instance["status"] == "open"


def test_draft_4_exclusive_flags():
    schema = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {
            "above": {"type": "integer", "minimum": 1, "exclusiveMinimum": True},
            "below": {"type": "number", "maximum": 0, "exclusiveMaximum": True},
        },
    }
    instance = instance_of(schema, text=TEXT)
    assert_valid(instance, schema)
    assert instance == {"above": 2, "below": -1}


def test_strings_are_the_text_unless_the_schema_says_otherwise():
    schema = {
        "type": "object",
        "properties": {
            "plain": {"type": "string"},
            "short": {"type": "string", "maxLength": 3},
            "long": {"type": "string", "minLength": 40},
            "date": {"type": "string", "format": "date"},
        },
    }
    assert instance_of(schema, text="hi there") == {
        "plain": "hi there",
        "short": "hi ",
        "long": "hi there" + "x" * 32,
        "date": "2024-05-17",
    }


@pytest.mark.parametrize(
    ("schema", "complaint"),
    [
        (False, "'false' has no instance"),
        ({"$ref": "#/$defs/Missing"}, "'#/$defs/Missing' does not resolve"),
        ({"$ref": "https://example.com/schema.json"}, "only local '$ref's"),
        ({"type": "colour"}, "'type' must be one of"),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "'minItems' is greater than 'maxItems'"),
        ({"type": "array", "minItems": 10**9}, "more than the emulator makes"),
        ({"type": "string", "minLength": 10**9}, "more than the emulator makes"),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "no multiple"),
        ({"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 1}, "no number lies"),
        ({"type": "string", "pattern": "(?<=x)y"}, "cannot make a string that matches"),
        ({"type": "object", "required": ["x"], "additionalProperties": False}, "'x' is required"),
        ({"anyOf": [False, {"$ref": "#/nowhere"}]}, "no branch of 'anyOf'"),
        (
            {
                "$defs": {"N": {"properties": {"next": {"$ref": "#/$defs/N"}}, "required": ["next"]}},
                "$ref": "#/$defs/N",
            },
            "deeper than",
        ),
        ({"$ref": "#"}, "chain longer than"),
    ],
)
def test_schemas_without_an_instance_say_why(schema, complaint):
    with pytest.raises(SchemaError, match=None) as raised:
        instance_of(schema, text=TEXT)
    assert complaint in str(raised.value)


def test_an_instance_too_large_to_make_is_refused():
    wide = {"type": "object", "properties": {f"p{i}": {"$ref": "#/$defs/Row"} for i in range(40)}}
    wide["$defs"] = {"Row": {"type": "array", "minItems": 400, "items": {"type": "integer"}}}
    with pytest.raises(SchemaError, match="more than 10000 values"):
        instance_of(wide, text=TEXT)
