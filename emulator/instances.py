"""A deterministic instance of a JSON Schema: the emulator's tool-call arguments and
structured (``response_format``) answers.

:func:`instance_of` is a pure function of the schema and a text: every free-form string is
that text (the last user message), so answers stay echoes a test can predict. It knows the
keywords that pydantic, zod-to-json-schema and OpenAI's strict mode emit:

- ``type`` (one or a list; the first that is not ``"null"``), ``const``, ``enum`` (the first
  value), ``anyOf``/``oneOf`` (the first branch that has an instance), ``allOf`` (merged);
- objects: ``properties`` (optional ones too, near the top), ``required``,
  ``additionalProperties``, ``minProperties``/``maxProperties``;
- arrays: ``items``, ``prefixItems`` (and draft-7 tuple ``items``), ``minItems``/``maxItems``
  (one item unless more are required), ``uniqueItems``;
- strings: ``minLength``/``maxLength``, ``format`` (date, date-time, time, email, uri, uuid,
  ipv4, ipv6, hostname, ...), ``pattern`` (simple regular expressions);
- numbers: ``minimum``/``maximum``, ``exclusiveMinimum``/``exclusiveMaximum`` (numbers or
  draft-4 booleans), ``multipleOf``;
- ``$ref`` to anywhere in the same document (``#``, ``#/$defs/...``, ``#/definitions/...``,
  ``#/properties/...``), recursive ones included.

``not``, ``if``/``then``/``else`` and ``contains`` are ignored. A schema without an instance
(``false``, a dangling ``$ref``, a pattern too hard to satisfy, limits out of reach) raises
:class:`SchemaError`; so does one whose instance would be too deep or too large.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

# re's own parser: making a string that matches a pattern needs the pattern's parse tree.
from re import _constants as _sre  # type: ignore[attr-defined]
from re import _parser as _sre_parse  # type: ignore[attr-defined]
from typing import Any

# Nesting levels (objects, arrays, $refs) an instance may have; deeper schemas are refused.
MAX_DEPTH = 32
# Below this depth optional properties are left out and arrays get only ``minItems`` items,
# so that recursive schemas (a tree of nodes) end.
RICH_DEPTH = 6
# Values (of any type) in one instance, and the largest array and string it may hold.
MAX_VALUES = 10_000
MAX_ITEMS = 1_000
MAX_STRING_CHARS = 10_000
MAX_INSTANCE_CHARS = 1_000_000
MAX_PATTERN_CHARS = 1_000
MAX_UNION_BRANCHES = 64
# A longer text is not tried against a pattern: matching it could backtrack for ages.
MAX_PATTERN_SUBJECT_CHARS = 100

JSON_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")

_FORMAT_EXAMPLES: dict[str, str] = {
    "date": "2024-05-17",
    "date-time": "2024-05-17T09:30:00Z",
    "time": "09:30:00Z",
    "duration": "P1DT2H",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "iri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "iri-reference": "https://example.com/",
    "uri-template": "https://example.com/{id}",
    "json-pointer": "/items/0",
    "relative-json-pointer": "0",
    "regex": "^.*$",
    "byte": "ZW11bGF0b3I=",
}


class SchemaError(ValueError):
    """The schema has no instance the emulator can make; ``str(exc)`` says why."""


class _TooLarge(SchemaError):
    """The instance would exceed a limit: no other branch of a union is tried."""


def instance_of(schema: Any, *, text: str) -> Any:
    """A JSON value valid against ``schema``, the same for the same schema and ``text``."""
    return _Builder(schema, text).value(schema, depth=0, variant=0)


class _Builder:
    def __init__(self, root: Any, text: str) -> None:
        self._root = root
        self._text = text[:MAX_STRING_CHARS]
        self._values = 0
        self._chars = 0

    def value(self, schema: Any, *, depth: int, variant: int) -> Any:
        self._values += 1
        if self._values > MAX_VALUES:
            raise _TooLarge(f"the instance would hold more than {MAX_VALUES} values")
        if depth > MAX_DEPTH:
            raise SchemaError(f"the instance would nest deeper than {MAX_DEPTH} levels")
        schema = self._flattened(schema, depth)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            choices = schema["enum"]
            if not isinstance(choices, list) or not choices:
                raise SchemaError("'enum' must be a non-empty list")
            return choices[variant % len(choices)]
        for union in ("anyOf", "oneOf"):
            if union in schema:
                return self._first_branch(schema, union, depth=depth, variant=variant)
        kind = _type_of(schema)
        if kind == "object":
            return self._object(schema, depth=depth, variant=variant)
        if kind == "array":
            return self._array(schema, depth=depth, variant=variant)
        if kind == "string":
            return self._string(schema, variant=variant)
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer", target=1 + variant)
        if kind == "boolean":
            return variant % 2 == 0
        return None

    def _flattened(self, schema: Any, depth: int) -> dict[str, Any]:
        """``schema`` as one object: boolean schemas, ``$ref`` and ``allOf`` resolved."""
        if schema is True:
            return {}
        if schema is False:
            raise SchemaError("the schema 'false' has no instance")
        if not isinstance(schema, Mapping):
            raise SchemaError(f"a schema must be an object or a boolean, not {_json_kind(schema)}")
        flat = dict(schema)
        for _ in range(MAX_DEPTH):
            if "$ref" in flat:
                target = self._resolved(flat.pop("$ref"))
                flat = _merged(target, flat)  # keywords beside a $ref add to its target's
            elif "allOf" in flat:
                branches = flat.pop("allOf")
                if not isinstance(branches, list):
                    raise SchemaError("'allOf' must be a list of schemas")
                if len(branches) > MAX_UNION_BRANCHES:
                    raise _TooLarge(f"an 'allOf' of more than {MAX_UNION_BRANCHES} schemas")
                for branch in branches:
                    flat = _merged(flat, self._flattened(branch, depth + 1))
            else:
                return flat
        raise SchemaError(f"'$ref' and 'allOf' chain longer than {MAX_DEPTH} steps")

    def _resolved(self, ref: Any) -> dict[str, Any]:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"only local '$ref's (starting with '#') are supported, not {ref!r}")
        target = self._root
        pointer = ref[1:]
        if pointer and not pointer.startswith("/"):
            raise SchemaError(f"'$ref' {ref!r} is not a JSON pointer")
        for token in pointer.split("/")[1:]:
            token = token.replace("~1", "/").replace("~0", "~")
            if isinstance(target, Mapping) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                raise SchemaError(f"'$ref' {ref!r} does not resolve")
        if target is True:
            return {}
        if not isinstance(target, Mapping):
            raise SchemaError(f"'$ref' {ref!r} does not point to a schema")
        return dict(target)

    def _first_branch(self, schema: dict[str, Any], union: str, *, depth: int, variant: int) -> Any:
        branches = schema[union]
        if not isinstance(branches, list) or not branches:
            raise SchemaError(f"'{union}' must be a non-empty list of schemas")
        if len(branches) > MAX_UNION_BRANCHES:
            raise _TooLarge(f"an '{union}' of more than {MAX_UNION_BRANCHES} schemas")
        rest = {key: value for key, value in schema.items() if key != union}
        ordered = list(branches)
        if depth >= RICH_DEPTH:  # deep down, end recursive unions (a node or null) with null
            ordered.sort(key=lambda branch: not _is_null_schema(branch))
        problems = []
        for branch in ordered:
            try:
                merged = _merged(rest, self._flattened(branch, depth + 1))
                return self.value(merged, depth=depth + 1, variant=variant)
            except _TooLarge:
                raise
            except SchemaError as exc:
                problems.append(str(exc))
        raise SchemaError(f"no branch of '{union}' has an instance ({'; '.join(problems[:3])})")

    def _object(self, schema: dict[str, Any], *, depth: int, variant: int) -> dict[str, Any]:
        properties = schema.get("properties", {})
        if not isinstance(properties, Mapping):
            raise SchemaError("'properties' must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
            raise SchemaError("'required' must be a list of property names")
        extra = schema.get("additionalProperties", True)
        most = _count(schema, "maxProperties", default=None)
        least = _count(schema, "minProperties", default=0)
        names = list(dict.fromkeys(required))
        if depth < RICH_DEPTH:
            names += [name for name in properties if name not in names]
        if most is not None:
            if len(required) > most:
                raise SchemaError("'required' names more properties than 'maxProperties' allows")
            names = names[:most]
        result: dict[str, Any] = {}
        for name in names:
            if name in properties:
                result[name] = self.value(properties[name], depth=depth + 1, variant=variant)
            elif extra is False:
                raise SchemaError(f"{name!r} is required but 'additionalProperties' is false")
            else:
                result[name] = self.value(extra, depth=depth + 1, variant=variant)
        for number in range(1, least - len(result) + 1):
            if extra is False:
                raise SchemaError("'minProperties' needs properties that 'additionalProperties' forbids")
            result[f"property_{number}"] = self.value(extra, depth=depth + 1, variant=variant)
        return result

    def _array(self, schema: dict[str, Any], *, depth: int, variant: int) -> list[Any]:
        items = schema.get("items", True)
        if "prefixItems" in schema:
            prefix, rest = schema["prefixItems"], items
        elif isinstance(items, list):  # draft 4-7 tuples
            prefix, rest = items, schema.get("additionalItems", True)
        else:
            prefix, rest = [], items
        if not isinstance(prefix, list):
            raise SchemaError("'prefixItems' must be a list of schemas")
        least = _count(schema, "minItems", default=0)
        most = _count(schema, "maxItems", default=None)
        length = max(least, len(prefix) or 1) if depth < RICH_DEPTH else least
        if most is not None:
            if least > most:
                raise SchemaError("'minItems' is greater than 'maxItems'")
            length = min(length, most)
        if rest is False and length > len(prefix):
            if least > len(prefix):
                raise SchemaError("'minItems' asks for more items than the schema allows")
            length = len(prefix)
        if length > MAX_ITEMS:
            raise _TooLarge(f"an array of {length} items is more than the emulator makes ({MAX_ITEMS})")
        values = []
        for index in range(length):
            item = prefix[index] if index < len(prefix) else rest
            # Distinct variants keep the items distinct (uniqueItems) and the first one plain.
            values.append(self.value(item, depth=depth + 1, variant=variant + index))
        return values

    def _string(self, schema: dict[str, Any], *, variant: int) -> str:
        text = self._plain_string(schema, variant=variant)
        self._chars += len(text)
        if self._chars > MAX_INSTANCE_CHARS:
            raise _TooLarge(f"the instance would hold more than {MAX_INSTANCE_CHARS} characters")
        return text

    def _plain_string(self, schema: dict[str, Any], *, variant: int) -> str:
        least = _count(schema, "minLength", default=0)
        most = _count(schema, "maxLength", default=None)
        if least > MAX_STRING_CHARS:
            raise _TooLarge(f"a string of {least} characters is more than the emulator makes")
        if most is not None and least > most:
            raise SchemaError("'minLength' is greater than 'maxLength'")
        pattern = schema.get("pattern")
        if pattern is not None:
            return _string_matching(pattern, least, most, self._candidates(variant))
        example = _format_example(schema.get("format"), self._text, variant)
        if example is not None and _fits(example, least, most):
            return example
        text = self._text if variant == 0 else f"{self._text} {variant + 1}".lstrip()
        if most is not None:
            text = text[:most]
        return text + "x" * (least - len(text))

    def _candidates(self, variant: int) -> list[str]:
        text = self._text if variant == 0 else f"{self._text} {variant + 1}"
        return [text] if len(text) <= MAX_PATTERN_SUBJECT_CHARS else []


# --- keywords ------------------------------------------------------------------------


def _type_of(schema: Mapping[str, Any]) -> str:
    """The JSON type an instance of ``schema`` gets: the first listed that is not null, else
    the one its keywords imply; a schema that says nothing gets a string."""
    declared = schema.get("type")
    if isinstance(declared, str):
        declared = [declared]
    if declared is not None:
        if not isinstance(declared, list) or not declared or not all(t in JSON_TYPES for t in declared):
            raise SchemaError(f"'type' must be one of {', '.join(JSON_TYPES)} or a list of them")
        return next((kind for kind in declared if kind != "null"), "null")
    keywords = schema.keys()
    if keywords & {"properties", "required", "additionalProperties", "minProperties", "maxProperties"}:
        return "object"
    if keywords & {"items", "prefixItems", "minItems", "maxItems", "uniqueItems"}:
        return "array"
    if keywords & {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}:
        return "number"
    return "string"


def _is_null_schema(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def _merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """One schema that asks for what both ask for (as far as the emulator needs to know)."""
    merged = dict(base)
    for key, value in extra.items():
        if key not in merged:
            merged[key] = value
        elif key == "properties" and isinstance(value, Mapping) and isinstance(merged[key], Mapping):
            properties = dict(merged[key])
            for name, schema in value.items():
                properties[name] = {"allOf": [properties[name], schema]} if name in properties else schema
            merged[key] = properties
        elif key == "required" and isinstance(value, list) and isinstance(merged[key], list):
            merged[key] = list(dict.fromkeys([*merged[key], *value]))
        elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
            merged[key] = _tighter(max, merged[key], value)
        elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
            merged[key] = _tighter(min, merged[key], value)
        elif key == "type":
            merged[key] = _common_type(merged[key], value)
        elif key == "allOf" and isinstance(value, list) and isinstance(merged[key], list):
            merged[key] = [*merged[key], *value]
        elif key in ("anyOf", "oneOf") and isinstance(value, list) and isinstance(merged[key], list):
            # Two unions at once: an instance fits a branch of each.
            if len(merged[key]) * len(value) > MAX_UNION_BRANCHES:
                raise _TooLarge(f"unions of more than {MAX_UNION_BRANCHES} branches at once")
            merged[key] = [{"allOf": [first, second]} for first in merged[key] for second in value]
        else:
            merged[key] = value
    # An object closed by one side (additionalProperties false) may have only that side's
    # properties, whatever the other side declares.
    for side in (base, extra):
        declared = side.get("properties", {})
        if side.get("additionalProperties") is False and isinstance(declared, Mapping):
            properties = merged.get("properties", {})
            if isinstance(properties, Mapping):
                merged["properties"] = {name: properties[name] for name in properties if name in declared}
            merged["additionalProperties"] = False
    return merged


def _tighter(pick: Callable[[Any, Any], Any], first: Any, second: Any) -> Any:
    numbers = (int, float)
    if isinstance(first, bool) or isinstance(second, bool):  # draft-4 exclusive flags
        return first or second
    if isinstance(first, numbers) and isinstance(second, numbers):
        return pick(first, second)
    return second


def _common_type(first: Any, second: Any) -> Any:
    firsts = [first] if isinstance(first, str) else first
    seconds = [second] if isinstance(second, str) else second
    if not isinstance(firsts, list) or not isinstance(seconds, list):
        return second
    common = [kind for kind in firsts if kind in seconds]
    if "number" in firsts and "integer" in seconds and "integer" not in common:
        common.append("integer")
    if "integer" in firsts and "number" in seconds and "integer" not in common:
        common.append("integer")
    if not common:
        raise SchemaError(f"'allOf' asks for types {firsts} and {seconds} at once")
    return common


def _count(schema: Mapping[str, Any], name: str, *, default: int | None) -> Any:
    value = schema.get(name, default)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SchemaError(f"{name!r} must be a non-negative integer")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a number"


# --- numbers -------------------------------------------------------------------------


def _bound(schema: Mapping[str, Any], name: str) -> float | None:
    value = schema.get(name)
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SchemaError(f"{name!r} must be a finite number")
    return value


@dataclass(frozen=True)
class _Bounds:
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False

    def contain(self, value: float) -> bool:
        low, high = self.low, self.high
        above = low is None or value > low or (not self.low_open and value == low)
        below = high is None or value < high or (not self.high_open and value == high)
        return above and below

    def nearest(self, target: float) -> float:
        """``target`` if inside, else a bound, or the middle when both bounds are open."""
        if self.contain(target):
            return target
        low, high = self.low, self.high
        candidates: list[float] = []
        if low is not None:
            candidates += [low, low + 1]
        if high is not None:
            candidates += [high, high - 1]
        if low is not None and high is not None:
            candidates.append((low + high) / 2)
        inside = [value for value in candidates if self.contain(value)]
        if not inside:
            raise SchemaError("no number lies between 'minimum' and 'maximum'")
        return inside[0]


def _bounds(schema: Mapping[str, Any]) -> _Bounds:
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    low_open = schema.get("exclusiveMinimum") is True and low is not None  # draft 4: a flag
    high_open = schema.get("exclusiveMaximum") is True and high is not None
    exclusive_low, exclusive_high = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    if exclusive_low is not None and (low is None or exclusive_low >= low):
        low, low_open = exclusive_low, True
    if exclusive_high is not None and (high is None or exclusive_high <= high):
        high, high_open = exclusive_high, True
    return _Bounds(low, low_open, high, high_open)


def _number(schema: Mapping[str, Any], *, integer: bool, target: int) -> int | float:
    """The value nearest ``target`` inside the schema's bounds (and a multiple of ``multipleOf``)."""
    bounds = _bounds(schema)
    step = _bound(schema, "multipleOf")
    if step is not None and step <= 0:
        raise SchemaError("'multipleOf' must be greater than 0")
    if integer or step is not None:
        return _multiple(1 if step is None else step, bounds, target, integer=integer)
    value = bounds.nearest(target)
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else value


