"""Retries, backoff and cooldowns: the one place that decides when to try an endpoint again.

Retried: connection failures, timeouts, and HTTP 408, 429, 500, 502, 503 and 504, with
exponential backoff and full jitter, honouring `Retry-After`, within the request's deadline.
An endpoint that keeps failing is skipped for a cooldown, so its fallbacks answer at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import GatewayError, ServiceUnavailableError, UpstreamThrottledError

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def retryable(error: GatewayError) -> bool:
    """Worth another try of the same endpoint (or a fallback): the endpoint was unreachable,
    timed out, throttled, or failed with a 5xx that may pass."""
    return error.transient or error.upstream_status in RETRYABLE_STATUSES


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between tries: `base_s * 2**attempt`, capped, with full jitter; an endpoint's
    `Retry-After` instead, unless it asks for more than `max_retry_after_s`."""

    base_s: float = 0.5
    max_s: float = 8.0
    max_retry_after_s: float = 20.0

    def delay(
        self, attempt: int, retry_after_s: float | None, rand: Callable[[], float] = random.random
    ) -> float | None:
        """Seconds to wait before retry number `attempt + 1`; None: waiting is not worth it."""
        if retry_after_s is not None:
            return retry_after_s if retry_after_s <= self.max_retry_after_s else None
        return rand() * min(self.max_s, self.base_s * 2**attempt)


class Cooldowns:
    """Endpoints that failed `threshold` requests in a row, skipped for `cooldown_s` (per process).

    After the cooldown the circuit is half-open: one request (the probe) may try the endpoint
    while the others are still turned away; its success closes the circuit, its failure opens
    it for another cooldown. A probe that ends neither way (the caller left, the endpoint
    refused the request itself) gives its turn to the next request; so does one that has not
    ended after `probe_timeout_s`.
    """

    def __init__(
        self,
        threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        probe_timeout_s: float = 180.0,
    ) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._probe_timeout_s = probe_timeout_s
        self._clock = clock
        self._failures: dict[str, int] = {}
        #: Open circuits: until when, and whether the endpoint was throttling.
        self._until: dict[str, tuple[float, bool]] = {}
        #: Half-open circuits whose probe is under way: since when, and whose request it is.
        self._probing: dict[str, tuple[float, object]] = {}

    def admit(self, name: str, owner: object = None) -> GatewayError | None:
        """None if the request `owner` may try `name` (perhaps as its probe), else the error to
        answer with while it cools down."""
        until = self._until.get(name)
        if until is None:
            return None
        now = self._clock()
        remaining = until[0] - now
        if remaining <= 0:
            probe = self._probing.get(name)
            if probe is None or now - probe[0] >= self._probe_timeout_s:
                self._probing[name] = (now, owner)
                return None
            remaining = 1.0
        retry_after = {"Retry-After": str(max(1, round(remaining)))}
        if until[1]:
            return UpstreamThrottledError(
                f"endpoint {name!r} is throttling requests; retry later", headers=retry_after
            )
        return ServiceUnavailableError(
            f"endpoint {name!r} failed repeatedly and is paused for {remaining:.0f} s",
            code="endpoint_cooling_down",
            headers=retry_after,
        )

    def failed(self, name: str, error: GatewayError, owner: object = None) -> bool:
        """Count a failure of the request `owner`; True if it opened the circuit: the
        `threshold`-th failure in a row, or the probe's. A failure of a request that was let in
        before the circuit opened leaves the cooldown as it is."""
        until = self._until.get(name)
        if until is not None:
            if not self._is_probe(name, owner):
                return False
            del self._probing[name]
        else:
            failures = self._failures.get(name, 0) + 1
            self._failures[name] = failures
            if failures < self._threshold:
                return False
        self._until[name] = (self._clock() + self._cooldown_s, error.status == 429)
        return True

    def succeeded(self, name: str) -> bool:
        """A request succeeded (the endpoint works); True if that closed an open circuit."""
        self._failures.pop(name, None)
        self._probing.pop(name, None)
        return self._until.pop(name, None) is not None

    def abandoned(self, name: str, owner: object = None) -> None:
        """The request `owner` ended without telling whether `name` works: if it was the probe,
        the next request probes instead."""
        if self._is_probe(name, owner):
            del self._probing[name]

    def _is_probe(self, name: str, owner: object) -> bool:
        probe = self._probing.get(name)
        return probe is not None and probe[1] is owner
