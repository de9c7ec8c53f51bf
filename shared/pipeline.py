"""The dispatch pipeline: one upstream call, from the caller's model name to an endpoint's answer.

    choose (the endpoint, then its fallbacks; or a group's members, then its fallbacks)
        -> cooldown -> slot -> retries -> credential -> send

It knows nothing of chat: a `RequestBuilder` makes the upstream request for whichever endpoint
is tried, with that endpoint's credential, and `Pipeline.open` returns the first answer whose
status is below 400, its body still to be read. What the answer holds (its connection, the
endpoint's in-flight slot) is given back when the caller's `Leases` block ends.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Mapping

from .config import EndpointConfig, GatewayConfig, GroupConfig
from .credentials import Credential, Credentials
from .errors import (
    ConcurrencyLimitError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamTimeoutError,
    upstream_status_error,
)
from .groups import GroupDispatch, Latencies
from .logs import get_logger
from .observe import NO_OBSERVER, Exchange, Observer
from .retry import Backoff, Cooldowns, retryable
from .transport import Answer, Sender, UpstreamRequest, parse_retry_after

log = get_logger("gateway.pipeline")

#: The upstream request for an endpoint, authorized with its credential.
RequestBuilder = Callable[[EndpointConfig, Credential], UpstreamRequest]
#: What a caller's `model` names: an endpoint or a group of endpoints.
Target = EndpointConfig | GroupConfig


class Leases(list[Callable[[], None]]):
    """What one request holds until it is done (an endpoint's connection, an in-flight slot),
    each given back by a callback that cannot fail; on leaving the `with` block, the last one
    taken is given back first."""

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc_info: object) -> None:
        while self:
            self.pop()()


class InFlight:
    """Calls in flight per endpoint in this process, bounded by each one's `max_concurrency`."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def count(self, name: str) -> int:
        return self._counts.get(name, 0)

    @property
    def counts(self) -> Mapping[str, int]:
        """The live count per endpoint name (read-only: `acquire` and its release change it)."""
        return self._counts

    def acquire(self, endpoint: EndpointConfig) -> Callable[[], None]:
        """One more call in flight to `endpoint`, or `ConcurrencyLimitError` at its
        `max_concurrency`; returns the release (idempotent)."""
        name = endpoint.name
        count = self._counts.get(name, 0)
        if endpoint.max_concurrency is not None and count >= endpoint.max_concurrency:
            raise ConcurrencyLimitError(
                f"endpoint {name!r} already has {count} requests in flight (its "
                "max_concurrency); retry shortly",
                headers={"Retry-After": "1"},
            )
        self._counts[name] = count + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._counts[name] -= 1

        return release


class Pipeline:
    """Dispatches upstream calls for one process: endpoint choice, cooldowns, in-flight slots,
    retries and credentials, over one transport."""

    def __init__(
        self,
        config: GatewayConfig,
        credentials: Credentials,
        transport: Sender,
        observer: Observer = NO_OBSERVER,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._credentials = credentials
        self._transport = transport
        self._observer = observer
        resilience = config.resilience
        self._request_timeout_s = resilience.request_timeout_s
        self._backoff = Backoff(resilience.backoff_s, resilience.max_backoff_s, resilience.max_retry_after_s)
        self.cooldowns = Cooldowns(
            resilience.cooldown_failures, resilience.cooldown_s, probe_timeout_s=resilience.request_timeout_s
        )
        self.in_flight = InFlight()
        #: Each endpoint, then its fallbacks in order.
        self._candidates = {
            e.name: (e, *(config.endpoints_by_name[name] for name in e.fallbacks)) for e in config.endpoints
        }
        self.latencies = Latencies()
        # Spreading load, not secrecy: a seedable generator (tests fix the seed).
        rand = (rng or random.Random()).random  # nosec B311
        self._groups = {
            g.name: GroupDispatch(g, config, self.in_flight.counts, self.latencies, rand)
            for g in config.groups
        }
        #: Endpoints whose time to first byte a `lowest_latency` group needs.
        self._timed = frozenset(
            m.endpoint for g in config.groups if g.strategy == "lowest_latency" for m in g.members
        )

    def endpoint_for(self, model: str | None) -> Target:
        """The endpoint or group a caller's `model` names (the default model if None)."""
        name = model or self.config.default_model
        if name is None:
            raise InvalidRequestError("model: is required (this gateway has no default_model)", param="model")
        target: Target | None = self.config.endpoints_by_name.get(name) or self.config.groups_by_name.get(
            name
        )
        if target is None:
            names = ", ".join(
                [*(e.name for e in self.config.endpoints), *(g.name for g in self.config.groups)]
            )
            raise ModelNotFoundError(
                f"The model {name!r} does not exist on this gateway; available: {names}", param="model"
            )
        return target

    async def open(
        self,
        exchange: Exchange,
        endpoint: Target,
        build: RequestBuilder,
        leases: Leases,
        *,
        stream: bool = False,
    ) -> tuple[EndpointConfig, Answer]:
        """The first endpoint that answers yes: `endpoint`, retried, then its fallbacks in
        order (a group: its members in the order its strategy picks them, then its
        fallbacks). Returns the endpoint that answered and its answer (status < 400), whose
        body `stream` says how to read; leaving `leases` releases it."""
        deadline = asyncio.get_running_loop().time() + self._request_timeout_s
        failures: list[GatewayError] = []
        previous: str | None = None
        group = self._groups.get(endpoint.name) if isinstance(endpoint, GroupConfig) else None
        candidates: Iterable[EndpointConfig] = (
            group.candidates() if group is not None else self._candidates[endpoint.name]
        )
        first_try = True
        for candidate in candidates:
            if previous is not None and failures:
                self._observer.fallback(exchange, previous, candidate.name, failures[-1])
            previous = candidate.name
            refused = self.cooldowns.admit(candidate.name, exchange)
            if refused is not None:
                failures.append(refused)
                continue
            # A request the first endpoint tried finds wrong is the caller's to fix; one a
            # fallback cannot take (another wire format) just moves on.
            primary, first_try = candidate is endpoint or (group is not None and first_try), False
            try:
                upstream = await self._tries(exchange, candidate, build, leases, deadline, stream)
            except ConcurrencyLimitError as exc:
                self.cooldowns.abandoned(candidate.name, exchange)
                self._observer.limit_rejected(exchange, "max_concurrency", exc)
                failures.append(exc)
                continue
            except InvalidRequestError as exc:
                self.cooldowns.abandoned(candidate.name, exchange)
                if primary:
                    raise
                log.info("fallback %r cannot take this request: %s", candidate.name, exc.message)
                continue
            except GatewayError as exc:
                if not retryable(exc):
                    self.cooldowns.abandoned(candidate.name, exchange)
                    raise
                if self.cooldowns.failed(candidate.name, exc, exchange):
                    self._observer.cooldown_opened(candidate.name, self.config.resilience.cooldown_s)
                failures.append(exc)
                log.warning("endpoint %r failed: %s", candidate.name, exc.message)
                continue
            except BaseException:
                self.cooldowns.abandoned(candidate.name, exchange)
                raise
            if self.cooldowns.succeeded(candidate.name):
                self._observer.cooldown_closed(candidate.name)
            exchange.endpoint = candidate.name
            return candidate, upstream
        if group is not None:
            _soonest_retry_after(failures)
        raise failures[-1]

    async def _tries(
        self,
        exchange: Exchange,
        endpoint: EndpointConfig,
        build: RequestBuilder,
        leases: Leases,
        deadline: float,
        stream: bool,
    ) -> Answer:
        """`endpoint`, tried again after retryable failures, at most `max_retries` times, within
        `deadline`. One of its in-flight slots is held until the request is done."""
        release = self.in_flight.acquire(endpoint)
        try:
            loop = asyncio.get_running_loop()
            attempt = 0
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise UpstreamTimeoutError(
                        f"endpoint {endpoint.name!r} gave no answer within "
                        f"resilience.request_timeout_s ({self._request_timeout_s:g} s)",
                        transient=True,
                    )
                try:
                    upstream = await self._send(
                        exchange, endpoint, build, attempt, min(endpoint.timeout_s, remaining), stream
                    )
                    break
                except GatewayError as exc:
                    delay = self._retry_delay(endpoint, attempt, exc, deadline - loop.time())
                    if delay is None:
                        raise
                    failure = exc
                attempt += 1
                self._observer.retry_scheduled(exchange, endpoint.name, attempt, delay, failure)
                log.info(
                    "endpoint %r: %s; try %d of %d in %.2f s",
                    endpoint.name,
                    failure.message,
                    attempt + 1,
                    endpoint.max_retries + 1,
                    delay,
                )
                await asyncio.sleep(delay)
        except BaseException:
            release()
            raise
        leases.append(upstream.release)
        leases.append(release)
        return upstream

    def _retry_delay(
        self, endpoint: EndpointConfig, attempt: int, error: GatewayError, remaining_s: float
    ) -> float | None:
        """How long to wait before trying `endpoint` again after `error`; None: don't."""
        if attempt >= endpoint.max_retries or not retryable(error):
            return None
        delay = self._backoff.delay(attempt, parse_retry_after(error.headers.get("Retry-After")))
        if delay is None or delay >= remaining_s:
            return None
        return delay

    async def _send(
        self,
        exchange: Exchange,
        endpoint: EndpointConfig,
        build: RequestBuilder,
        attempt: int,
        timeout_s: float,
        stream: bool,
    ) -> Answer:
        """One call of `endpoint`; a refused credential is fetched again, once (a rotated key)."""
        observer, auth = self._observer, endpoint.auth
        for refetched in (False, True):
            credential = self._credentials.cached(auth) or await self._credentials.get(auth)
            request = build(endpoint, credential)
            observer.try_started(exchange, endpoint.name, attempt)
            started = asyncio.get_running_loop().time()
            try:
                upstream = await self._transport.send(request, timeout_s=timeout_s, streaming=stream)
            except GatewayError as exc:
                observer.try_ended(exchange, endpoint.name, attempt, None, exc)
                raise
            if upstream.status < 400:
                if endpoint.name in self._timed:
                    self.latencies.observe(endpoint.name, asyncio.get_running_loop().time() - started)
                observer.try_ended(exchange, endpoint.name, attempt, upstream.status, None)
                return upstream
            try:
                response = await upstream.read()
            finally:
                upstream.release()
            error = upstream_status_error(
                endpoint.name, response.status, response.body, response.retry_after, secret=credential.value
            )
            observer.try_ended(exchange, endpoint.name, attempt, response.status, error)
            if not refetched and response.status in (401, 403) and self._credentials.refreshable(auth):
                log.warning(
                    "endpoint %r refused its credential (HTTP %d); fetching it again",
                    endpoint.name,
                    response.status,
                )
                observer.credential_refused(exchange, endpoint.name, response.status)
                self._credentials.invalidate(auth, credential)
                continue
            if response.status in (401, 403):
                error.message += auth.refusal_hint()
            raise error
        raise AssertionError("unreachable")


def _soonest_retry_after(failures: list[GatewayError]) -> None:
    """When every member of a group failed, the caller may retry when the first of them is
    expected back: the shortest `Retry-After` among the failures goes on the last one."""
    last = failures[-1]
    if last.status not in (429, 503):
        return
    waits = [parse_retry_after(f.headers.get("Retry-After")) for f in failures]
    known = [wait for wait in waits if wait is not None]
    if known:
        last.headers["Retry-After"] = str(round(min(known)))