def _multiple(step: float, bounds: _Bounds, target: int, *, integer: bool) -> int | float:
    """The multiple of ``step`` (an integer one when ``integer``) inside ``bounds`` nearest ``target``."""
    exact = Decimal(str(step))
    if integer and exact != exact.to_integral_value():
        # Integers that are multiples of a fraction p/q are the multiples of p.
        numerator, denominator = exact.as_integer_ratio()
        exact = Decimal(numerator // math.gcd(numerator, denominator))
    smallest = largest = None
    if bounds.low is not None:
        low = Decimal(str(bounds.low))
        smallest = math.floor(low / exact) + 1
        if not bounds.low_open and (smallest - 1) * exact >= low:
            smallest -= 1
    if bounds.high is not None:
        high = Decimal(str(bounds.high))
        largest = math.ceil(high / exact) - 1
        if not bounds.high_open and (largest + 1) * exact <= high:
            largest += 1
    factor = round(Decimal(target) / exact)
    if smallest is not None:
        factor = max(factor, smallest)
    if largest is not None:
        factor = min(factor, largest)
    if (smallest is not None and factor < smallest) or (largest is not None and factor > largest):
        raise SchemaError("no multiple of 'multipleOf' lies between 'minimum' and 'maximum'")
    value = factor * exact
    if integer or value == value.to_integral_value():
        return int(value)
    return float(value)


# --- strings -------------------------------------------------------------------------


def _fits(text: str, least: int, most: int | None) -> bool:
    return len(text) >= least and (most is None or len(text) <= most)


def _format_example(name: Any, text: str, variant: int) -> str | None:
    if name == "uuid":
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{text}#{variant}"))
    example = _FORMAT_EXAMPLES.get(name) if isinstance(name, str) else None
    if example is None or variant == 0:
        return example
    if name in ("email", "idn-email"):
        return f"user{variant + 1}@example.com"
    if name == "date":
        return f"2024-05-{17 + variant % 11:02d}"
    if name == "date-time":
        return f"2024-05-{17 + variant % 11:02d}T09:30:00Z"
    if name in ("uri", "url", "iri", "uri-reference", "iri-reference"):
        return f"https://example.com/{variant + 1}"
    return example


def _string_matching(pattern: Any, least: int, most: int | None, candidates: Sequence[str]) -> str:
    if not isinstance(pattern, str):
        raise SchemaError("'pattern' must be a string")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise _TooLarge(f"a 'pattern' longer than {MAX_PATTERN_CHARS} characters")
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        raise SchemaError(f"'pattern' {pattern!r} is not a regular expression the emulator reads") from None
    made = _Pattern().make(pattern)
    # The made string first: short, so a pattern that backtracks badly still answers quickly.
    options = [*([made] if made is not None else []), *candidates, *_FALLBACK_STRINGS]
    for option in options:
        padded = option + "x" * max(0, least - len(option))
        for text in (option, padded, option[:most] if most is not None else option):
            if _fits(text, least, most) and compiled.search(text):
                return text
    raise SchemaError(f"the emulator cannot make a string that matches 'pattern' {pattern!r}")


class _Pattern:
    """The shortest easy string a regular expression matches (None where it is not easy)."""

    def __init__(self) -> None:
        self._groups: dict[int, str] = {}
        self._chars = 0

    def make(self, pattern: str) -> str | None:
        try:
            return self._sequence(_sre_parse.parse(pattern))
        except (re.error, RecursionError, OverflowError, _Unsupported):
            return None

    def _sequence(self, items: Any) -> str:
        return "".join(self._item(op, argument) for op, argument in items)

    def _item(self, op: Any, argument: Any) -> str:
        if op is _sre.LITERAL:
            return chr(argument)
        if op is _sre.NOT_LITERAL:
            return "a" if argument != ord("a") else "b"
        if op is _sre.ANY:
            return "a"
        if op is _sre.IN:
            return _char_in(argument)
        if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", None)):
            least, _, item = argument
            self._chars += least
            if self._chars > MAX_STRING_CHARS:
                raise _Unsupported
            return "".join(self._sequence(item) for _ in range(least))
        if op is _sre.SUBPATTERN:
            group, _, _, item = argument
            text = self._sequence(item)
            if group is not None:
                self._groups[group] = text
            return text
        if op is _sre.BRANCH:
            return self._sequence(argument[1][0])
        if op is _sre.GROUPREF:
            return self._groups.get(argument, "")
        if op in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT):
            return ""  # anchors and lookarounds match no characters of their own
        if op is _sre.CATEGORY:
            return _CATEGORY_CHARS[argument]
        raise _Unsupported


