"""The gateway's one JSON codec: request bodies, answers and events.

pydantic-core's encoder and decoder: faster than the json module's on the hot path, integers
of any width kept exactly, and a bounded nesting depth when decoding (a hostile body cannot
exhaust the stack).
"""

from __future__ import annotations

from typing import Any

from pydantic_core import from_json, to_json


def dumps(payload: Any) -> bytes:
    """Compact UTF-8 JSON, text exactly as given, NaN and infinities as null."""
    return to_json(payload, inf_nan_mode="null")


def loads(data: bytes | str) -> Any:
    """The value of a JSON document; `ValueError` if it is not one."""
    return from_json(data)
