"""Hooks: what the pipeline, the credentials and the stream relay tell observers.

Telemetry, limits and tests watch the gateway through one small interface, `Observer`. Every
method is a no-op here, so the default observer costs one method call per event. Subclass it and
override what you need; several observers are combined with `Observers`. The gateway calls them
synchronously on the request's own task: keep them quick. An observer that raises is logged and
does not fail the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import GatewayError
from .logs import get_logger

log = get_logger("gateway.observe")


@dataclass(slots=True, eq=False)
class Exchange:
    """One caller's request as observers see it, from start to end."""

    #: "chat" (Chat Completions) or "responses" (the Responses API).
    operation: str
    #: The name the caller asked for (`model`), or the default model.
    model: str
    stream: bool = False
    request_id: str | None = None
    #: The endpoint that answered, once one did.
    endpoint: str | None = None
    #: The endpoint's reported token usage (`prompt_tokens`, `completion_tokens`, ...), if any.
    usage: dict[str, Any] | None = None
    finish_reasons: list[str] = field(default_factory=list)
    #: `time.monotonic()` at the start.
    started: float = field(default_factory=time.monotonic)
    #: Who sent it (`shared.callers.Caller`: its id, roles and limits' admission), if known.
    caller: Any = None
    #: When the endpoint reported no usage (`/score`): the characters of its answer, from
    #: which limits estimate its tokens.
    answer_chars: int | None = None
    #: Per-request state that observers keep for themselves, under a key of their own.
    state: dict[str, Any] = field(default_factory=dict)
    #: The validated request (a `ChatRequest`: its parameters, its messages), if any.
    request: Any = None
    #: The id the caller gets (`chatcmpl-…`, `resp_…`): made when the request starts.
    response_id: str | None = None
    #: The endpoint's whole answer (a `ChatResult`), when it came in one piece (not as events).
    answer: Any = None
    #: What broke a stream after its first event (the caller got it as an error event, so
    #: `request_ended` is told of no error).
    error: BaseException | None = None


class Observer:
    """Told of each event of each request; every method does nothing here."""

    def request_started(self, exchange: Exchange) -> None:
        """A validated request is about to be dispatched."""

    def request_ended(self, exchange: Exchange, error: BaseException | None) -> None:
        """The answer was sent whole (a stream: its last event), or the request failed with
        `error` (a `GatewayError`, or `asyncio.CancelledError` when the caller left)."""

    def try_started(self, exchange: Exchange, endpoint: str, attempt: int) -> None:
        """A call of `endpoint` is being sent; `attempt` counts from 0 for each endpoint."""

    def try_ended(
        self, exchange: Exchange, endpoint: str, attempt: int, status: int | None, error: GatewayError | None
    ) -> None:
        """The endpoint answered with `status` (its body may still be coming), or the try
        failed with `error` (`status` is the endpoint's, if it answered)."""

    def retry_scheduled(
        self, exchange: Exchange, endpoint: str, attempt: int, delay_s: float, error: GatewayError
    ) -> None:
        """`endpoint` failed with `error`; try `attempt` (from 1) follows in `delay_s` seconds."""

    def fallback(self, exchange: Exchange, failed: str, to: str, error: GatewayError) -> None:
        """`failed` could not answer (`error`); the request passes to endpoint `to`."""

    def cooldown_opened(self, endpoint: str, cooldown_s: float) -> None:
        """`endpoint` failed too often in a row and is skipped for `cooldown_s` seconds."""

    def cooldown_closed(self, endpoint: str) -> None:
        """A request succeeded on `endpoint` after its cooldown: it is in service again."""

    def credential_fetched(self, auth_type: str, name: str) -> None:
        """A key was read from its source (Key Vault, the environment) or a token issued;
        `name` is the secret's name, the variable's or the token's scope, never a value."""

    def credential_served_stale(self, auth_type: str, name: str, error: GatewayError) -> None:
        """The source is down (`error`): a cached value past its refresh time serves meanwhile."""

    def credential_refused(self, exchange: Exchange, endpoint: str, status: int) -> None:
        """`endpoint` refused its credential (HTTP 401/403); it is fetched again once."""

    def first_chunk(self, exchange: Exchange) -> None:
        """The first event of a streamed answer is on its way to the caller."""

    def limit_rejected(self, exchange: Exchange, limit: str, error: GatewayError) -> None:
        """The request was refused by the gateway's own limit `limit` (e.g.
        `max_concurrency`) with `error`, before any endpoint was called."""


NO_OBSERVER = Observer()


class Observers(Observer):
    """Several observers, told in order; one that raises is logged and skipped."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._observers = tuple(observers)
        # One teller per event, made once (not at each event): it calls only the observers that
        # override the event.
        for name in _EVENTS:
            methods = [(type(o).__name__, getattr(o, name)) for o in self._observers]
            inherited = getattr(Observer, name)
            told = [(kind, m) for kind, m in methods if getattr(m, "__func__", None) is not inherited]
            if told:  # else the inherited no-op
                setattr(self, name, _teller(name, told))


def _teller(name: str, methods: list[tuple[str, Callable[..., None]]]) -> Callable[..., None]:
    """A function telling `name` to each of `methods` (an observer's class name and its method)."""

    def tell_all(*args: Any) -> None:
        for kind, method in methods:
            try:
                method(*args)
            except Exception:
                log.exception("observer %s failed on %s", kind, name)

    return tell_all


_EVENTS = frozenset(name for name in vars(Observer) if not name.startswith("_"))
