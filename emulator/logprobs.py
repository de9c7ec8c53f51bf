"""Token log probabilities of the emulator's answers: well-formed OpenAI ``logprobs``
objects, deterministic and meaningless.

A token is a piece of the answer (see :func:`~emulator.replies.pieces`); its log
probability is derived from a hash of its position and text, in (-0.5, 0]. Its
``top_logprobs`` list starts with the token itself and goes on with common words, each less
likely than the one before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

# At least 21: a token may equal one of them, and OpenAI allows 20 alternatives.
ALTERNATIVE_TOKENS = (
    "the ",
    "a ",
    "and ",
    "to ",
    "of ",
    "in ",
    "is ",
    "it ",
    "that ",
    "for ",
    "on ",
    "with ",
    "as ",
    "was ",
    "at ",
    "by ",
    "this ",
    "be ",
    "or ",
    "an ",
    "not ",
)
ALTERNATIVE_STEP = 1.25


def choice_logprobs(tokens: Sequence[str], top: int, *, start: int = 0) -> dict[str, Any]:
    """The ``logprobs`` object of a choice (or of one streamed chunk) whose content is
    ``tokens``, the first at position ``start``; ``top`` alternatives per token (0-20)."""
    return {
        "content": [token_logprob(token, start + offset, top) for offset, token in enumerate(tokens)],
        "refusal": None,
    }


def token_logprob(token: str, position: int, top: int) -> dict[str, Any]:
    """One entry of ``logprobs.content``: the token, its log probability, its UTF-8 bytes
    and its ``top`` most likely alternatives (itself first)."""
    logprob = _logprob(token, position)
    others = [other for other in ALTERNATIVE_TOKENS if other != token]
    ranked = [(token, logprob)]
    ranked += [(other, round(logprob - rank * ALTERNATIVE_STEP, 6)) for rank, other in enumerate(others, 1)]
    return {
        **_entry(token, logprob),
        "top_logprobs": [_entry(text, value) for text, value in ranked[:top]],
    }


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def _logprob(token: str, position: int) -> float:
    digest = hashlib.sha256(f"{position}:{token}".encode()).digest()
    return -round(int.from_bytes(digest[:4], "big") / 2**32 / 2, 6)
