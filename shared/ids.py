"""Ids the gateway makes up: request ids and the ids of completions and responses."""

from __future__ import annotations

import random


def new_id() -> str:
    """128 random bits in hex: an id, not a secret, so no system call per request."""
    return f"{random.getrandbits(128):032x}"  # nosec B311


def completion_id() -> str:
    """A new OpenAI-style chat completion id."""
    return f"chatcmpl-{new_id()}"


def response_id() -> str:
    """A new OpenAI-style Responses API response id."""
    return f"resp_{new_id()}"


def item_id(prefix: str) -> str:
    """A new id of a response's output item: `msg_…`, `fc_…`."""
    return f"{prefix}_{new_id()}"