class _Unsupported(Exception):
    pass


_CATEGORY_CHARS = {
    _sre.CATEGORY_DIGIT: "0",
    _sre.CATEGORY_NOT_DIGIT: "a",
    _sre.CATEGORY_WORD: "a",
    _sre.CATEGORY_NOT_WORD: " ",
    _sre.CATEGORY_SPACE: " ",
    _sre.CATEGORY_NOT_SPACE: "a",
}
_ANY_CHARS = "a0A_ -.x@/"
# Tried when the made string does not match (a lookaround the maker cannot see, say).
_FALLBACK_STRINGS = ("0", "a", "A", "1", "a0")


def _char_in(items: Any) -> str:
    negated = bool(items) and items[0][0] is _sre.NEGATE
    if negated:
        members = items[1:]
        for char in _ANY_CHARS:
            if not any(_set_contains(op, argument, char) for op, argument in members):
                return char
        raise _Unsupported
    op, argument = items[0]
    if op is _sre.LITERAL:
        return chr(argument)
    if op is _sre.RANGE:
        return chr(argument[0])
    if op is _sre.CATEGORY:
        return _CATEGORY_CHARS[argument]
    raise _Unsupported


def _set_contains(op: Any, argument: Any, char: str) -> bool:
    if op is _sre.LITERAL:
        return ord(char) == argument
    if op is _sre.RANGE:
        return argument[0] <= ord(char) <= argument[1]
    if op is _sre.CATEGORY:
        return bool(re.fullmatch(_CATEGORY_CLASSES[argument], char))
    raise _Unsupported


_CATEGORY_CLASSES = {
    _sre.CATEGORY_DIGIT: r"\d",
    _sre.CATEGORY_NOT_DIGIT: r"\D",
    _sre.CATEGORY_WORD: r"\w",
    _sre.CATEGORY_NOT_WORD: r"\W",
    _sre.CATEGORY_SPACE: r"\s",
    _sre.CATEGORY_NOT_SPACE: r"\S",
}
