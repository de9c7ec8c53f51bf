"""Scripted misbehaviour: what the next scoring request(s) should suffer instead of (or
before) a normal answer."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Upper bound of a ``hang``: long enough to outlast any sane client timeout, short enough
# that a forgotten fault cannot pin a server task forever.
HANG_LIMIT_S = 600.0


@dataclass
class Fault:
    """One scripted fault, applied to the next ``times`` scoring requests it matches.

    In order: sleep ``latency_s``; if ``hang``, never answer (wait until the client goes
    away, at most ``HANG_LIMIT_S``); if ``status`` is set, answer it with ``body`` (default:
    a small JSON error body for statuses >= 400) and ``Retry-After: retry_after``; if only
    ``body`` is set, answer it with 200. Otherwise the request is answered normally, and
    ``break_stream_after`` cuts a streamed serverless answer after that many SSE events (and
    a short pause, as a connection lost mid-answer would: a reset also discards what the
    client has received but not read yet).
    """

    status: int | None = None
    body: bytes | str | None = None
    content_type: str = "application/json"
    retry_after: str | None = None
    latency_s: float = 0.0
    hang: bool = False
    break_stream_after: int | None = None
    times: int = 1
    path: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status (100-599), not {self.status}")
        if self.latency_s < 0:
            raise ValueError("latency_s must not be negative")
        if self.break_stream_after is not None and self.break_stream_after < 0:
            raise ValueError("break_stream_after must not be negative")
        if self.times < 1:
            raise ValueError("times must be at least 1")

    def matches(self, path: str) -> bool:
        """Whether this fault applies to a request for ``path``."""
        return self.path is None or path.endswith(self.path)

    @property
    def answers(self) -> bool:
        """Whether this fault replaces the normal answer (rather than delaying or cutting it)."""
        return self.status is not None or self.body is not None

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        """A fault from its JSON form (a dict of field values); ValueError says what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("a fault must be a JSON object")
        unknown = sorted(set(data) - _JSON_TYPES.keys())
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        for name, value in data.items():
            kinds, nullable = _JSON_TYPES[name]
            if value is None and nullable:
                continue
            # bool is an int subclass; "times": true is a mistake, not 1.
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
                raise ValueError(f"fault field {name!r} has the wrong type: {value!r}")
        return cls(**data)


# JSON field name -> (accepted Python types, whether null is accepted)
_JSON_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "status": ((int,), True),
    "body": ((str,), True),
    "content_type": ((str,), False),
    "retry_after": ((str,), True),
    "latency_s": ((int, float), False),
    "hang": ((bool,), False),
    "break_stream_after": ((int,), True),
    "times": ((int,), False),
    "path": ((str,), True),
}


class FaultQueue:
    """Pending faults, consumed first-come first-served by the requests they match."""

    def __init__(self) -> None:
        self._pending: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Queue a copy of ``fault`` (so the caller's object is never mutated)."""
        self._pending.append(dataclasses.replace(fault))

    def take(self, path: str) -> Fault | None:
        """The first pending fault matching ``path``, with one of its ``times`` used up."""
        for index, fault in enumerate(self._pending):
            if fault.matches(path):
                fault.times -= 1
                if fault.times == 0:
                    del self._pending[index]
                return fault
        return None

    def clear(self) -> None:
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)
